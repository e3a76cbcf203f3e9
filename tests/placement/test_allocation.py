"""SPT allocation: structured / sparse / frozen decisions, budgets, refusals.

These run on the ``matrices`` candidates (one unit per fused weight matrix), the form both
rules share with earlier releases; `test_official_rule` checks the official candidates.
"""

from __future__ import annotations

import math

import pytest
import torch

import karst_deploy as kd
from karst_deploy.adapters import count_trainable
from karst_deploy.errors import InputError, with_flags
from karst_deploy.placement import allocate, parse_budget
from karst_deploy.placement.allocation import structured_size
from karst_deploy.placement.sensitivity import candidate_weights

STRUCTURED = {"karst": kd.KarstConfig(), "lora": kd.LoraConfig(rank=4)}
MATRICES = "matrices"


def _zero_scores(model) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(w.shape) for name, w in candidate_weights(model).items()}


@pytest.mark.parametrize("structured", list(STRUCTURED))
@pytest.mark.parametrize("short", [0, 1], ids=["reaches-threshold", "one-short"])
def test_the_sigma_threshold_decides_structured_or_sparse(structured, short, tiny_case):
    """A matrix whose selection reaches P_struct/σ is structured; one short of it, and any
    other matrix, is sparse with exactly its selected entries; the rest stay frozen."""
    model = tiny_case.build()
    scores = _zero_scores(model)
    qkv, proj = "blocks.0.attn.qkv", "blocks.1.attn.proj"
    size = structured_size(qkv, model.get_submodule(qkv), STRUCTURED[structured])
    reach = math.ceil(size / 10)
    hot = torch.arange(reach - short) * 97  # spread over the matrix, sorted, distinct
    scores[f"{qkv}.weight"].view(-1)[hot] = 3.0
    warm = torch.tensor([5, 77, 500, 1_000, 36_863])  # 192×192 proj: the last entry is valid
    scores[f"{proj}.weight"].view(-1)[warm] = 2.0 + torch.rand(5)
    budget = (size if not short else reach - short) + len(warm)
    config = allocate(
        model, scores, budget, structured=STRUCTURED[structured], rule="exact", candidates=MATRICES
    )
    placement = {m.name: m for m in config.placement.matrices}

    if short:
        assert placement[qkv].decision == "sparse"
        assert torch.equal(config.placement.indices[qkv], hot)
    else:
        assert placement[qkv].decision == "structured"
        assert (placement[qkv].selected, placement[qkv].parameters) == (reach, size)
    assert placement[proj].decision == "sparse" and placement[proj].parameters == len(warm)
    assert torch.equal(config.placement.indices[proj], warm)
    others = set(placement) - {qkv, proj}
    assert others and all(placement[n].decision == "frozen" for n in others)
    assert config.placement.parameters == budget
    model = kd.add_adapters(model, config)
    assert count_trainable(model) == budget


@pytest.mark.parametrize("structured", list(STRUCTURED))
@pytest.mark.parametrize("budget", [300, 4_000, 9_000])
def test_budgets_are_met_within_two_percent(structured, budget, tiny_case):
    model = tiny_case.build()
    generator = torch.Generator().manual_seed(0)
    # Heavy-tailed scores with per-matrix scales, like real squared gradients.
    scores = {
        name: (torch.randn(w.shape, generator=generator) * 2).exp() * 10.0**-i
        for i, (name, w) in enumerate(candidate_weights(model).items())
    }
    config = allocate(
        model, scores, budget, structured=STRUCTURED[structured], rule="exact", candidates=MATRICES
    )
    totals = config.placement.totals()
    assert abs(totals["parameters"] - budget) <= 0.02 * budget
    assert totals["parameters"] == (totals["structured_parameters"] + totals["sparse_parameters"])
    assert count_trainable(kd.add_adapters(model, config)) == totals["parameters"]
    for matrix in config.placement.matrices:  # σ rule holds for every decision
        sparse = matrix.decision != "structured"
        path = matrix.name
        size = structured_size(path, model.get_submodule(path), STRUCTURED[structured])
        assert (matrix.selected < size / 10) == sparse


def official_sweep(scores, sizes, budget, step, sigma=10.0):
    """Independent transcription of the official rule (SPT engine.get_sensitivity): top-τ
    masks for τ = ⌈j·step⌉, σ decision per matrix, the closest total kept (ties: later τ)."""
    names = list(scores)
    every = torch.cat([scores[n].flatten() for n in names])
    best = None
    for j in range(1, 80):
        tau = min(every.numel(), math.ceil(j * step))
        mask = torch.zeros(every.numel(), dtype=torch.bool)
        mask[every.topk(tau).indices] = True
        masks = dict(zip(names, mask.split([scores[n].numel() for n in names]), strict=True))
        structured = {n for n in names if masks[n].sum() >= sizes[n] / sigma}
        total = sum(sizes[n] if n in structured else int(masks[n].sum()) for n in names)
        if best is None or abs(total - budget) <= abs(best[0] - budget):
            best = (total, structured, masks)
    return best


@pytest.mark.parametrize("structured", list(STRUCTURED))
@pytest.mark.parametrize("budget", [300, 4_000, 24_000, 60_000])
def test_the_default_sweep_equals_the_official_rule(structured, budget, tiny_case):
    model = tiny_case.build()
    generator = torch.Generator().manual_seed(1)
    scores = {
        name: (torch.randn(w.shape, generator=generator) * 2).exp() * 10.0**-i
        for i, (name, w) in enumerate(candidate_weights(model).items())
    }
    sizes = {
        n: structured_size(n[:-7], model.get_submodule(n[:-7]), STRUCTURED[structured])
        for n in scores
    }
    step = max(1, round(budget / 20))
    total, expected_structured, masks = official_sweep(scores, sizes, budget, step)
    config = allocate(model, scores, budget, structured=STRUCTURED[structured], candidates=MATRICES)
    placement = config.placement
    assert placement.parameters == total  # reported beside the budget, never refused
    assert placement.totals()["deviation"] == round((total - budget) / budget, 6)
    for matrix in placement.matrices:
        name = f"{matrix.name}.weight"
        assert (matrix.decision == "structured") == (name in expected_structured)
        assert matrix.selected == int(masks[name].sum())
        if matrix.decision == "sparse":
            expected = torch.nonzero(masks[name]).flatten()
            assert torch.equal(placement.indices[matrix.name], expected)
    assert count_trainable(kd.add_adapters(model, config)) == total


def test_the_sweep_never_refuses_a_budget(tiny_case):
    model = tiny_case.build()
    generator = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(w.shape, generator=generator) for n, w in _zero_scores(model).items()}
    config = allocate(
        model, scores, "10M", candidates=MATRICES
    )  # beyond every matrix structured: all structured
    assert {m.decision for m in config.placement.matrices} == {"structured"}
    assert config.placement.totals()["deviation"] < 0


def test_an_unreachable_budget_is_refused_with_the_reachable_totals(tiny_case):
    model = tiny_case.build()
    generator = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(w.shape, generator=generator) for n, w in _zero_scores(model).items()}
    every = sum(
        structured_size(n[:-7], model.get_submodule(n[:-7]), kd.KarstConfig()) for n in scores
    )
    # Beyond every matrix structured: the most SPT can spend is named.
    with pytest.raises(InputError, match=rf"^budget 10,000,000 .* spend {every:,}\.") as refused:
        allocate(model, scores, "10M", rule="exact", candidates=MATRICES)
    shown = with_flags(refused.value)  # the CLI names its flags
    assert shown.startswith("--budget 10,000,000 ") and shown.endswith("(or another --sigma).")
    # Between what the sparse matrices can hold and the next structured module's cost: the
    # closest totals under and over are named.
    with pytest.raises(InputError, match=r"spend 21,448 or 26,880\. Choose a budget in reach"):
        allocate(model, scores, 24_000, rule="exact", candidates=MATRICES)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.4M", 400_000), ("400k", 400_000), ("400000", 400_000), (400_000, 400_000), ("1.5K", 1500)],
)
def test_budget_spellings(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "abc", "", "4e5", "0.0001"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(InputError, match=r"^budget is") as refused:
        parse_budget(text)
    assert with_flags(refused.value).startswith("--budget is")


BAD_SCORES = {
    "negative": (lambda s, k: s[k].view(-1).__setitem__(0, -1.0), "negative, NaN or infinite"),
    "NaN": (lambda s, k: s[k].view(-1).__setitem__(0, float("nan")), "negative, NaN or infinite"),
    "wrong shape": (lambda s, k: s.__setitem__(k, torch.ones(3, 3)), r"has shape \(3, 3\)"),
    "not a Linear weight": (
        lambda s, k: s.__setitem__("pos_embed", torch.ones(1)),
        "'pos_embed' is not an SPT candidate",
    ),
    "all zero": (lambda s, k: None, "Every sensitivity score is zero"),
}


@pytest.mark.parametrize("problem", list(BAD_SCORES))
def test_bad_scores_are_refused(problem, tiny_case):
    model = tiny_case.build()
    scores = _zero_scores(model)
    key = next(iter(scores))
    if problem != "all zero":
        scores[key] += 1.0
    edit, message = BAD_SCORES[problem]
    edit(scores, key)
    with pytest.raises(InputError, match=message):
        allocate(model, scores, 100)


def test_bad_sigma_is_refused(tiny_case):
    model = tiny_case.build()
    with pytest.raises(InputError, match=r"^sigma is 0") as refused:
        allocate(model, _zero_scores(model), 100, sigma=0)
    assert with_flags(refused.value).startswith("--sigma is 0")
