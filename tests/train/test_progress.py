"""Training progress: the expected time first, then seconds per epoch and an ETA per epoch."""

from __future__ import annotations

import io

from rich.console import Console

from karst_deploy.train.log import EpochRecord
from karst_deploy.train.progress import EpochProgress, duration


def _record(epoch: int, seconds: float) -> EpochRecord:
    return EpochRecord(epoch, 1.0 / epoch, 0.5, 1.0, 0.5 + epoch / 100, 1e-3, seconds)


def test_plain_lines_without_a_terminal_with_the_mean_epoch_time_as_eta():
    stream = io.StringIO()  # not a terminal, like a CI log or `| tee`
    with EpochProgress(True, 4, 10, Console(file=stream, width=60)) as shown:
        shown.expected(2.5)
        lines = [shown.epoch_done(_record(1, 2.0), 0.51), shown.epoch_done(_record(2, 4.0), 0.52)]
    printed = stream.getvalue().splitlines()
    assert printed[0].startswith("expected ≈ 2.5 s per epoch, ≈ 0:00:10 for 4 epochs")
    assert printed[1:] == lines  # one unwrapped line per epoch, even at 60 columns
    assert lines[0].endswith("2.0 s/epoch  ETA 0:00:06")  # 3 epochs left at 2 s
    assert lines[1].endswith("4.0 s/epoch  ETA 0:00:06")  # 2 left at the mean, 3 s
    assert "epoch 2/4" in lines[1] and "best 0.520" in lines[1]


def test_nothing_is_printed_when_progress_is_off():
    stream = io.StringIO()
    with EpochProgress(False, 2, 5, Console(file=stream)) as shown:
        shown.expected(1.0)
        shown.epoch_done(_record(1, 1.0), 0.5)
    assert stream.getvalue() == ""


def test_duration_reads_like_a_clock():
    assert (duration(0.4), duration(65), duration(3 * 3600 + 1)) == (
        "0:00:00",
        "0:01:05",
        "3:00:01",
    )
