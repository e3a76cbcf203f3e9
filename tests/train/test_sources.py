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
