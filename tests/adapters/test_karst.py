"""KARST specifics: factorization, the Kronecker formula, re-scaling placement, counts."""

from __future__ import annotations

import pytest
import torch

import karst_deploy as kd
from karst_deploy.adapters import factorization
from tests.cases import adapted


@pytest.mark.parametrize(
    ("dimension", "factor", "expected"),
    [
        (768, 8, (8, 96)),
        (2304, 8, (8, 288)),
        (3072, 8, (8, 384)),
        (127, 8, (1, 127)),
        (100, 8, (5, 20)),
        (300, 8, (6, 50)),
        (64, 8, (8, 8)),
        (768, -1, (24, 32)),
        (4, 8, (2, 2)),
    ],
)
def test_factorization_follows_lycoris(dimension, factor, expected):
    assert factorization(dimension, factor) == expected


def test_delta_weight_is_the_sum_of_kronecker_products(tiny_case):
    model = adapted(tiny_case, "karst-channel").double()
    layer = model.blocks[0].attn.qkv.karst
    expected = sum(
        torch.kron(layer.C[i], layer.A[i] @ layer.B[i]) for i in range(layer.C.shape[0])
    ) * (1.0 / 8)
    assert torch.allclose(layer.delta_weight(), expected, rtol=0, atol=1e-12)
    assert layer.delta_weight().shape == (576, 192)


def test_unfactorable_width_falls_back():
    from tests.cases import BACKBONE_CASES

    case = next(c for c in BACKBONE_CASES if c.id == "vit-100-unfactorable")
    model = kd.add_adapters(case.build(), kd.KarstConfig())
    qkv = model.blocks[0].attn.qkv.karst  # 100 -> 300
    assert (qkv.a, qkv.k, qkv.b, qkv.n) == (6, 50, 5, 20)
    assert qkv.C.shape == (8, 6, 5) and qkv.A.shape == (8, 50, 8) and qkv.B.shape == (8, 8, 20)


def test_scalar_rescale_sits_at_three_points_per_block(tiny_case):
    model = kd.add_adapters(tiny_case.build(), kd.KarstConfig(rescale="scalar"))
    block = model.blocks[0]
    assert block.attn.qkv.karst.s1 is None and block.mlp.fc1.karst.s1 is None
    proj, fc2 = block.attn.proj.karst, block.mlp.fc2.karst
    assert proj.t1.shape == proj.t2.shape == proj.s1.shape == proj.s2.shape == (1,)
    assert fc2.t1 is None and fc2.s1.shape == fc2.s2.shape == (1,)


def test_no_shift_where_there_is_no_bias():
    from tests.cases import BACKBONE_CASES

    case = next(c for c in BACKBONE_CASES if c.id == "vit-384-noqkvbias")
    model = kd.add_adapters(case.build(), kd.KarstConfig(rescale="channel"))
    qkv = model.blocks[0].attn.qkv
    assert qkv.bias is None and qkv.karst.s2 is None and qkv.karst.s1.shape == (1152,)
    merged = kd.merge(model)
    assert merged.blocks[0].attn.qkv.bias is None


@pytest.mark.parametrize(("rescale", "expected"), [("scalar", 1_204_296), ("channel", 1_370_112)])
def test_vit_base_parameter_counts_match_methods_md(rescale, expected):
    model = kd.add_adapters(
        kd.create_model("vit_base_patch16_224"), kd.KarstConfig(rescale=rescale)
    )
    assert kd.count_trainable(model) == expected
    assert kd.count_trainable(model, include_head=True) == expected + 768 * 1000 + 1000


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(rank=0), "rank"),
        (dict(rescale="vector"), "rescale"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(targets=()), "targets"),
        (dict(kernels=True), "kernels"),
    ],
)
def test_bad_config_values_are_named(kwargs, key):
    with pytest.raises(kd.KarstDeployError, match=f"'{key}'"):
        kd.KarstConfig(**kwargs)
