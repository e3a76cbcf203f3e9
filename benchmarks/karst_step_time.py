"""Training step time of KARST vs LoRA (and KARST's two former forwards), interleaved.

One full optimiser step (forward, cross-entropy, backward, AdamW) on the same backbone,
batch and recipe (KARST defaults: f = 8, r = 8, N = 8, channel re-scaling, split qkv; LoRA
r = 8 on the same targets), timed in rotation (K L D K L D ...) after a warm-up, so all arms
see the same machine state. The verdict is the median of the per-round ratios KARST / LoRA
with a bootstrap 95 % interval, of process CPU time by default (`--clock cpu`: with one
thread, what the step costs, which other processes' load on a shared machine does not
stretch as it stretches wall time; both are recorded). Two former KARST forwards are kept
for comparison: ``karst-dense`` (ΔW formed inside autograd, so backward forms the dense
out×in weight gradient) and ``karst-factored`` (ΔW·x in factored form in forward and
backward: 3·N·r·(in + out) multiply-adds per token, where today's `KroneckerLinear` needs
2·N·r·(in + out), all in backward, plus one dense GEMM).

    python benchmarks/karst_step_time.py                       # ViT-B/16, 224 px, batch 8
    python benchmarks/karst_step_time.py --rounds 3 --backbone vit_tiny_patch16_224  # smoke
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

import karst_deploy as kd
from karst_deploy.adapters.base import adapted_layers
from karst_deploy.doctor import cpu_model

TARGET = 1.10


def _dense_forward(self, x, weight, bias):
    """The former KARST forward: W0 + ΔW formed, so backward computes a dense gradient."""
    if self.t1 is not None:
        x = x * (1 + self.t1)
    if self.t2 is not None:
        x = x + self.t2
    y = F.linear(x, weight + self.delta_weight(), bias)
    if self.s1 is not None:
        y = y * (1 + self.s1)
    if self.s2 is not None:
        y = y + self.s2
    return y


def _factored_forward(self, x, weight, bias):
    """The former all-factored KARST forward: ΔW·x as C_i X B_iᵀ A_iᵀ, under autograd."""
    kernels, rank = self.B.shape[0], self.B.shape[1]
    if self.t1 is not None:
        x = x * (1 + self.t1)
    if self.t2 is not None:
        x = x + self.t2
    lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1])
    tokens = x.shape[0]
    Z = x.reshape(-1, self.n) @ self.B.reshape(kernels * rank, self.n).t()
    Z = Z.view(tokens, self.b, kernels, rank).permute(2, 1, 0, 3)
    U = torch.bmm(self.C, Z.reshape(kernels, self.b, tokens * rank))
    U = U.view(kernels, self.a, tokens, rank).permute(2, 1, 0, 3)
    A = self.A.reshape(kernels, self.blocks, self.k, rank)
    A = A.permute(0, 3, 1, 2).reshape(kernels * rank, self.blocks * self.k) * self.scale
    delta = U.reshape(tokens * self.a, kernels * rank) @ A
    if self.blocks > 1:
        delta = delta.view(tokens, self.a, self.blocks, self.k).transpose(1, 2)
    y = torch.addmm(delta.reshape(tokens, -1), x, weight.t())
    if self.s1 is not None:
        y = y * (1 + self.s1)
    if bias is not None:
        y = y + (bias if self.s1 is None else (1 + self.s1) * bias)
    if self.s2 is not None:
        y = y + self.s2
    return y.reshape(*lead, y.shape[-1])


FORMER_FORWARDS = {"karst-dense": _dense_forward, "karst-factored": _factored_forward}


def build(arm: str, backbone: str, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = kd.create_model(backbone, num_classes=classes).train()
    config = kd.LoraConfig() if arm == "lora" else kd.KarstConfig()
    kd.add_adapters(model, config)
    if arm in FORMER_FORWARDS:
        for _, layer in adapted_layers(model):
            forward = types.MethodType(FORMER_FORWARDS[arm], layer.adapter)
            layer.adapter.adapted_forward = forward
    return model


def bootstrap(ratios: list[float], draws: int = 2000) -> tuple[float, float]:
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arms", default="karst,lora,karst-factored,karst-dense")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="Ratio of process CPU time (default: another process's load stretches wall "
        "time, not the CPU time a step needs; use with --threads 1) or of wall time.",
    )
    parser.add_argument("--note", default="", help="Recorded in the JSON (e.g. machine load).")
    parser.add_argument("--out", default="benchmarks/results/karst_step_time.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arms = args.arms.split(",")
    classes = 10
    torch.manual_seed(0)
    setups: dict[str, Any] = {}
    for arm in arms:
        model = build(arm, args.backbone, classes)
        size = kd.models.backbone_spec(model).img_size
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=1e-4)
        setups[arm] = (model, optimizer, kd.count_trainable(model))
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, classes, (args.batch,), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu_times: dict[str, list[float]] = {arm: [] for arm in arms}
    for index in range(args.warmup + args.rounds):
        order = arms[index % len(arms) :] + arms[: index % len(arms)]  # rotate who goes first
        for arm in order:
            model, optimizer, _ = setups[arm]
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if index >= args.warmup:
                times[arm].append(time.perf_counter() - start)
                cpu_times[arm].append(time.process_time() - cpu_start)
        if index >= args.warmup:
            last = {arm: [round(times[arm][-1], 2), round(cpu_times[arm][-1], 2)] for arm in arms}
            print(json.dumps({"wall, cpu s": last}), flush=True)
    ratios = {
        f"{arm}_over_lora": [k / v for k, v in zip(series[arm], series["lora"], strict=True)]
        for arm in arms
        if arm != "lora"
        for series in [cpu_times if args.clock == "cpu" else times]
    }
    result = {
        "backbone": args.backbone,
        "batch": args.batch,
        "rounds": args.rounds,
        "threads": args.threads,
        "trainable": {arm: setups[arm][2] for arm in arms},
        "clock": args.clock,
        "median_seconds": {arm: statistics.median(v) for arm, v in times.items()},
        "median_cpu_seconds": {arm: statistics.median(v) for arm, v in cpu_times.items()},
        "ratios": {
            name: {"median": statistics.median(values), "ci95": bootstrap(values)}
            for name, values in ratios.items()
        },
        "target_karst_over_lora": TARGET,
        "all_seconds": times,
        "all_cpu_seconds": cpu_times,
        "note": args.note,
        "torch": torch.__version__,
        "cpu": cpu_model(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in result["ratios"].items():
        low, high = value["ci95"]
        print(
            f"{name} ({args.clock} time): {value['median']:.3f} [{low:.3f}, {high:.3f}] "
            f"(target karst <= {TARGET})"
        )


if __name__ == "__main__":
    main()
