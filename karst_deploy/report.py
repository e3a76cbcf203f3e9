"""What people see: rich tables and PNG plots for parity and bench results."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from karst_deploy.bench import BenchResult
    from karst_deploy.export.whitebox import WhiteBoxResult
    from karst_deploy.parity import Comparison, ParityReport


def _mark(passed: bool | None) -> str:
    return {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[dim]n/a[/]"}[passed]


def parity_table(report: ParityReport) -> Table:
    """One column per (stage pair, input set), one row per metric, and the verdict."""
    table = Table(title="verify-parity", title_justify="left")
    table.add_column("")
    for c in report.comparisons:
        table.add_column(f"{c.reference}\n→ {c.candidate}\n({c.inputs})", justify="right")

    def row(label: str, cell: Callable[[Comparison], str]) -> None:
        table.add_row(label, *(cell(c) for c in report.comparisons))

    def allowed(comparison: Comparison) -> str:
        limits = [k.limit for k in comparison.checks if k.name == "max abs diff"]
        return f"{limits[0]:.2e}" if limits else "–"

    def cosine(value: float) -> str:  # 0.99999999999 hides the interesting digits
        return f"1 − {1 - value:.1e}" if value > 0.999 else f"{value:.6f}"

    def accuracy(metrics: dict[str, float]) -> str:
        if "accuracy_reference" not in metrics:
            return "–"
        return f"{metrics['accuracy_reference']:.1f} → {metrics['accuracy_candidate']:.1f}"

    row("max abs diff", lambda c: f"{c.metrics['max_abs_diff']:.2e}")
    row("  allowed", allowed)
    row("max rel diff", lambda c: f"{c.metrics['max_rel_diff']:.2e}")
    row("min cosine", lambda c: cosine(c.metrics["min_cosine"]))
    row("top-1 agreement", lambda c: f"{c.metrics['top1_agreement']:.1%}")
    row("top-5 agreement", lambda c: f"{c.metrics['top5_agreement']:.1%}")
    if report.accuracy:
        row("accuracy %", lambda c: accuracy(c.metrics))
    row("verdict", lambda c: _mark(c.passed if c.checks else None))  # None: reported only
    return table


def white_box_table(result: WhiteBoxResult) -> Table:
    """The white-box stage: the graph against a fresh export, and its first differences."""
    table = Table(title="verify-parity: white-box (graph vs fresh export)", title_justify="left")
    table.add_column("")
    table.add_column("")
    table.add_row("precision (from the graph)", result.precision)
    table.add_row("reference", result.reference)
    compared = f"{result.nodes_compared} nodes, {result.constants_compared} constants"
    table.add_row("compared", compared)
    worst = result.worst_constant
    if worst is not None:
        table.add_row(
            "closest to its limit",
            f"{worst['constant']}: {worst['error_over_limit']:.2f} of the allowed difference",
        )
    for index, difference in enumerate(result.differences):
        table.add_row("differs" if index == 0 else "", escape(difference))
    table.add_row("verdict", _mark(result.passed))
    return table


def bench_table(result: BenchResult) -> Table:
    """One row per (model, batch): latency percentiles, throughput, ratio to the baseline."""
    table = Table(title=f"bench ({result.runner}, {result.rounds} rounds)", title_justify="left")
    table.add_column("model")
    table.add_column("batch", justify="right")
    for column in ("median ms", "p90 ms", "p99 ms", "images/s", f"÷ {result.baseline} [95% CI]"):
        table.add_column(column, justify="right")
    for batch in result.batches:
        for label in result.models:
            stats = result.latency[label][str(batch)]
            ratio = result.ratios.get(label, {}).get(str(batch))
            ratio_text = (
                f"{ratio['ratio']:.3f} [{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}]"
                if ratio
                else "–"
            )
            table.add_row(
                label,
                str(batch),
                f"{stats['median_ms']:.2f}",
                f"{stats['p90_ms']:.2f}",
                f"{stats['p99_ms']:.2f}",
                f"{stats['throughput']:.1f}",
                ratio_text,
            )
    return table


_OUTCOME_MARKS = {
    "shown": "[green]shown[/]",
    "not shown": "[bold red]NOT SHOWN[/]",
    "inconclusive": "[bold yellow]INCONCLUSIVE[/]",
}


def verdict_lines(result: BenchResult) -> list[str]:
    """The zero-added-latency verdict (shown / not shown / inconclusive) and its halves."""
    verdict = result.verdict
    if verdict is None:
        return []
    rounds = f"{result.rounds} rounds"
    if result.rounds > result.requested_rounds:
        rounds += f", {result.rounds - result.requested_rounds} added to decide"
    lines = [
        f"zero added latency ({verdict.candidate} vs {verdict.baseline}): "
        f"{_OUTCOME_MARKS[verdict.outcome]} ({rounds}, {result.seconds:.1f} s)",
        f"  structure: {_mark(verdict.structure['same'])} {verdict.structure['summary']}",
    ]
    for batch, check in verdict.latency.items():
        lines.append(f"  batch {batch}: {_OUTCOME_MARKS[check['outcome']]} {check['detail']}")
    return lines


def plot_latencies(
    result: BenchResult, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """A PNG of the latency distribution of every model, one panel per batch size (to p99)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from karst_deploy.files import atomic_output

    batches = result.batches
    figure, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches, strict=True):
        samples = [np.asarray(result.samples_ms[label][str(batch)]) for label in result.models]
        # Rounds beyond the 99th percentile (a scheduler hiccup) would squash the violins
        # into a line: they are left out of the plot (not of the statistics) and counted.
        limit = max(float(np.percentile(s, 99)) for s in samples)
        shown = [s[s <= limit] for s in samples]
        axis.violinplot(shown, showmedians=True)
        axis.set_xticks(range(1, len(result.models) + 1), list(result.models), rotation=15)
        hidden = sum(len(s) - len(k) for s, k in zip(samples, shown, strict=True))
        above = f" ({hidden} round{'s' * (hidden != 1)} above p99 not drawn)" if hidden else ""
        axis.set_title(f"batch {batch}{above}")
        axis.set_ylabel("latency (ms)")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{result.runner} latency, {result.rounds} interleaved rounds")
    figure.tight_layout()
    with atomic_output(path, force=force) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return Path(path)
