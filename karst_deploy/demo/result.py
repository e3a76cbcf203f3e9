"""What the demo measured: `DemoResult`, whose `to_dict` is ``demo.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from karst_deploy.bench import LatencyStatistics, MedianRatio
from karst_deploy.compare import Check, LogitMetrics, Tolerance
from karst_deploy.demo.settings import FORMAT, DemoSettings
from karst_deploy.demo.verdicts import Verdict
from karst_deploy.errors import VerificationError
from karst_deploy.export.structure import StructureComparison
from karst_deploy.parity import InputSummary
from karst_deploy.train.log import TrainableCounts


def _nested(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """label -> batch -> typed figures, as JSON."""
    return {label: {b: v.to_dict() for b, v in per.items()} for label, per in table.items()}


@dataclass(frozen=True)
class SourceBackbone:
    """Step 1: the source backbone (pretrained on digits 0–4), its cache entry and its copy."""

    name: str
    model_kwargs: dict[str, Any]
    recipe: dict[str, Any]  # SourceRecipe.to_dict()
    recipe_key: str
    cache_path: str
    cached: bool  # reused from the cache (not pretrained in this run)
    file: str  # the copy in the report directory
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DemoTraining:
    """Step 2: KARST on digits 5–9 over the frozen backbone (accuracies are fractions)."""

    method: str
    adapter_config: dict[str, Any]
    data: str
    images: dict[str, int]  # split -> images
    epochs: int
    best_epoch: int
    best_val_accuracy: float
    test_accuracy: float
    trainable_parameters: TrainableCounts
    val_accuracy_per_epoch: list[float]
    train_loss_per_epoch: list[float]
    log: str  # the training log, relative to the report directory

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ComparisonSummary:
    """One stage pair on one input set of the fp32 chain: the headline figures."""

    reference: str
    candidate: str
    inputs: str
    passed: bool
    max_abs_diff: float
    allowed: float | None  # the max abs diff limit (None: not gated)
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DemoParity:
    """Step 5, fp32 chain: the verdict, the stage names and each comparison's figures."""

    passed: bool
    failures: list[str]
    stages: list[str]
    comparisons: list[ComparisonSummary]
    inputs: list[InputSummary]
    report: str  # parity.json

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "stages": self.stages,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "inputs": [i.to_dict() for i in self.inputs],
            "report": self.report,
        }


@dataclass(frozen=True)
class DemoInt8:
    """Step 5, int8 gate: int8 against fp32 ONNX on held-out images, and the conversion."""

    passed: bool
    failures: list[str]
    judged_on: str
    reference: str
    gate: Tolerance
    metrics: LogitMetrics
    checks: list[Check]
    report: str  # parity-int8.json
    conversion: dict[str, Any]  # PrecisionResult.to_dict(), paths relative to the report

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "judged_on": self.judged_on,
            "reference": self.reference,
            "gate": dataclasses.asdict(self.gate),
            "metrics": self.metrics.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
            "report": self.report,
            "conversion": self.conversion,
        }


@dataclass(frozen=True)
class IntervalState:
    """merged/base at one batch size: the ratio and bench's outcome for its interval."""

    ratio: MedianRatio
    state: str  # shown | not shown | inconclusive

    def to_dict(self) -> dict[str, Any]:
        return {**self.ratio.to_dict(), "state": self.state}


@dataclass(frozen=True)
class DemoLatency:
    """Step 6: the bench table, ratios, the structural check and the interval per batch."""

    runner: str
    threads: int | None
    rounds: int
    warmup: int
    batches: list[int]
    tolerance: float
    latency: dict[str, dict[str, LatencyStatistics]]  # label -> batch -> statistics
    ratios: dict[str, dict[str, MedianRatio]]  # label -> batch -> ratio to base
    merged_vs_base: dict[str, IntervalState]  # batch -> interval and its state
    structure: StructureComparison  # merged vs base
    # What the unmerged graph adds over the backbone: the cost that merging removes.
    unmerged_structure: StructureComparison
    report: str  # bench.json

    def to_dict(self) -> dict[str, Any]:
        return {
            "runner": self.runner,
            "threads": self.threads,
            "rounds": self.rounds,
            "warmup": self.warmup,
            "batches": self.batches,
            "tolerance": self.tolerance,
            "latency": _nested(self.latency),
            "ratios": _nested(self.ratios),
            "merged_vs_base": {b: s.to_dict() for b, s in self.merged_vs_base.items()},
            "structure": self.structure.to_dict(),
            "unmerged_structure": self.unmerged_structure.to_dict(),
            "report": self.report,
        }


@dataclass
class StepRecord:
    """One timed step of the demo; `detail` is its one-line outcome."""

    name: str
    description: str
    seconds: float = 0.0
    detail: str = ""
    cached: bool | None = None  # the source backbone step only: reused from the cache

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.cached is not None:
            record["cached"] = self.cached
        if self.detail:
            record["detail"] = self.detail
        return record | {"seconds": self.seconds}


@dataclass
class DemoResult:
    """Everything the demo measured; `to_dict` is ``demo.json``."""

    out: Path
    settings: DemoSettings
    seed: int
    threads: int | None
    backbone: SourceBackbone
    training: DemoTraining
    accuracy: dict[str, dict[str, float]]  # input set -> stage -> percent
    parity: DemoParity
    int8: DemoInt8
    latency: DemoLatency
    verdicts: list[Verdict]
    steps: list[StepRecord]
    artifacts: dict[str, dict[str, Any]]  # file -> bytes (and sha256, export check)
    machine: dict[str, Any]  # Diagnosis.to_dict()
    commands: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def test_images(self) -> int:
        """How many held-out test images the accuracy per stage is measured on."""
        return next(i.samples for i in self.parity.inputs if i.name == "images")

    @property
    def failures(self) -> list[str]:
        return [f"{v.name}: {v.detail}" for v in self.verdicts if v.failed]

    def raise_if_failed(self) -> None:
        if self.failures:
            raise VerificationError(
                f"The demo failed (report in '{self.out}'): " + "; ".join(self.failures) + "."
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "passed": self.passed,
            "failures": self.failures,
            "mode": self.settings.mode,
            "note": self.settings.note,
            "seed": self.seed,
            "threads": self.threads,
            "requirements": {
                "min_test_accuracy": self.settings.min_test_accuracy,
                "latency_tolerance": self.latency.tolerance,
            },
            "verdicts": [v.to_dict() for v in self.verdicts],
            "backbone": self.backbone.to_dict(),
            "training": self.training.to_dict(),
            "accuracy": self.accuracy,
            "parity": self.parity.to_dict(),
            "int8": self.int8.to_dict(),
            "latency": self.latency.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "total_seconds": round(sum(s.seconds for s in self.steps), 2),
            "artifacts": self.artifacts,
            "commands": self.commands,
            "machine": self.machine,
        }
