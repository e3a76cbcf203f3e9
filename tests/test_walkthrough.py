"""A new user's walk-through, scripted (issue 14's "done when").

Part 1 runs the README's own front-door commands (the "five commands" block, read from the
README, so a README edit is what gets tested) on the built-in digits, with tiny settings
appended (click keeps the last value of a repeated option). Part 2 takes the same path as
a user who brings their own data and model: a 28×28 grayscale ImageFolder of PNG files and a
backbone pretrained with plain timm and saved as a state dict. Both run the CLI in-process
(`karst_deploy.cli.run`), assert each exit code, and check the artifacts by reading them.

`karst-deploy demo` itself is not rerun here; tests/test_pipeline.py runs it end to end.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from karst_deploy import cli
from karst_deploy.onnx_file import read_provenance
from tests.test_docs import (
    code_blocks,
    karst_commands,
    logical_lines,
    shell_tokens,
)

ROOT = Path(__file__).resolve().parents[1]
FRONT_DOOR = "## Your own deployment: five commands"
# Depth 1 instead of the README's 4: the same commands at a quarter of the export time.
TINY_KWARGS = '{"patch_size": 4, "embed_dim": 96, "depth": 1, "num_heads": 3}'
# What each README command gets appended for the test's budget (≈ a minute on 2 cores).
TINY = {
    "train": ["--model-kwargs", TINY_KWARGS, "--epochs", "2", "--warmup-epochs", "1"],
    "export": [],
    "convert-precision": ["--calib-samples", "32", "--no-calib-cache"],
    "verify-parity": ["--samples", "8", "--images", "64"],
    "bench": [
        "--rounds",
        "6",
        "--warmup",
        "1",
        "--sessions",
        "1",
        "--batch-sizes",
        "1",
        "--max-seconds",
        "0",
    ],
    "emit-trtexec": [],
}
# bench's verdict on a few rounds of a shared CPU: shown (0), not shown (1), inconclusive (75).
BENCH_VERDICT_CODES = {0: "shown", 1: "not shown", 75: "inconclusive"}


def run(capsys, *args: str) -> tuple[int, str]:
    """Exit code and stdout+stderr of the CLI run in-process."""
    code = cli.run([*args])
    out, err = capsys.readouterr()
    return code, out + err


def readme_front_door() -> list[list[str]]:
    """The karst-deploy commands of the README's five-command block, in order."""
    readme = (ROOT / "README.md").read_text()
    heading = readme.index(FRONT_DOOR)
    first_line = readme[:heading].count("\n") + 1
    for language, start, body in code_blocks(readme):
        if language == "bash" and start > first_line:
            commands = []
            for _, line in logical_lines(body, start):
                commands.extend(karst_commands(shell_tokens(line)))
            return commands
    raise AssertionError(f"README.md has no bash block after {FRONT_DOOR!r}")


def save_stand_in_demo_backbone(path: Path, model_kwargs: str) -> None:
    """What `karst-deploy demo` leaves in its report: the backbone, a timm state dict.

    The demo's pretraining is tested in tests/test_pipeline.py (and costs half a minute);
    here the same architecture (at TINY_KWARGS's depth) with seeded weights stands in, with
    5 classes like digits 0–4.
    """
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=5, img_size=16, **json.loads(model_kwargs)
    )
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    """Full-batch AdamW steps: a user's pretraining, in plain torch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()


@pytest.mark.slow  # ~15 s of CPU; in the default suite all the same
def test_readme_front_door_on_the_builtin_digits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = readme_front_door()
    assert [c[0] for c in commands] == [
        "train",
        "export",
        "export",
        "convert-precision",
        "verify-parity",
        "bench",
        "emit-trtexec",
    ]
    checkpoints = {c[c.index("--checkpoint") + 1] for c in commands if "--checkpoint" in c}
    (checkpoint,) = checkpoints
    save_stand_in_demo_backbone(tmp_path / checkpoint, TINY_KWARGS)

    code, out = run(capsys, "doctor", "--json")  # what the README says to run next
    assert code == 0 and "onnxruntime_providers" in json.loads(out)

    for args in commands:
        name = args[0]
        extra = list(TINY[name])
        if name == "export" and "--no-adapter" in args:
            extra += ["--model-kwargs", TINY_KWARGS]
        code, out = run(capsys, *args, *extra)
        expected = BENCH_VERDICT_CODES if name == "bench" else {0}
        assert code in expected, f"README command `karst-deploy {shlex.join(args)}`:\n{out}"

    log = json.loads((tmp_path / "runs/karst/train_log.json").read_text())
    assert log["best_epoch"] in (1, 2) and log["data"]["classes"] == ["5", "6", "7", "8", "9"]
    provenance = {
        name: read_provenance(tmp_path / name)
        for name in ("merged.onnx", "base.onnx", "merged-int8.onnx")
    }
    assert provenance["merged.onnx"]["kind"] == "merged"
    assert provenance["merged.onnx"]["method"] == "karst"
    assert provenance["base.onnx"]["kind"] == "base" and provenance["base.onnx"]["method"] is None
    assert provenance["merged-int8.onnx"]["precision"] == "int8"
    # emit-trtexec printed the build command for the README's int8 file.
    assert "--onnx=merged-int8.onnx" in out and "--saveEngine=merged-int8.engine" in out
    assert not (tmp_path / "merged-int8.engine").exists()


# --- Part 2: a user's own 28×28 grayscale ImageFolder and plain-timm checkpoint -------------

CLASSES = ("circle", "cross", "bar")
USER_KWARGS = {"patch_size": 7, "embed_dim": 48, "depth": 1, "num_heads": 3}


def draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One 28×28 8-bit grayscale picture of `kind`, jittered, with noise."""
    y, x = np.mgrid[0:28, 0:28].astype(np.float32)
    cy, cx = rng.uniform(11, 17, size=2)
    r = rng.uniform(5, 9)
    if kind == "circle":
        shape = np.abs(np.hypot(y - cy, x - cx) - r) < 1.5
    elif kind == "cross":
        shape = (np.abs(y - cy) < 1.5) & (np.abs(x - cx) < r) | (np.abs(x - cx) < 1.5) & (
            np.abs(y - cy) < r
        )
    else:
        shape = (np.abs(y - cy) < 2.0) & (np.abs(x - cx) < r + 2)
    image = 200.0 * shape + rng.normal(30.0, 12.0, size=(28, 28))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, per_split: dict[str, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in per_split.items():
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(draw(kind, rng), mode="L").save(folder / f"{i:03d}.png")


def pretrain_with_plain_timm(folder: Path, out: Path) -> None:
    """A user's backbone: timm ViT trained a few steps on the images, saved as a state dict."""
    import timm
    from PIL import Image

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=len(CLASSES), img_size=28, **USER_KWARGS
    )
    files = sorted(folder.glob("train/*/*.png"))
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    labels = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    fit(model, images, labels, steps=20)
    torch.save(model.state_dict(), out)


@pytest.mark.slow  # ~15 s of CPU; in the default suite all the same
def test_own_grayscale_image_folder_and_plain_timm_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "shapes", {"train": 16, "val": 8, "test": 8})
    pretrain_with_plain_timm(tmp_path / "shapes", tmp_path / "user.pth")
    backbone = ["--backbone", "vit_tiny_patch16_224", "--checkpoint", "user.pth"]
    kwargs = ["--model-kwargs", json.dumps(USER_KWARGS)]
    architecture = ["--img-size", "28", *kwargs]

    steps = [
        ["train", *backbone, *architecture, "--data", "shapes", "--method", "lora",
         "--rank", "4", "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "16",
         "--out", "runs/lora"],
        ["export", "--adapter", "runs/lora", "--checkpoint", "user.pth", "--out", "merged.onnx"],
        # class count and input size read from the user's checkpoint, not given
        ["export", "--no-adapter", *backbone, *kwargs, "--out", "base.onnx", "--json-out",
         "base.json"],
        ["convert-precision", "--onnx", "merged.onnx", "--precision", "fp16",
         "--out", "merged-fp16.onnx"],
        ["verify-parity", "--adapter", "runs/lora", "--checkpoint", "user.pth",
         "--onnx", "merged-fp16.onnx", "--data", "shapes", "--samples", "8",
         "--json-out", "parity.json"],
        ["bench", "--onnx", "merged.onnx", "--baseline", "base.onnx", "--fp16",
         "merged-fp16.onnx", "--rounds", "6", "--warmup", "1", "--sessions", "1",
         "--batch-sizes", "1", "--max-seconds", "0", "--json-out", "bench.json"],
    ]  # fmt: skip
    steps_codes = {}
    for args in steps:
        code, out = run(capsys, *args)
        expected = BENCH_VERDICT_CODES if args[0] == "bench" else {0}
        assert code in expected, f"`karst-deploy {shlex.join(args)}` exited {code}:\n{out}"
        steps_codes[args[0]] = code

    log = json.loads((tmp_path / "runs/lora/train_log.json").read_text())
    assert log["data"]["classes"] == sorted(CLASSES) and log["data"]["img_size"] == 28
    config = json.loads((tmp_path / "runs/lora/adapter_config.json").read_text())
    assert config["classes"] == sorted(CLASSES)  # recorded at training time
    base = json.loads((tmp_path / "base.json").read_text())
    assert base["inferred"] == {"num_classes": 3, "img_size": 28}
    assert read_provenance(tmp_path / "base.onnx")["num_classes"] == 3
    # A folder with other class names is refused (exit 2), not judged on the wrong labels.
    for split in ("train", "test"):
        for kind in ("dot", "ring", "wave"):
            (tmp_path / "other" / split / kind).mkdir(parents=True)
            shutil.copy(
                next((tmp_path / "shapes/test/bar").iterdir()), tmp_path / "other" / split / kind
            )
    code, out = run(
        capsys,
        "verify-parity",
        "--adapter",
        "runs/lora",
        "--checkpoint",
        "user.pth",
        "--onnx",
        "merged.onnx",
        "--data",
        "other",
        "--samples",
        "4",
    )
    assert code == 2 and "circle" in out, out
    assert not any("random" in w for w in log["warnings"])  # the user's weights were used
    merged = read_provenance(tmp_path / "merged.onnx")
    assert merged["img_size"] == 28 and merged["num_classes"] == 3
    assert read_provenance(tmp_path / "merged-fp16.onnx")["precision"] == "fp16"

    parity = json.loads((tmp_path / "parity.json").read_text())
    assert parity["passed"] is True and parity["failures"] == []
    images = parity["inputs"][-1]
    assert (images["labelled"], images["split"], images["samples"]) == (True, "test", 24)
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert set(bench["models"]) == {"base", "merged", "merged-fp16"}
    assert bench["verdict"]["outcome"] == BENCH_VERDICT_CODES[steps_codes["bench"]]
    assert bench["latency"]["merged-fp16"]["1"]["median_ms"] > 0
    assert bench["verdict"]["structure"]["same"] is True  # merged has the base graph's shape


@pytest.mark.parametrize("kind", CLASSES)
def test_generated_images_are_28x28_grayscale_png(tmp_path, kind):
    """The walk-through's data is what the issue describes: 8-bit one-channel PNG files."""
    from PIL import Image

    make_image_folder(tmp_path, {"train": 1})
    image = Image.open(next((tmp_path / "train" / kind).glob("*.png")))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
