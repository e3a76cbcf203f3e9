"""Calibration sources: digits, image folders, .npz (validated), the demo manifest's hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from karst_deploy.data import open_images
from karst_deploy.errors import InputError, with_flags
from karst_deploy.precision import load_calibration
from karst_deploy.precision.calibration import tensor_sha256

MANIFEST = Path(__file__).parents[2] / "calibration" / "digits-demo.json"


def _write_images(folder: Path, count: int, *, size: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")


def test_the_demo_manifest_matches_the_data_it_describes():
    manifest = json.loads(MANIFEST.read_text())
    preprocessing = manifest["preprocessing"]
    calibration = load_calibration(
        manifest["calib"],
        manifest["samples"],
        img_size=manifest["shape"][-1],
        mean=preprocessing["mean"],
        std=preprocessing["std"],
    )
    assert list(calibration.images.shape) == manifest["shape"]
    assert calibration.available == manifest["available"]
    assert calibration.sha256 == manifest["data_sha256"]


def test_digits_uses_a_fixed_subset_of_the_train_split_covering_every_class():
    first = load_calibration("digits:5-9", 100, img_size=16)
    again = load_calibration("digits:5-9", 100, img_size=16)
    assert first.images.shape == (100, 3, 16, 16) and first.images.dtype == np.float32
    assert first.sha256 == again.sha256
    train = open_images("digits:5-9", "train", 16)
    train_images = train.batch()[0].numpy()
    test_images = open_images("digits:5-9", "test", 16).batch()[0].numpy()
    matched = [
        np.flatnonzero((train_images == image).all(axis=(1, 2, 3))) for image in first.images
    ]
    assert all(len(m) for m in matched)  # every calibration image is a training image
    labels = {train.label(int(m[0])) for m in matched}
    assert labels == set(range(5))
    assert not any((test_images == image).all(axis=(1, 2, 3)).any() for image in first.images)


def test_a_plain_image_directory_is_read_recursively_and_counts_unreadable_files(tmp_path):
    _write_images(tmp_path / "a", 3)
    _write_images(tmp_path / "b" / "deeper", 2)
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image")
    calibration = load_calibration(tmp_path, 100, img_size=8)
    assert calibration.images.shape == (5, 3, 8, 8)
    assert calibration.available == 6 and calibration.skipped == 1
    assert np.abs(calibration.images).max() <= 1.0  # normalised with mean = std = 0.5


def test_an_image_folder_uses_its_train_split(tmp_path):
    _write_images(tmp_path / "train" / "cat", 3)
    _write_images(tmp_path / "train" / "dog", 2)
    _write_images(tmp_path / "val" / "cat", 4)
    calibration = load_calibration(tmp_path, 100, img_size=8)
    assert len(calibration.images) == 5 and "train" in calibration.source


def test_an_npz_is_taken_as_preprocessed_and_subsampled(tmp_path):
    images = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float64)
    np.savez(tmp_path / "calib.npz", images=images)
    calibration = load_calibration(tmp_path / "calib.npz", 10, img_size=16)
    assert calibration.images.shape == (10, 3, 16, 16) and calibration.images.dtype == np.float32
    assert calibration.available == 40
    assert calibration.sha256 == tensor_sha256(calibration.images)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((2, 3, 16, 16), np.float32)}, "expected one named 'images'"),
        ({"images": np.zeros((2, 3, 16, 16), np.uint8)}, "not raw integer pixels"),
        ({"images": np.zeros((2, 16, 16, 3), np.float32)}, r"expected \(N, 3, 16, 16\)"),
        ({"images": np.zeros((2, 3, 8, 8), np.float32)}, r"expected \(N, 3, 16, 16\)"),
        ({"images": np.full((2, 3, 16, 16), np.nan, np.float32)}, "NaN"),
    ],
)
def test_a_bad_npz_is_refused_clearly(tmp_path, arrays, message):
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        load_calibration(path, 10, img_size=16)


def test_other_bad_sources_are_refused_clearly(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(tmp_path / "missing.npz", 10, img_size=16)
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"not a readable \.npz"):
        load_calibration(tmp_path / "garbage.npz", 10, img_size=16)
    with pytest.raises(InputError, match="contains no images"):
        load_calibration(tmp_path, 10, img_size=16)
    with pytest.raises(InputError, match="neither"):
        load_calibration(tmp_path / "nothing-here", 10, img_size=16)
    with pytest.raises(InputError, match="at least 1"):
        load_calibration("digits", 0, img_size=16)


def test_calibration_takes_the_adapters_classes_and_refuses_data_without_them():
    classes = ["5", "6", "7", "8", "9"]
    chosen = load_calibration("digits", 10_000, img_size=16, classes=classes)
    subset = open_images("digits", "train", 16)
    assert chosen.available == sum(subset.classes[label] in classes for label in subset.labels)
    with pytest.raises(InputError, match=r"^calib 'digits:0-4' does not .* lacks '5'") as no:
        load_calibration("digits:0-4", 8, img_size=16, classes=classes)
    assert with_flags(no.value).startswith("--calib 'digits:0-4' does not")
