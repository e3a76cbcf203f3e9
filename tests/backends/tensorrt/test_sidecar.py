"""Engine sidecars: a mismatch of TensorRT version, GPU or engine bytes is refused with the fix."""

from __future__ import annotations

import pytest

from karst_deploy.backends.tensorrt.options import BuildOptions
from karst_deploy.backends.tensorrt.sidecar import (
    EngineMismatchError,
    RuntimeEnvironment,
    check_sidecar,
    engine_source_precision,
    make_sidecar,
    read_sidecar,
    sidecar_path,
)
from karst_deploy.errors import InputError, with_flags
from karst_deploy.files import sha256_file, write_json

ORIN = RuntimeEnvironment("10.3.0", "Orin", "8.7")


def write_engine(tmp_path, *, version_compatible=False, hardware_compat="none"):
    """An engine file and the sidecar karst-deploy writes for it (the bytes only get hashed)."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"serialized plan bytes")
    options = BuildOptions(version_compatible=version_compatible, hardware_compat=hardware_compat)
    record = make_sidecar(
        engine_sha256=sha256_file(engine),
        environment=ORIN,
        onnx={"path": "model.onnx", "sha256": "0" * 64},
        precision={"requested": "fp16", "passed": True},
        profile={"input": "images", "min": [1, 3, 224, 224]},
        builder={"version_compatible": version_compatible, "hardware_compat": hardware_compat},
        build_command=options.command("model.onnx", engine),
        provenance=None,
    )
    write_json(sidecar_path(engine), record)
    return engine, read_sidecar(engine)


def test_sidecar_sits_next_to_the_engine(tmp_path):
    assert sidecar_path(tmp_path / "a.engine") == tmp_path / "a.engine.json"
    assert read_sidecar(tmp_path / "a.engine") is None  # e.g. built by trtexec


def test_the_machine_that_built_it_may_run_it(tmp_path):
    engine, record = write_engine(tmp_path)
    check_sidecar(record, engine, ORIN)


@pytest.mark.parametrize(
    ("here", "message"),
    [
        (RuntimeEnvironment("10.4.0", "Orin", "8.7"), "built with TensorRT 10.3.0"),
        (RuntimeEnvironment("10.3.0", "NVIDIA GeForce RTX 3090", "8.6"), "built on 'Orin'"),
        (RuntimeEnvironment("10.3.0", "Orin (nvgpu)", "8.7"), "built on 'Orin'"),
    ],
)
def test_another_tensorrt_or_gpu_is_refused_with_the_rebuild_command(tmp_path, here, message):
    engine, record = write_engine(tmp_path)
    with pytest.raises(EngineMismatchError, match=message) as error:
        check_sidecar(record, engine, here)
    assert f"karst-deploy build-engine --onnx model.onnx --out {engine} --force" in str(error.value)
    advice = "--version-compat" if "TensorRT" in message else "--hardware-compat ampere+"
    assert f"build with {advice}" in with_flags(error.value)  # the parameter, as the CLI shows it


def test_version_compatible_engines_run_on_later_tensorrt_only(tmp_path):
    engine, record = write_engine(tmp_path, version_compatible=True)
    check_sidecar(record, engine, RuntimeEnvironment("10.16.1", "Orin", "8.7"))
    with pytest.raises(EngineMismatchError, match="same or a later TensorRT"):
        check_sidecar(record, engine, RuntimeEnvironment("10.2.0", "Orin", "8.7"))


def test_hardware_compatible_engines_run_on_any_ampere_or_newer_gpu(tmp_path):
    engine, record = write_engine(tmp_path, hardware_compat="ampere+")
    check_sidecar(record, engine, RuntimeEnvironment("10.3.0", "NVIDIA H100 80GB HBM3", "9.0"))
    with pytest.raises(EngineMismatchError, match=r"compute capability 7\.5"):
        check_sidecar(record, engine, RuntimeEnvironment("10.3.0", "Tesla T4", "7.5"))


def test_a_replaced_engine_is_caught(tmp_path):
    engine, record = write_engine(tmp_path)
    engine.write_bytes(b"serialized plan bytes, tampered")
    with pytest.raises(EngineMismatchError, match="sha256"):
        check_sidecar(record, engine, ORIN)


def test_unreadable_or_foreign_sidecars_are_refused(tmp_path):
    engine = tmp_path / "m.engine"
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_sidecar(engine)
    sidecar_path(engine).write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="not a karst-deploy engine sidecar"):
        read_sidecar(engine)


def test_an_engine_is_matched_to_the_onnx_it_was_built_from(tmp_path):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"onnx bytes")
    engine, record = write_engine(tmp_path)
    record["onnx"] = {"path": str(onnx_file), "sha256": sha256_file(onnx_file)}
    write_json(sidecar_path(engine), record, force=True)
    assert engine_source_precision(engine, onnx_file) == "fp16"
    other = tmp_path / "other.onnx"
    other.write_bytes(b"other onnx bytes")
    with pytest.raises(EngineMismatchError, match="not from"):
        engine_source_precision(engine, other)
    (tmp_path / "trtexec.engine").write_bytes(b"an engine without a sidecar")
    assert engine_source_precision(tmp_path / "trtexec.engine", other) is None
    with pytest.raises(InputError, match=r"^engine .* does not exist") as missing:
        engine_source_precision(tmp_path / "missing.engine", other)
    assert with_flags(missing.value).startswith("--engine '")
