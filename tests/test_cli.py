"""The command line: exit codes, JSON output, one-paragraph errors (run as a real process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

import karst_deploy as kd
from tests.cases import METHOD_CASES, adapted, images, randomize_adapters


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "karst_deploy", *args], capture_output=True, text=True, timeout=300
    )


def test_doctor_json_reports_the_runtimes():
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert report["torch"] == torch.__version__
    assert isinstance(report["cuda_available"], bool)
    if not report["tensorrt"]["available"]:
        assert report["tensorrt"]["reason"] and "JetPack" in report["tensorrt"]["hint"]


def _adapter_on_checkpoint(case, method, directory):
    """Save a backbone checkpoint, adapt a model loaded from it, save the adapter."""
    checkpoint = directory / "backbone.safetensors"
    state = {k: v.contiguous() for k, v in case.build().state_dict().items()}
    save_file(state, checkpoint)
    model = kd.create_model(case.name, checkpoint=checkpoint, **case.kwargs)
    model = randomize_adapters(kd.add_adapters(model, METHOD_CASES[method]))
    kd.save_adapters(model, directory / "adapter")
    return model, checkpoint


def test_merge_writes_a_checkpoint_timm_loads(tiny_case, tmp_path):
    model, checkpoint = _adapter_on_checkpoint(tiny_case, "karst-channel", tmp_path)
    out = tmp_path / "merged.safetensors"
    result = run_cli(
        "merge",
        "--backbone",
        tiny_case.name,
        "--adapter",
        str(tmp_path / "adapter"),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["out"] == str(out)
    plain = timm.create_model(tiny_case.name, checkpoint_path=str(out), **tiny_case.kwargs)
    x = images(tiny_case)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), model(x), atol=1e-5)
    # A second run refuses to overwrite; --force replaces.
    again = [
        "merge",
        "--adapter",
        str(tmp_path / "adapter"),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
    ]
    refused = run_cli(*again)
    assert (
        refused.returncode == 2
        and "--force" in refused.stderr
        and "Traceback" not in refused.stderr
    )
    assert run_cli(*again, "--force").returncode == 0


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_merge_writes_the_format_its_suffix_names(tiny_case, tmp_path, suffix):
    """`--out merged.pth` is a torch state dict timm loads (it used to get safetensors bytes)."""
    model, checkpoint = _adapter_on_checkpoint(tiny_case, "karst-channel", tmp_path)
    common = ["merge", "--adapter", str(tmp_path / "adapter"), "--checkpoint", str(checkpoint)]
    out = tmp_path / f"merged{suffix}"
    result = run_cli(*common, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "torch"
    state = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    plain = timm.create_model(tiny_case.name, checkpoint_path=str(out), **tiny_case.kwargs)
    x = images(tiny_case)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), model(x), atol=1e-5)
    refused = run_cli(*common, "--out", str(tmp_path / "merged.ckpt"))
    assert refused.returncode == 2 and "'.ckpt'" in refused.stderr
    assert not (tmp_path / "merged.ckpt").exists()


def test_merge_without_the_training_checkpoint_is_refused(tiny_case, tmp_path):
    _adapter_on_checkpoint(tiny_case, "lora", tmp_path)
    result = run_cli(
        "merge", "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "m.safetensors")
    )
    assert result.returncode == 2 and "--checkpoint" in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["merge", "--adapter", "/nonexistent/adapter", "--out", "x.safetensors"],
            "does not exist",
        ),
        (["merge", "--adapter"], "requires an argument"),
    ],
)
def test_bad_input_exits_2_without_traceback(args, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "karst_deploy", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_merge_backbone_mismatch_is_named(tiny_case, tmp_path):
    kd.save_adapters(adapted(tiny_case, "lora"), tmp_path / "adapter")
    result = run_cli(
        "merge",
        "--backbone",
        "vit_small_patch16_224",
        "--adapter",
        str(tmp_path / "adapter"),
        "--out",
        str(tmp_path / "m.safetensors"),
    )
    assert result.returncode == 2 and "vit_tiny_patch16_224" in result.stderr


def test_root_shim_runs_the_cli():
    result = subprocess.run([sys.executable, "cli.py", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("karst-deploy ")
