"""The one progress helper: a rich bar on a terminal, plain timed lines in a log.

Progress goes to stderr so that ``--json`` on stdout stays clean. When stderr is not a
terminal (CI logs, ``| tee``) a bar would print nothing useful, so the helper writes a plain
line with the count, the elapsed time and an estimate of the time left at most every
`LINE_INTERVAL` seconds and one at the end. Nothing is printed before the first interval: a
step that fails at once leaves only its one-paragraph error on stderr. A run of epochs
(`train`) adds its own lines with `Progress.note` and times them with `EpochTimes`. This
module imports only rich, so any layer may use it.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console

#: Seconds between two plain progress lines in a non-terminal log.
LINE_INTERVAL = 10.0


def stderr_console() -> Console:
    """A console on the current ``sys.stderr`` (unwrapped: a wrapped path cannot be copied)."""
    return Console(file=sys.stderr, soft_wrap=True)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``: short and unambiguous in a log."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def clock(seconds: float) -> str:
    """``0:01:05``: whole seconds as a clock, so the ETAs of a column of epoch lines align."""
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


def time_left(elapsed: float, done: float, total: float) -> float:
    """Seconds the `total - done` steps left take at the mean rate of the `done` so far."""
    return elapsed / done * (total - done) if done > 0 else 0.0


class EpochTimes:
    """Seconds per epoch of a run of `epochs`, and the time left at the mean so far."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.done, self.seconds = epochs, 0, 0.0

    def expected(self, seconds_per_epoch: float) -> str:
        """``expected ≈ 2.5 s per epoch, ≈ 0:00:10 for 4 epochs``: said before the run."""
        total = clock(seconds_per_epoch * self.epochs)
        return f"expected ≈ {seconds_per_epoch:.1f} s per epoch, ≈ {total} for {self.epochs} epochs"

    def finished(self, seconds: float) -> str:
        """Count an epoch that took `seconds`: ``2.0 s/epoch  ETA 0:00:06``."""
        self.done += 1
        self.seconds += seconds
        left = time_left(self.seconds, self.done, self.epochs)
        return f"{seconds:.1f} s/epoch  ETA {clock(left)}"


class Progress:
    """What `progress_bar` yields: call it to advance; `describe` to say what is happening."""

    def __call__(self, steps: int = 1) -> None:
        """Advance by `steps`."""

    def describe(self, text: str) -> None:
        """Replace the description (a bar's label; in a log, a line printed now)."""

    def note(self, text: str) -> None:
        """Print a line that stays: above the bar on a terminal, a plain line in a log."""


class _Bar(Progress):
    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def __call__(self, steps: int = 1) -> None:
        self.bar.advance(self.task, steps)

    def describe(self, text: str) -> None:
        self.bar.update(self.task, description=text)

    def note(self, text: str) -> None:
        self.bar.console.print(text, highlight=False, markup=False, soft_wrap=True)


class _Lines(Progress):
    """Plain ``description: done/total (p %), elapsed, about T left`` lines."""

    def __init__(self, console: Console, description: str, total: int) -> None:
        self.console, self.description, self.total = console, description, max(total, 1)
        self.done, self.printed = 0, ""
        self.started = self.last = time.perf_counter()

    def _print(self, text: str) -> None:
        if text == self.printed:
            return
        self.printed = text
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        text = f"{self.description}: {self.done}/{self.total} ({self.done / self.total:.0%}), "
        text += f"{duration(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", about {duration(time_left(elapsed, self.done, self.total))} left"
        return text

    def __call__(self, steps: int = 1) -> None:
        self.done = min(self.total, self.done + steps)
        now = time.perf_counter()
        if now - self.last >= LINE_INTERVAL and self.done < self.total:
            self.last = now
            self._print(self.line())

    def describe(self, text: str) -> None:
        self.description = text
        self.last = time.perf_counter()
        self._print(self.line())

    def note(self, text: str) -> None:
        self.last = time.perf_counter()
        self.printed = text
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, *, enabled: bool = True, console: Console | None = None
) -> Iterator[Progress]:
    """Show the progress of `total` steps on stderr; yields a `Progress` to advance it.

    A transient bar with an estimate of the time left on a terminal, plain lines otherwise,
    nothing when not `enabled` (e.g. on a torchrun process other than the main one).
    """
    if not enabled:
        yield Progress()
        return
    console = console or stderr_console()
    if not console.is_terminal:
        lines = _Lines(console, description, total)
        yield lines  # on an error, no closing line: the error paragraph follows
        lines._print(lines.line())
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        yield _Bar(bar, bar.add_task(description, total=total))


@contextlib.contextmanager
def status(text: str, *, enabled: bool = True, console: Console | None = None) -> Iterator[Any]:
    """A spinner while one step of unknown length runs; in a log, a line before and after."""
    if not enabled:
        yield None
        return
    console = console or stderr_console()
    if console.is_terminal:
        with console.status(text) as spinner:
            yield spinner
        return
    started = time.perf_counter()
    # A step that is still running after LINE_INTERVAL says so; a quick one (or a quick
    # failure) prints only its outcome.
    still = threading.Timer(
        LINE_INTERVAL, lambda: console.print(f"{text} …", highlight=False, markup=False)
    )
    still.daemon = True
    still.start()
    try:
        yield None
    finally:
        still.cancel()
    done = f"{text}: done in {duration(time.perf_counter() - started)}"
    console.print(done, highlight=False, markup=False)
