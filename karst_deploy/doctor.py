"""`karst-deploy doctor`: what this machine can run, and how to get what it cannot."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

TENSORRT_HINT = (
    "On a Jetson, TensorRT comes with JetPack: create the virtual environment with "
    "--system-site-packages so it sees JetPack's tensorrt module. On a desktop GPU, from the "
    "karst-deploy checkout (karst-deploy is not on PyPI, so 'karst-deploy[tensorrt]' means "
    "the checkout's extra): pip install -e '.[tensorrt]', or pip install 'tensorrt>=10' "
    "into the same environment (its wheels fetch NVIDIA's libraries from pypi.nvidia.com)."
)
CUDA_HINT = (
    "PyTorch sees no CUDA GPU. On a Jetson install NVIDIA's PyTorch wheel for your JetPack "
    "(PyPI's aarch64 torch is CPU-only); on a desktop use a CUDA build of torch and check the "
    "driver with nvidia-smi. Without one, everything but the TensorRT and ONNX Runtime GPU "
    "runners works (ONNX Runtime on the CPU, trtexec commands via emit-trtexec)."
)
ORT_GPU_HINT = (
    "The onnxruntime-cuda/onnxruntime-tensorrt runners need onnxruntime-gpu and a CUDA GPU "
    "(and TensorRT for the TensorRT provider): pip uninstall -y onnxruntime && pip install "
    "'onnxruntime-gpu>=1.17' (both packages provide the onnxruntime module: keep one). On a "
    "Jetson, take the onnxruntime-gpu wheel for your JetPack from the Jetson Zoo."
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


@dataclass
class TensorRTStatus:
    """Whether TensorRT imports here; if not, why (`reason`) and how to get it (`hint`)."""

    available: bool
    reason: str | None = None
    version: str | None = None
    # TensorRT 11 removed BuilderFlag.FP16: precision comes from the ONNX alone.
    fp16_builder_flag: bool | None = None
    hint: str | None = None
    dla_cores: int | None = None
    builder_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON: only the fields that apply (a missing TensorRT has no version)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def tensorrt_status(gpu_present: bool = False) -> TensorRTStatus:
    """Whether TensorRT imports here, and if not, why and how to get it."""
    try:
        import tensorrt
    except Exception as exc:
        return TensorRTStatus(False, reason=f"{type(exc).__name__}: {exc}", hint=TENSORRT_HINT)
    major = int(tensorrt.__version__.split(".")[0])
    status = TensorRTStatus(
        True,
        version=tensorrt.__version__,
        fp16_builder_flag=hasattr(tensorrt.BuilderFlag, "FP16"),
    )
    if major < 10:
        status.hint = f"karst-deploy needs TensorRT 10.x or 11.x. {TENSORRT_HINT}"
    if gpu_present:  # a Builder needs a CUDA context, so only where a GPU is
        try:
            status.dla_cores = tensorrt.Builder(tensorrt.Logger()).num_DLA_cores
        except Exception as exc:
            status.builder_error = f"{type(exc).__name__}: {exc}"
    return status


@dataclass(frozen=True)
class GpuDevice:
    """One CUDA device as PyTorch sees it."""

    name: str
    compute_capability: str  # "8.7"
    memory_gib: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gpu_devices() -> list[GpuDevice]:
    """Name, compute capability and memory of every CUDA device PyTorch sees."""
    import torch

    devices = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        devices.append(
            GpuDevice(
                name=properties.name,
                compute_capability=f"{properties.major}.{properties.minor}",
                memory_gib=round(properties.total_memory / 2**30, 1),
            )
        )
    return devices


def missing_runtimes(
    cuda_available: bool, tensorrt: TensorRTStatus, onnxruntime_providers: list[str]
) -> dict[str, str]:
    """What this machine lacks for the GPU paths, each with how to get it."""
    missing = {}
    if not cuda_available:
        missing["CUDA GPU"] = CUDA_HINT
    if tensorrt.hint is not None:  # missing, or a version we do not support
        missing["TensorRT"] = tensorrt.hint
    if "CUDAExecutionProvider" not in onnxruntime_providers:
        missing["onnxruntime-gpu"] = ORT_GPU_HINT
    return missing


@dataclass
class Diagnosis:
    """Versions, accelerators and runtimes of this machine; `to_dict` is doctor's JSON."""

    karst_deploy: str | None
    python: str
    platform: str
    torch: str
    timm: str | None
    onnx: str | None
    onnxruntime: str
    onnxruntime_providers: list[str]
    cuda_available: bool
    cuda_build: str | None  # the CUDA torch was built for (None: CPU-only torch)
    gpus: list[GpuDevice]
    tensorrt: TensorRTStatus
    cpu: str
    cpu_cores: int | None
    cpu_cores_usable: int | None
    torch_threads: int
    missing: dict[str, str] = field(default_factory=dict)  # what is lacking -> how to get it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tensorrt": self.tensorrt.to_dict()}


def diagnose() -> Diagnosis:
    """Versions, accelerators and runtimes of this machine, and what it lacks."""
    import onnxruntime
    import torch

    cuda = torch.cuda.is_available()
    providers = onnxruntime.get_available_providers()
    tensorrt = tensorrt_status(gpu_present=cuda)
    return Diagnosis(
        karst_deploy=_version("karst_deploy"),
        python=sys.version.split()[0],
        platform=platform.platform(),
        torch=torch.__version__,
        timm=_version("timm"),
        onnx=_version("onnx"),
        onnxruntime=onnxruntime.__version__,
        onnxruntime_providers=providers,
        cuda_available=cuda,
        cuda_build=torch.version.cuda,
        gpus=gpu_devices(),
        tensorrt=tensorrt,
        cpu=cpu_model(),
        cpu_cores=os.cpu_count(),
        cpu_cores_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        torch_threads=torch.get_num_threads(),
        missing=missing_runtimes(cuda, tensorrt, providers),
    )
