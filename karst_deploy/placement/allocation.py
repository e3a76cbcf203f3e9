"""SPT budget allocation (METHODS.md, SPT steps 2–4).

Two rules meet a budget. ``sweep`` (the default, the official ``engine.get_sensitivity``):
τ, the number of globally most sensitive entries selected, runs over a grid τ_j = ⌈j·step⌉,
j = 1..79 (the official step is 0.02 M entries for budgets of 0.05–1 M; here ``tau_step``
defaults to budget/20, the same ratio at 0.4 M); at each τ every matrix is structured when its count
reaches P_struct/σ and otherwise keeps its selected entries as a sparse delta; the τ whose
total is closest to the budget is kept (ties: the larger τ, as the official ``<=``). The
total may overshoot and is never refused; placement.json reports it beside the budget.

``exact`` (an explicit option) meets the budget within `tolerance` by bisection and a
top-up, as follows:

1. For a score threshold t, every matrix m counts its entries with score ≥ t (the global
   top-τ). It becomes *structured* when that count reaches ``P_struct(m) / σ`` — ``P_struct``
   being the trainable size of the structured module on m, counted on the very KARST/LoRA
   layer that will be built — and then spends ``P_struct``; otherwise it is *sparse* and spends
   exactly its count (or *frozen* at zero). The total spent only grows as t falls, so t is
   found by bisection: the lowest threshold whose total stays within the budget.
2. The reference code sweeps τ on a 0.02 M grid and keeps the closest total. Switching a
   matrix to structured jumps the total by a whole module (≈ 27 k for KARST on a ViT-B qkv,
   7 % of a 0.4 M budget), so the lowest threshold can sit well under the budget. The rest
   is then spent like step 1 restricted to the unstructured matrices — the next most
   sensitive entries, each matrix capped just below its structured threshold — by a second
   bisection. The same fill is tried with the structured set one threshold step lower (one
   more structured module, trimmed sparse entries), and the total closer to the budget wins,
   as in the reference; it must lie within `tolerance` (2 %) or the allocation is refused.

Thresholds are bisected over float32 bit patterns (monotone for non-negative floats), so the
search is exact in at most 32 steps; entries scoring exactly zero are never selected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from karst_deploy.adapters.base import AdapterConfig, add_adapters
from karst_deploy.adapters.karst import KarstConfig
from karst_deploy.adapters.spt import (
    MatrixPlacement,
    Placement,
    SptConfig,
    structured_layer,
)
from karst_deploy.errors import InputError

BUDGET_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}
# The official sweep's grid: τ_j = ⌈j·step⌉ for j = 1..79 (step 0.02 M there).
GRID_POINTS = 79


def parse_budget(text: str | int) -> int:
    """A trainable-entry budget from ``400000``, ``"400k"`` or ``"0.4M"``."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmM]?)\s*", str(text))
    value = round(float(match[1]) * BUDGET_UNITS[match[2].lower()]) if match else 0
    if value < 1:
        raise InputError(
            f"--budget is {text!r}; expected a positive count of trainable entries such as "
            "400000, 400k or 0.4M."
        )
    return value


def structured_size(path: str, linear: nn.Linear, structured: AdapterConfig) -> int:
    """Trainable entries of the structured module on `linear` (built on the meta device)."""
    with torch.device("meta"):
        layer = structured_layer(path, linear, structured)
    return sum(p.numel() for p in layer.parameters())


def _float_bits(value: float) -> int:
    return int(np.float32(value).view(np.uint32))


def _bits_float(bits: int) -> float:
    return float(np.uint32(bits).view(np.float32))


def _lowest_threshold(spent, low: float, high_bits: int, budget: int) -> float:
    """The lowest float32 threshold t ≥ `low` with ``spent(t) <= budget``.

    ``spent`` falls as t rises and is known to be within budget at the float just above
    `high_bits`.
    """
    if spent(low) <= budget:
        return low
    over, within = _float_bits(low), high_bits + 1
    while within - over > 1:
        middle = (over + within) // 2
        if spent(_bits_float(middle)) > budget:
            over = middle
        else:
            within = middle
    return _bits_float(within)


def _top_entries(values: np.ndarray, ascending: np.ndarray, count: int) -> torch.Tensor:
    """Sorted flat indices of the `count` highest scores (ties go to the lower index)."""
    cut = ascending[values.size - count]
    above = np.flatnonzero(values > cut)
    ties = np.flatnonzero(values == cut)[: count - above.size]
    return torch.from_numpy(np.sort(np.concatenate([above, ties])).astype(np.int64))


def allocate(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    budget: int | str,
    *,
    structured: AdapterConfig | None = None,
    sigma: float = 10.0,
    tolerance: float = 0.02,
    rule: str = "sweep",
    tau_step: int | None = None,
    scores_metadata: Mapping[str, Any] | None = None,
) -> SptConfig:
    """Decide structured / sparse / frozen for every scored matrix of `model` (module docstring).

    `scores` maps weight parameter names (``blocks.0.attn.qkv.weight``) to non-negative
    scores of the weight's shape, e.g. `compute_sensitivity(...).scores`. Returns the
    `SptConfig` (with the sparse indices) that `add_adapters` installs.
    """
    budget = parse_budget(budget)
    structured = structured or KarstConfig()
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"--sigma is {sigma!r}; expected a positive number (SPT uses 10).")
    flat, ascending, sizes, shapes = {}, {}, {}, {}
    for key, tensor in scores.items():
        path = key.removesuffix(".weight")
        linear = _linear(model, path)
        if linear is None or not key.endswith(".weight"):
            raise InputError(f"Scores key '{key}' is not the weight of an nn.Linear of the model.")
        if tuple(tensor.shape) != tuple(linear.weight.shape):
            raise InputError(
                f"Scores key '{key}' has shape {tuple(tensor.shape)}; the weight is "
                f"{tuple(linear.weight.shape)}."
            )
        values = tensor.detach().to("cpu", torch.float32).flatten().numpy()
        if not np.isfinite(values).all() or bool((values < 0).any()):
            raise InputError(f"Scores key '{key}' holds negative, NaN or infinite values.")
        flat[path], ascending[path] = values, np.sort(values)
        shapes[path] = tuple(linear.weight.shape)
        sizes[path] = structured_size(path, linear, structured)
    if not flat:
        raise InputError("No sensitivity scores were given; there is nothing to allocate.")

    def counts(threshold: float) -> dict[str, int]:
        t = np.float32(threshold)
        return {p: v.size - int(np.searchsorted(v, t, side="left")) for p, v in ascending.items()}

    def is_structured(path: str, count: int) -> bool:
        return count > 0 and count >= sizes[path] / sigma

    def spent(threshold: float) -> int:
        return sum(sizes[p] if is_structured(p, c) else c for p, c in counts(threshold).items())

    smallest_positive = [
        float(v[i]) for v in ascending.values() if (i := np.searchsorted(v, 0, "right")) < v.size
    ]
    if not smallest_positive:
        raise InputError(
            "Every sensitivity score is zero; the gradients never reached the weights."
        )
    if rule == "sweep":
        return _sweep(
            flat, ascending, sizes, shapes, budget, structured, sigma, tau_step, scores_metadata
        )
    if rule != "exact":
        raise InputError(f"--budget-rule is {rule!r}; expected 'sweep' (official) or 'exact'.")
    low, top = min(smallest_positive), max(float(v[-1]) for v in ascending.values())
    threshold = _lowest_threshold(spent, low, _float_bits(top), budget)
    above_top = _bits_float(_float_bits(top) + 1)  # a threshold no entry reaches

    def fill(structured_paths: set[str]) -> tuple[float, dict[str, int]]:
        """Top-up: the unstructured matrices take their most sensitive entries, each capped
        below its structured threshold, until the budget is spent (docstring, step 2)."""
        caps = {
            p: min(math.ceil(sizes[p] / sigma) - 1, flat[p].size)
            for p in flat
            if p not in structured_paths
        }
        fixed = sum(sizes[p] for p in structured_paths)

        def spent_filled(t: float) -> int:
            return fixed + sum(min(c, caps[p]) for p, c in counts(t).items() if p in caps)

        top_up = (
            above_top
            if fixed >= budget
            else _lowest_threshold(spent_filled, low, _float_bits(top), budget)
        )
        return top_up, {p: min(c, caps[p]) for p, c in counts(top_up).items() if p in caps}

    def decide(score_threshold: float) -> tuple:
        selected = counts(score_threshold)
        structured_paths = {p for p, c in selected.items() if is_structured(p, c)}
        top_up, sparse_counts = fill(structured_paths)
        total = sum(sizes[p] for p in structured_paths) + sum(sparse_counts.values())
        return total, score_threshold, top_up, selected, structured_paths, sparse_counts

    # Candidates: the structured set at the threshold found, and at the next lower one (one
    # more structured module, which may overshoot a little); the closer total wins.
    thresholds = [threshold]
    if threshold > low:
        thresholds.append(_bits_float(_float_bits(threshold) - 1))
    options = [decide(t) for t in thresholds]
    total, threshold, top_up, selected, structured_paths, sparse_counts = min(
        options, key=lambda option: (abs(option[0] - budget), option[0])
    )
    if abs(total - budget) > tolerance * budget:
        totals = " or ".join(sorted({f"{option[0]:,}" for option in options}))
        raise InputError(
            f"--budget {budget:,} cannot be met within {tolerance:.0%}: with σ = {sigma:g} a "
            f"sparse matrix holds fewer than P_struct/σ entries and a structured one costs "
            f"P_struct, so over these {len(flat)} matrices the closest SPT allocations spend "
            f"{totals}. Choose a budget in reach (or another --sigma)."
        )

    matrices, indices = [], {}
    for path in flat:
        if path in structured_paths:
            matrices.append(
                MatrixPlacement(path, shapes[path], "structured", selected[path], sizes[path])
            )
            continue
        count = sparse_counts[path]
        matrices.append(
            MatrixPlacement(path, shapes[path], "sparse" if count else "frozen", count, count)
        )
        if count:
            indices[path] = _top_entries(flat[path], ascending[path], count)
    placement = Placement(
        structured=structured.method,
        sigma=float(sigma),
        budget=budget,
        matrices=tuple(matrices),
        score_threshold=threshold,
        top_up_threshold=top_up,
        scores=dict(scores_metadata or {}),
        indices=indices,
    )
    return SptConfig(structured=structured, placement=placement)


def _sweep(flat, ascending, sizes, shapes, budget, structured, sigma, tau_step, metadata):
    """The official τ-grid sweep (module docstring): the closest total wins, never refused."""
    paths = list(flat)
    every = np.concatenate([flat[p] for p in paths])
    offsets = np.cumsum([0] + [flat[p].size for p in paths])
    # Global ranking, ties to the lower index (so each matrix keeps its `_top_entries`).
    order = np.argsort(-every, kind="stable")
    step = tau_step or max(1, round(budget / 20))
    if not (isinstance(step, int) and step > 0):
        raise InputError(f"tau_step is {tau_step!r}; expected a positive integer.")
    counts = np.zeros(len(paths), dtype=np.int64)
    best: tuple[int, int, np.ndarray] | None = None
    done = 0
    for j in range(1, GRID_POINTS + 1):
        tau = min(every.size, math.ceil(j * step))
        owners = np.searchsorted(offsets, order[done:tau], side="right") - 1
        counts += np.bincount(owners, minlength=len(paths))
        done = tau
        total = sum(
            sizes[p] if c > 0 and c >= sizes[p] / sigma else int(c)
            for p, c in zip(paths, counts, strict=True)
        )
        if best is None or abs(total - budget) <= abs(best[1] - budget):
            best = (tau, total, counts.copy())
        if total - budget > abs(best[1] - budget):  # totals only grow with τ: none closer
            break
    tau, _, chosen = best
    matrices, indices = [], {}
    for path, count in zip(paths, (int(c) for c in chosen), strict=True):
        if count > 0 and count >= sizes[path] / sigma:
            matrices.append(MatrixPlacement(path, shapes[path], "structured", count, sizes[path]))
            continue
        matrices.append(
            MatrixPlacement(path, shapes[path], "sparse" if count else "frozen", count, count)
        )
        if count:
            indices[path] = _top_entries(flat[path], ascending[path], count)
    placement = Placement(
        structured=structured.method,
        sigma=float(sigma),
        budget=budget,
        matrices=tuple(matrices),
        score_threshold=float(every[order[tau - 1]]),
        top_up_threshold=0.0,
        scores=dict(metadata or {}),
        indices=indices,
    )
    return SptConfig(structured=structured, placement=placement)


def _linear(model: nn.Module, path: str) -> nn.Linear | None:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear) else None


def add_spt_adapters(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    budget: int | str,
    **options: Any,
) -> nn.Module:
    """`allocate` then `add_adapters`: the model with its SPT adapters (in place)."""
    return add_adapters(model, allocate(model, scores, budget, **options))
