"""fp32 ONNX → fp16 ONNX with fp32 inputs/outputs and fp32 islands where fp16 overflows.

Weights and activations become float16 (ONNX Runtime's
``onnxruntime.transformers.float16.convert_float_to_float16``, which ships in the
``onnxruntime`` wheel) with ``keep_io_types=True``: the graph still takes float32
``images`` and returns float32 ``logits``, so every runner and parity check treats it like
the fp32 file. The ops in `FP32_OPS` stay float32, with Casts around them:

* ``LayerNormalization``: its variance sums squares of activations that reach hundreds
  in trained ViTs; in fp16 (max 65504) that overflows.
* ``Softmax``: exp of attention logits; fp32 keeps the normalisation exact.
* ``ReduceMean``, ``Pow``, ``Sqrt``: what LayerNorm decomposes into below opset 17 (or
  in RMSNorm-style blocks), kept fp32 for the same reason.

GELU (``Erf``), the matmuls and the residual adds run in fp16: during development keeping
``Erf`` in fp32 as well changed nothing measurable (digits ViT: same answers, same max
|Δlogit|). The constants these fp32 ops read (LayerNorm's scale and bias) keep their exact
fp32 values (`_restore_fp32_constants`), and the Casts the converter appends are moved
into topological order (ONNX requires it; TensorRT's parser reads nodes in order).

TensorRT 11 builds such a graph as-is (strongly typed); ONNX Runtime's CPU provider runs
it too (with casts where it lacks fp16 kernels, so not faster there), so accuracy can be
checked on any machine.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto

from karst_deploy.errors import InputError, VerificationError
from karst_deploy.precision.base import PrecisionResult, open_fp32_source, write_converted
from karst_deploy.precision.graph import (
    check_valid,
    float32_violations,
    io_types,
    sort_topologically,
)

FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt")
CHECK_SAMPLES = 8
CHECK_SEED = 0


def to_fp16(
    source: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> PrecisionResult:
    """Convert the fp32 ONNX `source` to fp16 (see the module docstring) and write `out`."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    started = time.perf_counter()
    fp32 = open_fp32_source(source)
    if fp32.img_size is None:
        raise InputError(
            f"'{fp32.path}' has neither a static input size nor karst-deploy provenance "
            "recording img_size; export it with karst-deploy export."
        )
    converted = convert_float_to_float16(
        fp32.model,
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
    )
    _restore_fp32_constants(converted, fp32.model)
    sort_topologically(converted.graph)
    check_valid(converted, "fp16")
    problems = float32_violations(converted, FP32_OPS)
    if any(kind != "FLOAT" for kind in io_types(converted).values()):
        problems.append(f"graph inputs/outputs are not all float32: {io_types(converted)}")
    if problems:
        raise VerificationError(
            "The fp16 conversion did not keep its fp32 islands: " + "; ".join(problems[:5])
        )
    rng = np.random.default_rng(CHECK_SEED)
    check_images = rng.standard_normal(
        (CHECK_SAMPLES, fp32.channels, fp32.img_size, fp32.img_size), dtype=np.float32
    )
    return write_converted(
        fp32,
        converted,
        out,
        precision="fp16",
        record_fields={"fp16": {"fp32_ops": list(FP32_OPS), "io": "float32"}},
        check_images=check_images,
        started=started,
        force=force,
        graph_details={"fp32_ops": list(FP32_OPS)},
    )


def _restore_fp32_constants(converted: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Give fp32 ops their exact fp32 constants back (in place).

    The converter stores every float initializer as fp16 and casts the ones an fp32 op
    reads (LayerNorm's scale and bias) back to fp32 at run time: rounded, and a Cast per
    constant. Each such Cast becomes the source's original fp32 initializer instead.
    """
    originals = {t.name: t for t in source.graph.initializer if t.data_type == TensorProto.FLOAT}
    initializers = {t.name: t for t in converted.graph.initializer}
    readers = Counter(name for node in converted.graph.node for name in node.input)
    kept = []
    for node in converted.graph.node:
        name = node.input[0] if node.op_type == "Cast" else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if name in originals and name in initializers and readers[name] == 1 and to == 1:
            restored = TensorProto()
            restored.CopyFrom(originals[name])
            restored.name = node.output[0]
            converted.graph.initializer.remove(initializers.pop(name))
            converted.graph.initializer.append(restored)
        else:
            kept.append(node)
    del converted.graph.node[:]
    converted.graph.node.extend(kept)
