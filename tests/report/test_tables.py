"""Tables read the typed results: a built engine's rows, as a log shows them."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from karst_deploy.backends.tensorrt.layers import LayerVerdict, PrecisionReport
from karst_deploy.backends.tensorrt.loader import EngineBuild
from karst_deploy.backends.tensorrt.util import RuntimeEnvironment
from karst_deploy.report.render import show
from karst_deploy.report.tables import engine_table


def _build(*, dla_core: int | None, checked: bool) -> EngineBuild:
    verdicts = [
        LayerVerdict("blocks.0.qkv", "Gemm", "fp16", "fp16"),
        LayerVerdict("blocks.0.fc1", "Gemm", "fp16", "fp16"),
        LayerVerdict("head", "Gemm", "fp16", "fp32"),  # wider than asked: not verified
    ]
    return EngineBuild(
        engine=Path("/runs/model.engine"),
        sidecar=Path("/runs/model.engine.json"),
        environment=RuntimeEnvironment("10.3.0", "Orin", "8.7"),
        precision=PrecisionReport("fp16", verdicts, 1.0),
        precision_checked=checked,
        profile={"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]},
        weakly_typed_fp16=False,
        dla_core=dla_core,
        dla_fallback_layers=["head"] if dla_core is not None else [],
        build_seconds=12.5,
        record={},
    )


def _shown(result: EngineBuild) -> tuple[dict[str, str], list[str]]:
    """The table's rows (name → value) and the lines after it, as a log shows them."""
    stream = io.StringIO()  # a log: full width, nothing cut
    table, lines = engine_table(result)
    show(table, *lines, console=Console(file=stream))
    printed = stream.getvalue().splitlines()
    cells = [line.strip("│ ").split(" │ ") for line in printed if line.count("│") == 3]
    below = next(i for i, line in enumerate(printed) if line.startswith("└")) + 1
    return {k.strip(): v.strip() for k, v in cells}, printed[below:]


def test_an_engine_table_names_the_verified_precision_profile_and_dla_fallbacks():
    rows, after = _shown(_build(dla_core=0, checked=False))
    assert rows == {
        "engine": "/runs/model.engine",
        "sidecar": "/runs/model.engine.json",
        "TensorRT": "10.3.0",
        "GPU": "Orin (compute capability 8.7)",
        "precision": "fp16: 2 of 3 GEMM/conv layers verified (check skipped: --no-precision-check)",
        "profile": '{"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}',
        "build time": "12.5 s",
        "DLA": "core 0; 1 layer(s) fall back to the GPU",
    }
    assert after == ["  GPU fallback: head"]


def test_a_gpu_engine_with_its_precision_checked_has_no_dla_rows():
    rows, after = _shown(_build(dla_core=None, checked=True))
    assert rows["precision"] == "fp16: 2 of 3 GEMM/conv layers verified"
    assert "DLA" not in rows and after == []
