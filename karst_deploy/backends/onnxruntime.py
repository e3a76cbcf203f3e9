"""ONNX Runtime behind the `Runner` interface (CPU provider by default).

Session settings follow ONNX Runtime's performance-tuning guide: all graph optimisations
on, sequential execution (a ViT is one chain of ops, so parallel execution only adds
scheduling), an explicit intra-op thread count when one is given. GPU execution
providers are thin subclasses that change `default_providers` (see ``onnxruntime_gpu``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from karst_deploy.backends.base import Runner
from karst_deploy.errors import InputError, MissingDependencyError, ToolError, clip

#: One provider entry as ONNX Runtime takes it: a name, or ``(name, options)``.
Provider = str | tuple[str, dict[str, Any]]

GPU_HINT = (
    "GPU execution providers come with the onnxruntime-gpu package "
    "(from the karst-deploy checkout: pip install -e '.[gpu]', which replaces onnxruntime) "
    "and need a CUDA GPU."
)


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxRuntimeRunner(Runner):
    """An ONNX file run by an ONNX Runtime `InferenceSession`.

    `providers` is ONNX Runtime's own list (names or ``(name, options)`` tuples; default
    `default_providers`). `threads` sets ``intra_op_num_threads`` (None: ONNX Runtime's
    default, one per physical core). `allow_spinning=False` stops idle worker threads from
    busy-waiting, so that several sessions timed in turn do not steal each other's cores.
    """

    name = "onnxruntime"
    default_providers: tuple[Provider, ...] = ("CPUExecutionProvider",)

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: list[Provider] | None = None,
        threads: int | None = None,
        *,
        allow_spinning: bool = True,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"ONNX file '{self.path}' does not exist or is not a file.")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}.", parameters=("threads",))
        self.providers = list(providers) if providers is not None else list(self.default_providers)
        self.threads = threads
        self.allow_spinning = allow_spinning
        self.session: Any = None
        self.fixed_batch: int | None = None  # the graph's fixed batch size, once activated

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, threads: int | None = None) -> Runner:
        """The runner `bench` builds for a model file (see `karst_deploy.bench`)."""
        return cls(path, threads=threads, allow_spinning=False)

    def session_options(self) -> Any:
        """Options for the session; subclasses may add provider-specific entries."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        if not self.allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: ORT's warnings are not the user's problem
        return options

    def activate_impl(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [provider_name(p) for p in self.providers if provider_name(p) not in available]
        if missing:
            raise MissingDependencyError(
                f"ONNX Runtime {ort.__version__} here has no {missing[0]} (available: "
                f"{', '.join(available)}). {GPU_HINT}"
            )
        try:
            self.session = ort.InferenceSession(
                str(self.path), self.session_options(), providers=self.providers
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise InputError(
                f"ONNX Runtime could not load '{self.path}': {type(exc).__name__}: {exc}"
            ) from None
        # ORT silently falls back to the CPU when a provider fails to initialise; refuse that,
        # since every number reported would be about a runtime the user did not ask for.
        requested = provider_name(self.providers[0])
        started = self.session.get_providers()
        if requested not in started:
            self.session = None
            raise MissingDependencyError(
                f"ONNX Runtime could not start {requested} for '{self.path}' (it fell back to "
                f"{', '.join(started)}). {GPU_HINT}"
            )
        self.input_name = self.session.get_inputs()[0].name
        first = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, images: np.ndarray) -> np.ndarray:
        """Logits of `images`; a graph with a fixed batch N gets them in chunks of N.

        The last chunk is padded with copies of its last image, whose logits are dropped.
        """
        size = self.fixed_batch
        if size is None or len(images) == size:
            return self._run(images)
        logits = []
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            count = len(chunk)
            if count < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - count, axis=0)])
            logits.append(self._run(chunk)[:count])
        return np.concatenate(logits)

    def _run(self, images: np.ndarray) -> np.ndarray:
        try:
            logits = self.session.run(None, {self.input_name: images})[0]
        except Exception as exc:  # ORT's Fail/InvalidArgument/RuntimeException: the tool refused
            raise ToolError(
                f"ONNX Runtime could not run '{self.path}' on a batch of shape "
                f"{list(images.shape)}: {type(exc).__name__}: {clip(exc)}"
            ) from None
        return np.asarray(logits, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "runner": self.name,
            "onnxruntime": ort.__version__,
            "providers": self.session.get_providers() if self.session else self.providers,
            "threads": self.threads,
            "path": str(self.path),
        }
