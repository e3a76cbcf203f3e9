"""KAdaptation's PEViT structure option: its count, live gradient, dropout, bias and CLI option.

Merging (float64 ≤ 1e-10, merged ≠ base, the plain backbone's keys) and export run for it in
the method × backbone table (``kadaptation-pevit`` in tests/cases.py).
"""

from __future__ import annotations

import json

import pytest
import torch

import karst_deploy as kd
from karst_deploy.errors import InputError
from tests.cases import BACKBONE_CASES, METHOD_CASES, images, randomize_adapters
from tests.cli_helpers import run_cli
from tests.train.tiny import TINY_BACKBONE, TINY_KWARGS

PEVIT = METHOD_CASES["kadaptation-pevit"]


def _vit_b_32(config: kd.KAdaptationConfig) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no ViT-B weights are drawn
        return kd.add_adapters(kd.create_model("vit_base_patch32_224", num_classes=10), config)


def test_pevit_count_on_a_vit_b_32_shaped_model_is_50_176():
    config = kd.KAdaptationConfig(kernels=32, structure="pevit")
    assert config.scale == 160.0  # α / r · 5 = 128 / 4 · 5, PEViT's default
    model = _vit_b_32(config)
    assert kd.count_trainable(model) == 50_176
    # 12 layers × (u, v for q and v: 4·768, bias 768) + rank-1 slow weights l, r for q and v.
    layer = model.blocks[0].attn.qkv.kadaptation
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        "bias": (768,),
        **{f"{f}_{p}": (32, 24) for f in "uv" for p in "qv"},
    }
    assert {n: tuple(p.shape) for n, p in model.kadaptation.named_parameters()} == {
        f"{s}_{p}": (32, 32) for s in "lr" for p in "qv"
    }
    assert kd.count_trainable(_vit_b_32(kd.KAdaptationConfig())) == 69_632  # the paper form
    assert kd.KAdaptationConfig().scale == 1.0


def test_pevit_has_a_live_gradient_at_initialisation(tiny_case):
    model = kd.add_adapters(tiny_case.build(), PEVIT).train()
    x = images(tiny_case)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), tiny_case.build()(x))  # ΔW = 0, bias 0 at start
    model.train()
    model(x).square().sum().backward()
    layer = model.blocks[0].attn.qkv.kadaptation
    assert layer.v_q.grad.abs().sum() > 0 and layer.v_v.grad.abs().sum() > 0
    assert layer.bias.grad.abs().sum() > 0


def test_pevit_drops_half_the_kronecker_weight_in_training_only_and_never_the_bias(tiny_case):
    model = randomize_adapters(kd.add_adapters(tiny_case.build(), PEVIT)).double()
    qkv = model.blocks[0].attn.qkv
    layer, width = qkv.kadaptation, qkv.in_features
    # One call on the basis vectors and on 0 reads off the weight and bias it used (one mask).
    probe = torch.cat([torch.eye(width), torch.zeros(1, width)]).double()
    weight0, bias0 = qkv.weight.T.double(), qkv.bias.double()
    delta = layer.delta_weight(torch.float64).T
    bias_rows = torch.cat([layer.bias, torch.zeros_like(layer.bias), layer.bias]).double()

    qkv.train()
    out = qkv(probe)
    assert torch.allclose(out[-1], bias0 + bias_rows, atol=1e-12)  # the bias is never dropped
    used = out[:-1] - out[-1] - weight0
    kept = used.abs() > 1e-9  # a dropped entry leaves only rounding of (w + b) − b − w
    assert torch.allclose(used[kept], 2 * delta[kept], atol=1e-12)  # inverted dropout, p = 0.5
    assert 0.47 < kept[:, delta.any(0)].double().mean() < 0.53
    assert not kept[:, width : 2 * width].any()  # k: no update at all

    qkv.eval()
    out = qkv(probe)
    assert torch.allclose(out[:-1] - out[-1], weight0 + delta, atol=1e-12)


def test_pevit_refuses_a_qkv_without_bias():
    case = next(c for c in BACKBONE_CASES if c.id == "vit-384-noqkvbias")
    with pytest.raises(InputError, match="no bias"):
        kd.add_adapters(case.build(), PEVIT)


def test_train_structure_option_is_recorded_with_its_default_scale(tmp_path):
    arguments = ["train", "--backbone", TINY_BACKBONE, "--model-kwargs", json.dumps(TINY_KWARGS)]
    arguments += ["--data", "digits:0-2", "--epochs", "1", "--warmup-epochs", "0"]
    method = ["--method", "kadaptation", "--kernels", "4", "--structure", "pevit"]
    result = run_cli(*arguments, *method, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert (document["structure"], document["scale"]) == ("pevit", 160.0)
    model = kd.load_adapted_model(tmp_path / "run")
    assert model.blocks[0].attn.qkv.kadaptation.bias.abs().sum() > 0  # trained, and stored

    refused = run_cli(
        *arguments, "--method", "lora", "--structure", "pevit", "--out", tmp_path / "x"
    )
    assert refused.returncode == 2 and "--structure" in refused.stderr
    assert not (tmp_path / "x").exists()
