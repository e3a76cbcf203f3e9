"""Time and peak extra memory of `karst_deploy.merge` (KARST defaults, ViT-B/16 by default).

Peak extra memory is the highest resident set size seen while merging (sampled every
millisecond by a thread) minus the resident size just before. Writes JSON.

    python benchmarks/merge_cost.py [--backbone vit_base_patch16_224] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

import karst_deploy as kd
from karst_deploy.doctor import cpu_model


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples RSS in the background; `.peak` is the maximum seen."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure_once(backbone: str, rescale: str) -> dict[str, float]:
    """One merge in this (fresh) process: seconds and peak extra resident memory."""
    torch.manual_seed(0)
    model = kd.add_adapters(kd.create_model(backbone), kd.KarstConfig(rescale=rescale))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    before = rss_bytes()
    with PeakRss() as peak:
        start = time.perf_counter()
        kd.merge(model)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_extra_bytes": peak.peak - before,
        "model_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "trainable": kd.count_trainable(model),
        "layers": sum(1 for _ in kd.adapters.base.adapted_layers(model)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--rescale", default="channel", choices=["channel", "scalar"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/merge_cost.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_once(args.backbone, args.rescale)))
        return

    # Each round runs in a fresh process: the allocator would otherwise reuse the pages
    # freed by the previous merge and hide the real cost.
    runs = []
    for _ in range(args.rounds):
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--backbone",
                args.backbone,
                "--rescale",
                args.rescale,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    seconds = [r["seconds"] for r in runs]
    extra = [r["peak_extra_bytes"] / 2**20 for r in runs]
    result = {
        "backbone": args.backbone,
        "method": "karst",
        "rescale": args.rescale,
        "adapted_layers": runs[0]["layers"],
        "trainable_parameters": runs[0]["trainable"],
        "rounds": args.rounds,
        "merge_seconds_median": statistics.median(seconds),
        "merge_seconds_min": min(seconds),
        "merge_seconds_max": max(seconds),
        "peak_extra_memory_mib_median": statistics.median(extra),
        "peak_extra_memory_mib_max": max(extra),
        "adapted_model_state_mib": runs[0]["model_bytes"] / 2**20,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
