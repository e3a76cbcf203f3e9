"""Loaders: where a TensorRT engine comes from (after Polygraphy's ``<Target>From<Source>``).

`EngineFromOnnx` parses, builds and inspects an ONNX file in memory and refuses an engine
that does not run in the requested precision; `EngineFromPath` reads an engine file and
refuses one whose sidecar does not fit this machine. Both are callables returning an
`EnginePlan`, which is all `TensorRTRunner` takes: the runner runs, never builds.
`build_engine` writes a built engine with its sidecar (the `build-engine` command).

TensorRT calls follow the 10.x/11.x Python API (developer guide "The Python API" and
"Engine Inspector"; migration guide 10.x→11.x): ``create_network`` with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (required on 10.x for precision to come from
the ONNX types; accepted and ignored on 11.x, where every network is strongly typed),
``OnnxParser.parse_from_file`` (reads external weights next to the file), one optimisation
profile for the image input, ``ProfilingVerbosity.DETAILED`` so the inspector reports data
types, ``build_serialized_network``, then ``IEngineInspector.get_engine_information`` with an
execution context whose input shape is set (without one, TensorRT omits formats for dynamic
shapes).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from karst_deploy.backends.tensorrt.layers import PrecisionReport, check_precision, parse_layers
from karst_deploy.backends.tensorrt.onnx_graph import OnnxSummary, summarize_onnx
from karst_deploy.backends.tensorrt.options import (
    HARDWARE_COMPAT,
    BatchProfile,
    BuildOptions,
    BuildRequest,
    resolve_request,
)
from karst_deploy.backends.tensorrt.sidecar import (
    check_sidecar,
    is_jetson,
    make_sidecar,
    read_sidecar,
    sidecar_path,
)
from karst_deploy.backends.tensorrt.trtexec import DLA_ON_11
from karst_deploy.backends.tensorrt.util import (
    RuntimeEnvironment,
    accepted,
    deserialize_engine,
    import_tensorrt,
    make_logger,
    runtime_environment,
)
from karst_deploy.errors import InputError, KarstDeployError, VerificationError
from karst_deploy.files import atomic_output, refuse_existing, write_json
from karst_deploy.progress import status

#: Share of GEMM/convolution layers that must run in their expected precision. A strongly
#: typed network must obey its types exactly; under explicit int8 quantization and the
#: weakly typed --fp16 path TensorRT may legitimately keep a few layers wider (a Q/DQ pair it
#: cannot fuse, a layer that is faster in fp32), while the failure this guards against — an
#: "fp16"/int8 build that silently stayed fp32 — leaves almost none reduced.
MIN_MATCH_SHARE = {"fp32": 1.0, "fp16": 1.0, "int8": 0.9}
MIN_MATCH_SHARE_WEAKLY_TYPED = 0.9
#: Profile of engines built in memory from an ONNX file: covers bench's default batches (1, 8)
#: and parity's batch 16 without chunking.
IN_MEMORY_BATCH = BatchProfile(1, 8, 32)


class EngineBuildError(KarstDeployError):
    """The TensorRT parser or builder rejected the network."""


@dataclass
class BuiltEngine:
    """A serialized engine in memory, with what was asked and what the inspector found."""

    data: bytes
    summary: OnnxSummary
    request: BuildRequest
    precision: PrecisionReport
    dla_fallback_layers: list[str]
    environment: RuntimeEnvironment
    seconds: float


@dataclass(frozen=True)
class EngineBuild:
    """A written engine and its sidecar; `record` is the sidecar as written (its JSON)."""

    engine: Path
    sidecar: Path
    environment: RuntimeEnvironment  # TensorRT version and GPU it was built on
    precision: PrecisionReport  # what the inspector found, layer by layer
    precision_checked: bool  # False: written despite a mismatch (--no-precision-check)
    profile: dict[str, list[int]]  # min / opt / max input shapes
    weakly_typed_fp16: bool  # TensorRT 10.x fp16 builder flag on an fp32 graph
    dla_core: int | None
    dla_fallback_layers: list[str]
    build_seconds: float
    record: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"engine": str(self.engine), "sidecar": str(self.sidecar), **self.record}


@dataclass(frozen=True)
class EnginePlan:
    """A serialized engine and what deserializing it needs."""

    data: bytes
    source: Path  # the ONNX it was built from in memory, or the engine file
    precision: str | None  # requested at build time (None: unknown, e.g. built by trtexec)
    version_compatible: bool = False
    dla_core: int | None = None  # None: runs on the GPU


class EngineFromOnnx:
    """Build `onnx` in memory with `options` (every model of a bench gets the same ones)."""

    def __init__(
        self,
        onnx: str | os.PathLike[str],
        options: BuildOptions | None = None,
        *,
        progress: bool = False,
    ) -> None:
        self.source = Path(onnx)
        self.options = options or BuildOptions(batch=IN_MEMORY_BATCH)
        self.progress = progress

    def build(self) -> BuiltEngine:
        """Parse, build and inspect; raise unless the engine runs in the requested precision."""
        summary = summarize_onnx(self.source)
        return _build(summary, resolve_request(summary, self.options), self.options, self.progress)

    def __call__(self) -> EnginePlan:
        built = self.build()
        return EnginePlan(
            built.data,
            self.source,
            built.request.precision,
            self.options.version_compatible,
            self.options.dla_core,
        )


class EngineFromPath:
    """Read an engine file; its sidecar (when there is one) must fit this machine."""

    def __init__(self, path: str | os.PathLike[str], *, device: int = 0) -> None:
        self.source = Path(path)
        self.device = device

    def __call__(self) -> EnginePlan:
        path = self.source
        if not path.is_file():
            raise InputError(f"Engine '{path}' does not exist or is not a file.")
        sidecar = read_sidecar(path)
        if sidecar is None:  # built by trtexec: nothing says how it was built
            return EnginePlan(path.read_bytes(), path, None)
        check_sidecar(sidecar, path, runtime_environment(import_tensorrt(), self.device))
        return EnginePlan(
            path.read_bytes(),
            path,
            sidecar.get("precision", {}).get("requested"),
            bool(sidecar["builder"].get("version_compatible")),
            sidecar_dla_core(sidecar, path),
        )


def sidecar_dla_core(record: dict[str, Any], engine: Path) -> int | None:
    """The DLA core the sidecar says `engine` was built for (None: built for the GPU)."""
    core = record["builder"].get("dla_core")
    if core is not None and (isinstance(core, bool) or not isinstance(core, int) or core < 0):
        raise InputError(
            f"Engine sidecar '{sidecar_path(engine)}': builder.dla_core is {core!r}; expected "
            "null or a DLA core number (0, 1, ...). Rebuild the engine with `karst-deploy "
            "build-engine`."
        )
    return core


def _parse(
    trt: Any, summary: OnnxSummary, request: BuildRequest, logger: Any
) -> tuple[Any, Any, Any]:
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None and not request.weakly_typed_fp16:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(summary.path)):
        errors = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            errors.append(
                f"node {error.node()} '{error.node_name()}' ({error.node_operator()}): "
                f"{error.desc()}"
            )
        raise EngineBuildError(
            f"The TensorRT {trt.__version__} ONNX parser rejected '{summary.path}' with "
            f"{len(errors)} error(s): " + "; ".join(errors or logger.errors)
        )
    return builder, network, parser


def _configure(
    trt: Any,
    builder: Any,
    network: Any,
    summary: OnnxSummary,
    options: BuildOptions,
    request: BuildRequest,
) -> tuple[Any, list[str]]:
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    # TensorRT enables TF32 by default (BuilderFlag.kTF32, NvInfer.h): fp32 GEMMs would round
    # their inputs to 10-bit mantissas. fp32 in the ONNX means fp32 here, so an fp32 engine
    # (or an fp32 head) agrees with fp32 ONNX Runtime within the fp32 parity tolerance.
    config.clear_flag(trt.BuilderFlag.TF32)
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if summary.fixed_batch is None:
        shapes = request.batch.shapes(summary.input_chw)
        profile = builder.create_optimization_profile()
        profile.set_shape(summary.input_name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    if request.weakly_typed_fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise InputError(
                f"fp16=True is a TensorRT 10.x path; TensorRT {trt.__version__} removed "
                "BuilderFlag.FP16 (networks are strongly typed). Convert the ONNX to fp16 "
                "(karst-deploy convert-precision) and build that file.",
                parameters=("fp16",),
            )
        config.set_flag(trt.BuilderFlag.FP16)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compat != "none":
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, HARDWARE_COMPAT[options.hardware_compat]
        )
    if options.timing_cache is not None:
        _use_timing_cache(trt, config, options.timing_cache)
    fallback: list[str] = []
    if options.dla_core is not None:
        if options.dla_core >= builder.num_DLA_cores:
            raise InputError(
                f"dla_core {options.dla_core}: this device has {builder.num_DLA_cores} DLA "
                f"core(s) under TensorRT {trt.__version__}, numbered from 0 (Jetson AGX Orin and "
                "Orin NX have DLAs; desktop GPUs, Orin Nano and Jetson Thor have none). "
                f"{DLA_ON_11}",
                parameters=("dla_core",),
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not config.can_run_on_DLA(layer):
                fallback.append(f"{layer.name} ({layer.type.name})")
    return config, fallback


def _use_timing_cache(trt: Any, config: Any, path: Path) -> None:
    """Start the build from the timing cache at `path` (created empty when it does not exist).

    ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache
    recorded on another GPU or TensorRT version. Such a cache is refused before the build
    (minutes) rather than ignored, and never overwritten: it is the user's file, possibly
    shared with the machine that made it.
    """
    cached = path.read_bytes() if path.exists() else b""
    cache = config.create_timing_cache(cached)
    if cache is None:
        raise InputError(
            f"timing_cache '{path}' is not a TensorRT timing cache.", parameters=("timing_cache",)
        )
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise InputError(
            f"timing_cache '{path}' was recorded on another GPU or TensorRT version, and "
            f"TensorRT {trt.__version__} refused it. It was left as it is: pass a new path "
            "(it is created) or delete that file to start a fresh cache.",
            parameters=("timing_cache",),
        )


def _inspect(
    trt: Any,
    data: bytes,
    summary: OnnxSummary,
    request: BuildRequest,
    logger: Any,
    options: BuildOptions,
) -> PrecisionReport:
    engine, _runtime = deserialize_engine(
        trt,
        data,
        logger,
        version_compatible=options.version_compatible,
        dla_core=options.dla_core,
    )
    context = engine.create_execution_context()
    if summary.fixed_batch is None:
        shape = (request.batch.opt, *summary.input_chw)
        accepted(context.set_input_shape(summary.input_name, shape), "the input shape", logger)
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    layers = parse_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    del inspector, context, engine, _runtime  # in dependency order
    if request.weakly_typed_fp16:  # the graph says fp32; every GEMM is expected in fp16
        return check_precision(layers, "fp16", min_match_share=MIN_MATCH_SHARE_WEAKLY_TYPED)
    return check_precision(
        layers,
        request.precision,
        summary.compute_nodes,
        min_match_share=MIN_MATCH_SHARE[request.precision],
    )


def refuse_unsupported_target(options: BuildOptions, environment: RuntimeEnvironment) -> None:
    """Refuse, before a long build, options this GPU cannot honour.

    Hardware compatibility exists only for Ampere-or-newer discrete GPUs, not on JetPack
    (TensorRT developer guide, "Hardware Compatibility"): an ``ampere+`` build on a Jetson
    would produce an engine no GPU it is meant for can run.
    """
    if options.hardware_compat != "none" and is_jetson(environment):
        raise InputError(
            f"hardware_compat {options.hardware_compat}: this GPU '{environment.gpu_name}' "
            f"({environment.compute_capability}) is a Jetson, and TensorRT supports hardware-"
            "compatible engines only on Ampere-or-newer discrete GPUs. Build without it (each "
            "Jetson builds its own engine).",
            parameters=("hardware_compat",),
        )


def _build(
    summary: OnnxSummary, request: BuildRequest, options: BuildOptions, progress: bool
) -> BuiltEngine:
    trt = import_tensorrt()
    environment = runtime_environment(trt)
    refuse_unsupported_target(options, environment)
    logger = make_logger(trt)
    started = time.perf_counter()
    with status(f"Parsing {summary.path.name} with TensorRT {trt.__version__}", enabled=progress):
        builder, network, _parser = _parse(trt, summary, request, logger)
    config, fallback = _configure(trt, builder, network, summary, options, request)
    with status(f"Building the {request.precision} engine (minutes for a ViT-B)", enabled=progress):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not build an engine from '{summary.path}': "
            + ("; ".join(logger.errors) or "the builder returned no engine")
        )
    data = bytes(memoryview(serialized))
    cache = config.get_timing_cache() if options.timing_cache is not None else None
    if cache is not None:  # accepted by _use_timing_cache: updated in place, atomically
        with atomic_output(options.timing_cache, force=True, cache=True) as tmp:
            tmp.write_bytes(bytes(memoryview(cache.serialize())))
    with status("Inspecting the engine's layer precisions", enabled=progress):
        report = _inspect(trt, data, summary, request, logger, options)
    if options.precision_check and not report.passed:
        raise VerificationError(
            f"The engine built from '{summary.path}' does not run in the requested "
            f"{request.precision} precision: {report.explain()}. No engine was written."
        )
    return BuiltEngine(
        data=data,
        summary=summary,
        request=request,
        precision=report,
        dla_fallback_layers=fallback,
        environment=environment,
        seconds=time.perf_counter() - started,
    )


def build_engine(
    onnx: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    *,
    force: bool = False,
    progress: bool = True,
) -> EngineBuild:
    """Build `onnx` into the engine `out` and its sidecar ``out.json``; describe both.

    Inputs, options and the outputs' absence are all checked before TensorRT is touched;
    nothing is written unless the build and its precision check succeed.
    """
    out = Path(out)
    summary = summarize_onnx(onnx)
    request = resolve_request(summary, options)
    refuse_existing(out, force)
    refuse_existing(sidecar_path(out), force)
    built = _build(summary, request, options, progress)
    with atomic_output(out, force=force) as tmp:
        tmp.write_bytes(built.data)
    shapes = request.batch.shapes(summary.input_chw)
    record = make_sidecar(
        engine_sha256=hashlib.sha256(built.data).hexdigest(),
        environment=built.environment,
        onnx={"path": str(summary.path), "sha256": summary.sha256},
        precision={
            **built.precision.to_dict(),
            "checked": options.precision_check,
            "source": summary.precision_source,
        },
        profile={
            "input": summary.input_name,
            **{point: list(shape) for point, shape in shapes.items()},
        },
        builder={
            "strongly_typed": not request.weakly_typed_fp16,
            "tf32": False,
            "fp16_flag": request.weakly_typed_fp16,
            "workspace_mib": options.workspace_mib,
            "builder_optimization_level": options.builder_optimization_level,
            "timing_cache": str(options.timing_cache) if options.timing_cache else None,
            "dla_core": options.dla_core,
            "dla_fallback_layers": built.dla_fallback_layers,
            "hardware_compat": options.hardware_compat,
            "version_compatible": options.version_compatible,
            "build_seconds": round(built.seconds, 1),
        },
        build_command=options.command(summary.path, out),
        provenance=summary.provenance,
    )
    try:
        write_json(sidecar_path(out), record, force=force)
    except BaseException:
        out.unlink(missing_ok=True)  # never an engine without its sidecar
        raise
    return EngineBuild(
        engine=out,
        sidecar=sidecar_path(out),
        environment=built.environment,
        precision=built.precision,
        precision_checked=options.precision_check,
        profile={point: list(shape) for point, shape in shapes.items()},
        weakly_typed_fp16=request.weakly_typed_fp16,
        dla_core=options.dla_core,
        dla_fallback_layers=built.dla_fallback_layers,
        build_seconds=round(built.seconds, 1),
        record=record,
    )
