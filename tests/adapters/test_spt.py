"""The "spt" adapter method: the shared merge/storage contract, sparse deltas, hostile files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import karst_deploy as kd
from karst_deploy.adapters import AdaptedLinear, AdapterFile, count_trainable
from karst_deploy.adapters.base import AdaptedNorm
from karst_deploy.adapters.spt import EntryDelta, Placement, _parse_matrix, _parse_vector
from karst_deploy.errors import AdapterFileError, InputError
from tests.adapters import test_merge as merge_contract
from tests.adapters import test_storage as storage_contract
from tests.cases import (
    BACKBONE_CASES,
    adapted,
    backbone_params,
    images,
    spt_case_config,
    spt_params,
)

# The generic checks of the merge contract and the adapter format, run on the SPT cases.
CONTRACT = {
    "exact-in-float64": merge_contract.test_merge_is_exact_in_float64,
    "float32-matches-and-differs-from-base": (
        merge_contract.test_merge_in_float32_matches_and_differs_from_base
    ),
    "merged-is-the-plain-backbone": merge_contract.test_merged_model_is_the_plain_backbone,
    "save-load-is-bit-exact": storage_contract.test_save_load_round_trip_is_bit_exact,
}


@pytest.mark.parametrize("check", list(CONTRACT))
@spt_params
@backbone_params
def test_spt_follows_the_merge_and_storage_contract(check, method, backbone, tmp_path):
    extra = {"tmp_path": tmp_path} if check == "save-load-is-bit-exact" else {}
    CONTRACT[check](method=method, backbone=backbone, **extra)


@spt_params
@backbone_params
def test_fresh_spt_adapters_mix_decisions_spend_the_budget_and_change_nothing(method, backbone):
    base = backbone.build()
    config = spt_case_config(backbone, method)
    decisions = {m.decision for m in config.placement.matrices}
    assert {"structured", "sparse"} <= decisions
    model = kd.add_adapters(backbone.build(), config)
    assert count_trainable(model) == config.placement.parameters
    assert abs(config.placement.parameters - config.placement.budget) <= 0.02 * (
        config.placement.budget
    )
    frozen = [m.name for m in config.placement.matrices if m.decision == "frozen"]
    assert all(not isinstance(model.get_submodule(name), AdaptedLinear) for name in frozen)
    x = images(backbone)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))


def _entry_deltas(model: torch.nn.Module) -> dict[str, EntryDelta]:
    """Every entry delta of the adapted model, by the parameter it edits."""
    return {
        f"{path}.{leaf}": module.adapter._modules[leaf]
        for path, module in model.named_modules()
        if isinstance(module, (AdaptedLinear, AdaptedNorm))
        for leaf in ("weight", "bias")
        if leaf in module.adapter._modules and isinstance(module.adapter._modules[leaf], EntryDelta)
    }


@spt_params
def test_one_step_moves_values_never_indices_and_the_delta_sits_on_them(method, tiny_case):
    model = adapted(tiny_case, method).train()
    deltas = _entry_deltas(model)
    # Matrix entries, a whole LayerNorm vector and sparse vector entries (LayerNorm and bias).
    assert {"blocks.0.attn.qkv.weight", "blocks.0.norm1.weight"} <= set(deltas)
    assert any(n.endswith(".bias") for n in deltas)
    indices = {n: d.indices.clone() for n, d in deltas.items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "cls_token" in trainable
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(images(tiny_case)).logsumexp(-1).mean().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable and any(n.endswith(".values") for n in changed)
    assert "cls_token" in changed
    merged = kd.merge(model)
    merged_state, state = merged.state_dict(), model.state_dict()
    for name, delta in deltas.items():
        assert torch.equal(delta.indices, indices[name])
        # The merged parameter differs from the backbone's exactly at the selected entries
        # (a structured block of the same qkv changes its own rows too: look outside them).
        difference = (merged_state[name] - state[name]).flatten()
        if name == "blocks.0.attn.qkv.weight":
            rows = state[name].shape[0] // 3
            block = range(rows * state[name].shape[1], 2 * rows * state[name].shape[1])
            difference[block.start : block.stop] = 0
        assert torch.equal(torch.nonzero(difference).flatten(), delta.indices)
    assert torch.equal(merged_state["cls_token"], state["cls_token"])


@spt_params
def test_a_structured_module_on_one_qkv_block_changes_only_its_rows(method, tiny_case):
    """The k block's module folds into rows [d, 2d) of the fused qkv and nowhere else."""
    model = adapted(tiny_case, method).double()
    layer = model.get_submodule("blocks.0.attn.qkv")
    assert set(layer.adapter._modules) >= {"k"} and "q" not in layer.adapter._modules
    weight = layer.weight.detach()
    bias = layer.bias.detach()
    entries = layer.adapter.weight.add_to(weight)
    folded, _ = layer.adapter.fold(weight, bias)
    rows = weight.shape[0] // 3
    assert torch.equal(folded[:rows], entries[:rows])
    assert torch.equal(folded[2 * rows :], entries[2 * rows :])
    assert not torch.equal(folded[rows : 2 * rows], entries[rows : 2 * rows])
    x = torch.randn(2, 5, weight.shape[1], dtype=torch.float64)
    expected = torch.nn.functional.linear(x, *layer.adapter.fold(weight, bias))
    assert torch.allclose(layer(x), expected, atol=1e-10, rtol=0)


def test_a_placement_for_another_backbone_is_refused(tiny_case):
    config = spt_case_config(tiny_case, "spt-lora")
    other = BACKBONE_CASES[2].build()  # deit-768: other layers and shapes
    with pytest.raises(AdapterFileError, match="placement"):
        kd.add_adapters(other, config)


def test_a_placement_without_indices_points_to_load_adapters(tiny_case):
    config = spt_case_config(tiny_case, "spt-karst")
    bare = type(config)(config.structured, config.placement.with_indices({}))
    with pytest.raises(InputError, match="load_adapters"):
        kd.add_adapters(tiny_case.build(), bare)


def test_spt_directory_layout(tiny_case, tmp_path):
    model = adapted(tiny_case, "spt-karst")
    kd.save_adapters(model, tmp_path / "a")
    document = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert document["method"] == "spt" and document["placement"] == "placement.json"
    assert document["structured"] == {
        "method": "karst",
        "factor": 8,
        "rank": 8,
        "kernels": 8,
        "alpha": 1.0,
        "rescale": "channel",
        "qkv_layout": "split",
        "stage_ranks": [],
    }
    placement = json.loads((tmp_path / "a" / "placement.json").read_text())
    assert placement["format"] == "karst-deploy.placement" and placement["sigma"] == 10.0
    assert placement["totals"]["parameters"] == count_trainable(model)
    assert document["candidates"] == "official" and placement["version"] == 2
    assert document["trainable_extra"] == ["head.weight", "head.bias", "cls_token"]
    assert placement["cls_token"] == 192 and placement["beta"] == 5.0
    tensors = load_file(tmp_path / "a" / "adapter.safetensors")
    entries = AdapterFile(tmp_path / "a").config.placement.entry_counts()
    assert entries["blocks.0.norm1.weight"] == 192  # tuned whole: every index
    for name, count in entries.items():
        module, _, leaf = name.rpartition(".")
        key = f"{module}.spt.{leaf}.indices"
        if count:
            assert tensors[key].dtype == torch.int64 and tensors[key].numel() == count
        else:
            assert key not in tensors
    assert any(k.startswith("blocks.0.attn.qkv.spt.k.") for k in tensors)
    assert set(AdapterFile(tmp_path / "a").sha256()) == {
        "adapter_config.json",
        "adapter.safetensors",
        "placement.json",
    }
    # A model that already carries the same placement takes the file's values.
    target = adapted(tiny_case, "spt-karst", seed=7)
    kd.load_adapters(target, tmp_path / "a")
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.fixture
def saved_spt(tiny_case, tmp_path) -> Path:
    kd.save_adapters(adapted(tiny_case, "spt-karst"), tmp_path / "adapter")
    return tmp_path / "adapter"


def _edit_placement(directory: Path, edit, *, retotal: bool = False) -> None:
    path = directory / "placement.json"
    document = json.loads(path.read_text())
    edit(document)
    if retotal:  # keep the totals consistent so the edit itself is what is caught
        matrices = tuple(_parse_matrix(m, "m", "test", True) for m in document["matrices"])
        vectors = tuple(_parse_vector(v, "v", "test") for v in document["vectors"])
        document["totals"] = Placement(
            "karst",
            10.0,
            document["budget"],
            matrices,
            candidates="official",
            vectors=vectors,
            cls_token=document["cls_token"],
        ).totals()
    path.write_text(json.dumps(document))


def _first(document: dict, decision: str) -> dict:
    return next(m for m in document["matrices"] if m["decision"] == decision)


def _sparse_key(directory: Path) -> str:
    document = json.loads((directory / "placement.json").read_text())
    return f"{_first(document, 'sparse')['name']}.spt.weight.indices"


def _edit_indices(directory: Path, edit) -> None:
    path = directory / "adapter.safetensors"
    tensors = load_file(path)
    key = _sparse_key(directory)
    tensors[key] = edit(tensors[key])
    save_file(tensors, path)


def _grow_sparse_count(document: dict) -> None:
    matrix = _first(document, "sparse")
    matrix["selected"] += 1
    matrix["parameters"] += 1


def _swap_first_two(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[[0, 1]] = t[[1, 0]]
    return t


def _repeat_first(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[1] = t[0]
    return t


def _last_out_of_range(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[-1] = 10**9
    return t


def _first_negative(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[0] = -1
    return t


def _values_nan(directory: Path) -> None:
    path = directory / "adapter.safetensors"
    tensors = load_file(path)
    key = _sparse_key(directory).replace(".indices", ".values")
    tensors[key][0] = float("nan")
    save_file(tensors, path)


HOSTILE_SPT = {
    "placement.json missing": (lambda d: (d / "placement.json").unlink(), r"placement\.json"),
    "placement.json not JSON": (
        lambda d: (d / "placement.json").write_text("{"),
        r"placement\.json is not valid JSON",
    ),
    "unknown decision": (
        lambda d: _edit_placement(d, lambda p: _first(p, "sparse").update(decision="partial")),
        r"'matrices\[\d+\]\.decision' is 'partial'",
    ),
    "tampered totals": (
        lambda d: _edit_placement(d, lambda p: p["totals"].update(parameters=1)),
        r"'totals\.parameters' is 1",
    ),
    "sparse count differs from its indices": (
        lambda d: _edit_placement(d, _grow_sparse_count, retotal=True),
        r"\.spt\.weight\.indices' holds .* placement\.json says",
    ),
    "structured size tampered": (
        lambda d: _edit_placement(
            d, lambda p: _first(p, "structured").update(parameters=7), retotal=True
        ),
        r"structured module of 'blocks\.0\.attn\.qkv' \(k\) has 7 parameters",
    ),
    "shape of another model": (
        lambda d: _edit_placement(d, lambda p: _first(p, "structured").update(shape=[192, 576])),
        r"'blocks\.0\.attn\.qkv' \(k\) shape \[192, 576\], but the model's is \(576, 192\)",
    ),
    "layer the model lacks": (
        lambda d: _edit_placement(d, lambda p: _first(p, "structured").update(name="blocks.9.x")),
        r"names layer 'blocks\.9\.x'",
    ),
    "structured methods disagree": (
        lambda d: _edit_placement(d, lambda p: p.update(structured="lora")),
        r"'structured' is 'lora' but .* says 'karst'",
    ),
    "placement file renamed": (
        lambda d: storage_contract._edit_config(d, lambda c: c.update(placement="other.json")),
        r"key 'placement' is 'other\.json'",
    ),
    "unknown structured hyper-parameter": (
        lambda d: storage_contract._edit_config(d, lambda c: c["structured"].update(rnak=4)),
        r"unknown key 'structured\.rnak'",
    ),
    "unsorted indices": (
        lambda d: _edit_indices(d, _swap_first_two),
        r"\.spt\.weight\.indices' is not strictly increasing",
    ),
    "duplicate indices": (
        lambda d: _edit_indices(d, _repeat_first),
        r"\.spt\.weight\.indices' is not strictly increasing",
    ),
    "index out of range": (
        lambda d: _edit_indices(d, _last_out_of_range),
        r"\.spt\.weight\.indices' holds index 1000000000, outside",
    ),
    "negative index": (
        lambda d: _edit_indices(d, _first_negative),
        r"\.spt\.weight\.indices' holds index -1, outside",
    ),
    "int32 indices": (
        lambda d: _edit_indices(d, lambda t: t.to(torch.int32)),
        r"\.spt\.weight\.indices' has dtype torch\.int32; expected torch\.int64",
    ),
    "float indices": (
        lambda d: _edit_indices(d, lambda t: t.to(torch.float32)),
        r"\.spt\.weight\.indices' has dtype torch\.float32",
    ),
    "2-D indices": (
        lambda d: _edit_indices(d, lambda t: t[None]),
        r"\.spt\.weight\.indices' has shape \(1, \d+\); expected a non-empty 1-D",
    ),
    "NaN sparse value": (_values_nan, r"\.spt\.weight\.values' holds NaN"),
}


@pytest.mark.parametrize("corruption", list(HOSTILE_SPT))
def test_hostile_spt_directories_are_refused(corruption, saved_spt, tiny_case):
    corrupt, message = HOSTILE_SPT[corruption]
    corrupt(saved_spt)
    model = tiny_case.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterFileError, match=message):
        kd.load_adapters(model, saved_spt)
    assert kd.adapters.adapter_config(model) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
