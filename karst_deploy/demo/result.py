"""What the demo measured: `DemoResult`, whose `to_dict` is ``demo.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from karst_deploy.demo.settings import FORMAT, DemoSettings
from karst_deploy.demo.verdicts import Verdict
from karst_deploy.errors import VerificationError


@dataclass
class DemoResult:
    """Everything the demo measured; `to_dict` is ``demo.json``."""

    out: Path
    settings: DemoSettings
    seed: int
    threads: int | None
    backbone: dict[str, Any]
    training: dict[str, Any]
    accuracy: dict[str, dict[str, float]]  # input set -> stage -> percent
    parity: dict[str, Any]
    int8: dict[str, Any]
    latency: dict[str, Any]
    verdicts: list[Verdict]
    steps: list[dict[str, Any]]
    artifacts: dict[str, dict[str, Any]]
    machine: dict[str, Any]
    commands: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def test_images(self) -> int:
        """How many held-out test images the accuracy per stage is measured on."""
        return next(i["samples"] for i in self.parity["inputs"] if i["name"] == "images")

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
                "latency_tolerance": self.latency["tolerance"],
            },
            "verdicts": [v.to_dict() for v in self.verdicts],
            "backbone": self.backbone,
            "training": self.training,
            "accuracy": self.accuracy,
            "parity": self.parity,
            "int8": self.int8,
            "latency": self.latency,
            "steps": self.steps,
            "total_seconds": round(sum(s["seconds"] for s in self.steps), 2),
            "artifacts": self.artifacts,
            "commands": self.commands,
            "machine": self.machine,
        }
