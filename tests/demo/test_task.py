"""The digits transfer task: a cached source backbone (digits 0–4), adapters on digits 5–9.

The full-size task (≥ 90 % held-out accuracy) is measured by benchmarks/transfer_accuracy.py;
here a tiny recipe checks the mechanics: caching by recipe, XDG_CACHE_HOME, the target run.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import karst_deploy as kd
from karst_deploy.demo.task import (
    RECIPE_FILE,
    SourceRecipe,
    pretrain_source_backbone,
    train_transfer_target,
)
from karst_deploy.files import cache_root
from tests.train.tiny import TINY_KWARGS

TINY_RECIPE = SourceRecipe(model_kwargs=dict(TINY_KWARGS), epochs=2, warmup_epochs=1)


def test_cache_root_honours_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "karst-deploy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root().parts[-2:] == (".cache", "karst-deploy")


def test_the_source_backbone_is_trained_once_per_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    checkpoint = pretrain_source_backbone(TINY_RECIPE, progress=False)
    assert checkpoint.is_relative_to(tmp_path / "karst-deploy" / "source-backbones")
    recorded = json.loads((checkpoint.parent / RECIPE_FILE).read_text())
    assert recorded == json.loads(json.dumps(TINY_RECIPE.to_dict()))
    stamp = checkpoint.stat().st_mtime_ns
    assert pretrain_source_backbone(TINY_RECIPE, progress=False) == checkpoint
    assert checkpoint.stat().st_mtime_ns == stamp  # reused, not retrained

    # The pretrained weights differ from a fresh initialisation and load as a timm backbone.
    kwargs = dict(TINY_KWARGS)
    model = kd.create_model(TINY_RECIPE.backbone, num_classes=5, checkpoint=checkpoint, **kwargs)
    torch.manual_seed(TINY_RECIPE.seed)
    fresh = kd.create_model(TINY_RECIPE.backbone, num_classes=5, **kwargs).state_dict()
    assert not torch.equal(
        model.state_dict()["blocks.0.attn.qkv.weight"], fresh["blocks.0.attn.qkv.weight"]
    )
    assert load_file(checkpoint).keys() == fresh.keys()

    other = pretrain_source_backbone(
        SourceRecipe(model_kwargs=dict(TINY_KWARGS), epochs=1, warmup_epochs=0), progress=False
    )
    assert other != checkpoint and other.is_file()


def test_the_target_task_trains_on_unseen_digits(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = train_transfer_target(
        kd.KarstConfig(rank=2, kernels=2),
        tmp_path / "run",
        recipe=TINY_RECIPE,
        progress=False,
        epochs=2,
        warmup_epochs=1,
    )
    log = result.log
    assert log.data.source == "digits:5-9"
    assert log.data.classes == ["5", "6", "7", "8", "9"]
    assert log.recipe["checkpoint"] == str(pretrain_source_backbone(TINY_RECIPE))
    assert log.backbone["checkpoint_sha256"] is not None
    assert 0.0 <= log.test_accuracy <= 1.0 and not log.warnings
    assert (tmp_path / "run" / "train_log.json").is_file()
