"""Training reads every data source: an ImageFolder and a VTAB-1k directory written here."""

from __future__ import annotations

import pytest

from karst_deploy.errors import InputError
from karst_deploy.train import train_adapters
from tests.train.tiny import tiny_config, write_image_folder, write_vtab

SOURCES = {
    "image-folder": (write_image_folder, {"train": 24, "val": 24}, ["a", "b"]),
    "vtab": (write_vtab, {"train": 24, "val": 24, "test": 24}, ["0", "1"]),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_training_on_a_directory_source(source, tmp_path):
    write, images, classes = SOURCES[source]
    root = write(tmp_path / "data")
    result = train_adapters(
        tiny_config(data=str(root), epochs=2, batch_size=8), tmp_path / "run", progress=False
    )
    data = result.log.data
    assert data.images == images and data.classes == classes
    assert result.log.run.steps == 2 * (24 // 8)
    assert (result.log.test_accuracy is None) == ("test" not in images)
    assert (tmp_path / "run" / "adapter_config.json").is_file()


def test_unreadable_images_are_skipped_and_counted_or_refused(tmp_path):
    root = write_image_folder(tmp_path / "data")
    broken = root / "train" / "b" / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    result = train_adapters(
        tiny_config(data=str(root), epochs=2, batch_size=8, checkpoint=None), progress=False
    )
    assert result.log.data.skipped_images == {"train": 1, "val": 0}
    assert result.log.data.skipped_files["train"] == [str(broken)]
    assert any("1 unreadable image(s) of split 'train'" in w for w in result.log.warnings)
    with pytest.raises(InputError, match="cannot be read"):
        train_adapters(tiny_config(data=str(root), strict_images=True), progress=False)


def _gray_sixteen_bit_folder(root, per_class=8):
    """train/ and val/ of 16-bit grayscale 28×28 PNGs whose brightness gives the class."""
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for label, name in enumerate(("dark", "light")):
            for i in range(per_class):
                rng = np.random.default_rng(100 * label + i + 1000 * (split == "val"))
                pixels = (rng.integers(0, 20000, (28, 28)) + 30000 * label).astype(np.uint16)
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def test_a_grayscale_backbone_trains_exports_and_verifies_on_16_bit_images(tmp_path):
    """in_chans 1 end to end: one channel (no replication), --mean/--std recorded and reused."""
    import json

    from karst_deploy.export import export_onnx
    from karst_deploy.onnx_file import read_provenance
    from karst_deploy.parity import verify_parity
    from karst_deploy.precision import convert_precision
    from tests.train.tiny import TINY_KWARGS

    data = _gray_sixteen_bit_folder(tmp_path / "data")
    config = tiny_config(
        data=str(data),
        model_kwargs={**TINY_KWARGS, "in_chans": 1},
        epochs=2,
        batch_size=8,
        mean=(0.4,),
        std=(0.2,),
    )
    train_adapters(config, tmp_path / "adapter", progress=False)
    document = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert document["backbone"]["mean"] == [0.4] and document["backbone"]["std"] == [0.2]
    assert document["classes"] == ["dark", "light"]
    export_onnx(tmp_path / "m.onnx", adapter=tmp_path / "adapter")
    record = read_provenance(tmp_path / "m.onnx")
    assert record["mean"] == [0.4] and record["std"] == [0.2]
    report = verify_parity(
        tmp_path / "m.onnx",
        tmp_path / "adapter",
        data=str(data),
        samples=8,
        images=16,
        progress=False,
    )
    assert report.passed, report.failures
    assert report.inputs[1].samples == 16
    int8 = convert_precision(tmp_path / "m.onnx", tmp_path / "q.onnx", "int8", calib=str(data))
    assert int8.calibration["samples"] == 16
