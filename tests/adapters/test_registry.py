"""The adapter registry: one registration adds a method everywhere; name and config must agree."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
from torch import nn

import karst_deploy as kd
from karst_deploy.adapters.base import (
    DEFAULT_TARGETS,
    AdapterConfig,
    AdapterMethod,
    LayerAdapter,
)
from karst_deploy.adapters.registry import (
    METHODS,
    method_for,
    method_options,
    register,
    standalone_configs,
    structured_configs,
)
from karst_deploy.adapters.spt import STRUCTURED_CONFIGS
from karst_deploy.errors import AdapterFileError, InputError
from karst_deploy.train.recipe import METHOD_CONFIGS, adapter_config_for
from tests.cases import BACKBONE_CASES, METHOD_CASES, images, randomize_adapters


@dataclasses.dataclass(frozen=True)
class OuterConfig(AdapterConfig):
    """A toy method for the test: ΔW = u vᵀ (rank one)."""

    method: ClassVar[str] = "outer"

    scale: float = 1.0
    targets: tuple[str, ...] = DEFAULT_TARGETS


class OuterLayer(LayerAdapter):
    def __init__(self, linear: nn.Linear, config: OuterConfig) -> None:
        super().__init__()
        self.scale = config.scale
        self.u = nn.Parameter(torch.zeros(linear.out_features))
        self.v = nn.Parameter(torch.zeros(linear.in_features))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.v)[..., None] * self.u * self.scale

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.u.dtype
        return torch.outer(self.u.to(dtype), self.v.to(dtype)) * self.scale


class Outer(AdapterMethod):
    name = "outer"
    config_type = OuterConfig
    structurable = True

    def layer_adapter(self, path, linear, config, shared):
        return OuterLayer(linear, config)


@pytest.fixture
def outer():
    """The toy method registered for one test (and removed again)."""
    register(Outer)
    try:
        yield
    finally:
        del METHODS["outer"]


def test_every_table_derives_from_the_registry():
    assert set(METHOD_CONFIGS) == {n for n, m in METHODS.items() if m.standalone}
    assert set(STRUCTURED_CONFIGS) == {n for n, m in METHODS.items() if m.structurable}
    assert {"karst", "kadaptation", "lora", "linear"} <= set(METHOD_CONFIGS)
    assert "spt" in METHODS and "spt" not in METHOD_CONFIGS  # SPT needs a placement
    assert set(STRUCTURED_CONFIGS) == {"karst", "lora"}
    assert method_options("lora") == ("rank", "alpha", "targets")
    # The test table: every registered method that adapts layers has a case.
    cased = {type(config).method for config in METHOD_CASES.values()}
    assert cased == {n for n in standalone_configs if "targets" in method_options(n)}


def test_adding_a_method_is_one_registration(outer):
    assert METHOD_CONFIGS["outer"] is OuterConfig and STRUCTURED_CONFIGS["outer"] is OuterConfig
    assert structured_configs["outer"] is OuterConfig
    config = adapter_config_for("outer", scale=0.5, rank=None, targets="qkv,fc2")
    assert config == OuterConfig(scale=0.5, targets=("qkv", "fc2"))
    with pytest.raises(InputError, match="rank does not apply to method outer; it takes scale"):
        adapter_config_for("outer", rank=4, scale=None)
    case = BACKBONE_CASES[0]
    model = randomize_adapters(kd.add_adapters(case.build(), config)).eval()
    base = case.build().eval()
    merged = kd.merge(model)
    x = images(case)
    with torch.no_grad():
        unmerged_out, merged_out, base_out = model(x), merged(x), base(x)
    torch.testing.assert_close(merged_out, unmerged_out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged_out, base_out, atol=1e-3)


def test_register_refuses_a_name_its_config_contradicts_and_duplicates():
    class Mislabelled(Outer):
        name = "inner"

    with pytest.raises(TypeError, match="registers as 'inner' but its config_type 'OuterConfig'"):
        register(Mislabelled)
    with pytest.raises(TypeError, match="'lora' is registered twice"):

        class Lora2(AdapterMethod):
            name = "lora"
            config_type = kd.LoraConfig

        register(Lora2)
    assert "inner" not in METHODS and type(METHODS["lora"]).__name__ == "Lora"


def test_unknown_methods_name_the_registered_ones():
    with pytest.raises(AdapterFileError, match=r"knows .*'karst'"):
        method_for("dora")
    # Decision: PEFT's DoRA is read from a PEFT directory (adapters/peft_format), not trained
    # here, so `--method dora` is refused and the message says where such adapters go.
    # Registering a native DoRA method would make it a --method like any other.
    assert "dora" not in METHODS
    with pytest.raises(InputError, match=r"^method is 'dora'.*PEFT directory") as refused:
        adapter_config_for("dora")
    assert refused.value.parameters == ("method",)
