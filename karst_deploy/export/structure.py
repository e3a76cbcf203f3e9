"""The structural half of "zero added latency": two ONNX graphs doing the same work.

A merged model must be the baseline network with different numbers in it. That is checked
on the graphs themselves: the multiset of operator types, and the multiset of initializer
shapes *counted once per consuming node input*. Counting per use, not per stored tensor,
matters: the dynamo exporter's optimiser stores identical initializers once (a freshly
initialised backbone's all-zero biases become one tensor), which changes file size but
not the work done. An unmerged graph fails the check: it has extra MatMul/Einsum nodes
and the adapter factors as extra initializers.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import onnx

from karst_deploy.onnx_file import load_onnx


@dataclass(frozen=True)
class GraphStructure:
    """Operator counts and initializer-use counts of one ONNX graph (subgraphs included)."""

    operators: Counter[str]
    initializer_uses: Counter[str]  # "float32[192, 576]" -> number of node inputs reading one

    @classmethod
    def of(cls, source: onnx.ModelProto | str | os.PathLike[str]) -> GraphStructure:
        model = source if isinstance(source, onnx.ModelProto) else load_onnx(source)
        operators: Counter[str] = Counter()
        uses: Counter[str] = Counter()
        _walk(model.graph, {}, operators, uses)
        return cls(operators, uses)


def _tensor_signature(tensor: onnx.TensorProto) -> str:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
    return f"{dtype}[{', '.join(str(d) for d in tensor.dims)}]"


def _walk(
    graph: onnx.GraphProto,
    outer: dict[str, str],
    operators: Counter[str],
    uses: Counter[str],
) -> None:
    initializers = dict(outer)
    initializers.update({t.name: _tensor_signature(t) for t in graph.initializer})
    for node in graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else f"{node.domain}."
        operators[domain + node.op_type] += 1
        for name in node.input:
            if name in initializers:
                uses[initializers[name]] += 1
        for attribute in node.attribute:  # If/Loop/Scan bodies
            subgraphs = list(attribute.graphs)
            if attribute.HasField("g"):
                subgraphs.append(attribute.g)
            for subgraph in subgraphs:
                _walk(subgraph, initializers, operators, uses)


def _differences(baseline: Counter[str], candidate: Counter[str]) -> dict[str, list[int]]:
    keys = sorted(set(baseline) | set(candidate))
    return {k: [baseline[k], candidate[k]] for k in keys if baseline[k] != candidate[k]}


def _describe(differences: dict[str, list[int]], what: str) -> list[str]:
    parts = []
    for key, (base, cand) in differences.items():
        change = f"{cand - base:+d}"
        parts.append(f"{change} {what} {key} ({base} → {cand})")
    return parts


@dataclass(frozen=True)
class StructureComparison:
    """How a candidate graph differs from a baseline graph (empty differences: same work)."""

    operators: dict[str, list[int]]  # op type -> [baseline count, candidate count], only differing
    initializer_uses: dict[str, list[int]]  # signature -> [baseline, candidate], only differing

    @property
    def same(self) -> bool:
        return not self.operators and not self.initializer_uses

    def summary(self) -> str:
        if self.same:
            return "same operator multiset and initializer shapes"
        parts = _describe(self.operators, "op") + _describe(self.initializer_uses, "use of")
        shown = "; ".join(parts[:6]) + (f"; and {len(parts) - 6} more" if len(parts) > 6 else "")
        return f"graphs differ: {shown}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "operators": self.operators,
            "initializer_uses": self.initializer_uses,
            "summary": self.summary(),
        }


def compare_structure(
    baseline: onnx.ModelProto | str | os.PathLike[str],
    candidate: onnx.ModelProto | str | os.PathLike[str],
) -> StructureComparison:
    """Compare two ONNX graphs: operator counts, then initializer shapes per use."""
    base, cand = GraphStructure.of(baseline), GraphStructure.of(candidate)
    return StructureComparison(
        operators=_differences(base.operators, cand.operators),
        initializer_uses=_differences(base.initializer_uses, cand.initializer_uses),
    )
