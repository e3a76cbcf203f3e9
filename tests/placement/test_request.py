"""`train --placement spt`: the SPT request, its options, and a real (tiny) training run."""

from __future__ import annotations

import json

import pytest
import torch

import karst_deploy as kd
from karst_deploy.data import open_images
from karst_deploy.errors import InputError, with_flags
from karst_deploy.placement import (
    Sensitivity,
    SptRequest,
    compute_sensitivity,
    save_scores,
)
from karst_deploy.placement.sensitivity import candidate_parameters
from karst_deploy.train import train_adapters
from karst_deploy.train.loop import build_model
from karst_deploy.train.recipe import training_adapter
from tests.cases import BACKBONE_CASES
from tests.train.tiny import tiny_config


def test_scores_file_and_on_the_fly_sensitivity_allocate_the_same(tiny_case, tmp_path):
    train = open_images("digits", "train", 32)
    model = tiny_case.build()
    save_scores(
        compute_sensitivity(model, train, batches=2, batch_size=16), tmp_path / "s.safetensors"
    )
    on_the_fly = SptRequest(2_500, kd.LoraConfig(rank=4), batches=2, batch_size=16)
    from_file = SptRequest(2_500, kd.LoraConfig(rank=4), scores=str(tmp_path / "s.safetensors"))
    first, second = on_the_fly.resolve(model, train), from_file.resolve(model, train=None)
    assert first == second
    assert all(
        torch.equal(first.placement.indices[k], v) for k, v in second.placement.indices.items()
    )
    with pytest.raises(InputError, match="computed on another backbone"):
        from_file.resolve(BACKBONE_CASES[1].build(), train=None)


def test_on_the_fly_sensitivity_is_refused_under_torchrun(tiny_case, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="pass scores, a file written once") as refused:
        SptRequest(4_000).resolve(tiny_case.build(), open_images("digits", "train", 32))
    assert "pass --scores, a file written once" in with_flags(refused.value)


SPT = dict(placement="spt", method="karst", budget="1k")
#: Options, then the message a Python caller reads (parameters) and the CLI's (flags).
OPTION_ERRORS = [
    (
        dict(placement="uniform", method="karst", budget="1k"),
        "budget applies to placement spt only",
        "--budget applies to --placement spt only",
    ),
    (
        dict(placement="uniform", method="karst", scores="s.safetensors"),
        "scores applies to placement spt only",
        "--scores applies to --placement spt only",
    ),
    (
        dict(placement="spt", method="karst"),
        "placement spt needs budget",
        "--placement spt needs --budget",
    ),
    (
        {**SPT, "method": "lora"},
        "method does not apply with placement spt: structured names",
        "--method does not apply with --placement spt: --structured names",
    ),
    ({**SPT, "structured": "kadaptation"}, "structured is 'kadaptation'", "--structured is"),
    ({**SPT, "sigma": -1.0}, "sigma is -1.0", "--sigma is -1.0"),
    ({**SPT, "budget_rule": "best"}, "rule is 'best'", "--budget-rule is 'best'"),
    ({**SPT, "scores": "/no/such"}, "scores '/no/such' does not", "--scores '/no/such' does not"),
    (dict(placement="dense", method="karst"), "placement is 'dense'", "--placement is 'dense'"),
]


@pytest.mark.parametrize(("options", "message", "shown"), OPTION_ERRORS)
def test_train_placement_options_name_parameters_and_the_cli_flags(options, message, shown):
    with pytest.raises(InputError, match=f"^{message}") as refused:
        training_adapter(**options)
    assert with_flags(refused.value).startswith(shown)


def test_training_with_spt_writes_a_placement_that_loads_and_merges(tmp_path):
    # Scores from a file (synthetic: the first block's qkv is the most sensitive), so the
    # placement is known to hold a structured and sparse matrices whatever the random weights.
    model = build_model(tiny_config(adapter=kd.LinearConfig()), 3)
    generator = torch.Generator().manual_seed(0)
    candidates = candidate_parameters(model, ("qkv", "fc1"))
    scores = {n: torch.rand(w.shape, generator=generator) for n, w in candidates.items()}
    rows = scores["blocks.0.attn.qkv.weight"].shape[0] // 3
    scores["blocks.0.attn.qkv.weight"][:rows] += 1.0  # the q block: structured
    save_scores(Sensitivity(scores, {}), tmp_path / "scores.safetensors")
    request = training_adapter(
        "spt",
        "karst",
        "lora",
        budget="650",
        scores=tmp_path / "scores.safetensors",
        budget_rule="exact",  # within 2 % (the default official sweep may overshoot)
        rank=4,
        targets="qkv,fc1",
    )
    assert isinstance(request, SptRequest) and request.structured.targets == ("qkv", "fc1")
    config = tiny_config(adapter=request, epochs=2)
    result = train_adapters(config, tmp_path / "spt", progress=False)

    placement = json.loads((tmp_path / "spt" / "placement.json").read_text())
    names = {m["name"].rsplit(".", 1)[-1] for m in placement["matrices"]}
    assert names == {"qkv", "fc1"}  # --targets are the candidates
    assert {m["decision"] for m in placement["matrices"]} == {"structured", "sparse"}
    assert abs(placement["totals"]["parameters"] - 650) <= 13
    log = json.loads((tmp_path / "spt" / "train_log.json").read_text())
    assert log["recipe"]["adapter"]["method"] == "spt"
    assert log["recipe"]["adapter"]["budget"] == 650
    # The saved directory validates and loads back onto the training backbone (random here,
    # so it is the trained model itself), giving the same outputs; merging keeps them.
    model = result.model.eval()
    assert kd.count_trainable(model) == placement["totals"]["parameters"]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        reference = model(x)
        kd.load_adapters(model, tmp_path / "spt")
        assert torch.equal(model(x), reference)
        bound = 1e-5 * max(1.0, reference.abs().max().item())
        assert (kd.merge(model)(x) - reference).abs().max() <= bound
