"""`fold_integer_constants`: integer shape chains become Constants; weights are never folded."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from karst_deploy.export.onnx_export import fold_integer_constants


def _model():
    nodes = [
        helper.make_node(
            "Constant", [], ["c"], value=numpy_helper.from_array(np.array([2], np.int32))
        ),
        helper.make_node("Cast", ["c"], ["c64"], to=TensorProto.INT64),
        helper.make_node("Constant", [], ["shape"], value_ints=[-1]),
        helper.make_node("Reshape", ["c64", "shape"], ["axes"], name="reshape_axes"),
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="mean"),
        helper.make_node(
            "Constant", [], ["w"], value=numpy_helper.from_array(np.ones(4, np.float32))
        ),
        helper.make_node("Identity", ["w"], ["w2"], name="float_identity"),
        helper.make_node("Add", ["m", "w2"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_integer_chains_fold_and_floats_stay():
    model = _model()
    x = np.random.default_rng(0).random((2, 3, 4), dtype=np.float32)
    before = ReferenceEvaluator(model).run(None, {"x": x})[0]
    folded = fold_integer_constants(_model())
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "Cast" not in ops and "Reshape" not in ops  # the axes chain is one Constant now
    assert "Identity" in ops  # a float value (a weight) is left alone
    (axes,) = [n for n in folded.graph.node if n.output[0] == "axes"]
    assert axes.op_type == "Constant" and axes.name == "reshape_axes"
    np.testing.assert_array_equal(ReferenceEvaluator(folded).run(None, {"x": x})[0], before)
