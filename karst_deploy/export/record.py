"""The provenance record of an exported ONNX file: what it was made from, and checks against it.

The record is a JSON object stored by `karst_deploy.provenance.write_provenance`. Its keys
are a contract other stages build on (the precision step adds its own and keeps these):

``version`` (karst-deploy), ``backbone`` (timm name), ``img_size``, ``num_classes``,
``mean``, ``std``, ``model_kwargs``, ``pretrained``, ``method`` (null for a plain
backbone), ``adapter_config`` (the parsed adapter_config.json, or null),
``adapter_sha256`` (``{file: sha256}`` of the adapter directory, or null),
``checkpoint_sha256`` (or null), ``kind`` (``merged`` | ``unmerged`` | ``base``),
``precision`` (``fp32`` here), ``opset``, ``exporter``, ``batch`` (``dynamic`` or an int),
``torch`` and ``timm`` (the versions that exported it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from karst_deploy.errors import InputError
from karst_deploy.files import sha256_file
from karst_deploy.models import BackboneSpec

KINDS = ("merged", "unmerged", "base")


def provenance_record(
    spec: BackboneSpec,
    *,
    kind: str,
    method: str | None,
    adapter_config: dict[str, Any] | None,
    adapter_sha256: dict[str, str] | None,
    opset: int,
    exporter: str,
    batch: int | None,
) -> dict[str, Any]:
    """The record `export_model` embeds (see the module docstring for every key)."""
    import timm

    from karst_deploy import __version__

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "version": __version__,
        "backbone": spec.name,
        "img_size": spec.img_size,
        "num_classes": spec.num_classes,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "model_kwargs": dict(spec.model_kwargs),
        "pretrained": spec.pretrained,
        "method": method,
        "adapter_config": adapter_config,
        "adapter_sha256": adapter_sha256,
        "checkpoint_sha256": spec.checkpoint_sha256,
        "kind": kind,
        "precision": "fp32",
        "opset": opset,
        "exporter": exporter,
        "batch": "dynamic" if batch is None else batch,
        "torch": torch.__version__,
        "timm": timm.__version__,
    }


def _short(sha: str | None) -> str:
    return "none" if sha is None else f"{sha[:12]}…"


def check_source(
    record: dict[str, Any],
    onnx_path: str | os.PathLike[str],
    *,
    adapter_dir: str | os.PathLike[str],
    backbone: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse an ONNX file whose provenance names another adapter, backbone or checkpoint.

    The message says which hash (or name) differs, and both values.
    """
    from karst_deploy.adapters import AdapterFile
    from karst_deploy.adapters.peft_format import PeftDirectory, is_peft_directory

    if is_peft_directory(adapter_dir):  # PEFT records no backbone: --backbone, else the ONNX's
        adapter: AdapterFile | PeftDirectory = PeftDirectory(adapter_dir)
        expected_backbone = backbone or record.get("backbone")
    else:
        adapter = AdapterFile(adapter_dir)
        if backbone is not None and backbone != adapter.backbone.name:
            raise InputError(
                f"backbone is '{backbone}' but the adapter '{adapter_dir}' was trained on "
                f"'{adapter.backbone.name}'.",
                parameters=("backbone",),
            )
        expected_backbone = adapter.backbone.name
    if record.get("backbone") != expected_backbone:
        raise InputError(
            f"'{onnx_path}' was exported from backbone {record.get('backbone')!r}, not "
            f"{expected_backbone!r}; export it again from this backbone and adapter."
        )
    recorded = record.get("adapter_sha256")
    if recorded is None:
        raise InputError(
            f"'{onnx_path}' records no adapter files (kind {record.get('kind')!r}: exported "
            "without one, or from a model in memory), so it cannot be shown to come from "
            f"adapter_dir '{adapter_dir}'; export it again from that adapter.",
            parameters=("adapter_dir",),
        )
    for file, sha in adapter.sha256().items():
        if recorded.get(file) != sha:
            raise InputError(
                f"'{onnx_path}' was exported from another adapter: the sha256 of {file} differs "
                f"(the ONNX records {_short(recorded.get(file))}, '{Path(adapter_dir) / file}' "
                f"has {_short(sha)}). Export it again from this adapter directory."
            )
    given = sha256_file(checkpoint) if checkpoint is not None else None
    if record.get("checkpoint_sha256") != given:
        raise InputError(
            f"checkpoint gives sha256 {_short(given)}, but '{onnx_path}' was exported from a "
            f"backbone checkpoint with sha256 {_short(record.get('checkpoint_sha256'))}; pass "
            "the checkpoint the model was exported from.",
            parameters=("checkpoint",),
        )
