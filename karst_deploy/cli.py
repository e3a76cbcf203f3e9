"""The `karst-deploy` command line.

Each command parses options, calls one library function and prints its result: a rich
table for people, JSON with ``--json``. Heavy imports happen inside the commands so that
``--help`` is instant. Exit codes follow the one table in `karst_deploy.errors`: a
`KarstDeployError` becomes a one-paragraph message on stderr and its exit code (2 bad input,
1 failed verification, 3 environment); an `OSError` is classified by `errors.os_error`;
anything else is an internal error (exit 70), with its traceback only under ``--debug`` or
``KARST_DEPLOY_DEBUG=1``.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperCommand
from typer.exceptions import Abort, Exit, TyperException

from karst_deploy import __version__
from karst_deploy.errors import (
    ENVIRONMENT,
    INTERNAL_ERROR,
    INTERRUPTED,
    REPORT_URL,
    KarstDeployError,
    check_range,
    clip,
    clip_words,
    os_error,
    with_flags,
)

app = typer.Typer(
    name="karst-deploy",
    help="Fold KARST/KAdaptation/LoRA/SPT adapters into ViTs, export ONNX, build TensorRT "
    "engines, and prove accuracy parity and zero added latency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich markup would eat bracketed text such as "[lr/10]".
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])

_debug = False


def debug_enabled() -> bool:
    """``--debug`` was given or ``KARST_DEPLOY_DEBUG`` is set to a true value."""
    return _debug or os.environ.get("KARST_DEPLOY_DEBUG", "").lower() in ("1", "true", "yes")


def print_error(message: str) -> None:
    """One unwrapped paragraph on stderr."""
    from karst_deploy.progress import stderr_console

    stderr_console().print(f"[bold red]error:[/] {escape(clip_words(message))}", highlight=False)


def _where(error: BaseException) -> str:
    """``file:line in function`` of the deepest frame, and of the deepest karst-deploy frame."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    ours = [f for f in frames if f"{os.sep}karst_deploy{os.sep}" in f.filename]
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}"
    if ours and ours[-1] is not frames[-1]:
        where += f" (called from {ours[-1].filename}:{ours[-1].lineno} in {ours[-1].name})"
    return where


#: Library parameters a command gives another flag than `errors.PARAMETER_FLAGS` does.
COMMAND_FLAGS: dict[str, dict[str, str]] = {
    "bench": {"batches": "--batch-sizes"},
}


def handle_error(error: Exception, command: str | None = None) -> int:
    """Print `error` as one paragraph (plus the traceback under --debug); its exit code.

    Library messages name parameters; they are shown as `command`'s flags (`with_flags`).
    """
    if debug_enabled():
        traceback.print_exception(error, file=sys.stderr)
    if isinstance(error, OSError):
        error = os_error(error)
    elif isinstance(error, MemoryError):
        print_error(
            "Out of memory; reduce the batch size, image count or model size, or use a machine "
            "with more memory."
        )
        return ENVIRONMENT
    if isinstance(error, KarstDeployError):
        print_error(with_flags(error, COMMAND_FLAGS.get(command)))
        return error.exit_code
    print_error(
        f"internal error: {type(error).__name__} in {_where(error)}: {clip(error)}. This is a "
        f"bug in karst-deploy {__version__}; please report it at {REPORT_URL} with the command "
        "you ran and its output under --debug (or KARST_DEPLOY_DEBUG=1), which adds the traceback."
    )
    return INTERNAL_ERROR


def metavar(param: Any) -> str | None:
    """``--out PATH``, ``--rounds N``, ``--lr X``, ``--backbone BACKBONE``; flags get none."""
    if param.is_flag or param.metavar is not None or not param.opts:
        return param.metavar
    described = getattr(param, "type_descriptor", None)
    if described is not None and described.is_path:
        return "PATH"
    annotation = getattr(described, "annotation", None)
    if annotation is int:
        return "N"
    if annotation is float:
        return "X"
    return max(param.opts, key=len).lstrip("-").upper().replace("-", "_")


class Command(TyperCommand):
    """A command whose --help reads like the ecosystem's: ``--force``, ``--out PATH``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            param.metavar = metavar(param)


def examples(*lines: str) -> str:
    """An epilog of real example command lines, printed as written (click's \\b marker)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def command(name: str, *example_lines: str) -> Callable[[F], F]:
    """Register a command whose errors print as one paragraph with their exit code, and
    whose --help ends with `example_lines`."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except (Exit, Abort, TyperException):
                raise
            except Exception as error:  # the exit-code table: every exception gets its code
                raise typer.Exit(handle_error(error, name)) from None

        app.command(name, cls=Command, epilog=examples(*example_lines))(wrapper)
        return function

    return decorate


#: The only way timm's pretrained weights are downloaded for an adapter: the user asks.
Pretrained = Annotated[
    bool,
    typer.Option(
        "--pretrained",
        help="Let timm download the pretrained backbone weights an adapter was trained on "
        "(an adapter file alone never triggers a download).",
    ),
]


#: CPU threads of every compute command; the default is `karst_deploy.threads`'s policy.
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="CPU threads for PyTorch and ONNX Runtime (default: the available cores minus "
        "those the load average shows busy, at least 1; KARST_DEPLOY_THREADS sets it).",
    ),
]


def _use_threads(requested: int | None) -> int:
    """Set PyTorch's threads for this command (`karst_deploy.threads` policy); the count,
    which commands pass on to ONNX Runtime."""
    check_flags(threads=requested)
    from karst_deploy.threads import apply_threads

    return apply_threads(requested).threads


#: Sane ranges of the numeric flags, flag -> (low, high); checked before any work starts.
SEED_MAX = 2**32 - 1
FLAG_RANGES: dict[str, tuple[float, float]] = {
    "--seed": (0, SEED_MAX),
    "--threads": (1, 1024),
    "--img-size": (8, 4096),
    "--num-classes": (1, 100_000),
    "--samples": (1, 10_000),
    "--images": (1, 100_000),
    "--batch-size": (1, 4096),
    "--calib-samples": (1, 10_000),
    "--rounds": (2, 100_000),
    "--warmup": (0, 10_000),
    "--sessions": (1, 1000),
    "--workspace": (1, 1 << 20),
    "--builder-opt-level": (0, 5),
    "--dla-core": (0, 15),
    "--tensorrt-version": (10, 11),
    "--epochs": (1, 100_000),
    "--warmup-epochs": (0, 100_000),
    "--num-workers": (0, 256),
    "--batches": (1, 100_000),
    "--drop-path": (0.0, 0.99),
    "--lr": (0.0, 10.0),
    "--weight-decay": (0.0, 10.0),
    "--warmup-lr": (0.0, 10.0),
    "--min-lr": (0.0, 10.0),
}
_OPEN_LOW = {"--lr"}  # must be > low


def check_flags(**values: float | None) -> None:
    """Refuse a numeric flag outside `FLAG_RANGES`, naming it (keyword: flag without --)."""
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        low, high = FLAG_RANGES[flag]
        check_range(flag, value, low, high, low_open=flag in _OPEN_LOW)


AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
JsonOut = Annotated[
    Path | None, typer.Option("--json-out", help="Also write the result as JSON to this file.")
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite the output files if they exist.")]


def refuse_outputs(force: bool, *paths: Path | None) -> None:
    """Refuse existing output files before any work starts (not after minutes of it)."""
    from karst_deploy.files import refuse_existing

    for path in paths:
        if path is not None:
            refuse_existing(path, force)


def emit(
    data: dict[str, Any] | list[Any], as_json: bool, json_out: Path | None, force: bool
) -> None:
    """``--json``: the result on stdout; ``--json-out PATH``: the same JSON, written atomically."""
    from karst_deploy.report.render import print_json

    if json_out is not None:
        from karst_deploy.files import write_json

        write_json(json_out, data, force=force)
    if as_json:
        print_json(data)


def show(*renderables: Any, console: Any = None) -> None:
    from karst_deploy.report.render import show as render

    render(*renderables, console=console)


def wrote(as_json: bool, *paths: Path | str | None) -> None:
    """The closing line, what was written where (on stderr under --json: stdout is JSON)."""
    from karst_deploy.progress import stderr_console
    from karst_deploy.report.render import stdout_console

    written = ", ".join(str(p) for p in paths if p is not None)
    if written:
        console = stderr_console() if as_json else stdout_console()
        show(f"[green]wrote[/] {escape(written)}", console=console)


#: Old spellings kept for one release, hidden from --help: (command, old) -> new.
RENAMED_FLAGS = {
    ("verify-parity", "--json"): "--json-out",
    ("bench", "--json"): "--json-out",
    ("bench", "--batch"): "--batch-sizes",
}


def renamed(argv: list[str]) -> list[str]:
    """Rewrite a renamed flag to its new name, with a warning on stderr.

    ``--json PATH`` of verify-parity and bench became ``--json-out PATH`` (``--json`` now
    prints to stdout in every command): the old form is recognised by the value after it,
    since neither command takes a positional argument.
    """
    command = next((a for a in argv if not a.startswith("-")), None)
    out: list[str] = []
    for arg, after in zip(argv, [*argv[1:], "-"], strict=True):
        flag, eq, value = arg.partition("=")
        new = RENAMED_FLAGS.get((command, flag))
        if new is None or (flag == "--json" and not eq and after.startswith("-")):
            out.append(arg)
            continue
        print_warning(f"{command} {flag} is now {new}; the old spelling goes in the next release.")
        out.append(f"{new}={value}" if eq else new)
    return out


def print_warning(message: str) -> None:
    from karst_deploy.progress import stderr_console

    stderr_console().print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"karst-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Print the full traceback of an error (also KARST_DEPLOY_DEBUG=1)."
    ),
) -> None:
    """karst-deploy: adapters in, proven-equal engines out."""
    global _debug
    _debug = debug


@command("doctor", "karst-deploy doctor", "karst-deploy doctor --json")
def doctor(as_json: AsJson = False, json_out: JsonOut = None, force: Force = False):
    """Versions, CUDA, ONNX Runtime providers, TensorRT (and why not), CPU."""
    from karst_deploy.doctor import diagnose
    from karst_deploy.report.tables import doctor_table

    report = diagnose()
    emit(report.to_dict(), as_json, json_out, force)
    if not as_json:
        table, hints = doctor_table(report)
        show(table, *hints)


@command(
    "merge",
    "karst-deploy merge --adapter runs/karst --checkpoint backbone.safetensors "
    "--out merged.safetensors",
    "karst-deploy merge --adapter peft-lora/ --backbone vit_base_patch16_224 "
    "--out merged.safetensors",
)
def merge_command(
    adapter: Path = typer.Option(
        ..., "--adapter", help="Adapter directory (adapter_config.json + adapter.safetensors)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Merged checkpoint to write: .safetensors, or .pth/.pt/.bin (torch)."
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", help="timm name; checked against the adapter's (PEFT: required)."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Backbone checkpoint the adapter was trained on."
    ),
    img_size: int | None = typer.Option(
        None, "--img-size", help="PEFT adapter only (it records no backbone): input size."
    ),
    model_kwargs: str | None = typer.Option(
        None, "--model-kwargs", help="PEFT adapter only: extra timm arguments as JSON."
    ),
    pretrained: Pretrained = False,
    threads: Threads = None,
    force: Force = False,
    as_json: AsJson = False,
    json_out: JsonOut = None,
):
    """Fold an adapter (ours or a PEFT one) into its backbone; write a plain timm checkpoint.

    The format follows --out's suffix: .safetensors, or .pth/.pt/.bin (torch.save state dict).
    """
    _use_threads(threads)
    from karst_deploy.adapters.merging import MergeOptions, merge_adapter_directory
    from karst_deploy.report.tables import key_value_table

    refuse_outputs(force, json_out)
    options = MergeOptions(backbone, checkpoint, pretrained, img_size, parse_kwargs(model_kwargs))
    result = merge_adapter_directory(adapter, out, options, force=force)
    emit(result.to_dict(), as_json, json_out, force)
    if not as_json:
        show(key_value_table("merged checkpoint", result.to_dict()))
    wrote(as_json, out, json_out)


# The engine options, shared by `build-engine` and `emit-trtexec`.
Onnx = Annotated[Path, typer.Option("--onnx", help="ONNX file (fp32, fp16 or QDQ-int8).")]
Profile = Annotated[
    str | None,
    typer.Option(
        "--batch", help="N or MIN,OPT,MAX batch profile (default: the ONNX's, else 1,1,8)."
    ),
]
Workspace = Annotated[int | None, typer.Option("--workspace", help="Workspace limit in MiB.")]
TimingCache = Annotated[
    Path | None,
    typer.Option("--timing-cache", help="TensorRT timing cache file, loaded and saved."),
]
OptLevel = Annotated[
    int | None,
    typer.Option("--builder-opt-level", help="Builder optimization level 0-5 (TensorRT's: 3)."),
]
DlaCore = Annotated[
    int | None,
    typer.Option("--dla-core", help="Jetson DLA core; unsupported layers fall back to the GPU."),
]
HardwareCompat = Annotated[
    str,
    typer.Option("--hardware-compat", help="none | ampere+ (desktop Ampere-or-newer portable)."),
]
VersionCompat = Annotated[
    bool, typer.Option("--version-compat", help="Runs on later TensorRT versions too (slower).")
]
Fp16 = Annotated[
    bool,
    typer.Option("--fp16", help="TensorRT 10.x only: build an fp32 ONNX in fp16 (weak typing)."),
]
NoPrecisionCheck = Annotated[
    bool,
    typer.Option(
        "--no-precision-check",
        help="Write the engine even if its layers' precision differs from the request "
        "(recorded in the sidecar).",
    ),
]


def build_options(
    batch: str | None,
    workspace: int | None,
    timing_cache: Path | None,
    builder_opt_level: int | None,
    dla_core: int | None,
    hardware_compat: str,
    version_compat: bool,
    fp16: bool,
    no_precision_check: bool,
) -> Any:
    """The flags as `BuildOptions`, numbers range-checked."""
    check_flags(workspace=workspace, builder_opt_level=builder_opt_level, dla_core=dla_core)
    from karst_deploy.backends.tensorrt import BuildOptions, parse_batch_profile

    return BuildOptions(
        batch=parse_batch_profile(batch) if batch is not None else None,
        workspace_mib=workspace,
        timing_cache=timing_cache,
        builder_optimization_level=builder_opt_level,
        dla_core=dla_core,
        hardware_compat=hardware_compat,
        version_compatible=version_compat,
        fp16=fp16,
        precision_check=not no_precision_check,
    )


@command(
    "build-engine",
    "karst-deploy build-engine --onnx merged-fp16.onnx --out merged.engine",
    "karst-deploy build-engine --onnx merged.onnx --out merged.engine --batch 1,8,32 --fp16",
)
def build_engine_command(
    onnx: Onnx,
    out: Path = typer.Option(..., "--out", help="Engine to write; its sidecar goes to OUT.json."),
    batch: Profile = None,
    workspace: Workspace = None,
    timing_cache: TimingCache = None,
    builder_opt_level: OptLevel = None,
    dla_core: DlaCore = None,
    hardware_compat: HardwareCompat = "none",
    version_compat: VersionCompat = False,
    fp16: Fp16 = False,
    no_precision_check: NoPrecisionCheck = False,
    emit_trtexec: bool = typer.Option(False, "--emit-trtexec", hidden=True),  # old spelling
    tensorrt_version: int | None = typer.Option(None, "--tensorrt-version", hidden=True),
    force: Force = False,
    as_json: AsJson = False,
    json_out: JsonOut = None,
):
    """Build a TensorRT engine, check its layers run in the requested precision, add a sidecar."""
    if emit_trtexec:  # the old spelling of `emit-trtexec`, kept for one release
        print_warning("build-engine --emit-trtexec is now the emit-trtexec command.")
        return emit_trtexec_command(
            onnx, out, batch, workspace, timing_cache, builder_opt_level, dla_core,
            hardware_compat, version_compat, fp16, tensorrt_version, as_json, json_out, force,
        )  # fmt: skip
    if tensorrt_version is not None:
        from karst_deploy.errors import InputError

        raise InputError("--tensorrt-version applies to emit-trtexec only.")
    from karst_deploy.backends.tensorrt import build_engine
    from karst_deploy.report.tables import engine_table

    refuse_outputs(force, json_out)
    options = build_options(
        batch, workspace, timing_cache, builder_opt_level, dla_core, hardware_compat,
        version_compat, fp16, no_precision_check,
    )  # fmt: skip
    result = build_engine(onnx, out, options, force=force, progress=True)
    emit(result.to_dict(), as_json, json_out, force)
    if not as_json:
        table, fallbacks = engine_table(result)
        show(table, *fallbacks)
    wrote(as_json, result.engine, result.sidecar, json_out)


@command(
    "emit-trtexec",
    "karst-deploy emit-trtexec --onnx merged-fp16.onnx --out merged.engine",
    "karst-deploy emit-trtexec --onnx merged.onnx --out merged.engine --batch 1,8,32 "
    "--tensorrt-version 10",
)
def emit_trtexec_command(
    onnx: Onnx,
    out: Path = typer.Option(..., "--out", help="Engine the commands would write."),
    batch: Profile = None,
    workspace: Workspace = None,
    timing_cache: TimingCache = None,
    builder_opt_level: OptLevel = None,
    dla_core: DlaCore = None,
    hardware_compat: HardwareCompat = "none",
    version_compat: VersionCompat = False,
    fp16: Fp16 = False,
    tensorrt_version: int | None = typer.Option(
        None, "--tensorrt-version", help="10 or 11 (default: both)."
    ),
    as_json: AsJson = False,
    json_out: JsonOut = None,
    force: Force = False,
):
    """Print the trtexec commands that build and time the engine on the device (no TensorRT
    needed here): the Jetson route, where the engine must be built on the device itself."""
    check_flags(tensorrt_version=tensorrt_version)
    from karst_deploy.backends.tensorrt import trtexec_commands
    from karst_deploy.report.tables import trtexec_lines

    refuse_outputs(force, json_out)
    options = build_options(
        batch, workspace, timing_cache, builder_opt_level, dla_core, hardware_compat,
        version_compat, fp16, False,
    )  # fmt: skip
    majors = (tensorrt_version,) if tensorrt_version is not None else (10, 11)
    commands = trtexec_commands(onnx, out, options, majors=majors)
    emit([c.to_dict() for c in commands], as_json, json_out, force)
    if not as_json:
        for line in trtexec_lines(commands):
            typer.echo(line)
    wrote(as_json, json_out)


# int8 calibration options, shared by `export --precision int8` and `convert-precision`.
Calib = Annotated[
    str | None,
    typer.Option(
        "--calib", help="int8 calibration data: digits, digits:A-B, IMAGE_DIR or FILE.npz."
    ),
]
CalibSamples = Annotated[int, typer.Option("--calib-samples", help="Calibration images.")]
CalibMethod = Annotated[str, typer.Option("--calib-method", help="minmax, entropy or percentile.")]
CalibCache = Annotated[
    bool,
    typer.Option("--calib-cache/--no-calib-cache", help="Reuse cached calibration ranges."),
]


def _parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``0.5,0.5,0.5`` -> (0.5, 0.5, 0.5); the model checks count and range."""
    from karst_deploy.errors import InputError

    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(
            f"{flag} is '{clip(text)}'; expected numbers separated by commas, e.g. "
            "0.485,0.456,0.406 (one per input channel)."
        ) from None


def parse_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--model-kwargs`` JSON -> the allow-listed timm keyword arguments."""
    from karst_deploy.jsonfile import parse_object

    if text is None:
        return None
    value = parse_object(text, "--model-kwargs")
    from karst_deploy.models import check_model_kwargs

    return check_model_kwargs(value, "--model-kwargs", "", allow_img_size=True)


@command(
    "export",
    "karst-deploy export --adapter runs/karst --checkpoint backbone.safetensors --out merged.onnx",
    "karst-deploy export --no-adapter --backbone vit_base_patch16_224 --checkpoint "
    "backbone.safetensors --num-classes 10 --out base.onnx",
    "karst-deploy export --adapter runs/karst --checkpoint backbone.safetensors --precision int8 "
    "--calib digits --out merged-int8.onnx",
)
def export_command(
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    backbone: str | None = typer.Option(
        None, "--backbone", help="timm name; required with --no-adapter, checked with --adapter."
    ),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="Adapter directory to export (ours, or a Hugging Face PEFT one)."
    ),
    no_adapter: bool = typer.Option(
        False, "--no-adapter", help="Export the plain backbone (the latency baseline)."
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Backbone checkpoint."),
    pretrained: Pretrained = False,
    unmerged: bool = typer.Option(
        False, "--unmerged", help="Keep the adapter arithmetic in the graph (no merge)."
    ),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (17 or newer)."),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size N."),
    num_classes: int | None = typer.Option(
        None,
        "--num-classes",
        help="With --no-adapter or a PEFT adapter: classifier size (PEFT: the stored head's).",
    ),
    img_size: int | None = typer.Option(
        None, "--img-size", help="With --no-adapter or a PEFT adapter: input size."
    ),
    model_kwargs: str | None = typer.Option(
        None,
        "--model-kwargs",
        help="With --no-adapter or a PEFT adapter: extra timm arguments as JSON, e.g. "
        "'{\"depth\": 6}'.",
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32, fp16 or int8 (explicit in the graph, for TensorRT 11)."
    ),
    calib: Calib = None,
    calib_samples: CalibSamples = 256,
    calib_method: CalibMethod = "minmax",
    calib_cache: CalibCache = True,
    threads: Threads = None,
    force: Force = False,
    as_json: AsJson = False,
    json_out: JsonOut = None,
):
    """Merge an adapter into its backbone and export one checked ONNX file with provenance."""
    check_flags(num_classes=num_classes, img_size=img_size, calib_samples=calib_samples)
    _use_threads(threads)
    from karst_deploy.export import ExportOptions, export_in_precision, parse_onnx_batch
    from karst_deploy.precision import CalibrationOptions
    from karst_deploy.report.tables import key_value_table

    refuse_outputs(force, json_out)
    options = ExportOptions(
        adapter, no_adapter, backbone, checkpoint, pretrained, unmerged, num_classes, img_size,
        parse_kwargs(model_kwargs), opset, parse_onnx_batch(batch),
    )  # fmt: skip
    calibration = CalibrationOptions(calib, calib_samples, calib_method, calib_cache)
    result = export_in_precision(out, options, precision, calibration, force=force, progress=True)
    emit(result.to_dict(), as_json, json_out, force)
    if not as_json:
        rows = result.summary() if hasattr(result, "summary") else result.to_dict()
        show(key_value_table(f"exported {precision} model", rows))
    wrote(as_json, out, json_out)


@command(
    "verify-parity",
    "karst-deploy verify-parity --adapter runs/karst --checkpoint backbone.safetensors "
    "--onnx merged.onnx",
    "karst-deploy verify-parity --adapter runs/karst --checkpoint backbone.safetensors "
    "--onnx merged-int8.onnx --data my_images/ --json-out parity.json",
)
def verify_parity_command(
    adapter: Path = typer.Option(
        ..., "--adapter", help="Adapter directory the ONNX came from (ours, or a PEFT one)."
    ),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to verify."),
    backbone: str | None = typer.Option(None, "--backbone", help="timm name; checked."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Backbone checkpoint."),
    pretrained: Pretrained = False,
    data: str | None = typer.Option(
        None, "--data", help="Labelled images too: digits, digits:A-B, an image folder or VTAB dir."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Split of --data (default: test if present, else val)."
    ),
    samples: int = typer.Option(64, "--samples", help="Seeded random inputs."),
    images: int = typer.Option(
        1000, "--images", help="With --data: at most this many images, spread over the split."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random inputs."),
    atol: float | None = typer.Option(
        None, "--atol", help="Replace atol_scale: max abs diff <= ATOL x max(1, max|ref|)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per inference call."),
    threads: Threads = None,
    engine: Path | None = typer.Option(
        None, "--engine", help="TensorRT engine built from --onnx: a stage after ONNX Runtime."
    ),
    stage: list[str] | None = typer.Option(
        None,
        "--stage",
        metavar="RUNNER",
        help="Also run --onnx on this runner, as a stage after ONNX Runtime (repeatable): "
        "onnxruntime-cuda, onnxruntime-tensorrt or tensorrt (built in memory).",
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write accuracy per stage and logit-difference histograms (PNG)."
    ),
    as_json: AsJson = False,
    json_out: JsonOut = None,
    force: Force = False,
):
    """Run the same inputs through unmerged, merged and ONNX Runtime, and compare the graph
    with a fresh export of the same model; exit 1 if any check fails."""
    import math

    from karst_deploy.errors import InputError

    check_flags(samples=samples, images=images, seed=seed, batch_size=batch_size, threads=threads)
    from karst_deploy.parity import verify_parity
    from karst_deploy.report.tables import parity_table, white_box_table

    if atol is not None and not (math.isfinite(atol) and atol > 0):
        raise InputError(f"--atol must be a finite positive number, got {atol}.")
    refuse_outputs(force, json_out, plot)
    threads = _use_threads(threads)
    report = verify_parity(
        onnx, adapter, backbone=backbone, checkpoint=checkpoint, pretrained=pretrained,
        data=data, split=split, samples=samples, images=images, seed=seed, atol_scale=atol,
        batch_size=batch_size, threads=threads, engine=engine, runners=stage or (),
    )  # fmt: skip
    emit(report.to_dict(), as_json, json_out, force)
    if plot is not None:  # before a failure is raised: the plot is what explains it
        from karst_deploy.report.curves import plot_parity

        plot_parity(report, plot, force=force)
    if not as_json:
        from karst_deploy.report.render import note

        show(parity_table(report))
        for text in report.notes:
            note(text)
        if report.white_box is not None:
            show(white_box_table(report.white_box))
    wrote(as_json, json_out, plot)
    report.raise_if_failed()
    if not as_json:
        show("[green]parity: every check passed[/]")


@command(
    "bench",
    "karst-deploy bench --onnx merged.onnx --baseline base.onnx",
    "karst-deploy bench --onnx merged.onnx --baseline base.onnx --unmerged unmerged.onnx "
    "--batch-sizes 1,8 --plot bench.png --json-out bench.json",
)
def bench_command(
    onnx: Path = typer.Option(..., "--onnx", help="The merged model."),
    baseline: Path = typer.Option(..., "--baseline", help="The plain backbone (--no-adapter)."),
    unmerged: Path | None = typer.Option(None, "--unmerged", help="The unmerged model, too."),
    fp16: Path | None = typer.Option(
        None, "--fp16", help="The merged model in fp16 (convert-precision), side by side."
    ),
    int8: Path | None = typer.Option(
        None, "--int8", help="The merged model in int8 QDQ (convert-precision), side by side."
    ),
    batch_sizes: str = typer.Option(
        "1,8", "--batch-sizes", help="Batch sizes to time, comma-separated."
    ),
    runner: str = typer.Option(
        "onnxruntime",
        "--runner",
        help="onnxruntime, torch, tensorrt, onnxruntime-cuda or onnxruntime-tensorrt.",
    ),
    copies: bool = typer.Option(
        True,
        "--copies/--no-copies",
        help="tensorrt runner: time host-device copies too, or GPU compute alone (as trtexec 11).",
    ),
    cuda_graph: bool = typer.Option(
        False, "--cuda-graph", help="tensorrt runner: replay one CUDA graph per batch size."
    ),
    threads: Threads = None,
    rounds: int = typer.Option(50, "--rounds", help="Measured rounds per batch size."),
    warmup: int = typer.Option(5, "--warmup", help="Unmeasured rounds per session first."),
    sessions: int = typer.Option(
        5, "--sessions", help="Fresh runtime sessions per model, in rotated creation order."
    ),
    tolerance: float = typer.Option(
        0.03, "--tolerance", help="Zero added latency: the 95% CI of merged/base within ±this."
    ),
    max_seconds: float = typer.Option(
        120.0,
        "--max-seconds",
        metavar="SECONDS",
        help="While the verdict is inconclusive, add blocks of interleaved rounds until the "
        "whole measurement would exceed this many seconds (0: never add).",
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write latency distributions (PNG)."),
    as_json: AsJson = False,
    json_out: JsonOut = None,
    force: Force = False,
):
    """Time base, merged (and unmerged) interleaved and judge zero added latency: exit 0 when
    shown, 1 when not shown, 75 when inconclusive (too noisy to decide within --max-seconds)."""
    check_flags(threads=threads, rounds=rounds, warmup=warmup, sessions=sessions)
    check_range("--tolerance", tolerance, 0.0, 1.0, low_open=True)
    check_range("--max-seconds", max_seconds, 0.0)
    from karst_deploy.bench import BenchRequest, parse_batch_sizes, run_bench
    from karst_deploy.report.plots import plot_latencies
    from karst_deploy.report.render import note
    from karst_deploy.report.tables import bench_table, verdict_lines

    threads = _use_threads(threads)
    refuse_outputs(force, json_out, plot)
    request = BenchRequest(
        onnx, baseline, unmerged, fp16, int8, parse_batch_sizes(batch_sizes), runner, copies,
        cuda_graph, threads, rounds, warmup, sessions, tolerance, max_seconds,
    )  # fmt: skip
    result = run_bench(request)
    emit(result.to_dict(), as_json, json_out, force)
    if plot is not None:
        plot_latencies(result, plot, force=force)
    if not as_json:
        show(bench_table(result), *verdict_lines(result))
        for text in result.notes:
            note(text)
    wrote(as_json, json_out, plot)
    result.raise_if_failed()


@command(
    "train",
    "karst-deploy train --backbone vit_base_patch16_224 --checkpoint backbone.safetensors "
    "--data my_images/ --out runs/karst",
    "karst-deploy train --backbone vit_tiny_patch16_224 --data digits:5-9 --method lora "
    "--epochs 20 --out runs/lora",
    "torchrun --nproc_per_node 2 -m karst_deploy train --backbone vit_base_patch16_224 "
    "--data my_images/ --placement spt --budget 0.4M --out runs/spt",
)
def train_command(
    backbone: str = typer.Option(..., "--backbone", help="timm model name."),
    data: str = typer.Option(
        ...,
        "--data",
        help="digits, digits:A-B, an image folder (train/ val/ [test/]) or a VTAB-1k directory.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Adapter directory to write (with train_log.json inside)."
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Backbone checkpoint."),
    pretrained: bool = typer.Option(
        False, "--pretrained", help="Start from timm's own pretrained weights (needs its hub)."
    ),
    method: str = typer.Option("karst", "--method", help="karst, kadaptation, lora or linear."),
    factor: int | None = typer.Option(None, "--factor", help="karst: Kronecker factor [8]."),
    rank: int | None = typer.Option(None, "--rank", help="karst, lora: rank [8]."),
    kernels: int | None = typer.Option(
        None, "--kernels", help="karst: kernels [8]; kadaptation: kernels [32]."
    ),
    alpha: float | None = typer.Option(None, "--alpha", help="karst [1], lora [8]: α (scale α/r)."),
    rescale: str | None = typer.Option(
        None, "--rescale", help="karst: channel (paper) or scalar (reference code) [channel]."
    ),
    scale: float | None = typer.Option(
        None, "--scale", help="kadaptation: ΔW scale [1; 160 with --structure pevit]."
    ),
    structure: str | None = typer.Option(
        None,
        "--structure",
        help="kadaptation: paper (n×n slow weights) or pevit (PEViT's ≈50k structure: rank-1 "
        "slow weights per q/v, scale 160, dropout 0.5, q/v bias) [paper].",
    ),
    stage_ranks: str | None = typer.Option(
        None, "--stage-ranks", help="karst: rank per Swin stage, e.g. 2,2,4,8 [--rank everywhere]."
    ),
    targets: str | None = typer.Option(
        None, "--targets", help="Layers to adapt, comma-separated, e.g. qkv,proj,fc1,fc2."
    ),
    recipe: str = typer.Option(
        "vtab",
        "--recipe",
        help="Official preset: vtab (100 cosine + 10 epochs at min lr), few-shot (karst N=2, "
        "LayerNorms trained), swin (karst N=2, stage ranks 2,2,4,8); or quick, for a first try "
        "on a CPU (10 epochs, 1 warm-up; karst 2 kernels, kadaptation 4). Explicit flags win.",
    ),
    placement: str = typer.Option(
        "uniform", "--placement", help="uniform (every target) or spt (sensitivity-aware SPT)."
    ),
    budget: str | None = typer.Option(
        None, "--budget", help="spt: trainable entries besides the head, e.g. 0.4M or 400k."
    ),
    structured: str | None = typer.Option(
        None, "--structured", help="spt: structured module, karst (default) or lora."
    ),
    sigma: float | None = typer.Option(
        None, "--sigma", help="spt: structured once P_struct/σ entries are selected [10]."
    ),
    budget_rule: str | None = typer.Option(
        None,
        "--budget-rule",
        help="spt: sweep (official τ grid, closest total, may overshoot) or exact (within 2%).",
    ),
    scores: Path | None = typer.Option(
        None,
        "--scores",
        help="spt: `karst-deploy sensitivity` output (default: computed on --data).",
    ),
    img_size: int | None = typer.Option(None, "--img-size", help="Backbone input size."),
    model_kwargs: str | None = typer.Option(
        None, "--model-kwargs", help="Extra timm arguments as JSON, e.g. '{\"depth\": 6}'."
    ),
    mean: str | None = typer.Option(
        None,
        "--mean",
        help="Normalisation mean per channel, e.g. 0.485,0.456,0.406 (one value with "
        "in_chans 1; default: the backbone's timm config); recorded in the adapter and ONNX.",
    ),
    std: str | None = typer.Option(
        None, "--std", help="Normalisation std per channel, as --mean (default: timm config)."
    ),
    threads: Threads = None,
    epochs: int | None = typer.Option(
        None, "--epochs", help="Epochs, warm-up and cool-down included [recipe: 110]."
    ),
    batch_size: int = typer.Option(
        32, "--batch-size", help="Global batch (split over torchrun processes)."
    ),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", help="AdamW weight decay [lr/10]."
    ),
    warmup_epochs: int | None = typer.Option(
        None, "--warmup-epochs", help="Linear warm-up epochs [recipe: 10]."
    ),
    cooldown_epochs: int | None = typer.Option(
        None, "--cooldown-epochs", help="Epochs at the minimum lr after the cosine [recipe: 10]."
    ),
    warmup_lr: float | None = typer.Option(None, "--warmup-lr", help="Warm-up start lr [lr/100]."),
    min_lr: float | None = typer.Option(None, "--min-lr", help="Cosine floor [lr/10]."),
    drop_path: float = typer.Option(0.1, "--drop-path", help="Stochastic depth, training only."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed, same adapter on CPU."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader worker processes."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision (CUDA only)."),
    strict_images: bool = typer.Option(
        False, "--strict-images", help="Fail on an unreadable image instead of skipping it."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also write loss and accuracy curves per epoch (PNG)."
    ),
    force: Force = False,
    as_json: AsJson = False,
    json_out: JsonOut = None,
):
    """Train adapters (and the head) on labelled images with the KARST recipe.

    Images: 8-bit and 16-bit, grayscale, palette, CMYK and alpha images are read at their
    own range into [0, 1] (alpha composited over black), resized to the backbone's input
    size (bicubic, square, aspect ratio not kept), then normalised with --mean/--std.
    A grayscale image is repeated into R, G, B for an RGB backbone; with --model-kwargs
    '{"in_chans": 1}' images are reduced to one luma channel (BT.601) instead. The class
    names (sorted sub-folders of train/) are recorded in the adapter.

    Runs unchanged under `torchrun --nproc_per_node N` (DistributedDataParallel).
    """
    check_flags(
        img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, warmup_lr=warmup_lr, min_lr=min_lr, drop_path=drop_path,
        seed=seed, num_workers=num_workers,
    )  # fmt: skip
    from karst_deploy.report.tables import train_tables
    from karst_deploy.train.options import TrainOptions, train_with_options

    _use_threads(threads)
    refuse_outputs(force, json_out, plot)
    options = TrainOptions(
        backbone, data, checkpoint, method, factor, rank, kernels, alpha, rescale, scale,
        structure, stage_ranks, targets, recipe, placement, budget, structured, sigma,
        budget_rule, scores,
        img_size, parse_kwargs(model_kwargs) or {}, epochs, batch_size, lr, weight_decay,
        warmup_epochs, cooldown_epochs, warmup_lr, min_lr, drop_path, seed, num_workers, device,
        amp, strict_images, pretrained=pretrained, mean=_parse_floats(mean, "--mean"),
        std=_parse_floats(std, "--std"),
    )  # fmt: skip
    result = train_with_options(options, out, force=force)
    if not result.is_main:
        return
    if plot is not None:
        from karst_deploy.report.curves import plot_training

        plot_training(result.log, plot, force=force)
    emit({"out": str(result.out), **result.log.to_dict()}, as_json, json_out, force)
    if not as_json:
        tables, warnings = train_tables(result, f"{method} on {data}")
        show(*tables, *warnings)
    wrote(as_json, result.out, plot, json_out)


@command(
    "sensitivity",
    "karst-deploy sensitivity --backbone vit_base_patch16_224 --checkpoint backbone.safetensors "
    "--data my_images/ --out scores.safetensors",
    "karst-deploy sensitivity --backbone vit_tiny_patch16_224 --data digits:5-9 "
    "--out scores.safetensors --plot scores.png",
)
def sensitivity_command(
    backbone: str = typer.Option(..., "--backbone", help="timm model name."),
    data: str = typer.Option(
        ..., "--data", help="Target task: digits, digits:A-B, an image folder or a VTAB-1k dir."
    ),
    out: Path = typer.Option(..., "--out", help="Scores file to write (.safetensors)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Backbone checkpoint."),
    batches: int = typer.Option(16, "--batches", help="Batches K of the SPT criterion."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fresh head and the drop-path draws."),
    shuffle_seed: int | None = typer.Option(
        None,
        "--shuffle-seed",
        help="Take the batches from a seeded permutation (official: the first K·B images).",
    ),
    img_size: int | None = typer.Option(None, "--img-size", help="Backbone input size."),
    model_kwargs: str | None = typer.Option(
        None, "--model-kwargs", help="Extra timm arguments as JSON, e.g. '{\"depth\": 6}'."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also write a PNG of each matrix's share of the sensitivity."
    ),
    mean: str | None = typer.Option(None, "--mean", help="As train --mean."),
    std: str | None = typer.Option(None, "--std", help="As train --std."),
    threads: Threads = None,
    force: bool = typer.Option(False, "--force", help="Overwrite --out (and --plot)."),
    as_json: AsJson = False,
    json_out: JsonOut = None,
):
    """SPT sensitivity: summed squared gradients of every qkv/proj/fc1/fc2 weight on --data.

    The scores feed `train --placement spt --scores FILE`.
    """
    check_flags(batches=batches, batch_size=batch_size, seed=seed, img_size=img_size)
    _use_threads(threads)
    from karst_deploy.placement import sensitivity_for_backbone
    from karst_deploy.report.tables import key_value_table

    refuse_outputs(force, json_out, plot)
    summary = sensitivity_for_backbone(
        backbone, data, out, checkpoint=checkpoint, img_size=img_size,
        model_kwargs=parse_kwargs(model_kwargs), batches=batches, batch_size=batch_size,
        seed=seed, shuffle_seed=shuffle_seed, force=force, progress=True,
        mean=_parse_floats(mean, "--mean"), std=_parse_floats(std, "--std"),
    )  # fmt: skip
    if plot is not None:  # drawn from the scores file just written
        from karst_deploy.placement import load_scores
        from karst_deploy.report.plots import plot_sensitivity

        summary["plot"] = str(plot_sensitivity(load_scores(out), plot, force=force))
    emit(summary, as_json, json_out, force)
    if not as_json:
        show(key_value_table("sensitivity scores", summary))
    wrote(as_json, out, plot, json_out)


@command(
    "convert-precision",
    "karst-deploy convert-precision --onnx merged.onnx --precision fp16 --out merged-fp16.onnx",
    "karst-deploy convert-precision --onnx merged.onnx --precision int8 --calib my_images/ "
    "--out merged-int8.onnx",
)
def convert_precision_command(
    onnx: Path = typer.Option(..., "--onnx", help="fp32 ONNX file (from karst-deploy export)."),
    precision: str = typer.Option(..., "--precision", help="fp16 or int8."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    calib: Calib = None,
    calib_samples: CalibSamples = 256,
    calib_method: CalibMethod = "minmax",
    calib_cache: CalibCache = True,
    threads: Threads = None,
    force: Force = False,
    as_json: AsJson = False,
    json_out: JsonOut = None,
):
    """Convert an fp32 ONNX to fp16, or calibrate it to symmetric int8 QDQ (for TensorRT)."""
    check_flags(calib_samples=calib_samples)
    _use_threads(threads)
    from karst_deploy.precision import CalibrationOptions, convert_precision
    from karst_deploy.report.tables import key_value_table

    refuse_outputs(force, json_out)
    calibration = CalibrationOptions(calib, calib_samples, calib_method, calib_cache)
    result = convert_precision(
        onnx, out, precision, force=force, progress=True, **calibration.kwargs()
    )
    emit(result.to_dict(), as_json, json_out, force)
    if not as_json:
        show(key_value_table(f"{precision} model", result.summary()))
    wrote(as_json, out, json_out)


@command("demo", "karst-deploy demo", "karst-deploy demo --quick --threads 1 --out /tmp/demo")
def demo_command(
    out: Path = typer.Option(
        Path("karst-deploy-demo"), "--out", help="Report directory to write (must not exist)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Reduced mode for tests/CI: shorter training, fewer bench rounds."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds adapter training, parity and bench inputs."),
    threads: Threads = None,
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print demo.json instead of tables."),
    json_out: JsonOut = None,
):
    """The whole pipeline on real digits: pretrain, train KARST, export, verify, bench, report."""
    check_flags(seed=seed, threads=threads)
    threads = _use_threads(threads)
    from karst_deploy.demo import run_demo
    from karst_deploy.demo.report import summary_tables
    from karst_deploy.report.render import note

    refuse_outputs(force, json_out)
    result = run_demo(out, quick=quick, seed=seed, force=force, threads=threads)
    emit(result.to_dict(), as_json, json_out, force)
    if not as_json:
        show(*summary_tables(result))
        if result.settings.note:
            note(result.settings.note)
    result.raise_if_failed()
    if not as_json:
        show(f"[green]demo passed[/]: report in {escape(str(out))}")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default: ``sys.argv[1:]``) and return its exit code.

    Usage errors print click's plain message (unwrapped, no box); anything that escapes a
    command or the option parsing is handled by `handle_error`.
    """
    global _debug
    _debug = False
    try:
        arguments = renamed(list(sys.argv[1:] if argv is None else argv))
        code = app(args=arguments, standalone_mode=False)
    except TyperException as error:  # usage errors: click's plain message, no box
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            print_error(error.format_message())
        return error.exit_code
    except Abort:
        return INTERRUPTED
    except Exception as error:
        return handle_error(error)
    return code if isinstance(code, int) else 0


def main() -> None:
    from karst_deploy.interrupts import exit_on_interrupt
    from karst_deploy.threads import prefer_passive_waiting

    prefer_passive_waiting()  # before torch starts OpenMP (karst_deploy.threads)

    with exit_on_interrupt(restore=False):  # SIGINT/SIGTERM: 130, temporaries removed
        sys.exit(run())
