"""Comparing logits: the tolerance table and the checks every verification uses (numpy only).

One home for "are these answers the same": `TOLERANCES` (keyed by the precision of the
model being judged), `compare_logits` (metrics and the gated checks), `accuracy` and
`agreement_upper_bound`. verify-parity, the export's own ONNX Runtime check, the precision
conversions' sanity run and the demo all judge with these. Leaf module: numpy and the
error types only (no torch, no ONNX), so any step can import it cheaply.

Polygraphy's default elementwise atol = rtol = 1e-5 is the wrong statistic for a
classifier; we bound the error relative to the logit scale and require the answers
(top-1) to be the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from karst_deploy.errors import InputError, VerificationError


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


@dataclass(frozen=True)
class LogitMetrics:
    """How far candidate logits are from reference logits over one input set.

    The accuracy fields are set only for labelled images (None otherwise, and then absent
    from `to_dict`); accuracies are in percent, `accuracy_drop` in points.
    """

    max_abs_diff: float
    # Per sample ‖Δ‖∞ / ‖ref‖∞, worst sample: elementwise ratios explode at logits near 0.
    max_rel_diff: float
    min_cosine: float
    top1_agreement: float  # fraction of samples with the same top-1 class
    top5_agreement: float  # fraction with the same set of top-5 classes
    max_abs_reference: float  # the logit scale the absolute limit is relative to
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    accuracy_drop: float | None = None

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def logit_metrics(reference: np.ndarray, candidate: np.ndarray) -> LogitMetrics:
    """How far `candidate` logits (N, classes) are from `reference`, in float64."""
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
    return LogitMetrics(
        max_abs_diff=float(difference.max()),
        max_rel_diff=float((difference.max(axis=1) / per_sample_scale).max()),
        min_cosine=float(cosine.min()),
        top1_agreement=float((reference.argmax(1) == candidate.argmax(1)).mean()),
        top5_agreement=float((_top_k(reference, k) == _top_k(candidate, k)).all(1).mean()),
        max_abs_reference=scale,
    )


def compare_logits(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
) -> tuple[LogitMetrics, list[Check]]:
    """Metrics of `candidate` against `reference` logits (N, classes), and the gated checks."""
    metrics = logit_metrics(reference, candidate)
    checks = []
    if tolerance.atol_scale is not None:
        checks.append(
            _check_at_most(
                "max abs diff",
                metrics.max_abs_diff,
                tolerance.atol_scale * max(1.0, metrics.max_abs_reference),
            )
        )
    checks.append(
        _check_at_least("top-1 agreement", metrics.top1_agreement, tolerance.min_top1_agreement)
    )
    if tolerance.real_images_only and labels is None:
        checks = []  # reported, not judged (see Tolerance.real_images_only)
    if labels is not None:
        before, after = accuracy(reference, labels), accuracy(candidate, labels)
        metrics = dataclasses.replace(
            metrics,
            accuracy_reference=before,
            accuracy_candidate=after,
            accuracy_drop=before - after,
        )
        if tolerance.max_accuracy_drop is not None:
            checks.append(
                _check_at_most(
                    "accuracy drop", metrics.accuracy_drop, tolerance.max_accuracy_drop, " pt"
                )
            )
    return metrics, checks


def agreement_upper_bound(rate: float, samples: int, z: float = 1.6449) -> float:
    """One-sided 95 % upper confidence bound of a proportion (Wilson score interval)."""
    if samples < 1:
        return 1.0
    denominator = 1 + z * z / samples
    centre = (rate + z * z / (2 * samples)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / samples + z * z / (4 * samples * samples))
    return min(1.0, centre + half / denominator)
