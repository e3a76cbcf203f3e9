"""The exit-code policy's helpers: OSError classification, clipping echoed values, ranges."""

from __future__ import annotations

import errno
import os

import pytest

from karst_deploy.errors import (
    BAD_INPUT,
    ECHO_LIMIT,
    ENVIRONMENT,
    InputError,
    check_range,
    clip,
    clip_words,
    os_error,
    with_flags,
)


@pytest.mark.parametrize(
    ("number", "code"),
    [
        (errno.EISDIR, BAD_INPUT),
        (errno.ENOTDIR, BAD_INPUT),
        (errno.ENOENT, BAD_INPUT),
        (errno.ENAMETOOLONG, BAD_INPUT),
        (errno.ENOSPC, ENVIRONMENT),
        (errno.EDQUOT, ENVIRONMENT),
        (errno.EROFS, ENVIRONMENT),
        (errno.EACCES, ENVIRONMENT),
        (errno.EIO, ENVIRONMENT),
    ],
)
def test_os_errors_are_bad_paths_or_the_environment(number, code):
    error = os_error(OSError(number, os.strerror(number), "/data/out.onnx"))
    assert error.exit_code == code
    assert "/data/out.onnx" in str(error) and errno.errorcode[number] in str(error)


def test_long_values_are_clipped_once():
    name = "n" * 100_000
    assert clip("short") == "short"
    clipped = clip(name)
    assert len(clipped) < ECHO_LIMIT + 30 and "(100000 characters)" in clipped
    message = clip_words(f"Unknown backbone '{name}', see the list.")
    assert len(message) < 300 and message.endswith("see the list.")
    path = "/d" * 300  # 600 characters: a long but real path stays whole
    assert clip_words(f"cannot read {path}") == f"cannot read {path}"


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (10, True), (0, False), (11, False), (float("inf"), False), (float("nan"), False)],
)
def test_ranges_name_the_flag(value, ok):
    if ok:
        check_range("--rounds", value, 1, 10)
    else:
        with pytest.raises(InputError, match="--rounds must be"):
            check_range("--rounds", value, 1, 10)


def test_library_errors_name_parameters_and_the_cli_shows_flags(capsys):
    from karst_deploy.bench import bench
    from karst_deploy.cli import handle_error

    with pytest.raises(InputError, match=r"^rounds must be at least 2") as refused:
        bench({"base": "base.onnx"}, baseline="base", rounds=1)
    assert refused.value.parameters == ("rounds", "warmup", "sessions")
    assert handle_error(refused.value) == BAD_INPUT
    shown = " ".join(capsys.readouterr().err.split())
    assert "--rounds must be at least 2, --warmup at least 0 and --sessions at least 1" in shown


def test_only_the_parameter_word_becomes_a_flag():
    error = InputError(
        "atol_scale is -1 for 'atol_scale/data.onnx'; calib_samples and samples differ; data.npz",
        parameters=("atol_scale", "samples", "data"),
    )
    assert with_flags(error) == (
        "--atol is -1 for 'atol_scale/data.onnx'; calib_samples and --samples differ; data.npz"
    )
    assert with_flags(InputError("no parameters here: samples")) == "no parameters here: samples"
