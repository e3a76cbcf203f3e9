"""KAdaptation, in the paper's form (METHODS.md, KAdaptation).

For each adapted projection (q and/or v rows of the fused ``qkv``) of width d, with n
kernels:

    ΔW = s · Σ_i kron(A_i, u_i v_iᵀ),    A_i ∈ R^{n×n},  u_i, v_i ∈ R^{d/n}

The "slow" A_i are one set shared by every layer and projection (stored once at the
model root as ``kadaptation.A``); the "fast" rank-1 factors are per layer and per
projection (``P.kadaptation.u_q``, ``v_q``, ``u_v``, ``v_v``). Unlike PEViT's code, u is
random and v zero, so ΔW = 0 at the start *and* v receives a gradient; and v has its own
factors instead of reusing q's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from karst_deploy.adapters.base import (
    AdapterConfig,
    AdapterMethod,
    LayerAdapter,
    kaiming_uniform,
    register,
)
from karst_deploy.errors import InputError

PROJECTION_ROWS = {"q": 0, "k": 1, "v": 2}


@dataclasses.dataclass(frozen=True)
class KAdaptationConfig(AdapterConfig):
    """KAdaptation hyper-parameters (PEViT's reference: n = 32 kernels, on q and v)."""

    method: ClassVar[str] = "kadaptation"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"projections": ("q", "k", "v")}

    kernels: int = 32
    scale: float = 1.0
    projections: tuple[str, ...] = ("q", "v")
    targets: tuple[str, ...] = ("qkv",)


class SlowWeights(nn.Module):
    """The layer-shared A_i, stacked as A ∈ R^{n×n×n}."""

    def __init__(self, kernels: int) -> None:
        super().__init__()
        self.A = nn.Parameter(kaiming_uniform(kernels, kernels, kernels))


class KAdaptationLayer(LayerAdapter):
    def __init__(
        self, path: str, linear: nn.Linear, config: KAdaptationConfig, slow: SlowWeights
    ) -> None:
        super().__init__()
        width = linear.in_features
        n = config.kernels
        if linear.out_features != 3 * width or width % n:
            raise InputError(
                f"KAdaptation needs a fused qkv Linear (out = 3·in) whose width is divisible "
                f"by the kernel count; '{path}' is {width}→{linear.out_features} with "
                f"kernels={n}. Choose --kernels dividing {width}."
            )
        self.width, self.kernels, self.scale = width, n, config.scale
        self.projections = config.projections
        # A plain attribute (not a child) so the shared weights are stored once, at the root.
        self._slow = (slow,)
        m = width // n
        for name in self.projections:
            u = torch.empty(n, m).normal_(0.0, 1.0 / math.sqrt(m))
            self.register_parameter(f"u_{name}", nn.Parameter(u))
            self.register_parameter(f"v_{name}", nn.Parameter(torch.zeros(n, m)))

    def _projection_delta_weight(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        A = self._slow[0].A.to(dtype)
        u, v = getattr(self, f"u_{name}").to(dtype), getattr(self, f"v_{name}").to(dtype)
        # kron(A_i, u_i v_iᵀ)[p·m + q, s·m + t] = A_i[p, s] · u_i[q] · v_i[t]
        delta = torch.einsum("ips,iq,it->pqst", A, u, v)
        return delta.reshape(self.width, self.width) * self.scale

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self._slow[0].A.dtype
        delta = torch.zeros(3 * self.width, self.width, dtype=dtype, device=self._slow[0].A.device)
        for name in self.projections:
            row = PROJECTION_ROWS[name] * self.width
            delta[row : row + self.width] = self._projection_delta_weight(name, dtype)
        return delta

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        # Without forming ΔW: with X = x viewed as (n, m), ΔW_i x = A_i (X v_i) ⊗ u_i.
        A = self._slow[0].A
        X = x.reshape(*x.shape[:-1], self.kernels, -1)
        parts = []
        for name in ("q", "k", "v"):
            if name in self.projections:
                u, v = getattr(self, f"u_{name}"), getattr(self, f"v_{name}")
                z = torch.einsum("...st,it->...is", X, v)  # X v_i
                w = torch.einsum("ips,...is->...ip", A, z)  # A_i (X v_i)
                y = torch.einsum("...ip,iq->...pq", w, u)  # Σ_i w_i u_iᵀ
                parts.append(y.reshape(*x.shape[:-1], self.width) * self.scale)
            else:
                parts.append(x.new_zeros(*x.shape[:-1], self.width))
        return torch.cat(parts, dim=-1)


@register
class KAdaptation(AdapterMethod):
    name = "kadaptation"
    config_type = KAdaptationConfig

    def shared_module(self, config, targets):
        return SlowWeights(config.kernels)

    def layer_adapter(self, path, linear, config, shared):
        return KAdaptationLayer(path, linear, config, shared)
