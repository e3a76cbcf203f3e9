"""KAdaptation, in the paper's form (METHODS.md, KAdaptation).

For each adapted projection (q and/or v rows of the fused ``qkv``) of width d, with n
kernels:

    ΔW = s · Σ_i kron(A_i, u_i v_iᵀ),    A_i ∈ R^{n×n},  u_i, v_i ∈ R^{d/n}

The "slow" A_i are one set shared by every layer and projection (stored once at the
model root as ``kadaptation.A``); the "fast" rank-1 factors are per layer and per
projection (``P.kadaptation.u_q``, ``v_q``, ``u_v``, ``v_v``). Unlike PEViT's code, u is
random and v zero, so ΔW = 0 at the start *and* v receives a gradient; and v has its own
factors instead of reusing q's.

``structure="pevit"`` is the structure PEViT's ≈ 50 k figure counts (50,176 on ViT-B/32
with n = 32; PEViT ``vision_benchmark/evaluation/model.py``): slow weights also rank 1,
A_i = l_i r_iᵀ, one set for q and one for v (still shared across layers,
``kadaptation.l_q`` …, initialised U(−0.01, 0.01) as PEViT's ``phm_rule``); ``scale``
α/r·5 = 128/4·5 = 160 by default there; Dropout(0.5) on the Kronecker weight in training;
one per-layer bias (``P.kadaptation.bias``, width d) added to both the q and the v outputs.
Everything folds: the bias into the qkv bias rows of q and v (a qkv without bias is
refused), the rest into ΔW. Deliberately not PEViT's: u random (PEViT zeroes both fast
factors, so no gradient reaches them), the update in timm's head layout (PEViT reshapes
it without the head transpose), and the update added before the attention's 1/√head_dim
scaling (PEViT adds it after, so its q branch is √head_dim times larger than its v branch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

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
    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "projections": ("q", "k", "v"),
        "structure": ("paper", "pevit"),
    }
    file_defaults: ClassVar[dict[str, object]] = {"structure": "paper"}  # files before the key

    kernels: int = 32
    scale: float = None  # type: ignore[assignment]  # None: the structure's STRUCTURE_SCALES
    projections: tuple[str, ...] = ("q", "v")
    structure: str = "paper"
    targets: tuple[str, ...] = ("qkv",)

    def __post_init__(self) -> None:
        if self.scale is None:  # frozen: the default depends on another field
            object.__setattr__(self, "scale", STRUCTURE_SCALES.get(self.structure, 1.0))
        super().__post_init__()


# Default ΔW scale per structure; PEViT's is lora_attn_alpha / lora_attn_dim · 5 = 128/4·5.
STRUCTURE_SCALES = {"paper": 1.0, "pevit": 160.0}
PEVIT_DROPOUT = 0.5
PEVIT_SLOW_INIT = 0.01  # PEViT's phm_rule factors: U(−0.01, 0.01)


class SlowWeights(nn.Module):
    """The layer-shared A_i, stacked as A ∈ R^{n×n×n} (paper), or rank-1 per projection
    (PEViT: ``l_<p>``, ``r_<p>`` ∈ R^{n×n}, A_i = l_i r_iᵀ)."""

    def __init__(self, kernels: int, structure: str = "paper", projections=("q", "v")) -> None:
        super().__init__()
        self.structure = structure
        if structure == "paper":
            self.A = nn.Parameter(kaiming_uniform(kernels, kernels, kernels))
            return
        for name in projections:
            for side in ("l", "r"):
                factor = torch.empty(kernels, kernels).uniform_(-PEVIT_SLOW_INIT, PEVIT_SLOW_INIT)
                self.register_parameter(f"{side}_{name}", nn.Parameter(factor))

    def slow(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """A ∈ R^{n×n×n} for projection `name`."""
        if self.structure == "paper":
            return self.A.to(dtype)
        left, right = getattr(self, f"l_{name}").to(dtype), getattr(self, f"r_{name}").to(dtype)
        return left[:, :, None] * right[:, None, :]


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
                f"by the kernel count; '{path}' is {width}→{linear.out_features}. Choose "
                f"kernels (now {n}) dividing {width}.",
                parameters=("kernels",),
            )
        self.width, self.kernels, self.scale = width, n, config.scale
        self.projections = config.projections
        self.structure = config.structure
        if self.structure == "pevit":
            if linear.bias is None:
                raise InputError(
                    f"KAdaptation structure 'pevit' adds a bias to the q and v outputs, but "
                    f"'{path}' has no bias to fold it into; use structure 'paper'."
                )
            self.bias = nn.Parameter(torch.zeros(width))
        # A plain attribute (not a child) so the shared weights are stored once, at the root.
        self._slow = (slow,)
        m = width // n
        for name in self.projections:
            u = torch.empty(n, m).normal_(0.0, 1.0 / math.sqrt(m))
            self.register_parameter(f"u_{name}", nn.Parameter(u))
            self.register_parameter(f"v_{name}", nn.Parameter(torch.zeros(n, m)))

    def _projection_delta_weight(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        A = self._slow[0].slow(name, dtype)
        u, v = getattr(self, f"u_{name}").to(dtype), getattr(self, f"v_{name}").to(dtype)
        # kron(A_i, u_i v_iᵀ)[p·m + q, s·m + t] = A_i[p, s] · u_i[q] · v_i[t]
        delta = torch.einsum("ips,iq,it->pqst", A, u, v)
        return delta.reshape(self.width, self.width) * self.scale

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        reference = next(self.parameters())
        dtype = dtype or reference.dtype
        delta = torch.zeros(3 * self.width, self.width, dtype=dtype, device=reference.device)
        for name in self.projections:
            row = PROJECTION_ROWS[name] * self.width
            delta[row : row + self.width] = self._projection_delta_weight(name, dtype)
        return delta

    def adapted_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.structure == "paper":
            return super().adapted_forward(x, weight, bias)
        # PEViT: Dropout(0.5) on the Kronecker weight in training (so ΔW is formed here).
        delta = F.dropout(self.delta_weight(), PEVIT_DROPOUT, self.training)
        return F.linear(x, weight + delta, bias + self._bias_rows())

    def _bias_rows(self) -> torch.Tensor:
        zeros = torch.zeros_like(self.bias)
        rows = [self.bias if name in self.projections else zeros for name in ("q", "k", "v")]
        return torch.cat(rows)

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = super().fold(weight, bias)
        if self.structure == "pevit":
            bias = bias + self._bias_rows().to(bias.dtype)
        return weight, bias

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        # Without forming ΔW: with X = x viewed as (n, m), ΔW_i x = A_i (X v_i) ⊗ u_i.
        X = x.reshape(*x.shape[:-1], self.kernels, -1)
        parts = []
        for name in ("q", "k", "v"):
            if name in self.projections:
                A = self._slow[0].slow(name, x.dtype)
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
        return SlowWeights(config.kernels, config.structure, config.projections)

    def layer_adapter(self, path, linear, config, shared):
        return KAdaptationLayer(path, linear, config, shared)
