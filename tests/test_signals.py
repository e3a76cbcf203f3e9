"""SIGINT and SIGTERM at random points of real `python -m karst_deploy` runs.

Each run gets its own working directory, ``TMPDIR`` and ``XDG_CACHE_HOME``; a signal lands
at a random point, or (default trial and even campaign trials) just after the run's first
temporary appears, whichever comes first. Afterwards: exit 130 (SIGINT or SIGTERM)
with nothing at ``--out``, or exit 0 with a complete output (the signal came after it was
published), never a traceback, and no temporary anywhere: not next to ``--out``, not in
the cache, not in ``TMPDIR``.

A random point is a random amount of CPU time used by the run, so that it falls at the
same place of the work however loaded the machine is. By default one trial per command
and signal, within the first `DEFAULT_CPU_CAP` CPU seconds (imports included; a few
seconds each on tiny models). The full campaign,
``KARST_SIGNALS_FULL=1 pytest -m signals_full tests/test_signals.py``, runs
``KARST_SIGNAL_TRIALS`` (default 8) trials per command and signal over the whole run and
a little past its end (then the run completes and exit 0 is checked); ``KARST_SIGNAL_SEED``
replays a failing draw (the seed is in every assertion message).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from karst_deploy.files import TEMP_PATTERN
from tests.cli_helpers import run_cli
from tests.train.tiny import TINY_BACKBONE, TINY_DATA, TINY_KWARGS

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="times and watches the runs through Linux /proc"
)

SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 130)}
# CPU seconds a whole run takes (user + system, imports included, measured on 2 cores).
RUN_CPU_SECONDS = {
    "export": 12.0,
    "export-int8": 16.0,
    "convert-precision": 5.0,
    "merge": 7.0,
    "train": 10.0,
    "demo": 55.0,
}
DEFAULT_CPU_CAP = 12.0
EXIT_TIMEOUT = 180  # seconds for the run to unwind after the signal
FULL_TRIALS = int(os.environ.get("KARST_SIGNAL_TRIALS", "8"))
SEED = int(os.environ.get("KARST_SIGNAL_SEED", str(random.SystemRandom().randrange(10**6))))


@dataclass(frozen=True)
class Inputs:
    checkpoint: Path
    adapter: Path
    fp32_onnx: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    """A tiny KARST adapter on a tiny checkpoint, and its fp32 export."""
    import karst_deploy as kd
    from karst_deploy.export import export_onnx
    from tests.cases import randomize_adapters
    from tests.train.tiny import tiny_checkpoint

    root = tmp_path_factory.mktemp("signal-inputs")
    checkpoint = tiny_checkpoint(root)
    model = kd.create_model(TINY_BACKBONE, num_classes=3, checkpoint=checkpoint, **TINY_KWARGS)
    model = randomize_adapters(kd.add_adapters(model, kd.KarstConfig()))
    adapter = kd.save_adapters(model, root / "adapter")
    fp32 = export_onnx(root / "fp32.onnx", adapter=adapter, checkpoint=checkpoint).path
    return Inputs(checkpoint, Path(adapter), Path(fp32))


# Each command: its arguments for an output in `out_dir`, and the output path.
def _command(name: str, inputs: Inputs, out_dir: Path) -> tuple[list[str], Path]:
    adapter = ["--adapter", str(inputs.adapter), "--checkpoint", str(inputs.checkpoint)]
    calib = ["--calib", "digits", "--calib-samples", "32"]
    if name == "export":
        out = out_dir / "model.onnx"
        return ["export", *adapter, "--out", str(out)], out
    if name == "export-int8":
        out = out_dir / "model-int8.onnx"
        return ["export", *adapter, "--precision", "int8", *calib, "--out", str(out)], out
    if name == "convert-precision":
        out = out_dir / "converted-int8.onnx"
        args = ["convert-precision", "--onnx", str(inputs.fp32_onnx), "--precision", "int8"]
        return [*args, *calib, "--out", str(out)], out
    if name == "merge":
        out = out_dir / "merged.safetensors"
        return ["merge", *adapter, "--out", str(out)], out
    if name == "train":
        out = out_dir / "run"
        model = ["--backbone", TINY_BACKBONE, "--model-kwargs", json.dumps(TINY_KWARGS)]
        recipe = ["--epochs", "3", "--warmup-epochs", "1", "--batch-size", "32"]
        return ["train", *model, "--data", TINY_DATA, *recipe, "--out", str(out)], out
    if name == "demo":
        out = out_dir / "report"
        return ["demo", "--quick", "--threads", "1", "--out", str(out)], out
    raise AssertionError(name)


COMMANDS = ["export", "export-int8", "convert-precision", "merge", "train", "demo"]


def _temporaries(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if TEMP_PATTERN.match(p.name))


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has installed its SIGTERM handler (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("inf")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _interrupt(
    args: list[str], out: Path, work: Path, signum: int, cpu: float, extra: float | None
):
    """Start the command and signal it once it has used `cpu` CPU seconds, or `extra`
    seconds after its first temporary appears; return (process, stderr, when)."""
    env = dict(os.environ)
    env.update(TMPDIR=str(work / "tmp"), XDG_CACHE_HOME=str(work / "cache"))
    (work / "tmp").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "karst_deploy", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        started = time.monotonic()
        while not _catches_sigterm(process.pid) and process.poll() is None:
            assert time.monotonic() - started < 120, "the CLI never installed its handlers"
            time.sleep(0.01)
        deadline, when = float("inf"), f"at {cpu:.2f} CPU s"
        while process.poll() is None and time.monotonic() < deadline:
            if _cpu_seconds(process.pid) >= cpu:
                break
            if extra is not None and deadline == float("inf") and _temporaries(out.parent):
                deadline = time.monotonic() + extra
                when = f"{extra:.2f} s after a temporary appeared"
            time.sleep(0.01)
        when = f"{when}, {_cpu_seconds(process.pid):.2f} CPU s used"
        if process.poll() is None:
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=EXIT_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process, stderr, when


def _check_output(name: str, out: Path) -> None:
    """A published output is complete."""
    if name in ("train", "demo"):
        expected = {"train": "train_log.json", "demo": "demo.json"}[name]
        assert (out / expected).is_file(), sorted(p.name for p in out.iterdir())
    elif out.suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    else:
        from safetensors.numpy import load_file

        assert load_file(str(out))


def _trial(name: str, signal_name: str, trial: int, inputs: Inputs, tmp_path: Path) -> None:
    seed = SEED + 7919 * trial + 31 * COMMANDS.index(name) + (signal_name == "SIGTERM")
    rng = random.Random(seed)
    whole = RUN_CPU_SECONDS[name]
    cpu = rng.uniform(0.3, min(whole, DEFAULT_CPU_CAP) if trial == 0 else 1.1 * whole)
    # Odd campaign trials ignore temporaries: their point may fall anywhere in the run.
    extra = rng.uniform(0.0, 0.5) if trial % 2 == 0 else None
    signum, code = SIGNALS[signal_name]
    work = tmp_path / f"trial-{trial}"
    out_dir = work / "out"
    out_dir.mkdir(parents=True)
    args, out = _command(name, inputs, out_dir)
    process, stderr, when = _interrupt(args, out, work, signum, cpu, extra)
    context = f"{name} {signal_name} seed {seed} ({when}), exit {process.returncode}: {stderr}"
    print(context)
    assert "Traceback" not in stderr, context
    assert process.returncode in (code, 0), context
    if process.returncode == code:
        assert not os.path.lexists(out), context
        assert signal_name in stderr and "temporary files were removed" in stderr, context
        assert sorted(p.name for p in out_dir.iterdir()) == [], context
    else:
        _check_output(name, out)
    assert _temporaries(work) == [], context
    # TMPDIR, ORT's scratch included; ORT keeps a session id in $TMPDIR/.ses on every run.
    assert [p.name for p in (work / "tmp").iterdir() if p.name != ".ses"] == [], context


@pytest.mark.parametrize("signal_name", list(SIGNALS))
@pytest.mark.parametrize("name", COMMANDS)
def test_a_signal_at_a_random_point_leaves_nothing(name, signal_name, inputs, tmp_path):
    _trial(name, signal_name, 0, inputs, tmp_path)


@pytest.mark.signals_full
@pytest.mark.skipif(
    not os.environ.get("KARST_SIGNALS_FULL"), reason="the full campaign: KARST_SIGNALS_FULL=1"
)
@pytest.mark.parametrize("trial", range(1, FULL_TRIALS + 1))
@pytest.mark.parametrize("signal_name", list(SIGNALS))
@pytest.mark.parametrize("name", COMMANDS)
def test_signal_campaign(name, signal_name, trial, inputs, tmp_path):
    _trial(name, signal_name, trial, inputs, tmp_path)


def test_a_killed_run_leaves_a_temporary_the_next_run_sweeps(inputs, tmp_path):
    """SIGKILL cannot be handled: what it leaves is removed by the next run in that directory."""
    work = tmp_path / "killed"
    out_dir = work / "out"
    out_dir.mkdir(parents=True)
    args, out = _command("export-int8", inputs, out_dir)
    env = dict(os.environ, TMPDIR=str(tmp_path), XDG_CACHE_HOME=str(work / "cache"))
    process = subprocess.Popen(
        [sys.executable, "-m", "karst_deploy", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        started = time.monotonic()
        # The staging directory of the fp32 intermediate (not the writability probe's file).
        while not any(Path(p).is_dir() for p in _temporaries(out_dir)):
            assert process.poll() is None, "finished before its staging directory was seen"
            assert time.monotonic() - started < 180
            time.sleep(0.01)
        process.kill()
    finally:
        process.wait()
    left = _temporaries(out_dir)
    assert left and str(process.pid) in left[0] and not out.exists()
    merged = out_dir / "merged.safetensors"
    rerun, _ = _command("merge", inputs, out_dir)
    result = run_cli(*rerun)  # the sweep needs no process of its own
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [merged.name]


def test_two_runs_writing_the_same_output_one_wins(inputs, tmp_path):
    """Two `merge` processes started together on one --out: one exits 0, the other 2."""
    out = tmp_path / "merged.safetensors"
    args, _ = _command("merge", inputs, tmp_path)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "karst_deploy", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(stderr for code, stderr in results if code == 2)
    assert str(out) in "".join(loser.split()) and "Traceback" not in loser  # wrapped lines
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
