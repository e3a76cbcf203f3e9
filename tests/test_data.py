"""Labelled image sources: digits, ImageFolder, VTAB-1k lists, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from karst_deploy.data import open_images
from karst_deploy.errors import InputError


def _write_image(path, value, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def test_digits_splits_are_fixed_stratified_and_disjoint():
    splits = {s: open_images("digits", s, 16) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 1797
    assert 0.58 < len(splits["train"]) / 1797 < 0.62
    for split in splits.values():
        assert set(split.labels.tolist()) == set(range(10))
    images = {s: {d.arrays[i].tobytes() for i in range(len(d))} for s, d in splits.items()}
    assert not images["train"] & images["test"]
    again = open_images("digits", "val", 16)
    assert np.array_equal(again.labels, splits["val"].labels)


def test_digit_subsets_are_relabelled():
    target = open_images("digits:5-9", "train", 32)
    assert target.classes == ["5", "6", "7", "8", "9"]
    assert set(target.labels.tolist()) == {0, 1, 2, 3, 4}
    image, _label = target[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0  # mean = std = 0.5
    batch, labels = target.batch(7)
    assert batch.shape == (7, 3, 32, 32) and labels.shape == (7,)


@pytest.mark.parametrize("bad", ["digits:9-5", "digits:x", "digits:0-10"])
def test_bad_digit_ranges(bad):
    with pytest.raises(InputError, match="digits:A-B"):
        open_images(bad, "train", 32)


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        for label, name in enumerate(["cat", "dog"]):
            for i in range(3):
                _write_image(tmp_path / split / name / f"{i}.png", 40 * label + i)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    train = open_images(tmp_path, "train", 24)
    assert train.classes == ["cat", "dog"] and len(train) == 6
    assert train.skipped == [str(tmp_path / "train" / "cat" / "broken.jpg")]
    assert train[0][0].shape == (3, 24, 24)
    with pytest.raises(InputError, match="cannot be read"):
        open_images(tmp_path, "train", 24, strict=True)
    with pytest.raises(InputError, match="no 'test/'"):
        open_images(tmp_path, "test", 24)


def test_vtab_lists(tmp_path):
    lines = []
    for i in range(4):
        _write_image(tmp_path / "images" / f"{i}.jpg", 10 * i)
        lines.append(f"images/{i}.jpg {i % 2}")
    (tmp_path / "train800.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.txt").write_text(lines[0] + "\n")
    train = open_images(tmp_path, "train", 16)
    assert len(train) == 4 and train.num_classes == 2
    assert [train.label(i) for i in range(4)] == [0, 1, 0, 1]
    (tmp_path / "val200.txt").write_text("images/9.jpg 1\n")
    with pytest.raises(InputError, match=r"first 'images/9\.jpg'"):
        open_images(tmp_path, "val", 16)
    (tmp_path / "val200.txt").write_text("images/0.jpg\n")
    with pytest.raises(InputError, match="line 1"):
        open_images(tmp_path, "val", 16)


@pytest.mark.parametrize("layout", ["empty", "one class", "not a dir", "no layout"])
def test_bad_directories_are_explained(layout, tmp_path):
    source = tmp_path
    if layout == "empty":
        (tmp_path / "train" / "a").mkdir(parents=True)
        (tmp_path / "train" / "b").mkdir(parents=True)
        message = "contains no images"
    elif layout == "one class":
        _write_image(tmp_path / "train" / "only" / "0.png", 1)
        message = "at least two"
    elif layout == "not a dir":
        source = tmp_path / "missing"
        message = "neither 'digits'"
    else:
        (tmp_path / "stuff.txt").write_text("x")
        message = "neither an ImageFolder layout"
    with pytest.raises(InputError, match=message):
        open_images(source, "train", 16)
