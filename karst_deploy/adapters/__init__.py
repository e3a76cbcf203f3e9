"""Adapter methods behind one merge contract (see `base`); importing registers them all."""

from karst_deploy.adapters.base import (
    AdaptedLinear,
    AdapterConfig,
    adapter_config,
    adapter_state_dict,
    add_adapters,
    count_trainable,
    merge,
)
from karst_deploy.adapters.kadaptation import KAdaptationConfig
from karst_deploy.adapters.karst import KarstConfig, factorization
from karst_deploy.adapters.linear import LinearConfig
from karst_deploy.adapters.lora import LoraConfig
from karst_deploy.adapters.spt import Placement, SptConfig
from karst_deploy.adapters.storage import (
    AdapterFile,
    load_adapted_model,
    load_adapters,
    save_adapters,
)

__all__ = [
    "AdaptedLinear",
    "AdapterConfig",
    "AdapterFile",
    "KAdaptationConfig",
    "KarstConfig",
    "LinearConfig",
    "LoraConfig",
    "Placement",
    "SptConfig",
    "adapter_config",
    "adapter_state_dict",
    "add_adapters",
    "count_trainable",
    "factorization",
    "load_adapted_model",
    "load_adapters",
    "merge",
    "save_adapters",
]
