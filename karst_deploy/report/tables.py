"""Rich tables for people: every command's result as a table (JSON is each result's `to_dict`).

Columns fold instead of cutting text off: a stage name or a path is never truncated."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from karst_deploy.backends.tensorrt.loader import EngineBuild
    from karst_deploy.backends.tensorrt.trtexec import TrtexecCommands
    from karst_deploy.bench import BenchResult
    from karst_deploy.compare import LogitMetrics
    from karst_deploy.doctor import Diagnosis
    from karst_deploy.export.whitebox import WhiteBoxResult
    from karst_deploy.parity import Comparison, ParityReport
    from karst_deploy.train import TrainResult


def key_value_table(title: str, rows: Mapping[str, object]) -> Table:
    """Two columns, name and value; a value that is not a string is shown as JSON."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        table.add_row(escape(key), escape(text))
    return table


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

    def accuracy(metrics: LogitMetrics) -> str:
        if metrics.accuracy_reference is None:
            return "–"
        return f"{metrics.accuracy_reference:.1f} → {metrics.accuracy_candidate:.1f}"

    row("max abs diff", lambda c: f"{c.metrics.max_abs_diff:.2e}")
    row("  allowed", allowed)
    row("max rel diff", lambda c: f"{c.metrics.max_rel_diff:.2e}")
    row("min cosine", lambda c: cosine(c.metrics.min_cosine))
    row("top-1 agreement", lambda c: f"{c.metrics.top1_agreement:.1%}")
    row("top-5 agreement", lambda c: f"{c.metrics.top5_agreement:.1%}")
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
            f"{worst.constant}: {worst.error_over_limit:.2f} of the allowed difference",
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
            table.add_row(
                label,
                str(batch),
                f"{stats.median_ms:.2f}",
                f"{stats.p90_ms:.2f}",
                f"{stats.p99_ms:.2f}",
                f"{stats.throughput:.1f}",
                "–" if ratio is None else ratio.interval(),
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
        f"  structure: {_mark(verdict.structure.same)} {verdict.structure.summary()}",
    ]
    for batch, check in verdict.latency.items():
        lines.append(f"  batch {batch}: {_OUTCOME_MARKS[check.outcome]} {check.detail}")
    return lines


def doctor_table(report: Diagnosis) -> tuple[Table, list[str]]:
    """The environment as a table, and one hint line per missing piece."""
    rows = {k: v for k, v in report.to_dict().items() if k not in ("tensorrt", "missing")}
    trt = report.tensorrt
    rows["tensorrt"] = trt.version if trt.available else f"not available ({trt.reason})"
    hints = [f"[yellow]{escape(what)}:[/] {escape(hint)}" for what, hint in report.missing.items()]
    return key_value_table("karst-deploy doctor", rows), hints


def engine_table(result: EngineBuild) -> tuple[Table, list[str]]:
    """A built engine: file, sidecar, TensorRT, GPU, verified precision, profile, DLA fallbacks."""
    environment, precision = result.environment, result.precision
    rows: dict[str, object] = {
        "engine": str(result.engine),
        "sidecar": str(result.sidecar),
        "TensorRT": environment.tensorrt_version,
        "GPU": f"{environment.gpu_name} (compute capability {environment.compute_capability})",
        "precision": f"{precision.requested}: {precision.matched} of "
        f"{len(precision.verdicts)} GEMM/conv layers verified"
        + ("" if result.precision_checked else " (check skipped: --no-precision-check)"),
        "profile": result.profile,
        "build time": f"{result.build_seconds} s",
    }
    if result.dla_core is not None:
        rows["DLA"] = (
            f"core {result.dla_core}; {len(result.dla_fallback_layers)} layer(s) fall back "
            "to the GPU"
        )
    return key_value_table("TensorRT engine", rows), [
        f"  GPU fallback: {escape(layer)}" for layer in result.dla_fallback_layers
    ]


def train_tables(result: TrainResult, title: str) -> tuple[list[Table], list[str]]:
    """Per-epoch losses and accuracy (the chosen epoch starred), a summary, and the warnings."""
    log = result.log
    table = Table(title=escape(title), title_justify="left")
    for column in ("epoch", "train loss", "val loss", "val acc", "lr", "seconds"):
        table.add_column(column, justify="right")
    for row in log.epochs:
        mark = " *" if row.epoch == log.best_epoch else ""
        table.add_row(
            f"{row.epoch}{mark}",
            f"{row.train_loss:.4f}",
            f"{row.val_loss:.4f}",
            f"{row.val_accuracy:.4f}",
            f"{row.lr:.2e}",
            f"{row.seconds:.1f}",
        )
    test = log.test_accuracy
    summary = {
        "adapter directory": str(result.out),
        "best epoch (on val)": f"{log.best_epoch} (* above)",
        "val accuracy": f"{log.best_val_accuracy:.4f}",
        "test accuracy": "no test split" if test is None else f"{test:.4f} (reported only)",
        "trainable parameters": log.trainable_parameters.to_dict(),
        "skipped images": log.data.skipped_images,
    }
    warnings = [f"[yellow]warning:[/] {escape(w)}" for w in log.warnings]
    return [table, key_value_table("trained", summary)], warnings


def trtexec_lines(commands: list[TrtexecCommands]) -> list[str]:
    """The trtexec build and timing commands per TensorRT line, ready to paste (plain text)."""
    from karst_deploy.backends.tensorrt.trtexec import format_command

    lines: list[str] = []
    for entry in commands:
        lines.append(f"# ---- TensorRT {entry.tensorrt_major}.x ----")
        if entry.build:
            lines += ["# build on the device", format_command(entry.build)]
        lines += ["# time it (GPU compute, as trtexec 11 measures by default)"]
        lines += [format_command(entry.timing)]
        lines += [f"# note: {note}" for note in entry.notes]
    return lines
