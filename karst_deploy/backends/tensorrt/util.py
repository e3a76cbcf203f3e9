"""The leaf of the TensorRT package: the lazy import, the logger and this machine's GPU.

Nothing here imports TensorRT or CUDA at module level: ``import karst_deploy`` works
without them, and a missing one is a `MissingDependencyError` saying how to get it (as
Polygraphy's ``mod.lazy_import``). Device memory, streams and CUDA events come from
PyTorch's CUDA runtime rather than cuda-python: torch is already a dependency, JetPack's
PyTorch wheels and PyPI's desktop wheels are CUDA builds, and tensors free their memory
themselves. The price: PyTorch must see the GPU (``torch.cuda.is_available()``), which
`doctor` reports.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from karst_deploy.errors import InputError, KarstDeployError, MissingDependencyError

MIN_TENSORRT_MAJOR = 10


@dataclass(frozen=True)
class RuntimeEnvironment:
    """The TensorRT version and GPU an engine is built or run on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.gpu_name, "compute_capability": self.compute_capability}


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a MissingDependencyError saying how to get it."""
    from karst_deploy.doctor import TENSORRT_HINT

    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError from a broken libnvinfer install
        raise MissingDependencyError(
            f"TensorRT is not available here ({type(exc).__name__}: {exc}). {TENSORRT_HINT}"
        ) from None
    major = int(trt.__version__.split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} is too old: karst-deploy needs TensorRT 10.x or 11.x "
            f"(JetPack 6.1 and 6.2 ship 10.3). {TENSORRT_HINT}"
        )
    return trt


def import_torch_cuda() -> Any:
    """``torch`` with a usable CUDA device, or a MissingDependencyError saying why not."""
    import torch

    from karst_deploy.doctor import CUDA_HINT

    if not torch.cuda.is_available():
        raise MissingDependencyError(
            f"The TensorRT runner and builder use PyTorch's CUDA runtime. {CUDA_HINT}"
        )
    return torch


def runtime_environment(trt: Any, device: int = 0) -> RuntimeEnvironment:
    """The TensorRT version and GPU of this machine (for sidecars and their checks)."""
    torch = import_torch_cuda()
    major, minor = torch.cuda.get_device_capability(device)
    return RuntimeEnvironment(
        trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}"
    )


@functools.cache
def _logger_class(trt: Any) -> type:
    class CapturingLogger(trt.ILogger):
        """Keeps TensorRT's errors so they end up in our one-paragraph messages."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(msg)

    return CapturingLogger


def make_logger(trt: Any) -> Any:
    return _logger_class(trt)()


def accepted(ok: bool, what: str, logger: Any) -> None:
    """TensorRT answers a rejected setting with False (and a logged error): raise it."""
    if not ok:
        raise KarstDeployError(
            f"TensorRT rejected {what}: {'; '.join(logger.errors) or 'no message logged'}"
        )


def deserialize_engine(
    trt: Any, data: bytes, logger: Any, *, version_compatible: bool, dla_core: int | None = None
) -> tuple[Any, Any]:
    """(engine, runtime) from a plan (keep the runtime alive as long as the engine).

    A DLA engine runs on the core the runtime names when it deserializes (``IRuntime::setDLACore``,
    as trtexec's ``--useDLACore`` does); left unset, an engine built for core 1 runs on core 0.
    """
    runtime = trt.Runtime(logger)
    # A version-compatible plan embeds its lean runtime, which TensorRT runs only when the
    # host code is explicitly trusted (developer guide, "Version Compatibility").
    runtime.engine_host_code_allowed = version_compatible
    if dla_core is not None:
        if dla_core >= runtime.num_DLA_cores:
            raise InputError(
                f"The engine was built for DLA core {dla_core}; this device has "
                f"{runtime.num_DLA_cores} DLA core(s) under TensorRT {trt.__version__}."
            )
        runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise InputError(
            f"TensorRT {trt.__version__} could not load the engine ({'; '.join(logger.errors)}). "
            "Engines run only on the TensorRT version and GPU that built them: rebuild it here "
            "with `karst-deploy build-engine`."
        )
    return engine, runtime
