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
from karst_deploy.export.record import architecture_from_onnx, provenance_record
from karst_deploy.export.structure import GraphStructure, StructureComparison, compare_structure

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "GraphStructure",
    "StructureComparison",
    "architecture_from_onnx",
    "compare_structure",
    "export_model",
    "export_onnx",
    "parse_onnx_batch",
    "provenance_record",
]
