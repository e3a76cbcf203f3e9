"""The exit-code table of karst_deploy.errors: one CLI case proves each code.

Most cases run the CLI in-process (`karst_deploy.cli.run`, the function `main` exits with);
one runs it as a real process to show the internal-error paragraph and ``--debug`` there too.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from karst_deploy.errors import EXIT_CODES, REPORT_URL
from karst_deploy.provenance import KEY
from tests.cli_helpers import run_cli
from tests.export.artifacts import CASE

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = CASE.name


def run(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the CLI run in-process."""
    result = run_cli(*args)
    return result.returncode, result.stdout, result.stderr


def one_paragraph(err: str) -> bool:
    return "Traceback" not in err and len([line for line in err.splitlines() if line]) == 1


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, method_export):
    """A LoRA adapter, its merged export (session-shared), and a copy with one weight scaled
    by 1.05."""
    root = tmp_path_factory.mktemp("exit-codes")
    adapter, exported = method_export("lora")
    merged = exported.path
    model = onnx.load(str(merged))
    weight = next(t for t in model.graph.initializer if t.name == "blocks.0.mlp.fc1.weight")
    scaled = onnx.numpy_helper.to_array(weight) * np.float32(1.05)
    weight.CopyFrom(onnx.numpy_helper.from_array(scaled, weight.name))
    tampered = root / "tampered.onnx"
    onnx.save(model, str(tampered))
    return adapter, Path(merged), tampered


def with_provenance(source: Path, out: Path, text: str) -> Path:
    """A copy of `source` whose provenance metadata is `text`."""
    model = onnx.load(str(source))
    next(p for p in model.metadata_props if p.key == KEY).value = text
    onnx.save(model, str(out))
    return out


def test_the_readme_states_the_same_table():
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \|", README.read_text(), flags=re.MULTILINE)
    assert {int(code): name for code, name in rows} == {
        code: name for code, (name, _) in EXIT_CODES.items()
    }


def test_0_success():
    code, out, err = run("doctor", "--json")
    assert code == 0 and "onnxruntime_providers" in json.loads(out), err


def test_1_a_verification_ran_and_failed(artifacts):
    adapter, _, tampered = artifacts
    code, out, err = run(
        "verify-parity", "--adapter", str(adapter), "--onnx", str(tampered),
        "--samples", "4",
    )  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert "max abs diff" in out + err


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["export", "--no-adapter", "--backbone", TINY, "--num-classes", "-3", "--out", "OUT"],
         "--num-classes"),
        (["export", "--no-adapter", "--backbone", TINY, "--opset", "99", "--out", "OUT"],
         "--opset"),
        (["export", "--no-adapter", "--backbone", TINY, "--opset", "16", "--out", "OUT"],
         "--opset"),
        (["export", "--no-adapter", "--backbone", TINY, "--batch", "99999999", "--out", "OUT"],
         "--batch"),
        (["verify-parity", "--adapter", "a", "--onnx", "b", "--samples", "1000000000"],
         "--samples"),
        (["bench", "--onnx", "a", "--baseline", "b", "--rounds", "1e9"], "--rounds"),
        (["bench", "--onnx", "a", "--baseline", "b", "--rounds", "1000000000"], "--rounds"),
        (["bench", "--onnx", "a", "--baseline", "b", "--tolerance", "nan"], "--tolerance"),
        (["train", "--backbone", TINY, "--data", "digits", "--lr", "inf", "--out", "OUT"],
         "--lr"),
        (["build-engine", "--onnx", "a", "--builder-opt-level", "9", "--out", "OUT"],
         "--builder-opt-level"),
        (["convert-precision", "--onnx", "a", "--precision", "int8", "--calib-samples", "0",
          "--out", "OUT"], "--calib-samples"),
    ],
)  # fmt: skip
def test_2_out_of_range_numbers_name_their_flag(tmp_path, args, flag):
    out = tmp_path / "out"
    code, _, err = run(*[str(out) if a == "OUT" else a for a in args])
    assert code == 2 and flag in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000, "nested too deeply"),
        ('{"depth": ' + "9" * 5000 + "}", "integer of 5000 digits"),
        ("[6]", "must be a JSON object"),
    ],
)
def test_2_hostile_model_kwargs(tmp_path, text, message):
    code, _, err = run(
        "export", "--no-adapter", "--backbone", TINY, "--model-kwargs", text,
        "--out", str(tmp_path / "m.onnx"),
    )  # fmt: skip
    assert code == 2 and "--model-kwargs" in err and message in err and one_paragraph(err), err


def test_2_out_is_a_directory(tmp_path):
    code, _, err = run(
        "export", "--no-adapter", "--backbone", TINY, "--out", str(tmp_path), "--force"
    )
    assert code == 2 and f"'{tmp_path}' is a directory" in err and one_paragraph(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"img_size": ' + "9" * 400 + "}", "integer of 400 digits"),
        ('{"img_size": ' + "9" * 5000 + "}", "integer of 5000 digits"),
        ("[1, 2]", "must be a JSON object"),
        ('{"img_size": NaN}', "'NaN'"),
        ('{"img_size": 1e999}', "overflows"),
        ('{"backbone": ["vit"]}', "provenance key 'backbone'"),
    ],
)
def test_2_hostile_provenance(artifacts, tmp_path, text, message):
    adapter, merged, _ = artifacts
    onnx_file = with_provenance(merged, tmp_path / "m.onnx", text)
    code, _, err = run("verify-parity", "--adapter", str(adapter), "--onnx", str(onnx_file))
    assert code == 2 and message in err and str(onnx_file) in err and one_paragraph(err), err


def test_2_a_sidecar_that_is_a_list(artifacts, tmp_path):
    adapter, merged, _ = artifacts
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    Path(f"{engine}.json").write_text("[]")
    code, _, err = run(
        "verify-parity", "--adapter", str(adapter), "--onnx", str(merged),
        "--engine", str(engine),
    )  # fmt: skip
    assert code == 2 and "must be a JSON object" in err and f"{engine}.json" in err, err


def test_2_a_decompression_bomb_is_refused_from_its_header(artifacts, tmp_path):
    from PIL import Image

    adapter, merged, _ = artifacts
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / label / "ok.png")
    bomb = tmp_path / "data" / "val" / "a" / "bomb.png"
    Image.new("1", (15_000, 15_000)).save(bomb)  # about 30 KB on disk, 675 MB as RGB
    code, _, err = run(
        "verify-parity", "--adapter", str(adapter), "--onnx", str(merged),
        "--data", str(tmp_path / "data"), "--samples", "2",
    )  # fmt: skip
    assert code == 2 and str(bomb) in err and "too large" in err and one_paragraph(err), err


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_3_a_missing_runtime(artifacts):
    _, merged, _ = artifacts
    code, _, err = run(
        "bench", "--onnx", str(merged), "--baseline", str(merged), "--runner", "tensorrt",
        "--rounds", "2", "--sessions", "1",
    )  # fmt: skip
    assert code == 3 and "TensorRT" in err and one_paragraph(err), err


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (errno.ENOSPC, "No space left on device (ENOSPC)"),
        (errno.EROFS, "Read-only file system (EROFS)"),
        (errno.EACCES, "Permission denied (EACCES)"),
    ],
)
def test_3_disk_full_read_only_or_denied(monkeypatch, tmp_path, number, words):
    """The first write of an output fails as the operating system would make it fail."""
    import karst_deploy.files

    def refuse(tmp, directory):
        raise OSError(number, os.strerror(number), str(tmp))

    monkeypatch.setattr(karst_deploy.files, "_make_temp", refuse)
    code, _, err = run(
        "export", "--no-adapter", "--backbone", TINY, "--num-classes", "3",
        "--img-size", "32", "--model-kwargs", '{"depth": 1, "embed_dim": 32, "num_heads": 2}',
        "--out", str(tmp_path / "m.onnx"),
    )  # fmt: skip
    assert code == 3 and words in err and str(tmp_path) in err and one_paragraph(err), err
    assert list(tmp_path.iterdir()) == []


def _break_doctor(monkeypatch):
    import karst_deploy.doctor

    def broken():
        return {}["no such key"]

    monkeypatch.setattr(karst_deploy.doctor, "diagnose", broken)


def test_70_an_internal_error_is_one_paragraph(monkeypatch):
    monkeypatch.delenv("KARST_DEPLOY_DEBUG", raising=False)
    _break_doctor(monkeypatch)
    code, _, err = run("doctor")
    assert code == 70 and one_paragraph(err), err
    assert "internal error: KeyError" in err and REPORT_URL in err and "--debug" in err
    assert "test_exit_codes.py" in err  # where it happened


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_70_debug_adds_the_traceback(monkeypatch, how):
    _break_doctor(monkeypatch)
    if how == "environment":
        monkeypatch.setenv("KARST_DEPLOY_DEBUG", "1")
    code, _, err = run(*(["--debug"] if how == "flag" else []), "doctor")
    assert code == 70 and "Traceback (most recent call last)" in err and "KeyError" in err


def test_70_and_debug_in_a_real_process():
    inject = (
        "import sys, karst_deploy.doctor as d; d.diagnose = lambda: 1 / 0; "
        "from karst_deploy.cli import main; main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "KARST_DEPLOY_DEBUG"}
    plain = subprocess.run(
        [sys.executable, "-c", inject, "doctor"], capture_output=True, text=True, env=env
    )
    assert plain.returncode == 70 and one_paragraph(plain.stderr), plain.stderr
    assert "internal error: ZeroDivisionError" in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-c", inject, "--debug", "doctor"], capture_output=True, text=True, env=env
    )
    assert debug.returncode == 70 and "Traceback (most recent call last)" in debug.stderr


def test_130_is_the_interrupted_code(monkeypatch):
    """Ctrl-C (KeyboardInterrupt) exits 130; signal clean-up itself is tested elsewhere."""
    import karst_deploy.doctor

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(karst_deploy.doctor, "diagnose", interrupted)
    code, _, _ = run("doctor")
    assert code == 130 and EXIT_CODES[130][0] == "interrupted"


def test_messages_are_not_wrapped_and_long_names_are_clipped(tmp_path):
    """stderr is a pipe here: a long path stays on one line; a 100,000-character name is cut."""
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "adapter"
    result = run_cli("merge", "--adapter", str(deep), "--out", "x", cwd=tmp_path)
    assert result.returncode == 2 and str(deep) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    name = "v" * 100_000
    result = run_cli("export", "--no-adapter", "--backbone", name, "--out", tmp_path / "m.onnx")
    assert (
        result.returncode == 2
        and len(result.stderr) < 1000
        and "…" in result.stderr  # clipped, whichever layer refused it
    )
