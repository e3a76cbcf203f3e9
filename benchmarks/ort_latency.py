"""Zero added latency on ONNX Runtime (CPU): merged vs base vs unmerged, plus how fast that is.

For each backbone (random weights: latency of dense fp32 layers does not depend on the
numbers) a KARST adapter with the paper's defaults and random non-zero values is exported
three ways — plain backbone, merged, unmerged — and timed interleaved with `karst_deploy.bench`
at each batch size. Reported per backbone and batch:

- merged/base latency ratio with its 95 % bootstrap interval, and the verdict (interval within
  ±3 % and identical graph structure); unmerged/base ratio;
- ONNX Runtime vs PyTorch eager speed-up (median latency of the same architectures through
  `bench --runner torch`, same thread count);
- the fraction of the machine's fp32 peak reached: model FLOPs (counted by
  ``torch.utils.flop_counter`` on the plain backbone, 2 per multiply-add) ÷ ORT latency ÷ the
  best fp32 GEMM rate measured in the same run (a 2048³ matmul in PyTorch and in ONNX Runtime).

    python benchmarks/ort_latency.py [--models vit_small_patch16_224,vit_base_patch16_224]
        [--batch 1,8] [--threads 2] [--rounds 40] [--out benchmarks/results/ort_latency.json]

Smoke run (seconds): ``--models vit_tiny_patch16_224 --img-size 64 --batch 1,2 --rounds 3
--torch-rounds 2 --out /tmp/ort_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import karst_deploy as kd
from karst_deploy.bench import BenchResult, bench
from karst_deploy.doctor import cpu_model
from karst_deploy.export import export_onnx

GEMM_SIZE = 2048
console = Console()


def gemm_rate(threads: int, repeats: int = 10) -> dict[str, float]:
    """Best fp32 GFLOP/s of a GEMM_SIZE³ matmul in PyTorch and in ONNX Runtime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = GEMM_SIZE
    flops = 2 * n**3
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)

    def best(run) -> float:
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return flops / min(times) / 1e9

    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch_rate = best(lambda: torch.mm(ta, tb))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    ort_rate = best(lambda: session.run(None, {"a": a, "b": b}))
    return {
        "torch_gflops": torch_rate,
        "onnxruntime_gflops": ort_rate,
        "peak_gflops": max(torch_rate, ort_rate),
    }


def flops_per_image(model: torch.nn.Module, img_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, img_size, img_size))
    return float(counter.get_total_flops())


def export_three(name: str, img_size: int | None, workdir: Path) -> dict[str, Path]:
    """Plain backbone, merged and unmerged KARST (paper defaults, random values) ONNX files."""
    torch.manual_seed(0)
    model = kd.add_adapters(kd.create_model(name, img_size=img_size), kd.KarstConfig())
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.02)
    adapter = kd.save_adapters(model, workdir / f"{name}-adapter", force=True)
    spec_kwargs = {"img_size": img_size} if img_size else {}
    paths = {kind: workdir / f"{name}-{kind}.onnx" for kind in ("base", "merged", "unmerged")}
    export_onnx(paths["base"], backbone=name, force=True, **spec_kwargs)
    export_onnx(paths["merged"], adapter=adapter, force=True)
    export_onnx(paths["unmerged"], adapter=adapter, unmerged=True, force=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=None, help="Override (smoke runs).")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--torch-rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/ort_latency.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]

    peak = gemm_rate(args.threads)
    console.print(f"fp32 GEMM {GEMM_SIZE}³: {peak}")
    results = []
    measured: dict[str, BenchResult] = {}  # model -> its ONNX Runtime measurement
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            console.print(f"[bold]{name}[/]: exporting base, merged, unmerged …")
            paths = export_three(name, args.img_size, Path(tmp))
            models = {kind: str(path) for kind, path in paths.items()}
            ort_result = bench(
                models, baseline="base", candidate="merged", batches=batches,
                threads=args.threads, rounds=args.rounds, warmup=args.warmup,
            )  # fmt: skip
            torch_result = bench(
                models, baseline="base", batches=batches, runner="torch",
                threads=args.threads, rounds=args.torch_rounds, warmup=1,
            )  # fmt: skip
            measured[name] = ort_result
            base = kd.create_model(name, img_size=args.img_size)
            flops = flops_per_image(base, base.karst_deploy_backbone.img_size)
            per_batch = {}
            for batch in map(str, batches):
                ort_merged = ort_result.latency["merged"][batch].median_ms
                torch_merged = torch_result.latency["merged"][batch].median_ms
                achieved = flops * int(batch) / (ort_merged / 1e3) / 1e9
                ratios = ort_result.ratios
                per_batch[batch] = {
                    "merged_over_base": ratios["merged"][batch].to_dict(),
                    "unmerged_over_base": ratios["unmerged"][batch].to_dict(),
                    "zero_added_latency": asdict(ort_result.verdict.latency[batch]),
                    "onnxruntime_ms": {
                        k: v[batch].to_dict() for k, v in ort_result.latency.items()
                    },
                    "torch_ms": {k: v[batch].to_dict() for k, v in torch_result.latency.items()},
                    "onnxruntime_speedup_over_torch": torch_merged / ort_merged,
                    "achieved_gflops": achieved,
                    "fraction_of_fp32_peak": achieved / peak["peak_gflops"],
                }
            results.append(
                {
                    "model": name,
                    "img_size": base.karst_deploy_backbone.img_size,
                    "parameters": sum(p.numel() for p in base.parameters()),
                    "gflops_per_image": flops / 1e9,
                    "structure": ort_result.verdict.structure.to_dict(),
                    "verdict_passed": ort_result.passed,
                    "batches": per_batch,
                    "onnxruntime": ort_result.to_dict(),
                    "torch": torch_result.to_dict(),
                }
            )

    report = {
        "benchmark": "ort_latency",
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count()},
        "versions": {"torch": torch.__version__, "karst_deploy": kd.__version__},
        "settings": vars(args),
        "gemm": peak,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    table = Table(title=f"ONNX Runtime CPU, {args.threads} threads")
    for column in (
        "model",
        "batch",
        "merged/base [95% CI]",
        "unmerged/base",
        "ORT vs torch",
        "of fp32 peak",
    ):
        table.add_column(column, justify="right")
    for entry in results:
        ratios = measured[entry["model"]].ratios
        for batch, row in entry["batches"].items():
            table.add_row(
                entry["model"],
                batch,
                ratios["merged"][batch].interval(),
                f"{ratios['unmerged'][batch].ratio:.3f}",
                f"{row['onnxruntime_speedup_over_torch']:.2f}×",
                f"{row['fraction_of_fp32_peak']:.1%}",
            )
    console.print(table)
    for entry in results:
        verdict = "yes" if entry["verdict_passed"] else "not shown"
        console.print(
            f"{entry['model']}: zero added latency {verdict}; {entry['structure']['summary']}"
        )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
