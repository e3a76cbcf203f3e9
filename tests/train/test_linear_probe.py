"""`--method linear`: a head-only adapter that saves, loads and merges like every other method."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import karst_deploy as kd
from karst_deploy.train import train_adapters
from tests.train.tiny import tiny_checkpoint, tiny_config


def test_a_linear_probe_is_a_head_only_adapter(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    config = tiny_config(adapter=kd.LinearConfig(), checkpoint=str(checkpoint), epochs=2)
    train_adapters(config, tmp_path / "probe", progress=False)

    document = json.loads((tmp_path / "probe" / "adapter_config.json").read_text())
    assert document["method"] == "linear"
    assert document["trainable_extra"] == ["head.weight", "head.bias"]
    assert sorted(load_file(tmp_path / "probe" / "adapter.safetensors")) == sorted(
        document["trainable_extra"]
    )

    model = kd.load_adapted_model(tmp_path / "probe", checkpoint)
    merged = kd.merge(model)
    backbone = load_file(checkpoint)
    state = merged.state_dict()
    assert state.keys() == backbone.keys()
    for key, tensor in state.items():
        assert torch.equal(tensor, backbone[key]) != key.startswith("head."), key
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(images), model(images), rtol=0, atol=1e-6)
