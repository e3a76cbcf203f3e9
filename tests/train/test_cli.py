"""`karst-deploy train`: bad input is one paragraph and exit code 2, never a traceback.

(The successful command, single-process and under torchrun, runs in test_distributed.py.)
"""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli
from tests.train.tiny import TINY_BACKBONE, TINY_KWARGS


def _train(*extra: str):
    arguments = ["train", "--backbone", TINY_BACKBONE, "--model-kwargs", json.dumps(TINY_KWARGS)]
    return run_cli(*arguments, *extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "lora", "--factor", "4"], "--factor does not apply to --method lora"),
        (["--method", "linear", "--rank", "4"], "it takes no method options"),
        (["--method", "no-such-method"], "--method is 'no-such-method'"),  # not registered
        (["--rescale", "vector"], "expected one of ['channel', 'scalar']"),
        (["--warmup-epochs", "5", "--epochs", "5"], "--warmup-epochs is 5"),
        (["--data", "no/such/dir"], "neither 'digits'/'digits:A-B' nor an existing directory"),
        (["--data", "digits:7-3"], "should look like 'digits:A-B'"),
        (["--model-kwargs", "[1]"], "--model-kwargs must be a JSON object"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph(extra, message, tmp_path):
    result = _train("--data", "digits", "--out", str(tmp_path / "run"), *extra)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_existing_output_exits_2(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_config.json").write_text("{}")  # an empty one is taken over
    result = _train("--data", "digits", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "--force" in result.stderr


def test_a_short_run_into_an_empty_directory_with_a_misspelled_target(tmp_path):
    """--epochs 2 (warm-up scaled to 0), an empty --out made first, --targets qkv,prj refused."""
    (tmp_path / "run").mkdir()
    common = ["--data", "digits:0-1", "--out", str(tmp_path / "run"), "--epochs", "2"]
    result = _train(*common, "--targets", "qkv,prj", "--threads", "1")
    assert result.returncode == 2 and "'prj' matches no nn.Linear" in result.stderr
    assert list((tmp_path / "run").iterdir()) == []
    result = _train(*common, "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert (
        log["recipe"]["warmup_epochs"] == 0 and log["recipe"]["recipe"]["set"]["warmup_epochs"] == 0
    )
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["classes"] == [
        "0",
        "1",
    ]
    # warned (before training, and in the log)
    assert "random weights" in result.stdout + result.stderr
