"""The ``trtexec`` commands equivalent to a `build-engine` call, for building on the device.

Flag names follow trtexec's own option parser (``samples/common/sampleOptions.cpp`` of
NVIDIA/TensorRT at v10.3.0, v10.16, v11.0 and v11.1; the flag tables derived from them are
``tests/backends/tensorrt/data/trtexec_flags/``) and the migration guides:

- ``--memPoolSize=workspace:N`` (MiB) replaced ``--workspace=N``, deprecated in 8.4 and
  removed in 10.0 ("Migrating trtexec Usage from TensorRT 8.x to 10.x").
- 10.x: ``--stronglyTyped`` builds precision from the ONNX types (used for every ONNX, as the
  Python builder does), ``--fp16`` is the weakly typed path for an fp32 ONNX. 11.x removed
  ``--fp16``/``--int8``/``--best``; networks are always strongly typed and ``--stronglyTyped``
  is a deprecated no-op ("Migrating trtexec Usage from TensorRT 10.x to 11.x").
- ``--noTF32`` on both: TensorRT uses TF32 for fp32 GEMMs unless told not to, and an fp32
  node of the ONNX must compute in fp32 (see `build.py`).
- The timing command repeats what loading the engine needs (``samples/common/sampleEngines.cpp``):
  ``--versionCompatible`` for a version-compatible engine (trtexec allows the embedded lean
  runtime, ``IRuntime::setEngineHostCodeAllowed``, only then) and ``--useDLACore=N`` for a DLA
  engine (``IRuntime::setDLACore``; without it the engine runs on DLA core 0).
- Timing defaults changed in 11.x: CUDA graphs, spin-wait and *no* host↔device transfers are
  on by default (``--noCudaGraph``, ``--noSpinWait``, ``--includeDataTransfers`` turn them
  off); in 10.x they are off unless ``--useCudaGraph``, ``--useSpinWait`` and
  ``--noDataTransfers`` are given. The timing commands below pass what makes both versions
  measure the same thing.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from karst_deploy.backends.tensorrt.onnx_graph import OnnxSummary, summarize_onnx
from karst_deploy.backends.tensorrt.options import BuildOptions, BuildRequest, resolve_request
from karst_deploy.errors import InputError

SUPPORTED_MAJORS = (10, 11)
#: Where TensorRT 11 has a DLA (TensorRT 11.x release notes).
DLA_ON_11 = (
    "DLA on TensorRT 11: 11.0 to 11.3 have no DLA support; 11.4.1 supports it on Jetson AGX "
    "Orin with JetPack 7.2.2 or later. Jetson Thor has no DLA, and Orin on JetPack 6 stays on "
    "TensorRT 10.3."
)


@dataclass(frozen=True)
class TimingSettings:
    """What a trtexec timing run measures (the 11.x defaults unless told otherwise)."""

    include_transfers: bool = False
    cuda_graph: bool = True
    spin_wait: bool = True


@dataclass
class TrtexecCommands:
    """The build and timing command lines for one TensorRT major version."""

    tensorrt_major: int
    build: list[str] | None  # None when this version cannot build what was asked
    timing: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensorrt": f"{self.tensorrt_major}.x",
            "build": format_command(self.build) if self.build else None,
            "timing": format_command(self.timing),
            "notes": self.notes,
        }


def format_command(args: list[str]) -> str:
    """Shell-quoted, one flag per line with backslash continuations."""
    return " \\\n    ".join(shlex.quote(a) for a in args)


def _shape(name: str, shape: tuple[int, ...]) -> str:
    # trtexec separates input specs with ',' and name from dims with ':'; such names are quoted.
    quoted = f"'{name}'" if any(c in name for c in ":,") else name
    return f"{quoted}:{'x'.join(str(d) for d in shape)}"


def build_args(
    summary: OnnxSummary,
    engine: str | os.PathLike[str],
    options: BuildOptions,
    request: BuildRequest,
    major: int,
) -> tuple[list[str] | None, list[str]]:
    """trtexec arguments that build what `build_engine` builds, and notes for the user."""
    notes: list[str] = []
    if request.weakly_typed_fp16 and major >= 11:
        notes.append(
            "TensorRT 11 removed --fp16: networks are strongly typed, precision comes from the "
            "ONNX. Convert it first (karst-deploy export --precision fp16) and build that file."
        )
        return None, notes
    engine = Path(engine)
    args = ["trtexec", f"--onnx={summary.path}", f"--saveEngine={engine}"]
    if summary.fixed_batch is None:
        shapes = request.batch.shapes(summary.input_chw)
        args += [
            f"--{point}Shapes={_shape(summary.input_name, shapes[point])}"
            for point in ("min", "opt", "max")
        ]
    if options.workspace_mib is not None:
        args.append(f"--memPoolSize=workspace:{options.workspace_mib}")
    if options.timing_cache is not None:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.builder_optimization_level is not None:
        args.append(f"--builderOptimizationLevel={options.builder_optimization_level}")
    if options.dla_core is not None:
        args += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
        if major >= 11:
            notes.append(f"{DLA_ON_11} Elsewhere use the 10.x commands.")
    if options.hardware_compat != "none":
        args.append(f"--hardwareCompatibilityLevel={options.hardware_compat}")
    if options.version_compatible:
        args.append("--versionCompatible")
    if major == 10:
        args.append("--fp16" if request.weakly_typed_fp16 else "--stronglyTyped")
    args.append("--noTF32")  # fp32 means fp32, as in the Python builder
    # Detailed layer info lets `trtexec --exportLayerInfo` (and our inspector) show precisions.
    args += [
        "--profilingVerbosity=detailed",
        f"--exportLayerInfo={engine.with_name(engine.name + '.layers.json')}",
        "--skipInference",
    ]
    return args, notes


def timing_args(
    summary: OnnxSummary,
    engine: str | os.PathLike[str],
    batch: int,
    major: int,
    settings: TimingSettings = TimingSettings(),
    options: BuildOptions = BuildOptions(),
) -> list[str]:
    """trtexec arguments that time `engine` at `batch` with the same meaning on 10.x and 11.x.

    `options` are those the engine was built with: a version-compatible engine loads only with
    ``--versionCompatible``, a DLA engine runs on its core only with ``--useDLACore``.
    """
    args = ["trtexec", f"--loadEngine={engine}"]
    if summary.fixed_batch is None:
        args.append(f"--shapes={_shape(summary.input_name, (batch, *summary.input_chw))}")
    if options.version_compatible:
        args.append("--versionCompatible")
    if options.dla_core is not None:
        args.append(f"--useDLACore={options.dla_core}")
    if major >= 11:
        args += [
            flag
            for flag, wanted in (
                ("--includeDataTransfers", settings.include_transfers),
                ("--noCudaGraph", not settings.cuda_graph),
                ("--noSpinWait", not settings.spin_wait),
            )
            if wanted
        ]
    else:
        args += [
            flag
            for flag, wanted in (
                ("--noDataTransfers", not settings.include_transfers),
                ("--useCudaGraph", settings.cuda_graph),
                ("--useSpinWait", settings.spin_wait),
            )
            if wanted
        ]
    return args


def trtexec_commands(
    onnx: str | os.PathLike[str],
    engine: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    *,
    majors: tuple[int, ...] = SUPPORTED_MAJORS,
    timing: TimingSettings = TimingSettings(),
) -> list[TrtexecCommands]:
    """Build and timing commands per TensorRT major version; needs no TensorRT here."""
    unknown = [m for m in majors if m not in SUPPORTED_MAJORS]
    if unknown:
        raise InputError(
            f"majors: TensorRT {unknown[0]} is not supported; karst-deploy emits trtexec "
            f"commands for TensorRT {' and '.join(map(str, SUPPORTED_MAJORS))} (JetPack 6/7 "
            "ship 10.x).",
            parameters=("majors",),
        )
    summary = summarize_onnx(onnx)
    request = resolve_request(summary, options)
    commands = []
    for major in majors:
        build, notes = build_args(summary, engine, options, request, major)
        notes.append(
            "Timing: "
            + (
                "trtexec 11.x defaults to CUDA graphs, spin-wait and no host-device transfers."
                if major >= 11
                else "--useCudaGraph --useSpinWait --noDataTransfers make trtexec 10.x measure "
                "what 11.x measures by default (GPU compute time without transfers)."
            )
        )
        commands.append(
            TrtexecCommands(
                major,
                build,
                timing_args(summary, engine, request.batch.opt, major, timing, options),
                notes,
            )
        )
    return commands
