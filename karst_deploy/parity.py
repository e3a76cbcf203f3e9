"""`verify-parity`: the same inputs through every stage, each compared with the one before.

A stage is a named `Runner` (PyTorch unmerged, PyTorch merged, ONNX Runtime, and later a
TensorRT engine or an ONNX Runtime GPU provider): parity knows nothing about backends.
Inputs are seeded random tensors and, optionally, real labelled images. For every
adjacent pair of stages and every input set it reports max abs diff, max relative diff,
cosine similarity, top-1 and top-5 agreement, and with labels the accuracy of each stage.

Pass/fail limits live in one table, `TOLERANCES`, keyed by the precision of the stage
being judged (read from the ONNX graph itself, `karst_deploy.graph_precision`; a provenance
label that disagrees is refused), so a reduced-precision model is judged by its own gates.
Besides running inputs, `verify_parity` compares the ONNX graph with a fresh export of the
same model (`karst_deploy.export.whitebox`), so a branch no test input triggers is found.
Polygraphy's default elementwise atol = rtol = 1e-5 is the wrong statistic for a classifier;
we bound the error relative to the logit scale and require the answers (top-1) to be the same.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from karst_deploy.backends.base import Runner
from karst_deploy.errors import InputError, VerificationError

if TYPE_CHECKING:
    from karst_deploy.export.whitebox import WhiteBoxResult


@dataclass(frozen=True)
class Tolerance:
    """Limits a stage must meet against the stage before it.

    `atol_scale`: max |candidate − reference| ≤ atol_scale × max(1, max |reference|), over
    all logits of an input set (None: not gated). `min_top1_agreement`: fraction of samples
    whose top-1 class is unchanged. `max_accuracy_drop`: accuracy points (0–100) the
    candidate may lose on labelled images (None: not gated). `real_images_only`: gate only
    labelled real images; other input sets (seeded random tensors) are reported, not
    judged, and `verify-parity` then requires ``--data``.
    """

    atol_scale: float | None
    min_top1_agreement: float
    max_accuracy_drop: float | None = None
    real_images_only: bool = False


#: The one place tolerances are declared, keyed by the candidate stage's precision.
#: fp32: different runtimes order float sums differently, which moves ViT logits by about
#: 1e-6 relative; 1e-4 leaves room for deep models while catching any real change (a weight
#: perturbed by 1e-2 moves the logits by 1e-3 or more).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol_scale=1e-4, min_top1_agreement=1.0),
    # fp16 (karst_deploy.precision.fp16): ~3 significant digits per op; measured max abs diffs
    # are ~1e-3 of the logit scale (benchmarks/precision.py), 1e-2 leaves room for depth.
    # Judged on real images, where a flipped top-1 is a real change of answer.
    "fp16": Tolerance(atol_scale=1e-2, min_top1_agreement=0.99, real_images_only=True),
    # int8 (karst_deploy.precision.int8): quantization error is no logit bound; what matters
    # is the accuracy lost against the fp32 merged model on labelled images (≤ 1 point) and
    # that answers rarely change (a drop can hide flips that cancel out).
    "int8": Tolerance(
        atol_scale=None, min_top1_agreement=0.97, max_accuracy_drop=1.0, real_images_only=True
    ),
}


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise InputError(
            f"No parity tolerance is declared for precision '{precision}' (known: "
            f"{sorted(TOLERANCES)})."
        ) from None


@dataclass(frozen=True)
class Check:
    """One pass/fail check with its measured value and limit."""

    name: str
    value: float
    limit: float
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_at_most(name: str, value: float, limit: float, unit: str = "") -> Check:
    passed = bool(value <= limit)
    if passed:
        detail = f"{name} {value:.3g}{unit} ≤ {limit:.3g}{unit}"
    else:
        excess = f"{value / limit:.3g}× the limit" if limit > 0 else f"{value - limit:.3g} over"
        detail = f"{name} {value:.3g}{unit} exceeds {limit:.3g}{unit} ({excess})"
    return Check(name, float(value), float(limit), passed, detail)


def _check_at_least(name: str, value: float, limit: float) -> Check:
    passed = bool(value >= limit)
    relation = "≥" if passed else "is below"
    detail = f"{name} {value:.2%} {relation} {limit:.2%}"
    if not passed:
        detail += f" (short by {limit - value:.2%})"
    return Check(name, float(value), float(limit), passed, detail)


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argpartition(-logits, k - 1, axis=1)[:, :k], axis=1)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)


def compare_logits(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
) -> tuple[dict[str, float], list[Check]]:
    """Metrics of `candidate` against `reference` logits (N, classes), and the gated checks."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    if reference.shape != candidate.shape:
        raise VerificationError(
            f"Logit shapes differ: {reference.shape} (reference) vs {candidate.shape}."
        )
    difference = np.abs(candidate - reference)
    scale = float(np.abs(reference).max())
    per_sample_scale = np.maximum(np.abs(reference).max(axis=1), np.finfo(np.float64).tiny)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = (reference * candidate).sum(axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)
    k = min(5, reference.shape[1])
    metrics = {
        "max_abs_diff": float(difference.max()),
        # Per sample ‖Δ‖∞ / ‖ref‖∞, worst sample: elementwise ratios explode at logits near 0.
        "max_rel_diff": float((difference.max(axis=1) / per_sample_scale).max()),
        "min_cosine": float(cosine.min()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "top5_agreement": float((_top_k(reference, k) == _top_k(candidate, k)).all(1).mean()),
        "max_abs_reference": scale,
    }
    checks = []
    if tolerance.atol_scale is not None:
        checks.append(
            _check_at_most(
                "max abs diff", metrics["max_abs_diff"], tolerance.atol_scale * max(1.0, scale)
            )
        )
    checks.append(
        _check_at_least("top-1 agreement", metrics["top1_agreement"], tolerance.min_top1_agreement)
    )
    if tolerance.real_images_only and labels is None:
        checks = []  # reported, not judged (see Tolerance.real_images_only)
    if labels is not None:
        metrics["accuracy_reference"] = accuracy(reference, labels)
        metrics["accuracy_candidate"] = accuracy(candidate, labels)
        metrics["accuracy_drop"] = metrics["accuracy_reference"] - metrics["accuracy_candidate"]
        if tolerance.max_accuracy_drop is not None:
            checks.append(
                _check_at_most(
                    "accuracy drop", metrics["accuracy_drop"], tolerance.max_accuracy_drop, " pt"
                )
            )
    return metrics, checks


@dataclass
class Stage:
    """A named runner in the parity chain; `precision` picks its tolerance."""

    name: str
    runner: Runner
    precision: str = "fp32"


@dataclass
class InputSet:
    """Images (N, 3, H, W) float32 fed to every stage, with labels when they are real images."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    reference: str
    candidate: str
    inputs: str
    tolerance: Tolerance
    metrics: dict[str, float]
    checks: list[Check]
    # Per input, the largest |candidate − reference| logit: what `--plot` histograms; not JSON.
    max_abs_diff_per_input: np.ndarray | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "inputs": self.inputs,
            "passed": self.passed,
            "tolerance": dataclasses.asdict(self.tolerance),
            "metrics": self.metrics,
            "checks": [check.to_dict() for check in self.checks],
        }


@dataclass
class ParityReport:
    stages: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    comparisons: list[Comparison]
    accuracy: dict[str, dict[str, float]]  # input set -> stage -> percent
    provenance: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    white_box: WhiteBoxResult | None = None  # the file's graph vs a fresh export

    @property
    def passed(self) -> bool:
        black_box = all(comparison.passed for comparison in self.comparisons)
        return black_box and (self.white_box is None or self.white_box.passed)

    @property
    def failures(self) -> list[str]:
        failures = [
            f"{c.reference} → {c.candidate} on {c.inputs} inputs: {check.detail}"
            for c in self.comparisons
            for check in c.checks
            if not check.passed
        ]
        if self.white_box is not None and not self.white_box.passed:
            shown = self.white_box.differences[:3]
            more = len(self.white_box.differences) - len(shown)
            failures.append(
                f"white-box (graph vs the {self.white_box.reference}): "
                + "; ".join(shown)
                + (f"; and {more} more" if more else "")
            )
        return failures

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise VerificationError("Parity failed: " + "; ".join(self.failures) + ".")

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "stages": self.stages,
            "inputs": self.inputs,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "accuracy": self.accuracy,
            "white_box": None if self.white_box is None else self.white_box.to_dict(),
            "provenance": self.provenance,
            "notes": self.notes,
        }


def run_stages(
    stages: Sequence[Stage],
    input_sets: Sequence[InputSet],
    tolerances: dict[str, Tolerance] | None = None,
    *,
    batch_size: int = 16,
    show_progress: bool = True,
) -> ParityReport:
    """Run every input set through every stage and compare each stage with the previous one.

    `tolerances` overrides the table per precision (e.g. a user's ``--atol``).
    """
    from karst_deploy.report import progress_bar

    if len(stages) < 2:
        raise InputError("Parity needs at least two stages to compare.")
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise InputError(f"Parity stages need distinct names, got {names}.")
    table = {**TOLERANCES, **(tolerances or {})}
    judged_by = [table.get(s.precision) or tolerance_for(s.precision) for s in stages[1:]]
    steps = sum(-(-len(s.images) // batch_size) for s in input_sets) * len(stages)
    outputs: dict[tuple[str, str], np.ndarray] = {}
    with progress_bar("parity", steps, enabled=show_progress) as advance:
        for stage in stages:
            with stage.runner:
                for inputs in input_sets:
                    chunks = []
                    for start in range(0, len(inputs.images), batch_size):
                        chunks.append(stage.runner.infer(inputs.images[start : start + batch_size]))
                        advance()
                    outputs[stage.name, inputs.name] = np.concatenate(chunks)
    comparisons = []
    for (previous, stage), tolerance in zip(itertools.pairwise(stages), judged_by, strict=True):
        for inputs in input_sets:
            reference = outputs[previous.name, inputs.name]
            candidate = outputs[stage.name, inputs.name]
            metrics, checks = compare_logits(reference, candidate, tolerance, inputs.labels)
            difference = np.abs(candidate.astype(np.float64) - reference).max(axis=-1)
            comparisons.append(
                Comparison(
                    previous.name, stage.name, inputs.name, tolerance, metrics, checks, difference
                )
            )
    accuracies = {
        inputs.name: {s.name: accuracy(outputs[s.name, inputs.name], inputs.labels) for s in stages}
        for inputs in input_sets
        if inputs.labels is not None
    }
    return ParityReport(
        stages=[{"name": s.name, "precision": s.precision, **s.runner.describe()} for s in stages],
        inputs=[
            {"name": i.name, "samples": len(i.images), "labelled": i.labels is not None}
            | i.description
            for i in input_sets
        ],
        comparisons=comparisons,
        accuracy=accuracies,
    )


def random_inputs(samples: int, img_size: int, seed: int = 0) -> InputSet:
    """Seeded standard-normal images: the scale of normalised pixels."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((samples, 3, img_size, img_size), dtype=np.float32)
    return InputSet("random", images, description={"seed": seed})


def image_inputs(
    source: str,
    split: str | None,
    samples: int,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None = None,
) -> InputSet:
    """Up to `samples` labelled images, evenly spaced over the split (so every class appears).

    With `num_classes` (the model's head), data with another number of classes is refused:
    its labels would be compared with outputs that mean other classes.
    """
    from karst_deploy.data import has_split, open_images

    if split is None:
        split = "test" if has_split(source, "test") else "val"
    data = open_images(source, split, img_size, mean, std)
    if num_classes is not None and data.num_classes != num_classes:
        raise InputError(
            f"--data '{source}' has {data.num_classes} classes but the model's head has "
            f"{num_classes}: its labels do not name the model's outputs. Pass the data the "
            "adapter was trained on (e.g. digits:A-B for a subset of digits)."
        )
    if len(data) == 0:
        raise InputError(f"Split '{split}' of data source '{source}' has no readable images.")
    index = np.unique(np.linspace(0, len(data) - 1, min(samples, len(data))).round().astype(int))
    pairs = [data[int(i)] for i in index]
    images = np.stack([image.numpy() for image, _ in pairs]).astype(np.float32)
    labels = np.array([label for _, label in pairs], dtype=np.int64)
    return InputSet(
        "images",
        images,
        labels,
        {"source": str(source), "split": split, "skipped": len(data.skipped)},
    )


def verify_parity(
    onnx: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    *,
    backbone: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    data: str | None = None,
    split: str | None = None,
    samples: int = 64,
    images: int = 1000,
    seed: int = 0,
    atol_scale: float | None = None,
    batch_size: int = 16,
    threads: int | None = None,
    extra_stages: Sequence[Stage] = (),
    engine: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
) -> ParityReport:
    """Unmerged PyTorch → merged PyTorch → ONNX Runtime (→ `extra_stages`) on the same inputs,
    and the white-box stage: the ONNX graph against a fresh export of the same model.

    For a Hugging Face PEFT `adapter`, PEFT's own ``PeftModel`` forward (stage ``peft``) comes
    first when ``peft`` is installed (else a note says so), and the backbone is the one the
    ONNX provenance records.

    Inputs: `samples` seeded random tensors and, with `data`, up to `images` labelled images
    evenly spaced over the split (an accuracy gate needs many: one image of 64 is 1.6 points).

    Refuses (InputError) an ONNX file whose provenance names another backbone, adapter or
    checkpoint, or a precision its graph does not show (the tolerance follows the graph),
    a `backbone` other than the adapter's, and `data` whose classes do not fit the model's
    head. `pretrained` lets timm download the weights the adapter says it was trained on.
    `atol_scale` replaces the table's value for every precision. With `engine`, a
    TensorRT stage follows ONNX Runtime; its sidecar must show it was built from `onnx`.
    """
    import onnx as onnx_lib

    from karst_deploy.adapters import load_adapted_model, merge
    from karst_deploy.adapters.peft_format import is_peft_directory, peft_parity_models
    from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from karst_deploy.backends.torch import TorchRunner
    from karst_deploy.export.record import (
        check_precision_label,
        check_source,
        require_provenance,
    )
    from karst_deploy.export.whitebox import white_box
    from karst_deploy.models import backbone_spec

    if samples < 1 or images < 1:
        raise InputError(f"--samples and --images must be at least 1, got {samples}, {images}.")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}.")
    overrides = None
    if atol_scale is not None:
        if not (math.isfinite(atol_scale) and atol_scale > 0):
            raise InputError(f"atol_scale must be a finite positive number, got {atol_scale}.")
        overrides = {
            p: dataclasses.replace(t, atol_scale=atol_scale) for p, t in TOLERANCES.items()
        }
    onnx = Path(onnx)
    record = require_provenance(onnx)
    check_source(record, onnx, adapter_dir=adapter, backbone=backbone, checkpoint=checkpoint)
    try:  # never follow external-data paths a file names: our exports are one file
        graph = onnx_lib.load(os.fspath(onnx), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError, ...
        raise InputError(f"'{onnx}' is not a readable ONNX file: {exc}") from None
    external = [
        t.name for t in graph.graph.initializer if t.data_location == onnx_lib.TensorProto.EXTERNAL
    ]
    if external:
        raise InputError(
            f"'{onnx}' keeps tensor '{external[0]}' in an external data file; karst-deploy "
            "exports are single self-contained files, export it again."
        )
    precision = check_precision_label(record, graph, onnx)
    if engine is not None:  # a TensorRT engine is compared only with the ONNX it was built from
        from karst_deploy.backends.tensorrt import TensorRTRunner
        from karst_deploy.engine.sidecar import engine_source_precision

        engine_precision = engine_source_precision(engine, onnx) or precision
        extra_stages = [Stage("tensorrt", TensorRTRunner(engine), engine_precision), *extra_stages]
    notes: list[str] = []
    first: list[Stage] = []
    if is_peft_directory(adapter):  # PEFT's own forward first, when PEFT is installed
        unmerged, reference, notes = peft_parity_models(
            adapter, record, checkpoint, pretrained=pretrained
        )
        if reference is not None:
            first = [Stage("peft", TorchRunner(reference, threads=threads))]
    else:
        unmerged = load_adapted_model(adapter, checkpoint, pretrained=pretrained)
    merged = merge(unmerged)
    spec = backbone_spec(unmerged)
    stages = [
        *first,
        Stage("torch-unmerged", TorchRunner(unmerged, threads=threads)),
        Stage("torch-merged", TorchRunner(merged, threads=threads)),
        Stage("onnxruntime", OnnxRuntimeRunner(onnx, threads=threads), precision=precision),
        *extra_stages,
    ]
    judged_on_images = [s for s in stages if tolerance_for(s.precision).real_images_only]
    if judged_on_images and data is None:
        raise InputError(
            f"'{onnx}' is {judged_on_images[0].precision}: reduced precision is judged on real "
            "labelled images (accuracy drop and top-1 agreement against the fp32 merged "
            "model); pass --data digits|IMAGE_FOLDER|VTAB_DIR."
        )
    input_sets = [random_inputs(samples, spec.img_size, seed)]
    if data is not None:
        input_sets.append(
            image_inputs(data, split, images, spec.img_size, spec.mean, spec.std, spec.num_classes)
        )
    # The file's kind label only picks which model it is compared with: a wrong one fails.
    unmerged_file = record.get("kind") == "unmerged"
    checked = white_box(
        graph,
        unmerged if unmerged_file else merged,
        spec.img_size,
        f"{'unmerged' if unmerged_file else 'merged'} model",
        onnx,
    )
    del graph
    report = run_stages(
        stages, input_sets, overrides, batch_size=batch_size, show_progress=show_progress
    )
    report.white_box = checked
    report.provenance = record
    report.notes = notes
    return report
