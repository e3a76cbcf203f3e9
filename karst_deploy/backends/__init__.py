"""Runtimes behind one `Runner` interface; see `base`."""

from karst_deploy.backends.base import (
    RUNNERS,
    Runner,
    register_runner,
    runner_class,
    runner_names,
)

# Registered by name only: a runner's module (and its runtime) is imported when asked for.
register_runner("torch", "karst_deploy.backends.torch", "TorchRunner")
register_runner("onnxruntime", "karst_deploy.backends.onnxruntime", "OnnxRuntimeRunner")
register_runner(
    "onnxruntime-cuda", "karst_deploy.backends.onnxruntime_gpu", "OnnxRuntimeCudaRunner"
)
register_runner(
    "onnxruntime-tensorrt", "karst_deploy.backends.onnxruntime_gpu", "OnnxRuntimeTensorRTRunner"
)
register_runner("tensorrt", "karst_deploy.backends.tensorrt", "TensorRTRunner")

__all__ = ["RUNNERS", "Runner", "register_runner", "runner_class", "runner_names"]
