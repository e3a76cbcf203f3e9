"""A tiny ViT really trained on the built-in digits, with a KARST adapter, exported to fp32 ONNX.

Built once per session (about 10 s): the backbone is trained on all ten
digits, saved as a checkpoint, then KARST adapters (and the head) are trained briefly on
top, so the merged model differs from the backbone. Reduced-precision checks then run on
a model whose accuracy means something (≈ 90 % on the digits test split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import karst_deploy as kd
from karst_deploy.data import open_images

BACKBONE = "vit_tiny_patch16_224"
MODEL_KWARGS = dict(img_size=16, patch_size=4, depth=2, embed_dim=64, num_heads=2)


@dataclass(frozen=True)
class DigitsModel:
    checkpoint: Path
    adapter: Path
    fp32_onnx: Path
    test_images: np.ndarray  # the digits test split, preprocessed
    test_labels: np.ndarray


def _train(model: torch.nn.Module, images, labels, steps: int, lr: float) -> None:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses to thread hand-offs (10× on 2 cores)
    model.train()
    try:
        for _ in range(steps):
            index = torch.randint(0, len(images), (64,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        model.eval()
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory) -> DigitsModel:
    from safetensors.torch import save_file

    from karst_deploy.export import export_onnx

    root = tmp_path_factory.mktemp("digits-model")
    train_images, train_labels = open_images("digits", "train", MODEL_KWARGS["img_size"]).batch()
    test_images, test_labels = open_images("digits", "test", MODEL_KWARGS["img_size"]).batch()

    torch.manual_seed(0)
    backbone = kd.create_model(BACKBONE, num_classes=10, **MODEL_KWARGS)
    _train(backbone, train_images, train_labels, steps=300, lr=3e-3)
    checkpoint = root / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, checkpoint)

    model = kd.create_model(BACKBONE, num_classes=10, checkpoint=checkpoint, **MODEL_KWARGS)
    kd.add_adapters(model, kd.KarstConfig())
    _train(model, train_images, train_labels, steps=20, lr=1e-3)
    adapter = kd.save_adapters(model, root / "adapter")

    fp32_onnx = root / "fp32.onnx"
    export_onnx(fp32_onnx, adapter=adapter, checkpoint=checkpoint)
    return DigitsModel(checkpoint, adapter, fp32_onnx, test_images.numpy(), test_labels.numpy())


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Each test gets its own empty calibration cache (never the user's ~/.cache)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache
