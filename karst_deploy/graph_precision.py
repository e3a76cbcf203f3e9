"""The one rule for "what precision is this ONNX graph", read from the graph itself.

A provenance label is a claim anyone can edit; the graph is what runs. Every reader that
needs the precision of an ONNX file (verify-parity's tolerance, bench, precision checks,
engine builds) asks `karst_deploy.onnx_file.OnnxFile.precision`, which applies this rule
and refuses a label that disagrees. Leaf module: it imports nothing from karst-deploy.

* ``int8``: any quantize/dequantize node (QuantizeLinear, DequantizeLinear and the other
  ONNX/ORT quantized operators), in any domain or subgraph.
* ``fp16``: otherwise, any float16/bfloat16 tensor: an initializer, a Constant, a Cast to
  it, or a typed graph input/output/value_info.
* ``fp32``: neither.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import onnx
from onnx import TensorProto

PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearMatMul",
        "QLinearConv",
        "MatMulInteger",
        "ConvInteger",
    }
)
HALF_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph (If/Loop/Scan bodies) inside it."""
    stack = [graph]
    while stack:
        current = stack.pop()
        yield current
        for node in current.node:
            for attribute in node.attribute:
                stack.extend(attribute.graphs)
                if attribute.HasField("g"):
                    stack.append(attribute.g)


def _half_tensors(graph: onnx.GraphProto) -> int:
    count = sum(t.data_type in HALF_TYPES for t in graph.initializer)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        count += value.type.tensor_type.elem_type in HALF_TYPES
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to":
                count += attribute.i in HALF_TYPES
            elif attribute.HasField("t"):
                count += attribute.t.data_type in HALF_TYPES
    return count


def precision_evidence(model: onnx.ModelProto) -> tuple[str, str]:
    """The graph's precision and what shows it, e.g. ``("int8", "24 Q/DQ nodes")``."""
    graphs = list(all_graphs(model.graph))
    quantized = sum(node.op_type in QUANTIZED_OPS for g in graphs for node in g.node)
    if quantized:
        return "int8", f"{quantized} quantize/dequantize node(s)"
    half = sum(_half_tensors(g) for g in graphs)
    if half:
        return "fp16", f"{half} float16 tensor(s) or cast(s)"
    return "fp32", "no quantize/dequantize nodes and no float16 tensors"


def graph_precision(model: onnx.ModelProto) -> str:
    """``int8``, ``fp16`` or ``fp32``, from the graph alone (see the module docstring)."""
    return precision_evidence(model)[0]


def describe_precision(model: onnx.ModelProto) -> dict[str, Any]:
    """The precision the graph shows, with the counts that show it (for reports)."""
    ops = Counter(node.op_type for node in model.graph.node)
    initializer_types = Counter(
        TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer
    )
    return {
        "precision": graph_precision(model),
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
        "cast": ops["Cast"],
        "initializer_types": dict(sorted(initializer_types.items())),
    }
