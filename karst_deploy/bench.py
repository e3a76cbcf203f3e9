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


def _input_shape(path: Path) -> tuple[int | str, int, int, int]:
    """The (batch, 3, H, W) input of an ONNX file; batch is a name when dynamic."""
    import onnx

    try:
        graph = onnx.load(os.fspath(path), load_external_data=False).graph
    except Exception as exc:  # DecodeError, OSError
        raise InputError(f"'{path}' is not a readable ONNX file: {exc}") from None
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise InputError(f"'{path}' takes input of shape {dims}; expected (batch, 3, H, W).")
    return tuple(dims)  # type: ignore[return-value]


def _precision(path: Path) -> str:
    from karst_deploy.graph_precision import graph_precision

    return graph_precision(path)


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
    progress: bool = True,
) -> BenchResult:
    """Time `models` (label → file) interleaved on `runner`; ratios against `baseline`.

    With `candidate`, also decide "zero added latency" for it against `baseline`. The rounds
    are split over `sessions` blocks, each with freshly created sessions and `warmup` rounds.
    `runner_options` go to the runner's ``from_file`` (e.g. TensorRT's `copies`, `cuda_graph`).
    """
    from karst_deploy.backends import runner_class
    from karst_deploy.doctor import cpu_model
    from karst_deploy.export.structure import compare_structure
    from karst_deploy.report.progress import progress_bar

    paths = {label: Path(path) for label, path in models.items()}
    for label in [baseline, candidate]:
        if label is not None and label not in paths:
            raise InputError(f"'{label}' is not one of the models {list(paths)}.")
    if rounds < 2 or warmup < 0 or sessions < 1:
        raise InputError(
            f"--rounds must be at least 2, --warmup at least 0 and --sessions at least 1 (got "
            f"{rounds}, {warmup}, {sessions})."
        )
    if not batches or min(batches) < 1:
        raise InputError(f"--batch must list positive batch sizes, got {list(batches)}.")
    if not 0 < tolerance < 1:
        raise InputError(f"--tolerance must be a fraction between 0 and 1, got {tolerance}.")
    for label, path in paths.items():
        if not path.is_file():
            raise InputError(f"Model '{label}': file '{path}' does not exist.")
    shapes = {label: _input_shape(path) for label, path in paths.items()}
    if len({shape[1:] for shape in shapes.values()}) != 1:
        raise InputError(
            f"The models take different image shapes: {shapes}; bench compares one network."
        )
    image_shape = next(iter(shapes.values()))[1:]
    for label, shape in shapes.items():
        fixed = [b for b in batches if isinstance(shape[0], int) and shape[0] != b]
        if fixed:
            raise InputError(
                f"Model '{label}' ('{paths[label]}') was exported with a fixed batch of "
                f"{shape[0]}, so it cannot run batch {fixed[0]}; export it with --batch dynamic."
            )
    notes = []
    if candidate is not None and _precision(paths[candidate]) != _precision(paths[baseline]):
        notes.append(
            f"No zero-added-latency verdict: '{candidate}' is {_precision(paths[candidate])} and "
            f"'{baseline}' is {_precision(paths[baseline])}; the table compares them as measured."
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
    with progress_bar("bench", steps, enabled=progress) as advance:
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


#: The largest batch size bench times (larger is a typo, not a plan).
MAX_BATCH = 4096


def parse_batch_sizes(text: str) -> list[int]:
    """``1,8`` -> [1, 8]: the batch sizes to time, each from 1 to `MAX_BATCH`."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and len(part) <= 5 and 1 <= int(part) <= MAX_BATCH for part in parts):
        raise InputError(
            f"--batch-sizes must be integers from 1 to {MAX_BATCH} separated by commas, got "
            f"'{text[:80]}'."
        )
    return [int(part) for part in parts]


@dataclass
class BenchRequest:
    """``karst-deploy bench``: the merged model against the plain backbone, with optional
    unmerged / fp16 / int8 variants side by side, timed on one runner."""

    merged: str | os.PathLike[str]
    base: str | os.PathLike[str]
    unmerged: str | os.PathLike[str] | None = None
    fp16: str | os.PathLike[str] | None = None
    int8: str | os.PathLike[str] | None = None
    batches: Sequence[int] = (1, 8)
    runner: str = "onnxruntime"
    copies: bool = True
    cuda_graph: bool = False
    threads: int | None = None
    rounds: int = 50
    warmup: int = 5
    sessions: int = 5
    tolerance: float = DEFAULT_TOLERANCE

    def models(self) -> dict[str, str | os.PathLike[str]]:
        """label -> file; the fp16 / int8 files must hold the precision their label says."""
        from karst_deploy.precision import require_precision

        models = {"base": self.base, "merged": self.merged}
        if self.unmerged is not None:
            models["unmerged"] = self.unmerged
        for precision, path in (("fp16", self.fp16), ("int8", self.int8)):
            if path is not None:
                require_precision(path, precision)
                models[f"merged-{precision}"] = path
        return models

    def runner_options(self) -> dict[str, Any] | None:
        """TensorRT's copy and CUDA-graph options; refused for any other runner."""
        if self.runner == "tensorrt":
            return {"copies": self.copies, "cuda_graph": self.cuda_graph}
        if self.cuda_graph or not self.copies:
            raise InputError("--no-copies and --cuda-graph apply to --runner tensorrt only.")
        return None


def run_bench(request: BenchRequest, *, progress: bool = True) -> BenchResult:
    """Time the request's models interleaved and decide zero added latency (merged vs base)."""
    runner_options = request.runner_options()
    return bench(
        request.models(),
        baseline="base",
        candidate="merged",
        batches=request.batches,
        runner=request.runner,
        threads=request.threads,
        rounds=request.rounds,
        warmup=request.warmup,
        sessions=request.sessions,
        tolerance=request.tolerance,
        runner_options=runner_options,
        progress=progress,
    )
