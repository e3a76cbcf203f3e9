"""How much work each demo step does: the full demo and the reduced `--quick` mode."""

from __future__ import annotations

from dataclasses import dataclass

from karst_deploy.demo.task import TARGET_RECIPE, SourceRecipe

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
