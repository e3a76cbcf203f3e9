"""Which training arithmetic is cheaper for one KARST layer: factored gradients or dense?

`KarstLayer` trains through `KroneckerLinear` (one dense GEMM; factor gradients in factored
form, 2·N·r·(in + out) multiply-adds per token) where that is cheaper than autograd through
``x (W0 + ΔW)ᵀ``, whose dense weight gradient costs out·in per token. The factored path is
many small matmuls and permutes, slower per multiply-add than one GEMM; this script measures
by how much on the layer shapes of ViT-B and ViT-Ti, which calibrates
`karst.FACTORED_GRADIENT_COST` (the rule uses the factored path where its multiply-adds
times that factor are fewer than out·in).

One forward + backward per path (frozen W0, input with a gradient as inside a network), in
rotation, process CPU time with one thread; the cost is the path's time minus a plain
frozen Linear's. Writes JSON.

    python benchmarks/karst_layer_arithmetic.py [--tokens 1576] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import karst_deploy as kd
from karst_deploy.adapters.karst import FACTORED_GRADIENT_COST, KarstLayer, KroneckerLinear
from karst_deploy.doctor import cpu_model

SHAPES = {  # name: (path, in, out)
    "vit-b qkv": ("attn.qkv", 768, 2304),
    "vit-b proj": ("attn.proj", 768, 768),
    "vit-b fc1": ("mlp.fc1", 768, 3072),
    "vit-b fc2": ("mlp.fc2", 3072, 768),
    "vit-ti qkv": ("attn.qkv", 192, 576),
    "vit-ti proj": ("attn.proj", 192, 192),
    "vit-ti fc1": ("mlp.fc1", 192, 768),
    "vit-ti fc2": ("mlp.fc2", 768, 192),
}


def step_seconds(forward, x: torch.Tensor) -> float:
    start = time.process_time()
    forward().sum().backward()
    x.grad = None
    return time.process_time() - start


def measure(path: str, width: int, out: int, tokens: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(width, out).requires_grad_(False)
    layer = KarstLayer(f"blocks.0.{path}", linear, kd.KarstConfig())
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(tokens, width, requires_grad=True)
    paths = {
        "factored": lambda: KroneckerLinear.apply(
            x, linear.weight, layer.C, layer.A, layer.B, layer
        ),
        "dense": lambda: x @ (linear.weight + layer.delta_weight()).t(),
        "plain": lambda: x @ linear.weight.t(),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for index in range(rounds + 1):
        for name, forward in paths.items():
            seconds = step_seconds(forward, x)
            if index:  # the first round warms up
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    kernels, rank = layer.B.shape[:2]
    factored_macs = 2 * kernels * rank * (width + out)
    return {
        "seconds": median,
        "extra_factored_over_extra_dense": (median["factored"] - median["plain"])
        / (median["dense"] - median["plain"]),
        "macs_factored_over_dense": factored_macs / (out * width),
        "rule_takes_factored": layer.factored_gradients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=8 * 197, help="Batch 8 of 197 tokens.")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/karst_layer_arithmetic.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name, (path, width, out) in SHAPES.items():
        results[name] = row = measure(path, width, out, args.tokens, args.rounds)
        cheaper = row["extra_factored_over_extra_dense"] < 1
        print(
            f"{name:12} factored/dense extra time {row['extra_factored_over_extra_dense']:.2f}"
            f"  multiply-adds {row['macs_factored_over_dense']:.2f}"
            f"  factored cheaper: {cheaper}  rule takes factored: {row['rule_takes_factored']}",
            flush=True,
        )
    agree = all(
        (row["extra_factored_over_extra_dense"] < 1) == row["rule_takes_factored"]
        for row in results.values()
    )
    result = {
        "tokens": args.tokens,
        "rounds": args.rounds,
        "factored_gradient_cost": FACTORED_GRADIENT_COST,
        "rule_agrees_with_measurement": agree,
        "layers": results,
        "torch": torch.__version__,
        "cpu": cpu_model(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"rule agrees with the measurement on every shape: {agree}")


if __name__ == "__main__":
    main()
