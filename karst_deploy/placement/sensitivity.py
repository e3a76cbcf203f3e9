"""SPT sensitivity (METHODS.md, SPT step 1): accumulated squared gradients of the candidate weights.

With the backbone in train mode and every weight requiring grad, for each of K batches of the
training split: forward, batch-mean cross-entropy, backward, and ``S += grad²`` for every
candidate (`candidate_parameters`: the qkv/proj/fc1/fc2 weights and biases and every
LayerNorm weight and bias; head, cls token, patch and position embeddings are never
candidates). The score of an entry is its ``S``.

The classifier head is part of the forward pass. Fine-tuning starts from a fresh head for the
target classes, so the gradients reaching the backbone pass through a random head — exactly
what SPT does (the reference code computes sensitivity before any training);
`sensitivity_for_backbone` therefore always resets the head, seeded by ``seed``.
Batches are the first ``K × B`` images of the training split in order, with drop-path active
at the training recipe's rate (0.1), as the official ``engine.get_sensitivity``; drop-path
draws are seeded by ``seed``, so the scores are repeatable. ``shuffle_seed`` takes the first
``K × B`` images of a seeded permutation instead (for a class-sorted folder whose first
images are all one class).

Scores file: safetensors, one float32 tensor per candidate under its parameter name
(``blocks.0.attn.qkv.weight``), with metadata ``format`` = ``karst-deploy.sensitivity``,
``version``, ``backbone`` (name, num_classes, img_size, checkpoint_sha256, model_kwargs; JSON),
``data``, ``batches``, ``batch_size``, ``images``, ``seed``, ``shuffle_seed``, ``drop_path`` and
``created_by``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from karst_deploy.adapters.base import DEFAULT_TARGETS, adapter_config, resolve_targets
from karst_deploy.errors import InputError
from karst_deploy.files import atomic_output
from karst_deploy.jsonfile import parse_value
from karst_deploy.models import backbone_spec, classifier_parameter_names, norm_parameter_names

SCORES_FORMAT = "karst-deploy.sensitivity"
SCORES_VERSION = 1


@dataclasses.dataclass
class Sensitivity:
    """Scores per candidate (parameter name → tensor of its shape) and their origin."""

    scores: dict[str, torch.Tensor]
    metadata: dict[str, Any]

    def matrix_totals(self) -> dict[str, float]:
        """Summed score per weight, largest first (what the CLI's table and plot show)."""
        totals = {name: float(s.double().sum()) for name, s in self.scores.items()}
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


def candidate_weights(
    model: nn.Module, targets: tuple[str, ...] = DEFAULT_TARGETS
) -> dict[str, nn.Parameter]:
    """The ``matrices`` candidates: weights of the Linear layers matched by `targets`."""
    return {
        f"{path}.weight": linear.weight for path, linear in resolve_targets(model, targets).items()
    }


def candidate_parameters(
    model: nn.Module, targets: tuple[str, ...] = DEFAULT_TARGETS, candidates: str = "official"
) -> dict[str, nn.Parameter]:
    """The SPT candidates by parameter name, in model order (METHODS.md, SPT step 2).

    ``official``: the weights and biases of the Linear layers matched by `targets` and
    every LayerNorm weight and bias, outside the head and the patch embedding (the cls
    token and position embedding are never candidates). ``matrices``: `candidate_weights`.
    """
    if candidates == "matrices":
        return candidate_weights(model, targets)
    linears = resolve_targets(model, targets)
    norms = set(norm_parameter_names(model))
    excluded = set(classifier_parameter_names(model))
    chosen = {}
    for name, parameter in model.named_parameters():
        path, _, leaf = name.rpartition(".")
        if name in excluded or name.startswith("patch_embed."):
            continue
        if (path in linears and leaf in ("weight", "bias")) or name in norms:
            chosen[name] = parameter
    return chosen


def compute_sensitivity(
    model: nn.Module,
    data: torch.utils.data.Dataset,
    *,
    batches: int = 16,
    batch_size: int = 32,
    seed: int = 0,
    shuffle_seed: int | None = None,
    drop_path: float = 0.1,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    candidates: str = "official",
    progress: bool = False,
) -> Sensitivity:
    """SPT sensitivity of `model`'s candidates on `data` (see the module docstring).

    `data` yields ``(image, label)`` pairs preprocessed for `model` (e.g. `open_images`).
    The model's training mode and ``requires_grad`` flags are restored afterwards.
    """
    from karst_deploy.models import training_drop_path
    from karst_deploy.progress import progress_bar

    if adapter_config(model) is not None:
        raise InputError(
            "Sensitivity is computed on the plain backbone; this model already carries adapters."
        )
    for name, value in (("batches", batches), ("batch-size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"--{name} is {value!r}; expected a positive integer.")
    if len(data) == 0:
        raise InputError("The training split holds no images to compute sensitivity on.")
    classes = getattr(data, "num_classes", None)
    if classes is not None and classes > model.num_classes:
        raise InputError(
            f"The data has {classes} classes but the model's head has {model.num_classes}; build "
            "the backbone with num_classes equal to the data's."
        )
    weights = candidate_parameters(model, targets, candidates)
    device = next(iter(weights.values())).device
    if not 0.0 <= drop_path < 1.0:
        raise InputError(
            f"drop_path is {drop_path!r}; expected 0 <= rate < 1.", parameters=("drop_path",)
        )
    if shuffle_seed is None:
        order = torch.arange(len(data))
    else:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(shuffle_seed))
    chunks = order[: batches * batch_size].split(batch_size)
    scores = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    was_training = model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    start = time.perf_counter()
    try:
        model.train()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        with (
            torch.random.fork_rng(devices=[]),  # drop-path draws repeatable
            training_drop_path(model, drop_path),
            progress_bar("sensitivity", len(chunks), enabled=progress) as advance,
        ):
            torch.manual_seed(seed)
            for chunk in chunks:
                pairs = [data[int(i)] for i in chunk]
                images = torch.stack([p[0] for p in pairs]).to(device)
                labels = torch.tensor([int(p[1]) for p in pairs], device=device)
                loss = F.cross_entropy(model(images), labels)
                # autograd.grad leaves every .grad untouched (no zero_grad needed).
                grads = torch.autograd.grad(loss, list(weights.values()))
                for score, grad in zip(scores.values(), grads, strict=True):
                    score += grad.detach().float().square()
                advance()
    finally:
        model.train(was_training)
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
    spec = backbone_spec(model)
    metadata = {
        "backbone": {
            "name": spec.name,
            "num_classes": spec.num_classes,
            "img_size": spec.img_size,
            "checkpoint_sha256": spec.checkpoint_sha256,
            "model_kwargs": spec.model_kwargs,
        },
        "data": getattr(data, "source", type(data).__name__),
        "batches": len(chunks),
        "batch_size": batch_size,
        "images": sum(len(c) for c in chunks),
        "seed": seed,
        "shuffle_seed": shuffle_seed,
        "drop_path": drop_path,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return Sensitivity({k: v.cpu() for k, v in scores.items()}, metadata)


def save_scores(
    sensitivity: Sensitivity, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write the scores as safetensors (atomically; never over an existing file without force)."""
    from safetensors.torch import save_file

    from karst_deploy import __version__

    metadata = {
        "format": SCORES_FORMAT,
        "version": str(SCORES_VERSION),
        **{k: json.dumps(v) for k, v in sensitivity.metadata.items()},
        "created_by": f"karst-deploy {__version__}",
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in sensitivity.scores.items()}
    with atomic_output(path, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_scores(path: str | os.PathLike[str]) -> Sensitivity:
    """Read a scores file, refusing anything that is not finite, non-negative float scores."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Sensitivity scores '{path}' do not exist (karst-deploy sensitivity).")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            scores = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors reports corrupt headers/offsets many ways
        raise InputError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if header.get("format") != SCORES_FORMAT or header.get("version") != str(SCORES_VERSION):
        raise InputError(
            f"{path} is not a karst-deploy sensitivity file (metadata 'format' is "
            f"{header.get('format')!r}, 'version' {header.get('version')!r}; expected "
            f"'{SCORES_FORMAT}' version {SCORES_VERSION}). Make one with karst-deploy sensitivity."
        )
    metadata = {}
    for key, value in header.items():
        if key in ("format", "version", "created_by"):
            continue
        metadata[key] = parse_value(value, f"{path}: metadata '{key}'")
    if not scores:
        raise InputError(f"{path} holds no scores.")
    for key, tensor in sorted(scores.items()):
        if not tensor.is_floating_point() or tensor.ndim not in (1, 2):
            raise InputError(
                f"{path}: key '{key}' is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}; "
                "expected a float matrix or vector (one score per parameter entry)."
            )
        if not torch.isfinite(tensor).all() or bool((tensor < 0).any()):
            raise InputError(
                f"{path}: key '{key}' holds negative, NaN or infinite scores; sensitivities are "
                "sums of squared gradients."
            )
    return Sensitivity(scores, metadata)


def check_scores_fit(sensitivity: Sensitivity, model: nn.Module, source: str) -> None:
    """Refuse scores computed on another backbone or checkpoint, naming what differs."""
    recorded = sensitivity.metadata.get("backbone")
    spec = backbone_spec(model)
    if isinstance(recorded, dict):
        for key in ("name", "img_size", "model_kwargs"):
            if key in recorded and recorded[key] != getattr(spec, key):
                raise InputError(
                    f"{source} was computed on another backbone: '{key}' is {recorded[key]!r} "
                    f"but the model has {getattr(spec, key)!r}."
                )
        sha = recorded.get("checkpoint_sha256")
        if sha and sha != spec.checkpoint_sha256:
            raise InputError(
                f"{source} was computed on a checkpoint with sha256 {sha[:12]}…, but the model "
                f"was loaded from {(spec.checkpoint_sha256 or 'no checkpoint')[:12]}; scores only "
                "rank the weights they were computed on."
            )
    weights = dict(model.named_parameters())
    for key, tensor in sorted(sensitivity.scores.items()):
        weight = weights.get(key)
        if weight is None:
            raise InputError(f"{source}: key '{key}' is not a parameter of {spec.name}.")
        if tuple(weight.shape) != tuple(tensor.shape):
            raise InputError(
                f"{source}: key '{key}' has shape {tuple(tensor.shape)}; the model's weight is "
                f"{tuple(weight.shape)}."
            )


def sensitivity_for_backbone(
    backbone: str,
    data: str,
    out: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    img_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    batches: int = 16,
    batch_size: int = 32,
    seed: int = 0,
    shuffle_seed: int | None = None,
    force: bool = False,
    progress: bool = False,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Build `backbone` for `data`'s classes, compute its sensitivity, write the scores file.

    Returns a summary (what the CLI prints): the output, the run's metadata and the share of
    the total sensitivity held by the top matrices.
    """
    from karst_deploy.data import open_images
    from karst_deploy.files import refuse_existing
    from karst_deploy.models import create_model

    refuse_existing(Path(out), force)
    images = open_images(data, "train", 224)
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("img_size", img_size)
    model = create_model(
        backbone,
        num_classes=images.num_classes,
        checkpoint=checkpoint,
        mean=mean,
        std=std,
        **kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_classifier(images.num_classes)  # fresh, as training starts (module docstring)
    spec = backbone_spec(model)
    images = images.preprocessed_as(spec.img_size, spec.mean, spec.std)
    result = compute_sensitivity(
        model,
        images,
        batches=batches,
        batch_size=batch_size,
        seed=seed,
        shuffle_seed=shuffle_seed,
        progress=progress,
    )
    save_scores(result, out, force=force)
    totals = result.matrix_totals()
    grand = sum(totals.values()) or 1.0
    return {
        "out": str(out),
        **result.metadata,
        "skipped_images": len(getattr(images, "skipped", [])),
        "matrices": len(result.scores),
        "entries": sum(s.numel() for s in result.scores.values()),
        "top_matrices": {name: round(total / grand, 4) for name, total in list(totals.items())[:5]},
    }
