"""Does an ONNX file stay inside what TensorRT's ONNX parser supports, per TensorRT version?

The tables (``data/onnx_tensorrt/<label>.json``, derived by tools/tensorrt_api/onnx_operators.py
from onnx/onnx-tensorrt ``docs/operators.md`` at the parser commit a TensorRT release builds
with) give, per operator, whether it is supported, the data types and textual restrictions.
`check` reports, naming node and operator:

- an operator outside the default ONNX domain, unsupported, or absent from the table;
- a model opset outside the parser's range;
- a data type (of the node's data input, a Constant's value, a Cast's target) not listed;
- a restriction of the table broken (``axes`` not a build-time constant, nonzero Q/DQ zero
  point, LayerNormalization's extra outputs used, sparse/string Constant) — and any
  restriction text of an operator we use that this checker does not know how to check;
- with `qdq=True`, TensorRT's explicit-quantization rules (developer guide, "Explicit
  Quantization" and "Q/DQ Layer-Placement Recommendations"): Q/DQ symmetric int8 with positive
  scales (`karst_deploy.precision.graph.qdq_violations`); weights quantized per channel along
  the *output-channel* axis (Conv: 0; MatMul [K, N]: the last; Gemm: 0 with transB, else 1);
  activations per tensor; every Quantize consumed only by Dequantize (TensorRT fuses the
  pair into the next layer); a quantized GEMM/conv with *both* operands dequantized; biases
  left float (no DequantizeLinear on a bias, in particular no int32 one).

The parser imports a Constant node's value as weights, so "must be an initializer" is met by
an initializer or a Constant node's output.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from karst_deploy.precision.graph import qdq_violations

TABLES = Path(__file__).with_name("data") / "onnx_tensorrt"
#: TensorRT release → parser table. 10.3's own parser commit (onnx-tensorrt 62bdde2a, the
#: parsers/onnx submodule of NVIDIA/TensorRT v10.3.0) was not obtainable here; the nearest
#: earlier table (release/10.1-GA) stands for it (support is only ever added within 10.x).
TENSORRT_TABLES = {"10.3": "10.1", "10.16": "10.16", "11.1": "11.1"}
_DTYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.DOUBLE: "DOUBLE",
}
#: Input index of the ``axes`` tensor per operator (opset ≥ 13 forms).
_AXES_INPUT = {"Squeeze": 1, "Unsqueeze": 1, "Slice": 3, "Pad": 3}
_CONSTANT_AXES = re.compile(
    r"`axes` must be (an initializer|resolvable to a constant\.?|a constant tensor)"
)
_HANDLED = [
    _CONSTANT_AXES,
    re.compile(r"`[xy]_zero_point` must be (0|zero)"),
    re.compile(r"Only the first output `Y` is supported\."),
    re.compile(r"`sparse_value`, `value_string`, and `value_strings` attributes are unsupported\."),
]
COMPUTE = ("Conv", "MatMul", "Gemm")


def table(label: str) -> dict:
    return json.loads((TABLES / f"{label}.json").read_text())


@dataclass(frozen=True)
class Finding:
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        return f"{self.op} '{self.node}': {self.message}"


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        with contextlib.suppress(Exception):  # types of initializers and values still help
            model = onnx.shape_inference.infer_shapes(model)
        self.model = model
        graph = model.graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.dtypes = {i.name: i.data_type for i in graph.initializer}
        for info in [*graph.input, *graph.value_info, *graph.output]:
            if info.type.tensor_type.elem_type:
                self.dtypes[info.name] = info.type.tensor_type.elem_type
        for node in graph.node:
            value = _constant_value(node)
            if value is not None:
                self.dtypes[node.output[0]] = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a build-time constant (initializer or Constant node), else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        return None if node is None else _constant_value(node)

    def made_by(self, name: str, op: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node (``value`` or ``value_int(s)``/``value_float(s)``)."""
    if node.op_type != "Constant" or not node.attribute:
        return None
    attribute = node.attribute[0]
    if attribute.name == "value":
        return numpy_helper.to_array(attribute.t)
    if attribute.name in ("value_int", "value_ints"):
        return np.asarray(onnx.helper.get_attribute_value(attribute), dtype=np.int64)
    if attribute.name in ("value_float", "value_floats"):
        return np.asarray(onnx.helper.get_attribute_value(attribute), dtype=np.float32)
    return None  # sparse or string values: the table's restriction reports those


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None


def check(model: onnx.ModelProto, label: str, *, qdq: bool = False) -> list[Finding]:
    """Everything in `model` that the onnx-tensorrt parser table `label` does not support."""
    supported = table(label)
    operators, (low, high) = supported["operators"], supported["opset"]
    graph = _Graph(model)
    findings = []
    opset = _opset(graph.model)
    if opset is None or not low <= opset <= high:
        findings.append(Finding("(model)", "opset", f"opset {opset} outside {low}..{high}"))
    for node in graph.model.graph.node:
        name = node.name or f"node_of_{node.output[0]}"

        def problem(message: str, node=node, name=name, findings=findings) -> None:
            findings.append(Finding(name, node.op_type, f"{message} (onnx-tensorrt {label})"))

        if node.domain not in ("", "ai.onnx"):
            problem(f"custom domain '{node.domain}' (the parser needs a plugin for it)")
            continue
        entry = operators.get(node.op_type)
        if entry is None or not entry["supported"]:
            problem("operator not supported" if entry else "operator not in the support table")
            continue
        types = set(entry["types"])
        used = []
        if node.op_type == "Constant":
            used = [graph.dtypes.get(node.output[0])]
        elif node.input and node.input[0]:
            used = [graph.dtypes.get(node.input[0])]
        if node.op_type == "Cast":
            used.append(_attribute(node, "to"))
        for dtype in used:
            kind = _DTYPES.get(dtype, f"type {dtype}") if dtype else "unknown type"
            if kind not in types:
                problem(f"data type {kind} not among {sorted(types)}")
        restriction = entry["restrictions"]
        if restriction:
            findings += [
                Finding(name, node.op_type, f"{m} (onnx-tensorrt {label})")
                for m in _restriction(node, graph, restriction)
            ]
    if qdq:
        findings += [
            Finding(
                *_split(v),
            )
            for v in qdq_violations(graph.model)
        ]
        findings += _placement(graph)
    return findings


def _split(violation: str) -> tuple[str, str, str]:
    """'DequantizeLinear 'n': msg' → (node, op, msg)."""
    match = re.match(r"(\w+) '([^']*)': (.*)", violation)
    return (match.group(2), match.group(1), match.group(3)) if match else ("?", "?", violation)


def _restriction(node: onnx.NodeProto, graph: _Graph, text: str) -> list[str]:
    found = []
    if _CONSTANT_AXES.search(text):
        index = _AXES_INPUT.get(node.op_type, 1)
        if (
            len(node.input) > index
            and node.input[index]
            and graph.constant(node.input[index]) is None
        ):
            found.append(f"`axes` input '{node.input[index]}' is not a build-time constant")
    if re.search(r"`[xy]_zero_point` must be", text) and len(node.input) > 2:
        value = graph.constant(node.input[2])
        if value is None or np.any(value != 0):
            found.append("zero point is not a constant 0")
    if "Only the first output `Y`" in text:
        extra = [
            o for o in node.output[1:] if o and (graph.consumers.get(o) or o in graph.graph_outputs)
        ]
        if extra:
            found.append(f"outputs {extra} are used; only the first is supported")
    if "`sparse_value`" in text:
        bad = {a.name for a in node.attribute} & {"sparse_value", "value_string", "value_strings"}
        if bad:
            found.append(f"attribute(s) {sorted(bad)} unsupported")
    remaining = text
    for pattern in _HANDLED:
        remaining = pattern.sub("", remaining)
    if remaining.strip(" .|"):
        found.append(f"restriction not checked here: {text!r}")
    return found


def _placement(graph: _Graph) -> list[Finding]:
    findings = []

    def problem(node: onnx.NodeProto, message: str) -> None:
        findings.append(
            Finding(node.name, node.op_type, message + " (TensorRT explicit quantization)")
        )

    for node in graph.model.graph.node:
        if node.op_type == "QuantizeLinear":
            others = [
                c
                for c in graph.consumers.get(node.output[0], [])
                if c.op_type != "DequantizeLinear"
            ]
            if others or node.output[0] in graph.graph_outputs:
                problem(node, "output not consumed by DequantizeLinear alone")
        if (
            node.op_type in ("QuantizeLinear", "DequantizeLinear")
            and graph.constant(node.input[0]) is None
        ):
            scale = graph.constant(node.input[1])
            if scale is not None and scale.size != 1:
                problem(
                    node,
                    "activation quantized per channel; TensorRT takes per-tensor int8 activations",
                )
        if (
            node.op_type == "DequantizeLinear"
            and graph.dtypes.get(node.input[0]) == onnx.TensorProto.INT32
        ):
            problem(node, "int32 DequantizeLinear (a quantized bias); TensorRT refuses it")
        if node.op_type not in COMPUTE:
            continue
        operands = [graph.made_by(x, "DequantizeLinear") for x in node.input[:2]]
        if any(operands) and not all(operands):
            problem(
                node,
                "only one operand is dequantized (int8 GEMM/conv in TensorRT needs both)",
            )
        if len(node.input) > 2 and graph.made_by(node.input[2], "DequantizeLinear"):
            problem(node, "bias comes through DequantizeLinear; leave biases float")
        weight = operands[1]
        if weight is None or graph.constant(weight.input[0]) is None:
            continue
        rank = len(graph.constant(weight.input[0]).shape)
        axis = _attribute(weight, "axis", 1) % rank
        expected = {"Conv": 0, "MatMul": rank - 1}.get(node.op_type)
        if node.op_type == "Gemm":
            expected = 0 if _attribute(node, "transB", 0) else 1
        scale = graph.constant(weight.input[1])
        if scale is not None and scale.size > 1 and axis != expected:
            problem(
                weight,
                f"weight of {node.op_type} '{node.name}' quantized along axis {axis}, "
                f"not its output-channel axis {expected}",
            )
    return findings
