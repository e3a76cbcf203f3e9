"""What an ONNX file asks of TensorRT: its image input, batch axis and precision.

The requested precision is the graph's own (`karst_deploy.graph_precision`: Q/DQ nodes
mean int8, float16 tensors fp16, else fp32); a provenance ``precision`` that disagrees is
refused. Per compute node, QuantizeLinear/DequantizeLinear feeding a MatMul/Gemm/Conv means
int8 (explicit quantization), fp16 tensors feeding one fp16, else fp32; each such compute
node gets its own expected precision, keyed by the name the
TensorRT ONNX parser gives its layers (node name, or ``node_of_<first output>`` when the node
is unnamed — onnx-tensorrt ``getNodeName``), so the engine inspector's per-layer report can be
checked node by node (`layers.check_precision`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from karst_deploy.errors import InputError
from karst_deploy.files import sha256_file
from karst_deploy.graph_precision import PRECISIONS, precision_evidence
from karst_deploy.provenance import read_provenance

#: Operators whose arithmetic is what "precision" means for a ViT (GEMMs and the patch conv).
COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv"})
_FLOAT_INPUTS = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


@dataclass(frozen=True)
class OnnxSummary:
    """The facts about an ONNX file that an engine build needs."""

    path: Path
    sha256: str
    input_name: str
    input_dtype: str
    input_chw: tuple[int, int, int]
    fixed_batch: int | None
    precision: str
    precision_source: str  # "provenance" or "graph"
    compute_nodes: dict[str, str] = field(repr=False)  # TensorRT layer-metadata name → precision
    provenance: dict[str, Any] | None = field(default=None, repr=False)


def trt_node_name(node: onnx.NodeProto) -> str:
    """The name the TensorRT ONNX parser records for `node` in layer metadata."""
    if not node.name and node.output:
        return f"node_of_{node.output[0]}"
    return node.name


def _load_graph(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise InputError(f"--onnx '{path}' does not exist or is not a file.")
    try:
        return onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise InputError(f"--onnx '{path}' is not a readable ONNX file: {exc}") from None


def summarize_onnx(path: str | os.PathLike[str]) -> OnnxSummary:
    """Read `path` (graph only, no external weights) and describe what an engine build needs."""
    path = Path(path)
    model = _load_graph(path)
    name, dtype, chw, fixed_batch = _image_input(model, path)
    compute_nodes = _compute_node_precisions(model)
    shown, evidence = precision_evidence(model)  # the one rule (karst_deploy.graph_precision)
    provenance = read_provenance(model, path)
    declared = (provenance or {}).get("precision")
    if declared is not None:
        if declared not in PRECISIONS:
            raise InputError(
                f"'{path}': its provenance precision '{declared}' is not one of {PRECISIONS}."
            )
        if declared != shown:
            raise InputError(
                f"'{path}': its provenance says precision '{declared}' but the graph is "
                f"{shown} ({evidence}), so the record does not "
                "describe this graph (edited after export?). Re-export it with karst-deploy."
            )
    return OnnxSummary(
        path=path,
        sha256=sha256_file(path),
        input_name=name,
        input_dtype=dtype,
        input_chw=chw,
        fixed_batch=fixed_batch,
        precision=shown,
        precision_source="provenance" if declared else "graph",
        compute_nodes=compute_nodes,
        provenance=provenance,
    )


def _image_input(
    model: onnx.ModelProto, path: Path
) -> tuple[str, str, tuple[int, int, int], int | None]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InputError(
            f"'{path}' has {len(inputs)} graph inputs ({[i.name for i in inputs]}); "
            "karst-deploy engines take exactly one image batch [batch, 3, H, W]."
        )
    tensor = inputs[0].type.tensor_type
    dtype = _FLOAT_INPUTS.get(tensor.elem_type)
    dims = list(tensor.shape.dim)
    if dtype is None or len(dims) != 4:
        raise InputError(
            f"'{path}' input '{inputs[0].name}' must be a float32/float16 tensor of rank 4 "
            f"[batch, 3, H, W]; it is {onnx.TensorProto.DataType.Name(tensor.elem_type)} of "
            f"rank {len(dims)}."
        )
    if not all(d.HasField("dim_value") for d in dims[1:]):
        raise InputError(
            f"'{path}' input '{inputs[0].name}' must have fixed channel, height and width; only "
            "the batch axis may be dynamic."
        )
    chw = tuple(d.dim_value for d in dims[1:])
    fixed_batch = dims[0].dim_value if dims[0].HasField("dim_value") else None
    return inputs[0].name, dtype, chw, fixed_batch  # type: ignore[return-value]


def _compute_node_precisions(model: onnx.ModelProto) -> dict[str, str]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is only a help for dtypes; initializers still carry theirs
        inferred = model
    graph = inferred.graph
    dtypes = {init.name: init.data_type for init in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dtypes[info.name] = info.type.tensor_type.elem_type
    producers = {out: node for node in graph.node for out in node.output}
    result = {}
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        operands = list(node.input[:2])
        if any(getattr(producers.get(x), "op_type", None) == "DequantizeLinear" for x in operands):
            result[trt_node_name(node)] = "int8"
        elif any(dtypes.get(x) == onnx.TensorProto.FLOAT16 for x in operands):
            result[trt_node_name(node)] = "fp16"
        else:
            result[trt_node_name(node)] = "fp32"
    return result
