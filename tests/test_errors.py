"""The exit-code policy's helpers (OSError classification, clipping echoed values, ranges) and
the vocabulary rule: library errors name parameters, the CLI shows them as its flags."""

from __future__ import annotations

import ast
import errno
import os
import re
from pathlib import Path

import pytest

import karst_deploy
from karst_deploy.adapters import load_adapted_model
from karst_deploy.backends.tensorrt import BuildOptions
from karst_deploy.cli import COMMAND_FLAGS, app
from karst_deploy.errors import (
    BAD_INPUT,
    ECHO_LIMIT,
    ENVIRONMENT,
    PARAMETER_FLAGS,
    InputError,
    check_range,
    clip,
    clip_words,
    flag_for,
    os_error,
    with_flags,
)
from karst_deploy.placement import SptRequest
from tests.cli_helpers import run_cli

V1 = Path(__file__).parent / "fixtures" / "v1"


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


def test_a_boolean_is_named_with_its_value_and_a_count_is_not_a_parameter():
    error = InputError(
        "the model has timm's pretrained weights; drop pretrained=True or pass use_cache=False; "
        "after 2 rounds, add rounds.",
        parameters=("pretrained", "use_cache", "rounds"),
    )
    assert with_flags(error) == (
        "the model has timm's pretrained weights; drop --pretrained or pass --no-calib-cache; "
        "after 2 rounds, add --rounds."
    )
    batches = InputError("batches must list positive batch sizes.", parameters=("batches",))
    assert with_flags(batches).startswith("--batches must")  # sensitivity's flag
    assert with_flags(batches, COMMAND_FLAGS["bench"]).startswith("--batch-sizes must")


def our_flags() -> dict[str, set[str]]:
    """Every flag of the `karst-deploy` app, per command ("" for the root's), read from the
    click commands typer builds: the CLI's vocabulary, never a hand-kept list."""
    import typer

    group = typer.main.get_command(app)
    commands = {"": group, **group.commands}
    return {
        name: {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o[:2] == "--"}
        for name, command in commands.items()
    }


LIBRARY = Path(karst_deploy.__file__).parent
#: Library error messages that name one of our flags on purpose: (file, flag) -> why. Flags
#: of other tools (trtexec's, torchrun's) are not ours and need no entry unless spelled the same.
NAMES_A_FLAG = {
    ("backends/tensorrt/sidecar.py", "--force"): "quotes the engine's recorded build command "
    "(its sidecar's build_command) with --force appended: a command line to copy as it is",
}
FLAG_WORD = re.compile(r"--[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*")


def _error_messages() -> list[tuple[str, int, ast.AST]]:
    """(file, line, node) of every raise and every `...Error(...)` call outside cli.py."""
    found = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path == LIBRARY / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            called = getattr(node, "func", None)
            name = getattr(called, "id", getattr(called, "attr", ""))
            if (isinstance(node, ast.Raise) and node.exc is not None) or (
                isinstance(node, ast.Call) and name.endswith(("Error", "Failure"))
            ):
                found.append((path.relative_to(LIBRARY).as_posix(), node.lineno, node))
    return found


def test_library_error_messages_name_no_flag_of_ours():
    ours = set().union(*our_flags().values())
    named: dict[tuple[str, str], set[int]] = {}
    for file, line, node in _error_messages():
        for text in (n.value for n in ast.walk(node) if isinstance(n, ast.Constant)):
            for flag in FLAG_WORD.findall(text) if isinstance(text, str) else ():
                if flag in ours:
                    named.setdefault((file, flag), set()).add(line)
    unexplained = {key: sorted(lines) for key, lines in named.items() if key not in NAMES_A_FLAG}
    assert not unexplained, f"name the parameter instead (with_flags shows it): {unexplained}"
    assert set(NAMES_A_FLAG) <= set(named)  # no stale exemption


def test_every_parameter_a_library_error_names_is_a_flag_of_the_cli():
    flags = our_flags()
    every = set().union(*flags.values())
    assert {flag_for(p) for p in PARAMETER_FLAGS} <= every
    for command, table in COMMAND_FLAGS.items():
        assert set(table.values()) <= flags[command]
    for file, line, node in _error_messages():
        for keyword in getattr(node, "keywords", ()):
            if keyword.arg == "parameters" and isinstance(keyword.value, ast.Tuple):
                literal = [e.value for e in keyword.value.elts if isinstance(e, ast.Constant)]
                assert {flag_for(p) for p in literal} <= every, f"{file}:{line} {literal}"


# A library refusal as a Python caller reads it (parameters) and as the CLI shows it (flags):
# one placement request, one TensorRT build option, one adapter storage check.
SITES = {
    "placement request": (
        lambda tmp: SptRequest(1000, sigma=-1.0),
        "sigma is -1.0; expected a positive number",
        ["train", "--backbone", "vit_tiny_patch16_224", "--data", "digits", "--out", "{tmp}/run",
         "--placement", "spt", "--budget", "1k", "--sigma", "-1"],
        "--sigma is -1.0; expected a positive number",
    ),
    "tensorrt options": (
        lambda tmp: BuildOptions(hardware_compat="hopper+"),
        "hardware_compat 'hopper+': choose one of none, ampere+",
        ["emit-trtexec", "--onnx", "{tmp}/m.onnx", "--out", "{tmp}/m.engine",
         "--hardware-compat", "hopper+"],
        "--hardware-compat 'hopper+': choose one of none, ampere+",
    ),
    "adapter storage": (
        lambda tmp: load_adapted_model(V1 / "lora", pretrained=True),
        "not trained on timm's pretrained weights; drop pretrained=True.",
        ["merge", "--adapter", V1 / "lora", "--out", "{tmp}/m.safetensors", "--pretrained"],
        "not trained on timm's pretrained weights; drop --pretrained.",
    ),
}  # fmt: skip


@pytest.mark.parametrize("site", list(SITES))
def test_python_callers_read_parameters_and_cli_users_flags(site, tmp_path):
    call, message, argv, shown = SITES[site]
    with pytest.raises(InputError) as refused:
        call(tmp_path)
    assert message in str(refused.value) and "--" not in str(refused.value)
    result = run_cli(*(str(a).format(tmp=tmp_path) for a in argv))
    assert result.returncode == BAD_INPUT and shown in " ".join(result.stderr.split())
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
