"""`verify-parity`: the same inputs through every stage, each compared with the one before.

A stage is a named `Runner` (PyTorch unmerged, PyTorch merged, ONNX Runtime, and later a
TensorRT engine or an ONNX Runtime GPU provider): parity knows nothing about backends.
Inputs are seeded random tensors and, optionally, real labelled images. For every
adjacent pair of stages and every input set it reports max abs diff, max relative diff,
cosine similarity, top-1 and top-5 agreement, and with labels the accuracy of each stage.

Pass/fail limits live in one table, `karst_deploy.compare.TOLERANCES`, keyed by the
precision of the stage being judged (read from the ONNX graph itself,
`karst_deploy.onnx_file.OnnxFile.precision`; a provenance label that disagrees is refused),
so a reduced-precision model is judged by its own gates.
Besides running inputs, `verify_parity` compares the ONNX graph with a fresh export of the
same model (`karst_deploy.export.whitebox`), so a branch no test input triggers is found.
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
from karst_deploy.compare import (
    TOLERANCES,
    Check,
    LogitMetrics,
    Tolerance,
    accuracy,
    compare_logits,
    tolerance_for,
)
from karst_deploy.errors import InputError, VerificationError
from karst_deploy.onnx_file import OnnxFile

if TYPE_CHECKING:
    from karst_deploy.export.whitebox import WhiteBoxResult


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


@dataclass(frozen=True)
class StageSummary:
    """A stage as the report shows it: its name, precision and what its runner describes."""

    name: str
    precision: str
    runner: dict[str, Any]  # the runner's own `describe()` (versions, providers, threads …)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, **self.runner}


@dataclass(frozen=True)
class InputSummary:
    """An input set as the report shows it: its name, size, whether it has labels, and its
    own description (where the images came from)."""

    name: str
    samples: int
    labelled: bool
    description: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        summary = {"name": self.name, "samples": self.samples, "labelled": self.labelled}
        return summary | self.description


@dataclass
class Comparison:
    reference: str
    candidate: str
    inputs: str
    tolerance: Tolerance
    metrics: LogitMetrics
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
            "metrics": self.metrics.to_dict(),
            "checks": [check.to_dict() for check in self.checks],
        }


@dataclass
class ParityReport:
    stages: list[StageSummary]
    inputs: list[InputSummary]
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
            "stages": [stage.to_dict() for stage in self.stages],
            "inputs": [inputs.to_dict() for inputs in self.inputs],
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
    progress: bool = True,
) -> ParityReport:
    """Run every input set through every stage and compare each stage with the previous one.

    `tolerances` overrides the table per precision (e.g. a user's ``--atol``).
    """
    from karst_deploy.progress import progress_bar

    if len(stages) < 2:
        raise InputError("Parity needs at least two stages to compare.")
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise InputError(f"Parity stages need distinct names, got {names}.")
    table = {**TOLERANCES, **(tolerances or {})}
    judged_by = [table.get(s.precision) or tolerance_for(s.precision) for s in stages[1:]]
    steps = sum(-(-len(s.images) // batch_size) for s in input_sets) * len(stages)
    outputs: dict[tuple[str, str], np.ndarray] = {}
    with progress_bar("parity", steps, enabled=progress) as advance:
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
        stages=[StageSummary(s.name, s.precision, s.runner.describe()) for s in stages],
        inputs=[
            InputSummary(i.name, len(i.images), i.labels is not None, i.description)
            for i in input_sets
        ],
        comparisons=comparisons,
        accuracy=accuracies,
    )


def random_inputs(samples: int, img_size: int, seed: int = 0, channels: int = 3) -> InputSet:
    """Seeded standard-normal images: the scale of normalised pixels."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((samples, channels, img_size, img_size), dtype=np.float32)
    return InputSet("random", images, description={"seed": seed})


def image_inputs(
    source: str,
    split: str | None,
    samples: int,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
) -> InputSet:
    """Up to `samples` labelled images, evenly spaced over the split (so every class appears).

    With `classes` (the names of the model's outputs, recorded at training), the data's
    images of those classes are taken and relabelled to the model's order; data lacking
    one of them is refused. Without (an adapter that predates the record), data whose class
    count differs from `num_classes` (the model's head) is refused: its labels would be
    compared with outputs that mean other classes.
    """
    from karst_deploy.data import has_split, open_images

    if split is None:
        split = "test" if has_split(source, "test") else "val"
    data = open_images(source, split, img_size, mean, std)
    selected = None
    if classes is not None:
        before = data.num_classes
        data = data.select_classes(classes, "data")
        if data.num_classes != before:
            selected = list(classes)
    elif num_classes is not None and data.num_classes != num_classes:
        raise InputError(
            f"data '{source}' has {data.num_classes} classes but the model's head has "
            f"{num_classes}: its labels do not name the model's outputs. Pass the data the "
            "adapter was trained on (e.g. digits:A-B for a subset of digits).",
            parameters=("data",),
        )
    if len(data) == 0:
        raise InputError(f"Split '{split}' of data source '{source}' has no readable images.")
    index = np.unique(np.linspace(0, len(data) - 1, min(samples, len(data))).round().astype(int))
    pairs = [data[int(i)] for i in index]
    images = np.stack([image.numpy() for image, _ in pairs]).astype(np.float32)
    labels = np.array([label for _, label in pairs], dtype=np.int64)
    description = {"source": str(source), "split": split, "skipped": len(data.skipped)}
    if selected is not None:
        description["classes_selected"] = selected
    return InputSet("images", images, labels, description)


def _runner_stages(
    names: Sequence[str], onnx: Path, precision: str, threads: int | None
) -> list[Stage]:
    """A stage per registered runner name, each running the ONNX file itself."""
    from karst_deploy.backends import runner_class, runner_names

    stages = []
    for name in names:
        if name == "torch":  # from_file gives the architecture with random weights
            raise InputError(
                "runners: 'torch' is not a stage of its own; the PyTorch stages (torch-unmerged, "
                f"torch-merged) always run. Choose among "
                f"{', '.join(n for n in runner_names() if n != 'torch')}."
            )
        stages.append(Stage(name, runner_class(name).from_file(onnx, threads=threads), precision))
    return stages


def _engine_stage(
    engine: str | os.PathLike[str] | None, onnx: Path, precision: str, name: str = "tensorrt"
) -> list[Stage]:
    """The TensorRT engine's stage; an engine is compared only with the ONNX it was built from."""
    if engine is None:
        return []
    from karst_deploy.backends import runner_class
    from karst_deploy.backends.tensorrt.sidecar import engine_source_precision

    engine_precision = engine_source_precision(engine, onnx) or precision
    return [Stage(name, runner_class("tensorrt")(engine), engine_precision)]


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
    runners: Sequence[str] = (),
    progress: bool = True,
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
    Each name of `runners` (the runner registry, e.g. ``onnxruntime-cuda``, ``tensorrt``)
    appends a stage that runs `onnx` on that runner (``Runner.from_file``), judged by the
    tolerance of the graph's precision.
    """
    from karst_deploy.adapters import AdapterFile, load_adapted_model, merge
    from karst_deploy.adapters.peft_format import is_peft_directory, peft_parity_models
    from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from karst_deploy.backends.torch import TorchRunner
    from karst_deploy.export.record import check_source
    from karst_deploy.export.whitebox import white_box
    from karst_deploy.models import backbone_spec
    from karst_deploy.onnx_file import require_provenance

    if samples < 1 or images < 1:
        raise InputError(
            f"samples and images must be at least 1, got {samples}, {images}.",
            parameters=("samples", "images"),
        )
    if batch_size < 1:
        raise InputError(
            f"batch_size must be at least 1, got {batch_size}.", parameters=("batch_size",)
        )
    overrides = None
    if atol_scale is not None:
        if not (math.isfinite(atol_scale) and atol_scale > 0):
            raise InputError(
                f"atol_scale must be a finite positive number, got {atol_scale}.",
                parameters=("atol_scale",),
            )
        overrides = {
            p: dataclasses.replace(t, atol_scale=atol_scale) for p, t in TOLERANCES.items()
        }
    source = OnnxFile(onnx, "onnx")  # checked: size, no external data, one image input
    onnx = source.path
    record = require_provenance(source)
    check_source(record, onnx, adapter_dir=adapter, backbone=backbone, checkpoint=checkpoint)
    precision = source.precision  # the graph's; a provenance label that disagrees is refused
    graph = source.model
    del source
    extra_stages = [
        *_runner_stages(runners, onnx, precision, threads),
        # named apart from a `runners` stage "tensorrt" (the ONNX built in memory)
        *_engine_stage(
            engine, onnx, precision, "tensorrt-engine" if "tensorrt" in runners else "tensorrt"
        ),
        *extra_stages,
    ]
    notes: list[str] = []
    first: list[Stage] = []
    classes = None
    if is_peft_directory(adapter):  # PEFT's own forward first, when PEFT is installed
        unmerged, reference, notes = peft_parity_models(
            adapter, record, checkpoint, pretrained=pretrained
        )
        if reference is not None:
            first = [Stage("peft", TorchRunner(reference, threads=threads))]
    else:
        unmerged = load_adapted_model(adapter, checkpoint, pretrained=pretrained)
        classes = AdapterFile(adapter).classes
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
            "model); pass data (digits, an image folder or a VTAB-1k directory).",
            parameters=("data",),
        )
    input_sets = [random_inputs(samples, spec.img_size, seed, spec.in_chans)]
    if data is not None:
        input_sets.append(
            image_inputs(
                data, split, images, spec.img_size, spec.mean, spec.std, spec.num_classes, classes
            )
        )
        chosen = input_sets[-1].description.get("classes_selected")
        if chosen is not None:
            notes.append(
                f"--data '{data}' has more classes than the adapter; its images of the "
                f"adapter's {len(chosen)} classes ({', '.join(chosen[:10])}) were taken and "
                "relabelled to the adapter's order"
            )
        elif classes is None and not is_peft_directory(adapter):
            notes.append(
                "the adapter records no class names (made before karst-deploy recorded them): "
                "--data was matched to its head by class count only"
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
    report = run_stages(stages, input_sets, overrides, batch_size=batch_size, progress=progress)
    report.white_box = checked
    report.provenance = record
    report.notes = notes
    return report
