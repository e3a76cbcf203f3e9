"""The `karst-deploy` command line.

Each command parses options, calls one library function and prints its result: a rich
table for people, JSON with ``--json``. Heavy imports happen inside the commands so that
``--help`` is instant. A `KarstDeployError` becomes a one-paragraph message on stderr and
its exit code (2 bad input, 1 failed verification); success exits 0.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from karst_deploy import __version__
from karst_deploy.errors import KarstDeployError

app = typer.Typer(
    name="karst-deploy",
    help="Fold KARST/KAdaptation/LoRA/SPT adapters into ViTs, export ONNX, build TensorRT "
    "engines, and prove accuracy parity and zero added latency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
error_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def command(name: str | None = None) -> Callable[[F], F]:
    """Register a command whose project errors print as one paragraph with their exit code."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except KarstDeployError as error:
                error_console.print(f"[bold red]error:[/] {error}", highlight=False)
                raise typer.Exit(error.exit_code) from None

        app.command(name)(wrapper)
        return function

    return decorate


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
) -> None:
    """karst-deploy: adapters in, proven-equal engines out."""


@command("doctor")
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Versions, CUDA, ONNX Runtime providers, TensorRT (and why not), CPU."""
    from karst_deploy.doctor import diagnose

    report = diagnose()
    if as_json:
        print_json(report)
        return
    trt = report.pop("tensorrt")
    rows = dict(report)
    rows["tensorrt"] = trt["version"] if trt["available"] else f"not available ({trt['reason']})"
    console.print(key_value_table("karst-deploy doctor", rows))
    if not trt["available"]:
        console.print(f"[yellow]TensorRT:[/] {escape(trt['hint'])}")


@command("merge")
def merge_command(
    adapter: Path = typer.Option(
        ..., "--adapter", help="Adapter directory (adapter_config.json + adapter.safetensors)."
    ),
    out: Path = typer.Option(..., "--out", help="Merged checkpoint to write (.safetensors)."),
    backbone: str | None = typer.Option(
        None, "--backbone", help="timm name; checked against the adapter's."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Backbone checkpoint the adapter was trained on."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Fold an adapter into its backbone and write a plain timm checkpoint."""
    from karst_deploy.adapters.storage import write_merged_checkpoint

    result = write_merged_checkpoint(
        adapter, out, checkpoint=checkpoint, backbone=backbone, force=force
    )
    if as_json:
        print_json(result)
    else:
        console.print(key_value_table("merged checkpoint", result))


def main() -> None:
    app()
