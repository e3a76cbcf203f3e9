"""ONNX Runtime's CUDA and TensorRT execution providers behind the Runner interface."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from karst_deploy.backends import runner_class
from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
from karst_deploy.backends.onnxruntime_gpu import (
    OnnxRuntimeCudaRunner,
    OnnxRuntimeTensorRTRunner,
    check_tensorrt_11,
    tensorrt_precision,
)
from karst_deploy.errors import MissingDependencyError
from tests.backends.tensorrt.graphs import save, tiny_classifier

AVAILABLE = ort.get_available_providers()


def test_registered_by_name():
    assert runner_class("onnxruntime-cuda") is OnnxRuntimeCudaRunner
    assert runner_class("onnxruntime-tensorrt") is OnnxRuntimeTensorRTRunner


@pytest.mark.parametrize(
    ("precision", "ort_version", "fp16", "int8", "typing"),
    [
        ("fp32", "1.22.1", False, False, "weakly typed"),
        ("fp16", "1.22.1", True, False, "weakly typed"),
        ("int8", "1.26.0", True, True, "weakly typed"),
        ("fp16", "1.27.0", False, False, "strongly typed"),
        ("int8", "1.28.0.dev20260101", False, False, "strongly typed"),
    ],
)
def test_precision_flags_per_onnxruntime_version(precision, ort_version, fp16, int8, typing):
    """F4: flags on make ORT's TensorRT network weakly typed (TensorRT may lower the fp32 head);
    from STRONGLY_TYPED_ORT on, both off give a strongly typed network from the ONNX types."""
    chosen = tensorrt_precision(precision, ort_version)
    assert (chosen["trt_fp16_enable"], chosen["trt_int8_enable"]) == (fp16, int8)
    assert chosen["typing"].startswith(typing)


def test_tensorrt_11_needs_a_recent_onnxruntime():
    with pytest.raises(MissingDependencyError, match=r"TensorRT 11\.4\.0\.106.*>=1\.27"):
        check_tensorrt_11("1.24.4", "11.4.0.106")
    check_tensorrt_11("1.27.0", "11.4.0.106")
    check_tensorrt_11("1.24.4", "10.3.0")
    check_tensorrt_11("1.24.4", None)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_provider_options_follow_the_model(precision, tmp_path):
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
    chosen = tensorrt_precision(precision, ort.__version__)
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (
        chosen["trt_fp16_enable"],
        chosen["trt_int8_enable"],
    )
    described = runner.describe()  # what the bench JSON records
    assert described["tensorrt_network"] == chosen["typing"]
    assert described["trt_fp16_enable"] == chosen["trt_fp16_enable"]
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
