"""Explicit reduced precision: fp16 and calibrated symmetric int8 (QDQ) ONNX from an fp32 export.

TensorRT 11 removed the FP16/INT8 builder flags and implicit calibration: precision must
be in the ONNX graph itself. Making it explicit here also lets ONNX Runtime on any CPU
measure what the reduced-precision model will answer, before a Jetson is involved.

Entry points: `convert_precision` (an fp32 ONNX file → fp16/int8 file; ``karst-deploy
convert-precision``) and `export_with_precision` (``karst-deploy export --precision``:
export fp32, then convert). `to_fp16` and `quantize_int8` are the two conversions;
`graph` reads precision back from a graph; `calibration` opens calibration data and
locates the cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from karst_deploy.errors import InputError
from karst_deploy.files import refuse_existing, temporary_directory
from karst_deploy.precision.base import PrecisionResult, open_fp32_source
from karst_deploy.precision.calibration import (
    CALIBRATION_METHODS,
    DEFAULT_SAMPLES,
    CalibrationSet,
    check_method,
    load_calibration,
)
from karst_deploy.precision.fp16 import to_fp16
from karst_deploy.precision.graph import describe_precision, require_precision
from karst_deploy.precision.int8 import CALIBRATION_BATCH, quantize_int8
from karst_deploy.report import progress_bar

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_SAMPLES",
    "CalibrationSet",
    "PrecisionResult",
    "convert_precision",
    "describe_precision",
    "export_with_precision",
    "load_calibration",
    "quantize_int8",
    "require_precision",
    "to_fp16",
]


def check_request(precision: str, calib: object | None, calib_method: str) -> None:
    """Refuse an impossible precision request before any work is done."""
    if precision not in ("fp16", "int8"):
        raise InputError(
            f"Unknown precision '{precision}'; choose fp16 or int8 (fp32 is what export "
            "writes without --precision)."
        )
    if precision == "fp16" and calib is not None:
        raise InputError("--calib applies to --precision int8 only; fp16 needs no data.")
    if precision == "int8" and calib is None:
        raise InputError(
            "--precision int8 needs calibration data: --calib digits|IMAGE_DIR|FILE.npz "
            "(a few hundred images like the ones the model will see)."
        )
    check_method(calib_method)


def convert_precision(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    precision: str,
    *,
    calib: str | os.PathLike[str] | None = None,
    calib_samples: int = DEFAULT_SAMPLES,
    calib_method: str = "minmax",
    use_cache: bool = True,
    force: bool = False,
    progress: bool = False,
) -> PrecisionResult:
    """Write `out`, the fp32 ONNX `source` converted to `precision` ("fp16" or "int8").

    int8 needs `calib`: ``digits``/``digits:A-B``, an image directory or a ``.npz`` of
    preprocessed ``images`` (see `karst_deploy.precision.calibration`).
    """
    check_request(precision, calib, calib_method)
    refuse_existing(Path(out), force)  # before loading data and calibrating
    if precision == "fp16":
        return to_fp16(source, out, force=force)
    fp32 = open_fp32_source(source)
    calibration = load_calibration(
        calib,
        calib_samples,
        img_size=fp32.img_size,
        mean=fp32.mean,
        std=fp32.std,
        classes=fp32.classes,
    )
    steps = -(-len(calibration.images) // CALIBRATION_BATCH)
    with progress_bar("calibrating", steps, enabled=progress) as advance:
        return quantize_int8(
            source,
            out,
            calibration,
            method=calib_method,
            use_cache=use_cache,
            force=force,
            on_batch=advance,
        )


def export_with_precision(
    out: str | os.PathLike[str],
    precision: str,
    *,
    calib: str | os.PathLike[str] | None = None,
    calib_samples: int = DEFAULT_SAMPLES,
    calib_method: str = "minmax",
    use_cache: bool = True,
    force: bool = False,
    progress: bool = False,
    **export_options: Any,
) -> PrecisionResult:
    """Export fp32 with `karst_deploy.export.export_onnx(**export_options)`, then convert.

    The fp32 file is an intermediate (deleted); ``result.fp32_export`` describes the export
    and its checks.
    """
    from karst_deploy.export import export_onnx

    check_request(precision, calib, calib_method)
    out = Path(out)
    refuse_existing(out, force)
    with temporary_directory(out) as tmp:
        exported = export_onnx(tmp / "fp32.onnx", **export_options)
        result = convert_precision(
            exported.path,
            out,
            precision,
            calib=calib,
            calib_samples=calib_samples,
            calib_method=calib_method,
            use_cache=use_cache,
            force=force,
            progress=progress,
        )
    result.source = "fp32 export (intermediate, not kept)"
    result.fp32_export = {k: v for k, v in exported.to_dict().items() if k != "path"}
    return result
