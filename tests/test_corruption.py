"""Corruption generator for the records karst-deploy reads back: ONNX provenance and sidecars.

Hundreds of hand-written corruptions (wrong types, lists, huge integers, deep nesting, NaN,
missing and unknown keys, wrong hashes) plus hypothesis-generated ones, each run under a time
limit through the readers every command uses. The contract: no exception other than a
karst-deploy error (no traceback), no hang, and every refusal names the file and the key.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from karst_deploy import cli
from karst_deploy.backends.tensorrt.onnx_graph import summarize_onnx
from karst_deploy.backends.tensorrt.options import BuildOptions
from karst_deploy.backends.tensorrt.sidecar import (
    RuntimeEnvironment,
    check_sidecar,
    engine_source_precision,
    make_sidecar,
    read_sidecar,
    sidecar_path,
)
from karst_deploy.errors import KarstDeployError
from karst_deploy.files import sha256_file
from karst_deploy.onnx_file import require_provenance
from karst_deploy.provenance import KEY, NESTED, SCHEMA
from tests.backends.tensorrt.graphs import tiny_classifier

TIME_LIMIT_S = 5
ORIN = RuntimeEnvironment("10.3.0", "Orin", "8.7")

#: A complete, valid provenance record (what `export` writes for the tiny test graph).
PROVENANCE: dict[str, Any] = {
    "version": "0.1.0",
    "backbone": "vit_tiny_patch16_224",
    "img_size": 8,
    "num_classes": 4,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "model_kwargs": {"depth": 2},
    "pretrained": False,
    "method": "lora",
    "adapter_config": {"method": "lora", "rank": 4},
    "adapter_sha256": {"adapter.safetensors": "a" * 64},
    "checkpoint_sha256": None,
    "kind": "merged",
    "precision": "fp32",
    "opset": 18,
    "exporter": "torch.onnx.export(dynamo=True)",
    "batch": "dynamic",
    "torch": "2.6.0",
    "timm": "1.0.20",
}

#: Values of the wrong type, range or form, tried in every key.
BAD_VALUES: dict[str, Any] = {
    "null": None,
    "true": True,
    "negative": -1,
    "zero": 0,
    "huge-int": 10**19,
    "float": 1.5,
    "empty-string": "",
    "long-string": "x" * 100_000,
    "path": "../../etc/passwd",
    "list": [1, 2, 3],
    "empty-object": {},
    "object": {"nested": {"deeper": [1]}},
    "deep-list": json.loads("[" * 30 + "]" * 30),
}
#: Corruptions of the raw text, where no key can be named (the metadata key or file is).
RAW_TEXTS: dict[str, str] = {
    "empty": "",
    "truncated": '{"version": "0.1',
    "list": "[]",
    "null": "null",
    "number": "7",
    "string": '"a string"',
    "deep-array": "[" * 100_000 + "]" * 100_000,
    "deep-object": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "huge-int": '{"img_size": ' + "9" * 5000 + "}",
    "400-digit-int": '{"num_classes": ' + "9" * 400 + "}",
    "nan": '{"img_size": NaN}',
    "infinity": '{"opset": Infinity}',
    "overflowing-float": '{"mean": [1e999, 0, 0]}',
    "trailing-garbage": json.dumps(PROVENANCE) + " {}",
    "nul-byte": '{"backbone": "vit\u0000"}',
}


@contextlib.contextmanager
def time_limit(seconds: int = TIME_LIMIT_S) -> Iterator[None]:
    def expire(signum, frame):
        raise TimeoutError(f"corruption case ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refusal(read: Callable[[], Any]) -> str | None:
    """The message of a karst-deploy refusal, or None when `read` accepted the record.

    Anything else (a traceback) or running over the time limit fails the test.
    """
    with time_limit():
        try:
            read()
        except KarstDeployError as error:
            return str(error)
    return None


def key_corruptions(record: dict[str, Any], schema_keys, nested) -> Iterator[tuple[str, Any]]:
    """(key named in the refusal, corrupted record) for every key and bad value."""
    for key in schema_keys:
        for value in BAD_VALUES.values():
            yield key, {**record, key: value}
        yield key, {k: v for k, v in record.items() if k != key}  # missing
    for parent, fields in nested.items():
        for key in fields:
            for value in BAD_VALUES.values():
                base = record.get(parent) if isinstance(record.get(parent), dict) else {}
                yield key, {**record, parent: {**base, key: value}}
    for unknown in ("checkpoint_path", "__class__", "x" * 500):
        yield unknown, {**record, unknown: 1}


# -- ONNX provenance -----------------------------------------------------------------------


def onnx_with(tmp_path: Path, text: str) -> Path:
    model = tiny_classifier(provenance=PROVENANCE)
    next(p for p in model.metadata_props if p.key == KEY).value = text
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def read_onnx(path: Path) -> Callable[[], Any]:
    def read():
        require_provenance(path)
        summarize_onnx(path)

    return read


def test_the_valid_record_is_accepted(tmp_path):
    assert refusal(read_onnx(onnx_with(tmp_path, json.dumps(PROVENANCE)))) is None


PROVENANCE_CASES = list(key_corruptions(PROVENANCE, SCHEMA, NESTED))


def test_provenance_key_corruptions(tmp_path):
    assert len(PROVENANCE_CASES) >= 300
    refused = 0
    for key, record in PROVENANCE_CASES:
        path = onnx_with(tmp_path, json.dumps(record))
        message = refusal(read_onnx(path))
        if message is not None:
            refused += 1
            assert str(path) in message and f"'{key[:60]}" in message, (key, message)
    assert refused >= 280  # a few bad values fit some keys (null for an optional key)


@pytest.mark.parametrize("label", sorted(RAW_TEXTS))
def test_provenance_text_corruptions(tmp_path, label):
    path = onnx_with(tmp_path, RAW_TEXTS[label])
    message = refusal(read_onnx(path))
    assert message is not None and str(path) in message and KEY in message, message


def test_removed_provenance_is_named(tmp_path):
    model = tiny_classifier()
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    message = refusal(read_onnx(path))
    assert message is not None and str(path) in message and KEY in message


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(sorted(SCHEMA)), value=json_values)
def test_generated_provenance_values(tmp_path, key, value):
    path = onnx_with(tmp_path, json.dumps({**PROVENANCE, key: value}))
    message = refusal(read_onnx(path))
    if message is not None:
        assert str(path) in message


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=200))
def test_generated_provenance_text(tmp_path, text):
    message = refusal(read_onnx(onnx_with(tmp_path, text)))
    assert message is not None  # random text is never a complete record


def test_the_cli_answers_corrupt_provenance_in_one_paragraph(tmp_path, capsys):
    """A sample of the corruptions through a real command (emit-trtexec)."""
    for index, (_, record) in enumerate(PROVENANCE_CASES[::25]):
        path = onnx_with(tmp_path, json.dumps(record))
        with time_limit():
            code = cli.run(
                ["emit-trtexec", "--onnx", str(path), "--out", str(tmp_path / f"{index}.engine")]
            )
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err, err


# -- engine sidecars -----------------------------------------------------------------------


def engine_files(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """An engine, the ONNX it was built from, and the sidecar record karst-deploy writes."""
    onnx_file = tmp_path / "model.onnx"
    onnx.save(tiny_classifier(provenance=PROVENANCE), str(onnx_file))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"serialized plan bytes")
    record = make_sidecar(
        engine_sha256=sha256_file(engine),
        environment=ORIN,
        onnx={"path": str(onnx_file), "sha256": sha256_file(onnx_file)},
        precision={"requested": "fp32", "passed": True},
        profile={"input": "images", "min": [1, 3, 8, 8]},
        builder={"version_compatible": True, "hardware_compat": "none", "dla_core": None},
        build_command=BuildOptions().command(str(onnx_file), engine),
        provenance=PROVENANCE,
    )
    return engine, onnx_file, record


def read_engine(engine: Path, onnx_file: Path) -> Callable[[], Any]:
    def read():
        record = read_sidecar(engine)
        check_sidecar(record, engine, ORIN)
        engine_source_precision(engine, onnx_file)

    return read


def test_the_valid_sidecar_is_accepted(tmp_path):
    engine, onnx_file, record = engine_files(tmp_path)
    sidecar_path(engine).write_text(json.dumps(record))
    assert refusal(read_engine(engine, onnx_file)) is None


def test_sidecar_key_corruptions(tmp_path):
    from karst_deploy.backends.tensorrt.sidecar import _NESTED, _SCHEMA

    engine, onnx_file, record = engine_files(tmp_path)
    cases = list(key_corruptions(record, _SCHEMA, _NESTED))
    cases += [("provenance", {**record, "provenance": {**PROVENANCE, "img_size": "8"}})]
    assert len(cases) >= 200
    refused = 0
    for key, corrupted in cases:
        sidecar_path(engine).write_text(json.dumps(corrupted))
        message = refusal(read_engine(engine, onnx_file))
        if message is not None:
            refused += 1
            assert str(engine) in message, (key, message)
            if "sha256" not in message and "was built" not in message:  # a mismatch, not a key
                assert f"'{key[:60]}" in message or "missing" in message, (key, message)
    assert refused >= 180


@pytest.mark.parametrize(
    ("label", "edit", "message"),
    [
        ("junk-version", {"tensorrt_version": "junk"}, "'tensorrt_version'"),
        ("other-engine-hash", {"engine_sha256": "b" * 64}, "sha256 differs"),
        ("other-onnx-hash", {"onnx": {"path": "x.onnx", "sha256": "c" * 64}}, "not from"),
        ("ampere-on-orin", {"builder": {"hardware_compat": "ampere+"}}, "Jetson"),
        ("later-tensorrt", {"tensorrt_version": "10.9.0"}, "built with TensorRT 10.9.0"),
    ],
)
def test_named_sidecar_tampering(tmp_path, label, edit, message):
    engine, onnx_file, record = engine_files(tmp_path)
    sidecar_path(engine).write_text(json.dumps({**record, **edit}))
    refused = refusal(read_engine(engine, onnx_file))
    assert refused is not None and message in refused and str(engine) in refused, refused


@pytest.mark.parametrize("label", sorted(RAW_TEXTS))
def test_sidecar_text_corruptions(tmp_path, label):
    engine, onnx_file, _ = engine_files(tmp_path)
    sidecar_path(engine).write_text(RAW_TEXTS[label])
    message = refusal(read_engine(engine, onnx_file))
    assert message is not None and str(sidecar_path(engine)) in message, message


def test_a_dangling_or_special_sidecar_is_refused_not_ignored(tmp_path):
    import os

    engine, onnx_file, _ = engine_files(tmp_path)
    sidecar_path(engine).symlink_to(tmp_path / "gone.json")
    message = refusal(read_engine(engine, onnx_file))
    assert message is not None and "does not exist" in message and "symbolic link" in message
    sidecar_path(engine).unlink()
    os.mkfifo(sidecar_path(engine))  # never opened: reading a FIFO would block
    message = refusal(read_engine(engine, onnx_file))
    assert message is not None and "not a regular file" in message


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(
        [
            "format",
            "version",
            "engine_sha256",
            "tensorrt_version",
            "gpu",
            "onnx",
            "precision",
            "builder",
            "provenance",
        ]
    ),
    value=json_values,
)
def test_generated_sidecar_values(tmp_path_factory, key, value):
    tmp_path = tmp_path_factory.mktemp("sidecar")
    engine, onnx_file, record = engine_files(tmp_path)
    sidecar_path(engine).write_text(json.dumps({**record, key: value}))
    message = refusal(read_engine(engine, onnx_file))
    if message is not None:
        assert str(engine) in message
