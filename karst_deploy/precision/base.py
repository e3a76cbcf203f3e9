"""What fp16 conversion and int8 quantization share: the fp32 source, the result, the write.

Both take an fp32 ONNX *file* (as `karst_deploy.export` writes it: one float32 input
``images`` [batch, 3, H, W], output ``logits``) and write a new file atomically whose
provenance keeps the source's record and adds ``precision``, ``source_sha256`` and the
conversion's own fields. Before anything is written, the new graph is loaded and run in
ONNX Runtime on the same inputs as the source; non-finite logits fail the conversion.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from karst_deploy.compare import LogitMetrics, agreement_upper_bound, logit_metrics
from karst_deploy.errors import InputError, VerificationError
from karst_deploy.files import atomic_output, sha256_file
from karst_deploy.graph_precision import describe_precision
from karst_deploy.onnx_file import OnnxFile
from karst_deploy.provenance import write_provenance


@dataclass(frozen=True)
class ConversionCheck:
    """A conversion run against its fp32 source on `samples` images (ONNX Runtime, CPU)."""

    samples: int
    metrics: LogitMetrics
    # One-sided 95 % upper confidence bound of the top-1 agreement (`agreement_upper_bound`).
    top1_agreement_upper_95: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            **self.metrics.to_dict(),
            "top1_agreement_upper_95": self.top1_agreement_upper_95,
        }


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
    check: ConversionCheck
    calibration: dict[str, Any] | None = None
    seconds: float = 0.0
    fp32_export: dict[str, Any] | None = None  # set by export_with_precision (file not kept)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "check": self.check.to_dict()}

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
        metrics = check.metrics
        rows["check vs fp32"] = (
            f"{check.samples} inputs: top-1 agreement {metrics.top1_agreement:.1%}, "
            f"max |Δlogit| {metrics.max_abs_diff:.3g} (max |logit| "
            f"{metrics.max_abs_reference:.3g}); judge it with verify-parity --data"
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
    """Load and validate the fp32 ONNX a conversion starts from (`OnnxFile`'s checks)."""
    source = OnnxFile(path, "source")
    record = source.provenance or {}
    shown = source.precision  # refuses a provenance label the graph contradicts
    if shown != "fp32":
        raise InputError(
            f"{source.label} is already {shown}; convert the fp32 export instead (precision "
            "conversions always start from fp32)."
        )
    image = source.image_input
    if image.dtype != "float32" or image.channels not in (1, 3):
        raise InputError(
            f"{source.label} should have one float32 image input [batch, 3, H, W]; its input "
            f"'{image.name}' is {image.dtype} [batch, {image.channels}, {image.height}, "
            f"{image.width}]."
        )
    return Fp32Source(
        path=source.path,
        model=source.model,
        record=record,
        sha256=source.sha256,
        input_name=image.name,
        img_size=image.size or record.get("img_size"),
        channels=image.channels,
    )


def run_onnx(model: onnx.ModelProto | str | os.PathLike[str], images: np.ndarray) -> np.ndarray:
    """Logits of `images` from an ONNX model or file on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    content = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def compare_to_source(
    source: Fp32Source, converted: onnx.ModelProto, images: np.ndarray
) -> ConversionCheck:
    """Run source and conversion on `images`; refuse non-finite logits."""
    reference = run_onnx(source.model, images)
    logits = run_onnx(converted, images)
    if not np.isfinite(logits).all():
        raise VerificationError(
            f"The converted model gives non-finite logits on {len(images)} inputs (the fp32 "
            f"source '{source.path}' does not): a tensor overflowed its reduced precision."
        )
    metrics = logit_metrics(reference, logits)
    upper = agreement_upper_bound(metrics.top1_agreement, len(images))
    return ConversionCheck(len(images), metrics, upper)


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
    upper = check.top1_agreement_upper_95
    if min_top1_agreement is not None and upper < min_top1_agreement:
        raise VerificationError(
            f"int8 gate failed: the {precision} conversion of '{source.path}' agrees with the "
            f"fp32 model on the top-1 class of {check.metrics.top1_agreement:.1%} of "
            f"{check.samples} calibration images (95 % upper bound {upper:.1%}), below the "
            f"{min_top1_agreement:.0%} of the {precision} tolerance (compare.TOLERANCES); "
            "nothing was written. Try more or more representative calib images, another "
            "calib_method, or use_cache=False if the calibration cache may be stale.",
            parameters=("calib", "calib_method", "use_cache"),
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
