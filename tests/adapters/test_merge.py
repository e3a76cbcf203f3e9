"""The merge contract, for every (method, backbone) case of the central table."""

from __future__ import annotations

import copy

import pytest
import torch

import karst_deploy as kd
from karst_deploy.adapters import AdaptedLinear, adapter_state_dict
from karst_deploy.errors import InputError, MergeError
from tests.cases import adapted, backbone_params, images, method_params


@method_params
@backbone_params
def test_fresh_adapters_leave_the_output_unchanged(method, backbone):
    from tests.cases import METHOD_CASES

    base = backbone.build()
    model = kd.add_adapters(backbone.build(), METHOD_CASES[method])
    x = images(backbone)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))


@method_params
@backbone_params
def test_merge_is_exact_in_float64(method, backbone):
    model = adapted(backbone, method).double()
    merged = kd.merge(model)
    x = images(backbone).double()
    with torch.no_grad():
        reference, folded = model(x), merged(x)
    relative = ((folded - reference).abs().max() / reference.abs().max()).item()
    assert relative <= 1e-10


@method_params
@backbone_params
def test_merge_in_float32_matches_and_differs_from_base(method, backbone):
    base = backbone.build()
    model = adapted(backbone, method)
    merged = kd.merge(model)
    x = images(backbone, batch=8)
    with torch.no_grad():
        reference, folded, plain = model(x), merged(x), base(x)
    bound = 1e-5 * max(1.0, reference.abs().max().item())
    assert (folded - reference).abs().max().item() <= bound
    assert torch.equal(folded.argmax(-1), reference.argmax(-1))
    # An identity adapter would pass the checks above; the merged network must be changed.
    assert (folded - plain).abs().max().item() > 1e-3


@method_params
@backbone_params
def test_merged_model_is_the_plain_backbone(method, backbone):
    base = backbone.build()
    model = adapted(backbone, method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = kd.merge(model)
    assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
    assert kd.adapters.adapter_config(merged) is None
    expected = {k: v.shape for k, v in base.state_dict().items()}
    assert {k: v.shape for k, v in merged.state_dict().items()} == expected
    assert list(merged.state_dict()) == list(base.state_dict())
    # The input model is untouched and still adapted.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, AdaptedLinear) for m in model.modules())


@method_params
@backbone_params
def test_one_step_changes_only_adapter_and_head(method, backbone):
    model = adapted(backbone, method).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter_keys = set(adapter_state_dict(model))
    head = {n for n in trainable if n.startswith("head")}
    assert head and trainable == adapter_keys | head
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(images(backbone)).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert changed & adapter_keys, "no adapter parameter moved"


@method_params
def test_merge_happens_in_eval_semantics(method, tiny_case):
    model = adapted(tiny_case, method).train()
    first = kd.merge(model).state_dict()
    second = kd.merge(model).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not kd.merge(model).training


def test_non_finite_merge_names_the_layer(tiny_case):
    model = adapted(tiny_case, "lora")
    with torch.no_grad():
        model.blocks[1].mlp.fc1.lora.B.fill_(1e30)
        model.blocks[1].mlp.fc1.lora.A.fill_(1e30)
    with pytest.raises(MergeError, match=r"blocks\.1\.mlp\.fc1"):
        kd.merge(model)


def test_merge_refuses_a_plain_model(tiny_case):
    with pytest.raises(InputError, match="plain backbone"):
        kd.merge(tiny_case.build())


def test_adapters_cannot_be_stacked(tiny_case):
    model = adapted(tiny_case, "lora")
    with pytest.raises(InputError, match="already carries adapters"):
        kd.add_adapters(model, kd.KarstConfig())


def test_kadaptation_slow_weights_are_shared_and_stored_once(tiny_case):
    model = adapted(tiny_case, "kadaptation")
    keys = adapter_state_dict(model)
    assert "kadaptation.A" in keys
    assert not any(k.endswith(".kadaptation.A") for k in keys)
    layers = [m for m in model.modules() if isinstance(m, AdaptedLinear)]
    assert len(layers) == 2
    assert layers[0].adapter._slow[0] is layers[1].adapter._slow[0] is model.kadaptation
    # Deep copies keep the sharing (merge relies on it).
    clone = copy.deepcopy(model)
    clone_layers = [m for m in clone.modules() if isinstance(m, AdaptedLinear)]
    assert clone_layers[0].adapter._slow[0] is clone.kadaptation


def test_kadaptation_has_a_live_gradient_at_initialisation(tiny_case):
    model = kd.add_adapters(tiny_case.build(), kd.KAdaptationConfig(kernels=4)).train()
    model(images(tiny_case)).logsumexp(-1).mean().backward()
    grad = model.blocks[0].attn.qkv.kadaptation.v_q.grad
    assert grad is not None and grad.abs().max() > 0


def test_kadaptation_updates_only_q_and_v_rows(tiny_case):
    model = adapted(tiny_case, "kadaptation")
    delta = model.blocks[0].attn.qkv.adapter.delta_weight()
    width = 192
    assert delta[:width].abs().max() > 0
    assert torch.equal(delta[width : 2 * width], torch.zeros_like(delta[width : 2 * width]))
    assert delta[2 * width :].abs().max() > 0
    assert not torch.allclose(delta[:width], delta[2 * width :])
