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
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
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
)

app = typer.Typer(
    name="karst-deploy",
    help="Fold KARST/KAdaptation/LoRA/SPT adapters into ViTs, export ONNX, build TensorRT "
    "engines, and prove accuracy parity and zero added latency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
# soft_wrap: error paragraphs are never hard-wrapped (a wrapped path cannot be copied).
error_console = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

_debug = False


def debug_enabled() -> bool:
    """``--debug`` was given or ``KARST_DEPLOY_DEBUG`` is set to a true value."""
    return _debug or os.environ.get("KARST_DEPLOY_DEBUG", "").lower() in ("1", "true", "yes")


def print_error(message: str) -> None:
    """One unwrapped paragraph on stderr."""
    error_console.print(f"[bold red]error:[/] {escape(clip_words(message))}", highlight=False)


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


def handle_error(error: Exception) -> int:
    """Print `error` as one paragraph (plus the traceback under --debug); its exit code."""
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
        print_error(str(error))
        return error.exit_code
    print_error(
        f"internal error: {type(error).__name__} in {_where(error)}: {clip(error)}. This is a "
        f"bug in karst-deploy {__version__}; please report it at {REPORT_URL} with the command "
        "you ran and its output under --debug (or KARST_DEPLOY_DEBUG=1), which adds the traceback."
    )
    return INTERNAL_ERROR


def command(name: str | None = None) -> Callable[[F], F]:
    """Register a command whose errors print as one paragraph with their exit code."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except (Exit, Abort, TyperException):
                raise
            except Exception as error:  # the exit-code table: every exception gets its code
                raise typer.Exit(handle_error(error)) from None

        app.command(name)(wrapper)
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
MAX_BATCH = 4096


def check_flags(**values: float | None) -> None:
    """Refuse a numeric flag outside `FLAG_RANGES`, naming it (keyword: flag without --)."""
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        low, high = FLAG_RANGES[flag]
        check_range(flag, value, low, high, low_open=flag in _OPEN_LOW)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    return table


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


@command("doctor")
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Versions, CUDA, ONNX Runtime providers, TensorRT (and why not), CPU."""
    from karst_deploy.doctor import diagnose

    report = diagnose()
    if as_json:
        print_json(report.to_dict())
        return
    rows = {k: v for k, v in report.to_dict().items() if k not in ("tensorrt", "missing")}
    trt = report.tensorrt
    rows["tensorrt"] = trt.version if trt.available else f"not available ({trt.reason})"
    console.print(key_value_table("karst-deploy doctor", rows))
    for what, hint in report.missing.items():
        console.print(f"[yellow]{escape(what)}:[/] {escape(hint)}")


@command("merge")
def merge_command(
    adapter: Path = typer.Option(
        ..., "--adapter", help="Adapter directory (adapter_config.json + adapter.safetensors)."
    ),
    out: Path = typer.Option(..., "--out", help="Merged checkpoint to write (.safetensors)."),
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
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Fold an adapter (ours or a PEFT one) into its backbone; write a plain timm checkpoint."""
    from karst_deploy.adapters.peft_format import is_peft_directory, write_merged_peft_checkpoint
    from karst_deploy.adapters.storage import write_merged_checkpoint

    if is_peft_directory(adapter):
        result = write_merged_peft_checkpoint(
            adapter,
            out,
            backbone=backbone,
            checkpoint=checkpoint,
            pretrained=pretrained,
            img_size=img_size,
            model_kwargs=_parse_model_kwargs(model_kwargs),
            force=force,
        )
    elif img_size is not None or model_kwargs is not None:
        from karst_deploy.errors import InputError

        raise InputError(
            "--img-size and --model-kwargs apply to PEFT adapters only; our adapter directory "
            "records its backbone."
        )
    else:
        result = write_merged_checkpoint(
            adapter,
            out,
            checkpoint=checkpoint,
            backbone=backbone,
            pretrained=pretrained,
            force=force,
        )
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(key_value_table("merged checkpoint", result.to_dict()))


@command("build-engine")
def build_engine_command(
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file (fp32, fp16 or QDQ-int8)."),
    out: Path = typer.Option(..., "--out", help="Engine to write; its sidecar goes to OUT.json."),
    batch: str | None = typer.Option(
        None, "--batch", help="N or MIN,OPT,MAX batch profile [default: the ONNX's, else 1,1,8]."
    ),
    workspace: int | None = typer.Option(None, "--workspace", help="Workspace limit in MiB."),
    timing_cache: Path | None = typer.Option(
        None, "--timing-cache", help="TensorRT timing cache file, loaded and saved."
    ),
    builder_opt_level: int | None = typer.Option(
        None, "--builder-opt-level", help="Builder optimization level 0-5 [TensorRT's: 3]."
    ),
    dla_core: int | None = typer.Option(
        None, "--dla-core", help="Jetson DLA core; unsupported layers fall back to the GPU."
    ),
    hardware_compat: str = typer.Option(
        "none", "--hardware-compat", help="none | ampere+ (desktop Ampere-or-newer portable)."
    ),
    version_compat: bool = typer.Option(
        False, "--version-compat", help="Runs on later TensorRT versions too (slower)."
    ),
    fp16: bool = typer.Option(
        False, "--fp16", help="TensorRT 10.x only: build an fp32 ONNX in fp16 (weak typing)."
    ),
    no_precision_check: bool = typer.Option(
        False,
        "--no-precision-check",
        help="Write the engine even if its layers' precision differs from the request "
        "(recorded in the sidecar).",
    ),
    emit_trtexec: bool = typer.Option(
        False, "--emit-trtexec", help="Print the equivalent trtexec commands instead of building."
    ),
    tensorrt_version: int | None = typer.Option(
        None, "--tensorrt-version", help="With --emit-trtexec: 10 or 11 [default: both]."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT and OUT.json if they exist."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Build a TensorRT engine, check its layers run in the requested precision, add a sidecar."""
    check_flags(
        workspace=workspace,
        builder_opt_level=builder_opt_level,
        dla_core=dla_core,
        tensorrt_version=tensorrt_version,
    )
    from karst_deploy.engine import BuildOptions, parse_batch_profile

    options = BuildOptions(
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
    if tensorrt_version is not None and not emit_trtexec:
        from karst_deploy.errors import InputError

        raise InputError("--tensorrt-version applies only with --emit-trtexec.")
    if emit_trtexec:
        from karst_deploy.engine import trtexec_commands

        majors = (tensorrt_version,) if tensorrt_version is not None else (10, 11)
        commands = [c.to_dict() for c in trtexec_commands(onnx, out, options, majors=majors)]
        if as_json:
            print_json(commands)
            return
        for entry in commands:
            console.rule(f"TensorRT {entry['tensorrt']}")
            if entry["build"]:
                console.print("[bold]# build on the device[/]")
                typer.echo(entry["build"])
            console.print("[bold]# time it (GPU compute, as trtexec 11 measures by default)[/]")
            typer.echo(entry["timing"])
            for note in entry["notes"]:
                console.print(f"[yellow]note:[/] {escape(note)}")
        return
    from karst_deploy.engine import build_engine

    result = build_engine(onnx, out, options, force=force, progress=not as_json)
    if as_json:
        print_json(result.to_dict())
        return
    precision, gpu = result.precision, result.environment
    rows = {
        "engine": str(result.engine),
        "sidecar": str(result.sidecar),
        "TensorRT": gpu.tensorrt_version,
        "GPU": f"{gpu.gpu_name} (compute capability {gpu.compute_capability})",
        "precision": f"{precision.requested}: {precision.matched} of "
        f"{len(precision.verdicts)} GEMM/conv layers verified"
        + ("" if result.precision_checked else " (check skipped: --no-precision-check)"),
        "profile": result.profile,
        "build time": f"{result.build_seconds} s",
    }
    if result.dla_core is not None:
        fallback = result.dla_fallback_layers
        rows["DLA"] = f"core {result.dla_core}; {len(fallback)} layer(s) fall back to the GPU"
    console.print(key_value_table("TensorRT engine", rows))
    for layer in result.dla_fallback_layers:
        console.print(f"  GPU fallback: {escape(layer)}")


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


def _parse_batch(text: str) -> int | None:
    """``dynamic`` -> None, else a positive integer."""
    from karst_deploy.errors import InputError

    if text == "dynamic":
        return None
    if not (text.isdigit() and len(text) <= 5) or not 1 <= int(text) <= MAX_BATCH:
        raise InputError(
            f"--batch must be 'dynamic' or an integer from 1 to {MAX_BATCH}, got '{clip(text)}'."
        )
    return int(text)


def _parse_batches(text: str) -> list[int]:
    """``1,8`` -> [1, 8]."""
    from karst_deploy.errors import InputError

    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and len(part) <= 5 and 1 <= int(part) <= MAX_BATCH for part in parts):
        raise InputError(
            f"--batch must be integers from 1 to {MAX_BATCH} separated by commas, got "
            f"'{clip(text)}'."
        )
    return [int(part) for part in parts]


def _parse_model_kwargs(text: str | None) -> dict[str, Any] | None:
    from karst_deploy.jsonfile import parse_object

    if text is None:
        return None
    value = parse_object(text, "--model-kwargs")
    from karst_deploy.models import check_model_kwargs

    return check_model_kwargs(value, "--model-kwargs", "", allow_img_size=True)


@command("export")
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
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size."),
    num_classes: int | None = typer.Option(
        None,
        "--num-classes",
        help="With --no-adapter or a PEFT adapter: classifier size [PEFT: the stored head's].",
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
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Merge an adapter into its backbone and export one checked ONNX file with provenance."""
    check_flags(num_classes=num_classes, img_size=img_size, calib_samples=calib_samples)
    from karst_deploy.errors import InputError

    if (adapter is None) != no_adapter:
        raise InputError(
            "Pass exactly one of --adapter DIR (export the adapted model) and --no-adapter "
            "(export the plain backbone)."
        )
    from karst_deploy.export import export_onnx

    options = dict(
        backbone=backbone,
        adapter=adapter,
        checkpoint=checkpoint,
        pretrained=pretrained,
        unmerged=unmerged,
        num_classes=num_classes,
        img_size=img_size,
        model_kwargs=_parse_model_kwargs(model_kwargs),
        opset=opset,
        batch=_parse_batch(batch),
    )
    if precision != "fp32":  # export fp32, then convert (karst_deploy.precision)
        from karst_deploy.precision import export_with_precision

        converted = export_with_precision(
            out,
            precision,
            calib=calib,
            calib_samples=calib_samples,
            calib_method=calib_method,
            use_cache=calib_cache,
            force=force,
            progress=not as_json,
            **options,
        )
        if as_json:
            print_json(converted.to_dict())
        else:
            console.print(key_value_table(f"exported {precision} model", converted.summary()))
        return
    if calib is not None:
        raise InputError("--calib applies to --precision int8 only.")
    with error_console.status("exporting and checking…"):
        result = export_onnx(out, force=force, **options)
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(key_value_table(f"exported {result.kind} model", result.to_dict()))


@command("verify-parity")
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
        None, "--split", help="Split of --data [default: test if present, else val]."
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
    threads: int | None = typer.Option(None, "--threads", help="CPU threads per runtime."),
    engine: Path | None = typer.Option(
        None, "--engine", help="TensorRT engine built from --onnx: a stage after ONNX Runtime."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Write the full report here."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write accuracy per stage and logit-difference histograms (PNG)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite the --json / --plot files."),
):
    """Run the same inputs through unmerged, merged and ONNX Runtime, and compare the graph
    with a fresh export of the same model; exit 1 if any check fails."""
    import math

    from karst_deploy.errors import InputError

    check_flags(samples=samples, images=images, seed=seed, batch_size=batch_size, threads=threads)
    from karst_deploy.files import refuse_existing, write_json
    from karst_deploy.parity import verify_parity
    from karst_deploy.report import parity_table, white_box_table

    if atol is not None and not (math.isfinite(atol) and atol > 0):
        raise InputError(f"--atol must be a finite positive number, got {atol}.")
    for path in (json_path, plot):
        if path is not None:
            refuse_existing(path, force)
    report = verify_parity(
        onnx,
        adapter,
        backbone=backbone,
        checkpoint=checkpoint,
        pretrained=pretrained,
        data=data,
        split=split,
        samples=samples,
        images=images,
        seed=seed,
        atol_scale=atol,
        batch_size=batch_size,
        threads=threads,
        engine=engine,
    )
    console.print(parity_table(report))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if report.white_box is not None:
        console.print(white_box_table(report.white_box))
    written = []
    if json_path is not None:
        write_json(json_path, report.to_dict(), force=force)
        written.append(f"report in {json_path}")
    if plot is not None:
        from karst_deploy.report_plots import plot_parity

        plot_parity(report, plot, force=force)
        written.append(f"plots in {plot}")
    if written:  # before a failure is raised: the files are what explains it
        console.print(f"wrote: {escape('; '.join(written))}", highlight=False, soft_wrap=True)
    report.raise_if_failed()
    console.print("[green]parity: every check passed[/]")


@command("bench")
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
    batch: str = typer.Option("1,8", "--batch", help="Batch sizes, comma-separated."),
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
    threads: int | None = typer.Option(None, "--threads", help="CPU threads per model."),
    rounds: int = typer.Option(50, "--rounds", help="Measured rounds per batch size."),
    warmup: int = typer.Option(5, "--warmup", help="Unmeasured rounds per session first."),
    sessions: int = typer.Option(
        5, "--sessions", help="Fresh runtime sessions per model, in rotated creation order."
    ),
    tolerance: float = typer.Option(
        0.03, "--tolerance", help="Zero added latency: the 95% CI of merged/base within ±this."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Write every number here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write latency distributions (PNG)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the --json / --plot files."),
):
    """Time base, merged (and unmerged) interleaved; exit 1 unless zero added latency is shown."""
    check_flags(threads=threads, rounds=rounds, warmup=warmup, sessions=sessions)
    check_range("--tolerance", tolerance, 0.0, 1.0, low_open=True)
    from karst_deploy.bench import bench
    from karst_deploy.files import refuse_existing, write_json
    from karst_deploy.report import bench_table, plot_latencies, verdict_lines

    for path in (json_path, plot):
        if path is not None:
            refuse_existing(path, force)
    runner_options = None
    if runner == "tensorrt":
        runner_options = {"copies": copies, "cuda_graph": cuda_graph}
    elif cuda_graph or not copies:
        from karst_deploy.errors import InputError

        raise InputError("--no-copies and --cuda-graph apply to --runner tensorrt only.")
    models = {"base": baseline, "merged": onnx}
    if unmerged is not None:
        models["unmerged"] = unmerged
    for label, path in (("merged-fp16", fp16), ("merged-int8", int8)):
        if path is not None:
            from karst_deploy.precision import require_precision

            require_precision(path, label.split("-")[1])
            models[label] = path
    result = bench(
        models,
        baseline="base",
        candidate="merged",
        batches=_parse_batches(batch),
        runner=runner,
        threads=threads,
        rounds=rounds,
        warmup=warmup,
        sessions=sessions,
        tolerance=tolerance,
        runner_options=runner_options,
    )
    console.print(bench_table(result))
    for line in verdict_lines(result):
        console.print(line, highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if json_path is not None:
        write_json(json_path, result.to_dict(), force=force)
    if plot is not None:
        plot_latencies(result, plot, force=force)
    result.raise_if_failed()


@command("train")
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
    scale: float | None = typer.Option(None, "--scale", help="kadaptation: ΔW scale [1]."),
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
        "LayerNorms trained), swin (karst N=2, stage ranks 2,2,4,8). Explicit flags win.",
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
    force: bool = typer.Option(
        False, "--force", help="Overwrite --out (and --plot) if they exist."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the training log as JSON."),
):
    """Train adapters (and the head) on labelled images with the KARST recipe.

    Runs unchanged under `torchrun --nproc_per_node N` (DistributedDataParallel).
    """
    check_flags(
        img_size=img_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        warmup_lr=warmup_lr,
        min_lr=min_lr,
        drop_path=drop_path,
        seed=seed,
        num_workers=num_workers,
    )
    from karst_deploy.placement import training_adapter
    from karst_deploy.train import TrainConfig, train_adapters
    from karst_deploy.train.recipe import apply_recipe

    method_options = dict(
        factor=factor,
        rank=rank,
        kernels=kernels,
        alpha=alpha,
        rescale=rescale,
        scale=scale,
        stage_ranks=stage_ranks,
        targets=targets,
    )
    karst_modules = method if placement != "spt" else (structured or "karst")
    method_options, schedule, applied = apply_recipe(
        recipe,
        karst_modules,
        method_options,
        dict(epochs=epochs, warmup_epochs=warmup_epochs, cooldown_epochs=cooldown_epochs),
    )
    adapter = training_adapter(
        placement,
        method,
        structured,
        budget=budget,
        sigma=sigma,
        scores=scores,
        budget_rule=budget_rule,
        **method_options,
    )
    config = TrainConfig(
        backbone=backbone,
        data=data,
        adapter=adapter,
        checkpoint=None if checkpoint is None else str(checkpoint),
        model_kwargs=_parse_model_kwargs(model_kwargs) or {},
        img_size=img_size,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_lr=warmup_lr,
        min_lr=min_lr,
        drop_path=drop_path,
        seed=seed,
        num_workers=num_workers,
        device=device,
        amp=amp,
        strict_images=strict_images,
        recipe={"name": recipe, "set": applied},
        **schedule,
    )
    if plot is not None:
        from karst_deploy.files import refuse_existing

        refuse_existing(plot, force)  # before training, not after it
    result = train_adapters(config, out, force=force)
    if not result.is_main:
        return
    log = result.log
    written = [f"adapter and train_log.json in {result.out}"]
    if plot is not None:
        from karst_deploy.report_plots import plot_training

        plot_training(log, plot, force=force)
        written.append(f"curves in {plot}")
    if as_json:
        print_json({"out": str(result.out), **log.to_dict()})
        return
    table = Table(title=f"{method} on {data}", title_justify="left")
    for column in ("epoch", "train loss", "val loss", "val acc", "lr", "seconds"):
        table.add_column(column, justify="right")
    for row in log.epochs:
        mark = " *" if row.epoch == log.best_epoch else ""
        table.add_row(
            f"{row.epoch}{mark}",
            f"{row.train_loss:.4f}",
            f"{row.val_loss:.4f}",
            f"{row.val_accuracy:.4f}",
            f"{row.lr:.2e}",
            f"{row.seconds:.1f}",
        )
    console.print(table)
    test = log.test_accuracy
    summary = {
        "adapter directory": str(result.out),
        "best epoch (on val)": f"{log.best_epoch} (* above)",
        "val accuracy": f"{log.best_val_accuracy:.4f}",
        "test accuracy": "no test split" if test is None else f"{test:.4f} (reported only)",
        "trainable parameters": log.trainable_parameters.to_dict(),
        "skipped images": log.data.skipped_images,
    }
    console.print(key_value_table("trained", summary))
    for warning in log.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(f"wrote: {escape('; '.join(written))}", highlight=False, soft_wrap=True)


@command("sensitivity")
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
        help="Take the batches from a seeded permutation [official: the first K·B images].",
    ),
    img_size: int | None = typer.Option(None, "--img-size", help="Backbone input size."),
    model_kwargs: str | None = typer.Option(
        None, "--model-kwargs", help="Extra timm arguments as JSON, e.g. '{\"depth\": 6}'."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also write a PNG of each matrix's share of the sensitivity."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite --out (and --plot)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """SPT sensitivity: summed squared gradients of every qkv/proj/fc1/fc2 weight on --data.

    The scores feed `train --placement spt --scores FILE`.
    """
    check_flags(batches=batches, batch_size=batch_size, seed=seed, img_size=img_size)
    from karst_deploy.placement import sensitivity_for_backbone

    summary = sensitivity_for_backbone(
        backbone,
        data,
        out,
        checkpoint=checkpoint,
        img_size=img_size,
        model_kwargs=_parse_model_kwargs(model_kwargs),
        batches=batches,
        batch_size=batch_size,
        seed=seed,
        shuffle_seed=shuffle_seed,
        force=force,
        progress=not as_json,
        plot=plot,
    )
    if as_json:
        print_json(summary)
    else:
        console.print(key_value_table("sensitivity scores", summary))


@command("convert-precision")
def convert_precision_command(
    onnx: Path = typer.Option(..., "--onnx", help="fp32 ONNX file (from karst-deploy export)."),
    precision: str = typer.Option(..., "--precision", help="fp16 or int8."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    calib: Calib = None,
    calib_samples: CalibSamples = 256,
    calib_method: CalibMethod = "minmax",
    calib_cache: CalibCache = True,
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Convert an fp32 ONNX to fp16, or calibrate it to symmetric int8 QDQ (for TensorRT)."""
    check_flags(calib_samples=calib_samples)
    from karst_deploy.precision import convert_precision

    result = convert_precision(
        onnx,
        out,
        precision,
        calib=calib,
        calib_samples=calib_samples,
        calib_method=calib_method,
        use_cache=calib_cache,
        force=force,
        progress=not as_json,
    )
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(key_value_table(f"{precision} model", result.summary()))


@command("demo")
def demo_command(
    out: Path = typer.Option(
        Path("karst-deploy-demo"), "--out", help="Report directory to write (must not exist)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Reduced mode for tests/CI: shorter training, fewer bench rounds."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds adapter training, parity and bench inputs."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for PyTorch and ONNX Runtime [default: theirs]."
    ),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print demo.json instead of tables."),
):
    """The whole pipeline on real digits: pretrain, train KARST, export, verify, bench, report."""
    check_flags(seed=seed, threads=threads)
    from karst_deploy.demo import run_demo
    from karst_deploy.demo.report import summary_tables

    result = run_demo(out, quick=quick, seed=seed, force=force, threads=threads)
    if as_json:
        print_json(result.to_dict())
    else:
        for table in summary_tables(result):
            console.print(table)
        if result.settings.note:
            console.print(f"[yellow]note:[/] {escape(result.settings.note)}")
    if not as_json:
        files = len(result.artifacts) + 1  # with demo.json
        console.print(
            f"wrote: {files} files (demo.json, demo.png, ONNX models, adapter) in "
            f"{escape(str(out))}",
            highlight=False,
            soft_wrap=True,
        )
    result.raise_if_failed()
    if not as_json:
        console.print(f"[green]demo passed[/]: report in {escape(str(out))}")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default: ``sys.argv[1:]``) and return its exit code.

    Usage errors print click's plain message (unwrapped, no box); anything that escapes a
    command or the option parsing is handled by `handle_error`.
    """
    global _debug
    _debug = False
    try:
        code = app(args=list(sys.argv[1:] if argv is None else argv), standalone_mode=False)
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

    with exit_on_interrupt(restore=False):  # SIGINT/SIGTERM: 130, temporaries removed
        sys.exit(run())
