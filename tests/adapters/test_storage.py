"""The version-1 adapter directory: round trips, and refusal of hostile files."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import karst_deploy as kd
from karst_deploy.adapters import adapter_state_dict
from karst_deploy.errors import AdapterFileError, OutputExistsError, with_flags
from tests.cases import BACKBONE_CASES, adapted, backbone_params, images, method_params


@method_params
@backbone_params
def test_save_load_round_trip_is_bit_exact(method, backbone, tmp_path):
    model = adapted(backbone, method)
    kd.save_adapters(model, tmp_path / "adapter")
    loaded = kd.load_adapters(backbone.build(), tmp_path / "adapter").eval()
    original, restored = model.state_dict(), loaded.state_dict()
    assert list(original) == list(restored)
    assert all(torch.equal(original[k], restored[k]) for k in original)
    with torch.no_grad():
        assert torch.equal(loaded(images(backbone)), model(images(backbone)))


def test_file_layout_follows_methods_md(tiny_case, tmp_path):
    model = adapted(tiny_case, "karst-scalar")
    kd.save_adapters(model, tmp_path / "a")
    document = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert document["format"] == "karst-deploy.adapter" and document["version"] == 1
    assert document["method"] == "karst" and document["rescale"] == "scalar"
    assert {k: document[k] for k in ("factor", "rank", "kernels", "alpha")} == dict(
        factor=8, rank=8, kernels=8, alpha=1.0
    )
    assert document["backbone"]["name"] == "vit_tiny_patch16_224"
    assert document["backbone"]["num_classes"] == 10 and document["backbone"]["img_size"] == 32
    assert document["trainable_extra"] == ["head.weight", "head.bias"]
    tensors = load_file(tmp_path / "a" / "adapter.safetensors")
    assert tensors["blocks.0.attn.qkv.karst.C"].shape == (8, 8, 8)
    assert document["qkv_layout"] == "split"
    assert tensors["blocks.0.attn.qkv.karst.A"].shape == (8, 3, 24, 8)
    assert tensors["blocks.0.attn.qkv.karst.B"].shape == (8, 8, 24)
    assert tensors["blocks.0.attn.proj.karst.t1"].shape == (1,)
    assert "head.weight" in tensors


def test_save_never_overwrites_without_force(tiny_case, tmp_path):
    model = adapted(tiny_case, "lora")
    kd.save_adapters(model, tmp_path / "a")
    with pytest.raises(OutputExistsError, match="Pass force=True"):
        kd.save_adapters(model, tmp_path / "a")
    kd.save_adapters(adapted(tiny_case, "lora", seed=5), tmp_path / "a", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp leftovers


@pytest.fixture
def saved(tiny_case, tmp_path) -> Path:
    kd.save_adapters(adapted(tiny_case, "karst-channel"), tmp_path / "adapter")
    return tmp_path / "adapter"


def _edit_tensors(directory: Path, edit) -> None:
    path = directory / "adapter.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def _edit_config(directory: Path, edit) -> None:
    path = directory / "adapter_config.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


HOSTILE = {
    "missing key": (
        lambda d: _edit_tensors(d, lambda t: t.pop("blocks.1.mlp.fc2.karst.B")),
        r"'blocks\.1\.mlp\.fc2\.karst\.B' is missing",
    ),
    "extra key": (
        lambda d: _edit_tensors(
            d, lambda t: t.update({"blocks.0.attn.qkv.karst.Z": torch.ones(2)})
        ),
        r"unknown key 'blocks\.0\.attn\.qkv\.karst\.Z'",
    ),
    "wrong shape": (
        lambda d: _edit_tensors(
            d, lambda t: t.update({"blocks.0.mlp.fc1.karst.A": torch.zeros(8, 96, 4)})
        ),
        r"'blocks\.0\.mlp\.fc1\.karst\.A' has shape \(8, 96, 4\); expected \(8, 96, 8\)",
    ),
    "NaN value": (
        lambda d: _edit_tensors(
            d, lambda t: t["blocks.0.attn.proj.karst.s1"].__setitem__(3, float("nan"))
        ),
        r"'blocks\.0\.attn\.proj\.karst\.s1' holds NaN",
    ),
    "Inf value": (
        lambda d: _edit_tensors(d, lambda t: t["head.bias"].__setitem__(0, float("inf"))),
        r"'head\.bias' holds NaN or infinite",
    ),
    "integer tensor": (
        lambda d: _edit_tensors(
            d,
            lambda t: t.update(
                {"blocks.0.attn.qkv.karst.C": torch.zeros(8, 8, 8, dtype=torch.int32)}
            ),
        ),
        r"'blocks\.0\.attn\.qkv\.karst\.C' has dtype torch\.int32",
    ),
    "unknown method": (
        lambda d: _edit_config(d, lambda c: c.update(method="dora")),
        r"Unknown adapter method 'dora'",
    ),
    "unknown version": (
        lambda d: _edit_config(d, lambda c: c.update(version=2)),
        r"'version' is 2",
    ),
    "unknown hyper-parameter": (
        lambda d: _edit_config(d, lambda c: c.update(rnak=4)),
        r"unknown key 'rnak'",
    ),
    "bad hyper-parameter": (
        lambda d: _edit_config(d, lambda c: c.update(rank="eight")),
        r"'rank' is 'eight'",
    ),
    "another backbone": (
        lambda d: _edit_config(d, lambda c: c["backbone"].update(name="vit_small_patch16_224")),
        r"'backbone\.name' is 'vit_small_patch16_224'",
    ),
    "another class count": (
        lambda d: _edit_config(d, lambda c: c["backbone"].update(num_classes=100)),
        r"'backbone\.num_classes' is 100",
    ),
    "truncated weights": (
        lambda d: (d / "adapter.safetensors").write_bytes(
            (d / "adapter.safetensors").read_bytes()[:-100]
        ),
        r"not a readable safetensors file",
    ),
    "not safetensors": (
        lambda d: (d / "adapter.safetensors").write_bytes(b"PK\x03\x04 this is a zip file"),
        r"not a readable safetensors file",
    ),
    "not JSON": (
        lambda d: (d / "adapter_config.json").write_text("{'method': 'karst'"),
        r"not valid JSON",
    ),
    "missing weights file": (
        lambda d: (d / "adapter.safetensors").unlink(),
        r"has no 'adapter\.safetensors'",
    ),
}


@pytest.mark.parametrize("corruption", list(HOSTILE))
def test_hostile_adapter_directories_are_refused(corruption, saved, tiny_case):
    corrupt, message = HOSTILE[corruption]
    corrupt(saved)
    model = tiny_case.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterFileError, match=message):
        kd.load_adapters(model, saved)
    # A refused file leaves the model exactly as it was.
    assert kd.adapters.adapter_config(model) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_directory_is_refused(tmp_path, tiny_case):
    with pytest.raises(AdapterFileError, match="does not exist"):
        kd.load_adapters(tiny_case.build(), tmp_path / "nowhere")


def test_loading_into_an_adapted_model_with_another_config_is_refused(saved, tiny_case):
    model = kd.add_adapters(tiny_case.build(), kd.LoraConfig())
    with pytest.raises(AdapterFileError, match="already carries"):
        kd.load_adapters(model, saved)


def test_checkpoint_mismatch_is_refused(saved, tiny_case, tmp_path):
    _edit_config(saved, lambda c: c["backbone"].update(checkpoint_sha256="ab" * 32))
    with pytest.raises(AdapterFileError, match="pass that file as checkpoint") as refused:
        kd.load_adapters(tiny_case.build(), saved)
    assert "pass that file as --checkpoint" in with_flags(refused.value)


# Random corruptions: the loader either yields a valid adapter or raises AdapterFileError.
corruptions = st.one_of(
    st.tuples(
        st.just("flip"),
        st.sampled_from(["json", "weights"]),
        st.integers(0, 10**9),
        st.integers(1, 255),
    ),
    st.tuples(
        st.just("truncate"), st.sampled_from(["json", "weights"]), st.integers(0, 10**9), st.just(0)
    ),
    st.tuples(st.just("value"), st.just("json"), st.integers(0, 10**9), st.integers(0, 10**9)),
)
JSON_VALUES = [None, True, -1, 0, 3, 2.5, float("1e308"), "", "karst", [], ["qkv"], {}, {"name": 1}]


def _corrupt(directory: Path, corruption) -> None:
    kind, which, position, extra = corruption
    path = directory / ("adapter_config.json" if which == "json" else "adapter.safetensors")
    data = bytearray(path.read_bytes())
    if kind == "flip":
        data[position % len(data)] ^= extra
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        path.write_bytes(bytes(data[: position % len(data)]))
    else:  # replace one value of the config (top level or backbone) by a hostile one
        document = json.loads(data)
        keys = [(document, k) for k in document] + [
            (document["backbone"], k) for k in document["backbone"]
        ]
        container, key = keys[position % len(keys)]
        container[key] = JSON_VALUES[extra % len(JSON_VALUES)]
        path.write_text(json.dumps(document))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption=corruptions)
def test_random_corruptions_load_validly_or_raise_adapter_file_error(corruption):
    case = BACKBONE_CASES[0]
    source = _pristine_adapter()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "adapter"
        shutil.copytree(source, directory)
        _corrupt(directory, corruption)
        try:
            model = kd.load_adapters(case.build(), directory)
        except AdapterFileError:
            return
        assert all(torch.isfinite(t).all() for t in adapter_state_dict(model).values())


_PRISTINE: list[Path] = []


def _pristine_adapter() -> Path:
    if not _PRISTINE:
        directory = Path(tempfile.mkdtemp()) / "adapter"
        kd.save_adapters(adapted(BACKBONE_CASES[0], "karst-scalar"), directory)
        _PRISTINE.append(directory)
    return _PRISTINE[0]
