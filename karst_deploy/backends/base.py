"""One interface for every runtime (after Polygraphy's runners) and the registry of runners.

A `Runner` turns a float32 NCHW batch into float32 logits. Parity and bench know only
this interface, never a backend. The base class owns the lifecycle and the timing
(Polygraphy's ``BaseRunner``): `activate`/`deactivate` are idempotent and make a context
manager, `infer` checks the batch, activates on first use and times the call; a subclass
implements `activate_impl`, `infer_impl` and `deactivate_impl` only, and `from_file` when it
can open a model file (what `bench` and ``verify-parity --stage`` use).

Runtimes that may be missing (TensorRT, onnxruntime-gpu) are imported inside their module,
which is imported only when that runner is asked for: ``import karst_deploy`` works
without them.
"""

from __future__ import annotations

import abc
import importlib
import os
import time
from typing import Any

import numpy as np

from karst_deploy.errors import InputError


class Runner(abc.ABC):
    """A loaded model on one runtime. Use as a context manager (activate/deactivate)."""

    #: Short name shown in tables and JSON ("torch", "onnxruntime", "tensorrt", ...).
    name: str = "runner"

    def __init__(self) -> None:
        self.last_inference_time: float | None = None  # seconds, of the last `infer`
        self.is_active = False
        self._device_time: float | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, threads: int | None = None) -> Runner:
        """This runner on the ONNX model file `path` (`threads`: CPU threads, where it applies).

        Runners that cannot open a file (a PyTorch module given in memory) keep this refusal.
        """
        raise InputError(f"The '{cls.name}' runner cannot open model files ('{path}').")

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        """Load the model / create the session (a second call does nothing)."""
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        """Release the session and device memory (a second call does nothing)."""
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def activate_impl(self) -> None:  # noqa: B027 - optional hook, nothing to load by default
        """Load what `infer_impl` needs."""

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        """Release what `activate_impl` loaded."""

    # -- inference --------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W); times the call.

        `last_inference_time` is the wall time of `infer_impl`, or the device time it
        reported with `report_time` (CUDA events on a GPU).
        """
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or not len(images):
            raise InputError(
                f"The {self.name} runner takes a batch of images (N, C, H, W) with N ≥ 1; got "
                f"shape {images.shape}."
            )
        self.activate()
        self._device_time = None
        start = time.perf_counter()
        logits = self.infer_impl(images)
        elapsed = time.perf_counter() - start
        self.last_inference_time = elapsed if self._device_time is None else self._device_time
        return logits

    def report_time(self, seconds: float) -> None:
        """Called by `infer_impl` that measures its own device time, which `infer` then keeps."""
        self._device_time = seconds

    @abc.abstractmethod
    def infer_impl(self, images: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for a contiguous float32 batch; the runner is active."""

    def describe(self) -> dict[str, Any]:
        """What a report should say about this runner (runtime version, device, precision)."""
        return {"runner": self.name}


# name -> (module, class); modules are imported only when the runner is requested.
RUNNERS: dict[str, tuple[str, str]] = {}


def register_runner(name: str, module: str, class_name: str) -> None:
    """Make `module.class_name` the runner called `name` (imported on first request)."""
    RUNNERS[name] = (module, class_name)


def runner_names() -> list[str]:
    """Every registered runner name, for help texts and messages."""
    return sorted(RUNNERS)


def runner_class(name: str) -> type[Runner]:
    """The Runner class registered as `name` (imports its runtime now)."""
    if name not in RUNNERS:
        raise InputError(f"Unknown runner '{name}'; choose one of {', '.join(runner_names())}.")
    module, class_name = RUNNERS[name]
    return getattr(importlib.import_module(module), class_name)
