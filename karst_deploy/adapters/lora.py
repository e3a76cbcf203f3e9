"""LoRA: ΔW = (α / r) · B @ A, with A Kaiming-uniform and B zero (METHODS.md, LoRA)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from karst_deploy.adapters.base import (
    DEFAULT_TARGETS,
    AdapterConfig,
    AdapterMethod,
    LayerAdapter,
    kaiming_uniform,
    register,
)


@dataclasses.dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """LoRA hyper-parameters; the default targets match KARST's for like-for-like budgets."""

    method: ClassVar[str] = "lora"

    rank: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = DEFAULT_TARGETS


class LoraLayer(LayerAdapter):
    def __init__(self, linear: nn.Linear, config: LoraConfig) -> None:
        super().__init__()
        self.scale = config.alpha / config.rank
        self.A = nn.Parameter(kaiming_uniform(config.rank, linear.in_features))
        self.B = nn.Parameter(torch.zeros(linear.out_features, config.rank))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.t()) @ self.B.t() * self.scale

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.A.dtype
        return (self.B.to(dtype) @ self.A.to(dtype)) * self.scale


@register
class Lora(AdapterMethod):
    name = "lora"
    config_type = LoraConfig
    structurable = True

    def layer_adapter(self, path, linear, config, shared):
        return LoraLayer(linear, config)
