"""Progress on stderr (stdout stays clean for ``--json``): a leaf every layer may use.

Its own module so that bench, parity, precision and placement do not import `report`
(which imports their result types to render them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console

progress_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, *, enabled: bool = True
) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar on stderr; yields a function that advances it by one."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress_console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
