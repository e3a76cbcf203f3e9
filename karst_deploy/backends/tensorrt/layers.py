"""Read a TensorRT engine-inspector report and check the precision the engine really runs in.

A known TensorRT failure mode is an "fp16" (or int8) build that silently stayed fp32, so a
build is not a success until the engine's own layer report says its GEMMs and convolutions
run in the requested precision.

The report is ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` of an
engine built with ``ProfilingVerbosity.DETAILED`` (TensorRT developer guide, "Engine
Inspector"). Its schema differs across versions; this module reads all of them:

- every version: ``{"Layers": [{"Name", "LayerType", "Inputs": [...], "Outputs": [...],
  ...}]}``; classic (Cask) layers add ``"ParameterType"`` (e.g. ``"Convolution"``) and
  ``"Weights": {"Type": "Half", "Count": N}``; Myelin-generated layers of 10.x have layer
  types such as ``"gemm"``, ``"mha"`` and ``"kgen"`` (as in NVIDIA's trt-engine-explorer).
- 8.x–10.x tensors: ``"Format/Datatype"``, e.g. ``"Row major linear FP32"``,
  ``"Channel major FP16 format where channel % 8 == 0"`` or, for Myelin layers, ``"Half"``.
- 11.x tensors: the field is split into ``"DataType"`` (``"Float"``, ``"Half"``, ...) and
  ``"Format"``; ``"Bindings"`` became ``"I/O Tensors"`` (TensorRT migration guide,
  "Migrating IEngineInspector Usage from TensorRT 10.x to 11.x").
- ``"Metadata"``: the ONNX nodes a layer came from, ``"[ONNX Layer: <node>]"`` joined by the
  unit separator ``\\x1f`` (set by the ONNX parser, onnx-tensorrt ``processMetadata``).

A layer's realized precision is that of its lowest-precision numeric input (activations and
weights): an int8 GEMM reads int8, an fp16 GEMM reads fp16. Dimensions are shown only when the
inspector has an execution context with input shapes set, which `build.py` provides.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from karst_deploy.errors import InputError

# Precision ranks: the lowest numeric precision among a layer's inputs is what it computes in.
_RANK = {"int8": 0, "fp8": 0, "fp16": 1, "bf16": 1, "fp32": 2}
# Patterns over TensorRT's data-type/format strings, most specific first.
_DTYPE_PATTERNS = [
    (re.compile(r"\b(BF16|BFloat16)\b", re.I), "bf16"),
    (re.compile(r"\b(FP16|Half|Float16)\b", re.I), "fp16"),
    (re.compile(r"\b(FP8|Float8\w*)\b", re.I), "fp8"),
    (re.compile(r"\b(U?Int(32|64|16|4)|Bool|UInt8|INT4|FP4)\b", re.I), "other"),
    (re.compile(r"\bInt8\b", re.I), "int8"),
    (re.compile(r"\b(FP32|Float)\b", re.I), "fp32"),
]
_COMPUTE_TYPE = re.compile(r"conv|gemm|matrixmultiply|matmul|fullyconnected|mha", re.I)
_ONNX_NODE = re.compile(r"\[ONNX Layer: (.*?)(?: \| [^\]]*)?\]$")


def tensor_precision(tensor: dict[str, Any]) -> str | None:
    """fp32/fp16/bf16/int8/fp8, "other" for integer/bool tensors, None if not shown."""
    for key in ("DataType", "Datatype", "Format/Datatype", "Format"):
        text = tensor.get(key)
        if not isinstance(text, str):
            continue
        for pattern, precision in _DTYPE_PATTERNS:
            if pattern.search(text):
                return precision
    return None


def onnx_nodes(metadata: str | None) -> list[str]:
    """ONNX node names in a layer's ``Metadata`` ("[ONNX Layer: a]\\x1f[ONNX Layer: b]")."""
    names = []
    for token in (metadata or "").split("\x1f"):
        match = _ONNX_NODE.match(token.strip())
        if match:
            names.append(match.group(1))
    return names


@dataclass(frozen=True)
class EngineLayer:
    """One layer of an engine as the inspector reports it."""

    name: str
    kind: str  # ParameterType if present, else LayerType
    precision: str | None  # lowest numeric input precision; None if the report shows none
    onnx_nodes: tuple[str, ...] = ()

    @property
    def is_compute(self) -> bool:
        return bool(_COMPUTE_TYPE.search(self.kind))

    @property
    def on_dla(self) -> bool:
        return "dla" in self.kind.lower()


def parse_layers(report: str | dict[str, Any]) -> list[EngineLayer]:
    """The layers of an inspector JSON report (text or parsed)."""
    if isinstance(report, str):
        try:
            report = json.loads(report)
        except json.JSONDecodeError as exc:
            raise InputError(f"The engine inspector report is not JSON: {exc}") from None
    raw_layers = report.get("Layers") if isinstance(report, dict) else None
    if not isinstance(raw_layers, list):
        raise InputError("The engine inspector report has no 'Layers' list.")
    layers = []
    for raw in raw_layers:
        if isinstance(raw, str):  # ProfilingVerbosity.LAYER_NAMES_ONLY lists bare names
            layers.append(EngineLayer(name=raw, kind="", precision=None))
            continue
        if not isinstance(raw, dict):  # a schema we have not seen: nothing to read here
            continue
        inputs = raw.get("Inputs")
        tensors = list(inputs) if isinstance(inputs, list) else []
        precisions = [tensor_precision(t) for t in tensors if isinstance(t, dict)]
        weights = raw.get("Weights")
        if isinstance(weights, dict):
            precisions.append(tensor_precision({"DataType": str(weights.get("Type", ""))}))
        numeric = [p for p in precisions if p in _RANK]
        kind = str(raw.get("ParameterType") or raw.get("LayerType") or "")
        layers.append(
            EngineLayer(
                name=str(raw.get("Name", "")),
                kind=kind,
                precision=min(numeric, key=_RANK.__getitem__) if numeric else None,
                onnx_nodes=tuple(onnx_nodes(raw.get("Metadata"))),
            )
        )
    return layers


@dataclass(frozen=True)
class LayerVerdict:
    name: str
    kind: str
    expected: str
    realized: str | None

    @property
    def matches(self) -> bool:
        """The layer runs no wider than expected (the failure guarded against is a wider one).

        Narrower only appears as an artifact: a Cast that TensorRT fused into a GEMM shows the
        GEMM reading the cast's input, e.g. an fp32 head after an fp16 trunk reading "Half".
        """
        return self.realized in _RANK and _RANK[self.realized] <= _RANK[self.expected]


@dataclass
class PrecisionReport:
    """Expected vs realized precision of every GEMM/convolution layer of an engine."""

    requested: str
    verdicts: list[LayerVerdict]
    min_match_share: float
    dla_layers: list[str] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return sum(v.matches for v in self.verdicts)

    @property
    def share(self) -> float:
        return self.matched / len(self.verdicts) if self.verdicts else 0.0

    @property
    def passed(self) -> bool:
        if not self.verdicts:  # nothing verifiable on the GPU: only DLA-only engines pass
            return bool(self.dla_layers) and self.requested != "fp32"
        return self.share >= self.min_match_share

    @property
    def mismatches(self) -> list[LayerVerdict]:
        return [v for v in self.verdicts if not v.matches]

    def realized_counts(self) -> dict[str, int]:
        return dict(Counter(v.realized or "unknown" for v in self.verdicts))

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "passed": self.passed,
            "compute_layers": len(self.verdicts),
            "matching_layers": self.matched,
            "min_match_share": self.min_match_share,
            "realized": self.realized_counts(),
            "mismatches": [vars(v) for v in self.mismatches],
            "dla_layers": self.dla_layers,
        }

    def explain(self, limit: int = 8) -> str:
        """One paragraph saying why the check failed."""
        if not self.verdicts:
            return (
                "the engine inspector reported no GEMM or convolution layers with data types, so "
                "the precision cannot be verified (was the engine built with "
                "ProfilingVerbosity.DETAILED?)"
            )
        shown = "; ".join(
            f"'{v.name}' ({v.kind}) runs {v.realized or 'unknown'}, expected {v.expected}"
            for v in self.mismatches[:limit]
        )
        more = len(self.mismatches) - limit
        return (
            f"{self.matched} of {len(self.verdicts)} GEMM/convolution layers run in the expected "
            f"precision ({self.share:.0%}, at least {self.min_match_share:.0%} required; realized "
            f"{self.realized_counts()}): {shown}" + (f"; and {more} more" if more > 0 else "")
        )


def check_precision(
    layers: list[EngineLayer],
    requested: str,
    expected_by_node: dict[str, str] | None = None,
    *,
    min_match_share: float = 1.0,
) -> PrecisionReport:
    """Compare every GEMM/convolution layer's realized precision with what was asked.

    A layer traced (through its ``Metadata``) to ONNX compute nodes is expected to run in the
    lowest precision those nodes have in the graph (so a head deliberately kept fp32 in an
    fp16 ONNX is expected fp32); an untraceable layer is expected in `requested`.
    """
    expected_by_node = expected_by_node or {}
    verdicts, dla = [], []
    for layer in layers:
        if layer.on_dla:
            dla.append(layer.name)
            continue
        if not layer.is_compute:  # pointwise/reformat layers may carry a GEMM's metadata too
            continue
        traced = [expected_by_node[n] for n in layer.onnx_nodes if n in expected_by_node]
        expected = min(traced, key=_RANK.__getitem__) if traced else requested
        verdicts.append(LayerVerdict(layer.name, layer.kind, expected, layer.precision))
    return PrecisionReport(requested, verdicts, min_match_share, dla)
