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
from karst_deploy.progress import EpochTimes, progress_bar, stderr_console
from karst_deploy.train.distributed import Distributed, GlobalBatchSampler, distributed_session
from karst_deploy.train.log import (
    LOG_FILE,
    DataRecord,
    EpochRecord,
    RunRecord,
    TrainableCounts,
    TrainLog,
)
from karst_deploy.train.recipe import TrainConfig
from karst_deploy.train.schedule import learning_rate, make_optimizer, set_learning_rate

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
    log: TrainLog
    out: Path | None = None
    is_main: bool = True  # False on torchrun ranks other than 0 (they write and print nothing)

    @property
    def best_val_accuracy(self) -> float:
        return self.log.best_val_accuracy

    @property
    def test_accuracy(self) -> float | None:
        return self.log.test_accuracy


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
        stderr_console().print(  # said before training, not only in the final log
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
                write_json(staging / LOG_FILE, result.log.to_dict(), force=True)
            result.out = out
        place.barrier()
    return result


@dataclass
class _Session:
    """What every epoch of one run shares: the (wrapped) model, data, optimizer and schedule."""

    config: TrainConfig
    model: nn.Module
    wrapped: nn.Module  # DistributedDataParallel under torchrun, else `model`
    trainable: dict[str, nn.Parameter]
    datasets: dict[str, torch.utils.data.Dataset]
    sampler: GlobalBatchSampler
    loader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    device: torch.device
    place: Distributed
    steps_per_epoch: int
    cosine_steps: int
    warmup_steps: int
    eval_batch: int

    def lr(self, step: int) -> float:
        c = self.config
        return learning_rate(
            step,
            self.cosine_steps,
            self.warmup_steps,
            c.lr,
            c.resolved_warmup_lr,
            c.resolved_min_lr,
        )

    def evaluate(self, split: str) -> tuple[float, float]:
        return evaluate(
            self.model,
            self.datasets[split],
            self.eval_batch,
            self.device,
            self.place,
            self.amp_dtype,
        )


def _session(
    config: TrainConfig,
    model: nn.Module,
    splits: dict[str, LabelledImages],
    place: Distributed,
    device: torch.device,
) -> _Session:
    amp_dtype = _amp_dtype(device, config.amp)
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
    steps_per_epoch = len(sampler)
    return _Session(
        config=config,
        model=model,
        wrapped=wrapped,
        trainable=trainable,
        datasets=datasets,
        sampler=sampler,
        loader=loader,
        optimizer=make_optimizer(trainable.values(), config.lr, config.resolved_weight_decay),
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        amp_dtype=amp_dtype,
        device=device,
        place=place,
        steps_per_epoch=steps_per_epoch,
        # The cosine reaches min_lr after epochs − cooldown_epochs and stays there (the
        # official loop: 100 cosine epochs, then 10 more at the minimum lr).
        cosine_steps=steps_per_epoch * (config.epochs - config.cooldown_epochs),
        warmup_steps=steps_per_epoch * config.warmup_epochs,
        eval_batch=max(1, config.batch_size // place.world_size),
    )


def _forward_loss(s: _Session, images: torch.Tensor, labels: torch.Tensor, module: nn.Module):
    images, labels = images.to(s.device), labels.to(s.device)
    with torch.autocast(s.device.type, dtype=s.amp_dtype, enabled=s.amp_dtype is not None):
        logits = module(images)
    return logits, labels, F.cross_entropy(logits.float(), labels)


def _estimated_epoch_seconds(s: _Session, probes: int = 2) -> float:
    """Seconds one epoch should take, from timing `probes` training steps before training.

    The steps run on the unwrapped model, with forked RNG state and gradients discarded, so
    the run that follows is unchanged; the fastest probe (the first pays one-off setup) times
    the epoch's steps, plus one forward pass over the validation split.
    """
    data = s.datasets["train"]
    count = min(len(data), s.eval_batch)
    images = torch.stack([data[i][0] for i in range(count)])
    labels = torch.as_tensor([int(data[i][1]) for i in range(count)])
    timings = []
    with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
        s.model.train()
        for _ in range(probes):
            started = time.perf_counter()
            _, _, loss = _forward_loss(s, images, labels, s.model)
            loss.backward()
            if s.device.type == "cuda":
                torch.cuda.synchronize(s.device)
            timings.append(time.perf_counter() - started)
    for parameter in s.trainable.values():
        parameter.grad = None
    step = min(timings)
    validation = len(s.datasets["val"]) / max(1, s.place.world_size) / count * step / 3
    return step * s.steps_per_epoch + validation


def _train_epoch(s: _Session, epoch: int, step: int, advance) -> tuple[EpochRecord, int]:
    """One pass over the training split, then validation; returns the record and next step."""
    started = time.perf_counter()
    s.sampler.set_epoch(epoch)
    s.wrapped.train()
    loss_sum, correct, seen, lr = 0.0, 0, 0, s.lr(step)
    for images, labels in s.loader:
        lr = s.lr(step)
        set_learning_rate(s.optimizer, lr)
        logits, labels, loss = _forward_loss(s, images, labels, s.wrapped)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"Training diverged: the loss is {loss.item()} at epoch {epoch}, step "
                f"{step + 1}. Lower lr (now {s.config.lr}) or check the data.",
                parameters=("lr",),
            )
        s.optimizer.zero_grad(set_to_none=True)
        if s.scaler is not None:
            s.scaler.scale(loss).backward()
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            loss.backward()
            s.optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += int((logits.argmax(-1) == labels).sum())
        seen += len(labels)
        step += 1
        advance()
    loss_sum, correct, seen = s.place.sum([loss_sum, correct, seen], s.device)
    val_loss, val_accuracy = s.evaluate("val")
    record = EpochRecord(
        epoch=epoch,
        train_loss=loss_sum / seen,
        train_accuracy=correct / seen,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        lr=lr,
        seconds=time.perf_counter() - started,
    )
    return record, step


def _run(
    config: TrainConfig,
    model: nn.Module,
    splits: dict[str, LabelledImages],
    place: Distributed,
    device: torch.device,
    progress: bool,
) -> TrainResult:
    s = _session(config, model, splits, place, device)
    epochs: list[EpochRecord] = []
    best: EpochRecord | None = None
    best_state: dict[str, torch.Tensor] = {}
    step = 0
    shown, times = progress and place.is_main, EpochTimes(config.epochs)
    with (
        training_drop_path(model, config.drop_path) as drop_path_blocks,
        progress_bar("training", config.epochs * s.steps_per_epoch, enabled=shown) as advance,
    ):
        if shown:
            expected = times.expected(_estimated_epoch_seconds(s))
            advance.note(f"{expected} (timed on 2 training steps before the run)")
        for epoch in range(1, config.epochs + 1):
            record, step = _train_epoch(s, epoch, step, advance)
            epochs.append(record)
            if best is None or (record.val_accuracy, -record.val_loss) > (
                best.val_accuracy,
                -best.val_loss,
            ):
                best = record
                best_state = {n: p.detach().to("cpu", copy=True) for n, p in s.trainable.items()}
            advance.note(f"{record.summary(config.epochs, best)}  {times.finished(record.seconds)}")

    with torch.no_grad():
        for name, parameter in s.trainable.items():
            parameter.copy_(best_state[name])
    test_loss, test_accuracy = s.evaluate("test") if "test" in s.datasets else (None, None)
    model.eval()
    log = TrainLog(
        recipe=config.to_dict(),
        backbone=backbone_spec(model).to_dict(),
        data=_data_record(config, splits),
        trainable_parameters=_trainable_counts(model, s.trainable),
        run=RunRecord(
            device=str(device),
            world_size=place.world_size,
            amp=None if s.amp_dtype is None else str(s.amp_dtype).removeprefix("torch."),
            steps=step,
            steps_per_epoch=s.steps_per_epoch,
            drop_path_blocks=drop_path_blocks,
            torch=torch.__version__,
        ),
        epochs=epochs,
        best_epoch=best.epoch,
        best_val_accuracy=best.val_accuracy,
        best_val_loss=best.val_loss,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        warnings=_warnings(config, model, splits),
    )
    return TrainResult(model=model.cpu(), log=log, is_main=place.is_main)


def _data_record(config: TrainConfig, splits: dict[str, LabelledImages]) -> DataRecord:
    train = splits["train"]
    return DataRecord(
        source=str(config.data),
        classes=train.classes,
        img_size=train.img_size,
        mean=list(train.mean),
        std=list(train.std),
        images={split: len(data) for split, data in splits.items()},
        skipped_images={split: len(data.skipped) for split, data in splits.items()},
        skipped_files={split: data.skipped[:20] for split, data in splits.items()},
    )


def _trainable_counts(model: nn.Module, trainable: dict[str, nn.Parameter]) -> TrainableCounts:
    head = set(classifier_parameter_names(model))
    return TrainableCounts(
        adapter=count_trainable(model),
        head=sum(p.numel() for n, p in trainable.items() if n in head),
        total=sum(p.numel() for p in trainable.values()),
    )


def _warnings(
    config: TrainConfig, model: nn.Module, splits: dict[str, LabelledImages]
) -> list[str]:
    warnings = []
    if config.checkpoint is None and not backbone_spec(model).pretrained:
        warnings.append(RANDOM_BACKBONE_WARNING)
    for split, data in splits.items():
        if data.skipped:
            warnings.append(
                f"{len(data.skipped)} unreadable image(s) of split '{split}' were skipped, "
                f"first '{data.skipped[0]}'"
            )
    return warnings
