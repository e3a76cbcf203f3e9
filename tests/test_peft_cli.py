"""A PEFT directory on the command line: export, verify-parity (PEFT first), merge, refusals."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from karst_deploy.adapters import peft_format
from karst_deploy.parity import verify_parity
from tests.cases import PEFT_BACKBONES, images, peft_adapter, peft_backbone_args
from tests.cli_helpers import run_cli

pytest.importorskip("peft", reason="the PEFT tests need Hugging Face PEFT (the test extra)")

BACKBONE = PEFT_BACKBONES[0]


def backbone_flags() -> list[str]:
    """--backbone/--img-size/--model-kwargs; no --num-classes: the stored head gives it."""
    args = peft_backbone_args(BACKBONE)
    return [
        "--backbone",
        BACKBONE.name,
        "--img-size",
        str(args["img_size"]),
        "--model-kwargs",
        json.dumps(args["model_kwargs"]),
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft-cli")
    adapter = peft_adapter(BACKBONE, "dora", root / "adapter")
    onnx = root / "merged.onnx"
    result = run_cli("export", "--adapter", str(adapter), *backbone_flags(), "--out", str(onnx))
    assert result.returncode == 0, result.stderr
    return adapter, onnx


def test_verify_parity_starts_with_peft_and_passes(exported, tmp_path):
    adapter, onnx = exported
    report = tmp_path / "parity.json"
    result = run_cli(
        "verify-parity", "--adapter", str(adapter), "--onnx", str(onnx), "--samples", "8",
        "--json", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    stages = [stage["name"] for stage in data["stages"]]
    assert stages == ["peft", "torch-unmerged", "torch-merged", "onnxruntime"]
    assert data["passed"] and data["notes"] == []


def test_verify_parity_without_peft_says_so_and_starts_at_our_reading(exported, monkeypatch):
    adapter, onnx = exported
    monkeypatch.setattr(peft_format, "peft_available", lambda: False)
    report = verify_parity(onnx, adapter, samples=4, progress=False)
    assert report.stages[0].name == "torch-unmerged"
    assert report.passed and "PEFT is not installed" in report.notes[0]


def test_merge_writes_what_peft_merge_and_unload_gives(exported, tmp_path):
    adapter, _ = exported
    out = tmp_path / "merged.safetensors"
    result = run_cli("merge", "--adapter", str(adapter), *backbone_flags(), "--out", str(out))
    assert result.returncode == 0, result.stderr
    args = peft_backbone_args(BACKBONE)
    model = timm.create_model(
        BACKBONE.name, num_classes=args["num_classes"], img_size=args["img_size"],
        checkpoint_path=str(out), **args["model_kwargs"],
    ).eval()  # fmt: skip
    reference = peft_format.peft_reference_model(
        adapter, peft_format.build_backbone(adapter, BACKBONE.name, **args)
    ).merge_and_unload()
    x = images(BACKBONE)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_a_hostile_directory_exits_2_naming_the_key(exported, tmp_path):
    adapter, _ = exported
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["peft_type"] = "VERA"
    bad = tmp_path / "adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps(config))
    (bad / "adapter_model.safetensors").write_bytes(
        (adapter / "adapter_model.safetensors").read_bytes()
    )
    result = run_cli(
        "export", "--adapter", str(bad), *backbone_flags(), "--out", str(tmp_path / "x.onnx")
    )
    assert result.returncode == 2
    assert "'peft_type'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()
