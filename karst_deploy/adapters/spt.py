"""SPT: sensitivity-aware placement of structured modules and sparse deltas (METHODS.md, SPT).

Two candidate layouts, recorded as ``candidates`` in adapter_config.json:

``official`` (the default; ``placement.json`` version 2). As the official code
(ziplab/SPT ``engine.get_sensitivity``): every parameter except the head, cls token, patch
and position embeddings is a candidate — the matrices with **q, k and v as separate d×d
matrices** (the row blocks of timm's fused ``attn.qkv``), proj, fc1, fc2, and the vectors:
every bias of those layers (the qkv bias split likewise) and every LayerNorm weight and bias.
A matrix is ``structured`` (the structured method's own `KarstLayer` / `LoraLayer`, on the
whole matrix or on one q/k/v block, folding into that block's rows only), ``sparse``
(``W = W0 + scatter(values, indices)``, values zero-initialised) or ``frozen``; a vector is
tuned ``whole`` (a delta on every entry), ``sparse`` or ``frozen``. The cls token, where the
backbone has one, is always trained (stored whole, like the head).

``matrices`` (files written before the key existed; ``placement.json`` version 1): one
candidate per fused weight matrix (qkv/proj/fc1/fc2), no vectors, no cls token. Such files
load and merge exactly as they always did.

Every part folds exactly into dense weights, so the merged model is the plain backbone.

Adapter directory
-----------------
``adapter_config.json`` holds, besides the usual header::

    "method": "spt",
    "structured": {"method": "karst", "factor": 8, "rank": 8, "kernels": 8,
                   "alpha": 1.0, "rescale": "channel", ...},   # or {"method": "lora", ...}
    "placement": "placement.json",
    "candidates": "official"                                  # absent: "matrices"

``placement.json`` (the same directory) is the allocation::

    {"format": "karst-deploy.placement", "version": 2, "structured": "karst",
     "sigma": 10.0, "beta": 5.0, "budget": 400000, "score_threshold": 1.3e-09,
     "top_up_threshold": 0.0, "cls_token": 768, "scores": {...}, "totals": {...},
     "matrices": [{"name": "blocks.0.attn.qkv", "block": "q", "shape": [768, 768],
                   "decision": "structured" | "sparse" | "frozen",
                   "selected": int, "parameters": int}, ...],
     "vectors": [{"name": "blocks.0.attn.qkv.bias", "block": "q", "length": 768,
                  "decision": "whole" | "sparse" | "frozen", "selected": int,
                  "parameters": int}, ...]}

(version 1 has neither ``beta``, ``cls_token``, ``vectors`` nor ``block``). ``name`` is the
module path of a matrix and the parameter name of a vector; ``block`` (q, k or v) marks a
row block of a fused qkv. ``selected`` is the number of entries chosen by the allocation,
``parameters`` the trainable entries spent (the structured module's size, the vector's
length, the sparse entries, or 0).

``adapter.safetensors`` holds ``P.spt.<name>`` tensors. Version 1: the structured module's
own (``P.spt.C``, ``P.spt.A``, … for KARST; ``P.spt.A``, ``P.spt.B`` for LoRA) or, for a
sparse matrix, ``P.spt.values`` and ``P.spt.indices``. Version 2: ``P.spt.structured.*``
(whole matrix) or ``P.spt.q.*`` / ``P.spt.k.*`` / ``P.spt.v.*`` (one block), and
``P.spt.weight.values/indices``, ``P.spt.bias.values/indices`` (the deltas on the layer's
weight and bias, LayerNorms included: a whole vector lists all its indices). Indices are
int64 flat indices into the parameter, strictly increasing (so sorted and unique), in range.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
#: placement.json version per candidate layout (module docstring).
PLACEMENT_VERSIONS = {"matrices": 1, "official": 2}
CANDIDATES = ("official", "matrices")
DECISIONS = ("structured", "sparse", "frozen")
VECTOR_DECISIONS = ("whole", "sparse", "frozen")
BLOCKS = ("q", "k", "v")  # row blocks of a fused qkv, in timm's order
#: Methods SPT may place as structured modules (those registered ``structurable``).
STRUCTURED_CONFIGS = structured_configs
MAX_PLACEMENT_BYTES = 64 * 2**20  # a ViT-g placement with per-matrix scores is under 1 MB
MAX_SIGMA = 1e6
MAX_BUDGET = 2**31  # trainable entries: no backbone karst-deploy builds has more parameters


@dataclasses.dataclass(frozen=True)
class MatrixPlacement:
    """What the allocation decided for one candidate weight matrix (or q/k/v block of one)."""

    name: str  # module path of the nn.Linear, e.g. "blocks.0.attn.qkv"
    shape: tuple[int, int]  # (out, in) of the matrix or block
    decision: str  # "structured" | "sparse" | "frozen"
    selected: int  # entries of this matrix the allocation chose
    parameters: int  # trainable entries spent on it
    block: str | None = None  # "q" | "k" | "v": a row block of a fused qkv

    def to_document(self) -> dict[str, Any]:
        document = {**dataclasses.asdict(self), "shape": list(self.shape)}
        if self.block is None:
            del document["block"]  # version 1 entries have no such key
        return document


@dataclasses.dataclass(frozen=True)
class VectorPlacement:
    """What the allocation decided for one candidate vector (a bias or LayerNorm parameter)."""

    name: str  # parameter name, e.g. "blocks.0.norm1.weight"
    length: int
    decision: str  # "whole" | "sparse" | "frozen"
    selected: int
    parameters: int
    block: str | None = None

    def to_document(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        if self.block is None:
            del document["block"]
        return document


@dataclasses.dataclass(frozen=True)
class Placement:
    """An SPT allocation over a model's candidate matrices (and, officially, vectors).

    `indices` (flat sparse indices: per sparse matrix by module path in the ``matrices``
    layout; per parameter name, whole vectors included, in the ``official`` one) is data,
    not part of a placement's identity: a placement read from ``placement.json`` gets it
    from ``adapter.safetensors``.
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
    candidates: str = "matrices"
    vectors: tuple[VectorPlacement, ...] = ()
    beta: float = 5.0
    cls_token: int = 0  # entries of the always-trained cls token (0: none)

    @property
    def parameters(self) -> int:
        """Trainable entries the placement spends (head excluded)."""
        units = (*self.matrices, *self.vectors)
        return sum(m.parameters for m in units) + self.cls_token

    def matrix(self, name: str, block: str | None = None) -> MatrixPlacement:
        for matrix in self.matrices:
            if matrix.name == name and matrix.block == block:
                return matrix
        raise InputError(f"The SPT placement has no matrix '{name}'.")

    def entry_counts(self) -> dict[str, int]:
        """Official layout: entries tuned by deltas per parameter name (sparse and whole)."""
        counts: dict[str, int] = {}
        for unit in self.matrices:
            if unit.decision == "sparse":
                key = f"{unit.name}.weight"
                counts[key] = counts.get(key, 0) + unit.parameters
        for unit in self.vectors:
            counts[unit.name] = counts.get(unit.name, 0) + unit.parameters
        return counts

    def with_indices(self, indices: Mapping[str, torch.Tensor]) -> Placement:
        return dataclasses.replace(self, indices=dict(indices))

    def totals(self) -> dict[str, Any]:
        counts = {d: sum(m.decision == d for m in self.matrices) for d in DECISIONS}
        spent = {
            d: sum(m.parameters for m in self.matrices if m.decision == d)
            for d in ("structured", "sparse")
        }
        totals = {
            "parameters": self.parameters,
            "deviation": round((self.parameters - self.budget) / self.budget, 6),
            "structured_parameters": spent["structured"],
            "sparse_parameters": spent["sparse"],
            **{f"{d}_matrices": counts[d] for d in DECISIONS},
        }
        if self.candidates == "official":
            totals.update(
                {
                    "vector_parameters": sum(v.parameters for v in self.vectors),
                    **{
                        f"{d}_vectors": sum(v.decision == d for v in self.vectors)
                        for d in VECTOR_DECISIONS
                    },
                    "cls_token": self.cls_token,
                }
            )
        return totals

    def to_document(self) -> dict[str, Any]:
        """The placement.json document."""
        official = self.candidates == "official"
        return {
            "format": PLACEMENT_FORMAT,
            "version": PLACEMENT_VERSIONS[self.candidates],
            "structured": self.structured,
            "sigma": self.sigma,
            **({"beta": self.beta} if official else {}),
            "budget": self.budget,
            "score_threshold": self.score_threshold,
            "top_up_threshold": self.top_up_threshold,
            **({"cls_token": self.cls_token} if official else {}),
            "scores": dict(self.scores),
            "totals": self.totals(),
            "matrices": [m.to_document() for m in self.matrices],
            **({"vectors": [v.to_document() for v in self.vectors]} if official else {}),
        }

    @classmethod
    def from_document(cls, document: Any, source: str) -> Placement:
        """Parse and validate a placement.json document, naming the first bad key."""
        if not isinstance(document, dict):
            raise AdapterFileError(f"{source} must hold a JSON object.")
        _expect(document, "format", lambda v: v == PLACEMENT_FORMAT, repr(PLACEMENT_FORMAT), source)
        versions = {v: k for k, v in PLACEMENT_VERSIONS.items()}
        _expect(
            document,
            "version",
            lambda v: v in versions and not isinstance(v, bool),
            " or ".join(map(str, versions)),
            source,
        )
        candidates = versions[document["version"]]
        official = candidates == "official"
        _expect(
            document,
            "structured",
            lambda v: isinstance(v, str) and v in STRUCTURED_CONFIGS,
            f"one of {sorted(STRUCTURED_CONFIGS)}",
            source,
        )
        for key in ("sigma", *(("beta",) if official else ())):
            _expect(
                document,
                key,
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
        if official:
            _expect(document, "cls_token", _non_negative_int, "an integer >= 0", source)
        _expect(document, "scores", lambda v: isinstance(v, dict), "an object", source)
        _expect(document, "totals", lambda v: isinstance(v, dict), "an object", source)
        _expect(document, "matrices", lambda v: isinstance(v, list), "a list", source)
        matrices = tuple(
            _parse_matrix(entry, f"matrices[{i}]", source, official)
            for i, entry in enumerate(document["matrices"])
        )
        vectors: tuple[VectorPlacement, ...] = ()
        if official:
            _expect(document, "vectors", lambda v: isinstance(v, list), "a list", source)
            vectors = tuple(
                _parse_vector(entry, f"vectors[{i}]", source)
                for i, entry in enumerate(document["vectors"])
            )
        for kind, units in (("matrices", matrices), ("vectors", vectors)):
            names = [(u.name, u.block) for u in units]
            duplicate = next((i for i, n in enumerate(names) if n in names[:i]), None)
            if duplicate is not None:
                raise AdapterFileError(
                    f"{source}: key '{kind}[{duplicate}].name': '{names[duplicate][0][:200]}' "
                    "appears more than once."
                )
        if all(m.decision == "frozen" for m in (*matrices, *vectors)) and not (
            official and document["cls_token"]
        ):
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
            candidates=candidates,
            vectors=vectors,
            beta=float(document.get("beta", 5.0)),
            cls_token=document.get("cls_token", 0),
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


def _parse_block(entry: dict, official: bool, source: str, prefix: str) -> str | None:
    if "block" not in entry:
        return None
    if not official:
        raise AdapterFileError(
            f"{source}: unknown key '{prefix}block' (q/k/v blocks exist from version 2)."
        )
    _expect(entry, "block", lambda v: v in BLOCKS, f"one of {list(BLOCKS)}", source, prefix)
    return entry["block"]


def _parse_matrix(entry: Any, where: str, source: str, official: bool = False) -> MatrixPlacement:
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
        block=_parse_block(entry, official, source, prefix),
    )
    _check_counts(matrix, matrix.shape[0] * matrix.shape[1], "structured", where, source)
    return matrix


def _parse_vector(entry: Any, where: str, source: str) -> VectorPlacement:
    if not isinstance(entry, dict):
        raise AdapterFileError(f"{source}: key '{where}' must be an object.")
    prefix = f"{where}."
    _expect(entry, "name", lambda v: isinstance(v, str) and v, "a parameter name", source, prefix)
    _expect(entry, "length", _positive_int, "a positive integer", source, prefix)
    _expect(
        entry,
        "decision",
        lambda v: v in VECTOR_DECISIONS,
        f"one of {list(VECTOR_DECISIONS)}",
        source,
        prefix,
    )
    _expect(entry, "selected", _non_negative_int, "an integer >= 0", source, prefix)
    _expect(entry, "parameters", _non_negative_int, "an integer >= 0", source, prefix)
    vector = VectorPlacement(
        name=entry["name"],
        length=entry["length"],
        decision=entry["decision"],
        selected=entry["selected"],
        parameters=entry["parameters"],
        block=_parse_block(entry, True, source, prefix),
    )
    _check_counts(vector, vector.length, "whole", where, source)
    return vector


def _check_counts(unit, size: int, full: str, where: str, source: str) -> None:
    """A sparse unit spends its selected entries, a frozen one none, `full` at least one."""
    consistent = {
        "structured": unit.parameters > 0 and 0 < unit.selected <= size,
        "whole": unit.parameters == size and 0 < unit.selected <= size,
        "sparse": unit.parameters == unit.selected and 0 < unit.selected <= size,
        "frozen": unit.parameters == unit.selected == 0,
    }[unit.decision]
    if not consistent:
        raise AdapterFileError(
            f"{source}: key '{where}': '{unit.name[:200]}' is {unit.decision} with "
            f"selected {unit.selected} and parameters {unit.parameters}; a sparse entry "
            f"spends exactly its 1..{size} selected entries, a {full} one selects at least "
            "one, a frozen one neither."
        )


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


def placed_structured_layer(
    path: str, linear: nn.Linear, structured: AdapterConfig, parameters: int, block: str | None
) -> LayerAdapter:
    """`structured_layer` for a placement's unit (a Linear, or one q/k/v `block` of it);
    refused unless it has the `parameters` the placement says."""
    layer = structured_layer(path, linear, structured)
    size = sum(p.numel() for p in layer.parameters())
    if size != parameters:
        raise AdapterFileError(
            f"The SPT placement says the structured module of '{path}'"
            f"{f' ({block})' if block else ''} has {parameters} parameters, but "
            f"{structured} builds {size}."
        )
    return layer


def block_linear(linear: nn.Linear, blocks: int) -> nn.Linear:
    """A shape-only stand-in for one of `blocks` row blocks of `linear` (a q, k or v of qkv)."""
    return nn.Linear(
        linear.in_features,
        linear.out_features // blocks,
        bias=linear.bias is not None,
        device="meta",
    )


class EntryDelta(nn.Module):
    """Δ = scatter(values, indices) into a parameter of `shape`; values start at zero."""

    def __init__(self, shape: tuple[int, ...], indices: torch.Tensor, device) -> None:
        super().__init__()
        self.shape = tuple(shape)
        problem = index_problem(indices, math.prod(self.shape))
        if problem is not None:
            raise InputError(f"Sparse indices for a {self.shape} parameter: the tensor {problem}.")
        self.values = nn.Parameter(torch.zeros(indices.numel()))
        self.register_buffer("indices", indices.detach().clone().to(device))

    def add_to(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` + Δ in `tensor`'s dtype, each entry rounded once (as the float64 fold)."""
        values = self.values.to(tensor.dtype)
        return tensor.flatten().index_add(0, self.indices, values).view_as(tensor)


class SptLayer(LayerAdapter):
    """The official layout's adapter on one Linear or LayerNorm (module docstring).

    The deltas edit the frozen parameters first (``W' = W0 + scatter``, ``b' = b0 + Δb``,
    as the official code tunes those entries in place); a structured module then adapts
    the edited layer — the whole matrix, or one q/k/v row block of a fused qkv, folding
    into that block's rows only.
    """

    def __init__(self, path: str, module: nn.Module, config: SptConfig) -> None:
        super().__init__()
        placement = config.placement
        self.norm = None
        if isinstance(module, nn.LayerNorm):
            self.norm = (tuple(module.normalized_shape), module.eps)
        units = [m for m in placement.matrices if m.name == path]
        self.blocks = 3 if any(m.block is not None for m in units) else 1
        self.block_names: tuple[str, ...] = ()
        for unit in units:
            if unit.decision != "structured":
                continue
            linear = module if unit.block is None else block_linear(module, 3)
            layer = placed_structured_layer(
                path, linear, config.structured, unit.parameters, unit.block
            )
            self.add_module(unit.block or "structured", layer)
            if unit.block is not None:
                self.block_names += (unit.block,)
        entries = placement.entry_counts()
        for leaf in ("weight", "bias"):
            indices = placement.indices.get(f"{path}.{leaf}")
            if indices is None and entries.get(f"{path}.{leaf}"):
                raise InputError(
                    f"The SPT placement carries no sparse indices for '{path}.{leaf}'. A "
                    f"placement read from {PLACEMENT_FILE} gets them from adapter.safetensors: "
                    "use load_adapters; a fresh one comes from karst_deploy.placement.allocate."
                )
            if indices is not None:
                parameter = getattr(module, leaf)
                self.add_module(leaf, EntryDelta(parameter.shape, indices, parameter.device))

    def _edited(self, leaf: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
        delta = self._modules.get(leaf)
        return tensor if delta is None or tensor is None else delta.add_to(tensor)

    def adapted_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        weight, bias = self._edited("weight", weight), self._edited("bias", bias)
        if self.norm is not None:
            return F.layer_norm(x, self.norm[0], weight, bias, self.norm[1])
        if "structured" in self._modules:
            return self._modules["structured"].adapted_forward(x, weight, bias)
        if not self.block_names:
            return F.linear(x, weight, bias)
        rows = weight.shape[0] // self.blocks
        outputs = []
        for j, name in enumerate(BLOCKS):
            w = weight[j * rows : (j + 1) * rows]
            b = None if bias is None else bias[j * rows : (j + 1) * rows]
            layer = self._modules.get(name)
            outputs.append(F.linear(x, w, b) if layer is None else layer.adapted_forward(x, w, b))
        return torch.cat(outputs, dim=-1)

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self._edited("weight", weight), self._edited("bias", bias)
        if "structured" in self._modules:
            return self._modules["structured"].fold(weight, bias)
        if not self.block_names:
            return weight, bias
        rows = weight.shape[0] // self.blocks
        weights, biases = [], []
        for j, name in enumerate(BLOCKS):
            w, b = weight[j * rows : (j + 1) * rows], bias[j * rows : (j + 1) * rows]
            layer = self._modules.get(name)
            w, b = (w, b) if layer is None else layer.fold(w, b)
            weights.append(w)
            biases.append(b)
        return torch.cat(weights), torch.cat(biases)


@dataclasses.dataclass(frozen=True)
class SptConfig(AdapterConfig):
    """SPT: a structured method's config plus the placement saying where it (and sparse) go.

    `candidates` is the placement's layout (module docstring); it follows the placement.
    """

    method: ClassVar[str] = "spt"

    structured: KarstConfig | LoraConfig
    placement: Placement
    candidates: str = ""

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
        if self.candidates not in ("", self.placement.candidates):
            raise InputError(
                f"SptConfig.candidates is {self.candidates!r} but the placement was made for "
                f"'{self.placement.candidates}' candidates."
            )
        object.__setattr__(self, "candidates", self.placement.candidates)
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
            # Files without the key (every one written before it existed) are "matrices".
            **({"candidates": self.candidates} if self.candidates != "matrices" else {}),
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
        candidates = data.get("candidates", "matrices")
        if candidates not in CANDIDATES:
            raise AdapterFileError(
                f"{source}: key 'candidates' is {repr(candidates)[:120]}; expected one of "
                f"{list(CANDIDATES)}."
            )
        path = Path(source).parent / PLACEMENT_FILE
        placement = read_placement(path)
        if placement.structured != structured_config.method:
            raise AdapterFileError(
                f"{path}: key 'structured' is "
                f"'{placement.structured}' but {source} says '{structured_config.method}'."
            )
        if placement.candidates != candidates:
            raise AdapterFileError(
                f"{path}: key 'version' is {PLACEMENT_VERSIONS[placement.candidates]}, but "
                f"{source} key 'candidates' says '{candidates}' (placement version "
                f"{PLACEMENT_VERSIONS[candidates]})."
            )
        return cls(structured=structured_config, placement=placement)


def _module_path(unit: MatrixPlacement | VectorPlacement) -> str:
    return unit.name if isinstance(unit, MatrixPlacement) else unit.name.rpartition(".")[0]


@register
class Spt(AdapterMethod):
    name = "spt"
    config_type = SptConfig
    standalone = False  # its config needs a placement (train --placement spt)

    def module_targets(self, config: SptConfig) -> tuple[str, ...]:
        units = (*config.placement.matrices, *config.placement.vectors)
        paths = [_module_path(u) for u in units if u.decision != "frozen"]
        return tuple(dict.fromkeys(paths))

    def resolve(self, config: SptConfig, model: nn.Module) -> dict[str, nn.Module]:
        if config.candidates == "matrices":
            return super().resolve(config, model)
        found = {}
        for path in self.module_targets(config):
            try:
                module = model.get_submodule(path)
            except AttributeError:
                module = None
            if not isinstance(module, (nn.Linear, nn.LayerNorm)):
                raise AdapterFileError(
                    f"The SPT placement ({PLACEMENT_FILE}) names layer '{path[:200]}', which "
                    "this model does not have as a Linear or LayerNorm; the placement was made "
                    "for another backbone."
                )
            found[path] = module
        return found

    def extra_parameters(self, config: SptConfig, model: nn.Module) -> list[str]:
        """The cls token, trained whole when the placement counts it (official layout)."""
        if not config.placement.cls_token:
            return []
        token = dict(model.named_parameters()).get("cls_token")
        if token is None or token.numel() != config.placement.cls_token:
            raise AdapterFileError(
                f"The SPT placement ({PLACEMENT_FILE}, key 'cls_token') trains a cls token of "
                f"{config.placement.cls_token} entries, but the model's is "
                f"{None if token is None else token.numel()}."
            )
        return ["cls_token"]

    def validate(self, config: SptConfig, targets: dict[str, nn.Module]) -> None:
        if config.candidates == "official":
            self._validate_official(config, targets)
            return
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

    def _validate_official(self, config: SptConfig, targets: dict[str, nn.Module]) -> None:
        for kind in ("matrices", "vectors"):
            for index, unit in enumerate(getattr(config.placement, kind)):
                module = targets.get(_module_path(unit))
                if unit.decision == "frozen" and module is None:
                    continue
                blocks = 1 if unit.block is None else 3
                if kind == "matrices":
                    have = tuple(module.weight.shape) if isinstance(module, nn.Linear) else None
                    want = (unit.shape[0] * blocks, unit.shape[1])
                    key, shown = "shape", list(unit.shape)
                else:
                    leaf = unit.name.rpartition(".")[2]
                    parameter = module._parameters.get(leaf) if module is not None else None
                    have = None if parameter is None else tuple(parameter.shape)
                    want, key, shown = (unit.length * blocks,), "length", unit.length
                if have != want:
                    raise AdapterFileError(
                        f"The SPT placement ({PLACEMENT_FILE}, key '{kind}[{index}].{key}') "
                        f"gives '{unit.name[:200]}'{f' ({unit.block})' if unit.block else ''} "
                        f"{key} {shown}, but the model's is {have}."
                    )

    def files(self, config: SptConfig) -> dict[str, str]:
        return {PLACEMENT_FILE: json.dumps(config.placement.to_document(), indent=2) + "\n"}

    def bind_tensors(
        self, config: SptConfig, tensors: dict[str, torch.Tensor], source: str
    ) -> SptConfig:
        """Attach each sparse matrix's validated ``P.spt.indices`` from the weights file."""
        if config.candidates == "official":
            return self._bind_official(config, tensors, source)
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

    def _bind_official(
        self, config: SptConfig, tensors: dict[str, torch.Tensor], source: str
    ) -> SptConfig:
        """Per parameter with entry deltas: its indices, valid and spread over its units as
        placement.json says (whole vectors complete, structured blocks untouched)."""
        per_parameter: dict[str, list] = {}
        for unit in config.placement.matrices:
            per_parameter.setdefault(f"{unit.name}.weight", []).append(unit)
        for unit in config.placement.vectors:
            per_parameter.setdefault(unit.name, []).append(unit)
        indices = {}
        for name, units in per_parameter.items():
            counts = [0 if u.decision == "structured" else u.parameters for u in units]
            if not sum(counts):
                continue
            module, _, leaf = name.rpartition(".")
            key = f"{module}.spt.{leaf}.indices"
            if key not in tensors:
                raise AdapterFileError(f"{source}: key '{key}' is missing.")
            first = units[0]
            block_size = (
                first.shape[0] * first.shape[1]
                if isinstance(first, MatrixPlacement)
                else first.length
            )
            order = [BLOCKS.index(u.block) if u.block else 0 for u in units]
            blocks = 3 if first.block is not None else 1
            problem = index_problem(tensors[key], block_size * blocks)
            if problem is None:
                found = torch.bincount(tensors[key] // block_size, minlength=blocks).tolist()
                wanted = [0] * blocks
                for position, count in zip(order, counts, strict=True):
                    wanted[position] = count
                if found != wanted:
                    problem = (
                        f"holds {found} indices per block; {PLACEMENT_FILE} says {wanted}"
                        if blocks > 1
                        else f"holds {found[0]} indices; {PLACEMENT_FILE} says {wanted[0]}"
                    )
            if problem is not None:
                raise AdapterFileError(f"{source}: key '{key}' {problem}.")
            indices[name] = tensors[key]
        return dataclasses.replace(config, placement=config.placement.with_indices(indices))

    def layer_adapter(self, path, linear, config: SptConfig, shared) -> LayerAdapter:
        if config.candidates == "official":
            return SptLayer(path, linear, config)
        matrix = config.placement.matrix(path)
        if matrix.decision == "structured":
            return placed_structured_layer(path, linear, config.structured, matrix.parameters, None)
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
