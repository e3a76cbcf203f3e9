"""SPT's official allocation rule, transcribed independently, against `allocate`.

The reference below follows ziplab/SPT ``engine.get_sensitivity`` line by line on a model
whose q, k and v are separate (timm's fused qkv rows and bias split in three): skip the
head, cls token, patch and position embeddings; a parameter whose name holds ``norm`` or
``bias`` is a vector (tuned whole when its selected count reaches len/β, otherwise its
selected entries), one holding q/k/v/proj/fc is a matrix (structured when its count
reaches P_struct/α, LoRA's ``in·r + r·out``; otherwise its selected entries); the total
adds the cls token; over the τ grid the total closest to each budget is kept (``<=``: the
later τ wins ties, starting from a distance of the budget itself). It shares no code with
karst_deploy.placement.
"""

from __future__ import annotations

import math

import pytest
import torch

import karst_deploy as kd
from karst_deploy.placement import allocate
from karst_deploy.placement.sensitivity import candidate_parameters

RANK, SIGMA, BETA, STEP = 4, 10.0, 5.0, 100
BUDGETS = (1000, 4000, 12000)


def _separate_qkv(model: torch.nn.Module) -> dict[str, torch.Size]:
    """Parameter names and shapes of `model` as the official SepQKV ViT names them."""
    shapes = {}
    for name, parameter in model.named_parameters():
        if ".attn.qkv." in name:
            rows = parameter.shape[0] // 3
            for letter in "qkv":
                shapes[name.replace(".qkv.", f".{letter}.")] = (rows, *parameter.shape[1:])
        else:
            shapes[name] = parameter.shape
    return shapes


def _official_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our fused-qkv scores as the separate q/k/v parameters the official model has."""
    split = {}
    for name, tensor in scores.items():
        if ".attn.qkv." in name:
            for letter, piece in zip("qkv", tensor.chunk(3), strict=True):
                split[name.replace(".qkv.", f".{letter}.")] = piece
        else:
            split[name] = tensor
    return split


def official_sweep(scores: dict[str, torch.Tensor], cls_size: int, budgets, step: int):
    """`engine.get_sensitivity` after the gradients (official names, grid step `step`)."""
    skip = ["head", "cls_token", "patch_embed", "pos_embed"]
    matrix_words = [".q.", ".k.", ".v.", "proj", "fc"]
    vector_words = ["norm", "bias"]
    shapes = {k: v.shape for k, v in scores.items() if not any(w in k for w in skip)}
    large = torch.cat([scores[k].flatten() for k in shapes])
    best = {k: (0.0, None) for k in budgets}
    for j in range(1, 80):
        _, indexes = large.topk(min(j * step, large.numel()))
        mask = torch.zeros_like(large)
        mask[indexes] = 1.0
        pieces = mask.split([math.prod(s) for s in shapes.values()])
        structured, vectors, unstructured, spent = [], [], {}, 0
        for piece, (key, shape) in zip(pieces, shapes.items(), strict=True):
            count = int(piece.sum())
            if any(w in key for w in vector_words):
                if len(shape) == 1 and count >= shape[0] / BETA:
                    spent += shape[0]
                    vectors.append(key)
                else:
                    spent += count
                    unstructured[key] = piece.view(shape)
            elif any(w in key for w in matrix_words):
                size = shape[1] * RANK + RANK * shape[0]
                if count >= size / SIGMA:
                    spent += size
                    structured.append(key)
                else:
                    spent += count
                    unstructured[key] = piece.view(shape)
            else:
                raise NotImplementedError(key)
        total = spent + cls_size
        for k in budgets:
            if abs(total - k) <= abs(best[k][0] - k):
                best[k] = (total, (structured, vectors, unstructured))
    return best


def _ours_in_official_terms(config) -> tuple[set, set, dict[str, set]]:
    """Our placement as (structured matrices, whole vectors, selected entries) by official name."""

    def official(name: str, block: str | None) -> str:
        return name.replace(".qkv", f".{block}") if block else name

    placement = config.placement
    structured = {
        official(m.name, m.block) + ".weight"
        for m in placement.matrices
        if m.decision == "structured"
    }
    whole = {official(v.name, v.block) for v in placement.vectors if v.decision == "whole"}
    entries: dict[str, set] = {}
    for name, indices in placement.indices.items():
        for index in indices.tolist():
            fused = name.replace(".qkv.", ".X.")
            if ".X." in fused:  # which q/k/v block, and the index inside it
                size = placement_size(placement, name) // 3
                block, index = divmod(index, size)
                fused = fused.replace(".X.", f".{'qkv'[block]}.")
            entries.setdefault(fused, set()).add(index)
    return structured, whole, entries


def placement_size(placement, name: str) -> int:
    for m in placement.matrices:
        if f"{m.name}.weight" == name:
            return 3 * m.shape[0] * m.shape[1] if m.block else m.shape[0] * m.shape[1]
    vector = next(v for v in placement.vectors if v.name == name)
    return vector.length * (3 if vector.block else 1)


@pytest.fixture(scope="module")
def model_and_scores():
    torch.manual_seed(0)
    model = kd.create_model(
        "vit_tiny_patch16_224", num_classes=4, img_size=32, patch_size=16, depth=2
    )
    generator = torch.Generator().manual_seed(3)
    scores = {}
    for name, parameter in candidate_parameters(model).items():
        # Heavy-tailed scores (squared gradients are) on one scale per parameter
        # (log-uniform over 2 decades, vectors 30× higher, as biases and LayerNorms tend
        # to be): the budgets below then meet every kind of decision.
        scale = 10 ** (2 * torch.rand((), generator=generator).item() - 1)
        scale *= 30 if parameter.ndim == 1 else 1
        scores[name] = torch.rand(parameter.shape, generator=generator) ** 8 * scale
    return model, scores


def test_the_candidates_are_the_official_set(model_and_scores):
    model, scores = model_and_scores
    skip = ["head", "cls_token", "patch_embed", "pos_embed"]
    words = [".qkv.", "proj", "fc", "norm", "bias"]
    expected = [
        name
        for name, _ in model.named_parameters()
        if not any(w in name for w in skip) and any(w in name for w in words)
    ]
    assert list(scores) == expected
    assert any(name.endswith("norm1.weight") for name in expected)
    assert any(name.endswith("attn.qkv.bias") for name in expected)
    assert set(_official_scores(scores)) <= set(_separate_qkv(model))


def test_allocate_selects_exactly_what_the_official_sweep_selects(model_and_scores):
    model, scores = model_and_scores
    cls_size = model.cls_token.numel()
    reference = official_sweep(_official_scores(scores), cls_size, BUDGETS, STEP)
    decisions = set()
    for budget in BUDGETS:
        total, (structured, vectors, unstructured) = reference[budget]
        config = allocate(
            model,
            scores,
            budget,
            structured=kd.LoraConfig(rank=RANK),
            sigma=SIGMA,
            beta=BETA,
            tau_step=STEP,
        )
        ours_structured, ours_whole, ours_entries = _ours_in_official_terms(config)
        assert ours_structured == set(structured)
        assert ours_whole == set(vectors)
        expected_entries = {
            key: set(torch.nonzero(mask.flatten()).flatten().tolist())
            for key, mask in unstructured.items()
            if mask.any()
        }
        for key in vectors:  # a whole vector: a delta on every entry
            expected_entries[key] = set(range(_separate_qkv(model)[key][0]))
        assert ours_entries == expected_entries
        assert config.placement.parameters == total
        assert config.placement.cls_token == cls_size
        decisions |= {m.decision for m in config.placement.matrices}
        decisions |= {v.decision for v in config.placement.vectors}
    # The budgets exercise every kind of decision.
    assert decisions == {"structured", "sparse", "frozen", "whole"}
