"""PNG plots of a training run (`train --plot`) and of a parity report (`verify-parity --plot`).

Written like `report.plot_latencies`: matplotlib's Agg backend, the file written atomically
and never over an existing one without `force`. (To move into the ``report/`` package.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from karst_deploy.files import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from karst_deploy.parity import ParityReport
    from karst_deploy.train.log import TrainLog

# Differences below this are drawn at it: a log axis has no zero (identical logits).
DIFF_FLOOR = 1e-12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, path: str | os.PathLike[str], force: bool) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    try:
        with atomic_output(path, force=force) as tmp:
            figure.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(figure)
    return Path(path)


def plot_training(log: TrainLog, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Loss and accuracy per epoch (training and validation), the chosen epoch marked."""
    plt = _pyplot()
    epochs = [e.epoch for e in log.epochs]
    figure, (loss, acc) = plt.subplots(1, 2, figsize=(10, 4))
    loss.plot(epochs, [e.train_loss for e in log.epochs], "o-", ms=3, label="train")
    loss.plot(epochs, [e.val_loss for e in log.epochs], "o-", ms=3, label="validation")
    loss.set(title="cross-entropy loss", xlabel="epoch", ylabel="loss")
    acc.plot(epochs, [100 * e.train_accuracy for e in log.epochs], "o-", ms=3, label="train")
    acc.plot(epochs, [100 * e.val_accuracy for e in log.epochs], "o-", ms=3, label="validation")
    if log.test_accuracy is not None:
        acc.axhline(100 * log.test_accuracy, color="grey", ls="--", lw=1, label="test (chosen)")
    acc.set(title="top-1 accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for axis in (loss, acc):
        axis.axvline(log.best_epoch, color="grey", ls=":", label="chosen epoch (best val)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    method = log.recipe.get("adapter", {}).get("method", "adapter")
    figure.suptitle(f"{method} on {log.data.source}: {len(epochs)} epochs")
    return _save(figure, path, force)


def plot_parity(report: ParityReport, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Accuracy per stage (labelled inputs) and, per comparison, a histogram of each input's
    largest logit difference on a log axis with the allowed difference marked."""
    plt = _pyplot()
    figure, (bars, hist) = plt.subplots(1, 2, figsize=(12, 4.5))
    stages = [s.name for s in report.stages]
    if report.accuracy:
        width = 0.8 / len(report.accuracy)
        for index, (inputs, per_stage) in enumerate(report.accuracy.items()):
            positions = np.arange(len(stages)) + index * width
            values = [per_stage[s] for s in stages]
            bars.bar(positions, values, width, label=inputs)
            for x, value in zip(positions, values, strict=True):
                bars.text(x, value + 0.5, f"{value:.1f}", ha="center", fontsize=8)
        bars.set_xticks(np.arange(len(stages)) + 0.4 - width / 2, stages, rotation=15, fontsize=8)
        bars.set(title="accuracy per stage", ylabel="accuracy (%)", ylim=(0, 105))
        bars.legend(fontsize=8)
    else:
        bars.text(0.5, 0.5, "no labelled images\n(pass --data)", ha="center", va="center")
        bars.set(title="accuracy per stage", xticks=[], yticks=[])
    for comparison in report.comparisons:
        differences = comparison.max_abs_diff_per_input
        if differences is None or not len(differences):
            continue
        values = np.maximum(differences, DIFF_FLOOR)
        bins = np.logspace(np.log10(values.min()), np.log10(values.max()) + 1e-9, 30)
        label = f"{comparison.reference} → {comparison.candidate} ({comparison.inputs})"
        (patch,) = hist.hist(values, bins=bins, histtype="step", lw=1.5, label=label)[2]
        for check in comparison.checks:
            if check.name == "max abs diff":
                hist.axvline(check.limit, color=patch.get_edgecolor(), ls="--", lw=1)
    hist.set_xscale("log")
    hist.set(
        title="largest |logit difference| per input (dashed: allowed)",
        xlabel=f"max |Δ logit| (values below {DIFF_FLOOR:g} drawn at it)",
        ylabel="inputs",
    )
    hist.legend(fontsize=7)
    verdict = "passed" if report.passed else "FAILED"
    figure.suptitle(f"verify-parity: {' → '.join(stages)}: {verdict}")
    return _save(figure, path, force)
