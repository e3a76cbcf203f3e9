"""The command line: exit codes, JSON output, one-paragraph errors, help, piped output.

Commands run in-process (`tests.cli_helpers.run_cli`); each entry point (`karst-deploy`,
`python -m karst_deploy`, `python cli.py`) starts one real process.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import karst_deploy as kd
from karst_deploy import cli
from tests.cases import METHOD_CASES, adapted, images, randomize_adapters
from tests.cli_helpers import run_cli, run_cli_process


def test_doctor_json_reports_the_runtimes():
    """``python -m karst_deploy``, as a real process."""
    result = run_cli_process("-m", "karst_deploy", "doctor", "--json")
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
    result = run_cli(*args, cwd=tmp_path)
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
    result = run_cli_process("cli.py", "--version")
    assert result.returncode == 0 and result.stdout.startswith("karst-deploy ")


def test_the_console_script_runs_the_cli():
    script = shutil.which("karst-deploy", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("karst-deploy is not installed next to this interpreter (pip install -e .)")
    result = run_cli_process(script, "--version")
    assert result.returncode == 0 and result.stdout.startswith("karst-deploy ")


COMMANDS = sorted(
    info.name for info in cli.app.registered_commands if not info.hidden and info.name
)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_reads_like_the_ecosystem_and_ends_with_examples(name):
    result = run_cli(name, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for noise in ("<bool>", "<str>", "<int>", "<float>", "<path>"):
        assert noise not in text
    assert "--force" in text
    assert "--json " in text and "--json-out PATH" in text
    examples = text.split("Examples:")[1].strip().splitlines()
    assert 2 <= len(examples) <= 3
    assert all(line.strip().split()[0] in ("karst-deploy", "torchrun") for line in examples)
    assert all(f" {name}" in line for line in examples)


def test_bracketed_defaults_survive_in_help():
    """Rich markup used to swallow "[lr/10]" ("AdamW weight decay .")."""
    text = " ".join(run_cli("train", "--help").stdout.split())
    assert "AdamW weight decay [lr/10]." in text and "(train/ val/ [test/])" in text
    assert "--out PATH" in text and "--epochs N" in text and "--lr X" in text


def test_json_prints_and_json_out_writes_the_same(tmp_path):
    out = tmp_path / "doctor.json"
    result = run_cli("doctor", "--json", "--json-out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(out.read_text())
    again = run_cli("doctor", "--json-out", out)
    assert again.returncode == 2 and "--force" in again.stderr
    assert run_cli("doctor", "--json-out", out, "--force").returncode == 0


def test_renamed_flags_keep_their_old_spelling_for_one_release(capsys):
    assert cli.renamed(["bench", "--onnx", "m", "--json", "b.json", "--batch", "1,8"]) == [
        "bench", "--onnx", "m", "--json-out", "b.json", "--batch-sizes", "1,8",
    ]  # fmt: skip
    assert cli.renamed(["verify-parity", "--json=r.json"]) == ["verify-parity", "--json-out=r.json"]
    assert "now --json-out" in capsys.readouterr().err
    for unchanged in (["bench", "--json"], ["verify-parity", "--json", "--samples", "4"],
                      ["export", "--batch", "4"]):  # fmt: skip
        assert cli.renamed(unchanged) == unchanged
