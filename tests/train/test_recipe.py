"""`--recipe vtab|few-shot|swin`: the official presets, what they set, and what they record."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import karst_deploy as kd
from karst_deploy.errors import InputError
from karst_deploy.models import norm_parameter_names
from karst_deploy.train import TrainConfig, train_adapters
from karst_deploy.train.log import LOG_FILE
from karst_deploy.train.loop import build_model
from karst_deploy.train.recipe import apply_recipe
from tests.cases import randomize_adapters
from tests.cli_helpers import run_cli
from tests.train.tiny import TINY_BACKBONE, TINY_KWARGS, tiny_config

UNSET = dict(epochs=None, warmup_epochs=None, cooldown_epochs=None)


def test_vtab_is_100_cosine_epochs_then_10_at_the_minimum_lr():
    method, train, applied = apply_recipe("vtab", "lora", {"rank": None}, UNSET)
    assert train == dict(epochs=110, warmup_epochs=10, cooldown_epochs=10) == applied
    assert method == {"rank": None}


def test_explicit_options_win_and_are_not_recorded_as_set():
    method, train, applied = apply_recipe(
        "few-shot", "karst", {"kernels": 4}, {**UNSET, "epochs": 20}
    )
    assert method == {"kernels": 4} and train["epochs"] == 20
    assert train["cooldown_epochs"] == 0 and train["train_norms"] is True
    assert "kernels" not in applied and "epochs" not in applied


@pytest.mark.parametrize(("recipe", "method"), [("few-shot", "lora"), ("swin", "kadaptation")])
def test_karst_presets_refuse_other_methods(recipe, method):
    with pytest.raises(InputError, match=f"^recipe {recipe} sets KARST options"):
        apply_recipe(recipe, method, {}, UNSET)


@pytest.mark.parametrize(("epochs", "warmup"), [(2, 0), (10, 1), (35, 3), (500, 10)])
def test_an_explicit_epoch_count_scales_the_warm_up_and_records_it(epochs, warmup):
    _, train, applied = apply_recipe("vtab", "karst", {}, {**UNSET, "epochs": epochs})
    assert train["warmup_epochs"] == applied["warmup_epochs"] == warmup
    TrainConfig(backbone="b", data="d", **train)  # a valid schedule (it failed for <= 10)
    _, train, _ = apply_recipe("vtab", "karst", {}, {**UNSET, "epochs": 10, "warmup_epochs": 3})
    assert train["warmup_epochs"] == 3  # an explicit warm-up wins


@pytest.mark.parametrize(("method", "kernels"), [("karst", 2), ("kadaptation", 4), ("lora", None)])
def test_the_quick_recipe_is_short_with_few_kernels(method, kernels):
    options = {"kernels": None} if method != "lora" else {"rank": None}
    chosen, train, applied = apply_recipe("quick", method, options, UNSET)
    assert train == dict(epochs=10, warmup_epochs=1, cooldown_epochs=0)
    assert chosen.get("kernels") == kernels and applied.get("kernels") == kernels


def test_a_misspelled_target_is_refused_naming_it():
    from karst_deploy.adapters import KarstConfig

    model = kd.create_model(TINY_BACKBONE, num_classes=3, **TINY_KWARGS)
    with pytest.raises(InputError, match=r"'prj' matches no nn.Linear"):
        kd.add_adapters(model, KarstConfig(targets=("qkv", "prj")))


def test_the_lr_stays_at_the_minimum_for_the_cooldown_epochs():
    config = tiny_config(epochs=4, warmup_epochs=1, cooldown_epochs=2, lr=1e-2, min_lr=1e-3)
    log = train_adapters(config, progress=False).log
    lrs = [epoch.lr for epoch in log.epochs]
    assert lrs[2] == lrs[3] == pytest.approx(1e-3) and lrs[0] > 1e-3  # without: lrs[2] > min


def test_few_shot_vit_b_trains_339_528_parameters():
    """N = 2, LayerNorms trained, scalar re-scaling: the official few-shot count."""
    config = TrainConfig(
        backbone="vit_base_patch16_224",
        data="digits",
        adapter=kd.KarstConfig(kernels=2, rescale="scalar"),
        train_norms=True,
    )
    assert kd.count_trainable(build_model(config, 10)) == 339_528


def test_swin_stage_ranks_give_each_stage_its_rank_and_fold():
    backbone = kd.create_model(
        "swin_tiny_patch4_window7_224",
        num_classes=4,
        img_size=32,
        window_size=2,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
    )
    config = kd.KarstConfig(kernels=2, stage_ranks=(2, 2, 4, 8))
    model = randomize_adapters(kd.add_adapters(backbone, config)).double()
    for stage, rank in enumerate((2, 2, 4, 8)):
        layer = model.layers[stage].blocks[0].mlp.fc1.karst
        assert layer.B.shape[:2] == (2, rank) and layer.scale == 1 / rank
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    merged = kd.merge(model)
    with torch.no_grad():
        assert (merged(x) - model(x)).abs().max() <= 1e-10
    with pytest.raises(InputError, match="stage_ranks"):
        kd.add_adapters(kd.create_model("vit_tiny_patch16_224", depth=1), config)


def test_few_shot_cli_records_the_preset_and_stores_the_layernorms(tmp_path):
    arguments = ["train", "--backbone", TINY_BACKBONE, "--model-kwargs", json.dumps(TINY_KWARGS)]
    result = run_cli(
        *arguments,
        "--data",
        "digits:0-2",
        "--recipe",
        "few-shot",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--lr",
        "1e-2",
        "--out",
        tmp_path / "run",
    )
    assert result.returncode == 0, result.stderr
    log = json.loads((tmp_path / "run" / LOG_FILE).read_text())
    assert log["recipe"]["recipe"] == {
        "name": "few-shot",
        "set": {"cooldown_epochs": 0, "train_norms": True, "kernels": 2},
    }
    assert log["recipe"]["adapter"]["kernels"] == 2 and log["recipe"]["train_norms"] is True
    model = kd.load_adapted_model(tmp_path / "run")
    norms = norm_parameter_names(model)
    document = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert set(norms) <= set(document["trainable_extra"])
    stored = load_file(tmp_path / "run" / "adapter.safetensors")
    base = kd.create_model(TINY_BACKBONE, num_classes=3, **TINY_KWARGS).state_dict()
    assert not torch.equal(stored[norms[0]], base[norms[0]])  # trained, not the backbone's
    merged = kd.merge(model)
    assert torch.equal(merged.state_dict()[norms[0]], stored[norms[0]])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(merged(x), model.eval()(x), atol=1e-5)
