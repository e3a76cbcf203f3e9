"""Multi-process training under ``torchrun`` (DistributedDataParallel), and the batch sampler.

``torchrun --nproc_per_node N`` starts N copies of the same command with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; `distributed_session` sees them and joins the
process group (gloo on CPU, nccl on CUDA). Every process trains on its share of each
global batch; only rank 0 shows progress and writes files.

`GlobalBatchSampler` makes N processes equivalent to one: every epoch all ranks draw the
same permutation, cut it into global batches of ``batch_size`` and each rank takes its
contiguous ``batch_size / N`` slice. DDP averages the gradients of the per-rank mean
losses, which is the gradient of the global batch's mean loss, so a 2-process run and a
1-process run with the same ``--batch-size`` and ``--seed`` take the same steps (up to the
order of floating-point reductions).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import distributed as dist

from karst_deploy.errors import InputError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum of `values` over all processes (float64, so counts stay exact)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _torchrun_environment() -> Distributed:
    if "WORLD_SIZE" not in os.environ:
        return Distributed()
    try:
        values = {name: int(os.environ.get(name, "0")) for name in TORCHRUN_VARIABLES}
    except ValueError:
        found = {name: os.environ.get(name) for name in TORCHRUN_VARIABLES}
        raise InputError(
            f"The torchrun environment variables are not integers: {found}. Start multi-process "
            "training with `torchrun --nproc_per_node N karst-deploy train ...`."
        ) from None
    return Distributed(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


@contextlib.contextmanager
def distributed_session(device_type: str) -> Iterator[Distributed]:
    """Join the torchrun process group for the duration of a run (no-op for one process)."""
    if dist.is_available() and dist.is_initialized():  # the caller already set one up
        yield Distributed(
            dist.get_rank(), dist.get_world_size(), _torchrun_environment().local_rank
        )
        return
    place = _torchrun_environment()
    if not place.enabled:
        yield place
        return
    if not dist.is_available():
        raise InputError("This torch build has no torch.distributed; run a single process.")
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    try:
        yield place
    finally:
        dist.destroy_process_group()


class GlobalBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's slice of every global batch of a seeded per-epoch permutation.

    The last incomplete global batch is dropped (so every rank's share is equal and every
    step averages the same number of images); the permutation changes every epoch.
    """

    def __init__(self, size: int, batch_size: int, place: Distributed, seed: int) -> None:
        if batch_size % place.world_size:
            raise InputError(
                f"batch_size {batch_size} is the global batch and must divide evenly over "
                f"the {place.world_size} processes torchrun started.",
                parameters=("batch_size",),
            )
        if size < batch_size:
            raise InputError(
                f"The training split has {size} images, fewer than one batch of {batch_size}; "
                "lower batch_size.",
                parameters=("batch_size",),
            )
        self.size, self.batch_size, self.place, self.seed = size, batch_size, place, seed
        self.share = batch_size // place.world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        start = self.place.rank * self.share
        for first in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[first + start : first + start + self.share]
