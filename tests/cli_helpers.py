"""Run the command line in-process, as a user's shell would see it (one helper for all tests).

`run_cli` calls `karst_deploy.cli.run` (what the `karst-deploy` entry point exits with) with
stdout and stderr redirected to non-terminal streams: the output is what a log or a pipe
gets. Starting a fresh interpreter costs seconds per test (torch, timm and ONNX imports);
only the entry-point tests in tests/test_cli.py do that, through `run_cli_process`.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CliResult:
    """What a finished command left: exit code, stdout and stderr (as subprocess names them)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object, cwd: str | os.PathLike[str] | None = None) -> CliResult:
    """Run ``karst-deploy ARGS`` in this process; its exit code and captured output."""
    from karst_deploy import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.run([str(a) for a in args])
    finally:
        os.chdir(previous)
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


def run_cli_process(
    *command: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run an entry point as a real process (``-m karst_deploy``, ``cli.py`` or a script)."""
    return subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )
