"""`karst-deploy demo --quick` end to end, as real processes on a fresh cache.

The module runs the demo twice through the CLI with ``XDG_CACHE_HOME`` pointed at an empty
temporary directory: the first run pretrains the source backbone (cold), the second reuses
it (warm). Both pass ``--threads 2``: the thread count changes float reduction order in
training, so fixing it makes the two runs' adapters bit-identical on any machine. Every
step is real — training on the digits, torch export, int8 calibration, ONNX Runtime
parity and bench — only shorter (see `karst_deploy.demo.QUICK`). No timing
assertions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from karst_deploy.adapters import AdapterFile
from karst_deploy.bench import LatencyStatistics, MedianRatio
from karst_deploy.compare import Check, LogitMetrics, Tolerance
from karst_deploy.demo import QUICK, DemoResult
from karst_deploy.demo.result import (
    ComparisonSummary,
    DemoInt8,
    DemoLatency,
    DemoParity,
    DemoTraining,
    IntervalState,
    SourceBackbone,
    StepRecord,
)
from karst_deploy.demo.verdicts import judge
from karst_deploy.export.structure import StructureComparison
from karst_deploy.files import sha256_file
from karst_deploy.onnx_file import read_provenance
from karst_deploy.parity import InputSummary
from karst_deploy.train.log import TrainableCounts
from tests.cli_helpers import run_cli

REPORT_FILES = {
    "adapter/adapter_config.json",
    "adapter/adapter.safetensors",
    "adapter/train_log.json",
    "backbone.safetensors",
    "merged.onnx",
    "unmerged.onnx",
    "base.onnx",
    "merged-int8.onnx",
    "parity.json",
    "parity-int8.json",
    "bench.json",
    "demo.json",
    "demo.png",
}
HARD_CHECKS = ["accuracy", "parity", "int8 gate", "structure"]


def run_demo_cli(cache: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "karst_deploy", "demo", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )


@dataclasses.dataclass(frozen=True)
class Run:
    out: Path
    process: subprocess.CompletedProcess

    @property
    def demo(self) -> dict:
        return json.loads((self.out / "demo.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("demo")
    cache = root / "cache"
    cold = run_demo_cli(cache, "--out", str(root / "cold"), "--threads", "2", "--json")
    assert cold.returncode == 0, cold.stderr[-3000:]
    backbone = Path(json.loads(cold.stdout)["backbone"]["cache_path"])
    stamp = backbone.stat().st_mtime_ns
    warm = run_demo_cli(cache, "--out", str(root / "warm"), "--threads", "2")
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert backbone.stat().st_mtime_ns == stamp  # the cached file was not rewritten
    return {"cold": Run(root / "cold", cold), "warm": Run(root / "warm", warm)}


def test_the_report_directory_holds_every_artifact(runs):
    out = runs["cold"].out
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == REPORT_FILES
    assert not list(out.parent.glob(".cold.*"))  # no temporary directory left behind
    artifacts = runs["cold"].demo["artifacts"]
    assert set(artifacts) == REPORT_FILES - {"demo.json"}
    for name, entry in artifacts.items():
        assert entry["bytes"] == (out / name).stat().st_size
        if "sha256" in entry:
            assert entry["sha256"] == sha256_file(out / name)


def test_demo_json_has_the_verdicts_and_figures(runs):
    run = runs["cold"]
    demo = run.demo
    assert json.loads(run.process.stdout) == demo  # --json prints exactly demo.json
    assert demo["passed"] is True and demo["failures"] == []
    assert (demo["format"], demo["mode"], demo["seed"]) == ("karst-deploy.demo", "quick", 0)
    assert "relaxed" in demo["note"]  # quick mode says that it asks for less
    verdicts = {v["name"]: v for v in demo["verdicts"]}
    assert [v["name"] for v in demo["verdicts"] if v["hard"]] == HARD_CHECKS
    assert all(verdicts[name]["state"] == "pass" for name in HARD_CHECKS)
    timing = verdicts["latency interval"]
    assert not timing["hard"] and timing["state"] in ("pass", "inconclusive", "not shown")

    # Accuracy per stage on the 181 test images; one model, so the fp32 stages agree exactly.
    test = demo["accuracy"]["test"]
    assert list(test) == [
        "torch-unmerged",
        "torch-merged",
        "onnxruntime",
        "onnxruntime-unmerged",
        "onnxruntime-int8",
    ]
    assert test["torch-unmerged"] == pytest.approx(demo["training"]["test_accuracy"] * 100)
    assert len({test[s] for s in list(test)[:4]}) == 1
    assert test["torch-unmerged"] >= demo["requirements"]["min_test_accuracy"] * 100
    assert demo["int8"]["metrics"]["accuracy_drop"] <= demo["int8"]["gate"]["max_accuracy_drop"]
    assert "360 images" in demo["int8"]["judged_on"]  # val + test, not the 181 test images

    latency = demo["latency"]
    assert list(latency["latency"]) == ["base", "merged", "unmerged", "merged-int8"]
    assert latency["batches"] == [1, 8] and latency["rounds"] == QUICK.bench_rounds
    for ratio in latency["merged_vs_base"].values():
        assert ratio["ci_low"] <= ratio["ratio"] <= ratio["ci_high"]
    assert latency["structure"]["same"] is True
    assert latency["unmerged_structure"]["same"] is False  # the work merging removes

    assert [s["name"] for s in demo["steps"]] == [
        "source backbone", "train", "export", "int8", "parity", "bench", "report",
    ]  # fmt: skip
    assert all(s["seconds"] >= 0 for s in demo["steps"])
    assert demo["machine"]["onnxruntime_providers"]


def test_json_reports_name_files_relative_to_the_report(runs):
    out = runs["cold"].out
    for name in ("demo.json", "parity.json", "parity-int8.json", "bench.json"):
        text = (out / name).read_text()
        assert ".tmp" not in text and str(out) not in text, name
    bench = json.loads((out / "bench.json").read_text())
    assert bench["models"]["merged"] == "merged.onnx"


def test_onnx_files_load_and_carry_provenance(runs):
    out = runs["cold"].out
    adapter = AdapterFile(out / "adapter")
    backbone_sha = sha256_file(out / "backbone.safetensors")
    expected = {
        "merged.onnx": ("merged", "fp32"),
        "unmerged.onnx": ("unmerged", "fp32"),
        "base.onnx": ("base", "fp32"),
        "merged-int8.onnx": ("merged", "int8"),
    }
    for name, (kind, precision) in expected.items():
        onnx.checker.check_model(str(out / name), full_check=True)
        record = read_provenance(out / name)
        assert (record["kind"], record["precision"]) == (kind, precision), name
        assert record["checkpoint_sha256"] == backbone_sha, name
        if kind != "base":
            assert record["adapter_sha256"] == adapter.sha256(), name
    int8 = read_provenance(out / "merged-int8.onnx")
    assert int8["source_sha256"] == sha256_file(out / "merged.onnx")
    assert int8["calibration"]["source"] == "digits:5-9 (train split)"


def test_the_report_is_self_contained(runs):
    """verify-parity from the report's own files (its adapter, backbone copy and ONNX) passes."""
    from karst_deploy.parity import verify_parity

    out = runs["cold"].out
    report = verify_parity(
        out / "merged.onnx",
        out / "adapter",
        checkpoint=out / "backbone.safetensors",
        data="digits:5-9",
        samples=8,
        progress=False,
    )
    assert report.passed, report.failures


def test_a_second_run_reuses_the_cached_backbone(runs):
    cold, warm = runs["cold"].demo, runs["warm"].demo
    assert (cold["steps"][0]["cached"], warm["steps"][0]["cached"]) == (False, True)
    assert (cold["backbone"]["cached"], warm["backbone"]["cached"]) == (False, True)
    assert warm["backbone"]["sha256"] == cold["backbone"]["sha256"]
    assert warm["threads"] == 2 and warm["latency"]["threads"] == 2
    # Same seed and threads, same cached backbone: the same adapter, bit for bit, so the
    # same merged ONNX, whose calibration ranges are cached too.
    assert sha256_file(runs["warm"].out / "adapter" / "adapter.safetensors") == sha256_file(
        runs["cold"].out / "adapter" / "adapter.safetensors"
    )
    assert cold["int8"]["conversion"]["calibration"]["cache"] == "miss"
    assert warm["int8"]["conversion"]["calibration"]["cache"] == "hit"
    assert "demo passed" in runs["warm"].process.stdout  # the table view, not JSON


def test_an_existing_report_is_refused_without_force(runs, tmp_path, monkeypatch):
    out = runs["cold"].out
    stamp = (out / "demo.json").stat().st_mtime_ns
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    refused = run_cli("demo", "--quick", "--out", out)  # refused up front: no process needed
    assert refused.returncode == 2
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (out / "demo.json").stat().st_mtime_ns == stamp
    assert not (tmp_path / "cache").exists()  # refused before any work


def _sections(demo: dict) -> dict:
    """The typed sections `judge` reads, rebuilt from a real demo.json."""
    training, parity, int8, latency = (
        demo[k] for k in ("training", "parity", "int8", "latency")
    )  # fmt: skip
    fixed = ("name", "samples", "labelled")
    return {
        "training": DemoTraining(
            **training
            | {"trainable_parameters": TrainableCounts(**training["trainable_parameters"])}
        ),
        "parity": DemoParity(
            **parity
            | {
                "comparisons": [ComparisonSummary(**c) for c in parity["comparisons"]],
                "inputs": [
                    InputSummary(
                        *(i[k] for k in fixed), {k: v for k, v in i.items() if k not in fixed}
                    )
                    for i in parity["inputs"]
                ],
            }
        ),
        "int8": DemoInt8(
            **int8
            | {
                "gate": Tolerance(**int8["gate"]),
                "metrics": LogitMetrics(**int8["metrics"]),
                "checks": [Check(**c) for c in int8["checks"]],
            }
        ),
        "latency": DemoLatency(
            **latency
            | {
                "latency": {
                    label: {b: LatencyStatistics(**s) for b, s in per.items()}
                    for label, per in latency["latency"].items()
                },
                "ratios": {
                    label: {b: MedianRatio(**r) for b, r in per.items()}
                    for label, per in latency["ratios"].items()
                },
                "merged_vs_base": {
                    b: IntervalState(
                        MedianRatio(**{k: v for k, v in r.items() if k != "state"}), r["state"]
                    )
                    for b, r in latency["merged_vs_base"].items()
                },
                "structure": _structure(latency["structure"]),
                "unmerged_structure": _structure(latency["unmerged_structure"]),
            }
        ),
    }


def _structure(data: dict) -> StructureComparison:
    return StructureComparison(data["operators"], data["initializer_uses"])


def _result_from(demo: dict, **changes) -> DemoResult:
    """A DemoResult rebuilt from a real demo.json with some sections replaced."""
    sections = _sections(demo) | changes
    return DemoResult(
        out=Path("report"),
        settings=QUICK,
        seed=0,
        threads=None,
        backbone=SourceBackbone(**demo["backbone"]),
        accuracy=demo["accuracy"],
        verdicts=judge(QUICK, **sections),
        steps=[StepRecord(**step) for step in demo["steps"]],
        artifacts={},
        machine={},
        **sections,
    )


def test_the_typed_sections_give_back_demo_json(runs):
    demo = runs["cold"].demo
    rebuilt = _result_from(demo).to_dict()
    for key in ("backbone", "training", "parity", "int8", "latency", "steps", "verdicts"):
        assert rebuilt[key] == demo[key], key


@pytest.mark.parametrize(
    "check, change",
    [
        ("accuracy", lambda s: {"training": replace(s["training"], test_accuracy=0.3)}),
        ("parity", lambda s: {"parity": replace(s["parity"], passed=False, failures=["x"])}),
        ("int8 gate", lambda s: {"int8": replace(s["int8"], passed=False, failures=["y"])}),
        (
            "structure",
            lambda s: {
                "latency": replace(
                    s["latency"], structure=StructureComparison({"Einsum": [0, 16]}, {})
                )
            },
        ),
    ],
)
def test_a_failed_hard_check_fails_the_demo(runs, check, change):
    from karst_deploy.errors import VerificationError

    demo = runs["cold"].demo
    assert _result_from(demo).passed
    result = _result_from(demo, **change(_sections(demo)))
    assert [f.split(":")[0] for f in result.failures] == [check]
    with pytest.raises(VerificationError) as error:
        result.raise_if_failed()
    assert error.value.exit_code == 1 and check in str(error.value)
