"""TensorRT: the lazy import, this machine's GPU, and the `TensorRTRunner`.

Written against the TensorRT 10.x/11.x Python API (``execute_async_v3`` with
``set_tensor_address``/``set_input_shape``, named I/O tensors via ``num_io_tensors`` and
``get_tensor_name``; TensorRT developer guide "Performing Inference" and the 8.x→10.x
migration guide). Nothing here is imported until a TensorRT runner or build is asked for.

Device memory, streams, CUDA events and CUDA graphs come from PyTorch's CUDA runtime (pinned
host tensors, ``torch.cuda.Stream``/``Event``/``CUDAGraph``) rather than cuda-python: torch is
already a dependency, JetPack's PyTorch wheels and PyPI's desktop wheels are CUDA builds, and
tensors free their memory themselves. The price: PyTorch must see the GPU
(``torch.cuda.is_available()``), which `doctor` reports.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from karst_deploy.backends.base import Runner
from karst_deploy.engine.options import BatchProfile, BuildOptions
from karst_deploy.engine.sidecar import (
    RuntimeEnvironment,
    check_sidecar,
    read_sidecar,
    sidecar_path,
)
from karst_deploy.errors import InputError, KarstDeployError, MissingDependencyError, ToolError

MIN_TENSORRT_MAJOR = 10
#: Profile of engines built in memory from an ONNX file: covers bench's default batches (1, 8)
#: and parity's batch 16 without chunking.
IN_MEMORY_BATCH = BatchProfile(1, 8, 32)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a MissingDependencyError saying how to get it."""
    from karst_deploy.doctor import TENSORRT_HINT

    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError from a broken libnvinfer install
        raise MissingDependencyError(
            f"TensorRT is not available here ({type(exc).__name__}: {exc}). {TENSORRT_HINT}"
        ) from None
    major = int(trt.__version__.split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} is too old: karst-deploy needs TensorRT 10.x or 11.x "
            f"(JetPack 6.1 and 6.2 ship 10.3). {TENSORRT_HINT}"
        )
    return trt


def import_torch_cuda() -> Any:
    """``torch`` with a usable CUDA device, or a MissingDependencyError saying why not."""
    import torch

    from karst_deploy.doctor import CUDA_HINT

    if not torch.cuda.is_available():
        raise MissingDependencyError(
            f"The TensorRT runner and builder use PyTorch's CUDA runtime. {CUDA_HINT}"
        )
    return torch


def runtime_environment(trt: Any, device: int = 0) -> RuntimeEnvironment:
    """The TensorRT version and GPU of this machine (for sidecars and their checks)."""
    torch = import_torch_cuda()
    major, minor = torch.cuda.get_device_capability(device)
    return RuntimeEnvironment(
        trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}"
    )


@functools.cache
def _logger_class(trt: Any) -> type:
    class CapturingLogger(trt.ILogger):
        """Keeps TensorRT's errors so they end up in our one-paragraph messages."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(msg)

    return CapturingLogger


def make_logger(trt: Any) -> Any:
    return _logger_class(trt)()


def deserialize_engine(
    trt: Any, data: bytes, logger: Any, *, version_compatible: bool, dla_core: int | None = None
) -> tuple[Any, Any]:
    """(engine, runtime) from a plan (keep the runtime alive as long as the engine).

    A DLA engine runs on the core the runtime names when it deserializes (``IRuntime::setDLACore``,
    as trtexec's ``--useDLACore`` does); left unset, an engine built for core 1 runs on core 0.
    """
    runtime = trt.Runtime(logger)
    # A version-compatible plan embeds its lean runtime, which TensorRT runs only when the
    # host code is explicitly trusted (developer guide, "Version Compatibility").
    runtime.engine_host_code_allowed = version_compatible
    if dla_core is not None:
        if dla_core >= runtime.num_DLA_cores:
            raise InputError(
                f"The engine was built for DLA core {dla_core}; this device has "
                f"{runtime.num_DLA_cores} DLA core(s) under TensorRT {trt.__version__}."
            )
        runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise InputError(
            f"TensorRT {trt.__version__} could not load the engine ({'; '.join(logger.errors)}). "
            "Engines run only on the TensorRT version and GPU that built them: rebuild it here "
            "with `karst-deploy build-engine`."
        )
    return engine, runtime


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


def accepted(ok: bool, what: str, logger: Any) -> None:
    """TensorRT answers a rejected setting with False (and a logged error): raise it."""
    if not ok:
        raise KarstDeployError(
            f"TensorRT rejected {what}: {'; '.join(logger.errors) or 'no message logged'}"
        )


_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16"}


class TensorRTRunner(Runner):
    """Runs a TensorRT engine (or an ONNX file built into one in memory) on the GPU.

    `copies` decides what ``last_inference_time`` (GPU time from CUDA events) covers: host→device
    input copy, inference and device→host output copy (True), or inference alone (False, what
    trtexec 11.x reports by default). With `cuda_graph` each batch size is captured once as a
    CUDA graph and replayed; an engine that cannot be captured runs without one (reported by
    `describe`), as trtexec does.
    """

    name = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        copies: bool = True,
        cuda_graph: bool = False,
        device: int = 0,
        build_options: BuildOptions | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.copies = copies
        self.cuda_graph = cuda_graph
        self.device = device
        self.build_options = build_options
        self.progress = progress
        self.precision: str | None = None
        self.cuda_graph_error: str | None = None
        self._state: dict[str, Any] = {}

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, threads: int | None = None, **options: Any
    ) -> TensorRTRunner:
        """The runner `bench` opens for a model file (`threads` is a CPU setting: unused).

        An ONNX file is built in memory with the same `build_options` for every model, so the
        models compared differ only in their graphs.
        """
        return cls(path, **options)

    # -- loading -------------------------------------------------------------------------
    def activate(self) -> None:
        if self.active:
            return
        trt = import_tensorrt()
        torch = import_torch_cuda()
        torch.cuda.set_device(self.device)
        environment = runtime_environment(trt, self.device)
        logger = make_logger(trt)
        data, version_compatible, dla_core = self._engine_bytes(environment)
        engine, runtime = deserialize_engine(
            trt, data, logger, version_compatible=version_compatible, dla_core=dla_core
        )
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(
                f"Engine '{self.path}' has inputs {inputs} and outputs {outputs}; karst-deploy "
                "runs engines with one image input and one logits output."
            )
        shape = tuple(engine.get_tensor_shape(inputs[0]))
        if -1 in shape:
            low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(inputs[0], 0))
            batch_range = (low[0], high[0])
        else:
            batch_range = (shape[0], shape[0])
        context = engine.create_execution_context()
        chw = shape[1:]
        accepted(
            context.set_input_shape(inputs[0], (batch_range[1], *chw)), "the input shape", logger
        )
        out_shape = tuple(context.get_tensor_shape(outputs[0]))

        def torch_dtype(name: str) -> Any:
            dtype = _TORCH_DTYPES.get(engine.get_tensor_dtype(name).name)
            if dtype is None:
                raise InputError(f"Engine tensor '{name}' is not a floating-point tensor.")
            return getattr(torch, dtype)

        in_dtype, out_dtype = torch_dtype(inputs[0]), torch_dtype(outputs[0])
        device_in = torch.empty((batch_range[1], *chw), dtype=in_dtype, device="cuda")
        device_out = torch.empty(out_shape, dtype=out_dtype, device="cuda")
        for name, buffer in ((inputs[0], device_in), (outputs[0], device_out)):
            accepted(context.set_tensor_address(name, buffer.data_ptr()), f"'{name}'", logger)
        self._state = dict(
            torch=torch,
            trt=trt,
            logger=logger,
            runtime=runtime,
            engine=engine,
            context=context,
            input=inputs[0],
            chw=chw,
            batch_range=batch_range,
            bound_batch=batch_range[1],
            device_in=device_in,
            device_out=device_out,
            host_in=torch.empty(device_in.shape, dtype=in_dtype, pin_memory=True),
            host_out=torch.empty(device_out.shape, dtype=out_dtype, pin_memory=True),
            stream=torch.cuda.Stream(self.device),
            events=(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)),
            graphs={},
            environment=environment,
            dla_core=dla_core,
        )
        super().activate()

    def _engine_bytes(self, environment: RuntimeEnvironment) -> tuple[bytes, bool, int | None]:
        """The plan, whether it is version-compatible, and its DLA core (None: the GPU)."""
        if self.path.suffix == ".onnx":  # build in memory, as Polygraphy's EngineFromNetwork does
            from karst_deploy.engine.build import build_in_memory

            options = self.build_options or BuildOptions(batch=IN_MEMORY_BATCH)
            built = build_in_memory(self.path, options, progress=self.progress)
            self.precision = built.request.precision
            return built.data, options.version_compatible, options.dla_core
        if not self.path.is_file():
            raise InputError(f"Engine '{self.path}' does not exist or is not a file.")
        sidecar = read_sidecar(self.path)
        if sidecar is None:  # built by trtexec: nothing says how it was built
            return self.path.read_bytes(), False, None
        check_sidecar(sidecar, self.path, environment)
        self.precision = sidecar.get("precision", {}).get("requested")
        builder = sidecar["builder"]
        return (
            self.path.read_bytes(),
            bool(builder.get("version_compatible")),
            sidecar_dla_core(sidecar, self.path),
        )

    def deactivate(self) -> None:
        # Release in dependency order: graphs and context before the engine, engine before
        # the runtime that deserialized it.
        for key in ("graphs", "context", "engine", "runtime"):
            self._state.pop(key, None)
        self._state = {}
        super().deactivate()

    # -- running -------------------------------------------------------------------------
    def _bind_batch(self, batch: int) -> None:
        state = self._state
        if state["bound_batch"] != batch:
            shape = (batch, *state["chw"])
            ok = state["context"].set_input_shape(state["input"], shape)
            accepted(ok, f"input shape {shape}", state["logger"])
            state["bound_batch"] = batch

    def _enqueue(self) -> None:
        state = self._state
        if not state["context"].execute_async_v3(state["stream"].cuda_stream):
            raise ToolError(
                f"TensorRT could not run engine '{self.path}': {'; '.join(state['logger'].errors)}"
            )

    def _graph_for(self, batch: int) -> Any:
        """The CUDA graph of one enqueue at `batch`, captured on first use (None if impossible)."""
        state = self._state
        graphs = state["graphs"]
        if batch not in graphs:
            torch = state["torch"]
            # Enqueue once before capturing so TensorRT's shape-dependent setup is not captured
            # (as trtexec does, samples/common/sampleInference.cpp).
            self._enqueue()
            state["stream"].synchronize()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=state["stream"]):
                    self._enqueue()
            except Exception as exc:  # some engines hold operations a graph cannot capture
                self.cuda_graph_error = f"{type(exc).__name__}: {exc}"
                graph = None
            graphs[batch] = graph
        return graphs[batch]

    def infer(self, images: np.ndarray) -> np.ndarray:
        if not self.active:
            self.activate()
        state = self._state
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or not len(images) or tuple(images.shape[1:]) != tuple(state["chw"]):
            expected = ", ".join(map(str, state["chw"]))
            raise InputError(
                f"Engine '{self.path}' takes images of shape (N, {expected}); got {images.shape}."
            )
        torch = state["torch"]
        low, high = state["batch_range"]
        start_event, end_event = state["events"]
        stream = state["stream"]
        logits, seconds = [], 0.0
        for first in range(0, len(images), high):
            chunk = torch.from_numpy(images[first : first + high])
            count = len(chunk)
            batch = max(count, low)  # a chunk below the profile minimum is zero-padded
            host_in = state["host_in"][:batch]
            host_in[:count].copy_(chunk)
            host_in[count:].zero_()
            self._bind_batch(batch)
            graph = self._graph_for(batch) if self.cuda_graph else None
            with torch.cuda.stream(stream):
                if self.copies:
                    start_event.record(stream)
                state["device_in"][:batch].copy_(host_in, non_blocking=True)
                if not self.copies:
                    start_event.record(stream)
                if graph is not None:
                    graph.replay()
                else:
                    self._enqueue()
                if not self.copies:
                    end_event.record(stream)
                state["host_out"][:batch].copy_(state["device_out"][:batch], non_blocking=True)
                if self.copies:
                    end_event.record(stream)
            stream.synchronize()
            seconds += start_event.elapsed_time(end_event) / 1000.0
            logits.append(state["host_out"][:count].float().numpy().copy())
        self.last_inference_time = seconds
        return np.concatenate(logits)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "runner": self.name,
            "engine": str(self.path),
            "copies": self.copies,
            "cuda_graph": self.cuda_graph,
            "precision": self.precision,
        }
        if self._state:
            environment = self._state["environment"]
            info.update(
                tensorrt=environment.tensorrt_version,
                gpu=environment.gpu_name,
                compute_capability=environment.compute_capability,
                batch_range=list(self._state["batch_range"]),
                dla_core=self._state["dla_core"],
            )
        if self.cuda_graph_error:
            info["cuda_graph_error"] = self.cuda_graph_error
        return info
