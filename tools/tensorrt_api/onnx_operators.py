"""Derive the ONNX operator support table of TensorRT's ONNX parser (onnx/onnx-tensorrt).

Reads ``docs/operators.md`` — the header line giving the supported opset range and the
"Operator Support Matrix" (operator, Y/N, supported types, restrictions) — and writes it as
JSON with its source revision to ``tests/backends/tensorrt/data/onnx_tensorrt/<label>.json``:

    python tools/tensorrt_api/onnx_operators.py --repo PATH/TO/onnx-tensorrt \\
        release/10.1-GA:10.1 6bde6596eca84abf9afe9b4d21c18c32800fd3ad:10.16 \\
        7c51a63a719180eb5160c874c111746f3fb46a6b:11.1

Each argument is ``REVISION:LABEL``; the commits TensorRT itself builds with are its
``parsers/onnx`` submodule pointers (``git ls-tree v10.16 parsers/onnx`` in NVIDIA/TensorRT).
``--markdown FILE --commit SHA --label L`` takes the file from elsewhere instead.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "engine" / "data" / "onnx_tensorrt"
SOURCE = "docs/operators.md"
_OPSET = re.compile(
    r"TensorRT ([\d.]+) supports operators in the inclusive range of opset (\d+) to opset (\d+)"
)


def derive(text: str) -> dict:
    header = _OPSET.search(text)
    if header is None:
        raise SystemExit(f"{SOURCE}: no 'supports operators in the inclusive range' line")
    operators = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or (cells[1] not in ("Y", "N") and not cells[1].startswith("Y ")):
            continue
        types = [t.strip() for t in cells[2].split(",") if t.strip()] if len(cells) > 2 else []
        supported = cells[1].startswith("Y")
        operators[cells[0]] = {
            "supported": supported,
            "types": types if supported else [],
            "restrictions": " | ".join(c for c in cells[3:] if c)
            or ("" if supported else (cells[2] if len(cells) > 2 else "")),
        }
    if len(operators) < 100:
        raise SystemExit(f"{SOURCE}: only {len(operators)} operator rows found")
    return {
        "tensorrt": header.group(1),
        "opset": [int(header.group(2)), int(header.group(3))],
        "operators": dict(sorted(operators.items())),
    }


def write(table: dict, label: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{label}.json"
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(table, indent=1) + "\n")
    partial.replace(target)
    print(
        f"{target}: TensorRT {table['tensorrt']}, opset {table['opset']}, "
        f"{len(table['operators'])} operators"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="*", help="REVISION:LABEL, read with git show")
    parser.add_argument("--repo", type=Path, help="a clone of onnx/onnx-tensorrt")
    parser.add_argument("--markdown", type=Path, help="an operators.md obtained otherwise")
    parser.add_argument("--commit", help="the onnx-tensorrt commit --markdown was taken from")
    parser.add_argument("--label")
    parser.add_argument("--note", help="how --markdown was obtained (kept in the table)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    source = {"repository": "https://github.com/onnx/onnx-tensorrt", "path": SOURCE}
    if args.markdown:
        if not (args.commit and args.label):
            parser.error("--markdown needs --commit and --label")
        found = {**source, "commit": args.commit, **({"note": args.note} if args.note else {})}
        table = {"source": found, **derive(args.markdown.read_text())}
        write(table, args.label, args.out)
    for item in args.revisions:
        revision, _, label = item.partition(":")

        def git(*command: str) -> str:
            return subprocess.run(
                ["git", "-C", args.repo, *command], check=True, capture_output=True, text=True
            ).stdout

        commit = git("rev-parse", f"{revision}^{{commit}}").strip()
        table = {
            "source": {**source, "commit": commit},
            **derive(git("show", f"{commit}:{SOURCE}")),
        }
        write(table, label or revision, args.out)


if __name__ == "__main__":
    main()
