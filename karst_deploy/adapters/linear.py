"""The linear probe as an adapter method: no layer adapters, only the classifier head trains.

Registering it as a method (``"method": "linear"`` in adapter_config.json, no
hyper-parameters, the head stored under ``trainable_extra``) lets a linear probe travel
through the same save / load / merge / export path as every other method: merging it
yields the backbone with the trained head, and nothing else changes.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from karst_deploy.adapters.base import AdapterConfig, AdapterMethod, register


@dataclasses.dataclass(frozen=True)
class LinearConfig(AdapterConfig):
    """A linear probe: the backbone is frozen and only the classifier head is trained."""

    method: ClassVar[str] = "linear"


@register
class LinearProbe(AdapterMethod):
    name = "linear"
    config_type = LinearConfig

    def module_targets(self, config: AdapterConfig) -> tuple[str, ...]:
        return ()
