"""Provenance embedded in every ONNX file karst-deploy writes (``metadata_props``).

One key, ``karst_deploy.provenance``, holds a JSON object (the full record); a few flat
``karst_deploy.*`` keys repeat the essentials so Netron and ``onnx`` users can read them
at a glance. Readers use `record_of` (files: `karst_deploy.onnx_file.read_provenance`) and
never parse the flat keys; it checks every key of the record against `SCHEMA` (types and
ranges, unknown keys refused) before returning it.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from karst_deploy import records as r
from karst_deploy.graph_precision import PRECISIONS
from karst_deploy.jsonfile import parse_object

KEY = "karst_deploy.provenance"
FLAT_KEYS = ("version", "backbone", "method", "precision", "img_size", "num_classes")

#: Every key a provenance record may hold (karst_deploy.export.record and the precision step).
SCHEMA: dict[str, r.Checker] = {
    "version": r.text(100),
    "backbone": r.name,
    "img_size": r.integer(1, 4096),
    "num_classes": r.integer(1, 100_000),
    # One value per input channel: 3 (RGB), or 1 for a grayscale (in_chans 1) backbone.
    "mean": r.either(r.list_of(r.number(-1e3, 1e3), 3), r.list_of(r.number(-1e3, 1e3), 1)),
    "std": r.either(r.list_of(r.number(1e-6, 1e3), 3), r.list_of(r.number(1e-6, 1e3), 1)),
    "model_kwargs": r.scalars,
    "pretrained": r.boolean,
    "method": r.optional(r.name),
    "adapter_config": r.optional(r.obj),
    "adapter_sha256": r.optional(r.map_of(r.sha256)),
    "checkpoint_sha256": r.optional(r.sha256),
    "kind": r.one_of("merged", "unmerged", "base"),
    "precision": r.one_of(*PRECISIONS),
    "opset": r.integer(1, 1000),
    "exporter": r.text(200),
    "batch": r.either(r.one_of("dynamic"), r.integer(1, 1 << 20)),
    "torch": r.text(100),
    "timm": r.text(100),
    "source_sha256": r.sha256,
    "calibration": r.obj,
    "quantization": r.obj,
    "fp16": r.obj,
}
#: Object-valued keys checked inside (their unknown keys are allowed).
NESTED = {
    "calibration": {
        "method": r.name,
        "samples": r.integer(1, 1 << 30),
        "data_sha256": r.sha256,
        "source": r.text(5000),
    }
}
#: Keys every export writes (the precision step adds the others).
EXPORT_KEYS = tuple(
    k for k in SCHEMA if k not in ("source_sha256", "calibration", "quantization", "fp16")
)


def write_provenance(model: onnx.ModelProto, record: dict[str, Any]) -> onnx.ModelProto:
    """Replace `model`'s karst-deploy metadata with `record` (in place; returns `model`)."""
    kept = [p for p in model.metadata_props if not p.key.startswith("karst_deploy.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entries = {KEY: json.dumps(record, sort_keys=True)}
    entries.update({f"karst_deploy.{k}": str(record[k]) for k in FLAT_KEYS if k in record})
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    return model


def record_of(model: onnx.ModelProto, where: str = "the ONNX model") -> dict[str, Any] | None:
    """The checked provenance record in `model`'s metadata, or None if it has none.

    `where` names the model in messages. Files are read by `karst_deploy.onnx_file`
    (`OnnxFile.provenance`, `read_provenance`), which loads them with its checks.
    """
    for prop in model.metadata_props:
        if prop.key == KEY:
            record = parse_object(prop.value, f"{where}: metadata {KEY}")
            return r.validate(record, SCHEMA, f"{where}: provenance", nested=NESTED)
    return None
