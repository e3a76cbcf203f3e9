"""Atomic, non-clobbering writes, temporaries, and file hashing.

Nothing karst-deploy writes is ever half-written: outputs go to a temporary sibling and
are published under their final name only once complete. Without ``force`` the publish
cannot replace anything, even a file another process created meanwhile: it is one
``renameat2(RENAME_NOREPLACE)`` (or ``link`` then ``unlink`` where that is missing), so of
two runs writing the same output exactly one succeeds. With ``force`` a regular file,
a directory or a symlink (the link itself, never its target) is replaced atomically; a
device, FIFO or socket, or a file where a directory is expected (and the reverse), is
refused even then. An existing *empty* directory, where a directory is written, counts as
free (people ``mkdir`` the output first, as PEFT's ``save_pretrained`` allows): the
publish renames over it, which rename(2) does only while it is still empty. Outputs get
the usual ``0666 & ~umask`` (directories ``0777``).

Temporaries are named ``.NAME.karst-HOST-PID-RANDOM.tmp`` next to the output and
registered with `karst_deploy.interrupts`, which removes them on every exit path; a run
that was killed outright (SIGKILL, power loss) leaves them behind, and the next run
writing to that directory sweeps those whose process is gone (`sweep_stale`). HOST
identifies the machine and pid namespace the pid belongs to.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from karst_deploy import interrupts
from karst_deploy.errors import InputError, OutputExistsError, clip, os_error


def _host_tag() -> str:
    """Where our process ids mean something: this machine and its pid namespace.

    Two containers sharing a hostname (``--net=host``) and a volume have distinct pid
    namespaces; each must see the other's temporaries as foreign, not as dead.
    """
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return hashlib.sha1(f"{socket.gethostname()} {namespace}".encode()).hexdigest()[:8]


HOST = _host_tag()
TEMP_PATTERN = re.compile(r"^\..*\.karst-([0-9a-f]{8})-([0-9]+)-[0-9a-f]{8}\.tmp$")
# Temporaries from another machine (a shared filesystem) are swept only after this long:
# their owner's liveness cannot be checked from here.
FOREIGN_STALE_SECONDS = 24 * 3600

_KINDS = {
    stat.S_IFREG: "regular file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symbolic link",
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


def _kind(path: Path) -> str | None:
    """What is at `path` without following a symlink; None when nothing (not even a link)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the parent is checked when created
        return None
    return _KINDS.get(stat.S_IFMT(mode), "special file")


def _is_empty_directory(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _check_target(path: Path, force: bool, directory: bool) -> bool:
    """Refuse `path` if it exists (unless `force`) or is something we never replace.

    True when `path` is an empty directory where a directory is to be written: free.
    """
    kind = _kind(path)
    if kind is None:
        return False
    expected = "directory" if directory else "regular file"
    if directory and kind == "directory" and _is_empty_directory(path):
        return True  # an empty directory someone made for us (`mkdir out` first)
    if kind not in (expected, "symbolic link"):
        raise OutputExistsError(
            f"Output '{path}' is a {kind}, where karst-deploy writes a {expected}; it never "
            f"replaces a {kind}, not even with force=True. Choose another path.",
            parameters=("force",),
        )
    if not force:
        what = "already exists"
        if kind == "symbolic link":
            what = f"is a symbolic link (to '{os.readlink(path)}')"
        raise OutputExistsError(
            f"Output '{path}' {what}; karst-deploy never overwrites an artifact silently. "
            "Pass force=True to replace it (a link is replaced itself, its target is never "
            "written), or choose another path.",
            parameters=("force",),
        )


def _prepare(path: Path, force: bool, directory: bool) -> bool:
    """`_check_target`, then the parent created and swept; True for a free empty directory."""
    empty = _check_target(path, force, directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"Cannot create the directory '{path.parent}' for the output '{path}': "
            f"{exc.strerror or exc}."
        ) from None
    sweep_stale(path.parent)
    return empty


def refuse_existing(path: str | os.PathLike[str], force: bool, *, directory: bool = False) -> None:
    """Check, before any long work, that `path` can be written: raise if it cannot.

    Refuses an existing artifact without `force` and anything but a regular file (a
    directory when `directory`) or a symlink even with it, creates the parent directory,
    sweeps stale temporaries there and proves the directory writable by creating and
    removing a temporary.
    """
    path = Path(path)
    _prepare(path, force, directory)
    interrupts.remove(_create_temp(path, directory=False))


def _temp_name(path: Path) -> Path:
    # Keep the name within NAME_MAX (255) whatever the output's name.
    return path.with_name(
        f".{path.name[:120]}.karst-{HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    )


def _make_temp(tmp: Path, directory: bool) -> None:
    """Create the empty temporary `tmp` exclusively (the one place outputs first touch disk)."""
    if directory:
        os.mkdir(tmp, 0o777)
    else:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _create_temp(path: Path, *, directory: bool) -> Path:
    """Create and register a fresh temporary next to `path` (mode from the umask)."""
    with interrupts.critical():
        for _ in range(100):
            tmp = _temp_name(path)
            try:
                _make_temp(tmp, directory)
            except FileExistsError:
                continue
            except OSError as exc:  # exit 2 for a wrong path, 3 for a full or read-only disk
                error = os_error(OSError(exc.errno, exc.strerror, os.fspath(path.parent)))
                raise type(error)(
                    f"Cannot write in '{clip(path.parent)}', the directory of the output "
                    f"'{clip(path.name)}': {error}"
                ) from None
            interrupts.register(tmp)
            return tmp
    raise InputError(f"Cannot create a temporary file next to '{path}'.")  # pragma: no cover


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of dead karst-deploy runs in `directory`; return them.

    A temporary of this machine is stale once its process is gone; one from another
    machine (shared filesystem) once it is older than `FOREIGN_STALE_SECONDS`.
    """
    swept = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return swept
    for entry in entries:
        match = TEMP_PATTERN.match(entry.name)
        if match is None:
            continue
        host, pid = match.group(1), int(match.group(2))
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        stale = not _pid_alive(pid) if host == HOST else age > FOREIGN_STALE_SECONDS
        if not stale:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        swept.append(Path(entry.path))
    return swept


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or glibc older than 2.28
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


def _renameat2_noreplace(source: Path, target: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)``; False where the kernel, libc or filesystem lacks it."""
    function = _renameat2()
    if function is None:
        return False
    result = function(
        _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), os.fspath(target))
    raise OSError(code, os.strerror(code), os.fspath(target))


def rename_noreplace(source: Path, target: Path) -> None:
    """Move `source` to `target`; FileExistsError if anything is at `target`, atomically.

    Where ``renameat2`` is missing: a file is hard-linked then unlinked; otherwise (a
    directory, or a filesystem without hard links) `target` is first claimed with an
    exclusive create and `source` renamed over that empty claim.
    """
    if _renameat2_noreplace(source, target):
        return
    if not source.is_dir():
        try:
            os.link(source, target)
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links on this filesystem (EPERM, ENOTSUP...): claim below
        else:
            os.unlink(source)
            return
    if source.is_dir():
        os.mkdir(target)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        os.rename(source, target)  # replaces our empty claim only
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(exc.errno, "filled while publishing", os.fspath(target)) from None
        raise


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def _apply_umask(tmp: Path, directory: bool) -> None:
    """Give a finished temporary (and, for a directory, everything in it) the usual modes.

    Writers such as safetensors create their files 0600 whatever the umask; an artifact
    is meant to be shared like any file the user creates: ``0666 & ~umask`` (``0777`` for
    directories).
    """
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if not directory:
        os.chmod(tmp, file_mode)
        return
    os.chmod(tmp, dir_mode)
    for root, dirs, files in os.walk(tmp):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), file_mode)


def _appeared(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"Output '{path}' was created by someone else while this run was writing it; "
        "karst-deploy never overwrites an artifact silently. Pass force=True to replace it, or "
        "choose another path.",
        parameters=("force",),
    )


def _publish(
    tmp: Path, path: Path, *, force: bool, directory: bool, cache: bool, onto_empty: bool = False
) -> None:
    """Give the complete temporary `tmp` its final name `path` (see the module doc).

    `onto_empty`: `path` was an empty directory when the run began, and may be taken over
    while it stays empty (one that appears during the run is never replaced).
    """
    final = not cache and not interrupts.is_registered_inside(path)
    _apply_umask(tmp, directory)
    aside = None
    with interrupts.critical():
        if force:
            _check_target(path, force, directory)
        try:
            if force and not directory:
                os.replace(tmp, path)  # replaces a link itself, never writes through it
            else:
                if force and _kind(path) is not None:
                    # rename(2) cannot put a directory over another directory or a link:
                    # move the old one aside, keep it until the new one is in place.
                    aside = _temp_name(path)
                    os.rename(path, aside)
                    interrupts.register(aside)
                try:
                    if onto_empty and aside is None and _kind(path) == "directory":
                        _rename_onto_empty(tmp, path)
                    else:
                        rename_noreplace(tmp, path)
                except FileExistsError:
                    if aside is not None:
                        with contextlib.suppress(OSError):
                            rename_noreplace(aside, path)
                            interrupts.unregister(aside)
                    raise
        except FileExistsError:
            raise _appeared(path) from None
        except IsADirectoryError:
            raise OutputExistsError(
                f"Output '{path}' became a directory while this run was writing it; "
                "karst-deploy never replaces a directory with a file."
            ) from None
        interrupts.unregister(tmp)
        if final:
            interrupts.mark_committed()
    if aside is not None:
        interrupts.remove(aside)


def _rename_onto_empty(tmp: Path, path: Path) -> None:
    """Publish directory `tmp` over the empty directory `path` (rename(2) replaces an empty
    directory atomically, and fails with ENOTEMPTY once anything was put in it)."""
    try:
        os.rename(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(exc.errno, "filled while publishing", os.fspath(path)) from None
        raise


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, force: bool = False, cache: bool = False
) -> Iterator[Path]:
    """Yield a temporary path next to `path`; publish it as `path` on success.

    On any exception (or interrupt) the temporary is removed and `path` is left as it
    was. `cache` marks a cache file (not an output of the command: see `interrupts`).
    """
    path = Path(path)
    _prepare(path, force, directory=False)
    tmp = _create_temp(path, directory=False)
    try:
        yield tmp
        _publish(tmp, path, force=force, directory=False, cache=cache)
    finally:
        interrupts.remove(tmp)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], *, force: bool = False, cache: bool = False
) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; publish it as `path` on success.

    An empty directory at `path` when the run begins is taken over (while it stays empty);
    a directory that appears at `path` during the run is never replaced without `force`.
    """
    path = Path(path)
    empty = _prepare(path, force, directory=True)
    tmp = _create_temp(path, directory=True)
    try:
        yield tmp
        _publish(tmp, path, force=force, directory=True, cache=cache, onto_empty=empty)
    finally:
        interrupts.remove(tmp)


@contextlib.contextmanager
def temporary_directory(near: str | os.PathLike[str]) -> Iterator[Path]:
    """A registered scratch directory next to `near` (an output path), removed afterwards."""
    near = Path(near)
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(near, directory=True)
    try:
        yield tmp
    finally:
        interrupts.remove(tmp)


def write_json(path: str | os.PathLike[str], data: Any, *, force: bool = False) -> Path:
    """Write `data` as indented JSON, atomically."""
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/karst-deploy`` (``~/.cache/karst-deploy`` when it is unset).

    The one place karst-deploy keeps reusable work: pretrained demo backbones,
    calibration ranges.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "karst-deploy"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
