"""What fp16 conversion and int8 quantization share: the fp32 source, the result, the write.

Both take an fp32 ONNX *file* (as `karst_deploy.export` writes it: one float32 input
``images`` [batch, 3, H, W], output ``logits``) and write a new file atomically whose
provenance keeps the source's record and adds ``precision``, ``source_sha256`` and the
conversion's own fields. Before anything is written, the new graph is loaded and run in
ONNX Runtime on the same inputs as the source; non-finite logits fail the conversion.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from karst_deploy.errors import InputError, VerificationError
from karst_deploy.files import atomic_output, sha256_file
from karst_deploy.precision.graph import describe_precision
from karst_deploy.provenance import read_provenance, write_provenance


@dataclass
class PrecisionResult:
    """What a conversion wrote and what its sanity run measured against the fp32 source."""

    path: str
    precision: str
    source: str
    source_sha256: str
    sha256: str
    size_bytes: int
    source_size_bytes: int
    graph: dict[str, Any]  # describe_precision of the written file + conversion specifics
    check: dict[str, Any]  # ORT run vs the fp32 source: samples, max_abs_diff, top1_agreement
    calibration: dict[str, Any] | None = None
    seconds: float = 0.0
    fp32_export: dict[str, Any] | None = None  # set by export_with_precision (file not kept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, str]:
        """The result in a few readable lines (the CLI's table)."""
        check, graph = self.check, self.graph
        rows = {
            "written": self.path,
            "from": f"{self.source} (sha256 {self.source_sha256[:12]}…)"
            if self.fp32_export is None
            else f"an fp32 export of {self.fp32_export['backbone']} ({self.fp32_export['kind']}, "
            f"checked, sha256 {self.source_sha256[:12]}…, not kept)",
            "size": f"{self.size_bytes / 2**20:.2f} MiB "
            f"({self.size_bytes / self.source_size_bytes:.0%} of fp32)",
        }
        if self.precision == "int8":
            rows["graph"] = (
                f"{graph['quantized_nodes']} MatMul/Gemm/Conv nodes int8 "
                f"({graph['quantize_linear']} Q, {graph['dequantize_linear']} DQ, symmetric, "
                f"zero points 0); attention matmuls "
                f"{'int8' if graph['attention_matmuls'] else 'float'}"
            )
        else:
            rows["graph"] = f"fp16 with fp32 I/O; kept fp32: {', '.join(graph['fp32_ops'])}"
        rows["check vs fp32"] = (
            f"{check['samples']} inputs: top-1 agreement {check['top1_agreement']:.1%}, "
            f"max |Δlogit| {check['max_abs_diff']:.3g} (max |logit| "
            f"{check['max_abs_reference']:.3g}); judge it with verify-parity --data"
        )
        if self.calibration:
            calibration = self.calibration
            rows["calibration"] = (
                f"{calibration['method']} on {calibration['samples']} of "
                f"{calibration['available']} images from {calibration['source']}, data sha256 "
                f"{calibration['data_sha256'][:12]}…, cache {calibration['cache']}"
            )
        rows["seconds"] = f"{self.seconds:.1f}"
        return rows


@dataclass
class Fp32Source:
    """A validated fp32 ONNX file and what conversions need to know about it."""

    path: Path
    model: onnx.ModelProto
    record: dict[str, Any]  # its provenance ({} when it has none)
    sha256: str
    input_name: str
    img_size: int | None
    channels: int = 3  # 1 for a grayscale (in_chans 1) backbone

    @property
    def mean(self) -> tuple[float, ...] | None:
        """Normalisation the model expects (None without provenance: unknown)."""
        return tuple(self.record["mean"]) if "mean" in self.record else None

    @property
    def std(self) -> tuple[float, ...] | None:
        return tuple(self.record["std"]) if "std" in self.record else None

    @property
    def classes(self) -> list[str] | None:
        """Class names of the outputs, as the adapter recorded them at training (else None)."""
        config = self.record.get("adapter_config") or {}
        classes = config.get("classes")
        if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
            return classes
        return None


def open_fp32_source(path: str | os.PathLike[str]) -> Fp32Source:
    """Load and validate the fp32 ONNX a conversion starts from."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file '{path}' does not exist.")
    record = read_provenance(path) or {}
    model = onnx.load(os.fspath(path))
    stated = record.get("precision", "fp32")
    shown = describe_precision(model)["precision"]
    if stated != "fp32" or shown != "fp32":
        raise InputError(
            f"'{path}' is already {stated if stated != 'fp32' else shown}; convert the fp32 "
            "export instead (precision conversions always start from fp32)."
        )
    initializers = {t.name for t in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise InputError(
            f"'{path}' should have one float32 image input [batch, 3, H, W]; found "
            f"{[value.name for value in inputs]}."
        )
    dims = inputs[0].type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(static) != 4 or static[1] not in (1, 3, None):
        raise InputError(
            f"Input '{inputs[0].name}' of '{path}' is not [batch, 3, H, W] (or [batch, 1, H, W] "
            "for a grayscale backbone)."
        )
    img_size = static[2] if static[2] and static[2] == static[3] else record.get("img_size")
    return Fp32Source(
        path=path,
        model=model,
        record=record,
        sha256=sha256_file(path),
        input_name=inputs[0].name,
        img_size=img_size,
        channels=static[1] or len(record.get("mean") or (0, 0, 0)),
    )


def run_onnx(model: onnx.ModelProto | str | os.PathLike[str], images: np.ndarray) -> np.ndarray:
    """Logits of `images` from an ONNX model or file on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    content = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def compare_to_source(
    source: Fp32Source, converted: onnx.ModelProto, images: np.ndarray
) -> dict[str, Any]:
    """Run source and conversion on `images`; refuse non-finite logits."""
    reference = run_onnx(source.model, images)
    logits = run_onnx(converted, images)
    if not np.isfinite(logits).all():
        raise VerificationError(
            f"The converted model gives non-finite logits on {len(images)} inputs (the fp32 "
            f"source '{source.path}' does not): a tensor overflowed its reduced precision."
        )
    return {
        "samples": len(images),
        "max_abs_diff": float(np.abs(logits.astype(np.float64) - reference).max()),
        "max_abs_reference": float(np.abs(reference).max()),
        "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
    }


def agreement_upper_bound(rate: float, samples: int, z: float = 1.6449) -> float:
    """One-sided 95 % upper confidence bound of a proportion (Wilson score interval)."""
    if samples < 1:
        return 1.0
    denominator = 1 + z * z / samples
    centre = (rate + z * z / (2 * samples)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / samples + z * z / (4 * samples * samples))
    return min(1.0, centre + half / denominator)


def write_converted(
    source: Fp32Source,
    converted: onnx.ModelProto,
    out: str | os.PathLike[str],
    *,
    precision: str,
    record_fields: dict[str, Any],
    check_images: np.ndarray,
    started: float,
    force: bool,
    graph_details: dict[str, Any],
    calibration: dict[str, Any] | None = None,
    min_top1_agreement: float | None = None,
) -> PrecisionResult:
    """Add provenance, run the sanity check, write atomically, and describe the result.

    With `min_top1_agreement`, a conversion whose top-1 agreement with the source on
    `check_images` is shown to be lower (its one-sided 95 % upper confidence bound is below
    it, `agreement_upper_bound`) fails (VerificationError) and nothing is written. A bound,
    not the raw rate: with 32 images one disagreement is 96.9 %, which proves nothing;
    verify-parity's gate on labelled data is the acceptance test.
    """
    record = dict(source.record)
    record.update(precision=precision, source_sha256=source.sha256, **record_fields)
    write_provenance(converted, record)
    check = compare_to_source(source, converted, check_images)
    upper = agreement_upper_bound(check["top1_agreement"], check["samples"])
    check["top1_agreement_upper_95"] = upper
    if min_top1_agreement is not None and upper < min_top1_agreement:
        raise VerificationError(
            f"int8 gate failed: the {precision} conversion of '{source.path}' agrees with the "
            f"fp32 model on the top-1 class of {check['top1_agreement']:.1%} of "
            f"{check['samples']} calibration images (95 % upper bound {upper:.1%}), below the "
            f"{min_top1_agreement:.0%} of the {precision} tolerance (parity.TOLERANCES); "
            "nothing was written. Try more "
            "or more representative --calib images, another --calib-method, or "
            "--no-calib-cache if the calibration cache may be stale."
        )
    with atomic_output(out, force=force) as tmp:
        onnx.save(converted, os.fspath(tmp))
    return PrecisionResult(
        path=str(out),
        precision=precision,
        source=str(source.path),
        source_sha256=source.sha256,
        sha256=sha256_file(out),
        size_bytes=Path(out).stat().st_size,
        source_size_bytes=source.path.stat().st_size,
        graph={**describe_precision(converted), **graph_details},
        check=check,
        calibration=calibration,
        seconds=round(time.perf_counter() - started, 3),
    )
