"""Labelled image sources: the built-in digits, ImageFolder directories and VTAB-1k lists.

Every source is opened with `open_images(source, split, img_size, mean, std)` and yields
``(image, label)`` pairs: float32 CHW tensors resized to the backbone's input size and
normalised, and integer labels. Pixels are read by `read_image` at their own range (8- and
16-bit, palette, CMYK; alpha composited over black) and converted by `preprocess` (bicubic
resize to a square, C = len(mean) channels: grayscale repeated for RGB backbones, colour
reduced to luma for one-channel ones). Used by training, `verify-parity --data`, and INT8
calibration alike, so all three see identical preprocessing.

Sources
-------
``digits`` / ``digits:5-9``
    scikit-learn's 1,797 real 8×8 handwritten digits (they ship inside the package, no
    download). ``digits:A-B`` keeps classes A..B and relabels them 0..B-A. Fixed splits,
    stratified per class with seed 0: 60 % train, 20 % val, 20 % test.
``DIR`` with ``train/`` and ``val/`` (optionally ``test/``) class sub-folders
    An ImageFolder layout; class indices follow the sorted sub-folder names of ``train/``.
``DIR`` with VTAB-1k lists
    ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and ``test.txt`` of
    ``relative/path label`` lines (the KARST/NOAH/SSF layout); splits ``train``, ``val``,
    ``trainval``, ``test``.

Unreadable images are *skipped and counted* (``LabelledImages.skipped``), never silently:
every consumer reports the count. Pass ``strict=True`` to fail on the first one instead.
Only regular files are opened (a FIFO named ``x.png`` would block forever), an image larger
than `MAX_IMAGE_PIXELS` is refused from its header before any pixel is decoded (a 97 KB PNG
can claim 10000×10000 pixels: 2.2 GB decoded), VTAB list entries must stay inside the
dataset directory, and labels are below `MAX_CLASSES`.

Training opens all three splits at once with `open_training_splits`: ``train`` and ``val``
are required, ``test`` is optional (reported, never used for selection), and every
validation/test label must be a class of the training split.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from karst_deploy.errors import InputError, clip

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL converts RGB to L
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
DIGITS_SPLITS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
#: Largest image decoded (width × height): 25 megapixels, e.g. 5000×5000 (300 MB as float32).
MAX_IMAGE_PIXELS = 25_000_000
#: Largest class count (and label + 1) a data source may have; the same bound as --num-classes.
MAX_CLASSES = 100_000
VTAB_LISTS = {
    "train": "train800.txt",
    "val": "val200.txt",
    "trainval": "train800val200.txt",
    "test": "test.txt",
}


@dataclass
class LabelledImages(torch.utils.data.Dataset):
    """Preprocessed, labelled images from one split of one source."""

    source: str
    split: str
    classes: list[str]
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    items: list[tuple[Path, int]] = field(default_factory=list)  # files, for folder sources
    arrays: np.ndarray | None = None  # in-memory [0, 1] HW or HWC images, for digits
    labels: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label(self, index: int) -> int:
        return int(self.labels[index]) if self.labels is not None else self.items[index][1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.arrays[index] if self.arrays is not None else read_image(self.items[index][0])
        return preprocess(image, self.img_size, self.mean, self.std), self.label(index)

    def preprocessed_as(
        self, img_size: int, mean: Sequence[float], std: Sequence[float]
    ) -> LabelledImages:
        """The same images, resized and normalised for another backbone."""
        return dataclasses.replace(self, img_size=img_size, mean=tuple(mean), std=tuple(std))

    def select_classes(self, classes: Sequence[str], what: str) -> LabelledImages:
        """The images of `classes` only, relabelled to their index in `classes`.

        `classes` are the names a model was trained on (its head's outputs, in order); the
        data must have every one of them (InputError naming the missing ones and `what`, the
        parameter that gave the data, e.g. ``data``). Classes the model does not know are
        dropped.
        """
        classes = list(classes)
        if classes == self.classes:
            return self
        missing = [name for name in classes if name not in self.classes]
        if missing:
            raise InputError(
                f"{what} '{clip(self.source)}' does not have the classes the model was trained "
                f"on: it lacks {_names(missing)} (it has {_names(self.classes)}; the model's "
                f"are {_names(classes)}). Pass the data the adapter was trained on, or one with "
                "those classes (a superset is narrowed to them).",
                parameters=(what,),
            )
        new_label = {self.classes.index(name): index for index, name in enumerate(classes)}
        if self.arrays is not None:
            keep = np.isin(self.labels, list(new_label))
            labels = np.array([new_label[int(v)] for v in self.labels[keep]], dtype=np.int64)
            return dataclasses.replace(
                self, classes=classes, arrays=self.arrays[keep], labels=labels
            )
        items = [(file, new_label[label]) for file, label in self.items if label in new_label]
        return dataclasses.replace(self, classes=classes, items=items)

    def batch(self, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `count` images (all by default) as one ``(N, C, H, W)`` tensor and labels."""
        count = len(self) if count is None else min(count, len(self))
        pairs = [self[i] for i in range(count)]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def _names(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(clip(n, 40)) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def preprocess(
    image: np.ndarray, img_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """[0, 1] HW/HWC array → normalised float32 ``(C, img_size, img_size)`` tensor (bicubic).

    C is ``len(mean)``: 3 for an RGB backbone (a grayscale image is repeated into the three
    channels), 1 for a single-channel one (``in_chans: 1``; a colour image is reduced to
    its luma, ITU-R BT.601 weights as PIL's ``L`` mode, and a grayscale one is used as is).
    """
    channels = len(mean)
    if channels not in (1, 3) or len(std) != channels:
        raise InputError(
            f"mean {tuple(mean)} and std {tuple(std)} must both have 1 (grayscale backbone) or "
            "3 (RGB backbone) values."
        )
    tensor = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
    if tensor.ndim == 3 and channels == 1:
        tensor = (tensor * torch.tensor(LUMA_WEIGHTS)).sum(-1)
    tensor = tensor[None].expand(channels, -1, -1) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if tuple(tensor.shape[1:]) != (img_size, img_size):
        tensor = torch.nn.functional.interpolate(
            tensor[None], size=(img_size, img_size), mode="bicubic", align_corners=False
        )[0].clamp(0.0, 1.0)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((tensor - mean_t) / std_t).contiguous()


def is_image_file(path: Path) -> bool:
    """A regular file (after symlinks) with an image suffix; FIFOs and devices are never opened."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def open_image(path: Path):
    """PIL image of `path`, header only, after refusing a size over `MAX_IMAGE_PIXELS`.

    Raises `InputError` naming the file for an oversized image (a decompression bomb), and
    OSError / PIL errors for an unreadable one.
    """
    import warnings

    from PIL import Image

    if not path.is_file():
        raise OSError(f"'{path}' is not a regular file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            image = None
    if image is None or image.width * image.height > MAX_IMAGE_PIXELS:
        if image is not None:
            image.close()
        raise InputError(
            f"Image '{clip(path)}' is too large to decode (more than {MAX_IMAGE_PIXELS:,} "
            "pixels; a decompression bomb?); resize it or remove it from the data."
        )
    return image


def read_image(path: Path) -> np.ndarray:
    """The pixels of an image file as float32 in [0, 1]: HW for grayscale, HWC (RGB) for colour.

    Every PIL mode is scaled by its own range, never clipped: 8-bit modes by 255, 16-bit
    grayscale (``I;16*``, and ``I`` as PIL opens 16-bit PNGs) by 65535, float (``F``) taken
    as [0, 1]. Palette images are expanded, CMYK (and YCbCr, LAB, HSV) converted to RGB by
    PIL, bilevel to grayscale. An alpha channel (``RGBA``, ``LA``, palette transparency) is
    composited over black (colour × alpha), so what a fully transparent pixel hides never
    reaches the model.
    """
    with open_image(path) as image:
        return image_pixels(image, str(path))


def image_pixels(image, name: str = "image") -> np.ndarray:
    """`read_image` on an open PIL image (`name` labels errors)."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
    elif mode.startswith("I;16") or mode == "I":
        array = np.asarray(image, dtype=np.float64)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise InputError(
                f"Image '{clip(name)}' holds 32-bit integer pixels ({array.min():g} to "
                f"{array.max():g}); karst-deploy reads 8- and 16-bit images."
            )
        return (array / 65535.0).astype(np.float32)
    elif mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if mode in ("RGBa", "La") else "RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    if image.mode in ("LA", "RGBA"):  # composite over black: colour × alpha
        array = array[..., :-1] * array[..., -1:]
        if image.mode == "LA":
            array = array[..., 0]
    return array


def _readable(path: Path) -> bool:
    from PIL import UnidentifiedImageError

    try:
        with open_image(path) as image:
            image.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def open_images(
    source: str | os.PathLike[str],
    split: str,
    img_size: int,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    *,
    strict: bool = False,
) -> LabelledImages:
    """Open one split of a labelled image source (see the module docstring)."""
    text = str(source)
    common = dict(split=split, img_size=img_size, mean=tuple(mean), std=tuple(std))
    if text == "digits" or text.startswith("digits:"):
        return _digits(text, **common)
    path = Path(text)
    if not path.is_dir():
        raise InputError(
            f"Data source '{text}' is neither 'digits'/'digits:A-B' nor an existing directory."
        )
    if any((path / name).is_file() for name in VTAB_LISTS.values()):
        return _vtab(path, strict=strict, **common)
    if (path / "train").is_dir():
        return _image_folder(path, strict=strict, **common)
    raise InputError(
        f"Data directory '{path}' has neither an ImageFolder layout (train/ and val/ with one "
        "sub-folder per class) nor VTAB-1k lists (train800.txt, val200.txt, test.txt, "
        "train800val200.txt)."
    )


def has_split(source: str | os.PathLike[str], split: str) -> bool:
    """Whether `source` provides `split` without opening it (digits has all three)."""
    text = str(source)
    if text == "digits" or text.startswith("digits:"):
        return split in DIGITS_SPLITS
    path = Path(text)
    if any((path / name).is_file() for name in VTAB_LISTS.values()):
        return split in VTAB_LISTS and (path / VTAB_LISTS[split]).is_file()
    return (path / split).is_dir()


def open_training_splits(
    source: str | os.PathLike[str],
    img_size: int,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    *,
    strict: bool = False,
) -> dict[str, LabelledImages]:
    """The ``train`` and ``val`` splits of `source` (both required) and ``test`` if it has one.

    Validation and test labels must be classes the training split knows; the model is
    selected on ``val``, and ``test`` is only ever reported.
    """
    splits = {}
    for split in ("train", "val", "test"):
        if split == "test" and not has_split(source, split):
            continue
        splits[split] = open_images(source, split, img_size, mean, std, strict=strict)
    num_classes = splits["train"].num_classes
    for split, data in splits.items():
        labels = data.labels if data.labels is not None else [label for _, label in data.items]
        highest = int(max(labels))
        if highest >= num_classes:
            raise InputError(
                f"Split '{split}' of '{source}' has label {highest}, but the training split "
                f"knows only {num_classes} classes (0..{num_classes - 1}); every split must use "
                "the training classes."
            )
    return splits


def _digits(text: str, *, split: str, **common) -> LabelledImages:
    from sklearn.datasets import load_digits

    if split not in DIGITS_SPLITS:
        raise InputError(f"The digits source has splits {list(DIGITS_SPLITS)}, not '{split}'.")
    low, high = 0, 9
    if text != "digits":
        match = re.fullmatch(r"digits:(\d)-(\d)", text)
        if not match or int(match[1]) >= int(match[2]):
            raise InputError(
                f"Data source '{text}' should look like 'digits:A-B' with 0 <= A < B <= 9, "
                "e.g. 'digits:5-9'."
            )
        low, high = int(match[1]), int(match[2])
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    start, stop = DIGITS_SPLITS[split]
    rng = np.random.default_rng(0)
    chosen = []
    for digit in range(low, high + 1):  # stratified: the same fractions of every class
        members = np.flatnonzero(digits.target == digit)
        members = members[rng.permutation(len(members))]
        chosen.append(members[int(start * len(members)) : int(stop * len(members))])
    index = np.sort(np.concatenate(chosen))
    return LabelledImages(
        source=text,
        classes=[str(d) for d in range(low, high + 1)],
        arrays=images[index],
        labels=(digits.target[index] - low).astype(np.int64),
        split=split,
        **common,
    )


def _image_folder(root: Path, *, split: str, strict: bool, **common) -> LabelledImages:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise InputError(
            f"'{root / 'train'}' has {len(classes)} class sub-folder(s); classification needs "
            "at least two (one sub-folder per class, images inside)."
        )
    split_dir = root / split
    if not split_dir.is_dir():
        raise InputError(
            f"Image folder '{root}' has no '{split}/' directory (found: "
            f"{sorted(p.name for p in root.iterdir() if p.is_dir())})."
        )
    unknown = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise InputError(
            f"'{split_dir}' has class folder '{unknown[0]}', which 'train/' does not have; "
            "every split must use the training classes."
        )
    items = [
        (file, label)
        for label, name in enumerate(classes)
        if (split_dir / name).is_dir()
        for file in sorted((split_dir / name).rglob("*"))
        if is_image_file(file)
    ]
    return _checked(root, split, classes, items, strict, common)


def _vtab(root: Path, *, split: str, strict: bool, **common) -> LabelledImages:
    if split not in VTAB_LISTS:
        raise InputError(f"VTAB-1k directories have splits {list(VTAB_LISTS)}, not '{split}'.")
    listing = root / VTAB_LISTS[split]
    if not listing.is_file():
        raise InputError(f"VTAB-1k directory '{root}' has no '{listing.name}' for split '{split}'.")
    items, missing = [], []
    inside = root.resolve()
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{listing} is not UTF-8 text ({exc.reason} at byte {exc.start})."
        ) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"\d{1,9}", parts[1]):
            raise InputError(
                f"{listing}, line {number}: expected 'relative/path.jpg <integer label>', got "
                f"{clip(repr(line.strip()))}."
            )
        label = int(parts[1])
        if label >= MAX_CLASSES:
            raise InputError(
                f"{listing}, line {number}: label {label} is too large; labels are class "
                f"indices from 0 to {MAX_CLASSES - 1}."
            )
        file = root / parts[0]
        if Path(parts[0]).is_absolute() or not file.resolve().is_relative_to(inside):
            raise InputError(
                f"{listing}, line {number}: '{clip(parts[0])}' leads outside the dataset "
                f"directory '{clip(root)}' (absolute path, '..' or a symbolic link out); list "
                "entries must be paths inside it."
            )
        if not file.is_file():
            missing.append(parts[0])
        items.append((file, label))
    if missing:
        raise InputError(
            f"{listing} lists {len(missing)} image(s) that are not regular files under "
            f"'{clip(root)}', first '{clip(missing[0])}'."
        )
    labels = {label for _, label in items}
    classes = [str(c) for c in range(max(labels) + 1)] if labels else []
    return _checked(root, split, classes, items, strict, common)


def _checked(root, split, classes, items, strict, common) -> LabelledImages:
    if not items:
        raise InputError(
            f"Split '{split}' of '{root}' contains no images ({', '.join(IMAGE_SUFFIXES)})."
        )
    if len({label for _, label in items}) < 2 and split in ("train", "trainval"):
        raise InputError(f"Split '{split}' of '{root}' has fewer than two classes with images.")
    readable, skipped = [], []
    for file, label in items:
        if _readable(file):
            readable.append((file, label))
        elif strict:
            raise InputError(f"Image '{file}' cannot be read (corrupt or not an image).")
        else:
            skipped.append(str(file))
    if not readable:
        raise InputError(f"No image of split '{split}' in '{root}' could be read.")
    return LabelledImages(
        source=str(root), split=split, classes=classes, items=readable, skipped=skipped, **common
    )
