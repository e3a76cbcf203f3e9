"""Adapter directories written by earlier releases load and merge to bit-identical weights.

`tests/fixtures/v1` was written by the release before the split-qkv KARST layout (see
`tests/fixtures/make_v1_adapters.py`); `expected.json` holds the sha256 of each merged tensor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import karst_deploy as kd
from karst_deploy.adapters import AdapterFile
from karst_deploy.errors import AdapterFileError
from tests.fixtures.make_v1_adapters import merged_digests

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_v1_adapters_merge_bit_identically(case):
    model = kd.load_adapted_model(FIXTURES / case)
    assert merged_digests(model) == EXPECTED[case]


def test_v1_karst_without_layout_key_loads_as_the_fused_layout():
    document = json.loads((FIXTURES / "karst-channel" / "adapter_config.json").read_text())
    assert "qkv_layout" not in document
    config = AdapterFile(FIXTURES / "karst-channel").config
    assert config.qkv_layout == "fused"
    assert kd.KarstConfig().qkv_layout == "split"  # new adapters get the official layout


def test_a_key_from_a_newer_layout_is_refused_by_name(tmp_path):
    """What an older reader does with a newer file: it refuses the key it does not know."""
    shutil.copytree(FIXTURES / "lora", tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    document = json.loads(path.read_text())
    document["qkv_layout"] = "split"
    path.write_text(json.dumps(document))
    with pytest.raises(AdapterFileError, match="unknown key 'qkv_layout'"):
        AdapterFile(tmp_path / "a")


def test_v1_spt_without_candidates_key_loads_as_fused_matrices():
    """SPT files from before the official candidates: fused-qkv matrices, no vectors."""
    document = json.loads((FIXTURES / "spt-karst" / "adapter_config.json").read_text())
    assert "candidates" not in document
    config = AdapterFile(FIXTURES / "spt-karst").config
    assert config.candidates == "matrices" and config.placement.vectors == ()
    assert all(m.block is None for m in config.placement.matrices)


def _retag(directory, *, candidates=None, version=None):
    config_path, placement_path = directory / "adapter_config.json", directory / "placement.json"
    config, placement = json.loads(config_path.read_text()), json.loads(placement_path.read_text())
    if candidates is not None:
        config["candidates"] = candidates
    if version is not None:
        placement["version"] = version
    config_path.write_text(json.dumps(config))
    placement_path.write_text(json.dumps(placement))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # What a reader of this release does with a placement of a later layout.
        (dict(version=3), r"key 'version' is 3; expected 1 or 2"),
        # The two files disagree about the layout.
        (dict(candidates="official"), r"key 'version' is 1, but .* 'candidates' says 'official'"),
        (dict(candidates="rows"), r"key 'candidates' is 'rows'"),
    ],
)
def test_spt_layout_keys_are_checked_by_name(edit, message, tmp_path):
    shutil.copytree(FIXTURES / "spt-karst", tmp_path / "a")
    _retag(tmp_path / "a", **edit)
    with pytest.raises(AdapterFileError, match=message):
        AdapterFile(tmp_path / "a")
