"""Labelled image sources: digits, ImageFolder, VTAB-1k lists, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from karst_deploy.data import has_split, open_images, open_training_splits
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


def _vtab_fixture(root, train_labels, val_labels):
    for name, labels in (("train800.txt", train_labels), ("val200.txt", val_labels)):
        lines = []
        for i, label in enumerate(labels):
            _write_image(root / "images" / f"{name[:-4]}-{i}.png", 30 * label + i)
            lines.append(f"images/{name[:-4]}-{i}.png {label}")
        (root / name).write_text("\n".join(lines) + "\n")


def test_training_splits_of_an_image_folder(tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            _write_image(tmp_path / split / name / "0.png", 7)
    assert has_split(tmp_path, "val") and not has_split(tmp_path, "test")
    splits = open_training_splits(tmp_path, 16)
    assert sorted(splits) == ["train", "val"]  # test is optional
    _write_image(tmp_path / "test" / "dog" / "0.png", 9)
    splits = open_training_splits(tmp_path, 16)
    assert sorted(splits) == ["test", "train", "val"] and splits["test"].label(0) == 1
    resized = splits["val"].preprocessed_as(24, (0.0,) * 3, (1.0,) * 3)
    assert resized[0][0].shape == (3, 24, 24) and len(resized) == len(splits["val"])


def test_training_needs_a_validation_split(tmp_path):
    for name in ("cat", "dog"):
        _write_image(tmp_path / "train" / name / "0.png", 7)
    with pytest.raises(InputError, match="no 'val/' directory"):
        open_training_splits(tmp_path, 16)


def test_vtab_validation_labels_must_be_training_classes(tmp_path):
    _vtab_fixture(tmp_path, [0, 1, 0, 1], [0, 2])
    assert has_split(tmp_path, "val") and not has_split(tmp_path, "test")
    with pytest.raises(InputError, match="label 2, but the training split knows only 2"):
        open_training_splits(tmp_path, 16)


@pytest.mark.parametrize(
    ("labels", "message"), [([1, 1, 1], "fewer than two classes"), ([], "contains no images")]
)
def test_vtab_training_lists_need_two_classes(tmp_path, labels, message):
    _vtab_fixture(tmp_path, labels, [0])
    with pytest.raises(InputError, match=message):
        open_training_splits(tmp_path, 16)


def test_digits_have_all_training_splits():
    splits = open_training_splits("digits:5-9", 8)
    assert sorted(splits) == ["test", "train", "val"]
    assert all(split.num_classes == 5 for split in splits.values())


# -- hostile image sources ------------------------------------------------------------------


def _two_class_folder(root):
    for split in ("train", "val"):
        for label, value in (("a", 10), ("b", 200)):
            _write_image(root / split / label / "0.png", value)


def test_a_fifo_named_like_an_image_is_never_opened(tmp_path):
    """Opening a FIFO blocks until a writer comes; it must be skipped, not read."""
    import os

    from karst_deploy.precision.calibration import load_calibration

    _two_class_folder(tmp_path / "data")
    os.mkfifo(tmp_path / "data" / "train" / "a" / "x.png")
    data = open_images(tmp_path / "data", "train", 16)  # would hang if the FIFO were opened
    assert len(data) == 2 and all(path.name == "0.png" for path, _ in data.items)
    os.mkfifo(tmp_path / "plain.png")
    _write_image(tmp_path / "plain-ok.png", 5)
    calibration = load_calibration(tmp_path, 4, img_size=16)  # a plain image directory
    assert len(calibration.images) >= 1 and calibration.available == 1 + 4


def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    import resource

    from karst_deploy.precision.calibration import load_calibration

    _two_class_folder(tmp_path / "data")
    bomb = tmp_path / "data" / "train" / "b" / "bomb.png"
    Image.new("L", (10_000, 10_000)).save(bomb)  # ~97 KB on disk, 100 megapixels
    assert bomb.stat().st_size < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=f"Image '{bomb}' is too large to decode"):
        open_images(tmp_path / "data", "train", 16)
    with pytest.raises(InputError, match="too large to decode"):
        load_calibration(tmp_path / "data" / "train" / "b", 8, img_size=16)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100  # decoding it would take 100 MB as L, 1.2 GB as float RGB


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("../outside.png 0", "leads outside the dataset directory"),
        ("images/../../outside.png 0", "leads outside the dataset directory"),
        ("ABSOLUTE 0", "leads outside the dataset directory"),
        ("images/link.png 0", "leads outside the dataset directory"),
        ("images/0.png 300000000", "label 300000000 is too large"),
        ("images/0.png " + "9" * 400, "expected 'relative/path.jpg <integer label>'"),
        ("images/\udcff.png 0", "not UTF-8 text"),
    ],
)
def test_vtab_entries_stay_inside_the_root_and_labels_are_bounded(tmp_path, entry, message):
    root = tmp_path / "vtab"
    _write_image(root / "images" / "0.png", 1)
    _write_image(root / "images" / "1.png", 2)
    _write_image(tmp_path / "outside.png", 3)
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    entry = entry.replace("ABSOLUTE", str(tmp_path / "outside.png"))
    listing = f"images/0.png 0\nimages/1.png 1\n{entry}\n"
    (root / "train800.txt").write_bytes(listing.encode("utf-8", errors="surrogateescape"))
    with pytest.raises(InputError, match=message) as error:
        open_images(root, "train", 16)
    assert str(root / "train800.txt") in str(error.value)
    assert "line 3" in str(error.value) or "UTF-8" in message


# Every image kind the reader must take, as (writer, expected [0, 1] pixels): generated here.
def _sixteen_bit(path):
    values = np.array([[0, 1000, 30000], [40000, 65535, 255]], dtype=np.uint16)
    Image.fromarray(values).save(path)  # a 16-bit grayscale PNG (I;16)
    return values / 65535.0


def _palette(path):
    image = Image.new("P", (3, 2))
    image.putpalette([255, 0, 0, 0, 128, 255] + [0] * 762)
    image.putdata([0, 1, 0, 1, 1, 0])
    image.save(path)
    red, blue = (1.0, 0.0, 0.0), (0.0, 128 / 255, 1.0)
    return np.array([[red, blue, red], [blue, blue, red]])


def _alpha(path):
    rgba = np.array([[[255, 255, 255, 0], [200, 100, 50, 255], [255, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba[..., :3] / 255.0 * (rgba[..., 3:] / 255.0)  # over black


def _gray_alpha(path):
    la = np.array([[[255, 0], [100, 255]]], np.uint8)
    Image.fromarray(la, "LA").save(path)
    return la[..., 0] / 255.0 * (la[..., 1] / 255.0)


def _cmyk(path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 128, 0, 64]]], np.uint8)
    Image.fromarray(cmyk, "CMYK").save(path)
    c, m, y, k = (cmyk[..., i] / 255.0 for i in range(4))
    return np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], -1)


@pytest.mark.parametrize(
    ("writer", "suffix"),
    [
        (_sixteen_bit, ".png"),
        (_palette, ".png"),
        (_alpha, ".png"),
        (_gray_alpha, ".png"),
        (_cmyk, ".tif"),
    ],
    ids=["16-bit", "palette", "alpha", "gray-alpha", "cmyk"],
)
def test_images_that_are_not_8_bit_rgb_are_read_by_their_own_range(tmp_path, writer, suffix):
    from karst_deploy.data import read_image

    path = tmp_path / f"image{suffix}"
    expected = writer(path)
    pixels = read_image(path)
    assert pixels.dtype == np.float32 and pixels.shape == expected.shape
    np.testing.assert_allclose(pixels, expected, atol=1.5 / 255)


def test_sixteen_bit_pixels_are_scaled_not_saturated(tmp_path):
    """The reported bug: 16-bit grayscale saturated to white by an 8-bit conversion."""
    path = tmp_path / "train" / "a" / "x.png"
    path.parent.mkdir(parents=True)
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(path)
    from karst_deploy.data import read_image

    pixels = read_image(path)
    assert (pixels >= 0.999).mean() < 0.01  # an 8-bit conversion made most of them 1.0
    assert abs(float(pixels.mean()) - 0.5) < 0.01


def test_grayscale_backbone_gets_one_channel_and_colour_is_reduced_to_luma():
    from karst_deploy.data import LUMA_WEIGHTS, preprocess

    gray = np.full((4, 4), 0.25, np.float32)
    one = preprocess(gray, 4, (0.5,), (0.5,))
    assert one.shape == (1, 4, 4) and torch.allclose(one, torch.tensor(-0.5))
    colour = np.zeros((4, 4, 3), np.float32)
    colour[..., 1] = 1.0  # pure green
    luma = preprocess(colour, 4, (0.0,), (1.0,))
    assert torch.allclose(luma, torch.tensor(LUMA_WEIGHTS[1]))
    assert preprocess(gray, 4, (0.5,) * 3, (0.5,) * 3).shape == (3, 4, 4)
    with pytest.raises(InputError, match=r"1 \(grayscale backbone\) or 3"):
        preprocess(gray, 4, (0.5, 0.5), (0.5, 0.5))
