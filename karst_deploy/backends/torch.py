"""PyTorch eager behind the `Runner` interface: the reference every other stage is compared to."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from karst_deploy.backends.base import Runner


class TorchRunner(Runner):
    """A PyTorch module run in eval mode under `torch.inference_mode`.

    `threads` sets ``torch.set_num_threads`` when the runner is activated (a process-wide
    setting, as in PyTorch itself).
    """

    name = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.device = torch.device(device)
        self.threads = threads

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, threads: int | None = None) -> Runner:
        """The architecture an exported ONNX file was made from, with fresh random weights.

        For `bench --runner torch` only: the latency of dense fp32 layers does not depend on
        the numbers in them, but the logits of this model are meaningless.
        """
        from karst_deploy.adapters.storage import architecture_from_onnx

        return cls(architecture_from_onnx(path), threads=threads)

    def activate_impl(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.model.to(self.device)

    def infer_impl(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images).to(self.device)
        with torch.inference_mode():
            logits = self.model(batch)
        return logits.float().cpu().numpy()  # .cpu() waits for a CUDA device to finish

    def describe(self) -> dict[str, Any]:
        return {
            "runner": self.name,
            "torch": torch.__version__,
            "device": str(self.device),
            "threads": self.threads or torch.get_num_threads(),
        }
