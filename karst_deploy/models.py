"""timm backbone creation and local checkpoint loading.

Every model is built with ``exportable=True`` (timm then picks export-friendly layers,
e.g. no fused attention), so the PyTorch reference, the ONNX export and every latency
baseline are the same network.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from karst_deploy.errors import CheckpointError, InputError
from karst_deploy.files import sha256_file

SPEC_ATTRIBUTE = "karst_deploy_backbone"
#: Weights that come from neither a checkpoint nor timm's pretrained set are drawn under
#: this torch seed, so a random-init backbone is the same network in every command
#: (export, verify-parity, bench) instead of a fresh draw each time.
INIT_SEED = 0


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone: what adapter files and ONNX metadata record."""

    name: str
    num_classes: int
    img_size: int
    checkpoint_sha256: str | None = None
    pretrained: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    def build(self, checkpoint: str | os.PathLike[str] | None = None) -> nn.Module:
        """Create the backbone this spec describes (loading `checkpoint` if given)."""
        return create_model(
            self.name,
            num_classes=self.num_classes,
            img_size=self.img_size,
            checkpoint=checkpoint,
            pretrained=self.pretrained,
            **self.model_kwargs,
        )


def _json_safe(kwargs: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(kwargs))
    except TypeError as exc:
        raise InputError(
            f"Model keyword arguments for '{name}' must be plain JSON values (numbers, "
            f"strings, lists) so adapter files can record them; got {kwargs!r}: {exc}."
        ) from None


def create_model(
    name: str,
    num_classes: int | None = None,
    img_size: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    **timm_kwargs: Any,
) -> nn.Module:
    """Create a timm model with ``exportable=True`` and optionally load a local checkpoint.

    `checkpoint` may be ``.safetensors``, ``.pth``/``.pt``/``.bin`` (plain state dicts or
    nested under ``state_dict``/``model``), or a Google ViT ``.npz``. When `num_classes`
    is given and differs from the checkpoint's classifier, the classifier is left freshly
    initialised (the usual fine-tuning start); any other mismatch is an error. Weights not
    loaded from anywhere are drawn under `INIT_SEED`, so they are reproducible.
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(
            f"Unknown backbone '{name}': timm has no model of that name.{hint} "
            "See `timm.list_models('vit_*')` for ViT backbones."
        )
    kwargs = dict(timm_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        with torch.random.fork_rng(devices=[]):  # leaves the caller's random state alone
            torch.manual_seed(INIT_SEED)
            model = timm.create_model(name, pretrained=pretrained, exportable=True, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise InputError(f"timm could not build '{name}' with arguments {kwargs}: {exc}") from None

    checkpoint_sha = None
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, keep_fresh_head=num_classes is not None)
        checkpoint_sha = sha256_file(checkpoint)

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    spec = BackboneSpec(
        name=name,
        num_classes=int(model.num_classes),
        img_size=_image_size(model, cfg),
        checkpoint_sha256=checkpoint_sha,
        pretrained=bool(pretrained),
        model_kwargs=_json_safe(dict(timm_kwargs), name),
        mean=tuple(float(v) for v in cfg.get("mean", (0.5, 0.5, 0.5))),
        std=tuple(float(v) for v in cfg.get("std", (0.5, 0.5, 0.5))),
    )
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model.eval()


def _image_size(model: nn.Module, cfg: dict[str, Any]) -> int:
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size is None:
        size = cfg.get("input_size", (3, 224, 224))[1:]
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise InputError(f"Only square inputs are supported; the model expects {size}.")
        size = size[0]
    return int(size)


def backbone_spec(model: nn.Module) -> BackboneSpec:
    """The spec recorded by `create_model` (models made elsewhere are described from timm)."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is not None:
        return spec
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    name = cfg.get("architecture")
    if not name:
        raise InputError(
            "This model was not made by karst_deploy.create_model and timm recorded no "
            "architecture name for it; create it with karst_deploy.create_model(name, ...)."
        )
    return BackboneSpec(
        name=name, num_classes=int(model.num_classes), img_size=_image_size(model, cfg)
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist or is not a file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(
                f"Checkpoint '{path}' has suffix '{suffix}'; expected .safetensors, "
                ".pth/.pt/.bin, or a Google ViT .npz."
            )
    except CheckpointError:
        raise
    except Exception as exc:  # any parser failure means "not a readable checkpoint"
        raise CheckpointError(
            f"Checkpoint '{path}' could not be read as a {suffix} file: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(data, dict):
        for nest in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(data.get(nest), dict):
                data = data[nest]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(
            f"Checkpoint '{path}' does not hold a state dict of tensors (also looked under "
            "'state_dict' and 'model')."
        )
    return {k.removeprefix("module."): v for k, v in data.items()}


def classifier_parameter_names(model: nn.Module) -> list[str]:
    """timm names of the classifier head's parameters (trained alongside adapters)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        return []
    for prefix, module in model.named_modules():
        if module is head:
            return [f"{prefix}.{name}" for name, _ in head.named_parameters()]
    return []


def norm_parameter_names(model: nn.Module) -> list[str]:
    """timm names of every LayerNorm weight and bias (trained whole by some recipes)."""
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, nn.LayerNorm)
        for name, _ in module.named_parameters(recurse=False)
    ]


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, keep_fresh_head: bool = False
) -> None:
    """Load a local checkpoint into `model` strictly, explaining any mismatch."""
    path = Path(path)
    if path.suffix.lower() in (".npz", ".npy"):
        if not path.is_file():
            raise CheckpointError(f"Checkpoint '{path}' does not exist or is not a file.")
        if not hasattr(model, "load_pretrained"):
            raise CheckpointError(
                f"'{path}' is a NumPy checkpoint, which timm can load only into ViT-style "
                f"models; {type(model).__name__} has no loader for it."
            )
        try:
            model.load_pretrained(str(path))
        except Exception as exc:  # timm raises KeyError/ValueError/RuntimeError here
            raise CheckpointError(
                f"Checkpoint '{path}' is not a Google ViT .npz that fits this model: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return

    state = read_state_dict(path)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        # timm's per-family remapping (original-repo keys, position-embedding resize); it only
        # helps foreign layouts, so a filter that fails leaves the raw keys to be checked.
        with contextlib.suppress(Exception):
            state = filter_fn(state, model)
    expected = model.state_dict()
    head = set(classifier_parameter_names(model))
    dropped = []
    for key in sorted(set(state) & set(expected)):
        if state[key].shape != expected[key].shape:
            if keep_fresh_head and key in head:
                dropped.append(key)
                continue
            raise CheckpointError(
                f"Checkpoint '{path}' does not fit the model: key '{key}' has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(expected[key].shape)}."
            )
    for key in dropped:
        del state[key]
    missing = sorted(set(expected) - set(state) - set(dropped))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first '{unexpected[0]}'")
        raise CheckpointError(
            f"Checkpoint '{path}' does not fit the model: {' and '.join(parts)}. "
            "Check that --backbone names the architecture the checkpoint was trained with."
        )
    model.load_state_dict(state, strict=not dropped)
