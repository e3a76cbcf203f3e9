"""KARST: multi-kernel Kronecker adaptation with re-scaling transmission (METHODS.md, KARST).

    ΔW = (α / r) · Σ_i kron(C_i, A_i @ B_i)
    y  = (1 + s1) ⊙ ((W0 + ΔW) x' + b0) + s2,      x' = (1 + t1) · x + t2

Channel re-scaling (the paper's form) puts vector ``s1, s2`` on every adapted layer; scalar
re-scaling (the reference code's form) puts scalars at three points per block: an input
and an output affine on ``attn.proj`` and an output affine on ``mlp.fc2``. Shifts (``s2``,
``t2``) exist only where the layer has a bias to fold them into.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from karst_deploy.adapters.base import (
    DEFAULT_TARGETS,
    AdapterConfig,
    AdapterMethod,
    LayerAdapter,
    kaiming_uniform,
    register,
)


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split `dimension` into ``(small, large)`` factors, as LyCORIS/KARST do.

    With ``factor > 0`` dividing `dimension`: ``(min(f, d/f), max(f, d/f))``. Otherwise the
    divisor pair closest to √d whose smaller side does not exceed `factor` (any, for -1).
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        pair = dimension // candidate
        if candidate + pair > m + n or candidate > limit:
            break
        m, n = candidate, pair
    return (m, n) if m <= n else (n, m)


@dataclasses.dataclass(frozen=True)
class KarstConfig(AdapterConfig):
    """KARST hyper-parameters; defaults are the reference VTAB script's."""

    method: ClassVar[str] = "karst"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"rescale": ("channel", "scalar")}

    factor: int = 8
    rank: int = 8
    kernels: int = 8
    alpha: float = 1.0
    rescale: str = "channel"
    targets: tuple[str, ...] = DEFAULT_TARGETS


# Scalar re-scaling points per block (reference code): which roles get which affine.
SCALAR_OUTPUT_AFFINE = ("attn.proj", "mlp.fc2")
SCALAR_INPUT_AFFINE = ("attn.proj",)


class KarstLayer(LayerAdapter):
    """KARST factors and re-scaling for one Linear."""

    def __init__(self, path: str, linear: nn.Linear, config: KarstConfig) -> None:
        super().__init__()
        out_features, in_features = linear.out_features, linear.in_features
        self.a, self.k = factorization(out_features, config.factor)
        self.b, self.n = factorization(in_features, config.factor)
        self.scale = config.alpha / config.rank
        kernels, rank = config.kernels, config.rank
        self.C = nn.Parameter(kaiming_uniform(kernels, self.a, self.b))
        self.A = nn.Parameter(kaiming_uniform(kernels, self.k, rank))
        self.B = nn.Parameter(torch.zeros(kernels, rank, self.n))
        has_bias = linear.bias is not None
        if config.rescale == "channel":
            output_size, input_affine = out_features, False
            output_affine = True
        else:
            output_size = 1
            output_affine = path.endswith(SCALAR_OUTPUT_AFFINE)
            input_affine = path.endswith(SCALAR_INPUT_AFFINE)
        self.s1 = nn.Parameter(torch.zeros(output_size)) if output_affine else None
        self.s2 = nn.Parameter(torch.zeros(output_size)) if output_affine and has_bias else None
        self.t1 = nn.Parameter(torch.zeros(1)) if input_affine else None
        self.t2 = nn.Parameter(torch.zeros(1)) if input_affine and has_bias else None

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.C.dtype
        C, A, B = (t.to(dtype) for t in (self.C, self.A, self.B))
        M = A @ B  # (N, k, n)
        # kron(C_i, M_i)[p·k + q, s·n + t] = C_i[p, s] · M_i[q, t], summed over kernels i.
        delta = torch.einsum("ips,iqt->pqst", C, M).reshape(self.a * self.k, self.b * self.n)
        return delta * self.scale

    def adapted_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # ΔW is formed once per call: N·out·in multiply-adds, far below the token matmul,
        # and backward then costs one weight-gradient product, like full fine-tuning.
        if self.t1 is not None:
            x = x * (1 + self.t1)
        if self.t2 is not None:
            x = x + self.t2
        y = F.linear(x, weight + self.delta_weight(), bias)
        if self.s1 is not None:
            y = y * (1 + self.s1)
        if self.s2 is not None:
            y = y + self.s2
        return y

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # W* = diag(1 + s1)·(W0 + ΔW)·(1 + t1);  b* = (1 + s1) ⊙ (b0 + t2·(W0 + ΔW)·1) + s2
        dtype = weight.dtype
        adapted = weight + self.delta_weight(dtype)
        if self.t2 is not None:
            bias = bias + self.t2.to(dtype) * adapted.sum(dim=1)
        if self.t1 is not None:
            adapted = adapted * (1 + self.t1.to(dtype))
        if self.s1 is not None:
            gain = 1 + self.s1.to(dtype)
            adapted = gain[:, None] * adapted if gain.numel() > 1 else gain * adapted
            bias = gain * bias
        if self.s2 is not None:
            bias = bias + self.s2.to(dtype)
        return adapted, bias


@register
class Karst(AdapterMethod):
    name = "karst"
    config_type = KarstConfig

    def layer_adapter(self, path, linear, config, shared):
        return KarstLayer(path, linear, config)
