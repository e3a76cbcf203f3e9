"""Training progress on stderr: a rich bar on a terminal, plain lines in logs, with an ETA.

stderr keeps ``--json`` output on stdout clean. Without a terminal (CI logs, ``| tee``) a
live bar shows nothing until it ends, so each epoch prints one plain line instead.
"""

from __future__ import annotations

import datetime
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from karst_deploy.train.log import EpochRecord


def progress_bar(enabled: bool, console: Console | None = None) -> Progress:
    """A rich progress bar (description, bar, steps, elapsed, remaining) on stderr."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not enabled,
    )


def duration(seconds: float) -> str:
    """``0:01:05`` style, whole seconds."""
    return str(datetime.timedelta(seconds=round(seconds)))


class EpochProgress:
    """Steps and epochs of one training run: expected time first, then s/epoch and ETA."""

    def __init__(
        self, enabled: bool, epochs: int, steps_per_epoch: int, console: Console | None = None
    ) -> None:
        self.enabled, self.epochs = enabled, epochs
        self.console = console or Console(stderr=True)
        self.plain = not self.console.is_terminal
        self.bar = progress_bar(enabled and not self.plain, self.console)
        self.total_steps = epochs * steps_per_epoch
        self.seconds: list[float] = []

    def __enter__(self) -> EpochProgress:
        self.bar.__enter__()
        self.task = self.bar.add_task("training", total=self.total_steps)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.bar.__exit__(kind, error, traceback)

    def advance(self) -> None:
        self.bar.advance(self.task)

    def expected(self, seconds_per_epoch: float) -> None:
        """Say before training how long an epoch, and the run, should take."""
        self._print(
            f"expected ≈ {seconds_per_epoch:.1f} s per epoch, ≈ "
            f"{duration(seconds_per_epoch * self.epochs)} for {self.epochs} epochs "
            "(timed on 2 training steps before the run)"
        )

    def epoch_done(self, record: EpochRecord, best_val_accuracy: float) -> str:
        """Report a finished epoch with seconds per epoch and the ETA; returns the line."""
        self.seconds.append(record.seconds)
        per_epoch = sum(self.seconds) / len(self.seconds)
        eta = per_epoch * (self.epochs - record.epoch)
        line = (
            f"epoch {record.epoch}/{self.epochs}  loss {record.train_loss:.3f}  "
            f"val acc {record.val_accuracy:.3f}  best {best_val_accuracy:.3f}  "
            f"{record.seconds:.1f} s/epoch  ETA {duration(eta)}"
        )
        self.bar.update(self.task, description=line)
        if self.plain:
            self._print(line)
        return line

    def _print(self, line: str) -> None:
        if self.enabled:
            self.console.print(escape(line), highlight=False, soft_wrap=True)
