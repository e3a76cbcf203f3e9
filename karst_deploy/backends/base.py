"""One interface for every runtime (after Polygraphy's runners).

A `Runner` turns a float32 NCHW batch into float32 logits. Parity and bench know only
this interface, never a backend. Runtimes that may be missing (TensorRT,
onnxruntime-gpu) are imported inside their module, which is imported only when that
runner is asked for: ``import karst_deploy`` works without them.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any

import numpy as np

from karst_deploy.errors import InputError


class Runner(abc.ABC):
    """A loaded model on one runtime. Use as a context manager (activate/deactivate)."""

    #: Short name shown in tables and JSON ("torch", "onnxruntime", "tensorrt", ...).
    name: str = "runner"

    def __init__(self) -> None:
        self.last_inference_time: float | None = None  # seconds, of the last `infer`
        self.active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        """Load the model / create the session (idempotent)."""
        self.active = True

    def deactivate(self) -> None:
        """Release the session and device memory."""
        self.active = False

    @abc.abstractmethod
    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, 3, H, W) float32."""

    def describe(self) -> dict[str, Any]:
        """What a report should say about this runner (runtime version, device, precision)."""
        return {"runner": self.name}


# name -> (module, class); modules are imported only when the runner is requested.
RUNNERS: dict[str, tuple[str, str]] = {}


def register_runner(name: str, module: str, class_name: str) -> None:
    RUNNERS[name] = (module, class_name)


def runner_class(name: str) -> type[Runner]:
    """The Runner class registered as `name` (imports its runtime now)."""
    if name not in RUNNERS:
        raise InputError(f"Unknown runner '{name}'; choose one of {sorted(RUNNERS)}.")
    module, class_name = RUNNERS[name]
    return getattr(importlib.import_module(module), class_name)
