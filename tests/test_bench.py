"""bench: interleaved timing, the documented JSON, and a verdict that needs the structure too.

No timing assertions: runs use a few rounds and check fields, shapes and the structural half.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from karst_deploy.bench import bench, ratio_of_medians
from karst_deploy.errors import InputError
from karst_deploy.export import export_onnx
from karst_deploy.onnx_file import read_provenance
from karst_deploy.provenance import write_provenance
from tests.export.artifacts import export_base, save_adapter
from tests.test_cli import run_cli

STATISTICS = {"median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "throughput"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    adapter = save_adapter(root / "adapter", "karst-channel")
    return {
        "base": export_base(root / "base.onnx").path,
        "merged": export_onnx(root / "merged.onnx", adapter=adapter).path,
        "unmerged": export_onnx(root / "unmerged.onnx", adapter=adapter, unmerged=True).path,
    }


def test_cli_json_has_the_documented_fields(models, tmp_path):
    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_cli(
        "bench", "--onnx", str(models["merged"]), "--baseline", str(models["base"]),
        "--unmerged", str(models["unmerged"]), "--batch", "1,2", "--rounds", "4",
        "--warmup", "1", "--sessions", "2", "--threads", "1", "--json", str(report),
        "--plot", str(plot),
    )  # fmt: skip
    # Exit 0 or 1 depends on timing noise over 4 rounds; the verdict's fields do not.
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(report.read_text())
    assert list(data["models"]) == ["base", "merged", "unmerged"]
    assert (data["runner"], data["baseline"], data["batches"], data["rounds"]) == (
        "onnxruntime", "base", [1, 2], 4,
    )  # fmt: skip
    assert (data["sessions"], data["warmup"]) == (2, 1)
    for label in data["models"]:
        for batch in ("1", "2"):
            assert set(data["latency"][label][batch]) == STATISTICS
            assert len(data["samples_ms"][label][batch]) == 4
    for label in ("merged", "unmerged"):
        for ratio in data["ratios"][label].values():
            assert ratio["ci_low"] <= ratio["ratio"] <= ratio["ci_high"]
    verdict = data["verdict"]
    assert (verdict["candidate"], verdict["baseline"], verdict["tolerance"]) == (
        "merged",
        "base",
        0.03,
    )
    assert verdict["structure"]["same"] is True and set(verdict["latency"]) == {"1", "2"}
    assert data["passed"] is verdict["passed"] is (result.returncode == 0)
    assert data["runners"]["merged"]["threads"] == 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unmerged_as_candidate_fails_on_structure(models):
    result = bench(
        {"base": models["base"], "merged": models["unmerged"]},
        baseline="base", candidate="merged", batches=[1], rounds=2, warmup=0, show_progress=False,
    )  # fmt: skip
    assert result.passed is False
    assert any(f.startswith("structure: graphs differ") for f in result.verdict["failures"])


def test_torch_runner_times_the_same_architectures(models):
    result = bench(
        models, baseline="base", batches=[2], runner="torch", rounds=2, warmup=1,
        show_progress=False,
    )  # fmt: skip
    assert result.verdict is None and set(result.ratios) == {"merged", "unmerged"}
    assert result.runners["unmerged"]["runner"] == "torch"


def test_different_precisions_get_a_table_but_no_verdict(models, tmp_path):
    """Precision is read from the graphs (a provenance label alone changes nothing)."""
    from karst_deploy.precision import convert_precision

    fp16 = convert_precision(models["merged"], tmp_path / "fp16.onnx", "fp16").path
    result = bench(
        {"fp32": models["merged"], "fp16": fp16},
        baseline="fp32", candidate="fp16", batches=[1], rounds=2, warmup=0, show_progress=False,
    )  # fmt: skip
    assert result.verdict is None and result.passed is None
    assert "fp16" in result.notes[0] and "fp16" in result.ratios
    import onnx

    model = onnx.load(str(models["merged"]))
    write_provenance(model, read_provenance(model) | {"precision": "fp16"})
    onnx.save(model, str(tmp_path / "relabelled.onnx"))
    relabelled = bench(
        {"fp32": models["merged"], "fp16": tmp_path / "relabelled.onnx"},
        baseline="fp32", candidate="fp16", batches=[1], rounds=2, warmup=0, show_progress=False,
    )  # fmt: skip
    assert relabelled.verdict is not None  # an fp32 graph is fp32, whatever its label says


def test_bad_requests_are_refused(models, tmp_path):
    with pytest.raises(InputError, match="fixed batch of 4"):
        bench({"base": export_base(tmp_path / "b4.onnx", batch=4).path}, baseline="base")
    with pytest.raises(InputError, match="Unknown runner 'tensorflow'"):
        bench(models, baseline="base", runner="tensorflow", rounds=2)
    with pytest.raises(InputError, match="'other' is not one of the models"):
        bench(models, baseline="other")


def test_ratio_interval_comes_from_paired_rounds():
    rng = np.random.default_rng(0)
    noise = rng.lognormal(0, 0.3, 200)  # shared by both models within a round
    baseline = 0.010 * noise
    exact = ratio_of_medians(1.5 * baseline, baseline)
    assert exact["ratio"] == pytest.approx(1.5) and exact["ci_high"] - exact["ci_low"] < 1e-12
    jitter = ratio_of_medians(baseline * rng.normal(1.0, 0.01, 200), baseline)
    assert (
        jitter["ci_low"] < 1.0 < jitter["ci_high"] and jitter["ci_high"] - jitter["ci_low"] < 0.05
    )
