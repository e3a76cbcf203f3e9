"""SPT budget allocation (METHODS.md, SPT steps 2–4).

Candidates (``candidates``): ``official`` — every scored parameter, the fused qkv weight and
bias split into q, k and v blocks; a matrix (or block) *crosses* when its selected count
reaches P_struct/σ and then spends P_struct (a structured module), a vector when its count
reaches len/β (β = 5) and then spends len (tuned whole); otherwise each keeps its selected
entries as a sparse delta; the cls token (if any) adds its size to every total.
``matrices`` — the layout before the official candidates: one unit per fused weight matrix.

Two rules meet a budget. ``sweep`` (the default, the official ``engine.get_sensitivity``):
τ, the number of globally most sensitive entries selected, runs over a grid τ_j = ⌈j·step⌉,
j = 1..79 (the official step is 0.02 M entries for budgets of 0.05–1 M; here ``tau_step``
defaults to budget/20, the same ratio at 0.4 M); at each τ every unit is decided as above;
the τ whose total is closest to the budget is kept (ties: the larger τ, as the official
``<=``). The total may overshoot and is never refused; placement.json reports it beside the
budget.

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

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from karst_deploy.adapters.base import TARGET_SUFFIXES, AdapterConfig, add_adapters
from karst_deploy.adapters.karst import KarstConfig
from karst_deploy.adapters.spt import (
    BLOCKS,
    CANDIDATES,
    MatrixPlacement,
    Placement,
    SptConfig,
    VectorPlacement,
    block_linear,
    structured_layer,
)
from karst_deploy.errors import InputError
from karst_deploy.models import classifier_parameter_names, norm_parameter_names

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
            f"budget is {text!r}; expected a positive count of trainable entries such as "
            "400000, 400k or 0.4M.",
            parameters=("budget",),
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


@dataclasses.dataclass
class _Unit:
    """One candidate of the allocation: a matrix (or q/k/v block) or a vector (or block)."""

    parameter: str  # the parameter name, e.g. "blocks.0.attn.qkv.weight"
    block: int | None  # q/k/v row block of a fused qkv
    values: np.ndarray  # the unit's scores, flat
    cost: int  # entries spent once it crosses: P_struct (matrix) or its length (vector)
    ratio: float  # it crosses at cost / ratio selected entries: σ (matrix) or β (vector)
    shape: tuple[int, ...]  # of the unit (a block: of the block)

    @property
    def matrix(self) -> bool:
        return len(self.shape) == 2

    def crossed(self, count: int) -> bool:
        return count > 0 and count >= self.cost / self.ratio


def _units(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    structured: AdapterConfig,
    sigma: float,
    beta: float,
    candidates: str,
) -> list[_Unit]:
    """The candidates the scores cover (module docstring), q/k/v split when official."""
    excluded = set(classifier_parameter_names(model)) | {"cls_token", "pos_embed"}
    norms = set(norm_parameter_names(model))
    units = []
    for key, tensor in scores.items():
        module_path, _, leaf = key.rpartition(".")
        linear = _linear(model, module_path)
        is_matrix = linear is not None and leaf == "weight"
        allowed = (
            is_matrix
            if candidates == "matrices"
            else ((linear is not None and leaf in ("weight", "bias")) or key in norms)
        )
        if not allowed or key in excluded or key.startswith("patch_embed."):
            raise InputError(
                f"Scores key '{key}' is not an SPT candidate of the model ("
                + (
                    "the weight of an nn.Linear"
                    if candidates == "matrices"
                    else "a weight or bias of an nn.Linear, or a LayerNorm weight or bias, "
                    "outside the head and the patch embedding"
                )
                + ")."
            )
        parameter = dict(model.named_parameters())[key]
        if tuple(tensor.shape) != tuple(parameter.shape):
            raise InputError(
                f"Scores key '{key}' has shape {tuple(tensor.shape)}; the parameter is "
                f"{tuple(parameter.shape)}."
            )
        values = tensor.detach().to("cpu", torch.float32).flatten().numpy()
        if not np.isfinite(values).all() or bool((values < 0).any()):
            raise InputError(f"Scores key '{key}' holds negative, NaN or infinite values.")
        split = (
            candidates == "official"
            and linear is not None
            and module_path.endswith(TARGET_SUFFIXES["qkv"])
            and linear.out_features == 3 * linear.in_features
        )
        blocks = 3 if split else 1
        pieces = np.split(values, blocks)
        if is_matrix:
            block = block_linear(linear, blocks) if split else linear
            cost = structured_size(module_path, block, structured)
            shape = (linear.out_features // blocks, linear.in_features)
        for j, piece in enumerate(pieces):
            units.append(
                _Unit(
                    key,
                    j if split else None,
                    piece,
                    cost if is_matrix else piece.size,
                    sigma if is_matrix else beta,
                    shape if is_matrix else (piece.size,),
                )
            )
    if not units:
        raise InputError("No sensitivity scores were given; there is nothing to allocate.")
    return units


class UnitDecision(NamedTuple):
    """What a budget rule decided for one unit."""

    count: int  # entries selected (a crossed unit spends its whole `cost` instead)
    crossed: bool  # structured (a matrix) or tuned whole (a vector)


@dataclasses.dataclass(frozen=True)
class RuleOutcome:
    """A budget rule's result (`_sweep`, `_exact`): every unit's decision and the thresholds
    placement.json records."""

    decisions: list[UnitDecision]  # in the order of the units
    score_threshold: float  # the score at the τ kept (sweep) or the bisected threshold (exact)
    top_up_threshold: float  # the exact rule's top-up threshold; 0 for the sweep (no top-up)


def allocate(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    budget: int | str,
    *,
    structured: AdapterConfig | None = None,
    sigma: float = 10.0,
    beta: float = 5.0,
    tolerance: float = 0.02,
    rule: str = "sweep",
    tau_step: int | None = None,
    candidates: str = "official",
    scores_metadata: Mapping[str, Any] | None = None,
) -> SptConfig:
    """Decide every scored candidate of `model` (module docstring).

    `scores` maps parameter names (``blocks.0.attn.qkv.weight``, and with the ``official``
    candidates also biases and LayerNorm parameters) to non-negative scores of the
    parameter's shape, e.g. `compute_sensitivity(...).scores`; the candidates are the
    parameters scored. Returns the `SptConfig` (with the sparse indices) that
    `add_adapters` installs.
    """
    budget = parse_budget(budget)
    structured = structured or KarstConfig()
    for name, value, paper in (("sigma", sigma, 10), ("beta", beta, 5)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise InputError(
                f"{name} is {value!r}; expected a positive number (SPT uses {paper}).",
                parameters=(name,),
            )
    if candidates not in CANDIDATES:
        raise InputError(f"candidates is {candidates!r}; expected one of {list(CANDIDATES)}.")
    if rule not in ("sweep", "exact"):
        raise InputError(
            f"rule is {rule!r}; expected 'sweep' (official) or 'exact'.", parameters=("rule",)
        )
    units = _units(model, scores, structured, sigma, beta, candidates)
    if not any((u.values > 0).any() for u in units):
        raise InputError(
            "Every sensitivity score is zero; the gradients never reached the weights."
        )
    token = dict(model.named_parameters()).get("cls_token")
    cls_size = token.numel() if candidates == "official" and token is not None else 0
    if rule == "sweep":
        outcome = _sweep(units, budget, cls_size, tau_step)
    else:
        outcome = _exact(units, budget - cls_size, tolerance, sigma)
    matrices, vectors, indices = [], [], {}
    for unit, (count, crossed) in zip(units, outcome.decisions, strict=True):
        rows = math.prod(unit.shape)
        offset = 0 if unit.block is None else unit.block * rows
        name = unit.parameter.rpartition(".")[0] if unit.matrix else unit.parameter
        block = None if unit.block is None else BLOCKS[unit.block]
        if unit.matrix and crossed:
            matrices.append(
                MatrixPlacement(name, unit.shape, "structured", count, unit.cost, block)
            )
            continue
        decision = ("whole" if crossed else "sparse") if count else "frozen"
        spent = unit.cost if crossed else count
        if unit.matrix:
            kind = "sparse" if count else "frozen"
            matrices.append(MatrixPlacement(name, unit.shape, kind, count, count, block))
        else:
            vectors.append(VectorPlacement(name, rows, decision, count, spent, block))
        if not count:
            continue
        chosen = np.arange(rows, dtype=np.int64) if crossed else _top_entries(unit.values, count)
        key = name if candidates == "matrices" else unit.parameter
        previous = indices.get(key)
        chosen = torch.from_numpy(chosen + offset)
        indices[key] = chosen if previous is None else torch.cat([previous, chosen])
    placement = Placement(
        structured=structured.method,
        sigma=float(sigma),
        budget=budget,
        matrices=tuple(matrices),
        score_threshold=outcome.score_threshold,
        top_up_threshold=outcome.top_up_threshold,
        scores=dict(scores_metadata or {}),
        indices=indices,
        candidates=candidates,
        vectors=tuple(vectors),
        beta=float(beta),
        cls_token=cls_size,
    )
    return SptConfig(structured=structured, placement=placement)


def _top_entries(values: np.ndarray, count: int) -> np.ndarray:
    """Sorted flat indices of the `count` highest scores (ties go to the lower index)."""
    cut = np.sort(values)[values.size - count]
    above = np.flatnonzero(values > cut)
    ties = np.flatnonzero(values == cut)[: count - above.size]
    return np.sort(np.concatenate([above, ties])).astype(np.int64)


def _sweep(units: list[_Unit], budget: int, fixed: int, tau_step: int | None) -> RuleOutcome:
    """The official τ-grid sweep (module docstring): the closest total wins, never refused."""
    every = np.concatenate([u.values for u in units])
    offsets = np.cumsum([0] + [u.values.size for u in units])
    # Global ranking, ties to the lower index (so each unit keeps its `_top_entries`).
    order = np.argsort(-every, kind="stable")
    step = tau_step or max(1, round(budget / 20))
    if not (isinstance(step, int) and step > 0):
        raise InputError(f"tau_step is {tau_step!r}; expected a positive integer.")
    counts = np.zeros(len(units), dtype=np.int64)
    best = None
    done = 0
    for j in range(1, GRID_POINTS + 1):
        tau = min(every.size, math.ceil(j * step))
        owners = np.searchsorted(offsets, order[done:tau], side="right") - 1
        counts += np.bincount(owners, minlength=len(units))
        done = tau
        total = fixed + sum(
            u.cost if u.crossed(int(c)) else int(c) for u, c in zip(units, counts, strict=True)
        )
        if best is None or abs(total - budget) <= abs(best[1] - budget):
            best = (tau, total, counts.copy())
        if total - budget > abs(best[1] - budget):  # totals only grow with τ: none closer
            break
    tau, _, chosen = best
    decided = [UnitDecision(int(c), u.crossed(int(c))) for u, c in zip(units, chosen, strict=True)]
    return RuleOutcome(decided, float(every[order[tau - 1]]), 0.0)


def _exact(units: list[_Unit], budget: int, tolerance: float, sigma: float) -> RuleOutcome:
    """The exact-budget rule (module docstring, "matrix" read as "unit"): bisection, then the
    capped top-up."""
    ascending = [np.sort(u.values) for u in units]

    def counts(threshold: float) -> list[int]:
        t = np.float32(threshold)
        return [v.size - int(np.searchsorted(v, t, side="left")) for v in ascending]

    def spent(threshold: float) -> int:
        return sum(
            u.cost if u.crossed(c) else c for u, c in zip(units, counts(threshold), strict=True)
        )

    smallest_positive = [
        float(v[i]) for v in ascending if (i := np.searchsorted(v, 0, "right")) < v.size
    ]
    low, top = min(smallest_positive), max(float(v[-1]) for v in ascending)
    threshold = _lowest_threshold(spent, low, _float_bits(top), budget)
    above_top = _bits_float(_float_bits(top) + 1)  # a threshold no entry reaches

    def fill(crossed: set[int]) -> tuple[float, list[int]]:
        """Top-up: the uncrossed units take their most sensitive entries, each capped
        below its crossing count, until the budget is spent (docstring, step 2)."""
        caps = {
            i: min(math.ceil(u.cost / u.ratio) - 1, u.values.size)
            for i, u in enumerate(units)
            if i not in crossed
        }
        fixed = sum(units[i].cost for i in crossed)

        def spent_filled(t: float) -> int:
            return fixed + sum(min(c, caps[i]) for i, c in enumerate(counts(t)) if i in caps)

        top_up = (
            above_top
            if fixed >= budget
            else _lowest_threshold(spent_filled, low, _float_bits(top), budget)
        )
        return top_up, [min(c, caps[i]) if i in caps else 0 for i, c in enumerate(counts(top_up))]

    def decide(score_threshold: float) -> tuple[int, RuleOutcome]:
        """The total spent and the outcome with the units crossed at `score_threshold`."""
        selected = counts(score_threshold)
        crossed = {i for i, (u, c) in enumerate(zip(units, selected, strict=True)) if u.crossed(c)}
        top_up, filled = fill(crossed)
        total = sum(units[i].cost for i in crossed) + sum(filled)
        decisions = [
            UnitDecision(selected[i], True) if i in crossed else UnitDecision(filled[i], False)
            for i in range(len(units))
        ]
        return total, RuleOutcome(decisions, score_threshold, top_up)

    # Candidates: the crossed set at the threshold found, and at the next lower one (one
    # more structured module, which may overshoot a little); the closer total wins.
    thresholds = [threshold]
    if threshold > low:
        thresholds.append(_bits_float(_float_bits(threshold) - 1))
    options = [decide(t) for t in thresholds]
    total, outcome = min(options, key=lambda option: (abs(option[0] - budget), option[0]))
    if abs(total - budget) > tolerance * budget:
        totals = " or ".join(sorted({f"{spent:,}" for spent, _ in options}))
        raise InputError(
            f"budget {budget:,} cannot be met within {tolerance:.0%}: with σ = {sigma:g} a "
            f"sparse matrix holds fewer than P_struct/σ entries and a structured one costs "
            f"P_struct, so over these {len(units)} candidates the closest SPT allocations "
            f"spend {totals}. Choose a budget in reach (or another sigma).",
            parameters=("budget", "sigma"),
        )
    return outcome


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
