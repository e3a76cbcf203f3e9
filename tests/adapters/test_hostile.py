"""Hostile adapter directories: a corruption generator over every method, SPT's placement.json
and the backbone's timm arguments.

Every corruption either is refused with an `AdapterFileError` whose message names the file
(and, where the corruption has one, the key), or loads exactly the model the file describes:
the backbone its ``backbone`` fields name (weights: the seeded random init, nothing else),
the adapter config it states and the tensors it stores. No other exception, and no case may
run past `CASE_SECONDS` (a hang guard, not a speed target).

The default run takes every `SAMPLE`-th generated case; ``pytest -m campaign`` runs them all.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import karst_deploy as kd
from karst_deploy.adapters import AdapterFile, adapter_config, adapter_state_dict
from karst_deploy.errors import AdapterFileError, with_flags
from karst_deploy.models import MODEL_KWARGS, backbone_spec
from tests.cases import BACKBONE_CASES, METHOD_CASES, SPT_CASES, adapted, randomize_adapters
from tests.cli_helpers import run_cli

CASE = BACKBONE_CASES[0]  # vit-192: 2 blocks on 32×32 inputs
METHODS = [*METHOD_CASES, *SPT_CASES, "linear"]
CASE_SECONDS = 30
SAMPLE = 25
CONFIG, WEIGHTS, PLACEMENT = "adapter_config.json", "adapter.safetensors", "placement.json"


# --- pristine directories ----------------------------------------------------------------


@functools.cache
def pristine(method: str) -> Path:
    """A saved adapter directory of `method` on CASE (made once per session)."""
    directory = Path(tempfile.mkdtemp(prefix="karst-pristine-")) / method
    if method == "linear":
        model = randomize_adapters(kd.add_adapters(CASE.build(), kd.LinearConfig()))
    else:
        model = adapted(CASE, method)
    kd.save_adapters(model, directory)
    return directory


def _document(directory: Path, name: str) -> dict[str, Any]:
    return json.loads((directory / name).read_text())


def _write(directory: Path, name: str, document: Any) -> None:
    (directory / name).write_text(json.dumps(document))


# --- corruptions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """One way to damage an adapter directory of `method`.

    `apply` edits the copied directory and returns the key the refusal must name (None when
    the damage has no key, e.g. broken JSON syntax). `must_refuse` is False only where the
    edit may leave a valid file (then it must load what it describes).
    """

    id: str
    method: str
    file: str
    apply: Callable[[Path], str | None]
    must_refuse: bool = True


MISSING = object()
# Values no field accepts in every position, plus some that some fields do accept.
HOSTILE_VALUES: dict[str, Any] = {
    "null": None,
    "true": True,
    "minus-one": -1,
    "zero": 0,
    "half": 0.5,
    "huge-int": 10**30,
    "400-digit-int": 10**400,
    "infinity": float("inf"),
    "nan": float("nan"),
    "empty-string": "",
    "long-string": "x" * 100_000,
    "path": "../../../etc/passwd",
    "empty-list": [],
    "list": [1, "qkv"],
    "empty-object": {},
    "object": {"checkpoint_path": "/tmp/evil.pth"},
}


def _set(name: str, path: tuple[Any, ...], value: Any) -> Callable[[Path], str | None]:
    """Set (or delete, for MISSING) the entry at `path` of the JSON file `name`."""

    def apply(directory: Path) -> str | None:
        document = _document(directory, name)
        container = document
        for step in path[:-1]:
            container = container[step]
        if value is MISSING:
            del container[path[-1]]
        else:
            container[path[-1]] = value
        _write(directory, name, document)
        return ".".join(str(p) for p in path) if len(path) < 3 else str(path[-1])

    return apply


def _config_keys(method: str) -> list[str]:
    header = ["format", "version", "method", "backbone", "trainable_extra"]
    if method == "linear":
        return header
    if method in SPT_CASES:
        return [*header, "structured", "placement", "candidates"]
    return [*header, *METHOD_CASES[method].to_hparams()]


BACKBONE_FIELDS = ["name", "num_classes", "img_size", "checkpoint_sha256", "pretrained"]
OPTIONAL_BACKBONE_FIELDS = {"pretrained"}  # documented as optional, defaulting to false

# timm arguments a file must never pass (paths, configs, layer classes, devices, its own fields).
INJECTIONS: dict[str, Any] = {
    "checkpoint_path": "/tmp/evil.pth",
    "pretrained_cfg_overlay": {"file": "/tmp/evil.pth", "num_classes": 10},
    "pretrained_cfg": {"url": "https://example.com/evil.pth"},
    "pretrained": True,
    "pretrained_strict": False,
    "cache_dir": "/tmp/cache",
    "features_only": True,
    "out_indices": [0],
    "scriptable": True,
    "exportable": False,
    "no_jit": True,
    "embed_layer": "torch.nn.Identity",
    "norm_layer": "torch.nn.Identity",
    "act_layer": "gelu",
    "block_fn": "os.system",
    "mlp_layer": "x",
    "attn_layer": "x",
    "device": "cuda",
    "dtype": "float64",
    "in_chans": 1,
    "num_classes": 3,
    "img_size": 64,
    "weight_init": "jax",
    "dynamic_img_size": True,
    "pos_embed": "none",
    "__class__": "x",
    "": 1,
    "checkpoint_path ": "/tmp/evil.pth",
    "CHECKPOINT_PATH": "/tmp/evil.pth",
}
# Allowed names with values out of range or of the wrong type.
BAD_KWARG_VALUES: dict[str, list[Any]] = {
    "depth": [100_000, 0, -1, 1.5, "2", True, None, 10**400],
    "embed_dim": [10**6, 0, 191.5],
    "num_heads": [0, 10**6, [1] * 100, [0, 1]],
    "patch_size": [0, 100_000, [8, 8]],
    "mlp_ratio": [0, 1e9, float("nan"), float("inf"), "4"],
    "qkv_bias": ["yes", 1, None],
    "global_pool": ["evil", 1],
    "window_size": [[1, 2, 3], 0, 10**9],
    "reg_tokens": [10**6, -1],
    "init_values": [1e9, -1.0],
    "drop_path_rate": [1.0, -0.1, 2],
    "depths": [[100_000], [], [1] * 20],
}


def _tensor_edit(index: int, edit: str) -> Callable[[Path], str | None]:
    """Edit the `index`-th stored tensor (sorted by name)."""

    def apply(directory: Path) -> str | None:
        path = directory / WEIGHTS
        tensors = load_file(path)
        key = sorted(tensors)[index % len(tensors)]
        tensor = tensors[key]
        if edit == "delete":
            del tensors[key]
        elif edit == "rename":
            tensors[key + "x"] = tensors.pop(key)
        elif edit == "extra-dim":
            tensors[key] = tensor[None]
        elif edit == "grow":
            tensors[key] = torch.cat([tensor.flatten(), tensor.flatten()[:1]])
        elif edit == "int32":
            tensors[key] = tensor.to(torch.int32)
        elif edit == "nan" and tensor.is_floating_point():
            poisoned = tensor.clone().flatten()
            poisoned[0] = float("nan")
            tensors[key] = poisoned.view(tensor.shape)
        elif edit == "nan":  # integer (SPT sparse indices): out of order instead
            tensors[key] = tensor.flip(0)
        elif edit == "float64":
            tensors[key] = tensor.to(torch.float64)
        elif edit == "extra-key":
            tensors["blocks.0.attn.qkv.evil"] = torch.zeros(3)
            key = "blocks.0.attn.qkv.evil"
        save_file(tensors, path)
        return key

    return apply


def _special_file(name: str, kind: str) -> Callable[[Path], str | None]:
    """Replace file `name` with something that is not a regular JSON/safetensors file."""

    def apply(directory: Path) -> str | None:
        path = directory / name
        path.unlink()
        if kind == "directory":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dev-zero":
            path.symlink_to("/dev/zero")
        elif kind == "dangling-link":
            path.symlink_to(directory / "nowhere")
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "oversized":
            path.write_bytes(b" " * (3 * 2**20) + b"{}" if name == CONFIG else b" " * (65 * 2**20))
        elif kind == "deep":
            path.write_text("[" * 100_000 + "]" * 100_000)
        elif kind == "long-int":
            path.write_text('{"format": ' + "9" * 5000 + "}")
        elif kind == "not-utf8":
            path.write_bytes(b'{"format": "\xff\xfe"}')
        return None

    return apply


def _placement_matrix(index: int, field: str, value: Any) -> Callable[[Path], str | None]:
    def apply(directory: Path) -> str | None:
        document = _document(directory, PLACEMENT)
        matrices = document["matrices"]
        entry = matrices[index % len(matrices)]
        if value is MISSING:
            del entry[field]
        else:
            entry[field] = value
        _write(directory, PLACEMENT, document)
        return field

    return apply


def _placement_structural(kind: str) -> Callable[[Path], str | None]:
    def apply(directory: Path) -> str | None:
        document = _document(directory, PLACEMENT)
        matrices = document["matrices"]
        if kind == "duplicate-matrix":
            matrices.append(dict(matrices[0]))
        elif kind == "drop-matrix":
            matrices.pop()
        elif kind == "all-frozen":
            for entry in matrices:
                entry.update(decision="frozen", selected=0, parameters=0)
        elif kind == "matrix-not-object":
            matrices[0] = "blocks.0.attn.qkv"
        elif kind == "deep-scores":
            document["scores"] = json.loads("[" * 500 + "]" * 500)
        _write(directory, PLACEMENT, document)
        return "matrices" if kind != "deep-scores" else None

    return apply


PLACEMENT_KEYS = [
    "format",
    "version",
    "structured",
    "sigma",
    "beta",
    "budget",
    "score_threshold",
    "top_up_threshold",
    "cls_token",
    "scores",
    "totals",
    "matrices",
    "vectors",
]
MATRIX_FIELDS = ["name", "shape", "decision", "selected", "parameters"]
DECISIONS = ("frozen", "sparse", "structured")
MATRIX_VALUES: dict[str, Any] = {
    "missing": MISSING,
    "null": None,
    "negative": -1,
    "huge": 10**30,
    "string": "blocks.0.attn.qkv",
    "shape-3d": [1, 2, 3],
    "shape-huge": [10**9, 10**9],
    "frozen": "frozen",
    "sparse": "sparse",
    "structured": "structured",
}


def corruptions() -> list[Corruption]:
    """Every generated corruption, each with a unique id."""
    cases: list[Corruption] = []
    for method in METHODS:
        # adapter_config.json: each key deleted, and replaced by each hostile value.
        for key in _config_keys(method):
            cases.append(
                Corruption(
                    f"{method}:config:{key}:missing", method, CONFIG, _set(CONFIG, (key,), MISSING)
                )
            )
            for label, value in HOSTILE_VALUES.items():
                cases.append(
                    Corruption(
                        f"{method}:config:{key}:{label}",
                        method,
                        CONFIG,
                        _set(CONFIG, (key,), value),
                        must_refuse=False,
                    )
                )
        cases.append(
            Corruption(f"{method}:config:unknown-key", method, CONFIG, _set(CONFIG, ("rnak",), 4))
        )
        # backbone fields.
        for field in BACKBONE_FIELDS:
            cases.append(
                Corruption(
                    f"{method}:backbone:{field}:missing",
                    method,
                    CONFIG,
                    _set(CONFIG, ("backbone", field), MISSING),
                    must_refuse=field not in OPTIONAL_BACKBONE_FIELDS,
                )
            )
            for label in ("null", "minus-one", "huge-int", "long-string", "object", "true"):
                cases.append(
                    Corruption(
                        f"{method}:backbone:{field}:{label}",
                        method,
                        CONFIG,
                        _set(CONFIG, ("backbone", field), HOSTILE_VALUES[label]),
                        must_refuse=(field, label) != ("checkpoint_sha256", "null"),
                    )
                )
        # Resource bombs and silent disablers.
        bombs = {
            "num_classes": [10**9, 10**6],
            "img_size": [10**6, 4, 1, 2048],
            "name": ["vit_gigantic_patch14_224", "hf-hub:attacker/model", "local-dir:/tmp"],
        }
        for field, values in bombs.items():
            for value in values:
                cases.append(
                    Corruption(
                        f"{method}:backbone:{field}={value}",
                        method,
                        CONFIG,
                        _set(CONFIG, ("backbone", field), value),
                    )
                )
        # weights file: tensors deleted, renamed, reshaped, retyped, poisoned.
        for index in range(4):
            for edit in ("delete", "rename", "extra-dim", "grow", "int32", "nan", "float64"):
                cases.append(
                    Corruption(
                        f"{method}:tensor{index}:{edit}",
                        method,
                        WEIGHTS,
                        _tensor_edit(index, edit),
                        must_refuse=edit != "float64",
                    )
                )
        cases.append(
            Corruption(f"{method}:tensor:extra-key", method, WEIGHTS, _tensor_edit(0, "extra-key"))
        )
        # files that are not regular, too big, too deep, undecodable.
        for name in (CONFIG, WEIGHTS):
            for kind in ("directory", "fifo", "dev-zero", "dangling-link", "empty"):
                cases.append(
                    Corruption(f"{method}:{name}:{kind}", method, name, _special_file(name, kind))
                )
        for kind in ("oversized", "deep", "long-int", "not-utf8"):
            cases.append(
                Corruption(f"{method}:{CONFIG}:{kind}", method, CONFIG, _special_file(CONFIG, kind))
            )
    # Hyper-parameters out of range (each method that has them).
    bounds = {
        "rank": [10**6, 10**9, 0, 4097],
        "kernels": [10**6, 257, 0],
        "factor": [10**9, 0, -1],
        "alpha": [0, 0.0, -1.0, 1e308, 1e6],
        "scale": [0, -0.5, 1e308],
    }
    for method in METHOD_CASES:
        for key, values in bounds.items():
            if key in METHOD_CASES[method].to_hparams():
                for value in values:
                    cases.append(
                        Corruption(
                            f"{method}:bound:{key}={value}",
                            method,
                            CONFIG,
                            _set(CONFIG, (key,), value),
                        )
                    )
    for method in SPT_CASES:
        for key, values in bounds.items():
            if key in SPT_CASES[method].to_hparams():
                for value in [*values, MISSING]:
                    label = "missing" if value is MISSING else value
                    cases.append(
                        Corruption(
                            f"{method}:structured:{key}={label}",
                            method,
                            CONFIG,
                            _set(CONFIG, ("structured", key), value),
                        )
                    )
    # timm argument injections and out-of-range architecture values.
    for method in ("karst-channel", "spt-lora", "kadaptation"):
        for key, value in INJECTIONS.items():
            cases.append(
                Corruption(
                    f"{method}:model_kwargs:inject:{key!r}",
                    method,
                    CONFIG,
                    _set(CONFIG, ("backbone", "model_kwargs", key), value),
                )
            )
        for key, values in BAD_KWARG_VALUES.items():
            for value in values:
                cases.append(
                    Corruption(
                        f"{method}:model_kwargs:{key}={str(value)[:20]}",
                        method,
                        CONFIG,
                        _set(CONFIG, ("backbone", "model_kwargs", key), value),
                    )
                )
        for label in ("null", "list", "long-string", "true"):
            cases.append(
                Corruption(
                    f"{method}:model_kwargs:{label}",
                    method,
                    CONFIG,
                    _set(CONFIG, ("backbone", "model_kwargs"), HOSTILE_VALUES[label]),
                )
            )
        # Allowed arguments with valid values that describe another network: refused by
        # the tensors; drop rates change no shape and must load the network described.
        for key, value in {
            "depth": 1,
            "embed_dim": 96,
            "mlp_ratio": 2.0,
            "patch_size": 4,
            "class_token": False,
            "qkv_bias": False,
            "drop_rate": 0.1,
        }.items():
            cases.append(
                Corruption(
                    f"{method}:model_kwargs:valid:{key}={value}",
                    method,
                    CONFIG,
                    _set(CONFIG, ("backbone", "model_kwargs", key), value),
                    must_refuse=key == "depth",
                )
            )
    # placement.json.
    for method in SPT_CASES:
        for key in PLACEMENT_KEYS:
            cases.append(
                Corruption(
                    f"{method}:placement:{key}:missing",
                    method,
                    PLACEMENT,
                    _set(PLACEMENT, (key,), MISSING),
                )
            )
            for label, value in HOSTILE_VALUES.items():
                cases.append(
                    Corruption(
                        f"{method}:placement:{key}:{label}",
                        method,
                        PLACEMENT,
                        _set(PLACEMENT, (key,), value),
                        must_refuse=False,  # thresholds, sigma, scores: many values are valid
                    )
                )
        for key, value in {"budget": 10**400, "sigma": 1e300, "totals": {"parameters": 1}}.items():
            cases.append(
                Corruption(
                    f"{method}:placement:{key}=extreme",
                    method,
                    PLACEMENT,
                    _set(PLACEMENT, (key,), value),
                )
            )
        for index in (0, 1, -1):
            for field in MATRIX_FIELDS:
                for label, value in MATRIX_VALUES.items():
                    cases.append(
                        Corruption(
                            f"{method}:placement:matrices[{index}].{field}:{label}",
                            method,
                            PLACEMENT,
                            _placement_matrix(index, field, value),
                            # a decision or name may be the one the entry had
                            must_refuse=label not in (*DECISIONS, "string"),
                        )
                    )
        for kind in (
            "duplicate-matrix",
            "drop-matrix",
            "all-frozen",
            "matrix-not-object",
            "deep-scores",
        ):
            cases.append(
                Corruption(
                    f"{method}:placement:{kind}",
                    method,
                    PLACEMENT,
                    _placement_structural(kind),
                    must_refuse=kind != "deep-scores",
                )
            )
        for kind in (
            "directory",
            "fifo",
            "dev-zero",
            "dangling-link",
            "empty",
            "oversized",
            "deep",
            "not-utf8",
        ):
            cases.append(
                Corruption(
                    f"{method}:{PLACEMENT}:{kind}",
                    method,
                    PLACEMENT,
                    _special_file(PLACEMENT, kind),
                )
            )
    return cases


CORRUPTIONS = corruptions()


def test_the_generator_covers_every_method_and_file_with_hundreds_of_distinct_cases():
    ids = [c.id for c in CORRUPTIONS]
    assert len(ids) == len(set(ids)) >= 400
    assert {c.method for c in CORRUPTIONS} == set(METHODS)
    for file in (CONFIG, WEIGHTS, PLACEMENT):
        assert sum(c.file == file for c in CORRUPTIONS) >= 50
    assert sum(":model_kwargs:" in i for i in ids) >= 100


# --- the invariant -----------------------------------------------------------------------


class Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise Hang(f"no answer within {CASE_SECONDS} s")


def _assert_describes(model: torch.nn.Module, directory: Path) -> None:
    """`model` is exactly what `directory` describes: backbone, config, tensors."""
    file = AdapterFile(directory)
    spec = backbone_spec(model)
    described = file.backbone
    for key in ("name", "num_classes", "img_size", "model_kwargs", "checkpoint_sha256"):
        assert getattr(spec, key) == getattr(described, key), key
    assert spec.pretrained is False
    assert adapter_config(model) == file.config
    stored = file.read_tensors()
    state = model.state_dict()
    for key, tensor in {**adapter_state_dict(model)}.items():
        assert torch.equal(tensor, stored[key].to(tensor.dtype)), key
    # The backbone's own weights are the seeded random init of what the file describes.
    fresh = described.build().state_dict()
    for key, tensor in fresh.items():
        if key in file.trainable_extra:
            assert torch.equal(state[key], stored[key].to(tensor.dtype)), key
        else:
            assert torch.equal(state[key], tensor), key


def check_corruption(corruption: Corruption, workdir: Path) -> str:
    """Apply `corruption` to a copy of the pristine directory, load it, check the invariant."""
    directory = workdir / "adapter"
    shutil.copytree(pristine(corruption.method), directory)
    key = corruption.apply(directory)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        model = kd.load_adapted_model(directory)
    except AdapterFileError as error:
        message = str(error)
        assert str(directory) in message, f"the message names no file: {message}"
        if key is not None:
            named = f"'{key}" in message or f".{key}" in message or f"key '{key}'" in message
            # An edit that leaves the file well-formed but inconsistent (a config that no
            # longer fits the stored tensors, a decision that no longer fits the totals) is
            # refused at the first key found to disagree, which the message names instead.
            named = named or re.search(r"keys? '[^']+'", message)
            assert named, f"the message names neither '{key}' nor a tensor key: {message}"
        return "refused"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not corruption.must_refuse, f"{corruption.id} was loaded"
    _assert_describes(model, directory)
    return "loaded"


def _sampled(cases: list[Corruption]) -> list[Any]:
    return [
        pytest.param(c, id=c.id, marks=() if i % SAMPLE == 0 else pytest.mark.campaign)
        for i, c in enumerate(cases)
    ]


@pytest.mark.parametrize("corruption", _sampled(CORRUPTIONS))
def test_corruption_is_refused_naming_file_and_key_or_loads_what_it_describes(corruption, tmp_path):
    check_corruption(corruption, tmp_path)


@pytest.mark.parametrize("method", METHODS)
def test_pristine_directories_load_what_they_describe(method):
    directory = pristine(method)
    _assert_describes(kd.load_adapted_model(directory), directory)


# --- random corruptions (hypothesis) ------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**40), 10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a JSON document."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document[:4]):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def random_corruptions(draw) -> Corruption:
    method = draw(st.sampled_from(METHODS))
    names = [CONFIG, WEIGHTS] + ([PLACEMENT] if method in SPT_CASES else [])
    name = draw(st.sampled_from(names))
    kind = draw(
        st.sampled_from(["flip", "truncate", "value"] if name != WEIGHTS else ["flip", "truncate"])
    )
    position = draw(st.integers(0, 10**9))
    byte = draw(st.integers(1, 255))
    value = draw(json_values)

    def apply(directory: Path) -> str | None:
        path = directory / name
        data = bytearray(path.read_bytes())
        if kind == "flip":
            data[position % len(data)] ^= byte
            path.write_bytes(bytes(data))
            return None
        if kind == "truncate":
            path.write_bytes(bytes(data[: position % len(data)]))
            return None
        document = json.loads(data)
        paths = _paths(document)
        chosen = paths[position % len(paths)]
        container = document
        for step in chosen[:-1]:
            container = container[step]
        container[chosen[-1]] = value
        _write(directory, name, document)
        return None  # the refusal may name the entry or its parent: checked for the file only

    label = f"{method}:{name}:{kind}:{position}:{byte}"
    return Corruption(label, method, name, apply, must_refuse=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption=random_corruptions())
def test_random_corruptions_are_refused_or_load_what_they_describe(corruption):
    with tempfile.TemporaryDirectory() as tmp:
        check_corruption(corruption, Path(tmp))


@pytest.mark.campaign
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption=random_corruptions())
def test_random_corruption_campaign(corruption):
    with tempfile.TemporaryDirectory() as tmp:
        check_corruption(corruption, Path(tmp))


@settings(max_examples=60, deadline=None)
@given(
    kwargs=st.dictionaries(
        st.sampled_from(sorted(MODEL_KWARGS) + sorted(set(INJECTIONS) - {"pretrained"})),
        json_values,
        max_size=3,
    )
)
def test_random_model_kwargs_are_refused_naming_the_key_or_build_what_they_say(kwargs):
    """Only allow-listed arguments ever reach timm; a refusal names the entry.

    Checked on the meta skeleton create_model builds first (a random draw may describe a
    network of gigabytes, which must not be allocated here).
    """
    from karst_deploy.models import skeleton

    arguments = {**CASE.kwargs, **kwargs}
    try:
        model = skeleton(CASE.name, **arguments)
    except kd.errors.InputError as error:
        message = str(error)
        assert any(f"model_kwargs.{key}'" in message for key in kwargs) or (
            message.startswith("Backbone") or message.startswith("timm could not build")
        ), message
        return
    assert set(kwargs) - {"num_classes", "img_size"} <= set(MODEL_KWARGS)
    assert len(model.blocks) == arguments["depth"]
    if arguments["num_classes"] is not None:  # None: timm's own default head
        assert model.num_classes == arguments["num_classes"]


# --- the checkpoint_path injection, end to end --------------------------------------------


class _Marker:
    """Unpickling this creates `path`: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def planted_pickle(tmp_path) -> tuple[Path, Path]:
    """A .pth checkpoint that creates a marker file when unpickled without weights_only."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Marker(marker)}, evil)
    return evil, marker


def test_the_planted_pickle_runs_code_when_loaded_unsafely(planted_pickle):
    evil, marker = planted_pickle
    torch.load(evil, weights_only=False)  # what timm 1.0.12–1.0.25 did with checkpoint_path
    assert marker.exists()


def test_checkpoint_path_injection_is_refused_and_nothing_is_unpickled(planted_pickle, tmp_path):
    evil, marker = planted_pickle
    directory = tmp_path / "adapter"
    shutil.copytree(pristine("karst-channel"), directory)
    _set(CONFIG, ("backbone", "model_kwargs", "checkpoint_path"), str(evil))(directory)
    with pytest.raises(AdapterFileError, match=r"'backbone\.model_kwargs\.checkpoint_path'"):
        kd.load_adapted_model(directory)
    assert not marker.exists()
    # The command line: exit 2, one paragraph naming the file and key, no traceback.
    out = tmp_path / "merged.safetensors"
    result = run_cli("merge", "--adapter", directory, "--out", out)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    flat = "".join(result.stderr.split())  # however the paragraph is wrapped
    assert "'backbone.model_kwargs.checkpoint_path'isrefused" in flat and CONFIG in flat
    assert not marker.exists() and not out.exists()


def test_model_kwargs_on_the_command_line_pass_the_same_allow_list(planted_pickle, tmp_path):
    evil, marker = planted_pickle
    kwargs = json.dumps({"patch_size": 8, "depth": 2, "checkpoint_path": str(evil)})
    result = run_cli(
        "export", "--no-adapter", "--backbone", CASE.name, "--img-size", "32",
        "--model-kwargs", kwargs, "--out", tmp_path / "x.onnx",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--model-kwargs:key'checkpoint_path'isrefused" in "".join(result.stderr.split())
    assert not marker.exists()


def test_pretrained_needs_the_users_flag(tmp_path):
    directory = tmp_path / "adapter"
    shutil.copytree(pristine("lora"), directory)
    with pytest.raises(AdapterFileError, match=r"'backbone\.pretrained' is false.*pretrained=True"):
        kd.load_adapted_model(directory, pretrained=True)
    _set(CONFIG, ("backbone", "pretrained"), True)(directory)
    needs = r"'backbone\.pretrained' is true.*pass pretrained=True"
    with pytest.raises(AdapterFileError, match=needs) as refused:
        kd.load_adapted_model(directory)
    assert "pass --pretrained to let timm" in with_flags(refused.value)  # the CLI's flag
    # A model built without timm's weights is not what such an adapter was trained on.
    with pytest.raises(AdapterFileError, match=r"'backbone\.pretrained' is true"):
        kd.load_adapters(CASE.build(), directory)


def test_provenance_model_kwargs_pass_the_allow_list(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from karst_deploy.adapters.storage import architecture_from_onnx
    from karst_deploy.provenance import write_provenance

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    record = {  # a complete export record, so the allow-list is what refuses it
        "version": kd.__version__,
        "backbone": CASE.name,
        "num_classes": 3,
        "img_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "model_kwargs": {"patch_size": 8, "depth": 1, "checkpoint_path": "/tmp/evil.pth"},
        "pretrained": False,
        "method": None,
        "adapter_config": None,
        "adapter_sha256": None,
        "checkpoint_sha256": None,
        "kind": "base",
        "precision": "fp32",
        "opset": 18,
        "exporter": "torch.onnx dynamo",
        "batch": "dynamic",
        "torch": "2",
        "timm": "1",
    }
    onnx_path = tmp_path / "base.onnx"
    onnx.save(write_provenance(helper.make_model(graph), record), onnx_path)
    with pytest.raises(
        kd.errors.InputError, match=r"provenance: key 'model_kwargs\.checkpoint_path' is refused"
    ):
        architecture_from_onnx(onnx_path)
