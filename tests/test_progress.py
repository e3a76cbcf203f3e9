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
