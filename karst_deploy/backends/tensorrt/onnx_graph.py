"""What an ONNX file asks of TensorRT: its image input, batch axis and precision.

The file, its image input and its precision are read by `karst_deploy.onnx_file.OnnxFile`
(the graph's own precision; a provenance ``precision`` that disagrees is refused). Per
compute node, QuantizeLinear/DequantizeLinear feeding a MatMul/Gemm/Conv means
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

from karst_deploy.onnx_file import OnnxFile

#: Operators whose arithmetic is what "precision" means for a ViT (GEMMs and the patch conv).
COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv"})


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


def summarize_onnx(path: str | os.PathLike[str]) -> OnnxSummary:
    """Read `path` (`OnnxFile`: checked, no external data) and describe what a build needs."""
    source = OnnxFile(path, "onnx")
    image = source.image_input
    return OnnxSummary(
        path=source.path,
        sha256=source.sha256,
        input_name=image.name,
        input_dtype=image.dtype,
        input_chw=image.chw,
        fixed_batch=image.batch,
        precision=source.precision,
        precision_source=source.precision_source,
        compute_nodes=_compute_node_precisions(source.model),
        provenance=source.provenance,
    )


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
