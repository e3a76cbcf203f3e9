"""KARST: multi-kernel Kronecker adaptation with re-scaling transmission (METHODS.md, KARST).

    ΔW = (α / r) · Σ_i kron(C_i, A_i @ B_i)
    y  = (1 + s1) ⊙ ((W0 + ΔW) x' + b0) + s2,      x' = (1 + t1) · x + t2

Channel re-scaling (the paper's form) puts vector ``s1, s2`` on every adapted layer; scalar
re-scaling (the reference code's form) puts scalars at three points per block: an input
and an output affine on ``attn.proj`` and an output affine on ``mlp.fc2``. Shifts (``s2``,
``t2``) exist only where the layer has a bias to fold them into.

qkv layout. ``split`` (the default, the official scripts' ``kronecker_w2_a_dims=[d/f]*3``):
on the fused ``attn.qkv`` each kernel has one C_i and one B_i shared by q, k and v and three
A factors, so ΔW is one Kronecker product per q/k/v block (``A`` stored as (N, 3, k, r)).
``fused`` (every file written before the ``qkv_layout`` key existed): one product over the
fused 3d rows (``A`` stored as (N, k, r)). Files without the key load as ``fused`` and merge
to the weights they always did.

Training forms ΔW once per step but, where that is cheaper (ViT-B's layers, not ViT-Ti's),
never its out×in gradient: `KroneckerLinear` runs the layer as one dense GEMM and computes
the factor gradients in factored form.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import torch
from torch import nn

from karst_deploy.adapters.base import (
    DEFAULT_TARGETS,
    TARGET_SUFFIXES,
    AdapterConfig,
    AdapterMethod,
    LayerAdapter,
    kaiming_uniform,
    register,
)
from karst_deploy.errors import InputError


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
    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "rescale": ("channel", "scalar"),
        "qkv_layout": ("split", "fused"),
    }
    # adapter_config.json written before the key existed: the fused layout (module docstring).
    file_defaults: ClassVar[dict[str, object]] = {"qkv_layout": "fused", "stage_ranks": ()}

    factor: int = 8
    rank: int = 8
    kernels: int = 8
    alpha: float = 1.0
    rescale: str = "channel"
    qkv_layout: str = "split"
    # Rank per hierarchical stage (timm Swin's ``layers.<i>``), e.g. (2, 2, 4, 8) as the
    # official Swin-B script; empty: ``rank`` everywhere.
    stage_ranks: tuple[int, ...] = ()
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def rank_for(self, path: str) -> int:
        """The rank of the layer at module path `path` (`stage_ranks` by its stage)."""
        if not self.stage_ranks:
            return self.rank
        match = STAGE.search(path)
        if match is None or int(match[1]) >= len(self.stage_ranks):
            raise InputError(
                f"stage_ranks {list(self.stage_ranks)} gives a rank per stage (Swin's "
                f"'layers.<i>'), but '{path}' is not in one of those stages."
            )
        return self.stage_ranks[int(match[1])]


STAGE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# How many times slower per multiply-add than one dense GEMM the factored gradients run on a
# CPU (small matmuls and permutes): 1.6–3.3 on ViT-B's and ViT-Ti's layer shapes
# (`benchmarks/karst_layer_arithmetic.py`). With 2.5 the rule picks the cheaper path on each.
FACTORED_GRADIENT_COST = 2.5

# Scalar re-scaling points per block (reference code): which roles get which affine.
SCALAR_OUTPUT_AFFINE = ("attn.proj", "mlp.fc2")
SCALAR_INPUT_AFFINE = ("attn.proj",)


class KarstLayer(LayerAdapter):
    """KARST factors and re-scaling for one Linear (``blocks`` = 3 for a split-layout qkv)."""

    def __init__(
        self, path: str, linear: nn.Linear, config: KarstConfig, *, blocks: int | None = None
    ) -> None:
        super().__init__()
        out_features, in_features = linear.out_features, linear.in_features
        if blocks is None:
            split = (
                config.qkv_layout == "split"
                and path.endswith(TARGET_SUFFIXES["qkv"])
                and out_features == 3 * in_features
            )
            blocks = 3 if split else 1
        self.blocks = blocks
        self.a, self.k = factorization(out_features // blocks, config.factor)
        self.b, self.n = factorization(in_features, config.factor)
        kernels, rank = config.kernels, config.rank_for(path)
        self.scale = config.alpha / rank
        # Kaiming-uniform on the tensors as the official code stores them: C as (a, b), so
        # fan-in b; A as (r, k), so fan-in k (METHODS.md, KARST initialisation). B = 0.
        self.C = nn.Parameter(kaiming_uniform(kernels, self.a, self.b))
        a_init = kaiming_uniform(kernels * blocks, rank, self.k).transpose(-1, -2)
        shape = (kernels, self.k, rank) if blocks == 1 else (kernels, blocks, self.k, rank)
        self.A = nn.Parameter(a_init.reshape(shape).contiguous())
        self.B = nn.Parameter(torch.zeros(kernels, rank, self.n))
        # Training arithmetic: factor gradients in factored form cost 2·N·r·(in + out)
        # multiply-adds per token (`KroneckerLinear`), autograd's dense weight gradient out·in.
        factored = 2 * kernels * rank * (in_features + out_features) * FACTORED_GRADIENT_COST
        self.factored_gradients = factored < out_features * in_features
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
        return self.adapted_weight(None, *(t.to(dtype) for t in (self.C, self.A, self.B)))

    def adapted_weight(
        self, weight: torch.Tensor | None, C: torch.Tensor, A: torch.Tensor, B: torch.Tensor
    ) -> torch.Tensor:
        """``weight + (α/r)·Σ_i kron(C_i, A_i B_i)`` (one product per q/k/v block when split;
        ΔW alone for ``None``), out × in, written in one pass over its entries."""
        kernels, rank = B.shape[:2]
        M = A.reshape(kernels, -1, rank) @ B  # (N, blocks·k, n): A_i^j B_i stacked over j
        # kron(C_i, M_i^j)[j, p·k + q, s·n + t] = C_i[p, s] · M_i^j[q, t], summed over i:
        # one matmul over the kernels, laid out (p, s, j, q, t), read as (j, p, q, s, t).
        products = C.reshape(kernels, -1).t() @ M.reshape(kernels, -1)
        delta = products.view(self.a, self.b, self.blocks, self.k, self.n).permute(2, 0, 3, 1, 4)
        if weight is None:
            adapted = delta * self.scale
        else:
            adapted = torch.add(weight.reshape(delta.shape), delta, alpha=self.scale)
        return adapted.reshape(self.blocks * self.a * self.k, self.b * self.n)

    def adapted_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # (1 + s1) ⊙ ((W0 + ΔW) x' + b0) + s2: one GEMM, then one fused multiply-add with the
        # shift (1 + s1) ⊙ b0 + s2 — the fewest passes over the tokens × out activations.
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if self.t1 is not None:
            x = x * (1 + self.t1)
        if self.t2 is not None:
            x = x + self.t2
        trains = torch.is_grad_enabled() and any(t.requires_grad for t in (self.C, self.A, self.B))
        if trains and self.factored_gradients:
            y = KroneckerLinear.apply(x, weight, self.C, self.A, self.B, self)
        else:  # inference, or a layer small enough for the dense weight gradient to be cheaper
            factors = (t.to(weight.dtype) for t in (self.C, self.A, self.B))
            y = x @ self.adapted_weight(weight, *factors).t()
        shift = bias
        if self.s1 is not None:
            gain = 1 + self.s1
            shift = None if bias is None else gain * bias
        if self.s2 is not None:
            shift = self.s2 if shift is None else shift + self.s2
        if self.s1 is not None:
            y = y * gain if shift is None else torch.addcmul(shift, y, gain)
        elif shift is not None:
            y = y + shift
        return y.reshape(*lead, y.shape[-1])

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


class KroneckerLinear(torch.autograd.Function):
    """``x (W0 + ΔW)ᵀ`` for training, with ΔW = (α/r)·Σ_i kron(C_i, A_i B_i) (METHODS.md, KARST).

    Forward: ΔW is formed once per step (N·out·in multiply-adds, independent of the number
    of tokens) and the layer is one dense GEMM. Backward: the input gradient goes through the
    same dense weight, and the factor gradients are computed in factored form — with each
    token viewed as X ∈ R^{b×n}, Z_i = X B_iᵀ, U_i = C_i Z_i, y = s·Σ_i U_i A_iᵀ — so autograd's
    out×in weight gradient (out·in per token) is never formed. The adapter's cost per token is
    2·N·r·(in + out) in backward and nothing in forward, where computing ΔW·x in factored form
    costs N·r·(in + out) forward and 2·N·r·(in + out) backward as well.
    """

    @staticmethod
    def forward(ctx, x, weight, C, A, B, layer: KarstLayer):
        ctx.layer = layer
        adapted = layer.adapted_weight(weight, C, A, B)
        # W0 + ΔW is kept for the input gradient, as autograd keeps a computed weight.
        ctx.save_for_backward(x, adapted, C, A, B)
        return x @ adapted.t()

    @staticmethod
    def backward(ctx, grad):
        # Under autocast the forward's GEMM ran in a lower precision than the saved tensors:
        # compute in the gradient's dtype (autograd casts each result to its input's dtype).
        x, adapted, C, A, B = (t.to(grad.dtype) for t in ctx.saved_tensors)
        layer: KarstLayer = ctx.layer
        kernels, rank, tokens = B.shape[0], B.shape[1], x.shape[0]
        a, b, k, n, blocks = layer.a, layer.b, layer.k, layer.n, layer.blocks
        grad_x = grad_weight = grad_C = grad_A = grad_B = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ adapted
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ x
        if any(ctx.needs_input_grad[2:5]):
            # G[t, j, p, q] for output row j·a·k + p·k + q, laid out as (T·a, blocks·k).
            G = grad.reshape(tokens, blocks, a, k).transpose(1, 2) if blocks > 1 else grad
            G = G.contiguous().view(tokens * a, blocks * k)
            A_rows = A.reshape(kernels, blocks, k, rank).permute(0, 3, 1, 2)  # (N, r, blocks, k)
            A_rows = A_rows.reshape(kernels * rank, blocks * k) * layer.scale
            Z = x.reshape(tokens * b, n) @ B.reshape(kernels * rank, n).t()  # (T·b, N·r)
            Z = Z.view(tokens, b, kernels, rank).permute(2, 1, 0, 3).reshape(kernels, b, -1)
            H = G @ A_rows.t()  # ∂L/∂U: (T·a, N·r)
            H = H.view(tokens, a, kernels, rank).permute(2, 1, 0, 3).reshape(kernels, a, -1)
            U = torch.bmm(C, Z)  # (N, a, T·r)
            U = U.view(kernels, a, tokens, rank).permute(2, 1, 0, 3).reshape(tokens * a, -1)
            grad_A = (U.t() @ G).mul_(layer.scale).view(kernels, rank, blocks, k)
            grad_A = grad_A.permute(0, 2, 3, 1).reshape(A.shape)
            grad_C = torch.bmm(H, Z.transpose(1, 2))  # (N, a, b)
            grad_Z = torch.bmm(C.transpose(1, 2), H)  # (N, b, T·r)
            grad_Z = grad_Z.view(kernels, b, tokens, rank).permute(2, 1, 0, 3)
            grad_B = grad_Z.reshape(tokens * b, kernels * rank).t() @ x.reshape(tokens * b, n)
            grad_B = grad_B.view(B.shape)
        return grad_x, grad_weight, grad_C, grad_A, grad_B, None


@register
class Karst(AdapterMethod):
    name = "karst"
    config_type = KarstConfig
    structurable = True

    def validate(self, config: KarstConfig, targets: dict[str, nn.Linear]) -> None:
        for path in targets:
            config.rank_for(path)

    def layer_adapter(self, path, linear, config, shared):
        return KarstLayer(path, linear, config)
