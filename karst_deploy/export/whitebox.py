"""White-box parity: an ONNX file is the graph a fresh export of the same model gives.

Black-box parity runs inputs; a branch that only rare inputs trigger passes it. Here the
file is compared with a *reference graph*: the PyTorch model verify-parity already built
(merged, or unmerged for an unmerged file), exported again in memory with the settings
read from the file's own graph (opset, fixed or dynamic batch). The exporter is
deterministic (dynamo, optimiser off: `onnx_export`), so the two graphs must match.

The comparison walks both graphs back from their outputs in step, pairing values: the
same operator (type, domain, every attribute, input wiring by position) must produce
paired values, and paired constants (initializers and Constant nodes) must hold the same
numbers. It is independent of node order and value names, and reports the first node
or constant that differs, plus any node that does not feed the outputs.

Reduced precision is compared with its fp32 source the same way, after undoing the
conversion the graph shows (`karst_deploy.graph_precision`):

* fp16: float Casts are transparent; float16 constants must equal the reference within
  float16 rounding (half an fp16 ulp, 2^-11 relative, plus the converter's smallest
  normal 2^-24), on top of the fp32 bound.
* int8: an activation QuantizeLinear→DequantizeLinear pair is transparent (its scale is
  calibration data, judged by the accuracy gate); a DequantizeLinear of a constant is
  that constant dequantized, which must be within half a quantization step (plus the fp32
  bound) of the reference weight, whose step may not exceed the symmetric max-abs step
  ``max|w| / 127`` (× 1.001). The reference is the fresh export prepared exactly as
  `karst_deploy.precision.int8` prepares it (ONNX Runtime's ``quant_pre_process``).

fp32 constants: ``|Δ| ≤ 1e-5 × max|w|`` per tensor, elementwise. A fresh export on the
same machine is bit-identical; the margin allows another CPU's summation order in the
float64 merge (~1e-7 relative) while a weight changed by 0.1 % is caught.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from karst_deploy.graph_precision import graph_precision
from karst_deploy.models import input_channels
from karst_deploy.onnx_file import image_input

FP32_WEIGHT_RTOL = 1e-5
FP16_RTOL = 2.0**-11  # half an ulp of float16's 10-bit mantissa
FP16_ATOL = 2.0**-24  # float16's smallest subnormal; the converter clamps below ~6e-8
INT8_WEIGHT_LEVELS = 127  # symmetric int8 weights: scale = max|w| / 127
INT8_STEP_SLACK = 1.001
FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
)
MAX_DIFFERENCES = 10


@dataclass(frozen=True)
class ConstantError:
    """How close a float constant came to its limit: the worst element's figures."""

    constant: str
    reference: str
    max_abs_error: float
    limit_at_worst: float
    error_over_limit: float  # > 1: out of bounds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class WhiteBoxResult:
    """Outcome of comparing a file's graph with its reference graph."""

    precision: str
    reference: str
    nodes_compared: int
    constants_compared: int
    worst_constant: ConstantError | None
    differences: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **dataclasses.asdict(self)}


@dataclass
class _Constant:
    """A constant value of a graph; an initializer is decoded only when it is compared."""

    source: np.ndarray | onnx.TensorProto
    origin: str
    stored_as: int  # TensorProto data type in the file
    step: np.ndarray | None = None  # int8: the quantization step, broadcast to `values`

    @property
    def values(self) -> np.ndarray:
        if isinstance(self.source, onnx.TensorProto):
            return numpy_helper.to_array(self.source)
        return self.source


class _View:
    """A graph with its conversion undone: producers, constants, transparent edges."""

    def __init__(self, model: onnx.ModelProto, precision: str) -> None:
        graph = model.graph
        self.graph = graph
        self.inputs = {value.name: i for i, value in enumerate(graph.input)}
        self.constants: dict[str, _Constant] = {}
        self.alias: dict[str, str] = {}
        self.producer: dict[str, tuple[onnx.NodeProto, int]] = {}
        self.transparent: set[int] = set()  # id() of nodes undone by the normalisation
        for tensor in graph.initializer:
            self.inputs.pop(tensor.name, None)
            self.constants[tensor.name] = _Constant(
                tensor, f"initializer '{tensor.name}'", tensor.data_type
            )
        for node in graph.node:
            for index, name in enumerate(node.output):
                self.producer[name] = (node, index)
            constant = _constant_node(node)
            if constant is not None:
                self.constants[node.output[0]] = constant
                self.transparent.add(id(node))
            elif precision == "fp16" and node.op_type == "Cast" and _cast_to_float(node):
                self.alias[node.output[0]] = node.input[0]
                self.transparent.add(id(node))
        if precision == "int8":
            self._undo_qdq()

    def _undo_qdq(self) -> None:
        for node in self.graph.node:
            if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
                continue
            source = self.resolve(node.input[0])
            quantize = self.producer.get(source, (None, 0))[0]
            if source in self.constants:
                dequantized = _dequantize(node, self)
                if dequantized is not None:
                    self.constants[node.output[0]] = dequantized
                    self.transparent.add(id(node))
            elif quantize is not None and quantize.op_type == "QuantizeLinear":
                self.alias[node.output[0]] = quantize.input[0]
                self.transparent.update({id(node), id(quantize)})

    def resolve(self, name: str) -> str:
        seen = set()
        while name in self.alias and name not in seen:
            seen.add(name)
            name = self.alias[name]
        return name

    def kind(self, name: str) -> str:
        if name == "":
            return "absent"
        if name in self.constants:
            return "constant"
        if name in self.inputs:
            return "input"
        if name in self.producer:
            return "node"
        return "undefined"

    def describe(self, name: str) -> str:
        kind = self.kind(name)
        if kind == "constant":
            return self.constants[name].origin
        if kind == "node":
            node, index = self.producer[name]
            return f"{_node_label(node)} output {index}"
        if kind == "input":
            return f"graph input '{name}'"
        return f"{kind} value '{name}'"


def _node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node '{node.name or node.output[0]}'"


def _cast_to_float(node: onnx.NodeProto) -> bool:
    return any(a.name == "to" and a.i in FLOAT_TYPES for a in node.attribute)


def _constant_node(node: onnx.NodeProto) -> _Constant | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    if attribute.name == "sparse_value":
        return None
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):
        array, stored = numpy_helper.to_array(value), value.data_type
    else:
        array = np.asarray(value, dtype=np.float32 if "float" in attribute.name else None)
        stored = onnx.TensorProto.FLOAT if "float" in attribute.name else onnx.TensorProto.INT64
    return _Constant(np.asarray(array), f"{_node_label(node)}", stored)


def _dequantize(node: onnx.NodeProto, view: _View) -> _Constant | None:
    """The float values a DequantizeLinear of constants yields, with its step (or None)."""
    names = [view.resolve(name) for name in node.input]
    if not all(name in view.constants for name in names):
        return None
    quantized = view.constants[names[0]].values.astype(np.float64)
    scale = view.constants[names[1]].values.astype(np.float64)
    zero = view.constants[names[2]].values.astype(np.float64) if len(names) > 2 else 0.0
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and quantized.ndim > 0:
        shape = [1] * quantized.ndim
        shape[axis % quantized.ndim] = -1
        try:
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
        except ValueError:
            return None
    try:
        step = np.broadcast_to(np.abs(scale), quantized.shape)
        values = (quantized - zero) * scale
    except ValueError:  # shapes that do not broadcast: left as a node, which then differs
        return None
    origin = f"{_node_label(node)} (int8 constant '{node.input[0]}')"
    return _Constant(values, origin, onnx.TensorProto.INT8, step)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    result = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, onnx.GraphProto | onnx.SparseTensorProto):
            value = value.SerializeToString()
        elif isinstance(value, list) and value and isinstance(value[0], onnx.GraphProto):
            value = [g.SerializeToString() for g in value]
        result[attribute.name] = value
    return result


def _same_attribute(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    return bool(a == b)


def _compare_constants(
    candidate: _Constant, reference: _Constant
) -> tuple[str | None, ConstantError | None]:
    """A difference message (or None) and the worst element's figures."""
    got, want = candidate.values, reference.values
    if got.shape != want.shape:
        return (
            f"{candidate.origin} has shape {list(got.shape)}, the reference {list(want.shape)}",
            None,
        )
    float_got, float_want = got.dtype.kind in "fc", want.dtype.kind in "fc"
    if float_got != float_want or (not float_got and got.dtype != want.dtype):
        return f"{candidate.origin} is {got.dtype}, the reference {want.dtype}", None
    if not float_got:
        if np.array_equal(got, want):
            return None, None
        index = tuple(int(i) for i in np.argwhere(got != want)[0])
        return (
            f"{candidate.origin} differs from reference {reference.origin} at {list(index)}: "
            f"{got[index]} instead of {want[index]}"
        ), None
    got, want = np.atleast_1d(got.astype(np.float64)), np.atleast_1d(want.astype(np.float64))
    if got.size == 0:
        return None, None
    scale = float(np.abs(want).max())
    limit = np.full(want.shape, FP32_WEIGHT_RTOL * scale + np.finfo(np.float32).tiny)
    if candidate.stored_as in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
        limit = limit + FP16_RTOL * np.abs(want) + FP16_ATOL
    if candidate.step is not None:
        limit = limit + 0.5 * candidate.step
    error = np.abs(got - want)
    error[np.isnan(got) != np.isnan(want)] = np.inf
    error[np.isnan(got) & np.isnan(want)] = 0.0
    ratio = error / limit
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
    figures = ConstantError(
        constant=candidate.origin,
        reference=reference.origin,
        max_abs_error=float(error.max()),
        limit_at_worst=float(limit[index]),
        error_over_limit=float(ratio[index]),
    )
    if not ratio[index] <= 1.0:
        return (
            f"{candidate.origin} differs from reference {reference.origin}: at {list(index)} "
            f"{got[index]:.6g} instead of {want[index]:.6g} (|Δ| {error[index]:.3g} > allowed "
            f"{limit[index]:.3g}; {int((ratio > 1).sum())} of {ratio.size} elements out)"
        ), figures
    if candidate.step is not None and want.ndim:
        needed = _symmetric_step(want, candidate.step)
        if np.any(candidate.step > needed * INT8_STEP_SLACK + np.finfo(np.float32).tiny):
            ratio_step = float(
                (candidate.step / np.maximum(needed, np.finfo(np.float64).tiny)).max()
            )
            return (
                f"{candidate.origin}: its quantization step is {ratio_step:.3g}× the symmetric "
                f"max-abs step of reference {reference.origin} (max|w| / {INT8_WEIGHT_LEVELS})"
            ), figures
    return None, figures


def _symmetric_step(weights: np.ndarray, step: np.ndarray) -> np.ndarray:
    """max|w| / 127 over the elements that share each step value (per channel or tensor)."""
    axes = tuple(i for i in range(weights.ndim) if np.ptp(step, axis=i).max(initial=0) == 0)
    return np.broadcast_to(
        np.abs(weights).max(axis=axes, keepdims=True) / INT8_WEIGHT_LEVELS, weights.shape
    )


def _io_signature(value: onnx.ValueInfoProto) -> tuple[int, list[str | int]]:
    tensor = value.type.tensor_type
    return tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]


def compare_graphs(
    candidate: onnx.ModelProto, reference: onnx.ModelProto, precision: str, reference_name: str
) -> WhiteBoxResult:
    """Walk `candidate` and `reference` back from their outputs in step (module docstring)."""
    cand, ref = _View(candidate, precision), _View(reference, precision)
    differences: list[str] = []
    worst: ConstantError | None = None
    pairs: dict[str, str] = {}
    reverse: dict[str, str] = {}
    visited: set[int] = set()
    constants = 0
    walk_stopped = False  # at a differing node: the nodes above it were not walked

    def differ(message: str, stops_walk: bool = True) -> None:
        nonlocal walk_stopped
        walk_stopped = walk_stopped or stops_walk
        if message not in differences:
            differences.append(message)

    ins = [v for v in candidate.graph.input if v.name in cand.inputs]
    ref_ins = [v for v in reference.graph.input if v.name in ref.inputs]
    for role, got, want in (
        ("input", ins, ref_ins),
        ("output", list(candidate.graph.output), list(reference.graph.output)),
    ):
        if [_io_signature(v) for v in got] != [_io_signature(v) for v in want]:
            differ(
                f"graph {role}s are {[_io_signature(v) for v in got]} (type, dims), the "
                f"reference's {[_io_signature(v) for v in want]}"
            )
    cand_in = {v.name: i for i, v in enumerate(ins)}
    ref_in = {v.name: i for i, v in enumerate(ref_ins)}
    stack = [
        (c.name, r.name)
        for c, r in zip(candidate.graph.output, reference.graph.output, strict=False)
    ][::-1]
    while stack and len(differences) < MAX_DIFFERENCES:
        c, r = stack.pop()
        c, r = cand.resolve(c), ref.resolve(r)
        if c in pairs or r in reverse:
            if pairs.get(c) != r or reverse.get(r) != c:
                differ(
                    f"{cand.describe(c)} is wired where the reference uses "
                    f"{ref.describe(r)}, which elsewhere pairs with another value"
                )
            continue
        pairs[c], reverse[r] = r, c
        kind, ref_kind = cand.kind(c), ref.kind(r)
        if kind != ref_kind:
            differ(f"{cand.describe(c)} stands where the reference has {ref.describe(r)}")
        elif kind == "input" and cand_in.get(c) != ref_in.get(r):
            differ(f"graph input '{c}' stands where the reference reads input '{r}'")
        elif kind == "constant":
            constants += 1
            message, figures = _compare_constants(cand.constants[c], ref.constants[r])
            if figures and (worst is None or figures.error_over_limit > worst.error_over_limit):
                worst = figures
            if message:
                differ(message, stops_walk=False)
        elif kind == "node":
            (node, index), (ref_node, ref_index) = cand.producer[c], ref.producer[r]
            message = _compare_nodes(node, index, ref_node, ref_index)
            if message:
                differ(message)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.extend(reversed(list(zip(node.input, ref_node.input, strict=True))))
        elif kind == "undefined":
            differ(f"value '{c}' is used but nothing defines it")
    # A node that reaches no output is not in the reference (unless the walk stopped early).
    for node in [] if walk_stopped else candidate.graph.node:
        if len(differences) >= MAX_DIFFERENCES:
            break
        reached = id(node) in visited or any(cand.resolve(o) in pairs for o in node.output)
        if not reached and id(node) not in cand.transparent:
            differ(f"{_node_label(node)} is not in the reference graph (it feeds no output)")
    return WhiteBoxResult(
        precision=precision,
        reference=reference_name,
        nodes_compared=len(visited),
        constants_compared=constants,
        worst_constant=worst,
        differences=differences,
    )


def _compare_nodes(
    node: onnx.NodeProto, index: int, ref_node: onnx.NodeProto, ref_index: int
) -> str | None:
    where = f"{_node_label(node)}"
    domain, ref_domain = node.domain or "ai.onnx", ref_node.domain or "ai.onnx"
    if (node.op_type, domain) != (ref_node.op_type, ref_domain):
        return f"{where} stands where the reference has {_node_label(ref_node)}"
    if index != ref_index or len(node.output) != len(ref_node.output):
        return f"{where}: output {index} is used where the reference uses output {ref_index}"
    if len(node.input) != len(ref_node.input):
        return f"{where} has {len(node.input)} inputs, the reference {len(ref_node.input)}"
    attributes, ref_attributes = _attributes(node), _attributes(ref_node)
    for name in sorted(set(attributes) | set(ref_attributes)):
        if name not in attributes or name not in ref_attributes:
            return (
                f"{where}: attribute '{name}' is {'missing' if name not in attributes else 'extra'}"
            )
        if not _same_attribute(attributes[name], ref_attributes[name]):
            return (
                f"{where}: attribute '{name}' is {attributes[name]!r}, the reference "
                f"{ref_attributes[name]!r}"
            )
    return None


#: The last reference export, keyed by `_fingerprint`: verifying the fp32, fp16 and int8
#: files of one model (as the demo and the tamper tests do) exports it once. One entry, so
#: a process holds at most one extra copy of a model's weights.
_last_reference: tuple[str, bytes] | None = None


def _fingerprint(network: nn.Module, opset: int, batch: int | None, img_size: int) -> str:
    """sha256 of everything the export depends on: module tree, every tensor, settings."""
    import torch

    digest = hashlib.sha256(repr((repr(network), opset, batch, img_size)).encode())
    for name, tensor in network.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reference_graph(
    network: nn.Module, candidate: onnx.ModelProto, img_size: int
) -> onnx.ModelProto:
    """`network` exported as `candidate` was: its opset and batch, prepared like int8 if int8."""
    import torch

    from karst_deploy.export.onnx_export import DEFAULT_OPSET, EXAMPLE_BATCH, _to_onnx

    global _last_reference
    opset = next(
        (o.version for o in candidate.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET
    )
    batch = image_input(candidate).batch
    key = _fingerprint(network, opset, batch, img_size)
    if _last_reference is not None and _last_reference[0] == key:
        reference = onnx.ModelProto.FromString(_last_reference[1])
    else:
        example = torch.randn(
            batch or EXAMPLE_BATCH,
            input_channels(network),
            img_size,
            img_size,
            generator=torch.Generator().manual_seed(0),
        )
        reference = _to_onnx(network.eval(), example, opset=opset, dynamic=batch is None)
        _last_reference = (key, reference.SerializeToString())
    if graph_precision(candidate) != "int8":
        return reference
    from karst_deploy.precision.int8 import prepare_for_quantization

    with tempfile.TemporaryDirectory(prefix="karst-whitebox-") as tmp:
        source, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(reference, os.fspath(source))
        prepare_for_quantization(source, prepared)
        return onnx.load(os.fspath(prepared))


def white_box(
    candidate: onnx.ModelProto,
    network: nn.Module,
    img_size: int,
    what: str,
    path: str | os.PathLike[str] = "the ONNX file",
) -> WhiteBoxResult:
    """Compare the graph `candidate` (read from `path`) with a fresh export of `network`."""
    from karst_deploy.errors import InputError
    from karst_deploy.export.onnx_export import ExportError

    precision = graph_precision(candidate)
    try:
        reference = reference_graph(network, candidate, img_size)
    except ExportError as error:
        raise InputError(
            f"Could not export the {what} as '{path}' was exported (opset and batch read from "
            f"its graph) to compare the two: {error}"
        ) from None
    name = f"fresh export of the {what}" + (
        " (fp32, prepared for quantization)" if precision == "int8" else " (fp32)"
    )
    return compare_graphs(candidate, reference, precision, name)
