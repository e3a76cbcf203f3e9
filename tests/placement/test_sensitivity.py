"""SPT sensitivity: the criterion against an independent computation, and the scores file."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

import karst_deploy as kd
from karst_deploy.data import open_images
from karst_deploy.errors import InputError, OutputExistsError
from karst_deploy.placement import (
    check_scores_fit,
    compute_sensitivity,
    load_scores,
    save_scores,
)
from tests.cases import BACKBONE_CASES, adapted


@pytest.fixture(scope="module")
def digits():
    return open_images("digits", "train", 32)


@pytest.fixture(scope="module")
def sensitivity(digits):
    model = BACKBONE_CASES[0].build()
    return compute_sensitivity(
        model, digits, batches=2, batch_size=8, shuffle_seed=3, drop_path=0.0
    )


def test_sensitivity_equals_an_independent_computation(sensitivity, digits, tiny_case):
    """Σ over batches of (∂ mean-CE / ∂W)², recomputed with torch.func on the documented batches
    (the first K·B images of the --shuffle-seed permutation), in float64."""
    model = copy.deepcopy(tiny_case.build()).double().train()
    params = {name: p.detach() for name, p in model.named_parameters()}
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(3))[:16]

    def loss(parameters, images, labels):
        return F.cross_entropy(torch.func.functional_call(model, parameters, (images,)), labels)

    expected = {name: torch.zeros_like(params[name]) for name in sensitivity.scores}
    for chunk in order.split(8):
        images = torch.stack([digits[int(i)][0] for i in chunk]).double()
        labels = torch.tensor([digits[int(i)][1] for i in chunk])
        grads = torch.func.grad(loss)(params, images, labels)
        for name in expected:
            expected[name] += grads[name] ** 2
    # The official candidates: target weights and biases, every LayerNorm (not the head).
    assert sorted(sensitivity.scores) == sorted(
        [
            f"blocks.{b}.{m}.{leaf}"
            for b in (0, 1)
            for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")
            for leaf in ("weight", "bias")
        ]
        + ["norm.weight", "norm.bias"]
    )
    for name, score in sensitivity.scores.items():
        assert score.dtype == torch.float32 and score.abs().max() > 0
        # float32 gradients against float64 ones: entries near zero carry cancellation error.
        atol = 1e-5 * expected[name].max().item()
        torch.testing.assert_close(score.double(), expected[name], rtol=1e-3, atol=atol)
    assert sensitivity.metadata["images"] == 16 and sensitivity.metadata["batches"] == 2


def test_default_batches_are_the_first_images_in_order_with_drop_path_active(digits, tiny_case):
    """Official rule: the first K·B training images, drop-path on as in training."""
    images = torch.stack([digits[i][0] for i in range(16)])
    labels = torch.tensor([digits[i][1] for i in range(16)])
    first = torch.utils.data.TensorDataset(images, labels)
    in_order = compute_sensitivity(tiny_case.build(), digits, batches=2, batch_size=8, drop_path=0)
    expected = compute_sensitivity(tiny_case.build(), first, batches=2, batch_size=8, drop_path=0)
    for name, score in in_order.scores.items():
        assert torch.equal(score, expected.scores[name])
    assert in_order.metadata["shuffle_seed"] is None and in_order.metadata["drop_path"] == 0
    dropped = compute_sensitivity(tiny_case.build(), digits, batches=2, batch_size=8, seed=1)
    again = compute_sensitivity(tiny_case.build(), digits, batches=2, batch_size=8, seed=1)
    assert dropped.metadata["drop_path"] == 0.1
    name = "blocks.1.mlp.fc2.weight"
    assert torch.equal(dropped.scores[name], again.scores[name])  # seeded draws
    assert not torch.equal(dropped.scores[name], in_order.scores[name])  # drop-path is active


def test_sensitivity_leaves_the_model_as_it_was(digits, tiny_case):
    model = tiny_case.build().eval()
    model.head.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compute_sensitivity(model, digits, batches=1, batch_size=4)
    assert not model.training and not model.head.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "head.weight")
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_sensitivity_refuses_adapted_models_and_too_many_classes(digits, tiny_case):
    with pytest.raises(InputError, match="plain backbone"):
        compute_sensitivity(adapted(tiny_case, "lora"), digits, batches=1)
    three_classes = BACKBONE_CASES[4].build()  # vit-100: a 3-class head, digits has 10
    with pytest.raises(InputError, match="10 classes but the model's head has 3"):
        compute_sensitivity(three_classes, open_images("digits", "train", 32), batches=1)


def test_scores_file_round_trip_and_refusals(sensitivity, tiny_case, tmp_path):
    path = save_scores(sensitivity, tmp_path / "scores.safetensors")
    loaded = load_scores(path)
    assert all(torch.equal(loaded.scores[k], v) for k, v in sensitivity.scores.items())
    assert loaded.metadata["backbone"]["name"] == "vit_tiny_patch16_224"
    assert loaded.metadata["data"] == "digits" and loaded.metadata["batch_size"] == 8
    check_scores_fit(loaded, tiny_case.build(), str(path))
    with pytest.raises(OutputExistsError):
        save_scores(sensitivity, path)
    with pytest.raises(InputError, match="computed on another backbone"):
        check_scores_fit(loaded, BACKBONE_CASES[1].build(), str(path))
    loaded.metadata["backbone"]["checkpoint_sha256"] = "ab" * 32
    with pytest.raises(InputError, match="checkpoint with sha256 abababababab"):
        check_scores_fit(loaded, tiny_case.build(), str(path))

    tensors = load_file(path)
    key = next(iter(tensors))
    tensors[key].view(-1)[0] = -1.0
    save_file(tensors, tmp_path / "negative.safetensors", metadata=_header(path))
    with pytest.raises(InputError, match=f"'{key}' holds negative"):
        load_scores(tmp_path / "negative.safetensors")
    save_file(load_file(path), tmp_path / "plain.safetensors")
    with pytest.raises(InputError, match="not a karst-deploy sensitivity file"):
        load_scores(tmp_path / "plain.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_scores(tmp_path / "cut.safetensors")


def _header(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_spt_on_real_sensitivity_merges_exactly(sensitivity, tiny_case):
    """End to end on real gradients: allocate, train one step, merge."""
    from karst_deploy.placement import add_spt_adapters

    model = add_spt_adapters(tiny_case.build(), sensitivity.scores, 3_000)
    assert kd.count_trainable(model) == model.karst_deploy_adapter_config.placement.parameters
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.05)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (kd.merge(model)(x) - model(x)).abs().max() <= 1e-5 * max(1, model(x).abs().max())
