"""ONNX Runtime's CUDA and TensorRT execution providers behind the Runner interface."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from karst_deploy.backends import runner_class
from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
from karst_deploy.backends.onnxruntime_gpu import OnnxRuntimeCudaRunner, OnnxRuntimeTensorRTRunner
from karst_deploy.errors import MissingDependencyError
from tests.engine.graphs import save, tiny_classifier

AVAILABLE = ort.get_available_providers()


def test_registered_by_name():
    assert runner_class("onnxruntime-cuda") is OnnxRuntimeCudaRunner
    assert runner_class("onnxruntime-tensorrt") is OnnxRuntimeTensorRTRunner


@pytest.mark.parametrize(
    ("precision", "fp16", "int8"),
    [("fp32", False, False), ("fp16", True, False), ("int8", True, True)],
)
def test_tensorrt_provider_options_follow_the_model(precision, fp16, int8, tmp_path):
    onnx_file = save(tiny_classifier(precision, precision), tmp_path / "model.onnx")
    runner = OnnxRuntimeTensorRTRunner(onnx_file, max_batch=16)
    name, options = runner.providers[0]
    assert name == "TensorrtExecutionProvider"
    assert [p if isinstance(p, str) else p[0] for p in runner.providers[1:]] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert options["trt_engine_cache_path"] == str(tmp_path / "model.onnx.ort-trt-cache")
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (fp16, int8)
    assert options["trt_profile_min_shapes"] == "images:1x3x8x8"
    assert options["trt_profile_max_shapes"] == "images:16x3x8x8"
    fixed = OnnxRuntimeTensorRTRunner(save(tiny_classifier(batch=2), tmp_path / "fixed.onnx"))
    assert "trt_profile_min_shapes" not in fixed.providers[0][1]


@pytest.mark.parametrize("runner", [OnnxRuntimeCudaRunner, OnnxRuntimeTensorRTRunner])
def test_a_missing_gpu_provider_is_a_clear_error(runner, tmp_path):
    provider = {
        OnnxRuntimeCudaRunner: "CUDAExecutionProvider",
        OnnxRuntimeTensorRTRunner: "TensorrtExecutionProvider",
    }[runner]
    if provider in AVAILABLE:
        pytest.skip(f"{provider} is available here")
    with pytest.raises(MissingDependencyError, match=f"{provider}.*onnxruntime-gpu"):
        runner(save(tiny_classifier(), tmp_path / "model.onnx")).activate()


@pytest.mark.gpu
@pytest.mark.parametrize("runner", [OnnxRuntimeCudaRunner, OnnxRuntimeTensorRTRunner])
def test_gpu_providers_match_the_cpu(runner, tmp_path):
    needed = {
        OnnxRuntimeCudaRunner: "CUDAExecutionProvider",
        OnnxRuntimeTensorRTRunner: "TensorrtExecutionProvider",
    }[runner]
    if needed not in AVAILABLE:
        pytest.skip(f"needs onnxruntime-gpu with {needed} and a CUDA GPU")
    onnx_file = save(tiny_classifier("fp16", "fp16"), tmp_path / "model.onnx")
    images = np.random.default_rng(0).standard_normal((4, 3, 8, 8), dtype=np.float32)
    with OnnxRuntimeRunner(onnx_file) as cpu, runner(onnx_file) as gpu:
        expected, logits = cpu.infer(images), gpu.infer(images)
        assert gpu.describe()["providers"][0] == needed
    assert np.abs(logits - expected).max() <= 2e-2 * max(1, np.abs(expected).max())
