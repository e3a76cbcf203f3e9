"""`bench`: latency of several models on one runtime, interleaved, with a zero-latency verdict.

Method. All models are loaded at once; per batch size, after warm-up rounds, every round
runs each model once on the same input, rotating the order each round (A B C, B C A,
C A B, …) so that machine noise and cache effects fall on all of them alike. The rounds
are split into blocks, each with freshly created sessions in rotated creation order:
measured here, two sessions of the *same* graph differ by 1–3 % depending on where their
memory lands, which would otherwise be a fixed bias of exactly the size of the verdict. The ratio
of medians candidate/baseline gets a 95 % bootstrap confidence interval from resampling
*rounds* (the paired samples), so noise shared within a round cancels.

Verdict "zero added latency" for the candidate (the merged model) needs both halves:
the interval lies within ±`tolerance` (3 % by default) at every batch size, and the
structural check passes (`karst_deploy.export.structure`: same operator multiset and
initializer shapes as the baseline). The verdict applies to models of the same precision
only; comparing fp32/fp16/int8 files of one network gives the table and ratios alone.

Runners are taken by name from the registry; bench builds each with
``runner_class(name).from_file(path, threads=threads)``, the one classmethod a runner
needs to be benchmarked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from karst_deploy.errors import InputError, VerificationError
from karst_deploy.onnx_file import OnnxFile

DEFAULT_TOLERANCE = 0.03
BOOTSTRAP_RESAMPLES = 2000


@dataclass
class BenchResult:
    """Everything measured; `to_dict` is the documented JSON (see the README)."""

    runner: str
    models: dict[str, str]  # label -> file
    baseline: str
    batches: list[int]
    rounds: int
    warmup: int
    sessions: int
    threads: int | None
    latency: dict[str, dict[str, dict[str, float]]]  # label -> batch -> statistics
    samples_ms: dict[str, dict[str, list[float]]]  # label -> batch -> per-round latency
    ratios: dict[str, dict[str, dict[str, float]]]  # label -> batch -> ratio and CI
    verdict: dict[str, Any] | None
    runners: dict[str, dict[str, Any]]
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        """The verdict (None when no verdict applies)."""
        return None if self.verdict is None else self.verdict["passed"]

    def raise_if_failed(self) -> None:
        if self.passed is False:
            failures = "; ".join(self.verdict["failures"])
            raise VerificationError(f"Zero added latency is not shown: {failures}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"passed": self.passed}


def latency_statistics(seconds: np.ndarray, batch: int) -> dict[str, float]:
    milliseconds = seconds * 1e3
    median = float(np.median(milliseconds))
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(milliseconds, 90)),
        "p99_ms": float(np.percentile(milliseconds, 99)),
        "mean_ms": float(milliseconds.mean()),
        "min_ms": float(milliseconds.min()),
        "throughput": batch / (median / 1e3),  # images per second
    }


def ratio_of_medians(
    candidate: np.ndarray,
    baseline: np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """median(candidate)/median(baseline) with a percentile bootstrap CI over paired rounds."""
    rounds = len(baseline)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, rounds, size=(resamples, rounds))
    ratios = np.median(candidate[picks], axis=1) / np.median(baseline[picks], axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return {
        "ratio": float(np.median(candidate) / np.median(baseline)),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
    }


def bench(
    models: Mapping[str, str | os.PathLike[str]],
    *,
    baseline: str,
    candidate: str | None = None,
    batches: Sequence[int] = (1, 8),
    runner: str = "onnxruntime",
    threads: int | None = None,
    rounds: int = 50,
    warmup: int = 5,
    tolerance: float = DEFAULT_TOLERANCE,
    sessions: int = 5,
    seed: int = 0,
    runner_options: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> BenchResult:
    """Time `models` (label → file) interleaved on `runner`; ratios against `baseline`.

    With `candidate`, also decide "zero added latency" for it against `baseline`. The rounds
    are split over `sessions` blocks, each with freshly created sessions and `warmup` rounds.
    `runner_options` go to the runner's ``from_file`` (e.g. TensorRT's `copies`, `cuda_graph`).
    """
    from karst_deploy.backends import runner_class
    from karst_deploy.doctor import cpu_model
    from karst_deploy.export.structure import compare_structure
    from karst_deploy.report import progress_bar

    paths = {label: Path(path) for label, path in models.items()}
    for label in [baseline, candidate]:
        if label is not None and label not in paths:
            raise InputError(f"'{label}' is not one of the models {list(paths)}.")
    if rounds < 2 or warmup < 0 or sessions < 1:
        raise InputError(
            f"rounds must be at least 2, warmup at least 0 and sessions at least 1 (got "
            f"{rounds}, {warmup}, {sessions}).",
            parameters=("rounds", "warmup", "sessions"),
        )
    if not batches or min(batches) < 1:
        raise InputError(
            f"batches must list positive batch sizes, got {list(batches)}.", parameters=("batches",)
        )
    if not 0 < tolerance < 1:
        raise InputError(
            f"tolerance must be a fraction between 0 and 1, got {tolerance}.",
            parameters=("tolerance",),
        )
    images, precisions = {}, {}
    for label, path in paths.items():  # one parsed graph at a time: each runner loads its own
        file = OnnxFile(path)
        # The graph's precision; its label is not policed here (verify-parity refuses a lie).
        images[label], precisions[label] = file.image_input, file.graph_precision[0]
    if len({image.chw for image in images.values()}) != 1:
        shapes = {label: image.chw for label, image in images.items()}
        raise InputError(
            f"The models take different image shapes: {shapes}; bench compares one network."
        )
    image_shape = next(iter(images.values())).chw
    for label, image in images.items():
        fixed = [b for b in batches if not image.accepts(b)]
        if fixed:
            raise InputError(
                f"Model '{label}' ('{paths[label]}') was exported with a fixed batch of "
                f"{image.batch}, so it cannot run batch {fixed[0]}; export it with a dynamic "
                "batch axis (karst-deploy export --batch dynamic)."
            )
    notes = []
    if candidate is not None and precisions[candidate] != precisions[baseline]:
        notes.append(
            f"No zero-added-latency verdict: '{candidate}' is {precisions[candidate]} and "
            f"'{baseline}' is {precisions[baseline]}; the table compares them as measured."
        )
        candidate = None

    factory = runner_class(runner)
    if not hasattr(factory, "from_file"):
        raise InputError(f"The '{runner}' runner cannot open model files, so bench cannot use it.")
    rng = np.random.default_rng(seed)
    labels = list(paths)
    inputs = {b: rng.standard_normal((b, *image_shape), dtype=np.float32) for b in batches}
    measured: dict[str, dict[int, list[float]]] = {
        label: {b: [] for b in batches} for label in labels
    }
    blocks = np.array_split(np.arange(rounds), min(sessions, rounds))
    steps = len(batches) * (rounds + warmup * len(blocks)) * len(labels)
    descriptions: dict[str, dict[str, Any]] = {}
    with progress_bar("bench", steps, enabled=show_progress) as advance:
        for block_index, block in enumerate(blocks):
            # Fresh sessions per block, created in rotated order: where a session's memory
            # lands moves identical graphs by 1-3 %, so it must be noise, not a fixed bias.
            order = labels[block_index % len(labels) :] + labels[: block_index % len(labels)]
            with contextlib.ExitStack() as stack:
                runners = {
                    label: stack.enter_context(
                        factory.from_file(paths[label], threads=threads, **(runner_options or {}))
                    )
                    for label in order
                }
                for batch in batches:
                    for round_index in range(warmup + len(block)):
                        shift = round_index % len(labels)
                        for label in labels[shift:] + labels[:shift]:
                            runners[label].infer(inputs[batch])
                            if round_index >= warmup:
                                measured[label][batch].append(runners[label].last_inference_time)
                            advance()
                descriptions = {label: r.describe() for label, r in runners.items()}
    times = {
        label: {str(b): np.asarray(measured[label][b], dtype=np.float64) for b in batches}
        for label in labels
    }

    latency = {
        label: {b: latency_statistics(t, int(b)) for b, t in per_batch.items()}
        for label, per_batch in times.items()
    }
    ratios = {
        label: {
            b: ratio_of_medians(times[label][b], times[baseline][b], seed=seed)
            for b in times[label]
        }
        for label in labels
        if label != baseline
    }
    verdict = None
    if candidate is not None:
        structure = compare_structure(paths[baseline], paths[candidate])
        checks = {}
        for b, ratio in ratios[candidate].items():
            inside = 1 - tolerance <= ratio["ci_low"] and ratio["ci_high"] <= 1 + tolerance
            interval = (
                f"{ratio['ratio']:.3f} [95% CI {ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}]"
            )
            detail = (
                f"{candidate}/{baseline} {interval} lies within ±{tolerance:.0%}"
                if inside
                else f"{candidate}/{baseline} {interval} reaches beyond ±{tolerance:.0%}"
            )
            checks[b] = {"passed": inside, "detail": detail}
        failures = [f"batch {b}: {c['detail']}" for b, c in checks.items() if not c["passed"]]
        if not structure.same:
            failures.append(f"structure: {structure.summary()}")
        verdict = {
            "candidate": candidate,
            "baseline": baseline,
            "tolerance": tolerance,
            "structure": structure.to_dict(),
            "latency": checks,
            "failures": failures,
            "passed": not failures,
        }
    return BenchResult(
        runner=runner,
        models={label: str(path) for label, path in paths.items()},
        baseline=baseline,
        batches=list(batches),
        rounds=rounds,
        warmup=warmup,
        sessions=len(blocks),
        threads=threads,
        latency=latency,
        samples_ms={
            label: {b: (t * 1e3).round(4).tolist() for b, t in per_batch.items()}
            for label, per_batch in times.items()
        },
        ratios=ratios,
        verdict=verdict,
        runners=descriptions,
        machine={"cpu": cpu_model(), "cpu_count": os.cpu_count()},
        notes=notes,
    )
