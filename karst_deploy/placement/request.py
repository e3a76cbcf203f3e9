"""`train --placement spt`: an SPT allocation made on the training backbone itself.

A `SptRequest` stands where an adapter config goes in a `TrainConfig`. Training builds the
backbone with its fresh head, then `resolve` turns the request into the `SptConfig` it
installs: sensitivity read from a scores file (``karst-deploy sensitivity``, checked against
this backbone and checkpoint) or computed on the training split, then `allocate`. The
structured config's ``targets`` are the SPT candidates; its other fields configure the
structured modules.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, ClassVar

from torch import nn

from karst_deploy.adapters.base import AdapterConfig
from karst_deploy.adapters.karst import KarstConfig
from karst_deploy.adapters.spt import CANDIDATES, STRUCTURED_CONFIGS, SptConfig
from karst_deploy.errors import InputError
from karst_deploy.placement.allocation import allocate, parse_budget
from karst_deploy.placement.sensitivity import (
    candidate_parameters,
    check_scores_fit,
    compute_sensitivity,
    load_scores,
)


@dataclasses.dataclass(frozen=True)
class SptRequest:
    """Budget, structured module, σ, and where sensitivity comes from (`scores` or on the fly)."""

    method: ClassVar[str] = "spt"

    budget: int | str
    structured: AdapterConfig = dataclasses.field(default_factory=KarstConfig)
    sigma: float = 10.0
    scores: str | None = None
    batches: int = 16
    batch_size: int = 32
    rule: str = "sweep"
    candidates: str = "official"  # or "matrices": fused-qkv matrices only (before issue 11)

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", parse_budget(self.budget))
        if not isinstance(self.structured, tuple(STRUCTURED_CONFIGS.values())):
            raise InputError(
                f"structured must be a karst or lora config; got a "
                f"{type(self.structured).__name__}.",
                parameters=("structured",),
            )
        sigma = self.sigma
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise InputError(
                f"sigma is {sigma!r}; expected a positive number (SPT uses 10).",
                parameters=("sigma",),
            )
        if self.candidates not in CANDIDATES:
            raise InputError(
                f"candidates is {self.candidates!r}; expected one of {list(CANDIDATES)}."
            )
        if self.rule not in ("sweep", "exact"):
            raise InputError(
                f"rule is {self.rule!r}; expected 'sweep' or 'exact'.", parameters=("rule",)
            )
        if self.scores is not None and not os.path.isfile(self.scores):
            raise InputError(
                f"scores '{self.scores}' does not exist (karst-deploy sensitivity writes one).",
                parameters=("scores",),
            )
        for name, value in (("batches", self.batches), ("batch_size", self.batch_size)):
            if not isinstance(value, int) or value < 1:
                raise InputError(
                    f"{name} is {value!r}; expected a positive integer.", parameters=(name,)
                )

    def to_hparams(self) -> dict[str, Any]:
        """The request as JSON values (train_log.json records it; placement.json the outcome)."""
        return {
            "placement": "spt",
            "budget": self.budget,
            "structured": {"method": self.structured.method, **self.structured.to_hparams()},
            "sigma": self.sigma,
            "budget_rule": self.rule,
            "candidates": self.candidates,
            "scores": self.scores,
            **({} if self.scores else {"batches": self.batches, "batch_size": self.batch_size}),
        }

    def resolve(self, model: nn.Module, train: Any, *, progress: bool = False) -> SptConfig:
        """The SPT config for `model` (a plain backbone): sensitivity, then `allocate`.

        `train` is the training split (`LabelledImages`); it is preprocessed for `model` here.
        """
        from karst_deploy.models import backbone_spec

        candidates = candidate_parameters(model, self.structured.targets, self.candidates)
        if self.scores is not None:
            sensitivity = load_scores(self.scores)
            check_scores_fit(sensitivity, model, self.scores)
            missing = sorted(set(candidates) - set(sensitivity.scores))
            if missing:
                raise InputError(
                    f"scores '{self.scores}' has no scores for '{missing[0]}', a candidate of "
                    f"targets {list(self.structured.targets)} (files from before the official "
                    "SPT candidates score matrices only: recompute with karst-deploy "
                    "sensitivity).",
                    parameters=("scores", "targets"),
                )
        else:
            if train is None:
                raise InputError(
                    "SPT sensitivity needs the training split (or a scores file).",
                    parameters=("scores",),
                )
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise InputError(
                    "Under torchrun every process must allocate the same placement: pass scores, "
                    "a file written once by `karst-deploy sensitivity`.",
                    parameters=("scores",),
                )
            spec = backbone_spec(model)
            sensitivity = compute_sensitivity(
                model,
                train.preprocessed_as(spec.img_size, spec.mean, spec.std),
                batches=self.batches,
                batch_size=self.batch_size,
                targets=self.structured.targets,
                candidates=self.candidates,
                progress=progress,
            )
        return allocate(
            model,
            {name: sensitivity.scores[name] for name in candidates},
            self.budget,
            structured=self.structured,
            sigma=self.sigma,
            rule=self.rule,
            candidates=self.candidates,
            scores_metadata={"file": self.scores, **sensitivity.metadata},
        )
