"""Print tables and lines to a terminal or a log, never cutting a stage name or a path.

On a terminal rich fits a table to the window and folds long cells onto more lines. In a log
or a pipe (CI, ``| tee``) there is no window: a table is printed as wide as its widest row
(rich would otherwise squeeze it into 80 columns and cut "torch-unmerged" to "torch-unmerg…").
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

#: The widest table printed to a log (a pathological table should not make 10,000-wide lines).
MAX_LOG_WIDTH = 1000


def stdout_console() -> Console:
    """A console on the current ``sys.stdout`` (so redirections and test capture work)."""
    return Console(file=sys.stdout)


def _fold(renderable: RenderableType) -> None:
    """Wrap rather than cut with an ellipsis: a cut stage name or path is useless."""
    if isinstance(renderable, Table):
        for column in renderable.columns:
            column.overflow = "fold"


def show(*renderables: RenderableType, console: Console | None = None) -> None:
    """Print tables or markup lines: fitted to a terminal, at full width in a log."""
    console = console or stdout_console()
    for renderable in renderables:
        _fold(renderable)
        if console.is_terminal or not isinstance(renderable, Table):
            console.print(renderable, highlight=False, soft_wrap=not console.is_terminal)
            continue
        needed = console.measure(renderable, options=console.options.update_width(MAX_LOG_WIDTH))
        width = console.width
        console.width = max(width, needed.maximum)  # print() caps its width= at the console's
        try:
            console.print(renderable, highlight=False)
        finally:
            console.width = width


def note(text: str, *, label: str = "note", console: Console | None = None) -> None:
    """A yellow ``note:`` line (the text is escaped: brackets in it are shown, not parsed)."""
    show(f"[yellow]{label}:[/] {escape(text)}", console=console)


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout, for ``--json``."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
