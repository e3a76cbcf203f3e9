"""A tiny, fast training setup shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from karst_deploy.models import create_model
from karst_deploy.train import TrainConfig

# A 2-block ViT on 16×16 inputs: an epoch over three digit classes (10 steps of 32 images)
# takes a fraction of a second on two cores.
TINY_BACKBONE = "vit_tiny_patch16_224"
TINY_KWARGS = {
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "global_pool": "avg",
}
TINY_DATA = "digits:0-2"


def tiny_config(**overrides) -> TrainConfig:
    """The tiny run: 3 epochs (1 warm-up), batch 32, on digits 0–2."""
    settings = dict(
        backbone=TINY_BACKBONE,
        data=TINY_DATA,
        model_kwargs=dict(TINY_KWARGS),
        epochs=3,
        warmup_epochs=1,
        batch_size=32,
        lr=1e-2,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def tiny_checkpoint(directory: Path) -> Path:
    """A seeded random tiny backbone saved as a checkpoint, so adapters can be reloaded onto it."""
    path = directory / "tiny-backbone.safetensors"
    torch.manual_seed(0)
    model = create_model(TINY_BACKBONE, num_classes=3, **TINY_KWARGS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def write_image(path: Path, label: int, seed: int, size: int = 12) -> None:
    """A small RGB image whose colour depends on its class (so the task is learnable)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size, size, 3)) + np.array([150, 40, 40]) * (label + 1) // 2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)


def write_image_folder(root: Path, per_class: int = 12) -> Path:
    """``train/`` and ``val/`` with two class sub-folders (a, b) of generated images."""
    for offset, split in enumerate(("train", "val")):
        for label, name in enumerate(("a", "b")):
            for i in range(per_class):
                seed = 10_000 * offset + 1000 * label + i
                write_image(root / split / name / f"{i}.png", label, seed=seed)
    return root


def write_vtab(root: Path, per_class: int = 12) -> Path:
    """A VTAB-1k directory: images/ plus train800.txt, val200.txt and test.txt lists."""
    for listing in ("train800.txt", "val200.txt", "test.txt"):
        lines = []
        for label in (0, 1):
            for i in range(per_class):
                relative = f"images/{listing[:-4]}-{label}-{i}.jpg"
                write_image(root / relative, label, seed=len(lines) + 1000 * label)
                lines.append(f"{relative} {label}")
        (root / listing).write_text("\n".join(lines) + "\n")
    return root
