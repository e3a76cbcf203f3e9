"""Tables in a log or a pipe: full width, no cut stage name or path."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from karst_deploy.report.render import show


def test_a_wide_table_in_a_log_is_not_cut_or_wrapped():
    stream = io.StringIO()
    console = Console(file=stream, width=80)  # what rich assumes for a pipe
    path = "/very/long/" + "directory/" * 12 + "merged.onnx"
    table = Table(title="verify-parity")
    for name in ("torch-unmerged → torch-merged", "torch-merged → onnxruntime", "white-box"):
        table.add_column(name)
    table.add_row(path, "1.2e-06", "pass")
    show(table, console=console)
    text = stream.getvalue()
    assert path in text and "torch-unmerged → torch-merged" in text and "…" not in text


def test_on_a_terminal_long_cells_fold_instead_of_being_cut():
    stream = io.StringIO()
    console = Console(file=stream, width=40, force_terminal=True, color_system=None)
    path = "/data/" + "x" * 70 + ".onnx"
    table = Table()
    table.add_column("file")
    table.add_row(path)
    show(table, console=console)
    joined = "".join(line.strip(" │┃|") for line in stream.getvalue().splitlines())
    assert "…" not in stream.getvalue() and path in joined.replace(" ", "")
