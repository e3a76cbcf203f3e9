"""KARST specifics: factorization, the Kronecker formula, re-scaling placement, counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import karst_deploy as kd
from karst_deploy.adapters import AdaptedLinear, factorization
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


def test_split_qkv_delta_is_one_kronecker_product_per_q_k_v_block(tiny_case):
    """Official layout: C_i and B_i shared by q, k and v, one A_i per block (METHODS.md)."""
    model = adapted(tiny_case, "karst-channel").double()
    layer = model.blocks[0].attn.qkv.karst
    assert layer.A.shape == (8, 3, 24, 8) and layer.C.shape == (8, 8, 8)
    blocks = [
        sum(torch.kron(layer.C[i], layer.A[i, j] @ layer.B[i]) for i in range(8)) / 8
        for j in range(3)
    ]
    expected = torch.cat(blocks)
    assert layer.delta_weight().shape == (576, 192)
    assert torch.allclose(layer.delta_weight(), expected, rtol=0, atol=1e-12)
    # proj/fc1/fc2 are single products in both layouts
    fc1 = model.blocks[0].mlp.fc1.karst
    expected = sum(torch.kron(fc1.C[i], fc1.A[i] @ fc1.B[i]) for i in range(8)) / 8
    assert torch.allclose(fc1.delta_weight(), expected, rtol=0, atol=1e-12)


def test_fused_qkv_delta_is_one_product_over_the_fused_rows(tiny_case):
    model = adapted(tiny_case, "karst-fused").double()
    layer = model.blocks[0].attn.qkv.karst
    expected = sum(torch.kron(layer.C[i], layer.A[i] @ layer.B[i]) for i in range(8)) / 8
    assert layer.A.shape == (8, 72, 8)
    assert torch.allclose(layer.delta_weight(), expected, rtol=0, atol=1e-12)
    split = adapted(tiny_case, "karst-channel").double().blocks[0].attn.qkv.karst
    assert split.delta_weight().shape == layer.delta_weight().shape


@pytest.mark.parametrize("method", ["karst-channel", "karst-scalar", "karst-fused"])
def test_training_forward_and_gradients_equal_the_dense_formula(method):
    """`KroneckerLinear` (dense GEMM forward, factored factor gradients) against autograd
    through ``F.linear(x, W0 + ΔW)`` in float64: outputs and every gradient within 1e-10."""
    from karst_deploy.adapters.karst import KroneckerLinear
    from tests.cases import BACKBONE_CASES

    for case in BACKBONE_CASES:
        model = adapted(case, method).double()
        for path, module in model.named_modules():
            if not isinstance(module, AdaptedLinear):
                continue
            layer = module.karst
            with torch.no_grad():
                layer.B.normal_()  # B starts at zero: give every factor a live gradient
            x = torch.randn(11, module.in_features, dtype=torch.float64, requires_grad=True)
            probe = torch.randn(11, module.out_features, dtype=torch.float64)
            factors = (x, layer.C, layer.A, layer.B)
            dense = torch.nn.functional.linear(x, module.weight + layer.delta_weight())
            trained = KroneckerLinear.apply(x, module.weight, layer.C, layer.A, layer.B, layer)
            assert (trained - dense).abs().max() <= 1e-10, (case.id, path)
            expected = torch.autograd.grad((dense * probe).sum(), factors)
            actual = torch.autograd.grad((trained * probe).sum(), factors)
            for name, want, got in zip("xCAB", expected, actual, strict=True):
                assert got.shape == want.shape, (case.id, path, name)
                assert (got - want).abs().max() <= 1e-10 * max(1.0, want.abs().max()), (
                    case.id,
                    path,
                    name,
                )
            assert not torch.equal(trained, torch.nn.functional.linear(x, module.weight))


class TokenWeightProducts(TorchDispatchMode):
    """Records the shapes of tensors computed from a token-carrying input (``tokens`` rows)."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(self.tokens in t.shape for t in tensors):
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor):
                    self.shapes.add(tuple(tensor.shape))
        return out


@pytest.mark.parametrize("layout", ["split", "fused"])
def test_training_computes_no_dense_weight_gradient(layout):
    """On a ViT-B qkv, no op fed by the tokens produces an out×in tensor: ΔW is formed from
    the factors alone, and backward never forms the dense weight gradient ``Gᵀ x``."""
    from karst_deploy.adapters.karst import KarstLayer

    qkv = torch.nn.Linear(768, 2304).requires_grad_(False)
    layer = KarstLayer("blocks.0.attn.qkv", qkv, kd.KarstConfig(qkv_layout=layout))
    assert layer.blocks == (3 if layout == "split" else 1)
    tokens = 29  # a size no weight dimension has
    x = torch.randn(tokens, 768, requires_grad=True)
    dense = {(2304, 768), (768, 2304)}
    with TokenWeightProducts(tokens) as products:
        layer.adapted_forward(x, qkv.weight, qkv.bias).square().sum().backward()
    assert products.shapes and not dense & products.shapes
    assert layer.A.grad is not None and x.grad is not None and qkv.weight.grad is None
    with TokenWeightProducts(tokens) as products:  # the check can fail: autograd forms one
        torch.nn.functional.linear(x, qkv.weight + layer.delta_weight()).sum().backward()
    assert dense & products.shapes


def test_small_layers_train_through_the_dense_weight_gradient():
    """On narrow layers (the demo's 96-wide ViT) autograd's dense weight gradient is the
    cheaper arithmetic and is used; ViT-B's layers take the factored one
    (`benchmarks/karst_layer_arithmetic.py` measures where each is cheaper)."""
    from karst_deploy.adapters.karst import KarstLayer

    config = kd.KarstConfig()
    for path, width, out in [("attn.qkv", 768, 2304), ("attn.proj", 768, 768), ("fc2", 3072, 768)]:
        assert KarstLayer(path, torch.nn.Linear(width, out), config).factored_gradients, path
    qkv = torch.nn.Linear(96, 288)
    layer = KarstLayer("blocks.0.attn.qkv", qkv, config)
    assert not layer.factored_gradients
    tokens = 29
    x = torch.randn(tokens, 96)
    with TokenWeightProducts(tokens) as products:
        layer.adapted_forward(x, qkv.weight.detach(), qkv.bias.detach()).sum().backward()
    assert (288, 96) in products.shapes and layer.C.grad is not None


def test_training_under_autocast_keeps_the_parameter_dtypes(tiny_case):
    """Mixed precision (bf16 autocast): gradients come back in float32, close to fp32's."""
    qkv = adapted(tiny_case, "karst-channel").blocks[0].attn.qkv
    with torch.no_grad():
        qkv.karst.B.normal_()
    x = torch.randn(13, qkv.in_features)
    reference = torch.autograd.grad(qkv(x).square().mean(), qkv.karst.B)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = qkv(x).float().square().mean()
    mixed = torch.autograd.grad(loss, qkv.karst.B)[0]
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, reference, rtol=0.05, atol=0.05 * reference.abs().max())


def test_init_is_kaiming_uniform_with_fan_in_k():
    """A stored as (r, k) in the official code, so its bound is 1/√k; C's is 1/√b; B = 0."""
    from tests.cases import BACKBONE_CASES

    case = next(c for c in BACKBONE_CASES if c.id == "deit-768")
    torch.manual_seed(3)
    model = kd.add_adapters(case.build(), kd.KarstConfig())
    for module in (model.blocks[0].attn.qkv, model.blocks[0].mlp.fc1, model.blocks[0].mlp.fc2):
        layer = module.karst
        for tensor, fan_in in ((layer.A, layer.k), (layer.C, layer.b)):
            bound = 1 / fan_in**0.5
            assert float(tensor.detach().abs().max()) <= bound
            # uniform on [-bound, bound]: std bound/√3 (within sampling error)
            assert abs(float(tensor.detach().std()) / (bound / 3**0.5) - 1) < 0.05
        assert float(layer.A.detach().abs().max()) < 1 / layer.B.shape[1] ** 0.5  # not fan-in r
        assert not layer.B.any()


def test_unfactorable_width_falls_back():
    from tests.cases import BACKBONE_CASES

    case = next(c for c in BACKBONE_CASES if c.id == "vit-100-unfactorable")
    model = kd.add_adapters(case.build(), kd.KarstConfig(qkv_layout="fused"))
    qkv = model.blocks[0].attn.qkv.karst  # 100 -> 300
    assert (qkv.a, qkv.k, qkv.b, qkv.n) == (6, 50, 5, 20)
    assert qkv.C.shape == (8, 6, 5) and qkv.A.shape == (8, 50, 8) and qkv.B.shape == (8, 8, 20)
    split = kd.add_adapters(case.build(), kd.KarstConfig()).blocks[0].attn.qkv.karst
    assert (split.a, split.k, split.b, split.n) == (5, 20, 5, 20)
    assert split.A.shape == (8, 3, 20, 8)


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


@pytest.mark.parametrize("layout", ["split", "fused"])
@pytest.mark.parametrize(("rescale", "expected"), [("scalar", 1_204_296), ("channel", 1_370_112)])
def test_vit_base_parameter_counts_match_methods_md(rescale, expected, layout):
    model = kd.add_adapters(
        kd.create_model("vit_base_patch16_224"), kd.KarstConfig(rescale=rescale, qkv_layout=layout)
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
        (dict(qkv_layout="interleaved"), "qkv_layout"),
    ],
)
def test_bad_config_values_are_named(kwargs, key):
    with pytest.raises(kd.KarstDeployError, match=f"'{key}'"):
        kd.KarstConfig(**kwargs)
