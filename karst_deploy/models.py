"""timm backbone creation and local checkpoint loading.

Every model is built with ``exportable=True`` (timm then picks export-friendly layers,
e.g. no fused attention), so the PyTorch reference, the ONNX export and every latency
baseline are the same network.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
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

#: Bounds on what a backbone description may ask for. The largest input of timm's ViT/Swin
#: pretrained configs is 1024 px (SAM); the largest timm ViT has about 1.8 billion
#: parameters (vit_gigantic). A description beyond these is refused before anything is built.
MAX_NAME_LENGTH = 200
MAX_IMG_SIZE = 1024
MAX_NUM_CLASSES = 1_000_000
MAX_PARAMETERS = 2**31


def _int_in(low: int, high: int) -> tuple[Callable[[Any], bool], str]:
    def ok(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return ok, f"an integer in [{low}, {high}]"


def _ints_in(low: int, high: int, length: tuple[int, int]) -> tuple[Callable[[Any], bool], str]:
    ok_int, _ = _int_in(low, high)

    def ok(value: Any) -> bool:
        return (
            isinstance(value, (list, tuple))  # JSON gives lists; Python callers may use tuples
            and length[0] <= len(value) <= length[1]
            and all(ok_int(v) for v in value)
        )

    return ok, f"a list of {length[0]} to {length[1]} integers in [{low}, {high}]"


def _int_or_ints(low: int, high: int, length: tuple[int, int]) -> tuple[Callable[[Any], bool], str]:
    one, one_text = _int_in(low, high)
    many, many_text = _ints_in(low, high, length)
    return (lambda v: one(v) or many(v)), f"{one_text} or {many_text}"


def _number_in(low: float, high: float, *, low_open: bool = False) -> tuple[Callable, str]:
    def ok(value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        # Comparisons only: NaN fails them, and ints too long for a float (10**400) pass
        # through them without the OverflowError math.isfinite would raise.
        return (low < value if low_open else low <= value) and value <= high

    return ok, f"a number in {'(' if low_open else '['}{low}, {high}]"


def _boolean() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def _optional(check: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    ok, text = check
    return (lambda v: v is None or ok(v)), f"null or {text}"


def _choice(*values: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and v in values), f"one of {list(values)}"


#: The timm arguments a backbone description (adapter file, ONNX provenance, --model-kwargs)
#: may set: the shape of a ViT/DeiT (VisionTransformer) or Swin (SwinTransformer) and its
#: dropout rates, as JSON scalars or short lists of integers. Everything else — paths
#: (checkpoint_path, cache_dir), pretrained configs and overlays, layer classes, devices —
#: is refused, so no file decides what timm loads or from where.
MODEL_KWARGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "patch_size": _int_in(1, MAX_IMG_SIZE),
    "embed_dim": _int_in(1, 8192),
    "depth": _int_in(1, 64),
    "depths": _ints_in(1, 64, (1, 8)),
    "num_heads": _int_or_ints(1, 256, (1, 8)),
    "head_dim": _optional(_int_in(1, 1024)),
    "window_size": _int_or_ints(1, MAX_IMG_SIZE, (2, 2)),
    "mlp_ratio": _number_in(0.0, 16.0, low_open=True),
    "qkv_bias": _boolean(),
    "qk_norm": _boolean(),
    "class_token": _boolean(),
    "no_embed_class": _boolean(),
    "reg_tokens": _int_in(0, 64),
    "pre_norm": _boolean(),
    "fc_norm": _optional(_boolean()),
    "init_values": _optional(_number_in(0.0, 1.0, low_open=True)),
    "global_pool": _choice("", "token", "avg", "max", "avgmax", "map"),
    "drop_rate": _number_in(0.0, 0.99),
    "proj_drop_rate": _number_in(0.0, 0.99),
    "attn_drop_rate": _number_in(0.0, 0.99),
    "drop_path_rate": _number_in(0.0, 0.99),
    # 1: a grayscale backbone (images reduced to luma, never replicated); 3: RGB.
    "in_chans": ((lambda v: v in (1, 3) and not isinstance(v, bool)), "1 or 3"),
}
#: Backbone fields with their own argument (and flag): never accepted among the kwargs.
OWN_ARGUMENTS = ("num_classes", "img_size")


def check_model_kwargs(
    kwargs: Any, source: str, key: str = "model_kwargs", *, allow_img_size: bool = False
) -> dict[str, Any]:
    """`kwargs` if every entry is an allowed architecture argument in range; else InputError.

    `source` (a file, or a flag such as ``--model-kwargs``) and `key` (where the object sits
    in it) name the offending entry in the message. `allow_img_size` admits ``img_size``
    (callers that pop it into its own argument, e.g. training's --model-kwargs).
    """
    if not isinstance(kwargs, dict):
        raise InputError(f"{source}: key '{key}' must be a JSON object of timm arguments.")
    allowed = {**MODEL_KWARGS}
    if allow_img_size:
        allowed["img_size"] = _int_in(1, MAX_IMG_SIZE)
    for name, value in kwargs.items():
        where = f"{key}.{name}" if key else str(name)
        if name not in allowed:
            if name in OWN_ARGUMENTS:
                raise InputError(
                    f"{source}: key '{_short(where)}' is refused: {name} is an argument of its "
                    "own, not a model keyword.",
                    parameters=(name,),
                )
            raise InputError(
                f"{source}: key '{_short(where)}' is refused: karst-deploy passes to timm only "
                f"the architecture arguments {sorted(allowed)}. Paths, downloads and "
                "pretrained configs never come from a file or keyword; pass backbone weights "
                "as checkpoint (or timm's own with pretrained=True).",
                parameters=("checkpoint", "pretrained"),
            )
        ok, want = allowed[name]
        if not ok(value):
            raise InputError(f"{source}: key '{where}' is {_short(repr(value))}; expected {want}.")
    return dict(kwargs)


def _short(text: str, limit: int = 120) -> str:
    """`text` cut to `limit` characters, so a hostile value cannot flood the message."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone: what adapter files and ONNX metadata record."""

    name: str
    num_classes: int
    img_size: int
    checkpoint_sha256: str | None = None
    pretrained: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Image normalisation, one value per input channel. None (a spec read from an adapter
    # that predates recording them) means the backbone's timm default, set when built.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def in_chans(self) -> int:
        """Input channels: 3 (RGB) unless the model_kwargs ask for a grayscale backbone."""
        return int(self.model_kwargs.get("in_chans", 3))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("mean", "std"):
            data[key] = None if data[key] is None else list(data[key])
        return data

    def build(self, checkpoint: str | os.PathLike[str] | None = None) -> nn.Module:
        """Create the backbone this spec describes (loading `checkpoint` if given).

        ``pretrained`` downloads timm's weights; a spec read from a file carries it only when
        the user allowed it (`karst_deploy.adapters.load_adapted_model`'s ``pretrained``).
        """
        return create_model(
            self.name,
            num_classes=self.num_classes,
            img_size=self.img_size,
            checkpoint=checkpoint,
            pretrained=self.pretrained,
            mean=self.mean,
            std=self.std,
            **self.model_kwargs,
        )

    def skeleton(self) -> nn.Module:
        """This backbone on the meta device: every shape, no memory, no weights (`skeleton`)."""
        return skeleton(self.name, self.num_classes, self.img_size, **self.model_kwargs)


def _json_safe(kwargs: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(kwargs))
    except TypeError as exc:
        raise InputError(
            f"Model keyword arguments for '{name}' must be plain JSON values (numbers, "
            f"strings, lists) so adapter files can record them; got {kwargs!r}: {exc}."
        ) from None


def check_normalisation(value: Any, key: str, channels: int, where: str) -> tuple[float, ...]:
    """`value` as a mean or std tuple: `channels` finite numbers (std > 0), or InputError."""
    low, high = (1e-6, 1e3) if key == "std" else (-1e3, 1e3)
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == channels
        and all(_number_in(low, high)[0](v) for v in value)
    )
    if not ok:
        raise InputError(
            f"{where} is {_short(repr(value))}; expected {channels} number(s) in [{low:g}, "
            f"{high:g}], one per input channel ({'grayscale' if channels == 1 else 'R, G, B'})."
        )
    return tuple(float(v) for v in value)


def _default_normalisation(cfg: dict[str, Any], key: str, channels: int) -> tuple[float, ...]:
    """timm's pretrained-config mean or std; for a grayscale backbone, its luma average."""
    from karst_deploy.data import LUMA_WEIGHTS

    values = tuple(float(v) for v in cfg.get(key, (0.5, 0.5, 0.5)))
    if channels == 1 and len(values) == 3:
        return (sum(w * v for w, v in zip(LUMA_WEIGHTS, values, strict=True)),)
    return values


def create_model(
    name: str,
    num_classes: int | None = None,
    img_size: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Create a timm model with ``exportable=True`` and optionally load a local checkpoint.

    `mean`/`std` (one value per input channel) are recorded as the images' normalisation;
    None takes timm's pretrained config (for ``in_chans: 1``, its luma-weighted average).

    `checkpoint` may be ``.safetensors``, ``.pth``/``.pt``/``.bin`` (plain state dicts or
    nested under ``state_dict``/``model``), or a Google ViT ``.npz``. When `num_classes`
    is given and differs from the checkpoint's classifier, the classifier is left freshly
    initialised (the usual fine-tuning start); any other mismatch is an error. Weights not
    loaded from anywhere are drawn under `INIT_SEED`, so they are reproducible.
    """
    import timm

    if not isinstance(pretrained, bool):
        raise InputError(f"pretrained must be True or False, not {_short(repr(pretrained))}.")
    kwargs = _checked_arguments(name, num_classes, img_size, timm_kwargs)
    channels = int(timm_kwargs.get("in_chans", 3))
    given = {
        key: check_normalisation(value, key, channels, f"--{key}")
        for key, value in (("mean", mean), ("std", std))
        if value is not None
    }
    skeleton(name, num_classes, img_size, **timm_kwargs)  # sizes and shapes before memory
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
        mean=given.get("mean") or _default_normalisation(cfg, "mean", channels),
        std=given.get("std") or _default_normalisation(cfg, "std", channels),
    )
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model.eval()


def _checked_arguments(
    name: Any, num_classes: Any, img_size: Any, timm_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The arguments for timm, after refusing an unknown name or any out-of-range value."""
    import timm

    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise InputError(
            f"Backbone name {_short(repr(name))} is not a timm model name (a string of at most "
            f"{MAX_NAME_LENGTH} characters)."
        )
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(
            f"Unknown backbone '{name}': timm has no model of that name.{hint} "
            "See `timm.list_models('vit_*')` for ViT backbones."
        )
    check_model_kwargs(timm_kwargs, "create_model()", "model_kwargs")
    kwargs = dict(timm_kwargs)
    for key, value, high in (
        ("num_classes", num_classes, MAX_NUM_CLASSES),
        ("img_size", img_size, MAX_IMG_SIZE),
    ):
        if value is None:
            continue
        low = 0 if key == "num_classes" else 1
        if not _int_in(low, high)[0](value):
            raise InputError(
                f"Backbone '{name}': {key} is {_short(repr(value))}; expected an integer in "
                f"[{low}, {high}].",
                parameters=(key,),
            )
        kwargs[key] = value
    return kwargs


def skeleton(
    name: str, num_classes: int | None = None, img_size: int | None = None, **timm_kwargs: Any
) -> nn.Module:
    """The backbone built on the meta device and run once on a meta input: shapes only.

    Costs no memory and no arithmetic, so hostile sizes are refused here — more than
    `MAX_PARAMETERS` parameters, or an input the network cannot take (an image smaller than
    a patch, a Swin window that does not tile it) — before the real model is built. Callers
    derive expected tensor shapes from it without allocating them.
    """
    import timm

    kwargs = _checked_arguments(name, num_classes, img_size, timm_kwargs)
    described = f"'{name}' with {kwargs}"
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, exportable=True, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError) as exc:
        raise InputError(f"timm could not build {described}: {exc}") from None
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > MAX_PARAMETERS:
        raise InputError(
            f"Backbone {described} would have {parameters:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} karst-deploy builds; check depth, embed_dim and num_classes."
        )
    size = _image_size(model, getattr(model, "pretrained_cfg", {}) or {})
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = max(patch) if isinstance(patch, (tuple, list)) else patch
    if isinstance(patch, int) and size < patch:
        raise InputError(
            f"Backbone {described}: img_size {size} is smaller than its patch ({patch}); an "
            "image must hold at least one patch."
        )
    try:
        with torch.no_grad():
            channels = int(kwargs.get("in_chans", 3))
            model.eval()(torch.empty(1, channels, size, size, device="meta"))
    except NotImplementedError:
        pass  # an operator without a meta kernel says nothing about the arguments
    except (TypeError, ValueError, AssertionError, RuntimeError, IndexError) as exc:
        raise InputError(f"Backbone {described} cannot take a {size}×{size} image: {exc}") from None
    return model


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


def input_channels(model: nn.Module) -> int:
    """Channels of the images `model` takes: its patch embedding's (3 when it has none)."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    return int(getattr(proj, "in_channels", 3))


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
        name=name,
        num_classes=int(model.num_classes),
        img_size=_image_size(model, cfg),
        mean=_default_normalisation(cfg, "mean", 3),
        std=_default_normalisation(cfg, "std", 3),
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


def infer_from_checkpoint(
    name: str, checkpoint: str | os.PathLike[str], **timm_kwargs: Any
) -> dict[str, int]:
    """The class count and, where a learned position embedding fixes it, the input size
    that the checkpoint of backbone `name` was trained with (keys ``num_classes``,
    ``img_size``; a key is absent when the file does not say).

    The class count is the first dimension of the classifier's weight; the input size is
    the patch size times the side of the square patch grid the position embedding holds
    (after the class/register tokens). Only shapes are read; nothing is built in memory.
    """
    if Path(checkpoint).suffix.lower() in (".npz", ".npy"):
        return {}
    state = read_state_dict(checkpoint)
    model = skeleton(name, **timm_kwargs)
    found: dict[str, int] = {}
    weights = [n for n in classifier_parameter_names(model) if n.endswith("weight")]
    if weights and weights[0] in state and state[weights[0]].ndim == 2:
        found["num_classes"] = int(state[weights[0]].shape[0])
    pos_embed = state.get("pos_embed")
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if pos_embed is not None and pos_embed.ndim == 3 and isinstance(patch, int):
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        cells = int(pos_embed.shape[1]) - prefix
        side = math.isqrt(cells) if cells > 0 else 0
        if side > 0 and side * side == cells and side * patch <= MAX_IMG_SIZE:
            found["img_size"] = side * patch
    return found


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
            "Check that backbone names the architecture the checkpoint was trained with.",
            parameters=("backbone",),
        )
    model.load_state_dict(state, strict=not dropped)


@contextlib.contextmanager
def training_drop_path(model: nn.Module, rate: float) -> Iterator[int]:
    """Stochastic depth for training only, at linearly increasing rates 0 → `rate` per block.

    timm's ``drop_path_rate`` argument would be recorded in the backbone's model_kwargs and
    tie the adapter to backbones built that way; instead the blocks' ``drop_path1/2``
    modules are swapped for ``timm.layers.DropPath`` here and restored on exit, so the
    recorded backbone, evaluation and merging are untouched. Yields the number of blocks.
    """
    from timm.layers import DropPath

    blocks = [m for m in model.modules() if hasattr(m, "drop_path1") and hasattr(m, "drop_path2")]
    saved = [(block.drop_path1, block.drop_path2) for block in blocks]
    rates = torch.linspace(0.0, rate, len(blocks)).tolist()
    try:
        for block, block_rate in zip(blocks, rates, strict=True):
            for name in ("drop_path1", "drop_path2"):
                setattr(block, name, DropPath(block_rate) if block_rate > 0 else nn.Identity())
        yield len(blocks)
    finally:
        for block, (first, second) in zip(blocks, saved, strict=True):
            block.drop_path1, block.drop_path2 = first, second
