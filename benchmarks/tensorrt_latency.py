"""Zero added latency on TensorRT: merged vs plain backbone, per precision, on this GPU.

Exports the plain backbone and a KARST-merged copy (random weights: only time matters),
converts both to each precision, and runs `bench` with the `tensorrt` runner, which builds
every ONNX file into an engine in memory with the same options, then times the models
interleaved (GPU time from CUDA events). Needs TensorRT and a CUDA GPU (run it on the
Jetson); elsewhere it says what is missing and exits 2 without touching earlier results.

    python benchmarks/tensorrt_latency.py [--backbone vit_small_patch16_224]
        [--precision fp32,fp16,int8] [--batch 1,8] [--rounds 50] [--copies] [--cuda-graph]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import karst_deploy as kd
from karst_deploy.errors import KarstDeployError


def export_pair(backbone: str, work: Path) -> dict[str, Path]:
    """fp32 ONNX of the plain backbone and of a KARST-merged one (random adapter values)."""
    from karst_deploy.export import export_onnx

    torch.manual_seed(0)
    model = kd.add_adapters(kd.create_model(backbone, num_classes=10), kd.KarstConfig())
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.02)
    kd.save_adapters(model, work / "adapter")
    return {
        "base": export_onnx(work / "base.onnx", backbone=backbone, num_classes=10).path,
        "merged": export_onnx(work / "merged.onnx", adapter=work / "adapter").path,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="vit_small_patch16_224")
    parser.add_argument("--precision", default="fp32,fp16,int8")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--copies", action="store_true", help="time host-device copies too")
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/tensorrt_latency.json")
    args = parser.parse_args()

    from karst_deploy.backends.tensorrt.util import import_tensorrt, runtime_environment
    from karst_deploy.bench import bench
    from karst_deploy.precision import convert_precision

    try:
        environment = runtime_environment(import_tensorrt())
    except KarstDeployError as error:
        print(f"tensorrt_latency: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    batches = [int(b) for b in args.batch.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_pair(args.backbone, work)
        for precision in args.precision.split(","):
            models = fp32
            if precision != "fp32":
                models = {
                    label: convert_precision(
                        path,
                        work / f"{label}.{precision}.onnx",
                        precision,
                        calib="digits" if precision == "int8" else None,
                        calib_samples=128,
                    ).path
                    for label, path in fp32.items()
                }
            result = bench(
                models,
                baseline="base",
                candidate="merged",
                batches=batches,
                runner="tensorrt",
                rounds=args.rounds,
                warmup=args.warmup,
                runner_options={"copies": args.copies, "cuda_graph": args.cuda_graph},
            )
            results.append(
                {
                    "precision": precision,
                    "latency": {
                        label: {b: stats.to_dict() for b, stats in per_batch.items()}
                        for label, per_batch in result.latency.items()
                    },
                    "merged_over_base": {
                        b: ratio.to_dict() for b, ratio in result.ratios["merged"].items()
                    },
                    "zero_added_latency": result.passed,
                    "verdict": None if result.verdict is None else result.verdict.to_dict(),
                }
            )
            print(json.dumps(results[-1]["merged_over_base"], indent=2))
    report = {
        "backbone": args.backbone,
        "tensorrt": environment.tensorrt_version,
        "gpu": environment.gpu_name,
        "compute_capability": environment.compute_capability,
        "copies": args.copies,
        "cuda_graph": args.cuda_graph,
        "rounds": args.rounds,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
