"""The training recipe: every knob of a run, with the KARST paper's defaults (METHODS.md).

Defaults are the reference VTAB script's: AdamW with weight decay lr/10, batch 32, lr 1e-3,
cosine schedule over 100 epochs of which 10 are a linear warm-up starting at lr/100,
minimum lr lr/10, drop-path 0.1, head trained with the adapters. `RECIPES` are the named
presets of the official scripts (`--recipe`); `vtab` adds the 10 epochs at the minimum lr
the script runs after the cosine (110 in all). ``quick`` is ours, for a first try on a CPU:
10 epochs (1 of warm-up), KARST and KAdaptation with 2 and 4 kernels (KAdaptation's 32
kernels cost 4.4× the time per epoch on two cores).

An explicit ``--epochs`` without ``--warmup-epochs`` scales the preset's warm-up to
``min(preset, epochs // 10)`` (the paper's 10 of 100), so ``--epochs 10`` has 1 warm-up epoch
instead of failing; the value used is recorded with what the preset set.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from karst_deploy.adapters import AdapterConfig, KarstConfig
from karst_deploy.adapters.registry import method_options, standalone_configs, structured_configs
from karst_deploy.errors import InputError, clip
from karst_deploy.placement.request import SptRequest

#: The methods ``--method`` builds, read from the adapter registry (never listed here).
METHOD_CONFIGS = standalone_configs


def adapter_config_for(method: str, **options: Any) -> AdapterConfig:
    """Build `method`'s config from the options that were given (None means "default").

    The options a method takes are its config's fields (`registry.method_options`); one it
    does not take is refused, naming it, rather than silently ignored: ``factor`` means
    nothing to LoRA. Errors name the parameters (the CLI shows them as its flags).
    """
    if method not in METHOD_CONFIGS:
        raise InputError(
            f"method is '{clip(method)}'; expected one of {sorted(METHOD_CONFIGS)}. Adapters "
            "trained with Hugging Face PEFT (LoRA, DoRA, LoKr, LoHa, IA³) are not trained here: "
            "pass their PEFT directory as the adapter to export or verify-parity.",
            parameters=("method",),
        )
    given = {key: value for key, value in options.items() if value is not None}
    fields = method_options(method)
    allowed = [key for key in options if key in fields]  # the options offered that it takes
    for key in given:
        if key not in fields:
            takes = ", ".join(allowed) or "no method options"
            raise InputError(
                f"{key} does not apply to method {method}; it takes {takes}.",
                parameters=(key, "method", *allowed),
            )
    if isinstance(given.get("targets"), str):
        given["targets"] = tuple(t.strip() for t in given["targets"].split(",") if t.strip())
    if isinstance(given.get("stage_ranks"), str):
        try:
            given["stage_ranks"] = tuple(int(r) for r in given["stage_ranks"].split(","))
        except ValueError:
            raise InputError(
                f"stage_ranks is {given['stage_ranks']!r}; expected ranks per stage such as "
                "2,2,4,8.",
                parameters=("stage_ranks",),
            ) from None
    return METHOD_CONFIGS[method](**given)


def training_adapter(
    placement: str,
    method: str,
    structured: str | None = None,
    *,
    budget: str | None = None,
    sigma: float | None = None,
    scores: str | os.PathLike[str] | None = None,
    budget_rule: str | None = None,
    **options: Any,
) -> AdapterConfig | SptRequest:
    """What `train` trains: `method` on every target (``uniform``) or an SPT request (``spt``).

    With ``spt`` the method options (``rank``, ``factor``, …, ``targets``) configure the
    structured module named by `structured` (karst by default); the SPT-only options are
    refused with ``uniform`` rather than ignored.
    """
    if placement == "uniform":
        spt_only = {
            "budget": budget,
            "structured": structured,
            "sigma": sigma,
            "budget_rule": budget_rule,
            "scores": scores,
        }
        given = [name for name, value in spt_only.items() if value is not None]
        if given:
            raise InputError(
                f"{given[0]} applies to placement spt only.", parameters=(given[0], "placement")
            )
        return adapter_config_for(method, **options)
    if placement != "spt":
        raise InputError(
            f"placement is {placement!r}; expected 'uniform' or 'spt'.", parameters=("placement",)
        )
    if method != "karst":
        raise InputError(
            "method does not apply with placement spt: structured names its module, karst or lora.",
            parameters=("method", "placement", "structured"),
        )
    if budget is None:
        raise InputError(
            "placement spt needs budget, e.g. 0.4M.", parameters=("placement", "budget")
        )
    structured = structured or "karst"
    if structured not in structured_configs:
        raise InputError(
            f"structured is {clip(structured)!r}; expected one of {sorted(structured_configs)}.",
            parameters=("structured",),
        )
    return SptRequest(
        budget,
        adapter_config_for(structured, **options),
        10.0 if sigma is None else sigma,
        None if scores is None else os.fspath(scores),
        rule=budget_rule or "sweep",
    )


# Named presets of the official scripts (METHODS.md, KARST recipes): training settings and
# KARST options. Each is recorded in train_log.json with what it set.
_SCHEDULE = {"epochs": 110, "warmup_epochs": 10, "cooldown_epochs": 10}
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "vtab": {"train": dict(_SCHEDULE), "karst": {}},
    "few-shot": {"train": {**_SCHEDULE, "train_norms": True}, "karst": {"kernels": 2}},
    "swin": {"train": dict(_SCHEDULE), "karst": {"kernels": 2, "stage_ranks": "2,2,4,8"}},
    "quick": {"train": {"epochs": 10, "warmup_epochs": 1, "cooldown_epochs": 0}, "karst": {}},
}
#: Method options a preset sets for whichever method is trained (never refused for others).
RECIPE_METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {"karst": {"kernels": 2}, "kadaptation": {"kernels": 4}},
}


def apply_recipe(
    name: str, method: str, method_options: dict[str, Any], train_options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Fill the options left unset (None) from the preset `name`.

    Returns the method options, the training options and what the preset set (options
    given explicitly win and are not listed; an explicit ``epochs`` takes the preset's
    schedule with it, so the cool-down is then 0 unless given). A preset with KARST
    settings applies to the karst method (and SPT's karst modules) only.
    """
    if name not in RECIPES:
        raise InputError(
            f"recipe is {name!r}; expected one of {sorted(RECIPES)}.", parameters=("recipe",)
        )
    preset = RECIPES[name]
    if preset["karst"] and method != "karst":
        raise InputError(
            f"recipe {name} sets KARST options ({', '.join(preset['karst'])}); it applies to "
            f"method karst (or placement spt with structured karst), not {method}.",
            parameters=("recipe", "method", "placement", "structured"),
        )
    method_options, train_options = dict(method_options), dict(train_options)
    train_preset = dict(preset["train"])
    epochs = train_options.get("epochs")
    if epochs is not None:
        # An explicit --epochs replaces the preset's schedule: no cool-down unless asked for,
        # and a warm-up scaled to it (10 of 100 in the paper) so that a short run is valid.
        train_preset["cooldown_epochs"] = 0
        train_preset["warmup_epochs"] = min(train_preset["warmup_epochs"], epochs // 10)
    extra = RECIPE_METHOD_DEFAULTS.get(name, {}).get(method, {})
    method_defaults = {**preset["karst"], **{k: v for k, v in extra.items() if k in method_options}}
    applied: dict[str, Any] = {}
    for options, values in ((train_options, train_preset), (method_options, method_defaults)):
        for key, value in values.items():
            if options.get(key) is None:
                options[key] = value
                applied[key] = value
    return method_options, train_options, applied


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: backbone, data, adapter method and the optimisation recipe.

    ``batch_size`` is the *global* batch: under torchrun each of N processes takes
    ``batch_size / N`` images of every batch, so N processes follow the same trajectory as
    one (up to float reduction order). ``weight_decay``, ``warmup_lr`` and ``min_lr``
    default to lr/10, lr/100 and lr/10. ``epochs`` counts the warm-up epochs too.
    """

    backbone: str
    data: str
    adapter: AdapterConfig | SptRequest = dataclasses.field(default_factory=KarstConfig)
    checkpoint: str | os.PathLike[str] | None = None
    pretrained: bool = False  # timm's own pretrained weights (downloaded from its hub)
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    img_size: int | None = None
    mean: tuple[float, ...] | None = None  # image normalisation [the backbone's timm default]
    std: tuple[float, ...] | None = None
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float | None = None
    warmup_epochs: int = 10
    cooldown_epochs: int = 0
    warmup_lr: float | None = None
    min_lr: float | None = None
    drop_path: float = 0.1
    train_norms: bool = False
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True
    strict_images: bool = False

    def __post_init__(self) -> None:
        positive_ints = {"epochs": self.epochs, "batch_size": self.batch_size}
        for name, value in positive_ints.items():
            if not isinstance(value, int) or value < 1:
                raise InputError(
                    f"{name} is {value!r}; expected a positive integer.", parameters=(name,)
                )
        if not 0 <= self.cooldown_epochs < self.epochs:
            raise InputError(
                f"cooldown_epochs is {self.cooldown_epochs}; expected 0 <= cool-down < epochs "
                f"({self.epochs}).",
                parameters=("cooldown_epochs", "epochs"),
            )
        if not 0 <= self.warmup_epochs < self.epochs - self.cooldown_epochs:
            raise InputError(
                f"warmup_epochs is {self.warmup_epochs}; expected 0 <= warm-up < epochs "
                f"({self.epochs}) minus the {self.cooldown_epochs} epochs at the minimum lr, so "
                "that the cosine phase has at least one epoch.",
                parameters=("warmup_epochs", "epochs"),
            )
        for name in ("lr", "weight_decay", "warmup_lr", "min_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(
                    f"{name} is {value!r}; expected a finite number >= 0.", parameters=(name,)
                )
        if self.lr <= 0:
            raise InputError(
                f"lr is {self.lr!r}; expected a positive learning rate.", parameters=("lr",)
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise InputError(
                f"drop_path is {self.drop_path!r}; expected 0 <= rate < 1.",
                parameters=("drop_path",),
            )
        if self.num_workers < 0:
            raise InputError(
                f"num_workers is {self.num_workers}; expected >= 0.", parameters=("num_workers",)
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError(
                f"device is {self.device!r}; expected auto, cpu, cuda or cuda:N.",
                parameters=("device",),
            )
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise InputError(
                f"checkpoint '{self.checkpoint}' does not exist or is not a file.",
                parameters=("checkpoint",),
            )
        if "num_classes" in self.model_kwargs:
            raise InputError(
                "model_kwargs must not set 'num_classes': the number of classes comes from the "
                "training data.",
                parameters=("model_kwargs",),
            )
        kwargs_size = self.model_kwargs.get("img_size", self.img_size)
        if self.img_size is not None and kwargs_size != self.img_size:
            raise InputError(
                f"img_size {self.img_size} contradicts model_kwargs img_size {kwargs_size}.",
                parameters=("img_size", "model_kwargs"),
            )
        if not isinstance(self.adapter, (AdapterConfig, SptRequest)):
            raise InputError(f"adapter must be an adapter config, not {self.adapter!r}.")

    @property
    def resolved_weight_decay(self) -> float:
        return self.lr / 10 if self.weight_decay is None else self.weight_decay

    @property
    def resolved_warmup_lr(self) -> float:
        return self.lr / 100 if self.warmup_lr is None else self.warmup_lr

    @property
    def resolved_min_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict[str, Any]:
        """The full recipe as JSON values, derived defaults filled in (for train_log.json)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["adapter"] = {"method": self.adapter.method, **self.adapter.to_hparams()}
        data["checkpoint"] = None if self.checkpoint is None else os.fspath(self.checkpoint)
        data["weight_decay"] = self.resolved_weight_decay
        data["warmup_lr"] = self.resolved_warmup_lr
        data["min_lr"] = self.resolved_min_lr
        return data
