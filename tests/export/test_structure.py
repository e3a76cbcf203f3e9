"""The structural check: a merged graph is the baseline graph; anything else is reported."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from karst_deploy.export import GraphStructure, compare_structure, export_model
from tests.cases import adapted, backbone_params, spt_params


@backbone_params
def test_merged_graph_is_the_baseline_graph(backbone, base_export, tmp_path):
    """For every backbone: same operators and initializer shapes, though every weight differs."""
    base = base_export(backbone).path
    merged = export_model(adapted(backbone, "karst-channel"), tmp_path / "merged.onnx").path
    comparison = compare_structure(base, merged)
    assert comparison.same, comparison.summary()
    assert comparison.to_dict() == {
        "same": True,
        "operators": {},
        "initializer_uses": {},
        "summary": "same operator multiset and initializer shapes",
    }


@spt_params
@backbone_params
def test_merged_spt_graph_is_the_baseline_graph(method, backbone, base_export, tmp_path):
    """SPT's parts (q/k/v-block modules, entry deltas on weights, biases and LayerNorms,
    the trained cls token) leave the exported graph exactly the backbone's."""
    base = base_export(backbone).path
    merged = export_model(adapted(backbone, method), tmp_path / "merged.onnx").path
    comparison = compare_structure(base, merged)
    assert comparison.same, comparison.summary()


def _graph(shared_bias: bool, extra_matmul: bool = False) -> onnx.ModelProto:
    """x @ W1 + b1 @ W2 + b2, with b1 and b2 stored once (shared) or separately."""
    zeros = np.zeros(4, np.float32)
    weights = [numpy_helper.from_array(np.ones((4, 4), np.float32), f"w{i}") for i in (1, 2)]
    biases = [numpy_helper.from_array(zeros, "b1")]
    if not shared_bias:
        biases.append(numpy_helper.from_array(zeros, "b2"))
    second_bias = "b1" if shared_bias else "b2"
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["y1"]),
        helper.make_node("MatMul", ["y1", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", second_bias], ["y"]),
    ]
    initializers = weights + biases
    if extra_matmul:
        initializers.append(numpy_helper.from_array(np.ones((4, 2), np.float32), "lora_a"))
        nodes[-1:] = [
            helper.make_node("Add", ["h2", second_bias], ["y2"]),
            helper.make_node("MatMul", ["y2", "lora_a"], ["y"]),
        ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], initializers)
    return helper.make_model(graph)


def test_initializers_are_counted_per_use_not_per_stored_tensor():
    """An exporter that stores two equal biases once must not change the verdict."""
    shared, separate = GraphStructure.of(_graph(True)), GraphStructure.of(_graph(False))
    assert shared.initializer_uses == separate.initializer_uses
    assert shared.initializer_uses["float32[4]"] == 2
    assert compare_structure(_graph(True), _graph(False)).same


def test_differences_are_reported_exactly():
    comparison = compare_structure(_graph(False), _graph(False, extra_matmul=True))
    assert not comparison.same
    assert comparison.operators == {"MatMul": [2, 3]}
    assert comparison.initializer_uses == {"float32[4, 2]": [0, 1]}
    assert comparison.summary() == (
        "graphs differ: +1 op MatMul (2 → 3); +1 use of float32[4, 2] (0 → 1)"
    )
