"""``karst-deploy export --precision``: export fp32, then convert (one call for the CLI).

Here, above `karst_deploy.precision`, so that the precision step never imports export.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from karst_deploy.errors import InputError
from karst_deploy.export.onnx_export import export_onnx
from karst_deploy.files import refuse_existing, temporary_directory

if TYPE_CHECKING:
    from karst_deploy.export.onnx_export import ExportResult
    from karst_deploy.export.options import ExportOptions
    from karst_deploy.precision import CalibrationOptions, PrecisionResult


def export_with_precision(
    out: str | os.PathLike[str],
    precision: str,
    *,
    calib: str | os.PathLike[str] | None = None,
    calib_samples: int | None = None,
    calib_method: str = "minmax",
    use_cache: bool = True,
    force: bool = False,
    progress: bool = False,
    **export_options: Any,
) -> PrecisionResult:
    """Export fp32 with `export_onnx(**export_options)`, then convert to `precision`.

    The fp32 file is an intermediate (deleted); ``result.fp32_export`` describes the export
    and its checks. `calib_samples` None: the precision step's default.
    """
    from karst_deploy.precision import DEFAULT_SAMPLES, check_request, convert_precision

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
            calib_samples=DEFAULT_SAMPLES if calib_samples is None else calib_samples,
            calib_method=calib_method,
            use_cache=use_cache,
            force=force,
            progress=progress,
        )
    result.source = "fp32 export (intermediate, not kept)"
    result.fp32_export = {k: v for k, v in exported.to_dict().items() if k != "path"}
    return result


def export_in_precision(
    out: str | os.PathLike[str],
    options: ExportOptions,
    precision: str = "fp32",
    calibration: CalibrationOptions | None = None,
    *,
    force: bool = False,
    progress: bool = False,
) -> ExportResult | PrecisionResult:
    """``karst-deploy export``: the fp32 export, or (fp16/int8) export then convert."""
    from karst_deploy.precision import CalibrationOptions
    from karst_deploy.progress import status

    calibration = calibration or CalibrationOptions()
    if precision != "fp32":
        return export_with_precision(
            out,
            precision,
            force=force,
            progress=progress,
            **calibration.kwargs(),
            **options.export_kwargs(),
        )
    if calibration.calib is not None:
        raise InputError("calib applies to precision int8 only.", parameters=("calib", "precision"))
    with status("exporting and checking", enabled=progress):
        return export_onnx(out, force=force, **options.export_kwargs())
