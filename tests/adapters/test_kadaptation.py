"""KAdaptation's PEViT structure option: its count, live gradient, dropout and exact fold."""

from __future__ import annotations

import pytest
import torch

import karst_deploy as kd
from karst_deploy.errors import InputError
from tests.cases import BACKBONE_CASES, images, randomize_adapters

PEVIT = kd.KAdaptationConfig(kernels=4, scale=0.5, structure="pevit")
WITH_BIAS = [c for c in BACKBONE_CASES if c.kwargs.get("qkv_bias", True)]


def test_pevit_count_on_a_vit_b_32_shaped_model_is_50_176():
    model = kd.create_model("vit_base_patch32_224", num_classes=10)
    config = kd.KAdaptationConfig(kernels=32, scale=160.0, structure="pevit")
    assert kd.count_trainable(kd.add_adapters(model, config)) == 50_176
    paper = kd.add_adapters(
        kd.create_model("vit_base_patch32_224", num_classes=10), kd.KAdaptationConfig()
    )
    assert kd.count_trainable(paper) == 69_632


@pytest.mark.parametrize("backbone", WITH_BIAS, ids=lambda c: c.id)
def test_pevit_merges_exactly_into_the_plain_backbone(backbone):
    base = backbone.build().double().eval()
    model = randomize_adapters(kd.add_adapters(backbone.build(), PEVIT)).double().eval()
    merged = kd.merge(model)
    x = images(backbone).double()
    with torch.no_grad():
        assert (merged(x) - model(x)).abs().max() <= 1e-10
        assert (merged(x) - base(x)).abs().max() > 1e-3
    assert {k: v.shape for k, v in merged.state_dict().items()} == {
        k: v.shape for k, v in base.state_dict().items()
    }


def test_pevit_has_a_live_gradient_and_dropout_in_training(tiny_case):
    model = kd.add_adapters(tiny_case.build(), PEVIT).train()
    x = images(tiny_case)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), tiny_case.build()(x))  # ΔW = 0, bias 0 at start
    model.train()
    model(x).square().sum().backward()
    layer = model.blocks[0].attn.qkv.kadaptation
    assert layer.v_q.grad.abs().sum() > 0 and layer.v_v.grad.abs().sum() > 0
    assert layer.bias.grad.abs().sum() > 0
    randomize_adapters(model)
    qkv, x2 = model.blocks[0].attn.qkv, torch.randn(2, 5, 192)
    assert not torch.equal(qkv(x2), qkv(x2))  # a fresh dropout mask on ΔW each call
    model.eval()
    assert torch.equal(qkv(x2), qkv(x2))


def test_pevit_refuses_a_qkv_without_bias():
    case = next(c for c in BACKBONE_CASES if c.id == "vit-384-noqkvbias")
    with pytest.raises(InputError, match="no bias"):
        kd.add_adapters(case.build(), PEVIT)
