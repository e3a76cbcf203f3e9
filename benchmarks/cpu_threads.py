"""CPU thread count on a shared machine: which default does not collapse when cores are busy.

Each variant runs in its own process (so OpenMP settings apply from the start) and times
training steps of a small ViT (forward + backward, the work of train/sensitivity) and
ONNX Runtime inference of its export (verify-parity/bench). Variants run interleaved,
round after round, so load changes hit all of them alike; the ratios to one thread are
what to read. Variants: 1 thread, every available core (PyTorch's default), every core
with OpenMP passive waiting (``OMP_WAIT_POLICY=PASSIVE``), and `karst_deploy.threads`'s
policy. Writes JSON.

    python benchmarks/cpu_threads.py [--rounds 3] [--steps 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r"""
import json, sys, time, torch
import karst_deploy as kd
from karst_deploy.threads import choose_threads
threads, steps, onnx_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = choose_threads(None if threads == "policy" else int(threads)).threads
torch.set_num_threads(n)
torch.manual_seed(0)
model = kd.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64, patch_size=8, depth=4)
images = torch.randn(32, 3, 64, 64)
labels = torch.randint(0, 10, (32,))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
model.train()
def step():
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
step()
started = time.perf_counter()
for _ in range(steps):
    step()
train = (time.perf_counter() - started) / steps
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = n
session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: images[:8].numpy()}
session.run(None, feed)
started = time.perf_counter()
for _ in range(steps):
    session.run(None, feed)
infer = (time.perf_counter() - started) / steps
print(json.dumps({"threads": n, "train_step_s": train, "ort_batch8_s": infer}))
"""

VARIANTS = {
    "1 thread": ("1", {}),
    "all cores": ("cores", {}),
    "all cores, OMP passive": ("cores", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "karst-deploy policy": ("policy", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_threads.json"))
    args = parser.parse_args()

    import karst_deploy as kd
    from karst_deploy.export import export_model
    from karst_deploy.threads import available_cores, choose_threads

    cores = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "vit.onnx"
        model = kd.create_model(
            "vit_tiny_patch16_224", num_classes=10, img_size=64, patch_size=8, depth=4
        )
        export_model(model, onnx_path)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        loads = []
        for _ in range(args.rounds):
            for name, (threads, env) in VARIANTS.items():
                count = str(cores) if threads == "cores" else threads
                environment = {**os.environ, **env}
                for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                    environment.pop(key, None)  # the variant alone decides
                loads.append(os.getloadavg()[0])
                result = subprocess.run(
                    [sys.executable, "-c", WORKER, count, str(args.steps), str(onnx_path)],
                    capture_output=True, text=True, env=environment, check=True,
                )  # fmt: skip
                samples[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(f"  {name}: {samples[name][-1]}", file=sys.stderr, flush=True)

    summary = {}
    base = {
        k: statistics.median(s[k] for s in samples["1 thread"])
        for k in ("train_step_s", "ort_batch8_s")
    }
    for name, runs in samples.items():
        medians = {k: statistics.median(r[k] for r in runs) for k in base}
        summary[name] = {
            "threads": runs[0]["threads"],
            **{f"median_{k}": round(v, 5) for k, v in medians.items()},
            **{f"{k}_vs_1_thread": round(v / base[k], 3) for k, v in medians.items()},
        }
    report = {
        "benchmark": "cpu_threads",
        "cores_available": cores,
        "cpu_count": os.cpu_count(),
        "load_average_during": [round(v, 2) for v in loads],
        "policy_now": choose_threads().reason,
        "rounds": args.rounds,
        "steps": args.steps,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variants": summary,
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in summary.items():
        print(
            f"{name:24s} threads {row['threads']}: train step {row['median_train_step_s']:.4f} s "
            f"(×{row['train_step_s_vs_1_thread']}), ORT batch 8 {row['median_ort_batch8_s']:.4f} s "
            f"(×{row['ort_batch8_s_vs_1_thread']})"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
