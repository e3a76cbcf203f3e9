"""Explicit reduced precision: fp16 and calibrated symmetric int8 (QDQ) ONNX from an fp32 export.

TensorRT 11 removed the FP16/INT8 builder flags and implicit calibration: precision must
be in the ONNX graph itself. Making it explicit here also lets ONNX Runtime on any CPU
measure what the reduced-precision model will answer, before a Jetson is involved.

Entry point: `convert_precision` (an fp32 ONNX file → fp16/int8 file; ``karst-deploy
convert-precision``; ``export --precision`` is `karst_deploy.export.export_with_precision`).
`to_fp16` and `quantize_int8` are the two conversions; `graph` reads precision back from a
graph; `calibration` opens calibration data and locates the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from karst_deploy.errors import InputError
from karst_deploy.files import refuse_existing
from karst_deploy.graph_precision import describe_precision
from karst_deploy.onnx_file import require_precision
from karst_deploy.precision.base import PrecisionResult, open_fp32_source
from karst_deploy.precision.calibration import (
    CALIBRATION_METHODS,
    DEFAULT_SAMPLES,
    CalibrationSet,
    check_method,
    load_calibration,
)
from karst_deploy.precision.fp16 import to_fp16
from karst_deploy.precision.int8 import CALIBRATION_BATCH, quantize_int8
from karst_deploy.progress import progress_bar

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_SAMPLES",
    "CalibrationOptions",
    "CalibrationSet",
    "PrecisionResult",
    "convert_precision",
    "describe_precision",
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
            "writes without a precision)."
        )
    if precision == "fp16" and calib is not None:
        raise InputError(
            "calib applies to precision int8 only; fp16 needs no data.",
            parameters=("calib", "precision"),
        )
    if precision == "int8" and calib is None:
        raise InputError(
            "precision int8 needs calibration data: calib digits|IMAGE_DIR|FILE.npz "
            "(a few hundred images like the ones the model will see).",
            parameters=("precision", "calib"),
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


@dataclass
class CalibrationOptions:
    """int8 calibration: the data (`calib`), how many images, the range method, the cache."""

    calib: str | os.PathLike[str] | None = None
    samples: int = DEFAULT_SAMPLES
    method: str = "minmax"
    use_cache: bool = True

    def kwargs(self) -> dict[str, Any]:
        """The calibration keyword arguments of `convert_precision`."""
        return {
            "calib": self.calib,
            "calib_samples": self.samples,
            "calib_method": self.method,
            "use_cache": self.use_cache,
        }
