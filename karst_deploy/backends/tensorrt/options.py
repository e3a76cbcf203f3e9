"""What a TensorRT engine build is asked to do: batch profile and builder settings.

Pure Python (no TensorRT): the same options drive the Python builder (`build.py`), the
equivalent ``trtexec`` command (`trtexec.py`) and the rebuild hint stored in the sidecar.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from karst_deploy.errors import InputError

if TYPE_CHECKING:
    from karst_deploy.backends.tensorrt.onnx_graph import OnnxSummary

#: ``--hardware-compat`` choices → TensorRT ``HardwareCompatibilityLevel`` member names.
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS"}
#: TensorRT's builder optimization levels (IBuilderConfig.builder_optimization_level); 3 is
#: its default.
OPTIMIZATION_LEVELS = range(6)


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine's optimisation profile covers: min ≤ opt ≤ max."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(
                f"batch {self}: expected 1 ≤ MIN ≤ OPT ≤ MAX (e.g. 1,8,32 or 8).",
                parameters=("batch",),
            )

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"

    def shapes(self, chw: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
        """Full input shapes per profile point, e.g. {"min": (1, 3, 224, 224), ...}."""
        return {"min": (self.min, *chw), "opt": (self.opt, *chw), "max": (self.max, *chw)}


def parse_batch_profile(text: str) -> BatchProfile:
    """Parse ``--batch``: ``N`` (a fixed batch) or ``MIN,OPT,MAX``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(
            f"batch '{text}' is not N or MIN,OPT,MAX with whole numbers (e.g. 1,8,32).",
            parameters=("batch",),
        ) from None
    if len(values) == 1:
        return BatchProfile(values[0], values[0], values[0])
    if len(values) == 3:
        return BatchProfile(*values)
    raise InputError(
        f"batch '{text}' has {len(values)} values; give N or MIN,OPT,MAX.", parameters=("batch",)
    )


#: The profile used when neither --batch nor the ONNX fixes one.
DEFAULT_BATCH = BatchProfile(1, 1, 8)


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings of `build-engine`; every field maps to one CLI flag and one trtexec flag.

    ``batch=None`` means "from the ONNX": its fixed batch if it has one, else 1,1,8 (latency at
    batch 1 is the edge case that matters; pass --batch to tune for throughput).
    """

    batch: BatchProfile | None = None
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    builder_optimization_level: int | None = None
    dla_core: int | None = None
    hardware_compat: str = "none"
    version_compatible: bool = False
    fp16: bool = False
    precision_check: bool = True

    def __post_init__(self) -> None:
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise InputError(
                f"workspace_mib {self.workspace_mib}: expected a positive size in MiB.",
                parameters=("workspace_mib",),
            )
        level = self.builder_optimization_level
        if level is not None and level not in OPTIMIZATION_LEVELS:
            raise InputError(
                f"builder_optimization_level {level}: TensorRT accepts 0 to 5 (default 3).",
                parameters=("builder_optimization_level",),
            )
        if self.dla_core is not None and self.dla_core < 0:
            raise InputError(
                f"dla_core {self.dla_core}: DLA cores are numbered from 0.",
                parameters=("dla_core",),
            )
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise InputError(
                f"hardware_compat '{self.hardware_compat}': choose one of "
                f"{', '.join(HARDWARE_COMPAT)}.",
                parameters=("hardware_compat",),
            )
        if self.dla_core is not None and self.hardware_compat != "none":
            raise InputError(
                "dla_core and hardware_compat ampere+ cannot be combined: hardware-compatible "
                "engines run on desktop Ampere+ GPUs only, DLA exists on Jetson only.",
                parameters=("dla_core", "hardware_compat"),
            )

    def cli_args(self, onnx: Path | str, out: Path | str) -> list[str]:
        """The `karst-deploy build-engine` arguments that reproduce this build."""
        args = ["karst-deploy", "build-engine", "--onnx", str(onnx), "--out", str(out)]
        if self.batch is not None:
            args += ["--batch", str(self.batch)]
        if self.workspace_mib is not None:
            args += ["--workspace", str(self.workspace_mib)]
        if self.timing_cache is not None:
            args += ["--timing-cache", str(self.timing_cache)]
        if self.builder_optimization_level is not None:
            args += ["--builder-opt-level", str(self.builder_optimization_level)]
        if self.dla_core is not None:
            args += ["--dla-core", str(self.dla_core)]
        if self.hardware_compat != "none":
            args += ["--hardware-compat", self.hardware_compat]
        if self.version_compatible:
            args.append("--version-compat")
        if self.fp16:
            args.append("--fp16")
        if not self.precision_check:
            args.append("--no-precision-check")
        return args

    def command(self, onnx: Path | str, out: Path | str, *, force: bool = False) -> str:
        """`cli_args` as one shell-quoted command line (with ``--force`` when asked)."""
        return shlex.join(self.cli_args(onnx, out) + (["--force"] if force else []))


@dataclass(frozen=True)
class BuildRequest:
    """`BuildOptions` applied to one ONNX file: the profile and precision actually built."""

    batch: BatchProfile
    precision: str  # what the engine must run in: fp32, fp16 or int8
    weakly_typed_fp16: bool  # TensorRT 10.x BuilderFlag.FP16 on an fp32 network


def resolve_request(summary: OnnxSummary, options: BuildOptions) -> BuildRequest:
    """Check `options` against the ONNX and settle the batch profile and precision."""
    batch = options.batch
    fixed = summary.fixed_batch
    if batch is None:
        batch = BatchProfile(fixed, fixed, fixed) if fixed else DEFAULT_BATCH
    elif fixed and batch != BatchProfile(fixed, fixed, fixed):
        raise InputError(
            f"batch must be {fixed} (got {batch}): '{summary.path}' has a fixed batch of {fixed}; "
            "export it with a dynamic batch axis to build a range.",
            parameters=("batch",),
        )
    precision = summary.precision
    if options.fp16:
        if precision != "fp32":
            raise InputError(
                f"fp16=True applies only to an fp32 ONNX; '{summary.path}' is already "
                f"{precision} and builds in that precision as it is (drop it).",
                parameters=("fp16",),
            )
        precision = "fp16"
    if options.dla_core is not None and precision == "fp32":
        raise InputError(
            "dla_core: the DLA runs fp16 and int8 only, so every layer of this fp32 ONNX would "
            "fall back to the GPU. Build an fp16 or int8 ONNX (karst-deploy convert-precision), "
            "or add fp16=True on TensorRT 10.",
            parameters=("dla_core", "fp16"),
        )
    return BuildRequest(batch=batch, precision=precision, weakly_typed_fp16=options.fp16)
