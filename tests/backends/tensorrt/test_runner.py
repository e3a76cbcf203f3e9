"""The TensorRT runner: importable without TensorRT, clear when it is missing, and (with TensorRT
and a GPU) a Runner whose logits match ONNX Runtime with and without copies and CUDA graphs."""

from __future__ import annotations

import numpy as np
import pytest

from karst_deploy.backends import runner_class
from karst_deploy.backends.tensorrt import (
    BatchProfile,
    BuildOptions,
    EngineFromOnnx,
    EngineFromPath,
    build_engine,
    sidecar_path,
)
from karst_deploy.backends.tensorrt.sidecar import EngineMismatchError
from karst_deploy.errors import InputError, MissingDependencyError
from tests.backends.tensorrt.graphs import save, tiny_classifier
from tests.backends.tensorrt.needs import needs_tensorrt_gpu, without_tensorrt


def test_registered_and_importable_without_tensorrt():
    from karst_deploy.backends.tensorrt import TensorRTRunner

    assert runner_class("tensorrt") is TensorRTRunner
    runner = TensorRTRunner("model.engine", copies=False, cuda_graph=True)
    assert isinstance(runner.loader, EngineFromPath)  # a path is an engine file, never built
    assert isinstance(TensorRTRunner.from_file("model.onnx").loader, EngineFromOnnx)
    assert runner.describe() == {
        "runner": "tensorrt",
        "engine": "model.engine",
        "copies": False,
        "cuda_graph": True,
        "precision": None,
    }


@without_tensorrt
def test_missing_tensorrt_says_how_to_get_it(tmp_path):
    from karst_deploy.backends.tensorrt import TensorRTRunner

    with pytest.raises(MissingDependencyError, match=r"JetPack.*karst-deploy\[tensorrt\]"):
        TensorRTRunner(tmp_path / "model.engine").activate()


# -- with TensorRT and a GPU ------------------------------------------------------------------


@pytest.fixture
def fp16_engine(tmp_path):
    onnx_file = save(tiny_classifier("fp16", "fp16"), tmp_path / "model.onnx")
    out = tmp_path / "model.engine"
    build_engine(onnx_file, out, BuildOptions(batch=BatchProfile(2, 4, 8)), progress=False)
    return onnx_file, out


def reference(onnx_file, images):
    from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(onnx_file) as runner:
        return runner.infer(images)


@needs_tensorrt_gpu
@pytest.mark.parametrize(("copies", "cuda_graph"), [(True, False), (False, False), (False, True)])
def test_logits_match_onnx_runtime(fp16_engine, copies, cuda_graph):
    from karst_deploy.backends.tensorrt import TensorRTRunner

    onnx_file, engine = fp16_engine
    images = np.random.default_rng(1).standard_normal((11, 3, 8, 8), dtype=np.float32)
    expected = reference(onnx_file, images)
    with TensorRTRunner(engine, copies=copies, cuda_graph=cuda_graph) as runner:
        for batch in (1, 8, 11):  # 1 < profile min 2: padded; 11 > max 8: two chunks
            logits = runner.infer(images[:batch])
            assert logits.shape == (batch, expected.shape[1])
            assert np.abs(logits - expected[:batch]).max() <= 2e-2 * max(1, np.abs(expected).max())
            assert runner.last_inference_time > 0
        info = runner.describe()
    assert info["precision"] == "fp16" and info["batch_range"] == [2, 8]
    assert "cuda_graph_error" not in info


@needs_tensorrt_gpu
def test_an_onnx_file_is_built_in_memory(tmp_path):
    from karst_deploy.backends.tensorrt import TensorRTRunner

    onnx_file = save(tiny_classifier(), tmp_path / "model.onnx")
    images = np.random.default_rng(2).standard_normal((3, 3, 8, 8), dtype=np.float32)
    with TensorRTRunner.from_file(onnx_file) as runner:
        logits = runner.infer(images)
    expected = reference(onnx_file, images)
    assert np.abs(logits - expected).max() <= 1e-4 * max(1, np.abs(expected).max())  # no TF32
    assert list(tmp_path.iterdir()) == [onnx_file]  # nothing written


@needs_tensorrt_gpu
def test_an_engine_whose_sidecar_does_not_fit_is_refused(fp16_engine):
    import json

    from karst_deploy.backends.tensorrt import TensorRTRunner

    _, engine = fp16_engine
    record = json.loads(sidecar_path(engine).read_text())
    record["tensorrt_version"] = "9.0.0"
    sidecar_path(engine).write_text(json.dumps(record))
    with pytest.raises(EngineMismatchError, match=r"TensorRT 9\.0\.0.*--force"):
        TensorRTRunner(engine).activate()


def test_no_cuda_gpu_is_explained():
    import torch

    from karst_deploy.backends.tensorrt.util import import_torch_cuda

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present here")
    with pytest.raises(MissingDependencyError, match="NVIDIA's PyTorch wheel"):
        import_torch_cuda()


@pytest.mark.parametrize(("core", "expected"), [(None, None), (0, 0), (1, 1)])
def test_dla_core_comes_from_the_sidecar(core, expected, tmp_path):
    """F2: the runner deserializes a DLA engine on the core its sidecar names."""
    from karst_deploy.backends.tensorrt.loader import sidecar_dla_core

    assert sidecar_dla_core({"builder": {"dla_core": core}}, tmp_path / "m.engine") == expected


@pytest.mark.parametrize("core", [-1, True, "1", 1.0])
def test_a_bad_dla_core_in_the_sidecar_is_refused(core, tmp_path):
    from karst_deploy.backends.tensorrt.loader import sidecar_dla_core

    with pytest.raises(InputError, match=r"m\.engine\.json': builder\.dla_core"):
        sidecar_dla_core({"builder": {"dla_core": core}}, tmp_path / "m.engine")
