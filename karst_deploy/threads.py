"""How many CPU threads a compute command uses: one policy, for PyTorch and ONNX Runtime alike.

PyTorch and ONNX Runtime default to one thread per core of the machine. On a machine whose
cores are busy with other work that collapses: threads that spin-wait at every parallel
region for a core another process holds make train, export, sensitivity and the demo 5–35×
slower (ENVIRONMENT.md; `benchmarks/cpu_threads.py` measures it). So the default is the
cores this process may run on (``os.sched_getaffinity``: a container or ``taskset`` limit)
minus the cores other work keeps busy (the one-minute load average, read before we start),
never fewer than one. ``--threads N`` overrides it; ``KARST_DEPLOY_THREADS`` sets the
default for every command. The command line also asks OpenMP for passive waiting
(`prefer_passive_waiting`): idle threads sleep instead of spinning on a core another
process needs. Measured on the 2-core development machine at load average ~25 (median
training step of a 4-block ViT, batch 32, 2 interleaved rounds): 2 threads spinning 12.9 s,
2 threads passive 1.45 s, 1 thread 3.0 s, this policy (1 thread there) 2.1 s; ONNX Runtime
batch 8: 0.27, 0.26, 0.21, 0.16 s (`benchmarks/results/cpu_threads.json`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

from karst_deploy.errors import InputError

ENVIRONMENT_VARIABLE = "KARST_DEPLOY_THREADS"
MAX_THREADS = 1024


def prefer_passive_waiting() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; only before OpenMP starts (the
    CLI calls it before importing torch; later it changes nothing)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and why (recorded by commands that write a report)."""

    threads: int
    reason: str
    cores: int  # cores this process may run on
    load: float | None  # one-minute load average when chosen (None where unknown)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; the CPU count where unknown)."""
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """The thread count for compute: `requested` if given, else the policy of the module doc."""
    cores = available_cores()
    load = None
    with contextlib.suppress(AttributeError, OSError):
        load = os.getloadavg()[0]
    if requested is None:
        text = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if text:
            if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
                raise InputError(
                    f"{ENVIRONMENT_VARIABLE} is {text[:40]!r}; expected a thread count from 1 "
                    f"to {MAX_THREADS}."
                )
            return ThreadChoice(int(text), f"{ENVIRONMENT_VARIABLE}={text}", cores, load)
    if requested is not None:
        if isinstance(requested, bool) or not 1 <= requested <= MAX_THREADS:
            raise InputError(
                f"threads is {requested!r}; expected a thread count from 1 to {MAX_THREADS}.",
                parameters=("threads",),
            )
        return ThreadChoice(requested, "--threads", cores, load)
    if load is None:
        return ThreadChoice(cores, f"{cores} available core(s)", cores, load)
    busy = min(cores, math.floor(load + 0.5))  # cores other work keeps busy, rounded
    threads = max(1, cores - busy)
    reason = f"{cores} available core(s), load average {load:.1f}: {threads} free"
    return ThreadChoice(threads, reason, cores, load)


def apply_threads(requested: int | None = None) -> ThreadChoice:
    """Set PyTorch to `choose_threads(requested)` threads (a command's whole run).

    Pass ``choice.threads`` on to ONNX Runtime sessions (their intra-op thread count).
    """
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice


@contextlib.contextmanager
def compute_threads(requested: int | None = None) -> Iterator[ThreadChoice]:
    """`apply_threads` for the body only; PyTorch's previous count is restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    choice = apply_threads(requested)
    try:
        yield choice
    finally:
        torch.set_num_threads(previous)
