"""Real adapter directories and ONNX exports of the tiny ViT, shared by the export, parity
and bench tests (each test module builds its own, once, in a module-scoped fixture)."""

from __future__ import annotations

from pathlib import Path

import karst_deploy as kd
from karst_deploy.export import ExportResult, export_onnx
from tests.cases import BACKBONE_CASES, adapted

CASE = BACKBONE_CASES[0]  # vit-192: two blocks, 32×32 inputs, qkv with bias


def save_adapter(directory: Path, method: str, seed: int = 1) -> Path:
    """An adapter directory of `method` with random non-zero values on the tiny ViT."""
    return kd.save_adapters(adapted(CASE, method, seed), directory)


def export_base(out: Path, **options) -> ExportResult:
    """The plain tiny ViT (--no-adapter), built exactly as the adapters' backbone."""
    sizes = {k: CASE.kwargs[k] for k in ("num_classes", "img_size")}
    extra = {k: v for k, v in CASE.kwargs.items() if k not in sizes}
    return export_onnx(out, backbone=CASE.name, model_kwargs=extra, **sizes, **options)
