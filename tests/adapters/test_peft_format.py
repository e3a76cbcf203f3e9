"""Hugging Face PEFT directories: our reading and fold against PEFT itself, and refusals.

Every adapter here is made by PEFT (`get_peft_model`, random non-zero weights) and saved by
its `save_pretrained`; PEFT's `PeftModel` forward and `merge_and_unload` are the reference.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import karst_deploy as kd
from karst_deploy.adapters.peft_format import (
    PeftDirectory,
    build_backbone,
    is_peft_directory,
    load_peft_model,
    peft_reference_model,
)
from karst_deploy.compare import TOLERANCES, compare_logits
from karst_deploy.errors import AdapterFileError, InputError
from tests.cases import (
    PEFT_BACKBONES,
    images,
    peft_adapter,
    peft_backbone_args,
    peft_backbone_params,
    peft_params,
)

pytest.importorskip("peft", reason="the PEFT tests need Hugging Face PEFT (the test extra)")

F64_TOLERANCE = 1e-10  # relative to max(1, |reference|)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    """PEFT directories by (backbone, case), each made once per module."""
    root = tmp_path_factory.mktemp("peft")

    @functools.cache
    def make(backbone, case):
        return peft_adapter(backbone, case, root / f"{backbone.id}-{case}")

    return make


def ours_and_peft(backbone, directory):
    ours = load_peft_model(directory, backbone.name, **peft_backbone_args(backbone))
    reference = peft_reference_model(
        directory, build_backbone(directory, backbone.name, **peft_backbone_args(backbone))
    )
    return ours, reference


def assert_close(candidate, reference, tolerance):
    scale = max(1.0, reference.abs().max().item())
    assert (candidate - reference).abs().max().item() <= tolerance * scale


@peft_backbone_params
@peft_params
@torch.no_grad()
def test_unmerged_and_merged_equal_peft(backbone, peft_case, adapter_dirs):
    directory = adapter_dirs(backbone, peft_case)
    assert is_peft_directory(directory)
    ours, reference = ours_and_peft(backbone, directory)
    x = images(backbone, batch=3)

    # float64: our unmerged forward and merged weights equal PEFT's to 1e-10.
    ours64, reference64 = copy.deepcopy(ours).double(), copy.deepcopy(reference).double()
    out64 = reference64(x.double())
    assert_close(ours64(x.double()), out64, F64_TOLERANCE)
    merged64 = kd.merge(ours64)
    peft_merged = reference64.merge_and_unload().state_dict()
    base = backbone.build().double().state_dict()
    merged_state = merged64.state_dict()
    assert {k: v.shape for k, v in merged_state.items()} == {k: v.shape for k, v in base.items()}
    assert set(peft_merged) == set(merged_state)
    for key, value in peft_merged.items():
        assert_close(merged_state[key], value, F64_TOLERANCE)
    assert_close(merged64(x.double()), out64, F64_TOLERANCE)
    changed = [k for k in base if not torch.allclose(merged_state[k], base[k], atol=1e-3)]
    assert any(k.endswith(".weight") for k in changed), "the merged model equals the backbone"

    # float32 (the deployed dtype): unmerged and merged within the export tolerance of PEFT.
    expected = reference(x).numpy()
    for model in (ours, kd.merge(ours)):
        _, checks = compare_logits(expected, model(x).numpy(), TOLERANCES["fp32"])
        assert all(check.passed for check in checks), [c.detail for c in checks]


@torch.no_grad()
def test_layers_to_transform_adapts_only_those_layers(adapter_dirs):
    backbone = PEFT_BACKBONES[0]  # ViT, 2 blocks; the case adapts block 0's qkv only
    ours, _ = ours_and_peft(backbone, adapter_dirs(backbone, "lora-layers"))
    assert kd.adapters.adapter_config(ours).targets == ("blocks.0.attn.qkv",)


def test_num_classes_comes_from_the_stored_head(adapter_dirs, tmp_path):
    backbone = PEFT_BACKBONES[0]
    args = peft_backbone_args(backbone)
    args.pop("num_classes")  # timm's default (1000) differs from the stored head's 10
    model = load_peft_model(adapter_dirs(backbone, "lora"), backbone.name, **args)
    assert model.num_classes == backbone.kwargs["num_classes"]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(("vit-192", "dora"), id="vit-dora"),
        pytest.param(("swin", "lokr-decomposed"), id="swin-lokr"),
        pytest.param(("vit-192", "ia3"), id="vit-ia3"),
    ],
)
def test_merged_export_has_the_backbone_graph(case, adapter_dirs, base_export, tmp_path):
    from karst_deploy.export import compare_structure, export_onnx
    from karst_deploy.onnx_file import read_provenance

    backbone = next(b for b in PEFT_BACKBONES if b.id == case[0])
    directory = adapter_dirs(backbone, case[1])
    args = peft_backbone_args(backbone)
    merged = export_onnx(
        tmp_path / "merged.onnx", adapter=directory, backbone=backbone.name, **args
    )
    structure = compare_structure(base_export(backbone).path, merged.path)
    assert structure.same, structure.to_dict()
    record = read_provenance(merged.path)
    assert record["method"] == "peft" and record["adapter_config"]["format"] == "peft"
    assert record["adapter_sha256"] == PeftDirectory(directory).sha256()


# ---------------------------------------------------------------- hostile directories


def _edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def _edit_tensors(directory, change):
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


QKV = "base_model.model.blocks.0.attn.qkv."


def _nan(tensors):
    tensors[QKV + "lora_A.weight"][0, 0] = float("nan")


def _bad_shape(tensors):
    tensors[QKV + "lora_A.weight"] = tensors[QKV + "lora_A.weight"][:, :-1].contiguous()


def _ghost_module(tensors):
    tensors["base_model.model.blocks.7.attn.qkv.lora_A.weight"] = torch.zeros(4, 192)


def _missing(tensors):
    del tensors[QKV + "lora_B.weight"]


def _integers(tensors):
    tensors[QKV + "lora_B.weight"] = tensors[QKV + "lora_B.weight"].to(torch.int32)


def _nested_adapter(directory):
    shutil.copytree(directory, directory / "second")


def _pickle_only(directory):
    (directory / "adapter_model.safetensors").rename(directory / "adapter_model.bin")


# (what is done to a valid LoRA directory on the ViT, text the refusal must contain)
def _config(**changes):
    return lambda directory: _edit_config(directory, **changes)


HOSTILE = {
    "unknown-peft-type": (_config(peft_type="BOFT"), "'peft_type'"),
    "unsupported-option": (_config(layer_replication=[[0, 1]]), "'layer_replication'"),
    "init-rewrites-backbone": (_config(init_lora_weights="pissa"), "'init_lora_weights'"),
    "task-type": (_config(task_type="SEQ_CLS"), "'task_type'"),
    "conv2d-target": (_config(target_modules=["qkv", "proj"]), "patch_embed.proj"),
    "no-target-matches": (_config(target_modules=["q_proj"]), "'target_modules'"),
    "bad-regex": (_config(target_modules="(qkv"), "'target_modules'"),
    "rank-pattern-vs-tensors": (_config(rank_pattern={"qkv": 8}), QKV + "lora_A.weight"),
    "huge-rank": (_config(r=10**9), "'r'"),
    "bad-modules-to-save": (_config(modules_to_save=["head("]), "'modules_to_save'"),
    "other-backbone-family": (
        _config(auto_mapping={"base_model_class": "SwinTransformer"}),
        "'auto_mapping.base_model_class'",
    ),
    "nan": (lambda d: _edit_tensors(d, _nan), QKV + "lora_A.weight"),
    "shape": (lambda d: _edit_tensors(d, _bad_shape), QKV + "lora_A.weight"),
    "module-does-not-exist": (lambda d: _edit_tensors(d, _ghost_module), "blocks.7.attn.qkv"),
    "missing-tensor": (lambda d: _edit_tensors(d, _missing), QKV + "lora_B.weight"),
    "integer-tensor": (lambda d: _edit_tensors(d, _integers), QKV + "lora_B.weight"),
    "several-adapters": (_nested_adapter, "second"),
    "pickle-only": (_pickle_only, "adapter_model.bin"),
}  # fmt: skip


@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_hostile_directories_are_refused_naming_the_key(hostile, adapter_dirs, tmp_path):
    backbone = PEFT_BACKBONES[0]
    directory = tmp_path / "adapter"
    shutil.copytree(adapter_dirs(backbone, "lora"), directory)
    tamper, named = HOSTILE[hostile]
    tamper(directory)
    with pytest.raises(InputError) as error:
        load_peft_model(directory, backbone.name, **peft_backbone_args(backbone))
    assert named in str(error.value)


def test_fan_in_fan_out_is_ignored_on_linear_layers_as_peft_does(adapter_dirs, tmp_path):
    """PEFT resets fan_in_fan_out to false on nn.Linear (with a warning); so do we."""
    backbone = PEFT_BACKBONES[0]
    directory = tmp_path / "adapter"
    shutil.copytree(adapter_dirs(backbone, "lora"), directory)
    _edit_config(directory, fan_in_fan_out=True)
    ours, reference = ours_and_peft(backbone, directory)
    x = images(backbone)
    with torch.no_grad():
        assert_close(ours(x), reference(x), 1e-5)


def test_a_directory_of_ours_is_not_a_peft_directory(tmp_path):
    from tests.cases import adapted

    kd.save_adapters(adapted(PEFT_BACKBONES[0], "lora"), tmp_path / "ours")
    assert not is_peft_directory(tmp_path / "ours")
    with pytest.raises(AdapterFileError, match="peft_type"):
        PeftDirectory(tmp_path / "ours")


def test_unmerged_export_runs_our_reading_and_rebuilds_for_the_torch_runner(adapter_dirs, tmp_path):
    from karst_deploy.adapters.base import adapted_layers
    from karst_deploy.adapters.storage import architecture_from_onnx
    from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from karst_deploy.export import export_onnx

    backbone = PEFT_BACKBONES[0]
    directory = adapter_dirs(backbone, "dora")
    args = peft_backbone_args(backbone)
    path = tmp_path / "unmerged.onnx"
    export_onnx(path, adapter=directory, backbone=backbone.name, unmerged=True, **args)
    ours, _ = ours_and_peft(backbone, directory)
    x = images(backbone)
    with torch.no_grad(), OnnxRuntimeRunner(path) as runner:
        _, checks = compare_logits(ours(x).numpy(), runner.infer(x.numpy()), TOLERANCES["fp32"])
    assert all(check.passed for check in checks), [c.detail for c in checks]
    rebuilt = architecture_from_onnx(path)  # bench --runner torch: the same arithmetic
    assert [p for p, _ in adapted_layers(rebuilt)] == [p for p, _ in adapted_layers(ours)]
