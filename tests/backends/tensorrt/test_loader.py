"""`build-engine`: refuses bad input before touching TensorRT, explains a missing TensorRT,
emits trtexec commands anywhere, and (with TensorRT and a GPU) builds verified engines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from karst_deploy.backends.tensorrt import BatchProfile, BuildOptions, build_engine, read_sidecar
from karst_deploy.errors import InputError, OutputExistsError, with_flags
from karst_deploy.files import sha256_file
from tests.backends.tensorrt.graphs import save, tiny_classifier
from tests.backends.tensorrt.needs import needs_tensorrt_gpu, without_tensorrt
from tests.cli_helpers import run_cli


def build_engine_cli(*args: object):
    return run_cli("build-engine", *args)


@pytest.fixture
def fp16_onnx(tmp_path):
    return save(tiny_classifier("fp16", "fp16"), tmp_path / "model.onnx")


@without_tensorrt
def test_without_tensorrt_it_exits_3_saying_how_to_get_it(fp16_onnx, tmp_path):
    result = build_engine_cli("--onnx", fp16_onnx, "--out", tmp_path / "model.engine")
    assert result.returncode == 3 and "Traceback" not in result.stderr  # environment
    assert "JetPack" in result.stderr and "karst-deploy[tensorrt]" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"onnx": "missing.onnx"}, "does not exist"),
        ({"fp16": True}, "already fp16"),
        ({"batch": BatchProfile(1, 1, 4), "onnx_batch": 8}, "fixed batch of 8"),
    ],
)
def test_bad_input_is_refused_before_tensorrt(kwargs, message, tmp_path):
    onnx_file = tmp_path / kwargs.pop("onnx", "model.onnx")
    if not str(onnx_file).endswith("missing.onnx"):
        save(tiny_classifier("fp16", "fp16", batch=kwargs.pop("onnx_batch", "batch")), onnx_file)
    with pytest.raises(InputError, match=message):
        build_engine(onnx_file, tmp_path / "model.engine", BuildOptions(**kwargs), progress=False)
    assert not (tmp_path / "model.engine").exists()


def test_the_cli_names_the_bad_flag_and_exits_2(fp16_onnx, tmp_path):
    result = build_engine_cli(
        "--onnx", fp16_onnx, "--out", tmp_path / "m.engine", "--batch", "8,1,4"
    )
    assert result.returncode == 2 and "--batch" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.engine").exists()


def test_an_existing_engine_is_not_overwritten(fp16_onnx, tmp_path):
    out = tmp_path / "model.engine"
    out.write_bytes(b"an engine built earlier")
    with pytest.raises(OutputExistsError, match="Pass force=True"):  # before importing TensorRT
        build_engine(fp16_onnx, out, progress=False)
    assert out.read_bytes() == b"an engine built earlier"


def test_emit_trtexec_needs_no_tensorrt(fp16_onnx, tmp_path):
    out = tmp_path / "model.engine"
    result = run_cli(
        "emit-trtexec", "--onnx", fp16_onnx, "--out", out, "--batch", "1,4,8", "--json"
    )
    assert result.returncode == 0, result.stderr
    ten, eleven = json.loads(result.stdout)
    assert (ten["tensorrt"], eleven["tensorrt"]) == ("10.x", "11.x")
    assert f"--saveEngine={out}" in ten["build"] and "--stronglyTyped" in ten["build"]
    assert "--maxShapes=images:8x3x8x8" in eleven["build"]
    assert "--useCudaGraph" in ten["timing"] and "--useCudaGraph" not in eleven["timing"]
    only = run_cli(
        "emit-trtexec", "--onnx", fp16_onnx, "--out", out, "--tensorrt-version", "11", "--json"
    )
    assert [c["tensorrt"] for c in json.loads(only.stdout)] == ["11.x"]
    text = run_cli("emit-trtexec", "--onnx", fp16_onnx, "--out", out)
    assert text.returncode == 0 and "trtexec \\" in text.stdout and not out.exists()
    # The old spelling, `build-engine --emit-trtexec`, still works for one release.
    new = run_cli("emit-trtexec", "--onnx", fp16_onnx, "--out", out, "--json")
    old = build_engine_cli("--onnx", fp16_onnx, "--out", out, "--emit-trtexec", "--json")
    assert old.returncode == 0 and json.loads(old.stdout) == json.loads(new.stdout)
    assert "emit-trtexec command" in old.stderr and not out.exists()


# -- with TensorRT and a GPU ------------------------------------------------------------------

PRECISION_CASES = [("fp32", "fp32"), ("fp16", "fp16"), ("fp16", "fp32"), ("fp32", "int8")]


def ort_logits(onnx_file, images):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@needs_tensorrt_gpu
@pytest.mark.parametrize(("conv", "head"), PRECISION_CASES)
def test_engines_run_in_the_requested_precision_and_match_onnx_runtime(conv, head, tmp_path):
    from karst_deploy.backends.tensorrt import TensorRTRunner

    onnx_file = save(tiny_classifier(conv, head), tmp_path / "model.onnx")
    out = tmp_path / "model.engine"
    cache = tmp_path / "timing.cache"
    options = BuildOptions(batch=BatchProfile(1, 2, 4), timing_cache=cache)
    result = build_engine(onnx_file, out, options, progress=False)
    sidecar = read_sidecar(out)
    assert result.precision.passed and sidecar["engine_sha256"] == sha256_file(out)
    assert sidecar["onnx"]["sha256"] == sha256_file(onnx_file) and cache.stat().st_size > 0
    images = np.random.default_rng(0).standard_normal((6, 3, 8, 8), dtype=np.float32)
    with TensorRTRunner(out) as runner:  # 6 > max batch 4: runs in two chunks
        logits = runner.infer(images)
    reference = ort_logits(onnx_file, images)
    scale = max(1.0, float(np.abs(reference).max()))
    atol = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}[result.precision.requested]
    assert np.abs(logits - reference).max() <= atol * scale
    with pytest.raises(OutputExistsError):
        build_engine(onnx_file, out, options, progress=False)


@needs_tensorrt_gpu
def test_fp16_builder_flag_is_a_tensorrt_10_path(tmp_path):
    import tensorrt

    onnx_file = save(tiny_classifier(), tmp_path / "model.onnx")
    if int(tensorrt.__version__.split(".")[0]) >= 11:
        with pytest.raises(InputError, match="removed"):
            build_engine(onnx_file, tmp_path / "m.engine", BuildOptions(fp16=True), progress=False)
        assert not (tmp_path / "m.engine").exists()
    else:
        result = build_engine(
            onnx_file, tmp_path / "m.engine", BuildOptions(fp16=True), progress=False
        )
        assert result.precision.requested == "fp16" and result.weakly_typed_fp16
        assert result.to_dict()["builder"]["fp16_flag"]


@pytest.mark.parametrize(
    ("gpu", "capability", "refused"),
    [
        ("Orin", "8.7", True),
        ("NVIDIA Jetson AGX Thor", "11.0", True),
        ("NVIDIA A100", "8.0", False),
    ],
)
def test_hardware_compat_is_refused_before_a_build_on_a_jetson(gpu, capability, refused):
    from karst_deploy.backends.tensorrt.loader import refuse_unsupported_target
    from karst_deploy.backends.tensorrt.sidecar import RuntimeEnvironment

    here = RuntimeEnvironment(
        tensorrt_version="10.3.0", gpu_name=gpu, compute_capability=capability
    )
    refuse_unsupported_target(BuildOptions(), here)  # the default is always buildable
    options = BuildOptions(hardware_compat="ampere+")
    if refused:
        with pytest.raises(InputError, match=r"^hardware_compat ampere\+.*is a Jetson") as no:
            refuse_unsupported_target(options, here)
        assert with_flags(no.value).startswith("--hardware-compat ampere+")
    else:
        refuse_unsupported_target(options, here)
