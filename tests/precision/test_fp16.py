"""fp16 conversion: LayerNorm stays fp32 (read from the graph), fp32 I/O, runs in ONNX Runtime."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto

from karst_deploy.compare import compare_logits, tolerance_for
from karst_deploy.errors import InputError, OutputExistsError
from karst_deploy.files import sha256_file
from karst_deploy.onnx_file import read_provenance
from karst_deploy.precision import to_fp16
from karst_deploy.precision.base import run_onnx
from karst_deploy.precision.graph import float32_violations, io_types, tensor_types


@pytest.fixture(scope="module")
def fp16_result(digits_model, tmp_path_factory):
    return to_fp16(digits_model.fp32_onnx, tmp_path_factory.mktemp("fp16") / "model.onnx")


def test_layer_norm_stays_fp32_and_matmuls_become_fp16(fp16_result):
    model = onnx.load(fp16_result.path)
    types = tensor_types(model)
    norms = [node for node in model.graph.node if node.op_type == "LayerNormalization"]
    assert len(norms) == 5  # 2 blocks × 2 + the final norm
    for node in norms:
        for name in [*node.input, *node.output]:
            assert types[name] == TensorProto.FLOAT, (node.name, name)
    weights = {t.name: t.data_type for t in model.graph.initializer}
    matmul_weights = [
        weights[node.input[1]]
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights
    ]
    assert matmul_weights and set(matmul_weights) == {TensorProto.FLOAT16}
    assert set(io_types(model).values()) == {"FLOAT"}


def test_fp16_runs_in_onnxruntime_within_its_tolerance(fp16_result, digits_model):
    reference = run_onnx(digits_model.fp32_onnx, digits_model.test_images)
    logits = run_onnx(fp16_result.path, digits_model.test_images)
    assert logits.dtype.name == "float32"
    metrics, checks = compare_logits(
        reference, logits, tolerance_for("fp16"), digits_model.test_labels
    )
    assert all(check.passed for check in checks), [c.detail for c in checks]
    assert metrics.max_abs_diff > 0  # it really computes in fp16


def test_provenance_adds_precision_and_keeps_the_record(fp16_result, digits_model):
    source = read_provenance(digits_model.fp32_onnx)
    record = read_provenance(fp16_result.path)
    assert record["precision"] == "fp16"
    assert record["source_sha256"] == sha256_file(digits_model.fp32_onnx)
    for key in ("backbone", "adapter_sha256", "checkpoint_sha256", "kind", "img_size"):
        assert record[key] == source[key]


def test_the_layer_norm_check_catches_an_all_fp16_graph(digits_model):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    everything_fp16 = convert_float_to_float16(onnx.load(digits_model.fp32_onnx))
    problems = float32_violations(everything_fp16, ["LayerNormalization"])
    assert problems and "LayerNormalization" in problems[0]


def test_refuses_a_source_that_is_not_fp32(fp16_result, tmp_path):
    with pytest.raises(InputError, match="already fp16"):
        to_fp16(fp16_result.path, tmp_path / "again.onnx")


def test_never_overwrites_without_force(digits_model, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        to_fp16(digits_model.fp32_onnx, out)
    assert out.read_bytes() == b"keep me"
    assert to_fp16(digits_model.fp32_onnx, out, force=True).precision == "fp16"
