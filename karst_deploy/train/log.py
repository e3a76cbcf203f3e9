"""The training log: what a run did, epoch by epoch; `TrainLog.to_dict` is ``train_log.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

LOG_FILE = "train_log.json"
LOG_FORMAT = "karst-deploy.train_log"
SELECTION_RULE = "highest validation accuracy; ties go to the lower validation loss"
TEST_NOTE = "reported only; never used to choose the epoch"


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: training loss/accuracy (mean over its steps), validation, lr, wall time."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float

    def summary(self, epochs: int, best: EpochRecord) -> str:
        """``epoch 2/4  loss 0.500  val acc 0.520  best 0.520``: a progress line's start."""
        return (
            f"epoch {self.epoch}/{epochs}  loss {self.train_loss:.3f}  "
            f"val acc {self.val_accuracy:.3f}  best {best.val_accuracy:.3f}"
        )


@dataclass(frozen=True)
class DataRecord:
    """The data trained on: classes, preprocessing, images per split and what was skipped."""

    source: str
    classes: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    images: dict[str, int]
    skipped_images: dict[str, int]
    skipped_files: dict[str, list[str]]


@dataclass(frozen=True)
class TrainableCounts:
    """Trained parameters: the adapter's (head included, as it is stored), the head's, all."""

    adapter: int
    head: int
    total: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunRecord:
    """Where and how the run happened."""

    device: str
    world_size: int
    amp: str | None
    steps: int
    steps_per_epoch: int
    drop_path_blocks: int
    torch: str


@dataclass
class TrainLog:
    """A finished run's log; the epoch chosen is the best on validation (`SELECTION_RULE`)."""

    recipe: dict[str, Any]  # TrainConfig.to_dict()
    backbone: dict[str, Any]  # BackboneSpec.to_dict()
    data: DataRecord
    trainable_parameters: TrainableCounts
    run: RunRecord
    epochs: list[EpochRecord]
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    test_accuracy: float | None
    test_loss: float | None
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``train_log.json``."""
        plain = dataclasses.asdict(self)  # nested records and epochs too
        sections = ("recipe", "backbone", "data", "trainable_parameters", "run", "epochs")
        return {
            "format": LOG_FORMAT,
            "version": 1,
            **{key: plain[key] for key in sections},
            "selection": SELECTION_RULE,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "best_val_loss": self.best_val_loss,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "test_note": TEST_NOTE,
            "warnings": self.warnings,
        }
