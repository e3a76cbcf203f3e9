"""The ONNX we hand TensorRT, checked against onnx-tensorrt's operator tables per version.

Every exported form (fp32, fp16, int8 QDQ) of the tiny ViT, DeiT and Swin of the central
case table is exported and converted for real, then every node is checked: operator, opset,
data types and the table's restrictions, plus TensorRT's explicit-quantization placement
rules for int8 (`onnx_trt_support`).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from karst_deploy.precision import convert_precision
from tests.backends.tensorrt import onnx_trt_support as support
from tests.cases import BACKBONE_CASES

BACKBONES = {case.id: case for case in BACKBONE_CASES if case.id in ("vit-192", "deit-768", "swin")}
PRECISIONS = ("fp32", "fp16", "int8")
LABELS = sorted(set(support.TENSORRT_TABLES.values()), key=lambda v: tuple(map(int, v.split("."))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, base_export):
    """(backbone id, precision) → the ONNX file, made once per module (fp32: per session)."""
    root = tmp_path_factory.mktemp("forms")
    made: dict[tuple[str, str], object] = {}

    def get(backbone: str, precision: str):
        key = (backbone, precision)
        if key not in made:
            fp32 = base_export(BACKBONES[backbone]).path
            path = fp32
            if precision != "fp32":
                path = root / f"{backbone}.{precision}.onnx"
                calib = "digits" if precision == "int8" else None
                convert_precision(fp32, path, precision, calib=calib, calib_samples=16)
            made[key] = onnx.load(path)
        return made[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_exported_forms_are_supported_by_every_parser(exported, backbone, precision):
    model = exported(backbone, precision)
    for label in LABELS:
        findings = support.check(model, label, qdq=precision == "int8")
        assert not findings, f"{backbone} {precision}:\n" + "\n".join(map(str, findings))


def test_tables_name_their_source():
    for label in LABELS:
        table = support.table(label)
        assert len(table["source"]["commit"]) == 40
        assert table["source"]["path"] == "docs/operators.md"
        low, high = table["opset"]
        assert low <= 18 <= high  # our default export opset
    # What the tables say and the checker relies on.
    assert support.table("10.1")["opset"] == [9, 20]
    assert (
        "`axes` must be an initializer"
        in support.table("10.1")["operators"]["Slice"]["restrictions"]
    )
    assert not support.table("11.1")["operators"]["Slice"]["restrictions"]
    assert not support.table("11.1")["operators"]["Unique"]["supported"]


# -- planted mistakes ---------------------------------------------------------------------------
def _graph(nodes, inits, inputs=("x",)):
    tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 16]) for n in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "planted", tensors, [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _found(model, label, qdq=False):
    return {(f.node, f.op) for f in support.check(model, label, qdq=qdq)}


@pytest.mark.parametrize("label", LABELS)
def test_planted_unsupported_operator_is_named(label):
    model = _graph([helper.make_node("Unique", ["x"], ["y"], name="planted_unique")], [])
    assert _found(model, label) == {("planted_unique", "Unique")}
    custom = _graph([helper.make_node("Gelu", ["x"], ["y"], name="ms", domain="com.microsoft")], [])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert _found(custom, label) == {("ms", "Gelu")}
    old = _graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], [])
    old.opset_import[0].version = 8
    assert ("(model)", "opset") in _found(old, label)


@pytest.mark.parametrize("label", LABELS)
def test_axes_that_are_not_build_time_constants_are_named(label):
    """Swin's ReduceMean axes as the exporter wrote them before `fold_integer_constants`."""
    nodes = [
        helper.make_node("Constant", [], ["c"], value_ints=[1]),
        helper.make_node("Constant", [], ["shape"], value_ints=[-1]),
        helper.make_node("Reshape", ["c", "shape"], ["axes"]),
        helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="node_mean"),
    ]
    assert _found(_graph(nodes, []), label) == {("node_mean", "ReduceMean")}
    folded = [nodes[0], helper.make_node("ReduceMean", ["x", "c"], ["y"], name="node_mean")]
    assert not _found(_graph(folded, []), label)


def _qdq_matmul(*, zero_point=0, weight_axis=1, bias_dq=False, q_to_relu=False):
    """x → Q → DQ → MatMul(· , DQ(int8 weight [16, 8])) (+ bias) with chosen mistakes."""
    weight = np.arange(128, dtype=np.int8).reshape(16, 8) % 100
    channels = weight.shape[weight_axis]
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(zero_point, np.int8), "z"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.full(channels, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
        numpy_helper.from_array(np.ones(8, np.int32), "b32"),
        numpy_helper.from_array(np.array(0.1, np.float32), "bs"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node(
            "DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="w_dq", axis=weight_axis
        ),
        helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="matmul"),
    ]
    if bias_dq:
        nodes.append(helper.make_node("DequantizeLinear", ["b32", "bs"], ["b"], name="bias_dq"))
    else:
        inits.append(numpy_helper.from_array(np.zeros(8, np.float32), "b"))
    nodes.append(helper.make_node("Add", ["mm", "b"], ["y"], name="bias_add"))
    if q_to_relu:
        nodes.append(helper.make_node("Relu", ["xq"], ["r"], name="relu_of_q"))
    return _graph(nodes, inits)


@pytest.mark.parametrize("label", LABELS)
def test_qdq_rules_catch_planted_mistakes(label):
    assert not _found(_qdq_matmul(), label, qdq=True)
    assert ("q", "QuantizeLinear") in _found(_qdq_matmul(zero_point=3), label, qdq=True)
    assert ("w_dq", "DequantizeLinear") in _found(_qdq_matmul(weight_axis=0), label, qdq=True)
    assert ("bias_dq", "DequantizeLinear") in _found(_qdq_matmul(bias_dq=True), label, qdq=True)
    assert ("q", "QuantizeLinear") in _found(_qdq_matmul(q_to_relu=True), label, qdq=True)
