"""Read precision back from an ONNX graph: what it is, and whether it keeps its promises.

Converting is not trusted on its word: after every conversion (and in the tests) these
checks read the written graph. What precision a graph *is* has one rule, in
`karst_deploy.graph_precision` (files: `karst_deploy.onnx_file.OnnxFile.precision`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from karst_deploy.errors import VerificationError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: TensorRT's int8 weights are symmetric in [-127, 127] ("Working with Quantized Types",
#: TensorRT developer guide); activations use [-128, 127] with zero point 0.
INT8_WEIGHT_RANGE = (-127, 127)


def qdq_violations(model: onnx.ModelProto) -> list[str]:
    """Every way the Q/DQ nodes fall short of TensorRT's explicit-quantization rules.

    TensorRT accepts Q/DQ only as symmetric int8: zero point present, int8 and 0, scale a
    positive finite constant; quantized weights within [-127, 127]. An empty list means
    the graph complies.
    """
    constants = {t.name: t for t in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        where = f"{node.op_type} '{node.name}'"
        scale = constants.get(node.input[1])
        if scale is None:
            problems.append(f"{where}: scale '{node.input[1]}' is not a constant")
        else:
            values = numpy_helper.to_array(scale)
            if not (np.isfinite(values).all() and (values > 0).all()):
                problems.append(f"{where}: scale is not positive and finite")
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 else None
        if zero_point is None:
            problems.append(f"{where}: no constant zero point (ONNX then defaults to uint8)")
        elif zero_point.data_type != TensorProto.INT8:
            kind = TensorProto.DataType.Name(zero_point.data_type)
            problems.append(f"{where}: zero point is {kind}, not INT8")
        elif np.any(numpy_helper.to_array(zero_point) != 0):
            problems.append(f"{where}: zero point is not 0 (asymmetric)")
        weight = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None:
            values = numpy_helper.to_array(weight)
            low, high = INT8_WEIGHT_RANGE
            if weight.data_type != TensorProto.INT8:
                kind = TensorProto.DataType.Name(weight.data_type)
                problems.append(f"{where}: quantized constant is {kind}, not INT8")
            elif values.min() < low or values.max() > high:
                problems.append(f"{where}: int8 weight outside [{low}, {high}]")
    return problems


def quantized_nodes(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """Names of the `op_types` nodes whose every float input comes through a DequantizeLinear."""
    producer = {output: node for node in model.graph.node for output in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        # Only the data inputs (not biases, which stay float for TensorRT) must be dequantized.
        sources = [producer.get(name) for name in node.input[:2]]
        if all(source is not None and source.op_type == "DequantizeLinear" for source in sources):
            names.append(node.name)
    return names


def check_valid(model: onnx.ModelProto, what: str) -> None:
    """`onnx.checker` with full shape/type inference; a failure is a VerificationError."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"The {what} graph is not valid ONNX: {exc}") from None


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type is known after ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


INTEGER_TYPES = (
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT32,
    TensorProto.UINT32,
    TensorProto.INT64,
    TensorProto.UINT64,
)


def float32_violations(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """Float inputs/outputs of the `op_types` nodes that are not float32 (e.g. fp16 LayerNorm).

    Integer operands (ReduceMean's int64 ``axes``) are not activations and are allowed.
    """
    op_types = set(op_types)
    types = tensor_types(model)
    problems = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for name in [*node.input, *node.output]:
            if name and types.get(name) not in (TensorProto.FLOAT, *INTEGER_TYPES):
                kind = TensorProto.DataType.Name(types[name]) if name in types else "unknown"
                problems.append(f"{node.op_type} '{node.name}': tensor '{name}' is {kind}")
    return problems


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph`'s nodes so every node follows its producers (in place).

    ONNX requires topological order (shape inference and TensorRT's parser read nodes in
    order); ONNX Runtime's fp16 converter appends the Casts it inserts at the end. Nodes
    keep their original order except that a misplaced producer moves just before its
    first consumer.
    """
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    emitted: set[int] = set()
    visiting: set[int] = set()  # on the current path: a cycle is left for the checker to report
    order: list[int] = []
    for root in range(len(graph.node)):
        stack = [(root, False)]
        while stack:  # iterative depth-first post-order: ViT-B chains are ~1,500 nodes deep
            index, expanded = stack.pop()
            if index in emitted or (not expanded and index in visiting):
                continue
            if expanded:
                emitted.add(index)
                order.append(index)
                continue
            visiting.add(index)
            stack.append((index, True))
            for name in reversed(graph.node[index].input):
                if name in producer and producer[name] not in emitted:
                    stack.append((producer[name], False))
    nodes = [onnx.NodeProto() for _ in order]
    for copy, index in zip(nodes, order, strict=True):
        copy.CopyFrom(graph.node[index])
    del graph.node[:]
    graph.node.extend(nodes)


def io_types(model: onnx.ModelProto) -> dict[str, str]:
    """Element type of every graph input and output, by name."""
    return {
        value.name: TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        for value in [*model.graph.input, *model.graph.output]
    }
