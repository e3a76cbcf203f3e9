"""AdamW and the warm-up + cosine learning-rate schedule of the KARST recipe.

The reference script steps timm's ``CosineLRScheduler`` once per epoch (linear warm-up
from ``warmup_lr`` to ``lr``, then cosine down to ``min_lr``). Here the same curve is
evaluated at every optimiser step, which is identical in shape and smoother when a run has
only a few epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def learning_rate(
    step: int,
    total_steps: int,
    warmup_steps: int,
    lr: float,
    warmup_lr: float,
    min_lr: float,
) -> float:
    """Learning rate at optimiser step `step` (0-based) of `total_steps`.

    Linear from `warmup_lr` at step 0 towards `lr` over `warmup_steps` steps, then a
    half-cosine from `lr` down to `min_lr` at the last step.
    """
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    cosine_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / cosine_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on all of them (as the reference)."""
    return torch.optim.AdamW(list(parameters), lr=lr, weight_decay=weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
