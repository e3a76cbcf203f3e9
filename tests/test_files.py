"""Atomic, non-clobbering outputs."""

from __future__ import annotations

import pytest

from karst_deploy.errors import OutputExistsError
from karst_deploy.files import atomic_directory, atomic_output


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
