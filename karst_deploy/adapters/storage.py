"""The version-1 adapter directory (METHODS.md, "Adapter file format").

``adapter_config.json`` holds the method, its hyper-parameters, the backbone it was
trained on (with the ``mean``/``std`` its images were normalised with) and ``classes``, the
class names of the head's outputs in order (written by `train`; adapters made before it
have no ``classes`` key, and their head is then matched to data by class count alone);
``adapter.safetensors`` holds ``P.<method>.<name>`` tensors plus the whole parameters
listed in ``trainable_extra`` (the classifier head). An SPT adapter adds
``placement.json`` and int64 sparse-index tensors (see `karst_deploy.adapters.spt`).
Loading validates everything before touching the model and names the first offending key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from karst_deploy.adapters.base import (
    AdapterConfig,
    AdapterPlan,
    adapter_config,
    adapter_state_dict,
    method_for,
)
from karst_deploy.errors import AdapterFileError, InputError
from karst_deploy.files import atomic_directory, sha256_file
from karst_deploy.models import (
    MAX_IMG_SIZE,
    MAX_NAME_LENGTH,
    MAX_NUM_CLASSES,
    BackboneSpec,
    backbone_spec,
    check_model_kwargs,
    classifier_parameter_names,
    norm_parameter_names,
)

FORMAT = "karst-deploy.adapter"
VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
HEADER_KEYS = (
    "format",
    "version",
    "method",
    "backbone",
    "trainable_extra",
    "created_by",
    "classes",
)
MAX_CLASS_NAME = 200
BACKBONE_KEYS = (
    "name",
    "num_classes",
    "img_size",
    "checkpoint_sha256",
    "pretrained",
    "model_kwargs",
    "mean",
    "std",
)
MAX_CONFIG_BYTES = 2**20  # a config is a few hundred bytes; this bounds what a hostile one costs


def _shown(value: Any, limit: int = 120) -> str:
    """repr(`value`) cut to `limit` characters, so a hostile value cannot flood a message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def read_json(path: Path, max_bytes: int) -> Any:
    """The JSON document in `path`, refusing non-regular, oversized, undecodable or deep files."""
    if not path.is_file():
        raise AdapterFileError(f"'{path}' does not exist or is not a regular file.")
    size = path.stat().st_size
    if size > max_bytes:
        raise AdapterFileError(
            f"{path} is {size:,} bytes; a karst-deploy adapter file is at most {max_bytes:,}."
        )
    try:
        with path.open("rb") as handle:
            return json.loads(handle.read(max_bytes + 1).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an int too long
        raise AdapterFileError(f"{path} is not valid JSON: {_shown(str(exc), 200)}.") from None
    except RecursionError:
        raise AdapterFileError(f"{path} is not valid JSON: it is nested too deeply.") from None


def save_adapters(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    force: bool = False,
    classes: list[str] | None = None,
) -> Path:
    """Write `model`'s adapters and classifier head as a version-1 adapter directory.

    `classes` names the head's outputs in order (the training data's class names); parity
    and calibration then select or check their data's classes against them.
    """
    from safetensors.torch import save_file

    from karst_deploy import __version__

    config = adapter_config(model)
    if config is None:
        raise AdapterFileError("save_adapters() needs a model with adapters; this one has none.")
    spec = backbone_spec(model)
    named = dict(model.named_parameters())
    # The head, plus LayerNorms when a recipe trains them (few-shot): stored whole.
    extra = classifier_parameter_names(model)
    extra += [n for n in norm_parameter_names(model) if named[n].requires_grad]
    extra += method_for(config.method).extra_parameters(config, model)  # SPT's cls token
    tensors = dict(adapter_state_dict(model))
    tensors.update({name: named[name] for name in extra})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    document = {
        "format": FORMAT,
        "version": VERSION,
        "method": config.method,
        "backbone": {k: spec.to_dict()[k] for k in BACKBONE_KEYS},
        **config.to_hparams(),
        "trainable_extra": extra,
        "created_by": f"karst-deploy {__version__}",
    }
    if classes is not None:
        document["classes"] = _parse_classes(list(classes), spec.num_classes, "save_adapters()")
    with atomic_directory(directory, force=force) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
        for name, text in method_for(config.method).files(config).items():
            (tmp / name).write_text(text)
    return Path(directory)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter weights file (never a pickle), or AdapterFileError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors reports corrupt headers/offsets many ways
        raise AdapterFileError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from None


class AdapterFile:
    """A parsed, validated adapter_config.json."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise AdapterFileError(f"Adapter directory '{self.directory}' does not exist.")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (self.directory / name).is_file():
                raise AdapterFileError(
                    f"Adapter directory '{self.directory}' has no '{name}'; a version-1 "
                    f"adapter holds {CONFIG_FILE} and {WEIGHTS_FILE}."
                )
        self.config_path = self.directory / CONFIG_FILE
        self.weights_path = self.directory / WEIGHTS_FILE
        document = self._read_document()
        self.method: str = document["method"]
        self.backbone = _parse_backbone(document["backbone"], self.config_path)
        if "trainable_extra" not in document:
            raise AdapterFileError(
                f"{self.config_path}: required key 'trainable_extra' is missing (the whole "
                "parameters stored besides the adapter, [] for none)."
            )
        self.trainable_extra = _parse_extra(document["trainable_extra"], self.config_path)
        self.classes: list[str] | None = None  # legacy adapters: matched by class count only
        if "classes" in document:
            self.classes = _parse_classes(
                document["classes"], self.backbone.num_classes, self.config_path
            )
        method = method_for(self.method)
        hparams = {k: v for k, v in document.items() if k not in HEADER_KEYS}
        known = {f.name for f in method.config_type.__dataclass_fields__.values()}
        unknown = sorted(set(hparams) - known)
        if unknown:
            raise AdapterFileError(
                f"{self.config_path}: unknown key '{unknown[0]}' for method '{self.method}'; "
                f"expected {sorted(known)}."
            )
        self.config: AdapterConfig = method.config_type.from_hparams(hparams, str(self.config_path))

    def _read_document(self) -> dict[str, Any]:
        document = read_json(self.config_path, MAX_CONFIG_BYTES)
        if not isinstance(document, dict):
            raise AdapterFileError(f"{self.config_path} must hold a JSON object.")
        if document.get("format") != FORMAT:
            raise AdapterFileError(
                f"{self.config_path}: key 'format' is {_shown(document.get('format'))}; "
                f"expected '{FORMAT}'."
            )
        version = document.get("version")
        if version != VERSION or isinstance(version, bool):
            raise AdapterFileError(
                f"{self.config_path}: key 'version' is {_shown(version)}; this karst-deploy "
                f"reads version {VERSION}. Upgrade karst-deploy to read newer adapters."
            )
        if not isinstance(document.get("method"), str) or len(document["method"]) > 100:
            raise AdapterFileError(
                f"{self.config_path}: key 'method' is {_shown(document.get('method'))}; "
                "expected a method name."
            )
        try:
            method_for(document["method"])
        except AdapterFileError as exc:
            raise AdapterFileError(f"{self.config_path}: key 'method': {exc}") from None
        if "backbone" not in document:
            raise AdapterFileError(f"{self.config_path}: required key 'backbone' is missing.")
        return document

    def sha256(self) -> dict[str, str]:
        """Hashes of the adapter's files (recorded in ONNX provenance)."""
        names = [CONFIG_FILE, WEIGHTS_FILE, *method_for(self.method).files(self.config)]
        return {name: sha256_file(self.directory / name) for name in names}

    def read_tensors(self) -> dict[str, torch.Tensor]:
        return read_safetensors(self.weights_path)


def _parse_backbone(value: Any, source: Path) -> BackboneSpec:
    if not isinstance(value, dict):
        raise AdapterFileError(f"{source}: key 'backbone' must be an object.")
    unknown = sorted(set(value) - set(BACKBONE_KEYS))
    if unknown:
        raise AdapterFileError(f"{source}: unknown key 'backbone.{unknown[0]}'.")
    checks = {
        "name": (
            lambda v: isinstance(v, str) and 0 < len(v) <= MAX_NAME_LENGTH,
            "a timm model name",
        ),
        "num_classes": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_NUM_CLASSES,
            f"an integer in [0, {MAX_NUM_CLASSES}]",
        ),
        "img_size": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMG_SIZE,
            f"an integer in [1, {MAX_IMG_SIZE}]",
        ),
    }
    for key, (ok, want) in checks.items():
        if key not in value:
            raise AdapterFileError(f"{source}: required key 'backbone.{key}' is missing.")
        if not ok(value[key]):
            raise AdapterFileError(
                f"{source}: key 'backbone.{key}' is {_shown(value[key])}; expected {want}."
            )
    if "checkpoint_sha256" not in value:
        raise AdapterFileError(
            f"{source}: required key 'backbone.checkpoint_sha256' is missing (null when the "
            "backbone was not loaded from a checkpoint)."
        )
    sha = value["checkpoint_sha256"]
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise AdapterFileError(
            f"{source}: key 'backbone.checkpoint_sha256' is {_shown(sha)}; expected null or 64 "
            "hex digits."
        )
    import timm

    if not timm.is_model(value["name"]):
        raise AdapterFileError(
            f"{source}: key 'backbone.name' is {_shown(value['name'])}, which is not a timm "
            "model name (hub and local-directory prefixes are not accepted)."
        )
    pretrained = value.get("pretrained", False)
    if not isinstance(pretrained, bool):
        raise AdapterFileError(f"{source}: key 'backbone.pretrained' must be true or false.")
    try:
        kwargs = check_model_kwargs(
            value.get("model_kwargs", {}), str(source), "backbone.model_kwargs"
        )
    except InputError as exc:
        raise AdapterFileError(str(exc)) from None
    normalisation = {}
    for key in ("mean", "std"):  # absent in older adapters: the backbone's timm default
        if key in value:
            normalisation[key] = _parse_normalisation(value[key], key, kwargs, source)
    return BackboneSpec(
        name=value["name"],
        num_classes=value["num_classes"],
        img_size=value["img_size"],
        checkpoint_sha256=sha,
        pretrained=pretrained,
        model_kwargs=kwargs,
        **normalisation,
    )


def _parse_normalisation(
    value: Any, key: str, kwargs: dict[str, Any], source: Path
) -> tuple[float, ...]:
    from karst_deploy.models import check_normalisation

    try:
        return check_normalisation(
            value, key, kwargs.get("in_chans", 3), f"{source}: key 'backbone.{key}'"
        )
    except InputError as exc:
        raise AdapterFileError(str(exc)) from None


def _parse_classes(value: Any, num_classes: int, source: Path | str) -> list[str]:
    """The ``classes`` list: one distinct, non-empty name per output of the head."""
    if not isinstance(value, list) or not all(
        isinstance(v, str) and 0 < len(v) <= MAX_CLASS_NAME for v in value
    ):
        raise AdapterFileError(
            f"{source}: key 'classes' must be a list of class names (strings of 1 to "
            f"{MAX_CLASS_NAME} characters)."
        )
    if len(value) != num_classes or len(set(value)) != len(value):
        raise AdapterFileError(
            f"{source}: key 'classes' has {len(value)} name(s) ({len(set(value))} distinct); "
            f"expected {num_classes} distinct names, one per output of the head "
            "(backbone.num_classes)."
        )
    return value


def _parse_extra(value: Any, source: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdapterFileError(
            f"{source}: key 'trainable_extra' must be a list of parameter names."
        )
    return value


def check_backbone(expected: BackboneSpec, actual: BackboneSpec, source: Path) -> None:
    """Refuse an adapter trained on a different backbone, naming the field that differs."""
    for key in ("name", "num_classes", "img_size", "model_kwargs"):
        want, got = getattr(expected, key), getattr(actual, key)
        if want != got:
            raise AdapterFileError(
                f"{source} was made for another backbone: 'backbone.{key}' is {want!r} but the "
                f"model has {got!r}."
            )
    if expected.checkpoint_sha256 and not actual.checkpoint_sha256:
        raise AdapterFileError(
            f"{source} was trained on backbone weights from a file (sha256 "
            f"{expected.checkpoint_sha256[:12]}…) but the model was built without one; pass "
            "that file as checkpoint so the adapter sits on the weights it learned on.",
            parameters=("checkpoint",),
        )
    if expected.checkpoint_sha256 and expected.checkpoint_sha256 != actual.checkpoint_sha256:
        raise AdapterFileError(
            f"{source} was trained on a checkpoint with sha256 {expected.checkpoint_sha256[:12]}…, "
            f"but the model was loaded from one with sha256 {actual.checkpoint_sha256[:12]}…."
        )
    if expected.pretrained and not actual.pretrained and not actual.checkpoint_sha256:
        raise AdapterFileError(
            f"{source}: key 'backbone.pretrained' is true (the adapter was trained on timm's "
            f"pretrained weights of {expected.name}) but the model has random weights; pass "
            "pretrained=True to let timm download them, or a checkpoint file holding them.",
            parameters=("pretrained", "checkpoint"),
        )
    if actual.pretrained and not expected.pretrained:
        raise AdapterFileError(
            f"{source}: key 'backbone.pretrained' is false (the adapter was not trained on "
            "timm's pretrained weights) but the model carries them; drop pretrained=True.",
            parameters=("pretrained",),
        )


def check_pretrained(file: AdapterFile, pretrained: bool, checkpoint: bool) -> BackboneSpec:
    """The file's backbone to build, downloading timm's weights only if the user said so.

    ``backbone.pretrained: true`` in a file is a statement, never a permission: the
    download happens only with `pretrained` (the --pretrained flag) given by the user, or
    the weights come from the user's `checkpoint` file.
    """
    spec = file.backbone
    if spec.pretrained and not pretrained and not checkpoint:
        raise AdapterFileError(
            f"{file.config_path}: key 'backbone.pretrained' is true: the adapter was trained on "
            f"timm's pretrained weights of '{spec.name}'. karst-deploy downloads nothing an "
            "adapter file asks for; pass pretrained=True to let timm fetch those weights from "
            "its own registry (or a checkpoint file holding them).",
            parameters=("pretrained", "checkpoint"),
        )
    if pretrained and not spec.pretrained:
        raise AdapterFileError(
            f"{file.config_path}: key 'backbone.pretrained' is false: the adapter was not "
            "trained on timm's pretrained weights; drop pretrained=True.",
            parameters=("pretrained",),
        )
    return dataclasses.replace(spec, pretrained=pretrained)


def _check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path
) -> None:
    """Keys, dtypes, shapes and finiteness of `tensors` against `expected` (meta is fine)."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise AdapterFileError(f"{source}: key '{missing[0]}' is missing.")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise AdapterFileError(f"{source}: unknown key '{extra[0]}' (not part of this adapter).")
    for key in sorted(expected):
        tensor, want = tensors[key], expected[key]
        if want.is_floating_point() and not tensor.is_floating_point():
            raise AdapterFileError(
                f"{source}: key '{key}' has dtype {tensor.dtype}; expected floats."
            )
        if not want.is_floating_point() and tensor.dtype != want.dtype:
            raise AdapterFileError(
                f"{source}: key '{key}' has dtype {tensor.dtype}; expected {want.dtype}."
            )
        if tensor.shape != want.shape:
            raise AdapterFileError(
                f"{source}: key '{key}' has shape {tuple(tensor.shape)}; expected "
                f"{tuple(want.shape)}."
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AdapterFileError(f"{source}: key '{key}' holds NaN or infinite values.")


def _validated_config(
    file: AdapterFile, model: nn.Module, tensors: dict[str, torch.Tensor]
) -> AdapterConfig:
    """The file's config bound to its tensors, after checking every tensor against `model`.

    `model` may be a `karst_deploy.models.skeleton`: the adapters are planned on the meta
    device, so the shapes the config implies are compared with the file's before anything
    of that size exists (a rank of a million costs nothing until then).
    """
    existing = adapter_config(model)
    if existing is not None and existing != file.config:
        raise AdapterFileError(
            f"{file.config_path} describes {file.config}, but the model already carries "
            f"{existing}; load into a fresh backbone instead."
        )
    try:
        config = method_for(file.method).bind_tensors(file.config, tensors, str(file.weights_path))
        if existing is None:
            expected = AdapterPlan(model, config, meta=True).state_dict()
        else:
            expected = adapter_state_dict(model)
    except InputError as exc:  # a method's own check of the config against the layers
        if str(file.directory) in str(exc):
            raise
        raise AdapterFileError(f"{file.config_path}: {exc}") from None
    named = dict(model.named_parameters())
    head = classifier_parameter_names(model)
    expected_extra = set(head) | set(norm_parameter_names(model))
    expected_extra |= set(method_for(file.method).extra_parameters(config, model))
    for name in file.trainable_extra:
        if name not in named or name not in expected_extra:
            raise AdapterFileError(
                f"{file.config_path}: 'trainable_extra' names {_shown(name)}, which is not a "
                f"classifier or LayerNorm parameter of {file.backbone.name} (expected "
                f"{sorted(head)} and LayerNorm weights/biases)."
            )
    expected.update({name: named[name] for name in file.trainable_extra})
    _check_tensors(tensors, expected, file.weights_path)
    return config


@torch.no_grad()
def _install(model: nn.Module, file: AdapterFile, tensors: dict[str, torch.Tensor]) -> nn.Module:
    check_backbone(file.backbone, backbone_spec(model), file.config_path)
    config = _validated_config(file, model, tensors)
    existing = adapter_config(model) is not None
    plan = None if existing else AdapterPlan(model, config)
    targets = dict(adapter_state_dict(model) if existing else plan.state_dict())
    named = dict(model.named_parameters())
    targets.update({name: named[name] for name in file.trainable_extra})
    for key, target in targets.items():
        target.copy_(tensors[key])
    return plan.install(model) if plan else model


def load_adapters(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Load an adapter directory into `model` (a plain backbone, or one with the same adapters).

    Everything is validated before the model is touched, so a refused file leaves it as it was.
    """
    file = AdapterFile(directory)
    return _install(model, file, file.read_tensors())


def load_adapted_model(
    directory: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    pretrained: bool = False,
) -> nn.Module:
    """Build the backbone an adapter directory names (from `checkpoint` if given) and load it.

    The file is checked in full against the backbone's skeleton (shapes only) before the
    backbone is built. `pretrained` is the user's permission (--pretrained) for timm to
    download the pretrained weights a file says it was trained on; a file alone never can.
    """
    file = AdapterFile(directory)
    spec = check_pretrained(file, pretrained, checkpoint is not None)
    tensors = file.read_tensors()
    try:
        skeleton = spec.skeleton()
    except InputError as exc:
        raise AdapterFileError(
            f"{file.config_path}: keys 'backbone.name', 'backbone.num_classes', "
            f"'backbone.img_size' and 'backbone.model_kwargs' describe no network karst-deploy "
            f"builds: {exc}"
        ) from None
    _validated_config(file, skeleton, tensors)
    del skeleton
    return _install(spec.build(checkpoint), file, tensors)


def write_merged_checkpoint(
    adapter_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    pretrained: bool = False,
    force: bool = False,
) -> MergedCheckpoint:
    """Merge an adapter directory into its backbone and write the full state dict.

    The file loads with ``timm.create_model(name, num_classes=..., checkpoint_path=out)``.
    """
    from karst_deploy.adapters.base import merge
    from karst_deploy.files import refuse_existing

    refuse_existing(Path(out), force)
    file = AdapterFile(adapter_dir)
    merged_checkpoint_format(out)  # before the work
    if backbone is not None and backbone != file.backbone.name:
        raise AdapterFileError(
            f"backbone is '{backbone}' but {file.config_path} was trained on "
            f"'{file.backbone.name}'.",
            parameters=("backbone",),
        )
    merged = merge(load_adapted_model(adapter_dir, checkpoint, pretrained=pretrained))
    return save_merged_checkpoint(merged, out, spec=file.backbone, method=file.method, force=force)


#: Merged checkpoint formats by --out suffix: safetensors, or a torch.save'd state dict.
MERGED_FORMATS = {".safetensors": "safetensors", ".pth": "torch", ".pt": "torch", ".bin": "torch"}


def merged_checkpoint_format(out: str | os.PathLike[str]) -> str:
    """The format `out`'s suffix asks for (`MERGED_FORMATS`); InputError for any other."""
    suffix = Path(out).suffix.lower()
    if suffix not in MERGED_FORMATS:
        raise InputError(
            f"out '{out}' has suffix '{suffix}'; a merged checkpoint is written as "
            "safetensors (.safetensors) or a torch state dict (.pth, .pt, .bin), chosen by "
            "the suffix.",
            parameters=("out",),
        )
    return MERGED_FORMATS[suffix]


@dataclass(frozen=True)
class MergedCheckpoint:
    """A written merged checkpoint: where, what, and the timm call that loads it."""

    out: str
    format: str  # safetensors or torch (MERGED_FORMATS)
    backbone: str
    method: str
    tensors: int
    parameters: int
    load_with: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_merged_checkpoint(
    merged: nn.Module, out: str | os.PathLike[str], *, spec: BackboneSpec, method: str, force: bool
) -> MergedCheckpoint:
    """Write a merged model's state dict (atomically) in the format `out`'s suffix names.

    ``.safetensors``: safetensors; ``.pth``/``.pt``/``.bin``: ``torch.save`` of a plain
    ``{name: tensor}`` dict (loads with ``torch.load(weights_only=True)`` and timm's
    ``checkpoint_path``).
    """
    from safetensors.torch import save_file

    from karst_deploy.files import atomic_output

    kind = merged_checkpoint_format(out)
    state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
    with atomic_output(out, force=force) as tmp:
        if kind == "safetensors":
            save_file(state, str(tmp), metadata={"format": "pt", "karst_deploy_method": method})
        else:
            torch.save({k: v.clone() for k, v in state.items()}, tmp)
    return MergedCheckpoint(
        out=str(out),
        format=kind,
        backbone=spec.name,
        method=method,
        tensors=len(state),
        parameters=sum(v.numel() for v in state.values()),
        load_with=(
            f"timm.create_model({spec.name!r}, num_classes={spec.num_classes}, "
            f"img_size={spec.img_size}"
            + "".join(f", {k}={v!r}" for k, v in spec.model_kwargs.items())
            + f", checkpoint_path={str(out)!r})"
        ),
    )


def architecture_from_onnx(path: str | os.PathLike[str]) -> nn.Module:
    """The PyTorch network an ONNX file was exported from, with fresh random weights.

    The unmerged kind gets its adapters back (the extra arithmetic is the point of timing
    it); merged and base files are the plain backbone.
    """
    from karst_deploy.adapters import add_adapters
    from karst_deploy.adapters.base import method_for
    from karst_deploy.onnx_file import require_provenance

    record = require_provenance(path)
    spec = BackboneSpec(
        name=record["backbone"],
        num_classes=record["num_classes"],
        img_size=record["img_size"],
        # Provenance is as hostile as any file: its timm arguments pass the same allow-list.
        model_kwargs=check_model_kwargs(
            record.get("model_kwargs") or {}, f"'{path}' provenance", "model_kwargs"
        ),
    )
    model = spec.build()
    if record.get("kind") == "unmerged" and record.get("method") == "peft":
        from karst_deploy.adapters.peft_format import peft_architecture

        peft_architecture(model, record["adapter_config"], f"{path} provenance")
    elif record.get("kind") == "unmerged":
        method = method_for(record["method"])
        config = method.config_type.from_hparams(record["adapter_config"], f"{path} provenance")
        add_adapters(model, config)
    return model.eval()
