"""`bench`: latency of several models on one runtime, interleaved, with a zero-latency verdict.

Method. All models are loaded at once; per batch size, after warm-up rounds, every round
runs each model once on the same input, rotating the order each round (A B C, B C A,
C A B, …) so that machine noise and cache effects fall on all of them alike. The rounds
are split into blocks, each with freshly created sessions in rotated creation order:
measured here, two sessions of the *same* graph differ by 1–3 % depending on where their
memory lands, which would otherwise be a fixed bias of exactly the size of the verdict. The ratio
of medians candidate/baseline gets a 95 % bootstrap confidence interval from resampling
*rounds* (the paired samples), so noise shared within a round cancels.

Verdict "zero added latency" for the candidate (the merged model), one of three outcomes
(`interval_outcome`, `combine_outcomes`):

- **shown** (exit 0): the structural check passes (`karst_deploy.export.structure`: same
  operator multiset and initializer shapes as the baseline) and at every batch size the
  interval lies inside 1 ± `tolerance` (3 % by default);
- **not shown** (exit 1): the structure differs, or at some batch size the interval lies
  wholly outside the band — a real difference, not noise;
- **inconclusive** (exit 75, `InconclusiveError`): otherwise — some interval straddles an
  edge of the band, so the measurement was too noisy to tell.

Adaptive measurement: after the requested `rounds`, while the outcome is inconclusive and
`max_seconds` (wall time of the whole measurement) allows another block of the same size,
another block with fresh sessions is measured and the verdict recomputed
(`should_measure_more`); `rounds` in the result is the number actually measured. Looking
again after each block makes the 95 % coverage of the final interval approximate (a
sequential test would need wider intervals); blocks are large, so looks are few.

The verdict applies to models of the same precision only; comparing fp32/fp16/int8 files
of one network gives the table and ratios alone. Runners are taken by name from the
registry and opened with ``Runner.from_file(path, threads=threads, **runner_options)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from karst_deploy.errors import InconclusiveError, InputError, VerificationError
from karst_deploy.onnx_file import OnnxFile

if TYPE_CHECKING:
    from karst_deploy.export.structure import StructureComparison

DEFAULT_TOLERANCE = 0.03
BOOTSTRAP_RESAMPLES = 2000
SHOWN, NOT_SHOWN, INCONCLUSIVE = "shown", "not shown", "inconclusive"
OUTCOMES = (SHOWN, NOT_SHOWN, INCONCLUSIVE)


def interval_outcome(low: float, high: float, tolerance: float) -> str:
    """Whether the interval [low, high] of a ratio shows it within 1 ± `tolerance`.

    Inside the band: shown. Wholly outside: not shown. Straddling an edge: inconclusive.
    """
    if 1 - tolerance <= low and high <= 1 + tolerance:
        return SHOWN
    if high < 1 - tolerance or low > 1 + tolerance:
        return NOT_SHOWN
    return INCONCLUSIVE


def combine_outcomes(outcomes: Iterable[str]) -> str:
    """All shown: shown. Any not shown: not shown (one real difference decides).

    Otherwise inconclusive.
    """
    outcomes = list(outcomes)
    if NOT_SHOWN in outcomes:
        return NOT_SHOWN
    return SHOWN if outcomes and all(o == SHOWN for o in outcomes) else INCONCLUSIVE


def should_measure_more(
    outcome: str | None, elapsed: float, block_seconds: float, max_seconds: float
) -> bool:
    """Measure another block: the verdict is still inconclusive and one more fits the budget."""
    return outcome == INCONCLUSIVE and elapsed + block_seconds <= max_seconds


@dataclass(frozen=True)
class BatchLatency:
    """The latency half of the verdict at one batch size: its outcome and the interval."""

    outcome: str
    passed: bool
    detail: str


@dataclass
class LatencyVerdict:
    """ "Zero added latency" for `candidate` against `baseline`, and why."""

    candidate: str
    baseline: str
    tolerance: float
    structure: StructureComparison
    latency: dict[str, BatchLatency]  # batch -> its outcome
    outcome: str

    @property
    def passed(self) -> bool:
        return self.outcome == SHOWN

    @property
    def failures(self) -> list[str]:
        """What keeps the outcome from "shown", one line each."""
        lines = [f"batch {b}: {c.detail}" for b, c in self.latency.items() if not c.passed]
        if not self.structure.same:
            lines.append(f"structure: {self.structure.summary()}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "tolerance": self.tolerance,
            "structure": self.structure.to_dict(),
            "latency": {batch: dataclasses.asdict(c) for batch, c in self.latency.items()},
            "outcome": self.outcome,
            "passed": self.passed,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class LatencyStatistics:
    """One model's latency at one batch size over the measured rounds (milliseconds)."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # images per second at the median latency

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MedianRatio:
    """median(candidate) / median(baseline) and its bootstrap interval over paired rounds."""

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float  # of the interval [ci_low, ci_high]

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def interval(self, digits: int = 3) -> str:
        """``1.002 [0.998, 1.006]``: the ratio and its interval as tables show them."""
        return f"{self.ratio:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"


def latency_verdict(
    candidate: str,
    baseline: str,
    ratios: Mapping[str, MedianRatio],
    structure: StructureComparison,
    tolerance: float,
) -> LatencyVerdict:
    """The verdict from the candidate/baseline ratio per batch and the structural comparison."""
    band = f"±{tolerance:.0%}"
    relation = {SHOWN: "lies within", NOT_SHOWN: "lies wholly outside", INCONCLUSIVE: "straddles"}
    checks = {}
    for batch, ratio in ratios.items():
        outcome = interval_outcome(ratio.ci_low, ratio.ci_high, tolerance)
        interval = f"{ratio.ratio:.3f} [95% CI {ratio.ci_low:.3f}, {ratio.ci_high:.3f}]"
        detail = f"{candidate}/{baseline} {interval} {relation[outcome]} {band}"
        checks[batch] = BatchLatency(outcome, outcome == SHOWN, detail)
    outcomes = [c.outcome for c in checks.values()]
    outcome = combine_outcomes([*outcomes, SHOWN if structure.same else NOT_SHOWN])
    return LatencyVerdict(candidate, baseline, tolerance, structure, checks, outcome)


@dataclass
class BenchResult:
    """Everything measured; `to_dict` is the documented JSON (see the README)."""

    runner: str
    models: dict[str, str]  # label -> file
    baseline: str
    batches: list[int]
    rounds: int  # measured rounds per batch size, the added ones included
    warmup: int
    sessions: int  # blocks of fresh sessions
    threads: int | None
    latency: dict[str, dict[str, LatencyStatistics]]  # label -> batch -> statistics
    samples_ms: dict[str, dict[str, list[float]]]  # label -> batch -> per-round latency
    ratios: dict[str, dict[str, MedianRatio]]  # label -> batch -> ratio to the baseline
    verdict: LatencyVerdict | None
    runners: dict[str, dict[str, Any]]
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    requested_rounds: int = 0  # before adaptive rounds were added
    max_seconds: float = 0.0
    seconds: float = 0.0  # wall time of the measurement

    @property
    def outcome(self) -> str | None:
        """shown | not shown | inconclusive (None when no verdict applies)."""
        return None if self.verdict is None else self.verdict.outcome

    @property
    def passed(self) -> bool | None:
        """Whether zero added latency is shown (None when no verdict applies)."""
        return None if self.verdict is None else self.verdict.passed

    def raise_if_failed(self) -> None:
        """VerificationError when not shown (exit 1), InconclusiveError when too noisy (exit 75)."""
        if self.verdict is None or self.verdict.passed:
            return
        failures = "; ".join(self.verdict.failures)
        if self.verdict.outcome == NOT_SHOWN:
            raise VerificationError(f"Zero added latency is not shown: {failures}.")
        raise InconclusiveError(
            f"Zero added latency is inconclusive after {self.rounds} rounds in "
            f"{self.seconds:.0f} s: {failures}. The interval is too wide to decide; run bench "
            "again on a quieter machine, with more rounds or a larger max_seconds.",
            parameters=("rounds", "max_seconds"),
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["verdict"] = None if self.verdict is None else self.verdict.to_dict()
        return data | {"passed": self.passed, "outcome": self.outcome}


def latency_statistics(seconds: np.ndarray, batch: int) -> LatencyStatistics:
    milliseconds = seconds * 1e3
    median = float(np.median(milliseconds))
    return LatencyStatistics(
        median_ms=median,
        p90_ms=float(np.percentile(milliseconds, 90)),
        p99_ms=float(np.percentile(milliseconds, 99)),
        mean_ms=float(milliseconds.mean()),
        min_ms=float(milliseconds.min()),
        throughput=batch / (median / 1e3),
    )


def ratio_of_medians(
    candidate: np.ndarray,
    baseline: np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> MedianRatio:
    """median(candidate)/median(baseline) with a percentile bootstrap CI over paired rounds."""
    rounds = len(baseline)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, rounds, size=(resamples, rounds))
    ratios = np.median(candidate[picks], axis=1) / np.median(baseline[picks], axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return MedianRatio(
        ratio=float(np.median(candidate) / np.median(baseline)),
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
    )


@dataclass
class _Plan:
    """A checked request: the files, their common image shape, and who is judged."""

    paths: dict[str, Path]
    image_shape: tuple[int, ...]
    candidate: str | None
    notes: list[str]


def _check_request(
    models: Mapping[str, str | os.PathLike[str]],
    baseline: str,
    candidate: str | None,
    batches: Sequence[int],
    numbers: dict[str, float],
) -> _Plan:
    """Refuse a request bench cannot measure (before any session is created)."""
    paths = {label: Path(path) for label, path in models.items()}
    for label in [baseline, candidate]:
        if label is not None and label not in paths:
            raise InputError(f"'{label}' is not one of the models {list(paths)}.")
    if numbers["rounds"] < 2 or numbers["warmup"] < 0 or numbers["sessions"] < 1:
        raise InputError(
            f"rounds must be at least 2, warmup at least 0 and sessions at least 1 (got "
            f"{numbers['rounds']}, {numbers['warmup']}, {numbers['sessions']}).",
            parameters=("rounds", "warmup", "sessions"),
        )
    if not batches or min(batches) < 1:
        raise InputError(
            f"batches must list positive batch sizes, got {list(batches)}.", parameters=("batches",)
        )
    tolerance = numbers["tolerance"]
    if not 0 < tolerance < 1:
        raise InputError(
            f"tolerance must be a fraction between 0 and 1, got {tolerance}.",
            parameters=("tolerance",),
        )
    if not numbers["max_seconds"] >= 0:
        raise InputError(
            f"max_seconds must be at least 0, got {numbers['max_seconds']}.",
            parameters=("max_seconds",),
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
                "batch axis."
            )
    notes = []
    if candidate is not None and precisions[candidate] != precisions[baseline]:
        notes.append(
            f"No zero-added-latency verdict: '{candidate}' is {precisions[candidate]} and "
            f"'{baseline}' is {precisions[baseline]}; the table compares them as measured."
        )
        candidate = None
    return _Plan(paths, image_shape, candidate, notes)


class _Interleaved:
    """Interleaved rounds of every model, measured block by block with fresh sessions."""

    def __init__(
        self,
        open_runner: Callable[[Path], Any],
        paths: dict[str, Path],
        inputs: dict[int, np.ndarray],
        warmup: int,
    ) -> None:
        self.open_runner = open_runner
        self.paths = paths
        self.labels = list(paths)
        self.inputs = inputs
        self.warmup = warmup
        self.measured = {label: {b: [] for b in inputs} for label in self.labels}
        self.blocks = 0
        self.descriptions: dict[str, dict[str, Any]] = {}

    def steps(self, rounds: int, blocks: int = 1) -> int:
        """Inferences of `blocks` blocks holding `rounds` measured rounds (for progress)."""
        return len(self.inputs) * (rounds + self.warmup * blocks) * len(self.labels)

    def measure(self, rounds: int, advance: Callable[[], None]) -> None:
        """One block: fresh sessions, then per batch `warmup` + `rounds` rotated rounds."""
        labels = self.labels
        # Sessions created in rotated order: where a session's memory lands moves identical
        # graphs by 1-3 %, so it must be noise, not a fixed bias.
        shift = self.blocks % len(labels)
        with contextlib.ExitStack() as stack:
            runners = {
                label: stack.enter_context(self.open_runner(self.paths[label]))
                for label in labels[shift:] + labels[:shift]
            }
            for batch, images in self.inputs.items():
                for round_index in range(self.warmup + rounds):
                    turn = round_index % len(labels)
                    for label in labels[turn:] + labels[:turn]:
                        runners[label].infer(images)
                        if round_index >= self.warmup:
                            self.measured[label][batch].append(runners[label].last_inference_time)
                        advance()
            self.descriptions = {label: r.describe() for label, r in runners.items()}
        self.blocks += 1

    def times(self) -> dict[str, dict[str, np.ndarray]]:
        """label -> batch (as text, the JSON key) -> seconds per measured round."""
        return {
            label: {str(b): np.asarray(t, dtype=np.float64) for b, t in per_batch.items()}
            for label, per_batch in self.measured.items()
        }


def _ratios(
    times: dict[str, dict[str, np.ndarray]], labels: Iterable[str], baseline: str, seed: int
) -> dict[str, dict[str, MedianRatio]]:
    return {
        label: {
            b: ratio_of_medians(t, times[baseline][b], seed=seed) for b, t in times[label].items()
        }
        for label in labels
        if label != baseline
    }


def _result(
    timing: _Interleaved,
    plan: _Plan,
    verdict: LatencyVerdict | None,
    runner: str,
    baseline: str,
    batches: Sequence[int],
    threads: int | None,
    settings: dict[str, Any],
    *,
    seconds: float,
) -> BenchResult:
    """The statistics, ratios and samples of everything `timing` measured."""
    from karst_deploy.doctor import cpu_model

    times = timing.times()
    return BenchResult(
        runner=runner,
        models={label: str(path) for label, path in plan.paths.items()},
        baseline=baseline,
        batches=list(batches),
        rounds=len(times[baseline][str(batches[0])]),
        warmup=settings["warmup"],
        sessions=timing.blocks,
        threads=threads,
        latency={
            label: {b: latency_statistics(t, int(b)) for b, t in per_batch.items()}
            for label, per_batch in times.items()
        },
        samples_ms={
            label: {b: (t * 1e3).round(4).tolist() for b, t in per_batch.items()}
            for label, per_batch in times.items()
        },
        ratios=_ratios(times, times, baseline, settings["seed"]),
        verdict=verdict,
        runners=timing.descriptions,
        machine={"cpu": cpu_model(), "cpu_count": os.cpu_count()},
        notes=plan.notes,
        requested_rounds=settings["rounds"],
        max_seconds=settings["max_seconds"],
        seconds=round(seconds, 3),
    )


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
    max_seconds: float = 0.0,
    seed: int = 0,
    runner_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> BenchResult:
    """Time `models` (label → file) interleaved on `runner`; ratios against `baseline`.

    With `candidate`, also decide "zero added latency" for it against `baseline` (shown,
    not shown or inconclusive; see the module docstring). `rounds` are split over `sessions`
    blocks, each with freshly created sessions and `warmup` rounds; while the verdict is
    inconclusive, blocks of the same size are added until `max_seconds` would be exceeded
    (0: never). `runner_options` go to the runner's ``from_file`` (e.g. TensorRT's `copies`).
    """
    from karst_deploy.backends import runner_class
    from karst_deploy.export.structure import compare_structure
    from karst_deploy.progress import progress_bar

    numbers = dict(
        rounds=rounds, warmup=warmup, sessions=sessions, tolerance=tolerance,
        max_seconds=max_seconds,
    )  # fmt: skip
    plan = _check_request(models, baseline, candidate, batches, numbers)
    factory = runner_class(runner)
    options = dict(runner_options or {})
    rng = np.random.default_rng(seed)
    inputs = {b: rng.standard_normal((b, *plan.image_shape), dtype=np.float32) for b in batches}
    timing = _Interleaved(
        lambda path: factory.from_file(path, threads=threads, **options),
        plan.paths,
        inputs,
        warmup,
    )
    structure = None
    if plan.candidate is not None:
        structure = compare_structure(plan.paths[baseline], plan.paths[plan.candidate])

    def judge() -> LatencyVerdict | None:
        if plan.candidate is None:
            return None
        ratios = _ratios(timing.times(), [plan.candidate], baseline, seed)[plan.candidate]
        return latency_verdict(plan.candidate, baseline, ratios, structure, tolerance)

    blocks = np.array_split(np.arange(rounds), min(sessions, rounds))
    started = time.perf_counter()
    with progress_bar("bench", timing.steps(rounds, len(blocks)), enabled=progress) as advance:
        for block in blocks:
            timing.measure(len(block), advance)
    verdict = judge()
    more = len(blocks[0])  # added blocks are as large as the first ones
    while True:
        elapsed = time.perf_counter() - started
        outcome = None if verdict is None else verdict.outcome
        if not should_measure_more(outcome, elapsed, elapsed / timing.blocks, max_seconds):
            break
        title = f"bench: inconclusive, {more} more rounds"
        with progress_bar(title, timing.steps(more), enabled=progress) as advance:
            timing.measure(more, advance)
        verdict = judge()
    return _result(
        timing, plan, verdict, runner, baseline, batches, threads,
        dict(rounds=rounds, warmup=warmup, max_seconds=max_seconds, seed=seed),
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def parse_batch_sizes(text: str) -> list[int]:
    """``1,8`` -> [1, 8]: the batch sizes to time, each from 1 to the largest batch a file
    may fix (`karst_deploy.export.options.MAX_BATCH`)."""
    from karst_deploy.export.options import MAX_BATCH

    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and len(part) <= 5 and 1 <= int(part) <= MAX_BATCH for part in parts):
        raise InputError(
            f"batches must be integers from 1 to {MAX_BATCH} separated by commas, got "
            f"'{text[:80]}'.",
            parameters=("batches",),
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
    max_seconds: float = 0.0

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
            raise InputError(
                "copies=False and cuda_graph=True apply to runner tensorrt only.",
                parameters=("copies", "cuda_graph", "runner"),
            )
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
        max_seconds=request.max_seconds,
        runner_options=runner_options,
        progress=progress,
    )
