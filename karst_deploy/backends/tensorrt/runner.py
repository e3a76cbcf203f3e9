"""`TensorRTRunner`: runs a TensorRT engine on the GPU; it never builds one.

Written against the TensorRT 10.x/11.x Python API (``execute_async_v3`` with
``set_tensor_address``/``set_input_shape``, named I/O tensors via ``num_io_tensors`` and
``get_tensor_name``; TensorRT developer guide "Performing Inference" and the 8.x→10.x
migration guide). Where the engine comes from is a loader's business (`loader`): an engine
file (`EngineFromPath`, its sidecar checked) or an ONNX file built in memory
(`EngineFromOnnx`, what ``from_file`` gives bench). Buffers, the stream, CUDA events and
CUDA graphs come from PyTorch's CUDA runtime (see `util`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from karst_deploy.backends.base import Runner
from karst_deploy.backends.tensorrt.loader import (
    EngineFromOnnx,
    EngineFromPath,
    EnginePlan,
)
from karst_deploy.backends.tensorrt.options import BuildOptions
from karst_deploy.backends.tensorrt.util import (
    accepted,
    deserialize_engine,
    import_tensorrt,
    import_torch_cuda,
    make_logger,
    runtime_environment,
)
from karst_deploy.errors import InputError, ToolError

_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16"}


class TensorRTRunner(Runner):
    """Runs the engine that `engine` gives: a loader (`EngineFromPath`, `EngineFromOnnx`) or
    the path of an engine file.

    `copies` decides what ``last_inference_time`` (GPU time from CUDA events) covers: host→device
    input copy, inference and device→host output copy (True), or inference alone (False, what
    trtexec 11.x reports by default). With `cuda_graph` each batch size is captured once as a
    CUDA graph and replayed; an engine that cannot be captured runs without one (reported by
    `describe`), as trtexec does.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine: Callable[[], EnginePlan] | str | os.PathLike[str],
        *,
        copies: bool = True,
        cuda_graph: bool = False,
        device: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(engine, str | os.PathLike):
            engine = EngineFromPath(engine, device=device)
        self.loader = engine
        self.path = getattr(engine, "source", None)
        self.copies = copies
        self.cuda_graph = cuda_graph
        self.device = device
        self.precision: str | None = None
        self.cuda_graph_error: str | None = None
        self._state: dict[str, Any] = {}

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        build_options: BuildOptions | None = None,
        progress: bool = False,
        **options: Any,
    ) -> TensorRTRunner:
        """The engine built in memory from the ONNX file `path` (`threads`: a CPU setting, unused).

        Every model gets the same `build_options`, so models compared differ only in their graphs.
        """
        return cls(EngineFromOnnx(path, build_options, progress=progress), **options)

    # -- loading -------------------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = import_tensorrt()
        torch = import_torch_cuda()
        torch.cuda.set_device(self.device)
        environment = runtime_environment(trt, self.device)
        logger = make_logger(trt)
        plan = self.loader()
        self.precision = plan.precision
        dla_core = plan.dla_core
        engine, runtime = deserialize_engine(
            trt, plan.data, logger, version_compatible=plan.version_compatible, dla_core=dla_core
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

    def deactivate_impl(self) -> None:
        # Release in dependency order: graphs and context before the engine, engine before
        # the runtime that deserialized it.
        for key in ("graphs", "context", "engine", "runtime"):
            self._state.pop(key, None)
        self._state = {}

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

    def infer_impl(self, images: np.ndarray) -> np.ndarray:
        state = self._state
        if tuple(images.shape[1:]) != tuple(state["chw"]):
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
        self.report_time(seconds)
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
