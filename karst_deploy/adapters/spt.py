"""SPT: sensitivity-aware placement of structured modules and sparse deltas (METHODS.md, SPT).

Every candidate matrix of a placement is one of three things:

- ``structured`` — it gets the structured module (KARST, or LoRA as in the SPT paper), the
  very `KarstLayer` / `LoraLayer` of those methods;
- ``sparse`` — exactly its selected entries are tuned: ``W = W0 + scatter(values, indices)``,
  a real sparse delta added to the frozen weight (not gradient masking), values
  zero-initialised;
- ``frozen`` — it stays a plain ``nn.Linear``.

Every part folds exactly into dense weights, so the merged model is the plain backbone.

Adapter directory
-----------------
``adapter_config.json`` holds, besides the usual header::

    "method": "spt",
    "structured": {"method": "karst", "factor": 8, "rank": 8, "kernels": 8,
                   "alpha": 1.0, "rescale": "channel"},      # or {"method": "lora", ...}
    "placement": "placement.json"

``placement.json`` (the same directory) is the allocation::

    {"format": "karst-deploy.placement", "version": 1, "structured": "karst",
     "sigma": 10.0, "budget": 400000, "score_threshold": 1.3e-09,
     "top_up_threshold": 9.1e-10, "scores": {...},
     "totals": {"parameters": ..., "deviation": ..., "structured_matrices": ..., ...},
     "matrices": [{"name": "blocks.0.attn.qkv", "shape": [2304, 768],
                   "decision": "structured" | "sparse" | "frozen",
                   "selected": int, "parameters": int}, ...]}

``selected`` is the number of the matrix's entries chosen by the allocation, ``parameters``
the trainable entries it spends (the structured module's size, the sparse entries, or 0).
``adapter.safetensors`` holds ``P.spt.<name>`` tensors: the structured module's own
(``P.spt.C``, ``P.spt.A``, … for KARST; ``P.spt.A``, ``P.spt.B`` for LoRA) or, for a sparse
matrix, ``P.spt.values`` (float, one per entry) and ``P.spt.indices`` (int64 flat indices into
the ``out × in`` weight, strictly increasing, so sorted and unique, each in range).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from karst_deploy.adapters.base import (
    DEFAULT_TARGETS,
    AdapterConfig,
    AdapterMethod,
    LayerAdapter,
    register,
)
from karst_deploy.adapters.karst import KarstConfig
from karst_deploy.adapters.lora import LoraConfig
from karst_deploy.adapters.registry import structured_configs
from karst_deploy.errors import AdapterFileError, InputError

PLACEMENT_FILE = "placement.json"
PLACEMENT_FORMAT = "karst-deploy.placement"
PLACEMENT_VERSION = 1
DECISIONS = ("structured", "sparse", "frozen")
#: Methods SPT may place as structured modules (those registered ``structurable``).
STRUCTURED_CONFIGS = structured_configs
MAX_PLACEMENT_BYTES = 64 * 2**20  # a ViT-g placement with per-matrix scores is under 1 MB
MAX_SIGMA = 1e6
MAX_BUDGET = 2**31  # trainable entries: no backbone karst-deploy builds has more parameters


@dataclasses.dataclass(frozen=True)
class MatrixPlacement:
    """What the allocation decided for one candidate weight matrix."""

    name: str  # module path of the nn.Linear, e.g. "blocks.0.attn.qkv"
    shape: tuple[int, int]  # (out, in)
    decision: str  # "structured" | "sparse" | "frozen"
    selected: int  # entries of this matrix the allocation chose
    parameters: int  # trainable entries spent on it

    def to_document(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class Placement:
    """An SPT allocation over a model's candidate matrices.

    `indices` (flat sparse indices per sparse matrix) is data, not part of a placement's
    identity: a placement read from ``placement.json`` gets it from ``adapter.safetensors``.
    """

    structured: str
    sigma: float
    budget: int
    matrices: tuple[MatrixPlacement, ...]
    score_threshold: float = 0.0
    top_up_threshold: float = 0.0
    scores: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    indices: Mapping[str, torch.Tensor] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def parameters(self) -> int:
        """Trainable entries the placement spends (head excluded)."""
        return sum(m.parameters for m in self.matrices)

    def matrix(self, name: str) -> MatrixPlacement:
        for matrix in self.matrices:
            if matrix.name == name:
                return matrix
        raise InputError(f"The SPT placement has no matrix '{name}'.")

    def with_indices(self, indices: Mapping[str, torch.Tensor]) -> Placement:
        return dataclasses.replace(self, indices=dict(indices))

    def totals(self) -> dict[str, Any]:
        counts = {d: sum(m.decision == d for m in self.matrices) for d in DECISIONS}
        spent = {
            d: sum(m.parameters for m in self.matrices if m.decision == d)
            for d in ("structured", "sparse")
        }
        return {
            "parameters": self.parameters,
            "deviation": round((self.parameters - self.budget) / self.budget, 6),
            "structured_parameters": spent["structured"],
            "sparse_parameters": spent["sparse"],
            **{f"{d}_matrices": counts[d] for d in DECISIONS},
        }

    def to_document(self) -> dict[str, Any]:
        """The placement.json document."""
        return {
            "format": PLACEMENT_FORMAT,
            "version": PLACEMENT_VERSION,
            "structured": self.structured,
            "sigma": self.sigma,
            "budget": self.budget,
            "score_threshold": self.score_threshold,
            "top_up_threshold": self.top_up_threshold,
            "scores": dict(self.scores),
            "totals": self.totals(),
            "matrices": [m.to_document() for m in self.matrices],
        }

    @classmethod
    def from_document(cls, document: Any, source: str) -> Placement:
        """Parse and validate a placement.json document, naming the first bad key."""
        if not isinstance(document, dict):
            raise AdapterFileError(f"{source} must hold a JSON object.")
        _expect(document, "format", lambda v: v == PLACEMENT_FORMAT, repr(PLACEMENT_FORMAT), source)
        _expect(
            document,
            "version",
            lambda v: v == PLACEMENT_VERSION and not isinstance(v, bool),
            str(PLACEMENT_VERSION),
            source,
        )
        _expect(
            document,
            "structured",
            lambda v: isinstance(v, str) and v in STRUCTURED_CONFIGS,
            f"one of {sorted(STRUCTURED_CONFIGS)}",
            source,
        )
        _expect(
            document,
            "sigma",
            lambda v: _positive_number(v) and v <= MAX_SIGMA,
            f"a number in (0, {MAX_SIGMA:g}]",
            source,
        )
        _expect(
            document,
            "budget",
            lambda v: _positive_int(v) and v <= MAX_BUDGET,
            f"an integer in [1, {MAX_BUDGET}]",
            source,
        )
        for key in ("score_threshold", "top_up_threshold"):
            _expect(document, key, _non_negative_number, "a number >= 0", source)
        _expect(document, "scores", lambda v: isinstance(v, dict), "an object", source)
        _expect(document, "totals", lambda v: isinstance(v, dict), "an object", source)
        _expect(document, "matrices", lambda v: isinstance(v, list), "a list", source)
        matrices = tuple(
            _parse_matrix(entry, f"matrices[{i}]", source)
            for i, entry in enumerate(document["matrices"])
        )
        names = [m.name for m in matrices]
        duplicate = next((i for i, n in enumerate(names) if n in names[:i]), None)
        if duplicate is not None:
            raise AdapterFileError(
                f"{source}: key 'matrices[{duplicate}].name': matrix '{names[duplicate][:200]}' "
                "appears more than once."
            )
        if all(m.decision == "frozen" for m in matrices):
            raise AdapterFileError(
                f"{source}: key 'matrices' has no structured or sparse matrix; an SPT adapter "
                "tunes at least one."
            )
        placement = cls(
            structured=document["structured"],
            sigma=float(document["sigma"]),
            budget=document["budget"],
            matrices=matrices,
            score_threshold=float(document["score_threshold"]),
            top_up_threshold=float(document["top_up_threshold"]),
            scores=document["scores"],
        )
        expected = placement.totals()
        for key, value in expected.items():
            if document["totals"].get(key) != value:
                raise AdapterFileError(
                    f"{source}: key 'totals.{key}' is {document['totals'].get(key)!r}, but the "
                    f"matrices add up to {value!r}."
                )
        return placement


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _non_negative_number(value: Any) -> bool:
    # float_info.max, not math.inf: an int too long for a float (10**400) must fail here.
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= sys.float_info.max
    )


def _positive_number(value: Any) -> bool:
    return _non_negative_number(value) and value > 0


def _expect(document: dict, key: str, ok, want: str, source: str, prefix: str = "") -> None:
    if key not in document:
        raise AdapterFileError(f"{source}: required key '{prefix}{key}' is missing.")
    if not ok(document[key]):
        raise AdapterFileError(
            f"{source}: key '{prefix}{key}' is {document[key]!r}; expected {want}."
        )


def _parse_matrix(entry: Any, where: str, source: str) -> MatrixPlacement:
    if not isinstance(entry, dict):
        raise AdapterFileError(f"{source}: key '{where}' must be an object.")
    prefix = f"{where}."
    _expect(entry, "name", lambda v: isinstance(v, str) and v, "a module path", source, prefix)
    _expect(
        entry,
        "shape",
        lambda v: isinstance(v, list) and len(v) == 2 and all(_positive_int(d) for d in v),
        "[out, in] (two positive integers)",
        source,
        prefix,
    )
    _expect(
        entry, "decision", lambda v: v in DECISIONS, f"one of {list(DECISIONS)}", source, prefix
    )
    _expect(entry, "selected", _non_negative_int, "an integer >= 0", source, prefix)
    _expect(entry, "parameters", _non_negative_int, "an integer >= 0", source, prefix)
    matrix = MatrixPlacement(
        name=entry["name"],
        shape=(entry["shape"][0], entry["shape"][1]),
        decision=entry["decision"],
        selected=entry["selected"],
        parameters=entry["parameters"],
    )
    size = matrix.shape[0] * matrix.shape[1]
    consistent = {
        "structured": matrix.parameters > 0 and 0 < matrix.selected <= size,
        "sparse": matrix.parameters == matrix.selected and 0 < matrix.selected <= size,
        "frozen": matrix.parameters == matrix.selected == 0,
    }[matrix.decision]
    if not consistent:
        raise AdapterFileError(
            f"{source}: key '{where}': matrix '{matrix.name[:200]}' is {matrix.decision} with "
            f"selected {matrix.selected} and parameters {matrix.parameters}; a sparse matrix "
            f"spends exactly its 1..{size} selected entries, a structured one selects at least "
            "one, a frozen one neither."
        )
    return matrix


def read_placement(path: str | Path) -> Placement:
    """Read and validate a placement.json file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(
            f"'{path}' does not exist; an SPT adapter directory holds its allocation in "
            f"{PLACEMENT_FILE} next to adapter_config.json."
        )
    from karst_deploy.adapters.storage import read_json

    return Placement.from_document(read_json(path, MAX_PLACEMENT_BYTES), str(path))


def index_problem(indices: torch.Tensor, size: int) -> str | None:
    """Why `indices` are not valid flat indices into a matrix of `size` entries (None if valid).

    Valid: int64, 1-D, non-empty, strictly increasing (so sorted and unique), in [0, size).
    """
    if indices.dtype != torch.int64:
        return f"has dtype {indices.dtype}; expected torch.int64"
    if indices.ndim != 1 or indices.numel() == 0:
        return f"has shape {tuple(indices.shape)}; expected a non-empty 1-D tensor"
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        return f"holds index {bad}, outside [0, {size}) for this matrix"
    steps = indices[1:] - indices[:-1]
    if bool((steps <= 0).any()):
        position = int(torch.nonzero(steps <= 0)[0]) + 1
        return f"is not strictly increasing (sorted and unique) at position {position}"
    return None


class SparseDelta(LayerAdapter):
    """ΔW = scatter(values, indices) into the out×in weight (METHODS.md, SPT step 3)."""

    def __init__(self, linear: nn.Linear, indices: torch.Tensor) -> None:
        super().__init__()
        self.shape = (linear.out_features, linear.in_features)
        problem = index_problem(indices, linear.weight.numel())
        if problem is not None:
            raise InputError(f"Sparse indices for a {self.shape} matrix: the tensor {problem}.")
        self.values = nn.Parameter(torch.zeros(indices.numel()))
        self.register_buffer("indices", indices.detach().clone().to(linear.weight.device))

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.values.dtype
        flat = torch.zeros(self.shape[0] * self.shape[1], dtype=dtype, device=self.values.device)
        return flat.index_add(0, self.indices, self.values.to(dtype)).view(self.shape)

    def adapted_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # W0 + scatter(values, indices): a copy of W0 with the entries added, so the float32
        # forward rounds each entry once, exactly as the float64 fold cast back to float32.
        adapted = weight.flatten().index_add(0, self.indices, self.values.to(weight.dtype))
        return F.linear(x, adapted.view_as(weight), bias)


def structured_layer(path: str, linear: nn.Linear, structured: AdapterConfig) -> LayerAdapter:
    """The structured method's own layer adapter (KarstLayer or LoraLayer) for one Linear."""
    from karst_deploy.adapters.base import method_for

    return method_for(structured.method).layer_adapter(path, linear, structured, None)


@dataclasses.dataclass(frozen=True)
class SptConfig(AdapterConfig):
    """SPT: a structured method's config plus the placement saying where it (and sparse) go."""

    method: ClassVar[str] = "spt"

    structured: KarstConfig | LoraConfig
    placement: Placement

    def __post_init__(self) -> None:
        if not isinstance(self.structured, tuple(STRUCTURED_CONFIGS.values())):
            raise InputError(
                f"SptConfig.structured is {self.structured!r}; expected the config of one of "
                f"{sorted(STRUCTURED_CONFIGS)}."
            )
        if not isinstance(self.placement, Placement):
            raise InputError(
                "SptConfig.placement must be a Placement (see karst_deploy.placement)."
            )
        # The placement, not structured.targets, says where modules go: normalise the
        # targets so that equal placements compare equal (load_adapters relies on it).
        object.__setattr__(
            self, "structured", dataclasses.replace(self.structured, targets=DEFAULT_TARGETS)
        )
        if self.placement.structured != self.structured.method:
            raise InputError(
                f"The placement was allocated for '{self.placement.structured}' structured "
                f"modules, but SptConfig.structured is {self.structured.method}."
            )

    def to_hparams(self) -> dict[str, Any]:
        hparams = self.structured.to_hparams()
        hparams.pop("targets")  # the placement, not the structured config, says where modules go
        return {
            "structured": {"method": self.structured.method, **hparams},
            "placement": PLACEMENT_FILE,
        }

    @classmethod
    def from_hparams(cls, data: dict[str, Any], source: str) -> SptConfig:
        """Build from adapter_config.json (`source`); placement.json is read next to it."""
        structured = data.get("structured")
        method = structured.get("method") if isinstance(structured, dict) else None
        if not isinstance(method, str) or method not in STRUCTURED_CONFIGS:
            raise AdapterFileError(
                f"{source}: key 'structured' must be an object whose 'method' is one of "
                f"{sorted(STRUCTURED_CONFIGS)}, got {repr(structured)[:120]}."
            )
        config_type = STRUCTURED_CONFIGS[structured["method"]]
        hparams = {k: v for k, v in structured.items() if k != "method"}
        known = {f.name for f in dataclasses.fields(config_type)} - {"targets"}
        unknown = sorted(set(hparams) - known)
        if unknown:
            raise AdapterFileError(
                f"{source}: unknown key 'structured.{unknown[0]}' for {structured['method']}; "
                f"expected {sorted(known)}."
            )
        structured_config = config_type.from_hparams(
            {**hparams, "targets": list(DEFAULT_TARGETS)},  # the placement says where, not these
            source,
            "structured.",
        )
        if data.get("placement") != PLACEMENT_FILE:
            raise AdapterFileError(
                f"{source}: key 'placement' is {data.get('placement')!r}; expected "
                f"'{PLACEMENT_FILE}'."
            )
        placement = read_placement(Path(source).parent / PLACEMENT_FILE)
        if placement.structured != structured_config.method:
            raise AdapterFileError(
                f"{Path(source).parent / PLACEMENT_FILE}: key 'structured' is "
                f"'{placement.structured}' but {source} says '{structured_config.method}'."
            )
        return cls(structured=structured_config, placement=placement)


@register
class Spt(AdapterMethod):
    name = "spt"
    config_type = SptConfig
    standalone = False  # its config needs a placement (train --placement spt)

    def module_targets(self, config: SptConfig) -> tuple[str, ...]:
        return tuple(m.name for m in config.placement.matrices if m.decision != "frozen")

    def validate(self, config: SptConfig, targets: dict[str, nn.Linear]) -> None:
        for index, matrix in enumerate(config.placement.matrices):
            if matrix.decision == "frozen":
                continue
            linear = targets.get(matrix.name)
            if linear is None:
                raise AdapterFileError(
                    f"The SPT placement ({PLACEMENT_FILE}, key 'matrices[{index}].name') names "
                    f"layer '{matrix.name[:200]}', which this model does not have; the "
                    "placement was made for another backbone."
                )
            if tuple(linear.weight.shape) != matrix.shape:
                raise AdapterFileError(
                    f"The SPT placement ({PLACEMENT_FILE}, key 'matrices[{index}].shape') gives "
                    f"'{matrix.name}' the shape {matrix.shape}, but the model's weight is "
                    f"{tuple(linear.weight.shape)}."
                )
        unplanned = sorted(set(targets) - set(self.module_targets(config)))
        if unplanned:
            raise AdapterFileError(
                f"Layer '{unplanned[0]}' matches a planned module path without being planned; "
                "the placement does not fit this model."
            )

    def files(self, config: SptConfig) -> dict[str, str]:
        return {PLACEMENT_FILE: json.dumps(config.placement.to_document(), indent=2) + "\n"}

    def bind_tensors(
        self, config: SptConfig, tensors: dict[str, torch.Tensor], source: str
    ) -> SptConfig:
        """Attach each sparse matrix's validated ``P.spt.indices`` from the weights file."""
        indices = {}
        for matrix in config.placement.matrices:
            if matrix.decision != "sparse":
                continue
            key = f"{matrix.name}.spt.indices"
            if key not in tensors:
                raise AdapterFileError(f"{source}: key '{key}' is missing.")
            problem = index_problem(tensors[key], matrix.shape[0] * matrix.shape[1])
            if problem is None and tensors[key].numel() != matrix.parameters:
                problem = (
                    f"holds {tensors[key].numel()} indices; {PLACEMENT_FILE} says "
                    f"{matrix.parameters}"
                )
            if problem is not None:
                raise AdapterFileError(f"{source}: key '{key}' {problem}.")
            indices[matrix.name] = tensors[key]
        return dataclasses.replace(config, placement=config.placement.with_indices(indices))

    def layer_adapter(self, path, linear, config: SptConfig, shared) -> LayerAdapter:
        matrix = config.placement.matrix(path)
        if matrix.decision == "structured":
            layer = structured_layer(path, linear, config.structured)
            size = sum(p.numel() for p in layer.parameters())
            if size != matrix.parameters:
                raise AdapterFileError(
                    f"The SPT placement says the structured module of '{path}' has "
                    f"{matrix.parameters} parameters, but {config.structured} builds {size}."
                )
            return layer
        indices = config.placement.indices.get(path)
        if indices is None:
            raise InputError(
                f"The SPT placement carries no sparse indices for '{path}'. A placement read "
                f"from {PLACEMENT_FILE} gets them from adapter.safetensors: use load_adapters; "
                "a fresh one comes from karst_deploy.placement.allocate."
            )
        if indices.numel() != matrix.parameters:
            raise InputError(
                f"The SPT placement gives '{path}' {matrix.parameters} sparse entries but "
                f"{indices.numel()} indices."
            )
        return SparseDelta(linear, indices)
