"""Atomic, non-clobbering outputs: races, special files, links, umask, temporaries, sweeping."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from karst_deploy import files, interrupts
from karst_deploy.errors import EnvironmentFailure, InputError, OutputExistsError
from karst_deploy.files import (
    TEMP_PATTERN,
    atomic_directory,
    atomic_output,
    refuse_existing,
    rename_noreplace,
    sweep_stale,
    temporary_directory,
)


def _temporaries(directory):
    return sorted(p.name for p in directory.rglob("*") if TEMP_PATTERN.match(p.name))


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError), atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"precious"
    with atomic_output(target, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_directory_replacement_is_all_or_nothing(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target, force=True) as tmp:
        (tmp / "new").write_text("2")
        raise RuntimeError("crash")
    assert [p.name for p in target.iterdir()] == ["old"]
    with atomic_directory(target, force=True) as tmp:
        (tmp / "new").write_text("2")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_an_empty_directory_made_beforehand_is_taken_over_a_filled_one_refused(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()  # people `mkdir` the output first
    refuse_existing(target, False, directory=True)
    with atomic_directory(target) as tmp:
        (tmp / "new").write_text("2")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with pytest.raises(OutputExistsError, match="already exists"):
        refuse_existing(target, False, directory=True)
    # Filled while the run works: the publish refuses, their file stays.
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(OutputExistsError), atomic_directory(other) as tmp:
        (tmp / "ours").write_text("1")
        (other / "theirs").write_text("2")
    assert [p.name for p in other.iterdir()] == ["theirs"] and _temporaries(tmp_path) == []
    empty_file_target = tmp_path / "model.onnx"
    empty_file_target.mkdir()  # an empty directory where a file goes is still refused
    with pytest.raises(OutputExistsError):
        refuse_existing(empty_file_target, False)


# -- an output that appears while we work is never replaced without force ---------------------


def test_a_file_that_appears_during_the_run_is_kept(tmp_path):
    target = tmp_path / "model.onnx"
    with (
        pytest.raises(OutputExistsError, match="created by someone else") as raised,
        atomic_output(target) as tmp,
    ):
        tmp.write_bytes(b"ours")
        target.write_bytes(b"theirs")  # another process, after our up-front check
    assert str(target) in str(raised.value)
    assert target.read_bytes() == b"theirs" and _temporaries(tmp_path) == []


def test_a_directory_that_appears_during_the_run_is_kept(tmp_path):
    target = tmp_path / "report"
    with (
        pytest.raises(OutputExistsError, match="created by someone else"),
        atomic_directory(target) as tmp,
    ):
        (tmp / "ours").write_text("1")
        target.mkdir()  # even an empty one: rename(2) alone would replace it
    assert target.is_dir() and list(target.iterdir()) == []
    assert _temporaries(tmp_path) == []


def test_a_dangling_link_that_appears_during_the_run_is_kept(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(OutputExistsError), atomic_output(target) as tmp:
        tmp.write_bytes(b"ours")
        target.symlink_to(tmp_path / "nowhere")
    assert target.is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("fallback", ["renameat2", "link", "claim"])
@pytest.mark.parametrize("kind", ["file", "directory"])
def test_rename_noreplace_never_replaces(fallback, kind, tmp_path, monkeypatch):
    """Each publishing primitive (and each fallback) refuses an existing name, or publishes."""
    if fallback != "renameat2":
        monkeypatch.setattr(files, "_renameat2", lambda: None)
    elif files._renameat2() is None:
        pytest.skip("no renameat2 in this libc")
    if fallback == "claim":

        def no_links(*args):
            raise PermissionError(1, "hard links not supported here")

        monkeypatch.setattr(os, "link", no_links)

    def make(path, text):
        if kind == "file":
            path.write_text(text)
        else:
            path.mkdir()
            (path / "inside").write_text(text)

    def read(path):
        return (path if kind == "file" else path / "inside").read_text()

    source, target = tmp_path / "source", tmp_path / "target"
    make(source, "new")
    for existing in ("file", "directory", "link"):
        victim = tmp_path / f"existing-{existing}"
        if existing == "file":
            victim.write_text("old")
        elif existing == "directory":
            victim.mkdir()
        else:
            victim.symlink_to(tmp_path / "nowhere")
        with pytest.raises(FileExistsError):
            rename_noreplace(source, victim)
        assert read(source) == "new"
        assert victim.is_symlink() if existing == "link" else victim.exists()
    rename_noreplace(source, target)
    assert read(target) == "new" and not source.exists()


def _race_writer(target: str, directory: bool, barrier, results, index: int) -> None:
    from pathlib import Path

    from karst_deploy.files import atomic_directory, atomic_output

    opener = atomic_directory if directory else atomic_output
    try:
        with opener(Path(target)) as tmp:
            if directory:
                (tmp / "writer").write_text(str(index))
            else:
                tmp.write_text(str(index))
            barrier.wait(timeout=60)  # everyone has passed the up-front check: publish together
        results[index] = "published"
    except OutputExistsError:
        results[index] = "refused"


@pytest.mark.parametrize("directory", [False, True], ids=["file", "directory"])
def test_concurrent_writers_exactly_one_wins(directory, tmp_path):
    """Processes publishing the same output at the same moment: one wins, the rest refuse."""
    context = multiprocessing.get_context("spawn")
    writers = 4
    barrier = context.Barrier(writers)
    results = context.Manager().dict()
    target = tmp_path / "out"
    processes = [
        context.Process(target=_race_writer, args=(str(target), directory, barrier, results, i))
        for i in range(writers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    outcome = dict(results)
    assert sorted(outcome.values()) == ["published"] + ["refused"] * (writers - 1), outcome
    winner = next(i for i, r in outcome.items() if r == "published")
    written = (target / "writer") if directory else target
    assert written.read_text() == str(winner)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# -- special files and links ------------------------------------------------------------------


def _special(kind, path):
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return server
    return None


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", ["fifo", "socket", "directory"])
def test_special_files_are_refused_even_with_force(kind, force, tmp_path):
    target = tmp_path / "x.onnx"
    if kind == "directory":
        target.mkdir()
        (target / "keep").write_text("1")
    held = _special(kind, target)
    try:
        described = {"fifo": "FIFO", "socket": "socket", "directory": "directory"}[kind]
        with pytest.raises(OutputExistsError, match=f"is a {described}") as raised:
            refuse_existing(target, force)
        assert str(target) in str(raised.value)
        with pytest.raises(OutputExistsError), atomic_output(target, force=force) as tmp:
            tmp.write_bytes(b"x")
        mode = os.lstat(target).st_mode
        assert {"fifo": stat.S_ISFIFO, "socket": stat.S_ISSOCK, "directory": stat.S_ISDIR}[kind](
            mode
        )
        assert _temporaries(tmp_path) == []
    finally:
        if held is not None:
            held.close()


@pytest.mark.parametrize("force", [False, True])
def test_a_character_device_is_never_replaced(force):
    null = "/dev/null"
    if not os.path.exists(null) or not stat.S_ISCHR(os.lstat(null).st_mode):
        pytest.skip("no /dev/null character device here")
    with (
        pytest.raises(OutputExistsError, match="is a character device"),
        atomic_output(null, force=force) as tmp,
    ):
        tmp.write_bytes(b"x")
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_a_regular_file_is_refused_where_a_directory_is_expected(tmp_path):
    target = tmp_path / "adapter"
    target.write_text("not a directory")
    with pytest.raises(OutputExistsError, match="is a regular file, where karst-deploy writes a"):
        refuse_existing(target, True, directory=True)
    assert target.read_text() == "not a directory"


def test_a_dangling_link_is_an_existing_output(tmp_path):
    target, aim = tmp_path / "model.onnx", tmp_path / "elsewhere" / "aim.onnx"
    target.symlink_to(aim)
    with pytest.raises(OutputExistsError, match="symbolic link"):
        refuse_existing(target, False)
    with atomic_output(target, force=True) as tmp:  # replaces the link itself
        tmp.write_bytes(b"new")
    assert not target.is_symlink() and target.read_bytes() == b"new"
    assert not aim.parent.exists()  # never written through


def test_force_replaces_a_link_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    for name, directory in (("model.onnx", False), ("report", True)):
        target = tmp_path / name
        target.symlink_to(victim)
        opener = atomic_directory if directory else atomic_output
        with opener(target, force=True) as tmp:
            (tmp / "x").write_bytes(b"new") if directory else tmp.write_bytes(b"new")
        assert not target.is_symlink() and (target.is_dir() if directory else target.is_file())
    assert victim.read_bytes() == b"precious"
    assert _temporaries(tmp_path) == []


# -- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_respect_the_umask(umask, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    previous = os.umask(umask)
    try:
        with atomic_output(tmp_path / "file.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_directory(tmp_path / "dir") as tmp:
            (tmp / "sub").mkdir()
            save_file({"a": np.zeros(2, np.float32)}, str(tmp / "sub" / "w.safetensors"))
    finally:
        os.umask(previous)
    assert files.current_umask() == previous
    assert stat.S_IMODE(os.stat(tmp_path / "file.bin").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "dir").st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "dir" / "sub").st_mode) == 0o777 & ~umask
    # safetensors itself writes 0600 whatever the umask
    weights = tmp_path / "dir" / "sub" / "w.safetensors"
    assert stat.S_IMODE(os.stat(weights).st_mode) == 0o666 & ~umask


# -- the directory is probed, temporaries are named, registered and swept ---------------------


def test_an_unwritable_output_directory_is_refused_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="Cannot create the directory"):
        refuse_existing(blocker / "sub" / "out.onnx", False)
    if os.geteuid() == 0:
        return  # root writes through permission bits
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(EnvironmentFailure, match=f"Cannot write in '{locked}'.*EACCES"):
        refuse_existing(locked / "out.onnx", False)


def test_temporaries_are_named_registered_and_removed(tmp_path):
    with temporary_directory(tmp_path / "out.onnx") as scratch:
        assert TEMP_PATTERN.match(scratch.name) and f"-{os.getpid()}-" in scratch.name
        assert str(scratch) in interrupts._registry
        (scratch / "big").write_bytes(b"0" * 1000)
    assert not scratch.exists() and str(scratch) not in interrupts._registry
    # A temporary left registered (its writer never reached its finally) goes at exit.
    leftover = files._create_temp(tmp_path / "y.onnx", directory=True)
    interrupts.remove_all()
    assert not leftover.exists() and list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_sweep_removes_only_the_temporaries_of_dead_runs(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    other_host = "0" * 8 if files.HOST != "0" * 8 else "1" * 8
    names = {
        f".a.onnx.karst-{files.HOST}-{dead}-0123abcd.tmp": True,  # our machine, process gone
        f".q.onnx.karst-{files.HOST}-{dead}-0123abce.tmp": True,  # a staging directory
        f".b.onnx.karst-{files.HOST}-{alive}-0123abcd.tmp": False,  # a run in progress
        f".c.onnx.karst-{other_host}-{dead}-0123abcd.tmp": False,  # another machine, recent
        f".d.onnx.karst-{other_host}-{dead}-0123abce.tmp": True,  # another machine, a day old
        f".e.onnx.{dead}.tmp": False,  # not our naming
        "model.onnx": False,
    }
    for name in names:
        path = tmp_path / name
        if name.startswith(".q"):
            path.mkdir()
            (path / "fp32.onnx").write_bytes(b"x")
        else:
            path.write_bytes(b"x")
    old = time.time() - files.FOREIGN_STALE_SECONDS - 60
    os.utime(tmp_path / f".d.onnx.karst-{other_host}-{dead}-0123abce.tmp", (old, old))
    swept = sweep_stale(tmp_path)
    assert sorted(p.name for p in swept) == sorted(n for n, stale in names.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for n, stale in names.items() if not stale
    )


def test_refuse_existing_sweeps_next_to_the_output(tmp_path):
    stale = tmp_path / f".x.onnx.karst-{files.HOST}-{_dead_pid()}-0123abcd.tmp"
    stale.write_bytes(b"a full-size leftover")
    refuse_existing(tmp_path / "x.onnx", False)
    assert list(tmp_path.iterdir()) == []


# -- interruption, in process (the CLI's behaviour as real processes: test_signals.py) -------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_a_signal_removes_temporaries_and_exits_with_its_code(signum, code, tmp_path, capsys):
    target = tmp_path / "out.onnx"
    with (
        pytest.raises(SystemExit) as exited,
        interrupts.exit_on_interrupt(),
        atomic_output(target) as tmp,
    ):
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler interrupts this
        pytest.fail("the signal did not interrupt the run")
    assert exited.value.code == code
    assert list(tmp_path.iterdir()) == []
    assert signal.Signals(signum).name in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not interrupts._handler  # handlers restored


def test_a_signal_inside_a_critical_section_is_deferred(tmp_path):
    reached = []
    with pytest.raises(SystemExit) as exited, interrupts.exit_on_interrupt():
        with interrupts.critical():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            reached.append("end of the critical section")
        pytest.fail("the deferred signal was not raised")
    assert exited.value.code == 130 and reached == ["end of the critical section"]


def test_a_signal_after_the_output_is_published_lets_the_run_finish(tmp_path, capsys):
    target = tmp_path / "out.onnx"
    finished = []
    with interrupts.exit_on_interrupt():
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"complete")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        finished.append(True)
    assert finished == [True] and target.read_bytes() == b"complete"
    assert "arrived after the output was written" in capsys.readouterr().err


def test_a_published_staging_file_is_not_a_commit(tmp_path):
    """Writes inside a staging directory (or to a cache) keep the run interruptible."""
    with (
        pytest.raises(SystemExit) as exited,
        interrupts.exit_on_interrupt(),
        atomic_directory(tmp_path / "report") as staging,
    ):
        with atomic_output(staging / "inner.json") as tmp:
            tmp.write_text("{}")
        with atomic_output(tmp_path / "cache.bin", cache=True) as tmp:
            tmp.write_bytes(b"c")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert exited.value.code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin"]


def test_a_swallowed_interrupt_still_stops_the_run_before_it_writes(tmp_path):
    """Library code with a bare ``except:`` may eat the KeyboardInterrupt: no output then."""
    target = tmp_path / "out.onnx"
    with pytest.raises(SystemExit) as exited, interrupts.exit_on_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass  # swallowed
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"complete, but the user asked to stop")
    assert exited.value.code == 130 and list(tmp_path.iterdir()) == []
