"""Markers for tests that need TensorRT and a CUDA GPU: they skip, with the reason, elsewhere."""

from __future__ import annotations

import importlib.util

import pytest


def _missing() -> str | None:
    import torch

    if importlib.util.find_spec("tensorrt") is None:
        return "needs TensorRT (JetPack on a Jetson, pip install 'karst-deploy[tensorrt]')"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # a broken install: libnvinfer missing, wrong CUDA
        return f"TensorRT does not import: {type(exc).__name__}: {exc}"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU visible to PyTorch"
    return None


MISSING = _missing()


def needs_tensorrt_gpu(test):
    """Mark `test` tensorrt + gpu and skip it with the reason when either is absent."""
    for mark in (
        pytest.mark.tensorrt,
        pytest.mark.gpu,
        pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
    ):
        test = mark(test)
    return test


#: Skips tests that need TensorRT *absent* (its error messages) where it is installed.
without_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None,
    reason="TensorRT is installed here; this checks the message shown where it is not",
)
