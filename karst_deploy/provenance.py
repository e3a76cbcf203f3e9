"""Provenance embedded in every ONNX file karst-deploy writes (``metadata_props``).

One key, ``karst_deploy.provenance``, holds a JSON object (the full record); a few flat
``karst_deploy.*`` keys repeat the essentials so Netron and ``onnx`` users can read them
at a glance. Readers use `read_provenance` and never parse the flat keys.
"""

from __future__ import annotations

import json
import os
from typing import Any

import onnx

from karst_deploy.errors import InputError

KEY = "karst_deploy.provenance"
FLAT_KEYS = ("version", "backbone", "method", "precision", "img_size", "num_classes")


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


def read_provenance(model: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance record of an ONNX model or file, or None if it has none."""
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(os.fspath(model), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, OSError, ...
            raise InputError(f"'{model}' is not a readable ONNX file: {exc}") from None
    for prop in model.metadata_props:
        if prop.key == KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                raise InputError(
                    f"The {KEY} metadata of the ONNX file is not valid JSON."
                ) from None
    return None
