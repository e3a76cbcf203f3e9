"""fp32 ONNX → calibrated, symmetric int8 QDQ ONNX that TensorRT takes as explicit quantization.

Post-training static quantization with ONNX Runtime's ``quantize_static`` in QDQ form,
configured for TensorRT ("Explicit Quantization", TensorRT developer guide): int8
activations *and* weights, both symmetric (``ActivationSymmetric`` defaults to False in
ORT, which TensorRT rejects), zero points 0, per-channel weights, and float biases
(``QuantizeBias=False``: TensorRT's parser refuses an int32 DequantizeLinear on a bias —
onnx/onnx-tensorrt#850, microsoft/onnxruntime#14229). Only the *inputs* of quantized nodes
get Q/DQ, as TensorRT's Q/DQ placement guidance recommends; their outputs stay float (no
re-quantization before the bias add, float logits; during development it was also faster
on ORT CPU: ViT-S batch 8, 1.84× vs 1.72× over fp32). Every written graph is read back and
checked against those rules (`graph.qdq_violations`) before it is saved.

Which nodes are quantized (a deliberate choice, measured in `benchmarks/precision.py`):
the *linear* layers — every MatMul, Gemm and Conv whose weight is a constant (qkv, proj,
fc1, fc2, the patch embedding and the head). Kept in float: the two activation×activation
matmuls of attention (QKᵀ and attn·V), LayerNorm, Softmax, GELU and the residual adds.
Softmax-shaped attention inputs are the part of a ViT known to suffer under uniform int8;
on the demo task quantizing QKᵀ and attn·V too raised the worst logit error by 10–65 %
(every calibration method) for about 10 % more speed on ORT CPU (ViT-S batch 8: 2.27×
vs 2.06× over fp32 — linear layers alone already meet the 1.8× target).
``attention_matmuls=True`` quantizes them as well.

The model is first prepared with ORT's ``quant_pre_process`` (shape inference and basic
optimisation). Calibration feeds the images in small batches, one batch per collection
step, so histogram methods (entropy, percentile) hold one batch of activations at a time.
The tensor ranges are cached under `calibration.cache_dir()` keyed by the fp32 file's
sha256, the calibration tensor's sha256, the method and the ONNX Runtime version, and
reused (ORT's ``calibration_cache_path``; an ONNX Runtime without it calibrates every
time, and the result says ``"cache": "unsupported"``). A cache entry is a file anyone can
edit, so it is trusted only when its sha256 matches the digest written beside it
(``KEY.json.sha256``) after calibration, and every range in it names a tensor of the model
and is finite with ``lowest <= highest``; otherwise it is recomputed and the result names the
file and why (``"cache": "recomputed: ..."``).

Gate: the converted graph is run beside the fp32 source on up to `CHECK_SAMPLES` of the
calibration images, and a top-1 agreement shown to be below the int8 tolerance of
`compare.TOLERANCES` (95 % upper bound below it, `compare.agreement_upper_bound`) fails the
conversion (exit 1) before anything is written.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from karst_deploy.compare import TOLERANCES
from karst_deploy.errors import InputError, ToolError, VerificationError, clip
from karst_deploy.files import refuse_existing, sha256_file, temporary_directory
from karst_deploy.jsonfile import parse_object
from karst_deploy.precision.base import PrecisionResult, open_fp32_source, write_converted
from karst_deploy.precision.calibration import CalibrationSet, cache_dir, cache_key, check_method
from karst_deploy.precision.graph import check_valid, qdq_violations, quantized_nodes

QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Conv")
CALIBRATION_BATCH = 8  # images per calibration step (bounds histogram memory)
CHECK_SAMPLES = 128  # calibration images the int8 gate runs (top-1 agreement vs fp32)


def quantize_int8(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration: CalibrationSet,
    *,
    method: str = "minmax",
    attention_matmuls: bool = False,
    use_cache: bool = True,
    force: bool = False,
    on_batch: Callable[[], None] | None = None,
    min_top1_agreement: float | None = TOLERANCES["int8"].min_top1_agreement,
) -> PrecisionResult:
    """Quantize the fp32 ONNX `source` to symmetric int8 QDQ with `calibration` and write `out`.

    `on_batch()` is called for each calibration batch of `CALIBRATION_BATCH` images. The
    conversion is gated on its top-1 agreement with fp32 (`write_converted`);
    ``min_top1_agreement=None`` measures and records it without a gate, for models whose
    answers mean nothing (random weights timed by a benchmark, whose near-tied logits flip
    under any rounding).
    """
    check_method(method)
    refuse_existing(Path(out), force)
    started = time.perf_counter()
    fp32 = open_fp32_source(source)
    _check_calibration_shape(fp32.img_size, calibration)

    import onnxruntime

    key = cache_key(
        model_sha256=fp32.sha256,
        data_sha256=calibration.sha256,
        method=method,
        op_types=QUANTIZED_OP_TYPES,
        batch=CALIBRATION_BATCH,  # histograms are merged batch by batch
        onnxruntime=onnxruntime.__version__,
    )
    cache_path, cache_state = _cache_path(key, use_cache)
    # Next to `out`, ORT's own scratch files inside: removed on interrupt, swept if killed.
    with temporary_directory(out) as tmp, _tempfile_dir(tmp):
        prepared = tmp / "prepared.onnx"
        quantized = tmp / "int8.onnx"
        prepare_for_quantization(fp32.path, prepared)
        prepared_model = onnx.load(os.fspath(prepared))
        nodes = _nodes_to_quantize(prepared_model, attention_matmuls)
        if cache_state == "hit":
            problem = _cache_problem(cache_path, prepared_model)
            if problem is not None:  # recomputed, never trusted
                _drop_cache(cache_path)
                cache_state = f"recomputed: {problem}"
        reader = _BatchReader(fp32.input_name, calibration.images, on_batch)
        try:
            _quantize_static(prepared, quantized, reader, method, nodes, cache_path)
        except Exception as exc:  # ORT's calibrators and quantizer raise many types
            raise ToolError(
                f"ONNX Runtime could not calibrate and quantize '{fp32.path}' ({method}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        converted = onnx.load(os.fspath(quantized))
    if cache_path is not None and cache_state != "hit":
        _write_cache_digest(cache_path)

    check_valid(converted, "int8")
    problems = qdq_violations(converted)
    if problems:
        raise VerificationError(
            "The int8 graph breaks TensorRT's explicit-quantization rules: "
            + "; ".join(problems[:5])
        )
    done = quantized_nodes(converted, QUANTIZED_OP_TYPES)
    missing = sorted(set(nodes) - set(done))
    if missing:
        raise VerificationError(
            f"{len(missing)} node(s) selected for int8 were not quantized, first '{missing[0]}'."
        )
    calibration_record = {
        "method": method,
        **calibration.describe(),
        "cache": cache_state,
    }
    scheme = {
        "format": "QDQ",
        "activations": "int8 symmetric per-tensor",
        "weights": "int8 symmetric per-channel",
        "bias": "float",
        "op_types": list(QUANTIZED_OP_TYPES),
        "attention_matmuls": attention_matmuls,
        "quantized_nodes": len(done),
    }
    return write_converted(
        fp32,
        converted,
        out,
        precision="int8",
        record_fields={
            "calibration": {k: calibration_record[k] for k in _PROVENANCE_KEYS},
            "quantization": scheme,
        },
        check_images=calibration.images[:CHECK_SAMPLES],
        started=started,
        force=force,
        graph_details=scheme,
        calibration=calibration_record,
        min_top1_agreement=min_top1_agreement,
    )


def prepare_for_quantization(source: Path, prepared: Path) -> None:
    """ORT's ``quant_pre_process`` (shape inference, basic optimisation) of `source`.

    Also how verify-parity's white-box stage rebuilds the graph an int8 file was made from.
    """
    from onnxruntime.quantization import quant_pre_process

    with _quiet():
        try:
            # ORT's symbolic shape inference cannot read Constant nodes holding value_ints
            # (torch's dynamo exporter writes them); ONNX's own shape inference, which
            # still runs, types every tensor of a ViT.
            quant_pre_process(os.fspath(source), os.fspath(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # shape inference/optimisation failures of ORT
            raise ToolError(
                f"ONNX Runtime could not prepare '{source}' for quantization "
                f"(quant_pre_process): {exc}"
            ) from None


_PROVENANCE_KEYS = ("method", "samples", "data_sha256", "source")


def _check_calibration_shape(img_size: int | None, calibration: CalibrationSet) -> None:
    shape = calibration.images.shape
    if img_size is not None and tuple(shape[2:]) != (img_size, img_size):
        raise InputError(
            f"Calibration images from '{calibration.source}' are {shape[2]}×{shape[3]}, but the "
            f"model takes {img_size}×{img_size}."
        )


def _cache_path(key: str, use_cache: bool) -> tuple[Path | None, str]:
    """The cache file to use and its state: "hit", "miss", "off" or "unsupported".

    A "hit" is checked against the model by `_cache_problem` before ORT reads it.
    """
    from onnxruntime.quantization import quantize_static

    if not use_cache:
        return None, "off"
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return None, "unsupported"
    path = cache_dir() / f"{key}.json"
    if os.path.lexists(path):
        return path, "hit"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, "miss"


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_cache_digest(path: Path) -> None:
    """Record the sha256 of the entry ORT just wrote (no entry: nothing to record)."""
    if path.is_file():
        _digest_path(path).write_text(sha256_file(path) + "\n")


def _drop_cache(path: Path) -> None:
    for stale in (path, _digest_path(path)):
        if os.path.lexists(stale):
            if stale.is_dir() and not stale.is_symlink():
                raise InputError(
                    f"Calibration cache entry '{clip(stale)}' is a directory; remove it or pass "
                    "use_cache=False.",
                    parameters=("use_cache",),
                )
            stale.unlink()


def _cache_range(value: Any) -> float | None:
    """A range bound as ORT stores it (a number or a one-element numpy record), else None."""
    if isinstance(value, dict) and value.get("CLS") == "numpy.array":
        value = value.get("data")
        value = value[0] if isinstance(value, list) and len(value) == 1 else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _cache_problem(path: Path, model: onnx.ModelProto) -> str | None:
    """Why the cache entry at `path` cannot be trusted for `model`, or None when it can."""
    where = f"'{clip(path)}'"
    if not path.is_file():
        return f"{where} is not a regular file"
    digest = _digest_path(path)
    if not digest.is_file():
        return f"{where} has no digest {digest.name} (written by another tool or version)"
    if digest.read_text().strip() != sha256_file(path):
        return f"{where} does not match its digest {digest.name} (edited after calibration)"
    try:
        record = parse_object(path.read_text(), f"calibration cache {where}")
    except (InputError, OSError, UnicodeDecodeError) as exc:
        return str(exc)
    data = record.get("data")
    if not isinstance(data, dict) or not data:
        return f"{where} holds no tensor ranges (key 'data' is empty or not an object)"
    tensors = {t for node in model.graph.node for t in (*node.input, *node.output)}
    tensors.update(v.name for v in model.graph.input)
    for name, entry in data.items():
        if name not in tensors:
            return f"{where} has ranges for tensor '{clip(name, 80)}', which the model lacks"
        if not isinstance(entry, dict):
            return f"{where} entry '{clip(name, 80)}' is not an object"
        low, high = _cache_range(entry.get("lowest")), _cache_range(entry.get("highest"))
        if low is None or high is None or not low <= high:
            return f"{where} entry '{clip(name, 80)}' has no finite range lowest <= highest"
    return None


def _nodes_to_quantize(model: onnx.ModelProto, attention_matmuls: bool) -> list[str]:
    """Linear layers (constant weight), plus the attention matmuls when asked."""
    constants = {t.name for t in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OP_TYPES:
            continue
        if attention_matmuls or (len(node.input) > 1 and node.input[1] in constants):
            chosen.append(node.name)
    if not chosen:
        raise InputError("The model has no MatMul, Gemm or Conv with constant weights to quantize.")
    return chosen


class _BatchReader:
    """ORT CalibrationDataReader over a float32 array, one batch per `get_next`."""

    def __init__(self, input_name: str, images: np.ndarray, on_batch) -> None:
        self.input_name = input_name
        self.batches = [
            images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)
        ]
        self.pending = iter(self.batches)
        self.on_batch = on_batch

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.pending, None)
        if batch is None:
            return None
        if self.on_batch is not None:
            self.on_batch()
        return {self.input_name: batch}


def _quantize_static(
    prepared: Path,
    quantized: Path,
    reader: _BatchReader,
    method: str,
    nodes: list[str],
    cache_path: Path | None,
) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    extra: dict[str, Any] = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
        # One batch per collection step: histograms are merged as they come.
        "CalibStridedMinMax": 1,
    }
    optional = {"calibration_cache_path": os.fspath(cache_path)} if cache_path else {}
    with _quiet():
        quantize_static(
            os.fspath(prepared),
            os.fspath(quantized),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options=extra,
            **optional,
        )


@contextlib.contextmanager
def _tempfile_dir(directory: Path):
    """Point `tempfile` (ORT's ``ort.quant.*`` scratch directories) into `directory`."""
    previous, tempfile.tempdir = tempfile.tempdir, os.fspath(directory)
    try:
        yield
    finally:
        tempfile.tempdir = previous


@contextlib.contextmanager
def _quiet():
    """Silence ORT's quantization chatter (prints and warnings) so --json output stays JSON."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)
