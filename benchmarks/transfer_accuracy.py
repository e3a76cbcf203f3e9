"""Held-out accuracy of KARST, KAdaptation, LoRA and a linear probe on the digits transfer task,
and the training step time of KARST vs LoRA on the same backbone and batch.

The task (karst_deploy.demo.task): a tiny ViT pretrained on digits 0–4, frozen; adapters
and a fresh head learn digits 5–9; accuracy on the target's test split (never used for
selection). Budgets are matched to KARST's defaults: LoRA's rank and KAdaptation's kernel count
are the ones whose trainable count (head excluded) comes closest to KARST's. Every method runs
with the same recipe and seeds; the JSON has per-seed figures, mean and sample std.

Step time: one full optimiser step (forward, loss, backward, AdamW) timed for KARST and LoRA
alternately (K L K L ...) after a warm-up, so both see the same machine state; the verdict is
the ratio of medians.

    python benchmarks/transfer_accuracy.py                  # 3 seeds, full recipe, ~15 min
    python benchmarks/transfer_accuracy.py --seeds 0 --epochs 2 --step-backbones transfer \\
        --step-rounds 3 --use-cache                         # smoke run
    python benchmarks/transfer_accuracy.py --methods karst,karst-v1 --step-backbones '' \\
        --use-cache --out benchmarks/results/transfer_accuracy_karst_forms.json --plot ''

Old and new forms side by side (``--forms``: every form below, plus LoRA as the reference):

    python benchmarks/transfer_accuracy.py --forms --use-cache --step-backbones '' --plot '' \\
        --out benchmarks/results/transfer_accuracy_forms.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

import karst_deploy as kd
from karst_deploy.demo.task import (
    TARGET_DATA,
    TARGET_RECIPE,
    SourceRecipe,
    pretrain_source_backbone,
    train_transfer_target,
)
from karst_deploy.doctor import cpu_model

TARGET_CLASSES = 5
# The forms compared by --forms: today's defaults and what earlier releases trained.
FORMS = {
    "karst": "today's default: split qkv (one Kronecker product per q/k/v block), A "
    "Kaiming-uniform with fan-in k (as the official code)",
    "karst-fused": "fused qkv (one product over the 3d rows), A with fan-in k",
    "karst-split-fanin-r": "split qkv, A with fan-in r (the previous release's initialisation)",
    "karst-v1": "the previous release: fused qkv, A with fan-in r",
    "kadaptation": "the paper's form (full n×n slow weights shared by q and v, scale 1)",
    "kadaptation-pevit": "PEViT's structure (rank-1 slow weights per q/v, scale 160, "
    "dropout 0.5 on the Kronecker weight, per-layer q/v bias), same n as 'kadaptation'",
    "lora": "reference: LoRA with the rank whose count is closest to KARST's",
}
OLD_INIT = ("karst-v1", "karst-split-fanin-r")  # A re-drawn with fan-in r after install


def _trainable(recipe: SourceRecipe, config: kd.adapters.AdapterConfig) -> int:
    model = kd.create_model(recipe.backbone, num_classes=TARGET_CLASSES, **recipe.model_kwargs)
    return kd.count_trainable(kd.add_adapters(model, config))


def matched_configs(recipe: SourceRecipe) -> dict[str, kd.adapters.AdapterConfig]:
    """KARST's defaults, and LoRA / KAdaptation settings with the closest trainable count."""
    karst = kd.KarstConfig()
    budget = _trainable(recipe, karst)
    lora = min(
        (kd.LoraConfig(rank=r, alpha=float(r)) for r in range(1, 33)),  # α = r: scale 1
        key=lambda c: abs(_trainable(recipe, c) - budget),
    )
    width = recipe.model_kwargs["embed_dim"]
    kadaptation = min(
        (kd.KAdaptationConfig(kernels=n) for n in range(2, width + 1) if width % n == 0),
        key=lambda c: abs(_trainable(recipe, c) - budget),
    )
    return {
        "karst": karst,
        "karst-fused": kd.KarstConfig(qkv_layout="fused"),
        "karst-split-fanin-r": karst,
        "karst-v1": kd.KarstConfig(qkv_layout="fused"),
        "kadaptation": kadaptation,
        "kadaptation-pevit": kd.KAdaptationConfig(kernels=kadaptation.kernels, structure="pevit"),
        "lora": lora,
        "linear": kd.LinearConfig(),
    }


def v1_init(model: torch.nn.Module) -> None:
    """Re-draw every KARST A as the previous release did: Kaiming-uniform on (k, r), fan-in r."""
    from karst_deploy.adapters.base import adapted_layers, kaiming_uniform

    with torch.no_grad():
        for _, layer in adapted_layers(model):
            A = layer.adapter.A
            A.copy_(kaiming_uniform(*A.shape).to(A.dtype))


@contextlib.contextmanager
def _patched_adapters(after):
    """Run `after(model)` right after the training loop installs adapters (benchmark only)."""
    from karst_deploy.train import loop

    original = loop.add_adapters

    def add_adapters(model, config):
        model = original(model, config)
        after(model)
        return model

    loop.add_adapters = add_adapters
    try:
        yield
    finally:
        loop.add_adapters = original


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def step_times(
    backbone: str, kwargs: dict[str, Any], batch: int, rounds: int, warmup: int = 2
) -> dict[str, Any]:
    """Median seconds per training step of KARST and LoRA (matched budgets), interleaved."""
    recipe = SourceRecipe(backbone=backbone, model_kwargs=kwargs)
    kwargs = dict(kwargs)
    img_size = kwargs.pop("img_size", 224)
    configs = {"karst": kd.KarstConfig(), "lora": kd.LoraConfig()}
    if "embed_dim" in kwargs:
        configs["lora"] = matched_configs(recipe)["lora"]
    torch.manual_seed(0)
    images = torch.randn(batch, 3, img_size, img_size)
    labels = torch.randint(0, TARGET_CLASSES, (batch,))
    setups = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        model = kd.create_model(
            backbone, num_classes=TARGET_CLASSES, img_size=img_size, **kwargs
        ).train()
        kd.add_adapters(model, config)
        trainable = [p for p in model.parameters() if p.requires_grad]
        setups[name] = (model, torch.optim.AdamW(trainable, lr=1e-4), kd.count_trainable(model))
    times: dict[str, list[float]] = {name: [] for name in setups}
    for index in range(warmup + rounds):
        for name, (model, optimizer, _) in setups.items():
            start = time.perf_counter()
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "backbone": backbone,
        "model_kwargs": kwargs,
        "img_size": img_size,
        "batch": batch,
        "rounds": rounds,
        "trainable": {name: setup[2] for name, setup in setups.items()},
        "configs": {name: config.to_hparams() for name, config in configs.items()},
        "median_seconds": medians,
        "all_seconds": times,
        "karst_over_lora": medians["karst"] / medians["lora"],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    methods = result["methods"]
    names = list(methods)
    figure, axis = plt.subplots(figsize=(7, 4))
    means = [100 * methods[n]["test_accuracy"]["mean"] for n in names]
    stds = [100 * methods[n]["test_accuracy"]["std"] for n in names]
    axis.bar(names, means, yerr=stds, capsize=6, color="#8fb3d9")
    for position, name in enumerate(names):
        seeds = [100 * run["test_accuracy"] for run in methods[name]["runs"]]
        axis.scatter([position] * len(seeds), seeds, color="black", s=12, zorder=3)
        head = methods[name]["trainable_with_head"] - methods[name]["trainable"]
        axis.annotate(
            f"{methods[name]['trainable']:,} + {head} (head)",
            (position, 2),
            ha="center",
            fontsize=8,
            rotation=90,
            va="bottom",
        )
    axis.axhline(90, color="grey", linestyle="--", linewidth=1)
    axis.set_ylabel("test accuracy on digits 5-9 (%)")
    axis.set_ylim(0, 100)
    axis.set_title("Digits transfer: backbone pretrained on 0-4, frozen (mean ± std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=TARGET_RECIPE["epochs"])
    parser.add_argument("--methods", default="karst,kadaptation,lora,linear")
    parser.add_argument(
        "--forms", action="store_true", help=f"Old vs new forms: --methods {','.join(FORMS)}."
    )
    parser.add_argument(
        "--step-backbones",
        default="transfer,vit_base_patch16_224",
        help="'transfer' (the task's backbone, batch 32) and/or timm names (224 px).",
    )
    parser.add_argument("--step-batch", type=int, default=8, help="Batch for timm backbones.")
    parser.add_argument("--step-rounds", type=int, default=10)
    parser.add_argument(
        "--use-cache", action="store_true", help="Reuse a cached source backbone (not timed)."
    )
    parser.add_argument("--out", default="benchmarks/results/transfer_accuracy.json")
    parser.add_argument("--plot", default="benchmarks/results/transfer_accuracy.png")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = list(FORMS) if args.forms else args.methods.split(",")
    recipe = SourceRecipe()

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        checkpoint = pretrain_source_backbone(recipe, cache_dir=None if args.use_cache else scratch)
        pretrain_seconds = time.perf_counter() - started
        if not args.use_cache:  # keep the cache warm for the demo without timing it twice
            pretrain_source_backbone(recipe, progress=False)
        configs = matched_configs(recipe)
        methods: dict[str, Any] = {}
        for name in names:
            runs = []
            for seed in seeds:
                started = time.perf_counter()
                patch = _patched_adapters(v1_init) if name in OLD_INIT else contextlib.nullcontext()
                with patch:
                    result = train_transfer_target(
                        configs[name],
                        recipe=recipe,
                        checkpoint=checkpoint,
                        seed=seed,
                        epochs=args.epochs,
                        warmup_epochs=min(TARGET_RECIPE["warmup_epochs"], args.epochs - 1),
                    )
                run = {
                    "seed": seed,
                    "test_accuracy": result.log.test_accuracy,
                    "best_val_accuracy": result.log.best_val_accuracy,
                    "best_epoch": result.log.best_epoch,
                    "train_seconds": time.perf_counter() - started,
                }
                runs.append(run)
                print(json.dumps({"method": name, **run}), flush=True)
            methods[name] = {
                "config": {"method": configs[name].method, **configs[name].to_hparams()},
                **(
                    {"a_init_fan_in": "r" if name in OLD_INIT else "k"}
                    if configs[name].method == "karst"
                    else {}
                ),
                "trainable": result.log.trainable_parameters.adapter,
                "trainable_with_head": result.log.trainable_parameters.total,
                "test_accuracy": summary([r["test_accuracy"] for r in runs]),
                "best_val_accuracy": summary([r["best_val_accuracy"] for r in runs]),
                "train_seconds": summary([r["train_seconds"] for r in runs]),
                "runs": runs,
            }

    steps = []
    for spec in filter(None, args.step_backbones.split(",")):
        if spec == "transfer":
            steps.append(step_times(recipe.backbone, recipe.model_kwargs, 32, args.step_rounds))
        else:
            steps.append(step_times(spec, {}, args.step_batch, args.step_rounds))
        print(json.dumps({k: steps[-1][k] for k in ("backbone", "median_seconds")}), flush=True)

    result = {
        "task": f"backbone pretrained on digits 0-4 (frozen), adapters trained on {TARGET_DATA}",
        "source_recipe": recipe.to_dict(),
        "target_recipe": {**TARGET_RECIPE, "epochs": args.epochs},
        "seeds": seeds,
        "forms": {name: FORMS[name] for name in names if name in FORMS},
        "pretrain_seconds": None if args.use_cache else pretrain_seconds,
        "demo_seconds_pretrain_plus_karst": (
            None
            if args.use_cache or "karst" not in methods
            else pretrain_seconds + methods["karst"]["runs"][0]["train_seconds"]
        ),
        "methods": methods,
        "step_time": steps,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, Path(args.plot))
    for name, method in methods.items():
        accuracy = method["test_accuracy"]
        print(
            f"{name:12s} {method['trainable']:>8,} params  test acc "
            f"{100 * accuracy['mean']:.1f} ± {100 * accuracy['std']:.1f} %"
        )
    for step in steps:
        print(
            f"step time on {step['backbone']} (batch {step['batch']}): KARST / LoRA = "
            f"{step['karst_over_lora']:.2f}"
        )


if __name__ == "__main__":
    main()
