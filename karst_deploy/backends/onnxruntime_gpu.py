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
- ``trt_fp16_enable``/``trt_int8_enable`` follow the ONNX file's precision: the provider builds
  weakly typed networks, where fp16 tensors or Q/DQ nodes alone do not allow fp16/int8
  kernels. CUDA runs whatever TensorRT does not take (the provider list's second entry).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner, Provider


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
        from karst_deploy.engine.onnx_graph import summarize_onnx

        summary = summarize_onnx(path)
        precision = summary.precision
        options: dict[str, Any] = {
            "device_id": device,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self.cache_dir),
            "trt_fp16_enable": precision in ("fp16", "int8"),
            "trt_int8_enable": precision == "int8",
        }
        if summary.fixed_batch is None:
            name, dims = summary.input_name, "x".join(map(str, summary.input_chw))
            options.update(
                trt_profile_min_shapes=f"{name}:1x{dims}",
                trt_profile_opt_shapes=f"{name}:1x{dims}",
                trt_profile_max_shapes=f"{name}:{max_batch}x{dims}",
            )
        return options

    def activate(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        super().activate()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine_cache": str(self.cache_dir)}
