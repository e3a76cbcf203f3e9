"""One training run as typed options: what `karst-deploy train` asks for, as one object.

`TrainOptions` holds every choice of a run as the user states it (None = "the recipe's or the
method's default"); `train_with_options` resolves the preset (`--recipe`), the adapter or the
SPT request (`--placement`) and the schedule, then trains. The command line only fills the
object and renders the `TrainResult`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from karst_deploy.train.loop import TrainResult, train_adapters
from karst_deploy.train.recipe import TrainConfig, apply_recipe, training_adapter

#: The method options (None = the method's default); which method takes which is in recipe.
METHOD_OPTION_NAMES = (
    "factor",
    "rank",
    "kernels",
    "alpha",
    "rescale",
    "scale",
    "structure",
    "stage_ranks",
)


@dataclass
class TrainOptions:
    """Everything a training run needs besides the output directory."""

    backbone: str
    data: str
    checkpoint: str | os.PathLike[str] | None = None
    method: str = "karst"
    factor: int | None = None
    rank: int | None = None
    kernels: int | None = None
    alpha: float | None = None
    rescale: str | None = None
    scale: float | None = None
    structure: str | None = None
    stage_ranks: str | None = None
    targets: str | None = None
    recipe: str = "vtab"
    placement: str = "uniform"
    budget: str | None = None
    structured: str | None = None
    sigma: float | None = None
    budget_rule: str | None = None
    scores: str | os.PathLike[str] | None = None
    img_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float | None = None
    warmup_epochs: int | None = None
    cooldown_epochs: int | None = None
    warmup_lr: float | None = None
    min_lr: float | None = None
    drop_path: float = 0.1
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True
    strict_images: bool = False
    pretrained: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def method_options(self) -> dict[str, Any]:
        """The method options as given (None where not), targets included."""
        return {name: getattr(self, name) for name in (*METHOD_OPTION_NAMES, "targets")}

    def to_config(self) -> TrainConfig:
        """Apply the preset, build the adapter (or SPT request) and the `TrainConfig`."""
        karst_modules = self.method if self.placement != "spt" else (self.structured or "karst")
        schedule_given = {
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
            "cooldown_epochs": self.cooldown_epochs,
        }
        method_options, schedule, applied = apply_recipe(
            self.recipe, karst_modules, self.method_options(), schedule_given
        )
        adapter = training_adapter(
            self.placement,
            self.method,
            self.structured,
            budget=self.budget,
            sigma=self.sigma,
            scores=self.scores,
            budget_rule=self.budget_rule,
            **method_options,
        )
        passed = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(TrainConfig)
            if hasattr(self, f.name)
            and f.name not in ("adapter", "checkpoint", "recipe", *schedule_given)
        }
        return TrainConfig(
            **passed,
            adapter=adapter,
            checkpoint=None if self.checkpoint is None else str(self.checkpoint),
            recipe={"name": self.recipe, "set": applied},
            **schedule,
        )


def train_with_options(
    options: TrainOptions,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the adapters `options` describe and write them (with train_log.json) to `out`."""
    return train_adapters(options.to_config(), Path(out), force=force, progress=progress)
