"""Build options: batch profiles, validation and the rebuild command they produce."""

from __future__ import annotations

import shlex

import pytest

from karst_deploy.backends.tensorrt.onnx_graph import summarize_onnx
from karst_deploy.backends.tensorrt.options import (
    DEFAULT_BATCH,
    BatchProfile,
    BuildOptions,
    parse_batch_profile,
    resolve_request,
)
from karst_deploy.errors import InputError, with_flags
from tests.backends.tensorrt.graphs import save, tiny_classifier


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8", BatchProfile(8, 8, 8)),
        ("1,8,32", BatchProfile(1, 8, 32)),
        (" 1, 1 ,4", BatchProfile(1, 1, 4)),
    ],
)
def test_batch_profiles_parse(text, expected):
    assert parse_batch_profile(text) == expected


@pytest.mark.parametrize("text", ["0", "8,4,16", "1,8", "a,b,c", "1,2,3,4", "-1,1,1"])
def test_bad_batch_profiles_name_the_parameter_and_the_cli_the_flag(text):
    with pytest.raises(InputError, match=r"^batch ") as refused:
        parse_batch_profile(text)
    assert with_flags(refused.value).startswith("--batch ")


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"workspace_mib": 0}, "--workspace"),
        ({"builder_optimization_level": 6}, "--builder-opt-level"),
        ({"dla_core": -1}, "--dla-core"),
        ({"hardware_compat": "hopper+"}, "--hardware-compat"),
        ({"dla_core": 0, "hardware_compat": "ampere+"}, "--dla-core and --hardware-compat"),
    ],
)
def test_bad_options_name_the_parameter_and_the_cli_the_flag(kwargs, flag):
    with pytest.raises(InputError, match=f"^{next(iter(kwargs))} ") as refused:
        BuildOptions(**kwargs)
    assert with_flags(refused.value).startswith(f"{flag} ")


def test_command_round_trips_every_option(tmp_path):
    options = BuildOptions(
        batch=BatchProfile(1, 4, 16),
        workspace_mib=2048,
        timing_cache=tmp_path / "cache bin",
        builder_optimization_level=5,
        dla_core=1,
        version_compatible=True,
        fp16=True,
        precision_check=False,
    )
    args = shlex.split(options.command("m.onnx", "m.engine", force=True))
    assert args[:6] == ["karst-deploy", "build-engine", "--onnx", "m.onnx", "--out", "m.engine"]
    for flag, value in [
        ("--batch", "1,4,16"),
        ("--workspace", "2048"),
        ("--timing-cache", str(tmp_path / "cache bin")),
        ("--builder-opt-level", "5"),
        ("--dla-core", "1"),
    ]:
        assert args[args.index(flag) + 1] == value
    assert {"--version-compat", "--fp16", "--no-precision-check", "--force"} <= set(args)
    assert "--hardware-compat" not in args  # defaults are left out


def test_request_follows_the_onnx_batch_and_precision(tmp_path):
    dynamic = summarize_onnx(save(tiny_classifier("fp16", "fp16"), tmp_path / "d.onnx"))
    fixed = summarize_onnx(save(tiny_classifier(batch=4), tmp_path / "f.onnx"))
    assert resolve_request(dynamic, BuildOptions()).batch == DEFAULT_BATCH
    assert resolve_request(dynamic, BuildOptions()).precision == "fp16"
    assert resolve_request(fixed, BuildOptions()).batch == BatchProfile(4, 4, 4)
    with pytest.raises(InputError, match="fixed batch of 4"):
        resolve_request(fixed, BuildOptions(batch=BatchProfile(1, 4, 8)))


def test_fp16_flag_is_only_for_fp32_onnx(tmp_path):
    fp32 = summarize_onnx(save(tiny_classifier(), tmp_path / "a.onnx"))
    int8 = summarize_onnx(save(tiny_classifier("int8", "int8"), tmp_path / "b.onnx"))
    request = resolve_request(fp32, BuildOptions(fp16=True))
    assert request.precision == "fp16" and request.weakly_typed_fp16
    with pytest.raises(InputError, match="already int8"):
        resolve_request(int8, BuildOptions(fp16=True))
    with pytest.raises(InputError, match="DLA runs fp16 and int8 only"):
        resolve_request(fp32, BuildOptions(dla_core=0))
