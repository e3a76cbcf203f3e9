"""One rule for an ONNX graph's precision, on hand-made graphs (real files: tests/precision)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from karst_deploy.graph_precision import graph_precision, precision_evidence


def _model(nodes, initializers=(), output_type=TensorProto.FLOAT):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", output_type, [1, 4])],
        initializer=list(initializers),
    )
    return helper.make_model(graph)


def _if_with(node):
    """An If whose then-branch holds `node` (precision hides in subgraphs too)."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    branch = helper.make_graph([node], "b", [], [out])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "c", [], [out])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)], [cond]
    )


SCALE = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
ZERO = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
CASES = [
    ("relu", _model([helper.make_node("Relu", ["x"], ["y"])]), "fp32"),
    (
        "fp16-initializer",
        _model(
            [helper.make_node("Add", ["x", "h"], ["y"])],
            [numpy_helper.from_array(np.ones(4, np.float16), "h")],
        ),
        "fp16",
    ),
    (
        "cast-to-fp16",
        _model(
            [
                helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT),
            ]
        ),
        "fp16",
    ),
    (
        "qdq",
        _model(
            [
                helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
            ],
            [SCALE, ZERO],
        ),
        "int8",
    ),
    ("qdq-in-subgraph", _if_with(helper.make_node("DequantizeLinear", ["z", "s"], ["y"])), "int8"),
    (
        "fp16-in-subgraph",
        _if_with(helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)),
        "fp16",
    ),
]


@pytest.mark.parametrize("model, precision", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_precision_comes_from_the_graph(model, precision):
    assert graph_precision(model) == precision
    shown, evidence = precision_evidence(model)
    assert shown == precision and evidence
