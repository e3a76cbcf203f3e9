"""ONNX Runtime on the GPU: the CUDA and the TensorRT execution providers.

Thin subclasses of `OnnxRuntimeRunner` that only choose providers (onnxruntime-gpu needed;
the base class refuses a provider that is missing or that ONNX Runtime silently dropped for
the CPU). Provider options follow ONNX Runtime's "TensorRT Execution Provider" page:

- the engine cache (``trt_engine_cache_enable``/``trt_engine_cache_path``) and the timing
  cache (``trt_timing_cache_enable``/``trt_timing_cache_path``) live in
  ``<model>.onnx.ort-trt-cache/`` next to the model, so a session after the first loads the
  engine instead of rebuilding it for minutes. ONNX
  Runtime does not invalidate the cache when the model, ONNX Runtime, TensorRT or GPU change:
  delete the directory then.
- one optimisation profile for the image input (``trt_profile_min/opt/max_shapes``, batch
  1..`max_batch`) instead of an engine rebuilt whenever a larger batch arrives.
- precision flags per ONNX Runtime version (`tensorrt_precision`): setting
  ``trt_fp16_enable``/``trt_int8_enable`` makes the provider build a *weakly typed* network,
  where TensorRT may run any layer in fp16 — including the fp32 head the precision step keeps
  on purpose. From ONNX Runtime `STRONGLY_TYPED_ORT` on, with both off it builds *strongly
  typed* from the ONNX types (fp16 tensors and Q/DQ int8 as written), so both stay off there;
  an older ONNX Runtime needs them on for fp16/int8 kernels at all. The choice is recorded in
  `describe` (and so in the bench JSON). TensorRT 11 needs ONNX Runtime ≥ `TENSORRT_11_ORT`.
  CUDA runs whatever TensorRT does not take (the provider list's second entry).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner, Provider
from karst_deploy.errors import MissingDependencyError

#: The first ONNX Runtime whose TensorRT provider builds strongly typed networks when no
#: precision flag is set (and the first that supports TensorRT 11, where every network is
#: strongly typed). From the project's TensorRT review; not checked against ORT's source.
STRONGLY_TYPED_ORT = (1, 27)
TENSORRT_11_ORT = (1, 27)
#: Distributions that carry TensorRT's libraries for the provider to load.
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-libs")


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def tensorrt_precision(precision: str, ort_version: str) -> dict[str, Any]:
    """The provider's precision flags for an ONNX file of `precision`, and the typing it gets."""
    if _version(ort_version) >= STRONGLY_TYPED_ORT:
        fp16 = int8 = False
        typing = "strongly typed (precision from the ONNX types)"
    else:
        fp16, int8 = precision in ("fp16", "int8"), precision == "int8"
        typing = "weakly typed" + (" (fp16/int8 kernels enabled by flag)" if fp16 else "")
    return {"trt_fp16_enable": fp16, "trt_int8_enable": int8, "typing": typing}


def installed_tensorrt() -> str | None:
    """The TensorRT version pip installed here (what the provider will load), if any."""
    from importlib import metadata

    for name in TENSORRT_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_tensorrt_11(ort_version: str, tensorrt_version: str | None) -> None:
    """Refuse TensorRT 11 under an ONNX Runtime whose provider predates it."""
    eleven = tensorrt_version is not None and _version(tensorrt_version)[:1] >= (11,)
    if eleven and _version(ort_version) < TENSORRT_11_ORT:
        needed = ".".join(map(str, TENSORRT_11_ORT))
        raise MissingDependencyError(
            f"TensorRT {tensorrt_version} is installed, but ONNX Runtime {ort_version}'s "
            f"TensorRT provider supports TensorRT 11 only from ONNX Runtime {needed}: "
            f'pip install "onnxruntime-gpu>={needed}" (or TensorRT 10.x).'
        )


class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    """ONNX Runtime's CUDA execution provider (timing includes host↔device copies)."""

    name = "onnxruntime-cuda"
    default_providers = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeTensorRTRunner(OnnxRuntimeRunner):
    """ONNX Runtime's TensorRT execution provider, with its engine cache next to the model."""

    name = "onnxruntime-tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: list[Provider] | None = None,
        threads: int | None = None,
        *,
        allow_spinning: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        max_batch: int = 32,
        device: int = 0,
    ) -> None:
        path = Path(path)
        self.cache_dir = (
            Path(cache_dir) if cache_dir else path.with_name(path.name + ".ort-trt-cache")
        )
        if providers is None:
            providers = [
                ("TensorrtExecutionProvider", self.tensorrt_options(path, max_batch, device)),
                ("CUDAExecutionProvider", {"device_id": device}),
                "CPUExecutionProvider",
            ]
        super().__init__(path, providers, threads, allow_spinning=allow_spinning)

    def tensorrt_options(self, path: Path, max_batch: int, device: int) -> dict[str, Any]:
        import onnxruntime as ort

        from karst_deploy.onnx_file import OnnxFile

        source = OnnxFile(path, "onnx")
        image = source.image_input
        precision = tensorrt_precision(source.precision, ort.__version__)
        self.typing = precision.pop("typing")
        options: dict[str, Any] = {
            "device_id": device,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self.cache_dir),
            **precision,
        }
        if image.dynamic_batch:
            name, dims = image.name, "x".join(map(str, image.chw))
            options.update(
                trt_profile_min_shapes=f"{name}:1x{dims}",
                trt_profile_opt_shapes=f"{name}:1x{dims}",
                trt_profile_max_shapes=f"{name}:{max_batch}x{dims}",
            )
        return options

    def activate_impl(self) -> None:
        import onnxruntime as ort

        check_tensorrt_11(ort.__version__, installed_tensorrt())
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        super().activate_impl()

    def describe(self) -> dict[str, Any]:
        options = next((p[1] for p in self.providers if isinstance(p, tuple)), {})
        return {
            **super().describe(),
            "engine_cache": str(self.cache_dir),
            "tensorrt_network": getattr(self, "typing", None),
            "trt_fp16_enable": options.get("trt_fp16_enable"),
            "trt_int8_enable": options.get("trt_int8_enable"),
            "tensorrt_installed": installed_tensorrt(),
        }
