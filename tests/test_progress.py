"""The one progress helper: timed lines with an estimate in a log, nothing when disabled."""

from __future__ import annotations

import contextlib
import io
import re

from rich.console import Console

from karst_deploy import progress


def log_console() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()  # not a terminal, as in CI or `| tee`
    return Console(file=stream, soft_wrap=True), stream


def test_a_log_gets_plain_lines_with_elapsed_time_and_time_left(monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)  # a line per step
    console, stream = log_console()
    with progress.progress_bar("calibrating", 4, console=console) as advance:
        for _ in range(3):
            advance()
        advance.describe("epoch 2/2")
        advance()
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"calibrating: 1/4 \(25%\), \d+ s elapsed, about \d+ s left", lines[0])
    assert lines[-1].startswith("epoch 2/2: 4/4 (100%), ") and "left" not in lines[-1]
    assert len(lines) == len(set(lines))  # the closing line is not repeated
    assert "\x1b" not in stream.getvalue()  # no escape codes in a log


def test_lines_are_rate_limited(monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL", 3600.0)
    console, stream = log_console()
    with progress.progress_bar("parity", 1000, console=console) as advance:
        for _ in range(1000):
            advance()
    assert stream.getvalue().splitlines() == [
        "parity: 1000/1000 (100%), 0 s elapsed"
    ]  # the end only


def test_a_failing_step_leaves_no_progress_line(monkeypatch):
    """An error then prints as the one paragraph on stderr, alone."""
    monkeypatch.setattr(progress, "LINE_INTERVAL", 3600.0)
    console, stream = log_console()
    with contextlib.suppress(ValueError), progress.status("exporting", console=console):
        raise ValueError
    with contextlib.suppress(ValueError), progress.progress_bar("bench", 9, console=console):
        raise ValueError
    assert stream.getvalue() == ""


def test_disabled_progress_prints_nothing():
    console, stream = log_console()
    with progress.progress_bar("bench", 3, enabled=False, console=console) as advance:
        advance()
        advance.describe("ignored")
    with progress.status("building", enabled=False, console=console):
        pass
    assert stream.getvalue() == ""


def test_status_in_a_log_says_when_a_step_starts_and_ends():
    console, stream = log_console()
    with progress.status("exporting and checking", console=console):
        pass
    assert stream.getvalue().splitlines() == ["exporting and checking: done in 0 s"]


def test_durations_read_naturally():
    assert [progress.duration(s) for s in (0.4, 59, 61, 3599, 3720)] == [
        "0 s", "59 s", "1 min 01 s", "59 min 59 s", "1 h 02 min",
    ]  # fmt: skip


def test_epoch_lines_in_a_log_give_seconds_per_epoch_and_the_mean_as_eta():
    stream = io.StringIO()  # not a terminal, like a CI log or `| tee`
    times, lines = progress.EpochTimes(4), []
    with progress.progress_bar("training", 40, console=Console(file=stream, width=60)) as shown:
        shown.note(times.expected(2.5))
        for epoch, seconds in enumerate((2.0, 4.0, 3.0, 3.0), 1):
            for _ in range(10):
                shown()
            lines.append(f"epoch {epoch}/4  loss 0.500  val acc 0.520  {times.finished(seconds)}")
            shown.note(lines[-1])
    printed = stream.getvalue().splitlines()
    assert printed[0] == "expected ≈ 2.5 s per epoch, ≈ 0:00:10 for 4 epochs"
    assert printed[1:5] == lines  # one unwrapped line per epoch, even at 60 columns
    assert lines[0].endswith("2.0 s/epoch  ETA 0:00:06")  # 3 epochs left at 2 s
    assert lines[1].endswith("4.0 s/epoch  ETA 0:00:06")  # 2 left at the mean, 3 s
    assert lines[2].endswith("3.0 s/epoch  ETA 0:00:03")
    assert lines[3].endswith("3.0 s/epoch  ETA 0:00:00")
    assert printed[5:] == ["training: 40/40 (100%), 0 s elapsed"]  # then the closing line


def test_notes_are_not_printed_when_progress_is_off():
    console, stream = log_console()
    with progress.progress_bar("training", 10, enabled=False, console=console) as shown:
        shown.note(progress.EpochTimes(2).expected(1.0))
        shown.note(progress.EpochTimes(2).finished(1.0))
    assert stream.getvalue() == ""


def test_clock_reads_like_a_clock():
    assert (progress.clock(0.4), progress.clock(65), progress.clock(3 * 3600 + 1)) == (
        "0:00:00",
        "0:01:05",
        "3:00:01",
    )


def test_time_left_is_the_mean_rate_times_the_steps_left():
    assert progress.time_left(6.0, 2, 5) == 9.0
    assert progress.time_left(0.0, 0, 5) == 0.0  # nothing done yet: no estimate
