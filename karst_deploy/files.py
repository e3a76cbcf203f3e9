"""Atomic, non-clobbering writes and file hashing.

Nothing karst-deploy writes is ever half-written: outputs go to a temporary sibling
and are renamed into place only once complete, and an existing artifact is replaced
only when the caller passes ``force=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from karst_deploy.errors import InputError, OutputExistsError, clip


def refuse_existing(path: Path, force: bool) -> None:
    """Raise unless `path` is free or the caller allows overwriting it."""
    if path.exists() and not force:
        raise OutputExistsError(
            f"Output '{path}' already exists; karst-deploy never overwrites an artifact "
            "silently. Pass --force (force=True) to replace it, or choose another path."
        )


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` on success.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    if path.is_dir():  # even with --force: a file never replaces a directory
        raise InputError(f"Output '{clip(path)}' is a directory; give a file name to write.")
    refuse_existing(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; move it to `path` on success."""
    path = Path(path)
    refuse_existing(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            # Move the old artifact aside first so a failure never leaves neither.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
