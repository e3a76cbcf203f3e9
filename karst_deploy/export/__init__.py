"""torch → ONNX export with checks and provenance (see `onnx_export` for the design choices)."""

from karst_deploy.export.onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    ExportResult,
    export_model,
    export_onnx,
)
from karst_deploy.export.options import ExportOptions, parse_onnx_batch
from karst_deploy.export.record import provenance_record
from karst_deploy.export.structure import GraphStructure, StructureComparison, compare_structure
from karst_deploy.export.with_precision import export_in_precision, export_with_precision

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "GraphStructure",
    "StructureComparison",
    "compare_structure",
    "export_in_precision",
    "export_model",
    "export_onnx",
    "export_with_precision",
    "parse_onnx_batch",
    "provenance_record",
]
