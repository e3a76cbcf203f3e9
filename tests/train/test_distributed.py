"""torchrun / DistributedDataParallel: N processes follow the same trajectory as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from karst_deploy.errors import InputError
from karst_deploy.train.distributed import Distributed, GlobalBatchSampler
from tests.cli_helpers import run_cli
from tests.train.tiny import TINY_BACKBONE, TINY_DATA, TINY_KWARGS, tiny_checkpoint

# After 20 AdamW steps at lr 1e-2, one and two processes differ only by float reduction
# order (gradient all-reduce, per-rank partial sums). Adam's normalised step amplifies such
# differences where a gradient is close to zero, so the bound is 1 % of one step (1e-4),
# far below what a real divergence gives (a different batch split or a missing gradient
# sync moves tensors by ~1e-2).
ADAPTER_ATOL = 1e-4


def test_ranks_split_every_global_batch_of_the_single_process_order():
    single = GlobalBatchSampler(100, 8, Distributed(), seed=5)
    ranks = [GlobalBatchSampler(100, 8, Distributed(rank=r, world_size=2), seed=5) for r in (0, 1)]
    for epoch in (1, 2):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        whole = list(single)
        parts = list(zip(*ranks, strict=True))
        assert len(whole) == len(parts) == 12  # 100 // 8, the incomplete last batch dropped
        for batch, (first, second) in zip(whole, parts, strict=True):
            assert first + second == batch and len(first) == len(second) == 4
    single.set_epoch(1)
    first_epoch = list(single)
    single.set_epoch(2)
    assert list(single) != first_epoch


def test_uneven_batches_are_refused():
    with pytest.raises(InputError, match="divide evenly over the 3 processes"):
        GlobalBatchSampler(100, 8, Distributed(rank=0, world_size=3), seed=0)


def _train_args(checkpoint, out):
    return [
        "train",
        "--backbone",
        TINY_BACKBONE,
        "--model-kwargs",
        json.dumps(TINY_KWARGS),
        "--checkpoint",
        str(checkpoint),
        "--data",
        TINY_DATA,
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--lr",
        "1e-2",
        "--drop-path",
        "0",  # drop-path masks are random per process, so they cannot match
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def test_two_gloo_processes_match_one_process(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    two = subprocess.run(
        [*torchrun, "2", "-m", "karst_deploy", *_train_args(checkpoint, tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    curves = tmp_path / "curves.png"
    # The single process is this one (the CLI in-process; its streams are not terminals).
    one = run_cli(*_train_args(checkpoint, tmp_path / "one"), "--plot", str(curves))
    assert one.returncode == 0, one.stderr[-3000:]
    assert "val acc" in one.stdout and "best epoch (on val)" in one.stdout  # the rich tables
    # stderr is a pipe: the expected time first, then one plain line per epoch with its ETA.
    assert "expected ≈" in one.stderr and "s per epoch" in one.stderr
    epoch_lines = [line for line in one.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"], one.stderr[-2000:]
    assert all("s/epoch" in line and "ETA" in line for line in epoch_lines)
    assert epoch_lines[-1].endswith("ETA 0:00:00")
    assert str(curves) in " ".join(one.stdout.split())  # the closing "wrote" line
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    logs = {n: json.loads((tmp_path / n / "train_log.json").read_text()) for n in ("one", "two")}
    assert logs["two"]["run"]["world_size"] == 2 and logs["one"]["run"]["world_size"] == 1
    assert logs["two"]["run"]["steps"] == logs["one"]["run"]["steps"] == 20
    for a, b in zip(logs["one"]["epochs"], logs["two"]["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    tensors = {n: load_file(tmp_path / n / "adapter.safetensors") for n in ("one", "two")}
    assert tensors["one"].keys() == tensors["two"].keys()
    for key, value in tensors["one"].items():
        torch.testing.assert_close(tensors["two"][key], value, rtol=0, atol=ADAPTER_ATOL)
    # Only rank 0 wrote: no stray temporary directories next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curves.png",
        "one",
        "tiny-backbone.safetensors",
        "two",
    ]
