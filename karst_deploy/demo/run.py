"""`run_demo`: the demo's seven steps, each timed, written into one report directory.

What each step does and which verdicts it feeds: see the package doc (`karst_deploy.demo`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from karst_deploy.adapters import KarstConfig
from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
from karst_deploy.bench import BenchResult, bench
from karst_deploy.compare import accuracy
from karst_deploy.demo.report import plot_demo
from karst_deploy.demo.result import (
    ComparisonSummary,
    DemoInt8,
    DemoLatency,
    DemoParity,
    DemoResult,
    DemoTraining,
    IntervalState,
    SourceBackbone,
    StepRecord,
)
from karst_deploy.demo.settings import (
    BATCHES,
    CALIBRATION_SAMPLES,
    FULL,
    INT8_GATE_SPLITS,
    PARITY_RANDOM_SAMPLES,
    QUICK,
    DemoSettings,
)
from karst_deploy.demo.task import (
    TARGET_DATA,
    SourceRecipe,
    pretrain_source_backbone,
    source_checkpoint_path,
    train_transfer_target,
)
from karst_deploy.demo.verdicts import judge, latency_states
from karst_deploy.doctor import diagnose
from karst_deploy.errors import InputError
from karst_deploy.export import ExportResult, compare_structure, export_onnx
from karst_deploy.files import atomic_directory, refuse_existing, sha256_file, write_json
from karst_deploy.onnx_file import read_provenance
from karst_deploy.parity import (
    InputSet,
    ParityReport,
    Stage,
    image_inputs,
    run_stages,
    verify_parity,
)
from karst_deploy.precision import convert_precision
from karst_deploy.progress import stderr_console
from karst_deploy.train.log import TrainLog


class _Steps:
    """Numbered, timed steps with a one-line status on stderr for each."""

    def __init__(self, total: int, show: bool) -> None:
        self.total, self.show, self.console = total, show, stderr_console()
        self.records: list[StepRecord] = []

    @contextlib.contextmanager
    def step(self, name: str, description: str) -> Iterator[StepRecord]:
        """Time a step; the body may set the yielded record's ``detail``."""
        number = len(self.records) + 1
        if self.show:
            self.console.print(f"[bold][{number}/{self.total}][/] {description} …")
        record = StepRecord(name, description)
        started = time.perf_counter()
        yield record
        record.seconds = round(time.perf_counter() - started, 2)
        self.records.append(record)
        if self.show:
            extra = f" ({record.detail})" if record.detail else ""
            self.console.print(f"      [green]done[/] in {record.seconds:.1f} s{extra}")


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    seed: int = 0,
    force: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the whole pipeline and write the report directory `out_dir` (see the package doc).

    Refuses an existing `out_dir` without `force` before any work. The report is written
    even when a verdict fails; call `DemoResult.raise_if_failed` to turn that into an error.
    """
    out = Path(out_dir)
    refuse_existing(out, force, directory=True)
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}.")
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
        checkpoint, backbone = _source_backbone(recipe, root, progress)
        rec.cached = backbone.cached
        rec.detail = "cached, reused" if backbone.cached else "pretrained and cached"

    adapter_dir = root / "adapter"
    with steps.step("train", "KARST adapters on the unseen digits 5-9, backbone frozen") as rec:
        log, training = _train(settings, recipe, checkpoint, adapter_dir, seed, progress)
        rec.detail = f"held-out test accuracy {log.test_accuracy:.1%}"
    num_classes = len(log.data.classes)

    files = {name: root / f"{name}.onnx" for name in ("merged", "unmerged", "base")}
    with steps.step("export", "export ONNX: merged, unmerged and the plain backbone") as rec:
        exports = _export(
            files, adapter_dir, checkpoint, recipe.backbone, img_size, kwargs, num_classes
        )
        rec.detail = ", ".join(f"{k} {v.size_bytes / 2**20:.2f} MiB" for k, v in exports.items())

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
        rec.detail = f"calibration cache {int8_model.calibration['cache']}"

    with steps.step("parity", "parity on held-out images: fp32 chain and the int8 gate") as rec:
        fp32 = _fp32_parity(files, adapter_dir, checkpoint, seed, threads, progress, root)
        gate, int8_test = _int8_gate(files, threads, progress, root)
        parity, int8 = _parity_summary(fp32), _int8_summary(gate, int8_model.to_dict(), root)
        rec.detail = (
            f"fp32 {'pass' if parity.passed else 'FAIL'}, "
            f"int8 gate {'pass' if int8.passed else 'FAIL'}"
        )
    held_out = gate.inputs[0].name
    accuracies = {
        "test": {**fp32.accuracy["images"], "onnxruntime-int8": int8_test},
        held_out: gate.accuracy[held_out],
    }

    with steps.step("bench", "latency: base, merged, unmerged, int8 interleaved") as rec:
        bench_result = _bench(files, settings, seed, threads, progress, root)
        rec.detail = f"{settings.bench_rounds} rounds per batch size"
    latency = _latency_summary(bench_result, files)

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
        verdicts=judge(settings, training, parity, int8, latency),
        steps=steps.records,
        artifacts={},
        machine={},
        commands=_commands(settings, threads, img_size, kwargs, num_classes, recipe.backbone),
    )
    with steps.step("report", "report: demo.json, demo.png") as rec:
        result.machine = diagnose().to_dict()
        plot_demo(result, bench_result.samples_ms, root / "demo.png")
        result.artifacts = _artifacts(root, exports)
        rec.detail = f"{len(result.artifacts) + 1} files"
    write_json(root / "demo.json", result.to_dict())  # last, so it holds this step's time
    return result


def _source_backbone(
    recipe: SourceRecipe, root: Path, progress: bool
) -> tuple[Path, SourceBackbone]:
    """The cached (or freshly pretrained) source backbone, copied into the report."""
    cached = source_checkpoint_path(recipe).is_file()
    checkpoint = pretrain_source_backbone(recipe, progress=progress)
    shutil.copyfile(checkpoint, root / "backbone.safetensors")
    return checkpoint, SourceBackbone(
        name=recipe.backbone,
        model_kwargs=recipe.model_kwargs,
        recipe=recipe.to_dict(),
        recipe_key=recipe.key(),
        cache_path=str(checkpoint),
        cached=cached,
        file="backbone.safetensors",
        sha256=sha256_file(checkpoint),
    )


def _train(
    settings: DemoSettings,
    recipe: SourceRecipe,
    checkpoint: Path,
    adapter_dir: Path,
    seed: int,
    progress: bool,
) -> tuple[TrainLog, DemoTraining]:
    """KARST on digits 5–9 over the frozen source backbone; the log and its report section."""
    config = KarstConfig()
    log = train_transfer_target(
        config,
        adapter_dir,
        recipe=recipe,
        checkpoint=checkpoint,
        progress=progress,
        epochs=settings.target_epochs,
        warmup_epochs=settings.target_warmup_epochs,
        seed=seed,
    ).log
    training = DemoTraining(
        method=config.method,
        adapter_config=config.to_hparams(),
        data=TARGET_DATA,
        images=log.data.images,
        epochs=len(log.epochs),
        best_epoch=log.best_epoch,
        best_val_accuracy=log.best_val_accuracy,
        test_accuracy=log.test_accuracy,
        trainable_parameters=log.trainable_parameters,
        val_accuracy_per_epoch=[e.val_accuracy for e in log.epochs],
        train_loss_per_epoch=[e.train_loss for e in log.epochs],
        log="adapter/train_log.json",
    )
    return log, training


def _export(
    files: dict[str, Path],
    adapter_dir: Path,
    checkpoint: Path,
    backbone: str,
    img_size: int,
    model_kwargs: dict[str, Any],
    num_classes: int,
) -> dict[str, ExportResult]:
    merged = export_onnx(files["merged"], adapter=adapter_dir, checkpoint=checkpoint)
    unmerged = export_onnx(
        files["unmerged"], adapter=adapter_dir, checkpoint=checkpoint, unmerged=True
    )
    # The latency baseline: the plain source backbone, same architecture and head size.
    base = export_onnx(
        files["base"],
        backbone=backbone,
        checkpoint=checkpoint,
        num_classes=num_classes,
        img_size=img_size,
        model_kwargs=model_kwargs,
    )
    return {r.kind: r for r in (merged, unmerged, base)}


def _fp32_parity(
    files: dict[str, Path],
    adapter_dir: Path,
    checkpoint: Path,
    seed: int,
    threads: int | None,
    progress: bool,
    root: Path,
) -> ParityReport:
    """The fp32 chain on random inputs and the test split (``parity.json``)."""
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
    return fp32


def _int8_gate(
    files: dict[str, Path], threads: int | None, progress: bool, root: Path
) -> tuple[ParityReport, float]:
    """int8 vs fp32 ONNX on val+test (``parity-int8.json``), and int8 test accuracy."""
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
    return gate, int8_test


def _int8_summary(gate: ParityReport, conversion: dict[str, Any], root: Path) -> DemoInt8:
    comparison = gate.comparisons[0]
    held_out = gate.inputs[0]
    return DemoInt8(
        passed=gate.passed,
        failures=gate.failures,
        judged_on=f"{held_out.name} splits of {TARGET_DATA} ({held_out.samples} images)",
        reference="onnxruntime (merged fp32)",
        gate=comparison.tolerance,
        metrics=comparison.metrics,
        checks=comparison.checks,
        report="parity-int8.json",
        conversion=_relative(conversion, root),
    )


def _parity_summary(fp32: ParityReport) -> DemoParity:
    return DemoParity(
        passed=fp32.passed,
        failures=fp32.failures,
        stages=[s.name for s in fp32.stages],
        comparisons=[
            ComparisonSummary(
                reference=c.reference,
                candidate=c.candidate,
                inputs=c.inputs,
                passed=c.passed,
                max_abs_diff=c.metrics.max_abs_diff,
                allowed=next((k.limit for k in c.checks if k.name == "max abs diff"), None),
                top1_agreement=c.metrics.top1_agreement,
            )
            for c in fp32.comparisons
        ],
        inputs=fp32.inputs,
        report="parity.json",
    )


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
        seed=seed,
        progress=progress,
    )
    write_json(root / "bench.json", _relative(result.to_dict(), root))
    return result


def _latency_summary(result: BenchResult, files: dict[str, Path]) -> DemoLatency:
    """Latency table, ratios, the structural check and the interval's state per batch."""
    states = latency_states(result)
    return DemoLatency(
        runner=result.runner,
        threads=result.threads,
        rounds=result.rounds,
        warmup=result.warmup,
        batches=result.batches,
        tolerance=result.verdict.tolerance,
        latency=result.latency,
        ratios=result.ratios,
        merged_vs_base={
            batch: IntervalState(ratio, states[batch])
            for batch, ratio in result.ratios["merged"].items()
        },
        structure=result.verdict.structure,
        unmerged_structure=compare_structure(files["base"], files["unmerged"]),
        report="bench.json",
    )


def _commands(
    settings: DemoSettings,
    threads: int | None,
    img_size: int,
    model_kwargs: dict[str, Any],
    num_classes: int,
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
        f"backbone.safetensors --num-classes {num_classes} --img-size "
        f"{img_size} --model-kwargs '{kwargs}' --out base.onnx",
        f"karst-deploy convert-precision --onnx merged.onnx --precision int8 --calib "
        f"{TARGET_DATA} --calib-samples {CALIBRATION_SAMPLES} --out merged-int8.onnx",
        f"karst-deploy verify-parity {common} --onnx merged.onnx --data {TARGET_DATA} "
        "--split test --samples 256",
        "karst-deploy bench --onnx merged.onnx --baseline base.onnx --unmerged unmerged.onnx "
        f"--int8 merged-int8.onnx --batch {','.join(map(str, BATCHES))} {timing}",
    ]


def _artifacts(root: Path, exports: dict[str, ExportResult]) -> dict[str, dict[str, Any]]:
    """Every file of the report (demo.json aside) with its size, and sha256 for models."""
    artifacts = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        entry: dict[str, Any] = {"bytes": path.stat().st_size}
        if path.suffix in (".onnx", ".safetensors"):
            entry["sha256"] = sha256_file(path)
        if path.stem in exports and path.suffix == ".onnx":
            entry["check"] = exports[path.stem].check.to_dict()
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
