"""The training loop: adapters and head on a frozen backbone, the best epoch chosen on validation.

`train_adapters(config, out)` builds the backbone (with a fresh, seeded head for the
data's classes), adds the adapters, trains them with the KARST recipe, validates after
every epoch, keeps an in-memory copy of the trainable tensors of the epoch with the best
*validation* accuracy (the reference code selects on the test split; we never do), then
reports test accuracy once, for information, and writes the adapter directory with a
``train_log.json`` inside it, atomically.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from karst_deploy.adapters import add_adapters, count_trainable, save_adapters
from karst_deploy.data import LabelledImages, open_training_splits
from karst_deploy.errors import InputError, KarstDeployError
from karst_deploy.files import atomic_directory, refuse_existing, write_json
from karst_deploy.models import (
    backbone_spec,
    classifier_parameter_names,
    create_model,
    norm_parameter_names,
    training_drop_path,
)
from karst_deploy.placement.request import SptRequest
from karst_deploy.progress import progress_bar
from karst_deploy.train.distributed import Distributed, GlobalBatchSampler, distributed_session
from karst_deploy.train.recipe import TrainConfig
from karst_deploy.train.schedule import learning_rate, make_optimizer, set_learning_rate

LOG_FILE = "train_log.json"
LOG_FORMAT = "karst-deploy.train_log"
SELECTION_RULE = "highest validation accuracy; ties go to the lower validation loss"


RANDOM_BACKBONE_WARNING = (
    "the backbone has random weights (no --checkpoint): the adapter fits only these "
    "weights, which are not saved; pass --checkpoint to adapt real pretrained weights "
    "(or --pretrained for timm's own, where its hub is reachable)"
)


class TrainingDivergedError(KarstDeployError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """A finished run: the adapted model (best epoch loaded, eval mode) and its log."""

    model: nn.Module
    log: dict[str, Any]
    out: Path | None = None
    is_main: bool = True  # False on torchrun ranks other than 0 (they write and print nothing)

    @property
    def best_val_accuracy(self) -> float:
        return self.log["best_val_accuracy"]

    @property
    def test_accuracy(self) -> float | None:
        return self.log["test_accuracy"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _requested_device(requested: str) -> str:
    """``auto`` → cuda when torch sees a GPU, else cpu; refuse cuda without a GPU."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device {requested} was asked for, but torch sees no CUDA GPU.",
            parameters=("device",),
        )
    return requested


def _device(requested: str, place: Distributed) -> torch.device:
    """The device of this process: under torchrun, the GPU of its LOCAL_RANK."""
    if not requested.startswith("cuda"):
        return torch.device("cpu")
    device = torch.device(f"cuda:{place.local_rank}" if place.enabled else requested)
    torch.cuda.set_device(device)
    return device


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 autocast where the GPU supports it, else fp16 (with a GradScaler); never on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _tensor_dataset(data: LabelledImages) -> torch.utils.data.Dataset:
    """In-memory sources (digits) are preprocessed once; image folders are read lazily."""
    if data.arrays is None:
        return data
    return torch.utils.data.TensorDataset(*data.batch())


def build_model(
    config: TrainConfig, num_classes: int, train: LabelledImages | None = None
) -> nn.Module:
    """The backbone with a fresh head for `num_classes` (seeded) and the config's adapters.

    An SPT request is allocated here, on this backbone and head (sensitivity on `train`).
    """
    kwargs = dict(config.model_kwargs)
    img_size = kwargs.pop("img_size", config.img_size)
    model = create_model(
        config.backbone,
        num_classes=num_classes,
        img_size=img_size,
        checkpoint=config.checkpoint,
        pretrained=config.pretrained,
        mean=config.mean,
        std=config.std,
        **kwargs,
    )
    # The head is always freshly initialised for the target classes, as in the reference
    # (`reset_classifier`), even when a checkpoint's head happens to have the same shape.
    model.reset_classifier(num_classes)
    adapter = config.adapter
    if isinstance(adapter, SptRequest):
        adapter = adapter.resolve(model, train)
    model = add_adapters(model, adapter)
    if config.train_norms:  # few-shot recipe: LayerNorms trained whole (stored in the adapter)
        named = dict(model.named_parameters())
        for name in norm_parameter_names(model):
            named[name].requires_grad_(True)
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: torch.utils.data.Dataset,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    place: Distributed = Distributed(),
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over `data` (each rank takes every N-th image)."""
    device = torch.device(device)
    model.eval()
    shard = torch.utils.data.Subset(data, range(place.rank, len(data), place.world_size))
    loss_sum, correct = 0.0, 0
    for images, labels in torch.utils.data.DataLoader(shard, batch_size=batch_size):
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == labels).sum())
    loss_sum, correct_total = place.sum([loss_sum, correct], device)
    return loss_sum / len(data), correct_total / len(data)


def train_adapters(
    config: TrainConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train `config.adapter` on `config.data` and, if `out` is given, write the adapter directory.

    `out` receives adapter_config.json, adapter.safetensors (adapters and head of the best
    validation epoch) and train_log.json. Under torchrun only rank 0 writes. Refuses an
    existing `out` without `force` before any training starts.
    """
    out = None if out is None else Path(out)
    if out is not None:
        refuse_existing(out, force, directory=True)
    requested = _requested_device(config.device)
    seed_everything(config.seed)
    # Opened before the backbone (which needs the class count); resized for it just below.
    splits = open_training_splits(config.data, 224, strict=config.strict_images)
    num_classes = splits["train"].num_classes
    model = build_model(config, num_classes, splits["train"])
    spec = backbone_spec(model)
    if progress and config.checkpoint is None and not spec.pretrained:
        from rich.console import Console

        Console(stderr=True).print(  # said before training, not only in the final log
            f"[yellow]warning:[/] {RANDOM_BACKBONE_WARNING}", highlight=False
        )
    splits = {k: v.preprocessed_as(spec.img_size, spec.mean, spec.std) for k, v in splits.items()}

    with distributed_session("cuda" if requested.startswith("cuda") else "cpu") as place:
        device = _device(requested, place)
        result = _run(config, model, splits, place, device, progress)
        if out is not None and place.is_main:
            with atomic_directory(out, force=force) as staging:
                # `staging` is our own fresh temporary directory; save_adapters replaces it.
                save_adapters(result.model, staging, force=True, classes=splits["train"].classes)
                write_json(staging / LOG_FILE, result.log, force=True)
            result.out = out
        place.barrier()
    return result


def _run(
    config: TrainConfig,
    model: nn.Module,
    splits: dict[str, LabelledImages],
    place: Distributed,
    device: torch.device,
    progress: bool,
) -> TrainResult:
    amp_dtype = _amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    # Every rank built the same model from the same seed; from here on each rank draws its
    # own drop-path masks.
    torch.manual_seed(config.seed + place.rank)
    model.to(device)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    wrapped: nn.Module = model
    if place.enabled:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    datasets = {split: _tensor_dataset(data) for split, data in splits.items()}
    sampler = GlobalBatchSampler(len(datasets["train"]), config.batch_size, place, config.seed)
    loader = torch.utils.data.DataLoader(
        datasets["train"],
        batch_sampler=sampler,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = make_optimizer(trainable.values(), config.lr, config.resolved_weight_decay)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * config.epochs
    # The cosine reaches min_lr after epochs − cooldown_epochs and stays there (the official
    # loop: 100 cosine epochs, then 10 more at the minimum lr).
    cosine_steps = steps_per_epoch * (config.epochs - config.cooldown_epochs)
    warmup_steps = steps_per_epoch * config.warmup_epochs
    eval_batch = max(1, config.batch_size // place.world_size)

    epochs: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    best_state: dict[str, torch.Tensor] = {}
    step = 0
    with (
        training_drop_path(model, config.drop_path) as drop_path_blocks,
        progress_bar("training", total_steps, enabled=progress and place.is_main) as bar,
    ):
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            wrapped.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for images, labels in loader:
                lr = learning_rate(
                    step,
                    cosine_steps,
                    warmup_steps,
                    config.lr,
                    config.resolved_warmup_lr,
                    config.resolved_min_lr,
                )
                set_learning_rate(optimizer, lr)
                images, labels = images.to(device), labels.to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = wrapped(images)
                loss = F.cross_entropy(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"Training diverged: the loss is {loss.item()} at epoch {epoch}, step "
                        f"{step + 1}. Lower --lr (now {config.lr}) or check the data."
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                loss_sum += loss.item() * len(labels)
                correct += int((logits.argmax(-1) == labels).sum())
                seen += len(labels)
                step += 1
                bar()
            loss_sum, correct, seen = place.sum([loss_sum, correct, seen], device)
            val_loss, val_accuracy = evaluate(
                model, datasets["val"], eval_batch, device, place, amp_dtype
            )
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_accuracy": correct / seen,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": lr,
                "seconds": time.perf_counter() - started,
            }
            epochs.append(record)
            if not best or (val_accuracy, -val_loss) > (best["val_accuracy"], -best["val_loss"]):
                best = record
                best_state = {n: p.detach().to("cpu", copy=True) for n, p in trainable.items()}
            bar.describe(
                f"epoch {epoch}/{config.epochs}  loss {record['train_loss']:.3f}  "
                f"val acc {val_accuracy:.3f}  best {best['val_accuracy']:.3f}  "
                f"{record['seconds']:.1f} s/epoch"
            )

    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(best_state[name])
    test_loss = test_accuracy = None
    if "test" in datasets:
        test_loss, test_accuracy = evaluate(
            model, datasets["test"], eval_batch, device, place, amp_dtype
        )
    model.eval()
    head = set(classifier_parameter_names(model))
    warnings = []
    if config.checkpoint is None and not backbone_spec(model).pretrained:
        warnings.append(RANDOM_BACKBONE_WARNING)
    for split, data in splits.items():
        if data.skipped:
            warnings.append(
                f"{len(data.skipped)} unreadable image(s) of split '{split}' were skipped, "
                f"first '{data.skipped[0]}'"
            )
    log = {
        "format": LOG_FORMAT,
        "version": 1,
        "recipe": config.to_dict(),
        "backbone": backbone_spec(model).to_dict(),
        "data": {
            "source": str(config.data),
            "classes": splits["train"].classes,
            "img_size": splits["train"].img_size,
            "mean": list(splits["train"].mean),
            "std": list(splits["train"].std),
            "images": {split: len(data) for split, data in splits.items()},
            "skipped_images": {split: len(data.skipped) for split, data in splits.items()},
            "skipped_files": {split: data.skipped[:20] for split, data in splits.items()},
        },
        "trainable_parameters": {
            "adapter": count_trainable(model),
            "head": sum(p.numel() for n, p in trainable.items() if n in head),
            "total": sum(p.numel() for p in trainable.values()),
        },
        "run": {
            "device": str(device),
            "world_size": place.world_size,
            "amp": None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
            "steps": step,
            "steps_per_epoch": steps_per_epoch,
            "drop_path_blocks": drop_path_blocks,
            "torch": torch.__version__,
        },
        "epochs": epochs,
        "selection": SELECTION_RULE,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "best_val_loss": best["val_loss"],
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "test_note": "reported only; never used to choose the epoch",
        "warnings": warnings,
    }
    return TrainResult(model=model.cpu(), log=log, is_main=place.is_main)
