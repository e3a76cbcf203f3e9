"""Draw docs/pipeline.png, the README's picture of the pipeline: ``python docs/pipeline_png.py``."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

STEPS = [
    ("timm ViT\n+ your images", "checkpoint,\nImageFolder"),
    ("train", "KARST, LoRA,\nKAdaptation, SPT"),
    ("merge + export", "one plain\nONNX graph"),
    ("fp16 / int8", "precision in\nthe graph"),
    ("verify-parity", "unmerged = merged\n= ONNX Runtime"),
    ("bench", "merged ÷ base\n95 % interval"),
    ("build-engine", "TensorRT on\nthe Jetson"),
]


def main(out: Path = Path(__file__).with_name("pipeline.png")) -> None:
    fig, ax = plt.subplots(figsize=(12, 1.9), dpi=100)
    ax.set_xlim(0, len(STEPS) * 1.75)
    ax.set_ylim(0, 1.9)
    ax.axis("off")
    for i, (name, note) in enumerate(STEPS):
        x = i * 1.75 + 0.1
        colour = "#dbe9f6" if i not in (4, 5) else "#e3f2d9"
        ax.add_patch(FancyBboxPatch((x, 0.95), 1.45, 0.75, boxstyle="round,pad=0.03", fc=colour))
        ax.text(x + 0.725, 1.325, name, ha="center", va="center", fontsize=8.5, weight="bold")
        ax.text(x + 0.725, 0.45, note, ha="center", va="center", fontsize=8, color="#444")
        if i:
            arrow = FancyArrowPatch(
                (x - 0.27, 1.325), (x - 0.04, 1.325), arrowstyle="-|>", mutation_scale=12
            )
            ax.add_patch(arrow)
    fig.savefig(out, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
