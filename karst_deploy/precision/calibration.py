"""Calibration data for INT8: where the images come from, how many, and their hash.

A calibration set is a float32 ``(N, 3, H, W)`` array preprocessed exactly as the model's
inputs are (same resize, mean and std as `karst_deploy.data`), plus a record of where it
came from. Its sha256 (of the shape and the float32 bytes) identifies it in provenance
and in the calibration cache, so "the same data" means the same tensor, bit for bit.

Sources (``--calib``)
---------------------
``digits`` / ``digits:A-B``
    The training split of the built-in digits (never the test split that parity scores).
``DIR``
    An ImageFolder or VTAB-1k directory (its training split, labels ignored), or any
    directory of images (searched recursively).
``FILE.npz``
    An ``images`` array ``(N, 3, H, W)``, already preprocessed (float; stored as float32).

When the source holds more images than requested, a fixed-seed random subset is taken, so
that a class-sorted folder still contributes every class.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from karst_deploy.data import (
    IMAGE_SUFFIXES,
    VTAB_LISTS,
    is_image_file,
    open_images,
    preprocess,
    read_image,
)
from karst_deploy.errors import InputError
from karst_deploy.files import cache_root

#: Default number of calibration images: a few hundred is what ORT and TensorRT examples
#: use; `benchmarks/precision.py` measures accuracy against this count.
DEFAULT_SAMPLES = 256
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
SUBSET_SEED = 0


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration images and where they came from."""

    images: np.ndarray  # float32 (N, 3, H, W), C-contiguous
    source: str
    available: int  # images the source offered before sub-sampling
    skipped: int = 0  # unreadable files left out

    @property
    def sha256(self) -> str:
        return tensor_sha256(self.images)

    def describe(self) -> dict[str, Any]:
        """What provenance and reports record about this set."""
        return {
            "source": self.source,
            "samples": len(self.images),
            "available": self.available,
            "skipped": self.skipped,
            "shape": list(self.images.shape),
            "data_sha256": self.sha256,
        }


def check_method(method: str) -> None:
    if method not in CALIBRATION_METHODS:
        raise InputError(
            f"Unknown calibration method '{method}'; choose one of {list(CALIBRATION_METHODS)}."
        )


def tensor_sha256(images: np.ndarray) -> str:
    """sha256 of an array's shape and its float32 little-endian bytes."""
    array = np.ascontiguousarray(images, dtype="<f4")
    digest = hashlib.sha256(json.dumps(list(array.shape)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def load_calibration(
    source: str | os.PathLike[str],
    samples: int = DEFAULT_SAMPLES,
    *,
    img_size: int | None,
    mean: Sequence[float] | None = (0.5, 0.5, 0.5),
    std: Sequence[float] | None = (0.5, 0.5, 0.5),
    classes: Sequence[str] | None = None,
) -> CalibrationSet:
    """Open a calibration source (see the module docstring) and take `samples` images.

    `img_size`, `mean` and `std` are the model's (from its provenance; None: unknown, and
    then only a preprocessed ``.npz`` can be used). A ``.npz`` must already match
    `img_size` (None accepts any size). `classes` (the names the adapter was trained on)
    narrows a labelled source to those classes and refuses one that lacks any of them.
    """
    if samples < 1:
        raise InputError(
            f"calib_samples must be at least 1, got {samples}.", parameters=("calib_samples",)
        )
    text = str(source)
    path = Path(text)
    if text.endswith(".npz"):
        return _from_npz(path, samples, img_size, None if mean is None else len(mean))
    if img_size is None or mean is None or std is None:
        raise InputError(
            f"Calibration source '{text}' needs the model's input size, mean and std to "
            "preprocess images, but the ONNX file has no karst-deploy provenance recording "
            "them; pass a preprocessed calib FILE.npz instead.",
            parameters=("calib",),
        )
    if text == "digits" or text.startswith("digits:") or _has_labelled_layout(path):
        dataset = open_images(text, "train", img_size, mean, std)
        if classes is not None:
            dataset = dataset.select_classes(classes, "calib")
        chosen = _subset(len(dataset), samples)
        images = np.stack([dataset[int(i)][0].numpy() for i in chosen])
        return CalibrationSet(
            images=np.ascontiguousarray(images, dtype=np.float32),
            source=f"{text} (train split)",
            available=len(dataset),
            skipped=len(dataset.skipped),
        )
    if path.is_dir():
        return _from_plain_folder(path, samples, img_size, mean, std)
    raise InputError(
        f"Calibration source '{text}' is neither 'digits'/'digits:A-B', an existing image "
        "directory, nor a .npz file with an 'images' array."
    )


def _has_labelled_layout(path: Path) -> bool:
    return path.is_dir() and (
        (path / "train").is_dir() or any((path / name).is_file() for name in VTAB_LISTS.values())
    )


def _subset(available: int, samples: int) -> np.ndarray:
    """Indices of a fixed-seed random subset of `samples` out of `available`, in order."""
    if samples >= available:
        return np.arange(available)
    rng = np.random.default_rng(SUBSET_SEED)
    return np.sort(rng.permutation(available)[:samples])


def _from_plain_folder(
    root: Path, samples: int, img_size: int, mean: Sequence[float], std: Sequence[float]
) -> CalibrationSet:
    from PIL import UnidentifiedImageError

    files = sorted(p for p in root.rglob("*") if is_image_file(p))
    if not files:
        raise InputError(
            f"Calibration directory '{root}' contains no images ({', '.join(IMAGE_SUFFIXES)})."
        )
    images, skipped = [], 0
    for index in _subset(len(files), samples):
        try:
            array = read_image(files[index])
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            skipped += 1  # skipped and counted, as karst_deploy.data does
            continue
        images.append(preprocess(array, img_size, mean, std).numpy())
    if not images:
        raise InputError(f"None of the sampled images in '{root}' could be read.")
    return CalibrationSet(
        images=np.ascontiguousarray(np.stack(images), dtype=np.float32),
        source=str(root),
        available=len(files),
        skipped=skipped,
    )


def _from_npz(
    path: Path, samples: int, img_size: int | None, channels: int | None = None
) -> CalibrationSet:
    if not path.is_file():
        raise InputError(f"Calibration file '{path}' does not exist.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise InputError(
                    f"Calibration file '{path}' has arrays {archive.files}; expected one named "
                    "'images' of shape (N, 3, H, W), preprocessed like the model's inputs."
                )
            images = archive["images"]
    except InputError:
        raise
    except Exception as exc:  # zipfile/pickle/OS errors: not a readable npz
        raise InputError(f"Calibration file '{path}' is not a readable .npz: {exc}") from None
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(
            f"'images' in '{path}' has dtype {images.dtype}; expected float32 values already "
            "preprocessed (resized, scaled to [0, 1], then normalised with the model's mean "
            "and std), not raw integer pixels."
        )
    c = channels or 3
    expected = f"(N, {c}, {img_size}, {img_size})" if img_size else f"(N, {c}, H, W)"
    if (
        images.ndim != 4
        or images.shape[1] != c
        or len(images) == 0
        or (img_size is not None and images.shape[2:] != (img_size, img_size))
    ):
        raise InputError(
            f"'images' in '{path}' has shape {tuple(images.shape)}; expected {expected} with "
            "N >= 1 to match the model's input."
        )
    if not np.isfinite(images).all():
        raise InputError(f"'images' in '{path}' contains NaN or infinite values.")
    available = len(images)
    images = images[_subset(available, samples)]
    return CalibrationSet(
        images=np.ascontiguousarray(images, dtype=np.float32),
        source=str(path),
        available=available,
    )


def cache_dir() -> Path:
    """Where calibration ranges are cached: ``$XDG_CACHE_HOME/karst-deploy/calibration``."""
    return cache_root() / "calibration"


def cache_key(**parts: Any) -> str:
    """A stable hash of everything that determines the calibrated tensor ranges."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
