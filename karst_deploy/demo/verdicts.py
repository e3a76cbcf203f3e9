"""The demo's checks: four hard verdicts that fail it and the soft latency-interval verdict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from karst_deploy.bench import NOT_SHOWN, SHOWN, combine_outcomes
from karst_deploy.demo.settings import DemoSettings

if TYPE_CHECKING:
    from karst_deploy.bench import BenchResult
    from karst_deploy.demo.result import DemoInt8, DemoLatency, DemoParity, DemoTraining


@dataclass(frozen=True)
class Verdict:
    """One check of the demo. `state`: pass | fail | inconclusive | not shown."""

    name: str
    state: str
    detail: str
    hard: bool  # a failing hard verdict fails the demo

    @property
    def failed(self) -> bool:
        return self.hard and self.state != "pass"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def latency_states(result: BenchResult) -> dict[str, str]:
    """bench's outcome per batch size for merged vs base (shown / not shown / inconclusive):
    the one place the demo reads bench's latency verdict."""
    verdict = result.verdict
    assert verdict is not None, "the demo always names a candidate"
    return {batch: check.outcome for batch, check in verdict.latency.items()}


def judge(
    settings: DemoSettings,
    training: DemoTraining,
    parity: DemoParity,
    int8: DemoInt8,
    latency: DemoLatency,
) -> list[Verdict]:
    """Every verdict of the demo from its report sections (as in ``demo.json``)."""
    required, reached = settings.min_test_accuracy, training.test_accuracy
    verdicts = [
        Verdict(
            "accuracy",
            "pass" if reached >= required else "fail",
            f"KARST held-out (test split) accuracy {reached:.1%} "
            f"{'≥' if reached >= required else 'is below'} {required:.0%}"
            + (" (relaxed for quick mode)" if settings.mode == "quick" else ""),
            hard=True,
        ),
        Verdict(
            "parity",
            "pass" if parity.passed else "fail",
            "fp32 chain " + " → ".join(parity.stages) + ": every check passed"
            if parity.passed
            else "; ".join(parity.failures),
            hard=True,
        ),
        Verdict(
            "int8 gate",
            "pass" if int8.passed else "fail",
            f"accuracy drop {int8.metrics.accuracy_drop:.2f} pt "
            f"(≤ {int8.gate.max_accuracy_drop:g}), top-1 agreement "
            f"{int8.metrics.top1_agreement:.1%} "
            f"(≥ {int8.gate.min_top1_agreement:.0%}) on {int8.judged_on}"
            if int8.passed
            else "; ".join(int8.failures),
            hard=True,
        ),
        Verdict(
            "structure",
            "pass" if latency.structure.same else "fail",
            f"merged vs base: {latency.structure.summary()}",
            hard=True,
        ),
    ]
    verdicts.append(_latency_verdict(latency))
    return verdicts


def _latency_verdict(latency: DemoLatency) -> Verdict:
    """Soft: the merged/base interval per batch size, with what its state means."""
    intervals = latency.merged_vs_base
    tolerance = latency.tolerance
    band = f"±{tolerance:.0%}"
    shown = "; ".join(f"batch {b}: {i.ratio.interval()}" for b, i in intervals.items())
    state = combine_outcomes(i.state for i in intervals.values())
    if state == SHOWN:
        return Verdict(
            "latency interval",
            "pass",
            f"merged/base 95% interval within {band} ({shown})",
            hard=False,
        )
    reach = "lies wholly outside" if state == NOT_SHOWN else "straddles an edge of"
    detail = f"the merged/base 95% interval {reach} {band} ({shown})"
    if all(i.ratio.ci_high <= 1 + tolerance for i in intervals.values()):
        detail += "; merged is not slower than base"
    if latency.structure.same:
        # Measured here: ONNX Runtime sessions of one graph differ by up to ~3 % with
        # their creation order in one process (memory placement), beyond any rounds.
        detail += (
            "; the graphs are identical, so the gap is the measurement's (sessions of one "
            "graph can differ by a few % with their memory placement)"
        )
    return Verdict("latency interval", state, detail, hard=False)
