"""`karst-deploy demo`: the whole pipeline in one call, on real images, with every check real.

`run_demo(out_dir)` does, on two CPU cores and with no downloads:

1. **source backbone** — a small ViT pretrained in-process on digits 0–4
   (`karst_deploy.train.transfer.pretrain_source_backbone`), cached under
   ``$XDG_CACHE_HOME/karst-deploy`` so a second run skips it;
2. **KARST adapters** trained, backbone frozen, on digits 5–9, classes it never saw;
3. **export** of the merged, the unmerged and the plain-backbone ONNX files;
4. **int8**: symmetric QDQ int8 from the merged fp32 ONNX, calibrated on 256 training images;
5. **parity**: unmerged PyTorch → merged PyTorch → ONNX Runtime (merged) → ONNX Runtime
   (unmerged) on seeded random inputs and the held-out test split, fp32 tolerance; and the
   int8 gate (accuracy drop vs the fp32 merged ONNX ≤ 1 point, top-1 agreement ≥ 97 %);
6. **bench**: base, merged, unmerged and int8 interleaved on ONNX Runtime, batch 1 and 8;
7. **report**: ``demo.json``, ``demo.png`` and the artifacts, in one directory written
   atomically (built in a temporary sibling, renamed at the end).

Verdicts. Hard (the demo fails, exit 1): fp32 parity; KARST held-out (test split)
accuracy ≥ 90 %; the int8 gate (it exists to catch a broken calibration, so a failure
means the int8 artifact in the report must not be shipped); merged and base graphs
structurally identical (same operator multiset and initializer shapes), which is what
"zero added latency" rests on. Soft (reported, never failing): the bootstrap interval of
merged/base latency, judged by bench's own rule (`karst_deploy.bench.interval_outcome`,
band `karst_deploy.bench.DEFAULT_TOLERANCE`) — "pass" when its 95 % interval lies inside the
band, "inconclusive" when it straddles an edge (a noisy shared machine widens it), "not shown"
when it lies wholly outside. With identical graphs such a gap is the measurement's: on the
development machine, ONNX Runtime sessions of the *same* graph timed in one process
differed by up to 3 % with their creation order, which no number of rounds removes.

The int8 gate is judged on the validation *and* test splits of digits 5–9 (360 images; the
test split alone has 181, where one image is 0.55 points against a 1-point gate). Neither
split is seen by calibration (training split) and the gate compares int8 with fp32 on the
same images, so selecting the epoch on validation does not bias it. The ≥ 90 % accuracy
claim uses the test split alone, never seen by training or selection.

The source backbone's recipe (its seed included) is fixed, like downloaded pretrained
weights; `seed` seeds the adapter training, the random parity inputs and the bench inputs.
`quick=True` is the reduced mode for tests and CI: a shorter source recipe (cached
separately) and target schedule, fewer bench rounds, every step still real; its accuracy
requirement is relaxed (see `QUICK`), and the report says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from karst_deploy.adapters import KarstConfig
from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
from karst_deploy.bench import (
    DEFAULT_TOLERANCE,
    SHOWN,
    BenchResult,
    bench,
    combine_outcomes,
)
from karst_deploy.compare import accuracy
from karst_deploy.doctor import diagnose
from karst_deploy.errors import InputError, VerificationError
from karst_deploy.export import compare_structure, export_onnx
from karst_deploy.files import (
    atomic_directory,
    refuse_existing,
    sha256_file,
    write_json,
)
from karst_deploy.onnx_file import read_provenance
from karst_deploy.parity import (
    InputSet,
    Stage,
    image_inputs,
    run_stages,
    verify_parity,
)
from karst_deploy.precision import convert_precision
from karst_deploy.progress import stderr_console
from karst_deploy.report.plots import plot_demo
from karst_deploy.train.transfer import (
    TARGET_DATA,
    TARGET_RECIPE,
    SourceRecipe,
    pretrain_source_backbone,
    source_checkpoint_path,
    train_transfer_target,
)

FORMAT = "karst-deploy.demo"
BATCHES = (1, 8)
CALIBRATION_SAMPLES = 256
PARITY_RANDOM_SAMPLES = 256
INT8_GATE_SPLITS = ("val", "test")


@dataclass(frozen=True)
class DemoSettings:
    """How much work each step does; `FULL` is the demo, `QUICK` the reduced mode."""

    mode: str
    source: SourceRecipe
    target_epochs: int
    target_warmup_epochs: int
    min_test_accuracy: float  # fraction of the held-out test split
    bench_rounds: int
    bench_warmup: int
    note: str | None = None


FULL = DemoSettings(
    mode="full",
    source=SourceRecipe(),
    target_epochs=TARGET_RECIPE["epochs"],
    target_warmup_epochs=TARGET_RECIPE["warmup_epochs"],
    min_test_accuracy=0.90,
    # The demo's ViT runs in well under a millisecond, so rounds are cheap; 1000 interleaved
    # rounds of four models at two batch sizes take ~12 s on two cores.
    bench_rounds=1000,
    bench_warmup=20,
)
# 20 source and 8 target epochs take ~15 s instead of ~40 s and reach 78 % (chance: 20 %).
# 90 % needs the full 80-epoch pretraining and at least 12 target epochs (measured: 90.6 %,
# one test image above the bar, so it would hang on float details of the CPU and torch
# version), too slow and too fragile for CI. So quick mode asks for 50 %, which a broken
# pipeline (random head, untrained adapters, shuffled labels) still fails.
QUICK = DemoSettings(
    mode="quick",
    source=SourceRecipe(epochs=20, warmup_epochs=1),
    target_epochs=8,
    target_warmup_epochs=1,
    min_test_accuracy=0.50,
    bench_rounds=30,
    bench_warmup=5,
    note="quick mode: shorter pretraining and training, so the accuracy requirement is "
    "relaxed from 90 % to 50 %, and 30 bench rounds make the latency interval wide; run "
    "`karst-deploy demo` without --quick for the real figures",
)


@dataclass(frozen=True)
class Verdict:
    """One check of the demo. `state`: pass | fail | inconclusive | not shown."""

    name: str
    state: str
    detail: str
    hard: bool  # a failing hard verdict fails the demo

    @property
    def failed(self) -> bool:
        return self.hard and self.state != "pass"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DemoResult:
    """Everything the demo measured; `to_dict` is ``demo.json``."""

    out: Path
    settings: DemoSettings
    seed: int
    threads: int | None
    backbone: dict[str, Any]
    training: dict[str, Any]
    accuracy: dict[str, dict[str, float]]  # input set -> stage -> percent
    parity: dict[str, Any]
    int8: dict[str, Any]
    latency: dict[str, Any]
    verdicts: list[Verdict]
    steps: list[dict[str, Any]]
    artifacts: dict[str, dict[str, Any]]
    machine: dict[str, Any]
    commands: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def test_images(self) -> int:
        """How many held-out test images the accuracy per stage is measured on."""
        return next(i["samples"] for i in self.parity["inputs"] if i["name"] == "images")

    @property
    def failures(self) -> list[str]:
        return [f"{v.name}: {v.detail}" for v in self.verdicts if v.failed]

    def raise_if_failed(self) -> None:
        if self.failures:
            raise VerificationError(
                f"The demo failed (report in '{self.out}'): " + "; ".join(self.failures) + "."
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "passed": self.passed,
            "failures": self.failures,
            "mode": self.settings.mode,
            "note": self.settings.note,
            "seed": self.seed,
            "threads": self.threads,
            "requirements": {
                "min_test_accuracy": self.settings.min_test_accuracy,
                "latency_tolerance": DEFAULT_TOLERANCE,
            },
            "verdicts": [v.to_dict() for v in self.verdicts],
            "backbone": self.backbone,
            "training": self.training,
            "accuracy": self.accuracy,
            "parity": self.parity,
            "int8": self.int8,
            "latency": self.latency,
            "steps": self.steps,
            "total_seconds": round(sum(s["seconds"] for s in self.steps), 2),
            "artifacts": self.artifacts,
            "commands": self.commands,
            "machine": self.machine,
        }


class _Steps:
    """Numbered, timed steps with a one-line status on stderr for each."""

    def __init__(self, total: int, show: bool) -> None:
        self.total, self.show, self.console = total, show, stderr_console()
        self.records: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def step(self, name: str, description: str) -> Iterator[dict[str, Any]]:
        """Time a step; the body may add a ``detail`` string to the yielded record."""
        number = len(self.records) + 1
        if self.show:
            self.console.print(f"[bold][{number}/{self.total}][/] {description} …")
        record: dict[str, Any] = {"name": name, "description": description}
        started = time.perf_counter()
        yield record
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.records.append(record)
        if self.show:
            extra = f" ({record['detail']})" if record.get("detail") else ""
            self.console.print(f"      [green]done[/] in {record['seconds']:.1f} s{extra}")


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    seed: int = 0,
    force: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the whole pipeline and write the report directory `out_dir` (see the module doc).

    Refuses an existing `out_dir` without `force` before any work. The report is written
    even when a verdict fails; call `DemoResult.raise_if_failed` to turn that into an error.
    """
    out = Path(out_dir)
    refuse_existing(out, force, directory=True)
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}.")
    settings = QUICK if quick else FULL
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with atomic_directory(out, force=force) as staging:
            result = _run(staging, settings, seed, threads, progress)
            result.out = out
    finally:
        torch.set_num_threads(previous_threads)
    return result


def _run(
    root: Path, settings: DemoSettings, seed: int, threads: int | None, progress: bool
) -> DemoResult:
    steps = _Steps(total=7, show=progress)
    recipe = settings.source
    kwargs = dict(recipe.model_kwargs)
    img_size = kwargs.pop("img_size")

    with steps.step("source backbone", "source backbone: a ViT pretrained on digits 0-4") as rec:
        cached = source_checkpoint_path(recipe).is_file()
        checkpoint = pretrain_source_backbone(recipe, progress=progress)
        shutil.copyfile(checkpoint, root / "backbone.safetensors")
        rec["cached"] = cached
        rec["detail"] = "cached, reused" if cached else "pretrained and cached"
    backbone = {
        "name": recipe.backbone,
        "model_kwargs": recipe.model_kwargs,
        "recipe": recipe.to_dict(),
        "recipe_key": recipe.key(),
        "cache_path": str(checkpoint),
        "cached": cached,
        "file": "backbone.safetensors",
        "sha256": sha256_file(checkpoint),
    }

    adapter_dir = root / "adapter"
    config = KarstConfig()
    with steps.step("train", "KARST adapters on the unseen digits 5-9, backbone frozen") as rec:
        trained = train_transfer_target(
            config,
            adapter_dir,
            recipe=recipe,
            checkpoint=checkpoint,
            progress=progress,
            epochs=settings.target_epochs,
            warmup_epochs=settings.target_warmup_epochs,
            seed=seed,
        )
        log = trained.log
        rec["detail"] = f"held-out test accuracy {log['test_accuracy']:.1%}"
    training = {
        "method": config.method,
        "adapter_config": config.to_hparams(),
        "data": TARGET_DATA,
        "images": log["data"]["images"],
        "epochs": len(log["epochs"]),
        "best_epoch": log["best_epoch"],
        "best_val_accuracy": log["best_val_accuracy"],
        "test_accuracy": log["test_accuracy"],
        "trainable_parameters": log["trainable_parameters"],
        "val_accuracy_per_epoch": [e["val_accuracy"] for e in log["epochs"]],
        "train_loss_per_epoch": [e["train_loss"] for e in log["epochs"]],
        "log": "adapter/train_log.json",
    }

    files = {name: root / f"{name}.onnx" for name in ("merged", "unmerged", "base")}
    with steps.step("export", "export ONNX: merged, unmerged and the plain backbone") as rec:
        exports = _export(files, adapter_dir, checkpoint, recipe.backbone, img_size, kwargs, log)
        rec["detail"] = ", ".join(
            f"{k} {v['size_bytes'] / 2**20:.2f} MiB" for k, v in exports.items()
        )

    files["merged-int8"] = root / "merged-int8.onnx"
    with steps.step("int8", "int8: calibrated symmetric QDQ from merged.onnx") as rec:
        int8_model = convert_precision(
            files["merged"],
            files["merged-int8"],
            "int8",
            calib=TARGET_DATA,
            calib_samples=CALIBRATION_SAMPLES,
            progress=progress,
        )
        rec["detail"] = f"calibration cache {int8_model.calibration['cache']}"

    with steps.step("parity", "parity on held-out images: fp32 chain and the int8 gate") as rec:
        parity, int8, accuracies = _parity(
            files, adapter_dir, checkpoint, seed, threads, progress, root
        )
        rec["detail"] = (
            f"fp32 {'pass' if parity['passed'] else 'FAIL'}, "
            f"int8 gate {'pass' if int8['passed'] else 'FAIL'}"
        )
    int8["conversion"] = _relative(int8_model.to_dict(), root)

    with steps.step("bench", "latency: base, merged, unmerged, int8 interleaved") as rec:
        bench_result = _bench(files, settings, seed, threads, progress, root)
        rec["detail"] = f"{settings.bench_rounds} rounds per batch size"
    latency = _latency_summary(bench_result, files)

    verdicts = _verdicts(settings, training, parity, int8, latency)
    result = DemoResult(
        out=root,
        settings=settings,
        seed=seed,
        threads=threads,
        backbone=backbone,
        training=training,
        accuracy=accuracies,
        parity=parity,
        int8=int8,
        latency=latency,
        verdicts=verdicts,
        steps=steps.records,
        artifacts={},
        machine={},
        commands=_commands(settings, threads, img_size, kwargs, log, recipe.backbone),
    )
    with steps.step("report", "report: demo.json, demo.png") as rec:
        result.machine = diagnose()
        plot_demo(result, bench_result.samples_ms, root / "demo.png")
        result.artifacts = _artifacts(root, exports)
        rec["detail"] = f"{len(result.artifacts) + 1} files"
    write_json(root / "demo.json", result.to_dict())  # last, so it holds this step's time
    return result


def _export(
    files: dict[str, Path],
    adapter_dir: Path,
    checkpoint: Path,
    backbone: str,
    img_size: int,
    model_kwargs: dict[str, Any],
    log: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    merged = export_onnx(files["merged"], adapter=adapter_dir, checkpoint=checkpoint)
    unmerged = export_onnx(
        files["unmerged"], adapter=adapter_dir, checkpoint=checkpoint, unmerged=True
    )
    # The latency baseline: the plain source backbone, same architecture and head size.
    base = export_onnx(
        files["base"],
        backbone=backbone,
        checkpoint=checkpoint,
        num_classes=len(log["data"]["classes"]),
        img_size=img_size,
        model_kwargs=model_kwargs,
    )
    return {r.kind: r.to_dict() for r in (merged, unmerged, base)}


def _parity(
    files: dict[str, Path],
    adapter_dir: Path,
    checkpoint: Path,
    seed: int,
    threads: int | None,
    progress: bool,
    root: Path,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, float]]]:
    """The fp32 chain (``parity.json``) and the int8 gate (``parity-int8.json``)."""
    fp32 = verify_parity(
        files["merged"],
        adapter_dir,
        checkpoint=checkpoint,
        data=TARGET_DATA,
        split="test",
        samples=PARITY_RANDOM_SAMPLES,  # random inputs; every one of the 181 test images
        seed=seed,
        threads=threads,
        extra_stages=[
            Stage("onnxruntime-unmerged", OnnxRuntimeRunner(files["unmerged"], threads=threads))
        ],
        progress=progress,
    )
    write_json(root / "parity.json", _relative(fp32.to_dict(), root))

    record = read_provenance(files["merged"])
    splits = {  # every image of each split
        split: image_inputs(
            TARGET_DATA, split, 10**9, record["img_size"], record["mean"], record["std"]
        )
        for split in INT8_GATE_SPLITS
    }
    held_out = InputSet(
        "+".join(INT8_GATE_SPLITS),
        np.concatenate([s.images for s in splits.values()]),
        np.concatenate([s.labels for s in splits.values()]),
        {"source": TARGET_DATA, "splits": list(INT8_GATE_SPLITS)},
    )
    gate = run_stages(
        [
            Stage("onnxruntime", OnnxRuntimeRunner(files["merged"], threads=threads)),
            Stage(
                "onnxruntime-int8",
                OnnxRuntimeRunner(files["merged-int8"], threads=threads),
                precision="int8",
            ),
        ],
        [held_out],
        progress=progress,
    )
    gate.provenance = read_provenance(files["merged-int8"])
    write_json(root / "parity-int8.json", _relative(gate.to_dict(), root))

    test = splits["test"]
    with OnnxRuntimeRunner(files["merged-int8"], threads=threads) as runner:
        int8_test = accuracy(runner.infer(test.images), test.labels)
    accuracies = {
        "test": {**fp32.accuracy["images"], "onnxruntime-int8": int8_test},
        held_out.name: gate.accuracy[held_out.name],
    }
    comparison = gate.comparisons[0]
    int8 = {
        "passed": gate.passed,
        "failures": gate.failures,
        "judged_on": f"{held_out.name} splits of {TARGET_DATA} ({len(held_out.labels)} images)",
        "reference": "onnxruntime (merged fp32)",
        "gate": dataclasses.asdict(comparison.tolerance),
        "metrics": comparison.metrics,
        "checks": [c.to_dict() for c in comparison.checks],
        "report": "parity-int8.json",
    }
    parity = {
        "passed": fp32.passed,
        "failures": fp32.failures,
        "stages": [s["name"] for s in fp32.stages],
        "comparisons": [
            {
                "reference": c.reference,
                "candidate": c.candidate,
                "inputs": c.inputs,
                "passed": c.passed,
                "max_abs_diff": c.metrics["max_abs_diff"],
                "allowed": next((k.limit for k in c.checks if k.name == "max abs diff"), None),
                "top1_agreement": c.metrics["top1_agreement"],
            }
            for c in fp32.comparisons
        ],
        "inputs": fp32.inputs,
        "report": "parity.json",
    }
    return parity, int8, accuracies


def _bench(
    files: dict[str, Path],
    settings: DemoSettings,
    seed: int,
    threads: int | None,
    progress: bool,
    root: Path,
) -> BenchResult:
    """Base, merged, unmerged and int8 interleaved (``bench.json``); merged is judged."""
    result = bench(
        {label: files[label] for label in ("base", "merged", "unmerged", "merged-int8")},
        baseline="base",
        candidate="merged",
        batches=BATCHES,
        threads=threads,
        rounds=settings.bench_rounds,
        warmup=settings.bench_warmup,
        tolerance=DEFAULT_TOLERANCE,
        seed=seed,
        progress=progress,
    )
    write_json(root / "bench.json", _relative(result.to_dict(), root))
    return result


def _latency_summary(result: BenchResult, files: dict[str, Path]) -> dict[str, Any]:
    """Latency table, ratios, the structural check and the interval's state per batch."""
    intervals = {
        batch: {**ratio, "state": result.verdict.latency[batch]["outcome"]}
        for batch, ratio in result.ratios["merged"].items()
    }
    return {
        "runner": result.runner,
        "threads": result.threads,
        "rounds": result.rounds,
        "warmup": result.warmup,
        "batches": result.batches,
        "latency": result.latency,
        "ratios": result.ratios,
        "merged_vs_base": intervals,
        "structure": result.verdict.structure,
        # What the unmerged graph adds over the backbone: the cost that merging removes.
        "unmerged_structure": compare_structure(files["base"], files["unmerged"]).to_dict(),
        "report": "bench.json",
    }


def _verdicts(
    settings: DemoSettings,
    training: dict[str, Any],
    parity: dict[str, Any],
    int8: dict[str, Any],
    latency: dict[str, Any],
) -> list[Verdict]:
    required, reached = settings.min_test_accuracy, training["test_accuracy"]
    verdicts = [
        Verdict(
            "accuracy",
            "pass" if reached >= required else "fail",
            f"KARST held-out (test split) accuracy {reached:.1%} "
            f"{'≥' if reached >= required else 'is below'} {required:.0%}"
            + (" (relaxed for quick mode)" if settings.mode == "quick" else ""),
            hard=True,
        ),
        Verdict(
            "parity",
            "pass" if parity["passed"] else "fail",
            "fp32 chain " + " → ".join(parity["stages"]) + ": every check passed"
            if parity["passed"]
            else "; ".join(parity["failures"]),
            hard=True,
        ),
        Verdict(
            "int8 gate",
            "pass" if int8["passed"] else "fail",
            f"accuracy drop {int8['metrics']['accuracy_drop']:.2f} pt "
            f"(≤ {int8['gate']['max_accuracy_drop']:g}), top-1 agreement "
            f"{int8['metrics']['top1_agreement']:.1%} "
            f"(≥ {int8['gate']['min_top1_agreement']:.0%}) on {int8['judged_on']}"
            if int8["passed"]
            else "; ".join(int8["failures"]),
            hard=True,
        ),
        Verdict(
            "structure",
            "pass" if latency["structure"]["same"] else "fail",
            f"merged vs base: {latency['structure']['summary']}",
            hard=True,
        ),
    ]
    ratios = latency["merged_vs_base"]
    intervals = "; ".join(
        f"batch {b}: {r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        for b, r in ratios.items()
    )
    band = f"±{DEFAULT_TOLERANCE:.0%}"
    state = combine_outcomes(r["state"] for r in ratios.values())
    if state == SHOWN:
        state, detail = "pass", f"merged/base 95% interval within {band} ({intervals})"
    else:
        reach = "lies wholly outside" if state == "not shown" else "straddles"
        detail = f"the merged/base 95% interval {reach} {band} ({intervals})"
        if all(r["ci_high"] <= 1 + DEFAULT_TOLERANCE for r in ratios.values()):
            detail += "; merged is not slower than base"
        if latency["structure"]["same"]:
            # Measured here: ONNX Runtime sessions of one graph differ by up to ~3 % with
            # their creation order in one process (memory placement), beyond any rounds.
            detail += (
                "; the graphs are identical, so the gap is the measurement's (sessions of one "
                "graph can differ by a few % with their memory placement)"
            )
    verdicts.append(Verdict("latency interval", state, detail, hard=False))
    return verdicts


def _commands(
    settings: DemoSettings,
    threads: int | None,
    img_size: int,
    model_kwargs: dict[str, Any],
    log: dict[str, Any],
    backbone: str,
) -> list[str]:
    """The karst-deploy commands that redo steps 3–6 from inside the report directory.

    Run there, the export and convert-precision commands rewrite the same bytes.
    """
    kwargs = json.dumps(model_kwargs, separators=(",", ":"))
    common = "--adapter adapter --checkpoint backbone.safetensors"
    timing = f"--rounds {settings.bench_rounds} --warmup {settings.bench_warmup}"
    if threads is not None:
        timing += f" --threads {threads}"
    return [
        f"karst-deploy export {common} --out merged.onnx",
        f"karst-deploy export {common} --unmerged --out unmerged.onnx",
        f"karst-deploy export --no-adapter --backbone {backbone} --checkpoint "
        f"backbone.safetensors --num-classes {len(log['data']['classes'])} --img-size "
        f"{img_size} --model-kwargs '{kwargs}' --out base.onnx",
        f"karst-deploy convert-precision --onnx merged.onnx --precision int8 --calib "
        f"{TARGET_DATA} --calib-samples {CALIBRATION_SAMPLES} --out merged-int8.onnx",
        f"karst-deploy verify-parity {common} --onnx merged.onnx --data {TARGET_DATA} "
        "--split test --samples 256",
        "karst-deploy bench --onnx merged.onnx --baseline base.onnx --unmerged unmerged.onnx "
        f"--int8 merged-int8.onnx --batch {','.join(map(str, BATCHES))} {timing}",
    ]


def _artifacts(root: Path, exports: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every file of the report (demo.json aside) with its size, and sha256 for models."""
    artifacts = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        entry: dict[str, Any] = {"bytes": path.stat().st_size}
        if path.suffix in (".onnx", ".safetensors"):
            entry["sha256"] = sha256_file(path)
        if path.stem in exports and path.suffix == ".onnx":
            entry["check"] = exports[path.stem]["check"]
        artifacts[name] = entry
    return artifacts


def _relative(data: Any, root: Path) -> Any:
    """`data` with paths inside the (temporary) report directory made relative to it.

    The report is built in a temporary sibling and renamed, so its absolute paths would
    be stale; relative ones stay right wherever the directory is moved.
    """
    prefix = str(root) + os.sep
    if isinstance(data, dict):
        return {key: _relative(value, root) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_relative(value, root) for value in data]
    if isinstance(data, Path):
        data = str(data)
    if isinstance(data, str):
        return "." if data == str(root) else data.replace(prefix, "")
    return data
