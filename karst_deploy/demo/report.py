"""The demo's presentation: ``demo.png`` and the rich tables the CLI prints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table

from karst_deploy.demo.result import DemoResult
from karst_deploy.files import atomic_output

STAGE_LABELS = {
    "torch-unmerged": "PyTorch\nunmerged",
    "torch-merged": "PyTorch\nmerged",
    "onnxruntime": "ORT fp32\nmerged",
    "onnxruntime-unmerged": "ORT fp32\nunmerged",
    "onnxruntime-int8": "ORT int8\nmerged",
}


def plot_demo(
    result: DemoResult, samples_ms: dict[str, dict[str, list[float]]], path: str | os.PathLike[str]
) -> Path:
    """One PNG telling the story: training, accuracy per stage, latency per model.

    `samples_ms` is the bench's per-round latency (label → batch → milliseconds).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    required = result.settings.min_test_accuracy * 100
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    curve, bars, *latency_axes = axes.flat

    training = result.training
    epochs = range(1, training.epochs + 1)
    curve.plot(epochs, [a * 100 for a in training.val_accuracy_per_epoch], "o-", ms=3)
    curve.axvline(training.best_epoch, color="grey", ls=":", label="chosen epoch")
    curve.axhline(required, color="red", ls="--", lw=1, label=f"required {required:.0f} %")
    curve.set(
        title="KARST on digits 5–9, backbone frozen",
        xlabel="epoch",
        ylabel="validation accuracy (%)",
    )
    curve.legend(loc="lower right")

    test = result.accuracy["test"]
    names = list(test)
    colours = ["tab:orange" if "int8" in n else "tab:blue" for n in names]
    bars.bar([STAGE_LABELS.get(n, n) for n in names], [test[n] for n in names], color=colours)
    for index, name in enumerate(names):
        bars.text(index, test[name] + 0.5, f"{test[name]:.1f}", ha="center", fontsize=9)
    bars.axhline(required, color="red", ls="--", lw=1)
    low = min(min(test.values()), required) - 10
    bars.set(
        title=f"held-out test accuracy per stage ({result.test_images} images)",
        ylabel="accuracy (%)",
        ylim=(max(0, low), 100),
    )
    bars.tick_params(axis="x", labelsize=8)

    latency = result.latency
    for axis, batch in zip(latency_axes, latency.batches, strict=True):
        labels = list(samples_ms)
        samples = [samples_ms[label][str(batch)] for label in labels]
        axis.violinplot(samples, showmedians=True, showextrema=False)
        axis.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        ratio = latency.merged_vs_base[str(batch)].ratio
        # A few scheduler hiccups would stretch the axis tenfold; show up to the 99th percentile.
        top = 1.1 * max(float(np.percentile(values, 99)) for values in samples)
        axis.set(
            title=f"batch {batch}: merged/base {ratio.interval()}",
            ylabel="latency (ms), up to p99",
            ylim=(0, top),
        )
        axis.grid(axis="y", alpha=0.3)
    verdict = "PASSED" if result.passed else "FAILED"
    figure.suptitle(f"karst-deploy demo ({result.settings.mode}): {verdict}")
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(path)


_MARKS = {
    "pass": "[green]pass[/]",
    "fail": "[bold red]FAIL[/]",
    "inconclusive": "[yellow]inconclusive[/]",
    "not shown": "[yellow]not shown[/]",
}


def summary_tables(result: DemoResult) -> list[Table]:
    """The demo's result as rich tables: run, accuracy per stage, latency, verdicts."""
    run = Table(title=f"karst-deploy demo ({result.settings.mode})", title_justify="left")
    for column in ("step", "seconds", "what happened"):
        run.add_column(column, justify="right" if column == "seconds" else "left")
    for step in result.steps:
        run.add_row(step.name, f"{step.seconds:.1f}", escape(step.detail))
    run.add_row("total", f"{sum(s.seconds for s in result.steps):.1f}", escape(str(result.out)))

    test = result.accuracy["test"]
    gate_set = next(name for name in result.accuracy if name != "test")
    by_stage = Table(title="accuracy on held-out digits 5-9 (%)", title_justify="left")
    by_stage.add_column("stage")
    by_stage.add_column(f"test ({result.test_images} images)", justify="right")
    by_stage.add_column(f"{gate_set} (int8 gate)", justify="right")
    for stage, value in test.items():
        gated = result.accuracy[gate_set].get(stage)
        by_stage.add_row(stage, f"{value:.1f}", "–" if gated is None else f"{gated:.1f}")

    latency = result.latency
    table = Table(
        title=f"latency, ONNX Runtime CPU, {latency.rounds} interleaved rounds",
        title_justify="left",
    )
    for column in ("model", "batch", "median ms", "÷ base [95% CI]"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for batch in map(str, latency.batches):
        for label, per_batch in latency.latency.items():
            ratio = latency.ratios.get(label, {}).get(batch)
            table.add_row(
                label,
                batch,
                f"{per_batch[batch].median_ms:.3f}",
                "–" if ratio is None else ratio.interval(),
            )

    verdicts = Table(title="verdicts", title_justify="left")
    for column in ("check", "verdict", "detail"):
        verdicts.add_column(column)
    for verdict in result.verdicts:
        name = verdict.name if verdict.hard else f"{verdict.name} (soft)"
        verdicts.add_row(name, _MARKS[verdict.state], escape(verdict.detail))
    return [run, by_stage, table, verdicts]
