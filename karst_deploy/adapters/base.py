"""The merge contract every adapter method follows.

An adapter method contributes, for each targeted ``nn.Linear`` at module path ``P``, a
`LayerAdapter` that knows two things: how to compute the adapted layer's output from the
frozen ``(W0, b0)`` (`adapted_forward`), and how to fold itself into new dense weights
(`fold`, exact, in float64). `add_adapters` swaps each target for an `AdaptedLinear`
holding the frozen weights and the adapter; `merge` turns the result back into the plain
backbone with different numbers in it: same modules, same state-dict keys and shapes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import typing
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

# The registry is its own module; `register` and `METHODS` are re-exported for the method modules.
from karst_deploy.adapters.registry import METHODS, method_for, register  # noqa: F401
from karst_deploy.errors import AdapterFileError, InputError, MergeError
from karst_deploy.models import classifier_parameter_names

CONFIG_ATTRIBUTE = "karst_deploy_adapter_config"

# Short target names resolve to these module-path suffixes (timm's ViT/DeiT/Swin naming).
TARGET_SUFFIXES = {
    "qkv": "attn.qkv",
    "proj": "attn.proj",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}
DEFAULT_TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Base of every method's hyper-parameters.

    Subclasses are frozen dataclasses whose fields are ints, floats, strings (optionally
    restricted by `choices`), tuples of ints and tuples of strings; their last field is
    ``targets``.
    """

    method: ClassVar[str] = ""
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Fields an adapter_config.json may omit (taking the default): only keys added after
    #: files without them were written. Every other field must be stated by the file.
    optional: ClassVar[frozenset[str]] = frozenset()
    # Values meant by files written before a key existed (a layout change keeps old files
    # loading as they always did; new configs get the field's default).
    file_defaults: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        # Validate in the constructor too, so a bad Python call fails as clearly as a bad file.
        _validate_fields(type(self), self.to_hparams(), source=f"{type(self).__name__}(...)")

    def to_hparams(self) -> dict[str, Any]:
        """Fields as plain JSON values (the adapter_config.json hyper-parameters)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_hparams(cls, data: dict[str, Any], source: str, prefix: str = "") -> AdapterConfig:
        """Build from adapter_config.json values, naming the first bad key on failure.

        A file states every hyper-parameter it was trained with (except `optional` ones, and
        keys added by a later layout change, which take their `file_defaults` meaning): a
        missing one is refused rather than silently taking today's default. `prefix` is
        where the values sit in the file (e.g. ``structured.``), for the messages.
        """
        for field in dataclasses.fields(cls):
            omissible = field.name in cls.optional or field.name in cls.file_defaults
            if field.name not in data and not omissible:
                raise AdapterFileError(f"{source}: required key '{prefix}{field.name}' is missing.")
        values = _validate_fields(cls, {**cls.file_defaults, **data}, source, prefix)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


#: Ranges of hyper-parameters by field name, whichever method has them. They bound the
#: work a config can ask for before any tensor is compared (kernels are initialised one by
#: one) and refuse values that silently disable an adapter (a zero scale). Generous: the
#: papers use rank 8, 8 KARST kernels, 32 KAdaptation kernels, factor 8.
INT_BOUNDS = {"rank": (1, 4096), "kernels": (1, 256), "factor": (1, 4096)}
FLOAT_BOUNDS = {"alpha": (0.0, 65536.0), "scale": (0.0, 65536.0)}  # (low, high]: never 0


def _validate_fields(
    cls: type, data: dict[str, Any], source: str, prefix: str = ""
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            if field.default is dataclasses.MISSING:
                raise AdapterFileError(f"{source}: required key '{field.name}' is missing.")
            values[field.name] = field.default
            continue
        value = data[field.name]
        expected = hints[field.name]
        if expected is int:
            low, high = INT_BOUNDS.get(field.name, (1, 2**31))
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
            want = f"an integer in [{low}, {high}]"
        elif expected is float:
            low, high = FLOAT_BOUNDS.get(field.name, (-math.inf, math.inf))
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                # Comparisons, not math.isfinite: they hold for NaN and for ints too long
                # for a float (10**400), which float() and isfinite() cannot take.
                and -sys.float_info.max <= value <= sys.float_info.max
                and (field.name not in FLOAT_BOUNDS or low < value <= high)
            )
            want = (
                f"a number in ({low}, {high}]" if field.name in FLOAT_BOUNDS else "a finite number"
            )
        elif expected is str:
            allowed = cls.choices.get(field.name)
            ok = isinstance(value, str) and (allowed is None or value in allowed)
            want = f"one of {list(allowed)}" if allowed else "a string"
        elif expected == tuple[int, ...]:  # may be empty: "not used"
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
            )
            want = "a list of positive integers"
        else:  # tuple[str, ...]
            allowed = cls.choices.get(field.name)
            ok = (
                isinstance(value, (list, tuple))
                and len(value) > 0
                and all(
                    isinstance(v, str) and v and (allowed is None or v in allowed) for v in value
                )
                and len(set(value)) == len(value)
            )
            want = (
                f"a non-empty list of distinct values from {list(allowed)}"
                if allowed
                else "a non-empty list of distinct module names such as ['qkv', 'proj']"
            )
        if not ok:
            shown = repr(value) if len(repr(value)) <= 120 else f"{repr(value)[:119]}…"
            raise AdapterFileError(
                f"{source}: key '{prefix}{field.name}' is {shown}; expected {want}."
            )
        values[field.name] = float(value) if expected is float else value
    return values


class LayerAdapter(nn.Module):
    """One method's trainable state for one Linear, plus its forward and exact fold."""

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW·x without forming ΔW (methods with a plain additive update implement this)."""
        raise NotImplementedError

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """ΔW ∈ R^{out×in}, computed in `dtype` (default: the adapter's); pure."""
        raise NotImplementedError

    def adapted_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """Output of the adapted layer computed from the frozen weights (unmerged form)."""
        return F.linear(x, weight, bias) + self.delta(x)

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense ``(W*, b*)`` equal to this layer, computed in `weight`'s dtype (float64 in merge).

        `bias` is a zero vector where the layer has none.
        """
        return weight + self.delta_weight(weight.dtype), bias


class AdaptedLinear(nn.Module):
    """A targeted Linear: the frozen ``weight``/``bias`` under their original names plus an adapter.

    Keeping ``P.weight`` and ``P.bias`` makes the adapted state dict a superset of the
    backbone's; the adapter's parameters appear as ``P.<method>.<name>``.
    """

    def __init__(self, linear: nn.Linear, method: str, adapter: LayerAdapter) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.method = method
        self.add_module(method, adapter)

    @property
    def adapter(self) -> LayerAdapter:
        return getattr(self, self.method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.adapted_forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class AdaptedNorm(nn.Module):
    """A LayerNorm with an adapter (SPT's entry deltas): like `AdaptedLinear`, the frozen
    ``weight``/``bias`` keep their names; merging puts back a copy of the original module."""

    def __init__(self, norm: nn.LayerNorm, method: str, adapter: LayerAdapter) -> None:
        super().__init__()
        self.weight = norm.weight
        self.bias = norm.bias
        self.method = method
        self.add_module(method, adapter)
        self.original = (norm,)  # a tuple: kept, not registered (its tensors are ours)

    @property
    def adapter(self) -> LayerAdapter:
        return getattr(self, self.method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.adapted_forward(x, self.weight, self.bias)


class AdapterMethod:
    """A registered method: its config type and how it builds layer adapters."""

    name: ClassVar[str]
    config_type: ClassVar[type[AdapterConfig]]
    #: Built from its own options alone (``train --method``); SPT needs a placement.
    standalone: ClassVar[bool] = True
    #: Usable as SPT's structured module (one layer adapter per Linear, nothing shared).
    structurable: ClassVar[bool] = False

    def module_targets(self, config: AdapterConfig) -> tuple[str, ...]:
        """The Linear layers (short names or path suffixes) this config adapts."""
        return config.targets

    def resolve(self, config: AdapterConfig, model: nn.Module) -> dict[str, nn.Module]:
        """The layers this config adapts, by module path (Linear layers by their targets)."""
        names = self.module_targets(config)
        # A method with no target layers (the linear probe) trains only the classifier head.
        return resolve_targets(model, names) if names else {}

    def extra_parameters(self, config: AdapterConfig, model: nn.Module) -> list[str]:
        """Backbone parameters trained whole besides the head (SPT's cls token)."""
        return []

    def validate(self, config: AdapterConfig, targets: dict[str, nn.Linear]) -> None:
        """Refuse a config that does not fit the model's target layers (before any is built)."""

    def shared_module(
        self, config: AdapterConfig, targets: dict[str, nn.Linear]
    ) -> nn.Module | None:
        """A module of parameters shared by all layers (stored at the model root), if any."""
        return None

    def files(self, config: AdapterConfig) -> dict[str, str]:
        """Extra text files of the adapter directory, by name (e.g. SPT's placement.json)."""
        return {}

    def bind_tensors(
        self, config: AdapterConfig, tensors: dict[str, torch.Tensor], source: str
    ) -> AdapterConfig:
        """The config completed with structure stored in adapter.safetensors (SPT's indices).

        Called on load, before the adapters are built; `source` names the file for errors.
        """
        return config

    def layer_adapter(
        self, path: str, linear: nn.Linear, config: AdapterConfig, shared: nn.Module | None
    ) -> LayerAdapter:
        raise NotImplementedError


def resolve_targets(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    """Module paths of every Linear matched by `targets`, in model order."""
    suffixes = [TARGET_SUFFIXES.get(t, t) for t in targets]
    found = {
        path: module
        for path, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and any(path.endswith(f".{s}") or path == s for s in suffixes)
    }
    if not found:
        raise InputError(
            f"No nn.Linear in {type(model).__name__} matches the targets {list(targets)} "
            f"(looked for module paths ending in {suffixes}). karst-deploy adapts timm "
            "transformers whose attention and MLP use Linear layers named qkv/proj/fc1/fc2.",
            parameters=("targets",),
        )
    unmatched = [
        target
        for target, suffix in zip(targets, suffixes, strict=True)
        if not any(path.endswith(f".{suffix}") or path == suffix for path in found)
    ]
    if unmatched:  # a misspelling (prj) would otherwise train the other targets silently
        raise InputError(
            f"targets {','.join(targets)}: {', '.join(repr(t) for t in unmatched)} "
            f"match{'es' if len(unmatched) == 1 else ''} no nn.Linear of "
            f"{type(model).__name__}; expected {', '.join(DEFAULT_TARGETS)} (or a module path "
            "suffix such as attn.qkv).",
            parameters=("targets",),
        )
    return found


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def adapter_config(model: nn.Module) -> AdapterConfig | None:
    """The config of the adapters on `model`, or None for a plain backbone."""
    return getattr(model, CONFIG_ATTRIBUTE, None)


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear | AdaptedNorm]]:
    for path, module in model.named_modules():
        if isinstance(module, (AdaptedLinear, AdaptedNorm)):
            yield path, module


class AdapterPlan:
    """Adapters built for a model but not yet installed in it (so validation can fail cleanly)."""

    def __init__(self, model: nn.Module, config: AdapterConfig, *, meta: bool = False) -> None:
        """`meta` builds the adapters on the meta device: their shapes, without memory.

        That is how a loader derives every tensor shape a config implies (on a real model
        or a `karst_deploy.models.skeleton`) and compares it with a file's before building.
        """
        if adapter_config(model) is not None:
            raise InputError(
                "This model already carries adapters; merge it (karst_deploy.merge) or start "
                "from a fresh backbone before adding others."
            )
        self.config = config
        method = method_for(config.method)
        targets = method.resolve(config, model)
        method.validate(config, targets)
        self.extra = method.extra_parameters(config, model)
        with torch.device("meta") if meta else contextlib.nullcontext():
            self.shared = method.shared_module(config, targets)
            self.layers = {
                path: method.layer_adapter(path, linear, config, self.shared)
                for path, linear in targets.items()
            }
        if meta:
            return
        if self.shared is not None:
            first = next(iter(targets.values())).weight
            self.shared.to(device=first.device, dtype=first.dtype)
        for path, layer in self.layers.items():
            layer.to(device=targets[path].weight.device, dtype=targets[path].weight.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Keys and tensors exactly as `adapter_state_dict` will report them once installed."""
        method = self.config.method
        state = {
            f"{path}.{method}.{name}": tensor
            for path, layer in self.layers.items()
            for name, tensor in layer.state_dict().items()
        }
        if self.shared is not None:
            state.update({f"{method}.{k}": v for k, v in self.shared.state_dict().items()})
        return state

    def install(self, model: nn.Module) -> nn.Module:
        """Freeze the backbone, put the adapters in, make adapters and head trainable."""
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if self.shared is not None:
            model.add_module(self.config.method, self.shared)
        for path, layer in self.layers.items():
            module = model.get_submodule(path)
            wrapper = AdaptedNorm if isinstance(module, nn.LayerNorm) else AdaptedLinear
            _set_submodule(model, path, wrapper(module, self.config.method, layer))
        head_names = set(classifier_parameter_names(model)) | set(self.extra)
        for name, parameter in model.named_parameters():
            if name in head_names:
                parameter.requires_grad_(True)
        setattr(model, CONFIG_ATTRIBUTE, self.config)
        return model


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Put `config`'s adapters on every targeted Linear of `model` (in place) and return it.

    The backbone is frozen; the adapters and the classifier head are trainable. Every
    method initialises so that the adapted model's output equals the backbone's.
    """
    return AdapterPlan(model, config).install(model)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's own tensors, keyed ``P.<method>.<name>`` (shared ones ``<method>.<name>``)."""
    config = adapter_config(model)
    if config is None:
        raise InputError("This model carries no adapters (add_adapters or load_adapters first).")
    state = {}
    for path, layer in adapted_layers(model):
        for name, tensor in layer.adapter.state_dict().items():
            state[f"{path}.{config.method}.{name}"] = tensor
    shared = getattr(model, config.method, None)
    if isinstance(shared, nn.Module) and not isinstance(shared, AdaptedLinear):
        for name, tensor in shared.state_dict().items():
            state[f"{config.method}.{name}"] = tensor
    return state


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """A new plain model with every adapter folded into dense weights; `model` is untouched.

    Folding runs in float64 from eval-mode semantics (no dropout of any kind enters a
    merge) and is cast back to each layer's dtype. A non-finite result is refused with
    the name of the layer that produced it.
    """
    config = adapter_config(model)
    if config is None:
        raise InputError("merge() needs a model with adapters; this one is a plain backbone.")
    layers = dict(adapted_layers(model))
    # Copy everything except the adapted layers (their weights are about to be replaced, so
    # copying them would only double the peak memory); they are rebuilt below.
    merged = copy.deepcopy(model, memo={id(layer): None for layer in layers.values()})
    for path, layer in layers.items():
        weight = layer.weight.detach().to(torch.float64)
        has_bias = layer.bias is not None
        bias = (
            layer.bias.detach().to(torch.float64)
            if has_bias
            else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
        )
        new_weight, new_bias = layer.adapter.fold(weight, bias)
        del weight, bias
        # Check after casting back: a float64 result can still overflow the layer's dtype.
        new_weight = new_weight.to(layer.weight.dtype)
        new_bias = new_bias.to(layer.weight.dtype)
        for kind, tensor in (("weight", new_weight), ("bias", new_bias)):
            if not torch.isfinite(tensor).all():
                raise MergeError(
                    f"Merging the {config.method} adapter into '{path}' gives a non-finite "
                    f"{kind} ({int((~torch.isfinite(tensor)).sum())} entries in "
                    f"{str(tensor.dtype).removeprefix('torch.')}); the adapter values are "
                    "corrupt or diverged in training."
                )
        if not has_bias and bool(new_bias.abs().max() > 0):
            raise MergeError(
                f"'{path}' has no bias, yet the {config.method} adapter folds a shift into it; "
                "the merged model would not keep the backbone's structure."
            )
        if isinstance(layer, AdaptedNorm):
            norm = copy.deepcopy(layer.original[0])
            norm.weight = nn.Parameter(new_weight)
            if has_bias:
                norm.bias = nn.Parameter(new_bias)
            _set_submodule(merged, path, norm)
            continue
        linear = torch.nn.utils.skip_init(
            nn.Linear,
            layer.in_features,
            layer.out_features,
            bias=has_bias,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        linear.weight = nn.Parameter(new_weight)
        if has_bias:
            linear.bias = nn.Parameter(new_bias)
        _set_submodule(merged, path, linear)
    if isinstance(getattr(merged, config.method, None), nn.Module):
        delattr(merged, config.method)
    delattr(merged, CONFIG_ATTRIBUTE)
    for parameter in merged.parameters():
        parameter.requires_grad_(True)
    return merged.eval()


def count_trainable(model: nn.Module, *, include_head: bool = False) -> int:
    """Number of trainable parameter entries (shared parameters counted once)."""
    head = set(classifier_parameter_names(model))
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and (include_head or name not in head)
    )


def kaiming_uniform(*shape: int) -> torch.Tensor:
    """A stack of matrices, each initialised like nn.Linear (Kaiming-uniform, a = √5)."""
    tensor = torch.empty(shape)
    for matrix in tensor.view(-1, shape[-2], shape[-1]):
        nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
    return tensor
