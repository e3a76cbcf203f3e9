"""`karst-deploy doctor`: what this machine can run, and how to get what it cannot."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import Any

TENSORRT_HINT = (
    "On a Jetson, TensorRT comes with JetPack: create the virtual environment with "
    "--system-site-packages so it sees JetPack's tensorrt module. On a desktop GPU: "
    "pip install 'karst-deploy[tensorrt]' (pulls NVIDIA's tensorrt wheels)."
)


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # report, never crash: doctor must work on broken installs
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tensorrt_status() -> dict[str, Any]:
    """Whether TensorRT imports here, and if not, why and how to get it."""
    try:
        import tensorrt
    except Exception as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}", "hint": TENSORRT_HINT}
    return {"available": True, "version": tensorrt.__version__}


def diagnose() -> dict[str, Any]:
    """Versions, accelerators and runtimes, as one JSON-ready dict."""
    import onnxruntime
    import torch

    cuda = torch.cuda.is_available()
    return {
        "karst_deploy": _version("karst_deploy"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "onnx": _version("onnx"),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "tensorrt": tensorrt_status(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "torch_threads": torch.get_num_threads(),
    }
