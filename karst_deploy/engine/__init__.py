"""TensorRT engines: build, inspect/precision check, sidecar, trtexec command emission.

Only `build` touches TensorRT (imported lazily); everything else is pure Python and works on
any machine, so the ONNX an engine is built from, the precision check over an inspector
report, the sidecar checks and the trtexec commands are all tested without a GPU.
"""

from karst_deploy.engine.build import EngineBuildError, build_engine, build_in_memory
from karst_deploy.engine.layers import check_precision, parse_layers
from karst_deploy.engine.onnx_graph import summarize_onnx
from karst_deploy.engine.options import BatchProfile, BuildOptions, parse_batch_profile
from karst_deploy.engine.sidecar import (
    EngineMismatchError,
    RuntimeEnvironment,
    check_sidecar,
    read_sidecar,
    sidecar_path,
)
from karst_deploy.engine.trtexec import TimingSettings, trtexec_commands

__all__ = [
    "BatchProfile",
    "BuildOptions",
    "EngineBuildError",
    "EngineMismatchError",
    "RuntimeEnvironment",
    "TimingSettings",
    "build_engine",
    "build_in_memory",
    "check_precision",
    "check_sidecar",
    "parse_batch_profile",
    "parse_layers",
    "read_sidecar",
    "sidecar_path",
    "summarize_onnx",
    "trtexec_commands",
]
