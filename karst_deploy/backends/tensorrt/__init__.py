"""TensorRT in one package, in Polygraphy's shape (``polygraphy/backend/trt``).

- `util`: the leaf — lazy import of ``tensorrt``, the capturing logger, this machine's GPU;
- `options`, `onnx_graph`: what a build is asked to do, and what the ONNX file asks of it;
- `loader`: `EngineFromOnnx` (parse, build, inspect, precision check) and `EngineFromPath`
  (an engine file, its sidecar checked); `build_engine` writes an engine with its sidecar;
- `layers`: the engine inspector's report and the precision check over it;
- `sidecar`: the JSON record next to every engine; `trtexec`: the equivalent commands;
- `runner`: `TensorRTRunner`, which runs what a loader gives and never builds.

Only `util` imports TensorRT, and only when called: everything else works on any machine,
so the ONNX an engine is built from, the precision check over an inspector report, the
sidecar checks and the trtexec commands are all tested without a GPU.
"""

from karst_deploy.backends.tensorrt.layers import check_precision, parse_layers
from karst_deploy.backends.tensorrt.loader import (
    EngineBuildError,
    EngineFromOnnx,
    EngineFromPath,
    EnginePlan,
    build_engine,
)
from karst_deploy.backends.tensorrt.onnx_graph import summarize_onnx
from karst_deploy.backends.tensorrt.options import BatchProfile, BuildOptions, parse_batch_profile
from karst_deploy.backends.tensorrt.runner import TensorRTRunner
from karst_deploy.backends.tensorrt.sidecar import (
    EngineMismatchError,
    check_sidecar,
    read_sidecar,
    sidecar_path,
)
from karst_deploy.backends.tensorrt.trtexec import TimingSettings, trtexec_commands
from karst_deploy.backends.tensorrt.util import RuntimeEnvironment

__all__ = [
    "BatchProfile",
    "BuildOptions",
    "EngineBuildError",
    "EngineFromOnnx",
    "EngineFromPath",
    "EngineMismatchError",
    "EnginePlan",
    "RuntimeEnvironment",
    "TensorRTRunner",
    "TimingSettings",
    "build_engine",
    "check_precision",
    "check_sidecar",
    "parse_batch_profile",
    "parse_layers",
    "read_sidecar",
    "sidecar_path",
    "summarize_onnx",
    "trtexec_commands",
]
