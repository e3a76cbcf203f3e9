"""bench: interleaved timing, the documented JSON, and a three-outcome verdict that needs the
structure too.

No timing assertions: runs use a few rounds and check fields, shapes and the structural half;
the verdict and the adaptive stopping rule are checked on synthetic intervals.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from karst_deploy.bench import (
    INCONCLUSIVE,
    NOT_SHOWN,
    SHOWN,
    MedianRatio,
    bench,
    combine_outcomes,
    interval_outcome,
    latency_verdict,
    ratio_of_medians,
    should_measure_more,
)
from karst_deploy.errors import INCONCLUSIVE as EXIT_INCONCLUSIVE
from karst_deploy.errors import InconclusiveError, InputError, VerificationError, with_flags
from karst_deploy.export.structure import StructureComparison
from karst_deploy.onnx_file import read_provenance
from karst_deploy.provenance import write_provenance
from tests.cli_helpers import run_cli
from tests.export.artifacts import CASE, export_base

STATISTICS = {"median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "throughput"}


@pytest.fixture(scope="module")
def models(base_export, method_export):
    """The plain tiny ViT and a KARST adapter's merged and unmerged exports (session-shared)."""
    return {
        "base": base_export(CASE).path,
        "merged": method_export("karst-channel")[1].path,
        "unmerged": method_export("karst-channel", unmerged=True)[1].path,
    }


def test_cli_json_has_the_documented_fields(models, tmp_path):
    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_cli(
        "bench", "--onnx", str(models["merged"]), "--baseline", str(models["base"]),
        "--unmerged", str(models["unmerged"]), "--batch-sizes", "1,2", "--rounds", "4",
        "--warmup", "1", "--sessions", "2", "--threads", "1", "--json-out", str(report),
        "--plot", str(plot), "--max-seconds", "0",
    )  # fmt: skip
    # The outcome depends on timing noise over 4 rounds; its exit code and fields do not.
    outcomes = {0: SHOWN, 1: NOT_SHOWN, EXIT_INCONCLUSIVE: INCONCLUSIVE}
    assert result.returncode in outcomes, result.stderr
    data = json.loads(report.read_text())
    assert list(data["models"]) == ["base", "merged", "unmerged"]
    assert (data["runner"], data["baseline"], data["batches"], data["rounds"]) == (
        "onnxruntime", "base", [1, 2], 4,
    )  # fmt: skip
    assert (data["sessions"], data["warmup"], data["requested_rounds"]) == (2, 1, 4)
    assert data["outcome"] == data["verdict"]["outcome"] == outcomes[result.returncode]
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
        baseline="base", candidate="merged", batches=[1], rounds=2, warmup=0, progress=False,
    )  # fmt: skip
    assert result.passed is False and result.outcome == NOT_SHOWN
    assert any(f.startswith("structure: graphs differ") for f in result.verdict.failures)
    with pytest.raises(VerificationError, match="not shown") as error:
        result.raise_if_failed()
    assert error.value.exit_code == 1


def test_torch_runner_times_the_same_architectures(models):
    result = bench(
        models, baseline="base", batches=[2], runner="torch", rounds=2, warmup=1,
        progress=False,
    )  # fmt: skip
    assert result.verdict is None and set(result.ratios) == {"merged", "unmerged"}
    assert result.runners["unmerged"]["runner"] == "torch"


def test_different_precisions_get_a_table_but_no_verdict(models, tmp_path):
    """Precision is read from the graphs (a provenance label alone changes nothing)."""
    from karst_deploy.precision import convert_precision

    fp16 = convert_precision(models["merged"], tmp_path / "fp16.onnx", "fp16").path
    result = bench(
        {"fp32": models["merged"], "fp16": fp16},
        baseline="fp32", candidate="fp16", batches=[1], rounds=2, warmup=0, progress=False,
    )  # fmt: skip
    assert result.verdict is None and result.passed is None
    assert "fp16" in result.notes[0] and "fp16" in result.ratios
    import onnx

    model = onnx.load(str(models["merged"]))
    write_provenance(model, read_provenance(model) | {"precision": "fp16"})
    onnx.save(model, str(tmp_path / "relabelled.onnx"))
    relabelled = bench(
        {"fp32": models["merged"], "fp16": tmp_path / "relabelled.onnx"},
        baseline="fp32", candidate="fp16", batches=[1], rounds=2, warmup=0, progress=False,
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
    assert exact.ratio == pytest.approx(1.5) and exact.ci_high - exact.ci_low < 1e-12
    jitter = ratio_of_medians(baseline * rng.normal(1.0, 0.01, 200), baseline)
    assert jitter.ci_low < 1.0 < jitter.ci_high and jitter.ci_high - jitter.ci_low < 0.05


@pytest.mark.parametrize(
    ("low", "high", "outcome"),
    [
        (0.98, 1.02, SHOWN),
        (0.97, 1.03, SHOWN),  # the band's edges belong to it
        (0.95, 1.01, INCONCLUSIVE),  # straddles -3 %: noise, not a verdict
        (0.90, 1.10, INCONCLUSIVE),
        (1.02, 1.05, INCONCLUSIVE),
        (1.05, 1.08, NOT_SHOWN),
        (0.90, 0.96, NOT_SHOWN),
    ],
)
def test_the_interval_is_judged_against_the_band(low, high, outcome):
    assert interval_outcome(low, high, 0.03) == outcome


@pytest.mark.parametrize(
    ("outcomes", "combined"),
    [
        ([SHOWN, SHOWN], SHOWN),
        ([SHOWN, INCONCLUSIVE], INCONCLUSIVE),
        ([INCONCLUSIVE, NOT_SHOWN], NOT_SHOWN),  # one real difference decides
        ([], INCONCLUSIVE),  # nothing measured shows nothing
    ],
)
def test_outcomes_combine_over_batches(outcomes, combined):
    assert combine_outcomes(outcomes) == combined


@pytest.mark.parametrize(
    ("outcome", "elapsed", "block", "budget", "more"),
    [
        (INCONCLUSIVE, 10.0, 4.0, 20.0, True),
        (INCONCLUSIVE, 10.0, 4.0, 14.0, True),  # exactly fits
        (INCONCLUSIVE, 10.0, 4.0, 13.9, False),  # the next block would overrun the budget
        (INCONCLUSIVE, 0.5, 0.1, 0.0, False),  # --max-seconds 0: never add rounds
        (SHOWN, 1.0, 1.0, 60.0, False),  # decided: stop
        (NOT_SHOWN, 1.0, 1.0, 60.0, False),
        (None, 1.0, 1.0, 60.0, False),  # no verdict applies: nothing to decide
    ],
)
def test_rounds_are_added_only_while_inconclusive_and_within_budget(
    outcome, elapsed, block, budget, more
):
    assert should_measure_more(outcome, elapsed, block, budget) is more


def _ratios(*intervals):
    return {
        str(b): MedianRatio(ratio=(low + high) / 2, ci_low=low, ci_high=high, confidence=0.95)
        for b, (low, high) in zip((1, 8), intervals, strict=False)
    }


SAME = StructureComparison(operators={}, initializer_uses={})


def test_the_verdict_has_three_outcomes_with_their_exit_codes(models):
    result = bench(
        {"base": models["base"], "merged": models["merged"]},
        baseline="base", candidate="merged", batches=[1], rounds=2, warmup=0, sessions=1,
        progress=False,
    )  # fmt: skip
    judged = {
        SHOWN: latency_verdict("merged", "base", _ratios((0.99, 1.01), (0.98, 1.02)), SAME, 0.03),
        NOT_SHOWN: latency_verdict("merged", "base", _ratios((0.99, 1.01), (1.1, 1.2)), SAME, 0.03),
        INCONCLUSIVE: latency_verdict("merged", "base", _ratios((0.96, 1.01)), SAME, 0.03),
    }
    assert {outcome: v.outcome for outcome, v in judged.items()} == {o: o for o in judged}
    dataclasses.replace(result, verdict=judged[SHOWN]).raise_if_failed()
    with pytest.raises(VerificationError, match=r"not shown: batch 8: .* lies wholly outside"):
        dataclasses.replace(result, verdict=judged[NOT_SHOWN]).raise_if_failed()
    too_noisy = r"inconclusive after 2 rounds.*straddles ±3%"
    with pytest.raises(InconclusiveError, match=too_noisy) as refused:
        dataclasses.replace(result, verdict=judged[INCONCLUSIVE]).raise_if_failed()
    assert "with more rounds or a larger max_seconds." in str(refused.value)
    shown = with_flags(refused.value)  # a count stays a word; the advice names the CLI's flags
    assert "after 2 rounds in" in shown and "more --rounds or a larger --max-seconds." in shown
    assert InconclusiveError.exit_code == EXIT_INCONCLUSIVE == 75
    differs = StructureComparison(operators={"MatMul": [4, 6]}, initializer_uses={})
    structural = latency_verdict("merged", "base", _ratios((0.99, 1.01)), differs, 0.03)
    assert structural.outcome == NOT_SHOWN and structural.failures == [
        "structure: graphs differ: +2 op MatMul (4 → 6)"
    ]


def test_rounds_are_added_while_the_verdict_is_inconclusive(models):
    """Real sessions: a ±0.0001 % band is almost never decided by a few rounds."""
    common = dict(
        baseline="base", candidate="merged", batches=[1], rounds=2, warmup=0, sessions=1,
        progress=False,
    )  # fmt: skip
    pair = {"base": models["base"], "merged": models["merged"]}
    fixed = bench(pair, tolerance=1e-6, max_seconds=0, **common)
    assert (fixed.rounds, fixed.requested_rounds, fixed.sessions) == (2, 2, 1)
    adaptive = bench(pair, tolerance=1e-6, max_seconds=2, **common)
    samples = adaptive.samples_ms["merged"]["1"]
    assert adaptive.rounds == len(samples) == 2 * adaptive.sessions  # whole blocks of 2
    if adaptive.outcome == INCONCLUSIVE:  # the budget ran out before a decision
        assert adaptive.rounds > adaptive.requested_rounds
