"""`karst-deploy sensitivity` on the command line: output, JSON, plot, exit codes."""

from __future__ import annotations

import json

import pytest

from karst_deploy.errors import OutputExistsError
from karst_deploy.placement import load_scores, sensitivity_for_backbone
from tests.cli_helpers import run_cli

TINY = ["--backbone", "vit_tiny_patch16_224", "--img-size", "16"]
TINY_KWARGS = '{"patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3}'


def test_sensitivity_command_writes_scores_plot_and_json(tmp_path):
    out, plot = tmp_path / "scores.safetensors", tmp_path / "scores.png"
    args = [
        "sensitivity",
        *TINY,
        "--model-kwargs",
        TINY_KWARGS,
        "--data",
        "digits:5-9",
        "--batches",
        "2",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--plot",
        str(plot),
    ]
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # 14 candidates (one block): qkv, proj, fc1, fc2 weights and biases, norm1, norm2, norm.
    assert summary["images"] == 16 and summary["matrices"] == 14
    assert summary["backbone"]["num_classes"] == 5  # the head follows the data's classes
    scores = load_scores(out)
    assert sorted(scores.scores) == sorted(
        [
            f"blocks.0.{m}.{leaf}"
            for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")
            for leaf in ("weight", "bias")
        ]
        + ["norm.weight", "norm.bias"]
    )
    assert plot.read_bytes().startswith(b"\x89PNG")
    # A second run would overwrite: refused before any work (in-process, to spare a start-up).
    with pytest.raises(OutputExistsError, match="Pass force=True"):
        sensitivity_for_backbone("vit_tiny_patch16_224", "digits", out)


def test_sensitivity_command_bad_data_exits_2(tmp_path):
    result = run_cli(
        "sensitivity", *TINY, "--data", "digits:7-3", "--out", str(tmp_path / "s.safetensors")
    )
    assert result.returncode == 2 and "digits:A-B" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s.safetensors").exists()
