"""Every registered runner behind one interface (driven by RUNNER_CASES); runners that need a
GPU or TensorRT skip with the reason where they are absent."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from karst_deploy.adapters import adapter_config
from karst_deploy.backends import RUNNERS, Runner, runner_class
from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
from karst_deploy.backends.torch import TorchRunner
from karst_deploy.errors import InputError, MissingDependencyError
from karst_deploy.export import export_model
from tests.cases import BACKBONE_CASES, RUNNER_CASES, adapted, runner_params

CASE = BACKBONE_CASES[1]  # one block, no qkv bias: the cheapest export in the table


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("runners")
    model = adapted(CASE, "lora")
    export_model(model, root / "merged.onnx")
    export_model(model, root / "unmerged.onnx", unmerged=True)
    return model, root


@runner_params
@pytest.mark.parametrize("batch", [1, 5])
def test_runner_reproduces_pytorch(runner_case, batch, exported):
    model, root = exported
    images = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    with runner_case.make(model, root / "unmerged.onnx") as runner:
        logits = runner.infer(images)
        assert runner.is_active and runner.last_inference_time > 0
        assert runner.describe()["runner"] == runner_case.id
    assert not runner.is_active
    assert logits.dtype == np.float32 and logits.shape == (batch, 7)
    scale = max(1, np.abs(expected).max())
    assert np.abs(logits - expected).max() <= runner_case.atol_scale * scale


def test_the_case_table_covers_every_registered_runner():
    assert sorted(c.id for c in RUNNER_CASES) == sorted(RUNNERS)


def test_runners_are_registered_by_name():
    assert runner_class("torch") is TorchRunner
    assert runner_class("onnxruntime") is OnnxRuntimeRunner
    for name in RUNNERS:  # importable without their runtimes; from_file declared on the base
        assert issubclass(runner_class(name), Runner) and runner_class(name).name == name
    with pytest.raises(InputError, match="Unknown runner 'tensorflow'"):
        runner_class("tensorflow")


class _Counting(Runner):
    """The smallest runner: what the base class adds around the `*_impl` hooks."""

    name = "counting"

    def __init__(self):
        super().__init__()
        self.calls = []

    def activate_impl(self):
        self.calls.append("activate")

    def deactivate_impl(self):
        self.calls.append("deactivate")

    def infer_impl(self, images):
        self.calls.append("infer")
        return images.reshape(len(images), -1)[:, :2].copy()


def test_the_base_class_owns_lifecycle_and_timing(tmp_path):
    runner = _Counting()
    with runner:
        runner.activate()  # idempotent
        logits = runner.infer(np.ones((2, 1, 2, 2), dtype=np.float64))  # converted to float32
        assert logits.dtype == np.float32 and runner.last_inference_time >= 0
    runner.deactivate()
    assert runner.calls == ["activate", "infer", "deactivate"] and not runner.is_active
    assert runner.infer(np.ones((1, 1, 2, 2))).shape == (1, 2)  # infer activates on first use
    with pytest.raises(InputError, match=r"batch of images \(N, C, H, W\).*\(3, 4\)"):
        runner.infer(np.ones((3, 4)))
    with pytest.raises(InputError, match="'counting' runner cannot open model files"):
        _Counting.from_file(tmp_path / "model.onnx")


def test_torch_runner_from_file_rebuilds_the_exported_architecture(exported):
    model, root = exported
    merged = TorchRunner.from_file(root / "merged.onnx", threads=1).model
    unmerged = TorchRunner.from_file(root / "unmerged.onnx").model
    assert adapter_config(merged) is None
    assert adapter_config(unmerged) == adapter_config(model)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in unmerged.state_dict().items()} == shapes


def test_onnxruntime_settings_and_clear_errors(exported, tmp_path):
    _, root = exported
    runner = OnnxRuntimeRunner(root / "merged.onnx", threads=1, allow_spinning=False)
    options = runner.session_options()
    assert options.intra_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    missing = next(
        p
        for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider")
        if p not in ort.get_available_providers()
    )
    with pytest.raises(MissingDependencyError, match=f"no {missing}"):
        OnnxRuntimeRunner(root / "merged.onnx", providers=[missing]).activate()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00 not a protobuf")
    with pytest.raises(InputError, match="ONNX Runtime could not load"):
        OnnxRuntimeRunner(garbage).activate()
    with pytest.raises(InputError, match="does not exist"):
        OnnxRuntimeRunner(tmp_path / "absent.onnx")
