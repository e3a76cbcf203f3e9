"""Backbone creation and local checkpoint loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import karst_deploy as kd
from karst_deploy.errors import CheckpointError, InputError

TINY = dict(img_size=32, patch_size=8, depth=2)


def _tiny(num_classes=10, **extra):
    return kd.create_model("vit_tiny_patch16_224", num_classes=num_classes, **TINY, **extra)


def _distinct(model, seed):
    """`model` with weights no fresh model has (create_model's random init is seeded)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_init_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    assert _same_weights(_tiny(), _tiny())
    assert torch.equal(torch.rand(3), expected_next)


def test_models_are_exportable_and_described():
    model = _tiny()
    assert model.blocks[0].attn.fused_attn is False  # exportable=True
    spec = kd.models.backbone_spec(model)
    assert (spec.name, spec.num_classes, spec.img_size) == ("vit_tiny_patch16_224", 10, 32)
    assert spec.model_kwargs == {"patch_size": 8, "depth": 2}
    assert spec.checkpoint_sha256 is None


@pytest.mark.parametrize(
    "layout", ["safetensors", "plain.pth", "state_dict.pth", "model.pt", "module.pth"]
)
def test_checkpoint_layouts_load(layout, tmp_path):
    source = _distinct(_tiny(), 3)
    state = source.state_dict()
    path = tmp_path / f"ckpt.{layout.rsplit('.', 1)[-1]}"
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif layout == "state_dict.pth":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif layout == "model.pt":
        torch.save({"model": state}, path)
    elif layout == "module.pth":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    loaded = _tiny(checkpoint=path)
    assert _same_weights(source, loaded)
    assert len(kd.models.backbone_spec(loaded).checkpoint_sha256) == 64


def _write_google_vit_npz(model, path):
    """Write `model` in Google's ViT .npz layout (the inverse of timm's _load_weights)."""
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": model.patch_embed.proj.weight.permute(2, 3, 1, 0),
        "embedding/bias": model.patch_embed.proj.bias,
        "cls": model.cls_token,
        "Transformer/posembed_input/pos_embedding": model.pos_embed,
        "Transformer/encoder_norm/scale": model.norm.weight,
        "Transformer/encoder_norm/bias": model.norm.bias,
        "head/kernel": model.head.weight.t(),
        "head/bias": model.head.bias,
    }
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            rows = slice(j * d, (j + 1) * d)
            w[f"{mha}{name}/kernel"] = block.attn.qkv.weight[rows].t().reshape(d, heads, -1)
            w[f"{mha}{name}/bias"] = block.attn.qkv.bias[rows].reshape(heads, -1)
        w[f"{mha}out/kernel"] = block.attn.proj.weight.reshape(d, heads, -1).permute(1, 2, 0)
        w[f"{mha}out/bias"] = block.attn.proj.bias
        for k, norm in ((0, block.norm1), (2, block.norm2)):
            w[f"{p}LayerNorm_{k}/scale"], w[f"{p}LayerNorm_{k}/bias"] = norm.weight, norm.bias
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = fc.weight.t()
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = fc.bias
    np.savez(path, **{k: v.detach().numpy() for k, v in w.items()})


def test_google_vit_npz_loads(tmp_path):
    source = _distinct(_tiny(), 4)
    _write_google_vit_npz(source, tmp_path / "vit.npz")
    loaded = _tiny(checkpoint=tmp_path / "vit.npz")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source(x), atol=1e-5)


def test_npz_that_is_not_a_vit_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="Google ViT"):
        _tiny(checkpoint=tmp_path / "other.npz")


def test_new_head_is_kept_fresh_when_num_classes_is_given(tmp_path):
    source = _distinct(_tiny(num_classes=1000), 5)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "in1k.safetensors"
    )
    model = _tiny(num_classes=10, checkpoint=tmp_path / "in1k.safetensors")
    assert model.head.weight.shape == (10, 192)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _tiny(checkpoint=tmp_path / "nope.safetensors")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"definitely not a pickle")
    with pytest.raises(CheckpointError, match="could not be read"):
        _tiny(checkpoint=tmp_path / "junk.pth")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="suffix"):
        _tiny(checkpoint=tmp_path / "x.txt")


def test_shape_mismatch_names_the_key(tmp_path):
    other = kd.create_model("vit_small_patch16_224", num_classes=10, **TINY)
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "s.safetensors"
    )
    with pytest.raises(CheckpointError, match=r"key '.*' has shape .*384"):
        _tiny(checkpoint=tmp_path / "s.safetensors")


def test_unknown_backbone_suggests_names():
    with pytest.raises(InputError, match="vit_tiny_patch16_224"):
        kd.create_model("vit_tiny_patch16_22")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"checkpoint_path": "/tmp/w.pth"}, r"'model_kwargs\.checkpoint_path' is refused"),
        ({"pretrained_cfg_overlay": {"file": "/tmp/w.pth"}}, r"pretrained_cfg_overlay' is refused"),
        ({"cache_dir": "/tmp"}, r"'model_kwargs\.cache_dir' is refused"),
        ({"norm_layer": "torch.nn.Identity"}, r"'model_kwargs\.norm_layer' is refused"),
        ({"depth": 100_000}, r"'model_kwargs\.depth' is 100000; expected an integer in \[1, 64\]"),
        ({"mlp_ratio": float("nan")}, r"'model_kwargs\.mlp_ratio' is nan"),
        ({"qkv_bias": "yes"}, r"'model_kwargs\.qkv_bias' is 'yes'; expected true or false"),
        ({"depth": 64, "embed_dim": 8192, "num_heads": 64}, r"parameters, more than"),
        ({"patch_size": 64}, r"img_size 32 is smaller than its patch \(64\)"),
    ],
)
def test_timm_arguments_are_allow_listed_and_sizes_refused_before_building(extra, message):
    arguments = {**TINY, **extra}  # shape-only: a meta skeleton refuses before any memory
    with pytest.raises(InputError, match=message):
        kd.create_model("vit_tiny_patch16_224", num_classes=10, **arguments)
