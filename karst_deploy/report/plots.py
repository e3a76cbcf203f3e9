"""PNG plots: bench latency distributions, SPT sensitivity shares and the demo's summary.

Every plot is written atomically (`karst_deploy.files.atomic_output`) and refuses to overwrite
without ``force``. matplotlib is imported inside each function (Agg, no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from karst_deploy.files import atomic_output

if TYPE_CHECKING:
    from karst_deploy.bench import BenchResult
    from karst_deploy.placement.sensitivity import Sensitivity


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | os.PathLike[str], *, force: bool, dpi: int) -> Path:
    with atomic_output(path, force=force) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    _pyplot().close(figure)
    return Path(path)


def _p99_top(samples: list[list[float]]) -> float:
    """A y-limit at 1.1 x the largest 99th percentile: a few scheduler hiccups would otherwise
    stretch the axis tenfold and squash every distribution into a line."""
    return 1.1 * max(float(np.percentile(values, 99)) for values in samples)


def plot_latencies(
    result: BenchResult, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """A PNG of the latency distribution of every model, one panel per batch size (to p99)."""
    plt = _pyplot()
    batches = result.batches
    figure, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches, strict=True):
        samples = [result.samples_ms[label][str(batch)] for label in result.models]
        axis.violinplot(samples, showmedians=True)
        axis.set_xticks(range(1, len(result.models) + 1), list(result.models), rotation=15)
        axis.set_title(f"batch {batch}")
        axis.set_ylabel("latency (ms), up to p99")
        axis.set_ylim(0, _p99_top(samples))
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{result.runner} latency, {result.rounds} interleaved rounds")
    figure.tight_layout()
    return _save(figure, path, force=force, dpi=120)


def plot_sensitivity(
    sensitivity: Sensitivity, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """A PNG of each candidate matrix's share of the total sensitivity, in model order.

    Roughly where SPT will spend the budget, at a glance.
    """
    plt = _pyplot()
    totals = {name: float(s.double().sum()) for name, s in sensitivity.scores.items()}
    grand = sum(totals.values()) or 1.0
    names = [name.removesuffix(".weight") for name in totals]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.22 * len(names) + 2), 4.0))
    axis.bar(range(len(names)), [t / grand for t in totals.values()], color="tab:blue")
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_ylabel("share of total sensitivity")
    backbone = sensitivity.metadata.get("backbone", {})
    axis.set_title(
        f"SPT sensitivity: {backbone.get('name', '?')} on {sensitivity.metadata.get('data', '?')} "
        f"({sensitivity.metadata.get('images', '?')} images)",
        fontsize=9,
    )
    figure.tight_layout()
    return _save(figure, path, force=force, dpi=120)
