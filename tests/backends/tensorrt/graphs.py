"""Tiny, real ONNX classifiers with chosen per-node precision (built with onnx.helper).

``tiny_classifier(conv="fp16", head="fp32")`` is images [batch, 3, 8, 8] → Conv (patch
embedding, 4×4 stride 4) → Flatten → MatMul + Add → logits [batch, 16], with each compute node
in fp32, fp16 (Cast in/out, fp16 weights) or int8 (symmetric QuantizeLinear/DequantizeLinear on
the activation, per-channel int8 weights through DequantizeLinear) — the three forms our
precision step writes. Input and output stay fp32. The files pass ``onnx.checker`` and run in
ONNX Runtime; they stand in for exported ViTs where only the graph's structure matters.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from karst_deploy.provenance import write_provenance

CHW = (3, 8, 8)
CLASSES = 16  # GEMM sizes multiple of 16, so int8/fp16 tensor-core kernels exist
CONV_NODE, HEAD_NODE = "/patch_embed/proj/Conv", "/head/MatMul"


def _operand(nodes, inits, name, weight, precision, axis):
    """Nodes feeding (activation `name`, `weight`) to a compute node in `precision`."""
    if precision == "fp32":
        inits.append(numpy_helper.from_array(weight, f"{name}_w"))
        return name, f"{name}_w"
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", [name], [f"{name}_h"], to=TensorProto.FLOAT16))
        inits.append(numpy_helper.from_array(weight.astype(np.float16), f"{name}_w"))
        return f"{name}_h", f"{name}_w"
    scale = np.abs(weight).max(axis=tuple(i for i in range(weight.ndim) if i != axis)) / 127
    quantized = np.round(np.moveaxis(np.moveaxis(weight, axis, -1) / scale, -1, axis))
    inits += [
        numpy_helper.from_array(np.array(0.05, np.float32), f"{name}_as"),
        numpy_helper.from_array(np.array(0, np.int8), f"{name}_az"),
        numpy_helper.from_array(quantized.astype(np.int8), f"{name}_wq"),
        numpy_helper.from_array(scale.astype(np.float32), f"{name}_ws"),
        numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_wz"),
    ]
    nodes += [
        helper.make_node("QuantizeLinear", [name, f"{name}_as", f"{name}_az"], [f"{name}_q"]),
        helper.make_node(
            "DequantizeLinear", [f"{name}_q", f"{name}_as", f"{name}_az"], [f"{name}_dq"]
        ),
        helper.make_node(
            "DequantizeLinear", [f"{name}_wq", f"{name}_ws", f"{name}_wz"], [f"{name}_w"], axis=axis
        ),
    ]
    return f"{name}_dq", f"{name}_w"


def _to_float(nodes, name, precision):
    if precision != "fp16":
        return name
    nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
    return f"{name}_f"


def tiny_classifier(
    conv: str = "fp32",
    head: str = "fp32",
    *,
    batch: int | str = "batch",
    seed: int = 0,
    named: bool = True,
    provenance: dict | None = None,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, w = _operand(
        nodes,
        inits,
        "images",
        rng.standard_normal((16, 3, 4, 4)).astype(np.float32) * 0.2,
        conv,
        axis=0,
    )
    nodes.append(
        helper.make_node(
            "Conv", [x, w], ["patches"], strides=[4, 4], name=CONV_NODE if named else ""
        )
    )
    patches = _to_float(nodes, "patches", conv)
    nodes.append(helper.make_node("Flatten", [patches], ["flat"]))
    x, w = _operand(
        nodes,
        inits,
        "flat",
        rng.standard_normal((64, CLASSES)).astype(np.float32) * 0.2,
        head,
        axis=1,
    )
    nodes.append(helper.make_node("MatMul", [x, w], ["scores"], name=HEAD_NODE if named else ""))
    scores = _to_float(nodes, "scores", head)
    inits.append(numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "bias"))
    nodes.append(helper.make_node("Add", [scores, "bias"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, *CHW])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    if provenance is not None:
        write_provenance(model, provenance)
    return model


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)
