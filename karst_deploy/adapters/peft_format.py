"""Hugging Face PEFT adapter directories: read, validate, fold through the one merge contract.

A PEFT directory (``adapter_config.json`` with a ``peft_type`` + ``adapter_model.safetensors``,
as ``PeftModel.save_pretrained`` writes it) is read without PEFT installed: every tensor key is
``base_model.model.<module path>.<name>`` and every config key is checked, so a directory that
does not describe exactly one foldable adapter on the given timm backbone is refused naming
the key at fault. Each adapted ``nn.Linear`` becomes an `AdaptedLinear` holding one of the
layer adapters below, so `karst_deploy.adapters.merge` folds it in float64 like any method.

The maths follows PEFT 0.21's eval-mode forward and ``merge_and_unload`` (s is the layer's
scaling, W, b the frozen weights):

* LoRA: y = Wx + b + s·B(Ax) [+ s·b_B with ``lora_bias``]; s = α/r, or α/√r with
  ``use_rslora``; r, α per layer from ``rank_pattern``/``alpha_pattern``. Fold: W + s·BA.
* DoRA (``use_dora``): y = (m / ‖W + s·BA‖_row) ⊙ (Wx + s·BAx) + b. Fold: diag(m/‖·‖)(W + s·BA).
* LoKr: ΔW = s · (w1 ⊗ w2), w1 = ``lokr_w1`` or ``lokr_w1_a``·``lokr_w1_b``, likewise w2; s = α/r.
* LoHa: ΔW = s · (w1a·w1b) ⊙ (w2a·w2b); s = α/r.
* IA³: feed-forward layers scale the input, y = W(l⊙x) + b (fold: W·diag(l)); the others scale
  the output, y = l⊙(Wx + b) (fold: diag(l)W, l⊙b).

Dropouts (``lora_dropout``, ``rank_dropout``, ``module_dropout``) act only in training and do
not enter. ``fan_in_fan_out`` is ignored on ``nn.Linear`` exactly as PEFT ignores it (it warns
and resets it to false when it builds the layer). ``modules_to_save`` (e.g. the head) and the
biases trained with ``bias="all"|"lora_only"`` replace the backbone's tensors. Conv2d targets
(e.g. ``patch_embed.proj``, which ``target_modules=["proj"]`` also matches), LoKr/LoHa conv
factors, initialisations that rewrite the backbone (PiSSA, OLoRA, CorDA, LoftQ, ...), several
adapters in one directory and any PEFT option not listed above are refused.

Only safetensors is read: a directory holding only ``adapter_model.bin`` (a pickle) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from karst_deploy.adapters.base import (
    CONFIG_ATTRIBUTE,
    AdaptedLinear,
    AdapterConfig,
    LayerAdapter,
    _set_submodule,
)
from karst_deploy.errors import AdapterFileError, InputError
from karst_deploy.files import sha256_file

if TYPE_CHECKING:
    from karst_deploy.adapters.storage import MergedCheckpoint

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
PREFIX = "base_model.model."
METHOD = "peft"
PEFT_TYPES = ("LORA", "LOKR", "LOHA", "IA3")

# Config keys that describe where the adapter came from and change nothing in eval mode.
_INFORMATIONAL = {
    "peft_type",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "auto_mapping",
    "inference_mode",
    "megatron_core",
    "qalora_group_size",
    "eva_config",
    "ensure_weight_tying",
}
_COMMON = {
    "target_modules",
    "exclude_modules",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "task_type",
}
_TYPE_KEYS = {
    "LORA": {
        "r",
        "lora_alpha",
        "lora_dropout",
        "fan_in_fan_out",
        "bias",
        "use_rslora",
        "use_dora",
        "lora_bias",
        "rank_pattern",
        "alpha_pattern",
        "init_lora_weights",
        "loftq_config",
    },
    "LOKR": {
        "r",
        "alpha",
        "rank_dropout",
        "module_dropout",
        "rank_dropout_scale",
        "use_effective_conv2d",
        "decompose_both",
        "decompose_factor",
        "rank_pattern",
        "alpha_pattern",
        "init_weights",
    },
    "LOHA": {
        "r",
        "alpha",
        "rank_dropout",
        "module_dropout",
        "use_effective_conv2d",
        "rank_pattern",
        "alpha_pattern",
        "init_weights",
    },
    "IA3": {"feedforward_modules", "fan_in_fan_out", "init_ia3_weights"},
}
# LoRA initialisations that leave the backbone as it was (PiSSA, OLoRA, CorDA, LoftQ, ...
# rewrite W itself, so the adapter would not fit the plain backbone).
_LORA_INITS = (True, False, "gaussian", "eva", "orthogonal")


def is_peft_directory(directory: str | os.PathLike[str] | None) -> bool:
    """True when `directory` holds an adapter_config.json with a ``peft_type`` key."""
    if directory is None:
        return False
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
        return False
    # Our own format never has `peft_type` at the top level, but check its marker anyway.
    return (
        isinstance(document, dict)
        and "peft_type" in document
        and document.get("format") != "karst-deploy.adapter"
    )


@dataclasses.dataclass(frozen=True)
class PeftAdapterConfig(AdapterConfig):
    """What a model loaded from a PEFT directory carries: the PEFT type and the adapted paths."""

    method: ClassVar[str] = METHOD
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"peft_type": PEFT_TYPES}

    peft_type: str = "LORA"
    targets: tuple[str, ...] = ()


# ---------------------------------------------------------------- layer adapters (the maths)


class PeftLoraLayer(LayerAdapter):
    """LoRA, with DoRA's magnitude and ``lora_bias`` when the directory has them."""

    def __init__(
        self, rank: int, linear: nn.Linear, scaling: float, dora: bool, lora_bias: bool
    ) -> None:
        super().__init__()
        self.scaling = scaling
        self.lora_A = nn.Parameter(torch.zeros(rank, linear.in_features))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank))
        self.lora_B_bias = nn.Parameter(torch.zeros(linear.out_features)) if lora_bias else None
        self.magnitude = nn.Parameter(torch.zeros(linear.out_features)) if dora else None

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.lora_A.dtype
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling

    def _dora_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """m / ‖W + s·BA‖ per output row (DoRA, Liu et al. 2024, eq. 5; PEFT's weight_norm)."""
        norm = torch.linalg.norm(weight + self.delta_weight(weight.dtype), dim=1)
        return self.magnitude.to(weight.dtype) / norm

    def adapted_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        low_rank = F.linear(F.linear(x, self.lora_A), self.lora_B, self.lora_B_bias) * self.scaling
        if self.magnitude is None:
            return F.linear(x, weight, bias) + low_rank
        out = (F.linear(x, weight) + low_rank) * self._dora_scale(weight)
        return out if bias is None else out + bias

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new_weight = weight + self.delta_weight(weight.dtype)
        if self.magnitude is not None:
            new_weight = new_weight * self._dora_scale(weight)[:, None]
        if self.lora_B_bias is not None:
            bias = bias + self.lora_B_bias.to(bias.dtype) * self.scaling
        return new_weight, bias


class PeftLokrLayer(LayerAdapter):
    """LoKr on a Linear: ΔW = s·(w1 ⊗ w2), each factor whole or as a rank-r product."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], scaling: float) -> None:
        super().__init__()
        self.scaling = scaling
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))

    def _factor(self, index: int, dtype: torch.dtype) -> torch.Tensor:
        whole = getattr(self, f"lokr_w{index}", None)
        if whole is not None:
            return whole.to(dtype)
        return getattr(self, f"lokr_w{index}_a").to(dtype) @ getattr(self, f"lokr_w{index}_b").to(
            dtype
        )

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or next(self.parameters()).dtype
        return torch.kron(self._factor(1, dtype), self._factor(2, dtype)) * self.scaling

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.delta_weight(x.dtype))


class PeftLohaLayer(LayerAdapter):
    """LoHa: ΔW = s·(w1a·w1b) ⊙ (w2a·w2b) (Hyeon-Woo et al. 2022, eq. 2)."""

    NAMES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def __init__(self, rank: int, linear: nn.Linear, scaling: float) -> None:
        super().__init__()
        self.scaling = scaling
        out_f, in_f = linear.out_features, linear.in_features
        for name, shape in zip(self.NAMES, ((out_f, rank), (rank, in_f)) * 2, strict=True):
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.hada_w1_a.dtype
        w1a, w1b, w2a, w2b = (getattr(self, name).to(dtype) for name in self.NAMES)
        return (w1a @ w1b) * (w2a @ w2b) * self.scaling

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.delta_weight(x.dtype))


class PeftIa3Layer(LayerAdapter):
    """IA³: a learned vector scaling a feed-forward layer's input, or another layer's output."""

    def __init__(self, linear: nn.Linear, feedforward: bool) -> None:
        super().__init__()
        self.feedforward = feedforward
        shape = (1, linear.in_features) if feedforward else (linear.out_features, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape))

    def adapted_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        scale = self.ia3_l.flatten()
        if self.feedforward:
            return F.linear(x * scale, weight, bias)
        return F.linear(x, weight, bias) * scale

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.ia3_l.flatten().to(weight.dtype)
        if self.feedforward:
            return weight * scale[None, :], bias
        return weight * scale[:, None], bias * scale


# ---------------------------------------------------------------- the directory


def _off(value: Any) -> bool:
    """A value that leaves an option unused (PEFT's defaults for the features we refuse)."""
    return value is None or value is False or value == {} or value == [] or value == ""


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS' split of `dimension` into m ≤ n with m·n = dimension, as PEFT's LoKr uses it.

    A positive `factor` dividing `dimension` gives (factor, dimension / factor); otherwise m
    grows through the divisors while m + n shrinks and m stays ≤ `factor` (-1: no bound).
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        other = dimension // candidate
        if candidate + other > m + n or candidate > bound:
            break
        m, n = candidate, other
    return (m, n) if m <= n else (n, m)


@dataclasses.dataclass
class _Layer:
    """One adapted Linear as the directory describes it."""

    path: str
    linear: nn.Linear
    adapter: LayerAdapter
    keys: dict[str, str]  # stored key -> name of the adapter's parameter


class PeftDirectory:
    """A parsed, validated PEFT adapter directory (its tensors: `load_peft_adapters`)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise AdapterFileError(f"Adapter directory '{self.directory}' does not exist.")
        self.config_path = self.directory / CONFIG_FILE
        self.weights_path = self.directory / WEIGHTS_FILE
        if not self.config_path.is_file():
            raise AdapterFileError(f"Adapter directory '{self.directory}' has no {CONFIG_FILE}.")
        try:
            document = json.loads(self.config_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterFileError(f"{self.config_path} is not valid JSON: {exc}.") from None
        self._parse(document)
        if not self.weights_path.is_file():
            if (self.directory / PICKLE_FILE).is_file():
                raise AdapterFileError(
                    f"'{self.directory}' holds the PEFT weights only as {PICKLE_FILE}, a pickle, "
                    f"which karst-deploy does not read (it can run code). Save the adapter with "
                    f"save_pretrained(..., safe_serialization=True) to get {WEIGHTS_FILE}."
                )
            raise AdapterFileError(
                f"PEFT adapter directory '{self.directory}' has no {WEIGHTS_FILE}."
            )
        nested = sorted(
            p.parent.name for p in self.directory.glob(f"*/{CONFIG_FILE}") if p.parent.is_dir()
        )
        if nested:
            raise AdapterFileError(
                f"'{self.directory}' holds several PEFT adapters (also '{nested[0]}/'); a "
                "deployed model carries one. Pass that adapter's own directory, e.g. "
                f"'{self.directory / nested[0]}'."
            )

    @classmethod
    def from_document(cls, document: Any, source: str) -> PeftDirectory:
        """The config part alone (e.g. from ONNX provenance); it has no tensors to read."""
        parsed = cls.__new__(cls)
        parsed.config_path = Path(source)
        parsed._parse(document)
        return parsed

    # -- config
    def _parse(self, document: Any) -> None:
        if not isinstance(document, dict):
            raise AdapterFileError(f"{self.config_path} must hold a JSON object.")
        self.document = document
        self.peft_type = document.get("peft_type")
        if self.peft_type not in PEFT_TYPES:
            raise AdapterFileError(
                f"{self.config_path}: key 'peft_type' is {self.peft_type!r}; karst-deploy folds "
                f"{list(PEFT_TYPES)} (the methods whose eval-mode forward is a dense Linear)."
            )
        self._check_keys()

    def _fail(self, key: str, value: Any, want: str) -> AdapterFileError:
        return AdapterFileError(f"{self.config_path}: key '{key}' is {value!r}; expected {want}.")

    def _check_keys(self) -> None:
        known = _INFORMATIONAL | _COMMON | _TYPE_KEYS[self.peft_type]
        for key, value in self.document.items():
            if key not in known and not _off(value):
                raise self._fail(
                    key,
                    value,
                    f"it unset: karst-deploy does not fold this {self.peft_type} option into a "
                    "plain backbone",
                )
        doc = self.document
        if doc.get("task_type") is not None:
            raise self._fail(
                "task_type",
                doc["task_type"],
                "null (a timm model wrapped by get_peft_model without a task type)",
            )
        targets = doc.get("target_modules")
        if isinstance(targets, str):
            if targets == "all-linear":
                raise self._fail("target_modules", targets, "the expanded module names PEFT saves")
            self._regex("target_modules", targets)
        elif not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)
        ):
            raise self._fail("target_modules", targets, "a list of module names or a regex")
        for key in ("exclude_modules", "feedforward_modules"):
            value = doc.get(key)
            if isinstance(value, str):
                self._regex(key, value)
            elif not (value is None or _str_list(value)):
                raise self._fail(key, value, "null, a regex or a list of module names")
        for key in ("modules_to_save", "layers_pattern"):
            value = doc.get(key)
            value = [value] if isinstance(value, str) and key == "layers_pattern" else value
            if not (value is None or _str_list(value)):
                raise self._fail(key, value, "null or a list of names")
            for name in value or []:  # PEFT matches them as regular expressions
                self._regex(key, name)
        if not isinstance(doc.get("auto_mapping") or {}, dict):
            raise self._fail("auto_mapping", doc["auto_mapping"], "an object")
        layers = doc.get("layers_to_transform")
        if not (
            layers is None
            or _nonneg_int(layers)
            or (isinstance(layers, list) and all(_nonneg_int(v) for v in layers))
        ):
            raise self._fail("layers_to_transform", layers, "null, a layer index or a list")
        for key in ("fan_in_fan_out", "use_rslora", "use_dora", "lora_bias", "decompose_both"):
            if key in doc and not isinstance(doc[key], bool):
                raise self._fail(key, doc[key], "true or false")
        for key in ("lora_dropout", "rank_dropout", "module_dropout"):
            if key in doc and not (_number(doc[key]) and 0 <= doc[key] < 1):
                raise self._fail(key, doc[key], "a dropout probability in [0, 1)")
        if self.peft_type != "IA3":
            alpha_key = "lora_alpha" if self.peft_type == "LORA" else "alpha"
            if not _positive_int(doc.get("r")):
                raise self._fail("r", doc.get("r"), "a positive integer")
            if not _number(doc.get(alpha_key)):
                raise self._fail(alpha_key, doc.get(alpha_key), "a finite number")
            for key, check in (("rank_pattern", _positive_int), ("alpha_pattern", _number)):
                pattern = doc.get(key) or {}
                if not isinstance(pattern, dict):
                    raise self._fail(key, pattern, "an object of module pattern -> number")
                for name, value in pattern.items():
                    self._regex(f"{key}.{name}", name)
                    if not check(value):
                        raise self._fail(f"{key}.{name}", value, "a positive number")
        if self.peft_type == "LORA":
            if doc.get("bias", "none") not in ("none", "all", "lora_only"):
                raise self._fail("bias", doc.get("bias"), "'none', 'all' or 'lora_only'")
            init = doc.get("init_lora_weights", True)
            if init not in _LORA_INITS:
                raise self._fail(
                    "init_lora_weights",
                    init,
                    f"one of {list(_LORA_INITS)}: this initialisation rewrites the backbone's "
                    "weights, so the adapter does not fit the plain backbone (convert it with "
                    "PEFT's save_pretrained(path_initial_model_for_weight_conversion=...))",
                )
            if not _off(doc.get("loftq_config")):
                raise self._fail("loftq_config", doc["loftq_config"], "{} (LoftQ is refused)")
            if doc.get("use_dora") and doc.get("lora_bias"):
                raise self._fail(
                    "lora_bias",
                    True,
                    "false with use_dora (PEFT's DoRA forward scales lora_B's bias, its merge "
                    "does not, so the adapter has no single dense form)",
                )
        if self.peft_type == "LOKR":
            factor = doc.get("decompose_factor", -1)
            if not (isinstance(factor, int) and not isinstance(factor, bool)) or not (
                factor == -1 or factor > 0
            ):
                raise self._fail("decompose_factor", factor, "-1 or a positive integer")

    def _regex(self, key: str, pattern: str) -> None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self._fail(key, pattern, f"a valid regular expression ({exc})") from None

    # -- PEFT's matching rules (peft.tuners.tuners_utils.check_target_module_exists)
    def _is_target(self, path: str) -> bool:
        doc = self.document
        exclude = doc.get("exclude_modules")
        if isinstance(exclude, str) and re.fullmatch(exclude, path):
            return False
        if isinstance(exclude, list) and (
            path in exclude or any(path.endswith(f".{e}") for e in exclude)
        ):
            return False
        if any(re.match(rf"(^|.*\.){m}($|\..*)", path) for m in doc.get("modules_to_save") or []):
            return False
        targets = doc["target_modules"]
        if isinstance(targets, str):
            return re.fullmatch(targets, path) is not None
        if path in targets:
            return True
        if not any(path.endswith(f".{t}") for t in targets):
            return False
        layers = doc.get("layers_to_transform")
        if layers is None or layers == []:
            return True
        patterns = doc.get("layers_pattern")
        patterns = [patterns] if isinstance(patterns, str) else patterns
        match = None
        if not patterns:
            match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", path)
        else:
            for pattern in patterns:
                match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", path)
                if match:
                    break
        if match is None:
            return False
        index = int(match.group("idx"))
        return index == layers if isinstance(layers, int) else index in layers

    def _is_feedforward(self, path: str) -> bool:
        names = self.document.get("feedforward_modules")
        if isinstance(names, str):
            return re.fullmatch(names, path) is not None
        return any(path.endswith(name) for name in names or [])

    def _pattern_value(self, key: str, path: str, default: Any) -> Any:
        for pattern, value in (self.document.get(key) or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", path):
                return value
        return default

    def _rank_alpha(self, path: str) -> tuple[int, float]:
        alpha_key = "lora_alpha" if self.peft_type == "LORA" else "alpha"
        rank = self._pattern_value("rank_pattern", path, self.document["r"])
        alpha = self._pattern_value("alpha_pattern", path, self.document[alpha_key])
        return rank, float(alpha)

    # -- layers
    def _layer(self, path: str, linear: nn.Linear) -> _Layer:
        key = f"{PREFIX}{path}."
        doc = self.document
        if self.peft_type == "IA3":
            adapter = PeftIa3Layer(linear, self._is_feedforward(path))
            return _Layer(path, linear, adapter, {f"{key}ia3_l": "ia3_l"})
        rank, alpha = self._rank_alpha(path)
        if rank > max(linear.in_features, linear.out_features):
            key = "rank_pattern" if rank != doc["r"] else "r"
            raise AdapterFileError(
                f"{self.config_path}: key '{key}' gives '{path}' rank {rank}, more than its "
                f"{linear.out_features}×{linear.in_features} weight has rows or columns."
            )
        if self.peft_type == "LORA":
            scaling = alpha / math.sqrt(rank) if doc.get("use_rslora") else alpha / rank
            lora_bias = bool(doc.get("lora_bias"))
            if lora_bias and linear.bias is None:
                raise AdapterFileError(
                    f"{self.config_path}: key 'lora_bias' is true but '{path}' has no bias to "
                    "fold lora_B's bias into."
                )
            adapter = PeftLoraLayer(rank, linear, scaling, bool(doc.get("use_dora")), lora_bias)
            keys = {f"{key}lora_A.weight": "lora_A", f"{key}lora_B.weight": "lora_B"}
            if lora_bias:
                keys[f"{key}lora_B.bias"] = "lora_B_bias"
            if adapter.magnitude is not None:
                keys[f"{key}lora_magnitude_vector"] = "magnitude"
            return _Layer(path, linear, adapter, keys)
        if self.peft_type == "LOHA":
            adapter = PeftLohaLayer(rank, linear, alpha / rank)
            return _Layer(path, linear, adapter, {key + n: n for n in PeftLohaLayer.NAMES})
        # LoKr: the factor shapes PEFT's LoKrLayer.update_layer gives a Linear.
        factor = doc.get("decompose_factor", -1)
        in_m, in_n = factorization(linear.in_features, factor)
        out_l, out_k = factorization(linear.out_features, factor)
        shapes: dict[str, tuple[int, ...]] = {}
        if doc.get("decompose_both") and rank < max(out_l, in_m) / 2:
            shapes.update(lokr_w1_a=(out_l, rank), lokr_w1_b=(rank, in_m))
        else:
            shapes["lokr_w1"] = (out_l, in_m)
        if rank < max(out_k, in_n) / 2:
            shapes.update(lokr_w2_a=(out_k, rank), lokr_w2_b=(rank, in_n))
        else:
            shapes["lokr_w2"] = (out_k, in_n)
        adapter = PeftLokrLayer(shapes, alpha / rank)
        return _Layer(path, linear, adapter, {key + n: n for n in shapes})

    def plan(self, model: nn.Module) -> tuple[list[_Layer], dict[str, str]]:
        """The adapted layers of `model`, and the backbone tensors the directory replaces.

        Replaced tensors map stored key -> backbone key; a target that is not a Linear is
        refused.
        """
        doc = self.document
        layers = []
        for path, module in model.named_modules():
            if not path or not self._is_target(path):
                continue
            if isinstance(module, nn.Linear):
                layers.append(self._layer(path, module))
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)):
                raise AdapterFileError(
                    f"{self.config_path}: key 'target_modules' matches '{path}', a "
                    f"{type(module).__name__}; karst-deploy folds PEFT adapters on Linear layers "
                    "only. Name the Linear layers (e.g. 'attn.proj' rather than 'proj', which "
                    "also matches patch_embed.proj) or list it in exclude_modules."
                )
        if not layers:
            raise AdapterFileError(
                f"{self.config_path}: key 'target_modules' ({doc['target_modules']!r}) matches no "
                f"Linear layer of {type(model).__name__}; was the adapter trained on another "
                "backbone?"
            )
        state = model.state_dict()
        adapted = {layer.path for layer in layers}
        replaced: dict[str, str] = {}

        def stored(name: str) -> str:
            module, _, leaf = name.rpartition(".")
            return f"{PREFIX}{module}.base_layer.{leaf}" if module in adapted else PREFIX + name

        bias = doc.get("bias", "none")
        for name in state:
            module = name.rpartition(".")[0]
            if (bias == "all" and name.endswith(".bias")) or (
                bias == "lora_only" and module in adapted and name.endswith(".bias")
            ):
                replaced[stored(name)] = name
        saved_modules = [
            path
            for path, _ in model.named_modules(remove_duplicate=False)
            if path and any(path.endswith(m) for m in doc.get("modules_to_save") or [])
        ]
        for path in saved_modules:
            if any(path.startswith(f"{other}.") for other in saved_modules):
                continue  # inside a module already saved whole
            for name in state:
                if name.startswith(f"{path}."):
                    replaced[stored(name)] = name
        return layers, replaced

    def sha256(self) -> dict[str, str]:
        """Hashes of the directory's files (recorded in ONNX provenance)."""
        return {name: sha256_file(self.directory / name) for name in (CONFIG_FILE, WEIGHTS_FILE)}

    def read_tensors(self) -> dict[str, torch.Tensor]:
        from karst_deploy.adapters.storage import read_safetensors

        return read_safetensors(self.weights_path)

    def head_classes(self, model: nn.Module) -> int | None:
        """The classifier size stored in the directory (``modules_to_save``), if it holds one."""
        from safetensors import safe_open

        from karst_deploy.models import classifier_parameter_names

        names = [n for n in classifier_parameter_names(model) if n.endswith("weight")]
        try:
            with safe_open(str(self.weights_path), "pt") as handle:
                keys = set(handle.keys())
                for name in names:
                    if PREFIX + name in keys:
                        shape = handle.get_slice(PREFIX + name).get_shape()
                        return int(shape[0]) if shape else None
        except Exception as exc:
            raise AdapterFileError(
                f"{self.weights_path} is not a readable safetensors file: {exc}"
            ) from None
        return None


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _nonneg_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@torch.no_grad()
def load_peft_adapters(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Put a PEFT directory's adapter on `model` (a plain timm backbone), in place.

    Everything is validated before the model is touched: every stored key must belong to an
    adapted Linear, a trained bias or a saved module, every expected key must be present, with
    the expected shape and finite values; otherwise the key is named and nothing is changed.
    """
    from karst_deploy.adapters.base import adapter_config

    if adapter_config(model) is not None:
        raise InputError(
            "This model already carries adapters; load the PEFT adapter into a fresh backbone."
        )
    file = PeftDirectory(directory)
    mapping = (file.document.get("auto_mapping") or {}).get("base_model_class")
    if isinstance(mapping, str) and mapping != type(model).__name__:
        raise AdapterFileError(
            f"{file.config_path}: key 'auto_mapping.base_model_class' is {mapping!r}, but "
            f"the model is a {type(model).__name__}; pass the backbone the adapter was trained "
            "on.",
            parameters=("backbone",),
        )
    layers, replaced = file.plan(model)
    tensors = file.read_tensors()
    state = model.state_dict()
    expected: dict[str, torch.Tensor] = {}
    for layer in layers:
        params = dict(layer.adapter.named_parameters())
        expected.update({key: params[name] for key, name in layer.keys.items()})
    expected.update({key: state[name] for key, name in replaced.items()})
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise AdapterFileError(f"{file.weights_path}: key '{missing[0]}' is missing.")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise AdapterFileError(
            f"{file.weights_path}: unknown key '{extra[0]}': no adapted Linear, trained bias or "
            f"module in modules_to_save of {type(model).__name__} (per {CONFIG_FILE}) stores it."
        )
    for key in sorted(expected):
        tensor, want = tensors[key], expected[key]
        if not tensor.is_floating_point():
            raise AdapterFileError(
                f"{file.weights_path}: key '{key}' has dtype {tensor.dtype}; expected floats."
            )
        if tensor.shape != want.shape:
            raise AdapterFileError(
                f"{file.weights_path}: key '{key}' has shape {tuple(tensor.shape)}; the backbone "
                f"and {CONFIG_FILE} expect {tuple(want.shape)}."
            )
        if not torch.isfinite(tensor).all():
            raise AdapterFileError(
                f"{file.weights_path}: key '{key}' holds NaN or infinite values."
            )
    # Validated: now change the model.
    for key, name in replaced.items():
        state[name].copy_(tensors[key])
    for layer in layers:
        params = dict(layer.adapter.named_parameters())
        for key, name in layer.keys.items():
            params[name].copy_(tensors[key])
    return _install(model, file.peft_type, layers)


def _install(model: nn.Module, peft_type: str, layers: list[_Layer]) -> nn.Module:
    for layer in layers:
        layer.adapter.to(device=layer.linear.weight.device, dtype=layer.linear.weight.dtype)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in layers:
        _set_submodule(model, layer.path, AdaptedLinear(layer.linear, METHOD, layer.adapter))
    targets = tuple(layer.path for layer in layers)
    setattr(model, CONFIG_ATTRIBUTE, PeftAdapterConfig(peft_type=peft_type, targets=targets))
    return model.eval()


def peft_architecture(model: nn.Module, document: Any, source: str) -> nn.Module:
    """`model` with the (unmerged) layers a PEFT config describes, values left as built.

    For timing an unmerged export with the torch runner (`architecture_from_onnx`), where
    only the arithmetic matters, not the numbers.
    """
    document = {k: v for k, v in document.items() if k != "format"}
    layers, _ = PeftDirectory.from_document(document, source).plan(model)
    return _install(model, document["peft_type"], layers)


def build_backbone(
    directory: str | os.PathLike[str],
    backbone: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    img_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """The timm backbone for a PEFT directory (PEFT records none for timm models).

    The classifier size comes from the head stored in the directory (``modules_to_save``)
    unless `num_classes` is given; a directory without a head keeps timm's (or the
    checkpoint's) classifier. `pretrained` (the user's --pretrained) lets timm download
    its weights.
    """
    from karst_deploy.models import create_model

    kwargs = dict(model_kwargs or {})
    if "img_size" in kwargs:  # --model-kwargs may carry it: one value, not two arguments
        given = kwargs.pop("img_size")
        if img_size is not None and given != img_size:
            raise InputError(
                f"img_size is {img_size} but model_kwargs.img_size is {given!r}; give one."
            )
        img_size = given
    options = {"checkpoint": checkpoint, "pretrained": pretrained, **kwargs}
    model = create_model(backbone, num_classes, img_size, **options)
    stored = PeftDirectory(directory).head_classes(model)
    if num_classes is None and stored is not None and stored != model.num_classes:
        model = create_model(backbone, stored, img_size, **options)
    return model


def load_peft_model(
    directory: str | os.PathLike[str],
    backbone: str | None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    img_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """Build the backbone and load the PEFT directory onto it (our unmerged reading)."""
    if backbone is None:
        raise InputError(
            f"'{directory}' is a Hugging Face PEFT adapter, which names no timm model: pass "
            "backbone (a timm name) and checkpoint (the weights it was trained on, if any).",
            parameters=("backbone", "checkpoint"),
        )
    model = build_backbone(
        directory,
        backbone,
        checkpoint=checkpoint,
        img_size=img_size,
        model_kwargs=model_kwargs,
        num_classes=num_classes,
        pretrained=pretrained,
    )
    return load_peft_adapters(model, directory)


def peft_reference_model(directory: str | os.PathLike[str], backbone: nn.Module) -> nn.Module:
    """PEFT's own ``PeftModel`` on `backbone` (a plain, fresh one), unmerged, in eval mode.

    Call only on a directory `load_peft_adapters` accepted: PEFT's loader then reads the
    same validated safetensors file. Raises MissingDependencyError without ``peft``.
    """
    from karst_deploy.errors import MissingDependencyError

    try:
        from peft import PeftModel
    except ImportError as exc:
        raise MissingDependencyError(
            "The 'peft' parity stage needs Hugging Face PEFT (pip install 'peft>=0.14', or "
            f"pip install -e '.[peft]' from the karst-deploy checkout): {exc}"
        ) from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. fan_in_fan_out reset on nn.Linear, as we do
        model = PeftModel.from_pretrained(backbone, str(directory), is_trainable=False)
    return model.eval()


def peft_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("peft") is not None


def write_merged_peft_checkpoint(
    directory: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backbone: str | None,
    checkpoint: str | os.PathLike[str] | None = None,
    img_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    pretrained: bool = False,
    force: bool = False,
) -> MergedCheckpoint:
    """`karst-deploy merge` for a PEFT directory: the folded backbone as a timm checkpoint."""
    from karst_deploy.adapters.base import merge
    from karst_deploy.adapters.storage import merged_checkpoint_format, save_merged_checkpoint
    from karst_deploy.files import refuse_existing
    from karst_deploy.models import backbone_spec

    merged_checkpoint_format(out)
    refuse_existing(Path(out), force)
    model = load_peft_model(
        directory,
        backbone,
        checkpoint=checkpoint,
        img_size=img_size,
        model_kwargs=model_kwargs,
        pretrained=pretrained,
    )
    method = f"peft {PeftDirectory(directory).peft_type}"
    return save_merged_checkpoint(
        merge(model), out, spec=backbone_spec(model), method=method, force=force
    )


def peft_parity_models(
    directory: str | os.PathLike[str],
    record: dict[str, Any],
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
) -> tuple[nn.Module, nn.Module | None, list[str]]:
    """Our reading of a PEFT directory and PEFT's own model (None without peft), with notes.

    Both sit on the backbone the ONNX provenance `record` describes (PEFT records none); the
    provenance's own `pretrained` is never honoured, only the user's `pretrained`.
    """
    from karst_deploy.models import BackboneSpec

    spec = BackboneSpec(
        name=record["backbone"],
        num_classes=record["num_classes"],
        img_size=record["img_size"],
        pretrained=pretrained,
        model_kwargs=record.get("model_kwargs") or {},
    )
    ours = load_peft_adapters(spec.build(checkpoint), directory)
    if not peft_available():
        note = (
            "Hugging Face PEFT is not installed, so the chain starts at karst-deploy's reading "
            "of the adapter (torch-unmerged); pip install 'peft>=0.14' to compare with "
            "PEFT's own PeftModel first."
        )
        return ours, None, [note]
    return ours, peft_reference_model(directory, spec.build(checkpoint)), []
