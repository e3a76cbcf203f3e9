"""Interruption: one registry of temporaries, removed on every exit path, and SIGINT/SIGTERM.

Every temporary file or directory karst-deploy creates is registered here and removed
when its writer finishes, on an exception, at interpreter exit, and when the command
line is stopped by SIGINT (Ctrl-C) or SIGTERM (``timeout``, CI cancellation, ``docker
stop``). `exit_on_interrupt` (installed by the CLI's ``main``) turns both signals into
`Interrupted`, a `KeyboardInterrupt`, so ``finally`` blocks and context managers unwind
as usual, then exits 130 for either (the one "interrupted" code of `errors.EXIT_CODES`;
the message names the signal).

Two windows defer a signal instead of raising it: `critical` sections (creating and
registering a temporary, publishing it under its final name), so a temporary is never
created unregistered nor an output half-published; and the rest of the command once a
final output has been published (`mark_committed`): from then on only milliseconds of
reporting remain, so the command finishes and exits normally. Hence an exit of 130
means no output was written by the run, and exit 0 means every output is complete.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 130}  # one code: errors.EXIT_CODES


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; unwinds like Ctrl-C and exits with `exit_code`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = SIGNAL_EXIT_CODES.get(signum, 128 + signum)


class _State:
    def __init__(self) -> None:
        self.critical = 0  # depth of nested critical sections
        self.pending: int | None = None  # a signal deferred by a critical section or a commit
        self.received: int | None = None  # the signal that interrupted the run
        self.committed = False  # a final output was published
        self.exiting = False  # cleaning up on the way out: further signals are ignored


_state = _State()
_registry: dict[str, None] = {}  # insertion-ordered set of paths


def register(path: str | os.PathLike[str]) -> None:
    """Remember a temporary so it is removed whatever happens to the run."""
    _registry[os.path.abspath(path)] = None


def unregister(path: str | os.PathLike[str]) -> None:
    """Forget a temporary that has been published or removed."""
    _registry.pop(os.path.abspath(path), None)


def remove(path: str | os.PathLike[str]) -> None:
    """Remove a registered temporary (file, link or directory tree) and forget it."""
    name = os.path.abspath(path)
    try:
        if os.path.isdir(name) and not os.path.islink(name):
            shutil.rmtree(name)
        else:
            os.unlink(name)
    except FileNotFoundError:
        pass
    except OSError:
        return  # kept registered: the exit-time sweep tries again
    unregister(name)


def remove_all() -> None:
    """Remove every registered temporary, newest first."""
    for name in reversed(list(_registry)):
        remove(name)


atexit.register(remove_all)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Defer SIGINT/SIGTERM while the block runs; raise it afterwards unless committed.

    A run that was already interrupted is stopped here again: some library code swallows
    KeyboardInterrupt (a bare ``except:`` around an optional import), and such a run must
    not go on to create temporaries or publish an output.
    """
    if _state.received is not None and not _state.exiting:
        raise Interrupted(_state.received)
    _state.critical += 1
    try:
        yield
    finally:
        _state.critical -= 1
    if _state.critical == 0 and _state.pending is not None and not _state.committed:
        signum, _state.pending = _state.pending, None
        _state.received = signum
        raise Interrupted(signum)


def mark_committed() -> None:
    """A final output is published: signals from now on let the command finish."""
    _state.committed = True


def _handler(signum: int, frame: object) -> None:
    if _state.exiting:
        return
    if _state.critical or _state.committed:
        _state.pending = signum
        return
    _state.received = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def exit_on_interrupt(*, restore: bool = True) -> Iterator[None]:
    """Run a command with SIGINT/SIGTERM handled: temporaries removed, exit 130.

    Without `restore` both signals are ignored afterwards, for a process about to exit:
    Python's shutdown resets handlers to the default (die by the signal) but keeps
    ``SIG_IGN``, so a late signal changes neither the exit code nor the files.
    Only the main thread can install signal handlers; elsewhere the block runs unchanged.
    """
    global _state
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state = _State()
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNAL_EXIT_CODES}
    code: int | None = None
    finished: SystemExit | None = None
    try:
        yield
    except KeyboardInterrupt as error:  # ours, or a Ctrl-C before the handlers were installed
        code = getattr(error, "exit_code", 130)
    except SystemExit as error:  # click exits; it turns KeyboardInterrupt into exit 1
        finished = error
    finally:
        _state.exiting = True
        remove_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler if restore else signal.SIG_IGN)
    late = None if _state.committed else _state.pending  # deferred, then the run failed
    signum = _state.received or late
    if signum is not None:
        code = SIGNAL_EXIT_CODES.get(signum, 128 + signum)
    if code is not None:
        name = signal.Signals(signum or signal.SIGINT).name
        sys.stderr.write(
            f"karst-deploy: interrupted by {name}; no output was written and the run's "
            f"temporary files were removed (exit {code}).\n"
        )
        raise SystemExit(code)
    if _state.pending is not None:
        sys.stderr.write(
            f"karst-deploy: {signal.Signals(_state.pending).name} arrived after the output "
            "was written; the run finished normally.\n"
        )
    if finished is not None:
        raise finished


def is_registered_inside(path: Path) -> bool:
    """Whether `path` lies inside a registered temporary directory (a staging area)."""
    return any(os.fspath(parent) in _registry for parent in Path(os.path.abspath(path)).parents)
