"""What to export, as one typed object (the options of `export_onnx`, plus the batch grammar)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from karst_deploy.errors import InputError, clip
from karst_deploy.export.onnx_export import DEFAULT_OPSET

#: The largest batch a file may fix (or a profile may name): larger is a typo, not a plan.
MAX_BATCH = 4096


def parse_onnx_batch(text: str) -> int | None:
    """The ONNX batch axis: ``dynamic`` -> None, else a fixed batch from 1 to `MAX_BATCH`."""
    if text == "dynamic":
        return None
    if not (text.isdigit() and len(text) <= 5) or not 1 <= int(text) <= MAX_BATCH:
        raise InputError(
            f"batch must be 'dynamic' or an integer from 1 to {MAX_BATCH}, got '{clip(text)}'.",
            parameters=("batch",),
        )
    return int(text)


@dataclass
class ExportOptions:
    """The model to export: an adapter directory (merged, or `unmerged`) or, with
    `no_adapter`, the plain backbone. Exactly one of the two must be asked for."""

    adapter: str | os.PathLike[str] | None = None
    no_adapter: bool = False
    backbone: str | None = None
    checkpoint: str | os.PathLike[str] | None = None
    pretrained: bool = False
    unmerged: bool = False
    num_classes: int | None = None
    img_size: int | None = None
    model_kwargs: dict[str, Any] | None = None
    opset: int = DEFAULT_OPSET
    batch: int | None = None  # None: a dynamic batch axis

    def __post_init__(self) -> None:
        if (self.adapter is None) != self.no_adapter:
            raise InputError(
                "Pass exactly one of adapter, a directory (export the adapted model), and "
                "no_adapter=True (export the plain backbone).",
                parameters=("adapter", "no_adapter"),
            )

    def export_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `export_onnx`."""
        fields = dataclasses.asdict(self)
        fields.pop("no_adapter")
        return fields
