"""Central tables of test cases: every adapter check runs over METHOD_CASES × BACKBONE_CASES.

Backbones are tiny versions of real timm architectures (random weights, 32×32 inputs) so
the whole table runs in seconds on two CPU cores, while keeping the properties that
matter: widths 192/384/768, qkv with and without bias, Swin's windowed attention, and a
width (100) that the Kronecker factor 8 does not divide.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import karst_deploy as kd
from karst_deploy.adapters import AdapterConfig


@dataclass(frozen=True, eq=False)  # identity hash: cases are module-level singletons
class BackboneCase:
    id: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        """A fresh copy of this backbone with fixed random weights."""
        return copy.deepcopy(_cached_backbone(self))


@functools.cache
def _cached_backbone(case: BackboneCase) -> torch.nn.Module:
    torch.manual_seed(0)
    return kd.create_model(case.name, **case.kwargs)


BACKBONE_CASES = [
    BackboneCase(
        "vit-192", "vit_tiny_patch16_224", dict(num_classes=10, img_size=32, patch_size=8, depth=2)
    ),
    BackboneCase(
        "vit-384-noqkvbias",
        "vit_small_patch16_224",
        dict(num_classes=7, img_size=32, patch_size=16, depth=1, qkv_bias=False),
    ),
    BackboneCase(
        "deit-768",
        "deit_base_patch16_224",
        dict(num_classes=5, img_size=32, patch_size=16, depth=1),
    ),
    BackboneCase(
        "swin",
        "swin_tiny_patch4_window7_224",
        dict(
            num_classes=6, img_size=32, window_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 4]
        ),
    ),
    BackboneCase(
        "vit-100-unfactorable",
        "vit_tiny_patch16_224",
        dict(num_classes=3, img_size=32, patch_size=16, depth=1, embed_dim=100, num_heads=4),
    ),
]

METHOD_CASES: dict[str, AdapterConfig] = {
    "karst-channel": kd.KarstConfig(rescale="channel"),
    "karst-scalar": kd.KarstConfig(rescale="scalar"),
    "karst-fused": kd.KarstConfig(qkv_layout="fused"),  # adapters written before split qkv
    "lora": kd.LoraConfig(rank=4, alpha=8.0),
    "kadaptation": kd.KAdaptationConfig(kernels=4, scale=0.5),
}

method_params = pytest.mark.parametrize("method", list(METHOD_CASES))

# SPT places its modules per model, so an SPT case is the structured method's config, which
# `spt_config` turns into a placement for each backbone; `adapted` takes these names too.
SPT_CASES: dict[str, AdapterConfig] = {
    "spt-karst": kd.KarstConfig(),
    "spt-lora": kd.LoraConfig(rank=4, alpha=8.0),
}
spt_params = pytest.mark.parametrize("method", list(SPT_CASES))
backbone_params = pytest.mark.parametrize("backbone", BACKBONE_CASES, ids=lambda c: c.id)


def randomize_adapters(model: torch.nn.Module, seed: int = 1, std: float = 0.1) -> torch.nn.Module:
    """Give every trainable tensor (adapters and head) random non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.copy_(noise * std)
    return model


def spt_config(model: torch.nn.Module, structured: AdapterConfig) -> kd.adapters.SptConfig:
    """An SPT placement for `model` holding structured and sparse matrices (synthetic scores).

    The first candidate matrix is uniformly the most sensitive, so it crosses P_struct/σ and
    becomes structured; the others hold lower random scores and share a small sparse budget.
    """
    from karst_deploy.placement import allocate
    from karst_deploy.placement.allocation import structured_size
    from karst_deploy.placement.sensitivity import candidate_weights

    generator = torch.Generator().manual_seed(0)
    weights = candidate_weights(model)
    scores = {name: torch.rand(w.shape, generator=generator) for name, w in weights.items()}
    first = next(iter(scores))
    scores[first] += 1.0
    path = first.removesuffix(".weight")
    budget = structured_size(path, model.get_submodule(path), structured) + 20 * len(scores)
    # The exact rule spends this budget within 2 % (the official sweep may overshoot it).
    return allocate(model, scores, budget, structured=structured, rule="exact")


@functools.cache
def spt_case_config(backbone: BackboneCase, method: str) -> kd.adapters.SptConfig:
    """`spt_config` for an SPT case on a backbone case (computed once per session)."""
    return spt_config(_cached_backbone(backbone), SPT_CASES[method])


def adapted(backbone: BackboneCase, method: str, seed: int = 1) -> torch.nn.Module:
    """The backbone with the method's adapters, set to random non-zero values."""
    spt = method in SPT_CASES
    config = spt_case_config(backbone, method) if spt else METHOD_CASES[method]
    model = kd.add_adapters(backbone.build(), config)
    return randomize_adapters(model, seed)


def images(backbone: BackboneCase, batch: int = 3, seed: int = 0) -> torch.Tensor:
    size = backbone.kwargs.get("img_size", 224)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class RunnerCase:
    """A runtime behind the Runner interface, made from a PyTorch model and its ONNX export."""

    id: str
    make: Any  # (model: torch.nn.Module, onnx_path: Path) -> Runner
    marks: tuple[Any, ...] = ()


def _torch_runner(model, onnx_path):
    from karst_deploy.backends.torch import TorchRunner

    return TorchRunner(model)


def _onnxruntime_runner(model, onnx_path):
    from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(onnx_path)


RUNNER_CASES = [
    RunnerCase("torch", _torch_runner),
    RunnerCase("onnxruntime", _onnxruntime_runner),
]
runner_params = pytest.mark.parametrize(
    "runner_case", [pytest.param(c, id=c.id, marks=c.marks) for c in RUNNER_CASES]
)
