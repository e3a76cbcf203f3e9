"""SPT-KARST and SPT-LoRA (old and official forms) vs uniform KARST at one budget, digits task.

The backbone is pretrained on digits 0–4 (karst_deploy.demo.task, cached) and frozen;
adapters and a fresh head learn digits 5–9. The budget is the trainable size of uniform KARST
with ``--uniform-kernels`` kernels (head excluded): SPT spends the same number of entries
where the sensitivity says, on KARST (N = 8) or LoRA (r = 8) structured modules plus sparse
deltas. Each SPT method runs in two forms: ``old`` (the candidates before issue 11: one
candidate per fused weight matrix, no vectors, no cls token, the exact-budget top-up) and
``official`` (ziplab/SPT: q, k, v separate, every bias and LayerNorm vector, the cls token,
the τ-grid sweep); both take their sensitivity from the first 16 × 32 training images in
order with drop-path active. Per method and seed: held-out (test split) accuracy and
trainable entries; per SPT run the seconds its sensitivity took (16 batches of 32, on the
fly); then, for the first SPT model, that merging adds nothing: the merged state dict
has the backbone's keys and shapes, and eager PyTorch latency of merged vs plain backbone
(and unmerged vs plain) as medians over interleaved rounds. Writes JSON.

    python benchmarks/spt_transfer.py [--seeds 0,1,2] [--epochs 30] [--rounds 200]
    python benchmarks/spt_transfer.py --seeds 0 --epochs 1 --rounds 5   # smoke run
    python benchmarks/spt_transfer.py --methods spt-karst-official,spt-karst-old
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import karst_deploy as kd
from karst_deploy.demo.task import (
    TARGET_DATA,
    SourceRecipe,
    pretrain_source_backbone,
    train_transfer_target,
)
from karst_deploy.doctor import cpu_model
from karst_deploy.placement import SptRequest


def uniform_budget(recipe: SourceRecipe, checkpoint: Path, kernels: int) -> int:
    """Trainable entries (head excluded) of uniform KARST with `kernels` kernels."""
    model = kd.create_model(
        recipe.backbone, num_classes=5, checkpoint=checkpoint, **recipe.model_kwargs
    )
    return kd.count_trainable(kd.add_adapters(model, kd.KarstConfig(kernels=kernels)))


def interleaved_latency(models: dict[str, torch.nn.Module], images: torch.Tensor, rounds: int):
    """Median seconds per forward for each model, timed A B C A B C … after a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(3):
                model(images)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(images)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--uniform-kernels", type=int, default=4)
    parser.add_argument("--sigma", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=200, help="Latency rounds per model.")
    parser.add_argument("--batch", type=int, default=32, help="Latency batch size.")
    parser.add_argument("--methods", default="", help="Comma-separated subset (default: all).")
    parser.add_argument("--out", default="benchmarks/results/spt_transfer.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    recipe = SourceRecipe()
    started = time.perf_counter()
    checkpoint = pretrain_source_backbone(recipe, progress=True)
    pretrain_seconds = time.perf_counter() - started
    budget = uniform_budget(recipe, checkpoint, args.uniform_kernels)
    methods = {
        f"uniform-karst (N={args.uniform_kernels})": lambda: kd.KarstConfig(
            kernels=args.uniform_kernels
        ),
    }
    for name, structured in (("karst", kd.KarstConfig()), ("lora", kd.LoraConfig())):
        methods[f"spt-{name}-old"] = lambda s=structured: SptRequest(
            budget, s, sigma=args.sigma, rule="exact", candidates="matrices"
        )
        methods[f"spt-{name}-official"] = lambda s=structured: SptRequest(
            budget, s, sigma=args.sigma
        )
    if args.methods:
        unknown = sorted(set(args.methods.split(",")) - set(methods))
        if unknown:
            parser.error(f"--methods: unknown {unknown}; expected some of {list(methods)}")
        methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}

    runs, first_spt = [], None
    for name, adapter in methods.items():
        for seed in seeds:
            result = train_transfer_target(
                adapter(),
                recipe=recipe,
                checkpoint=checkpoint,
                seed=seed,
                epochs=args.epochs,
                warmup_epochs=min(3, args.epochs - 1),  # the recipe's 3, or fewer in a smoke run
            )
            config = kd.adapters.adapter_config(result.model)
            run = {
                "method": name,
                "seed": seed,
                "test_accuracy": result.log.test_accuracy,
                "best_val_accuracy": result.log.best_val_accuracy,
                "trainable": kd.count_trainable(result.model),
            }
            if isinstance(config, kd.adapters.SptConfig):
                run["placement"] = config.placement.totals()
                run["sensitivity_seconds"] = config.placement.scores["seconds"]
            runs.append(run)
            print(json.dumps(run))
            if isinstance(config, kd.adapters.SptConfig) and first_spt is None:
                first_spt = result.model

    summary = {}
    for name in methods:
        accuracy = [r["test_accuracy"] for r in runs if r["method"] == name]
        trainable = [r["trainable"] for r in runs if r["method"] == name]
        summary[name] = {
            "test_accuracy_mean": statistics.mean(accuracy),
            "test_accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
            "trainable_mean": statistics.mean(trainable),
            "trainable_range": [min(trainable), max(trainable)],
            "budget_reached_mean": statistics.mean(trainable) / budget,
        }
    sensitivity = [r["sensitivity_seconds"] for r in runs if "sensitivity_seconds" in r] or [0.0]

    base = kd.create_model(
        recipe.backbone, num_classes=5, checkpoint=checkpoint, **recipe.model_kwargs
    )
    merged = kd.merge(first_spt)
    same_structure = {k: v.shape for k, v in merged.state_dict().items()} == {
        k: v.shape for k, v in base.state_dict().items()
    }
    size = base.patch_embed.img_size[0]
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    latency = interleaved_latency(
        {"base": base.eval(), "merged": merged, "unmerged": first_spt.eval()},
        images,
        args.rounds,
    )
    result = {
        "task": f"backbone pretrained on digits 0-4, adapters trained on {TARGET_DATA}",
        "backbone": recipe.backbone,
        "model_kwargs": recipe.model_kwargs,
        "budget": budget,
        "sigma": args.sigma,
        "epochs": args.epochs,
        "seeds": seeds,
        "pretrain_seconds_or_cached": round(pretrain_seconds, 2),
        "summary": summary,
        "sensitivity_seconds_median": statistics.median(sensitivity),
        "merged_has_backbone_structure": same_structure,
        "latency_batch": args.batch,
        "latency_rounds": args.rounds,
        "latency_median_ms": {k: v * 1e3 for k, v in latency.items()},
        "merged_over_base": latency["merged"] / latency["base"],
        "unmerged_over_base": latency["unmerged"] / latency["base"],
        "runs": runs,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
