"""Derive the flags trtexec accepts from its option parser, per NVIDIA/TensorRT release tag.

trtexec (``samples/trtexec/trtexec.cpp``) parses its command line with ``AllOptions::parse``
of ``samples/common/sampleOptions.cpp``, which hands the arguments to the ``parse`` methods of
the model, build, system, inference and reporting option structs; every flag they consume
appears there as a string literal (``getAndDelOption(arguments, "--onnx", ...)`` or a helper
such as ``getShapesBuild(arguments, ..., "--minShapes", ...)``), and trtexec rejects whatever
is left over. The parsers of other samples in the same file (``SafeBuilderOptions``,
``TaskInferenceOptions``) are skipped. For the flags whose value is a keyword, the keywords the
parser compares against are recorded too.

    python tools/tensorrt_api/trtexec_flags.py --repo PATH/TO/TensorRT v10.3.0 v10.16 v11.0 v11.1

reads each tag with ``git show`` from a clone of https://github.com/NVIDIA/TensorRT and writes
``tests/backends/tensorrt/data/trtexec_flags/<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "engine" / "data" / "trtexec_flags"
SOURCE = "samples/common/sampleOptions.cpp"
#: The option structs whose parse() trtexec runs (AllOptions::parse and what it calls).
TRTEXEC_PARSERS = (
    "BaseModelOptions",
    "UffInput",
    "ModelOptions",
    "BuildOptions",
    "SystemOptions",
    "InferenceOptions",
    "ReportingOptions",
    "AllOptions",
)
#: Keyword-valued flags: the variable each parser compares the keyword against.
KEYWORD_VARIABLES = {
    "--profilingVerbosity": "profilingVerbosityString",
    "--hardwareCompatibilityLevel": "hardwareCompatibleArgs",
    "--memPoolSize": "memPoolName",
}
_PARSE = re.compile(r"^(?:void|bool)\s+(\w+)::parse\(Arguments&\s*arguments\)", re.M)
_FLAG = re.compile(r'"(--[A-Za-z][A-Za-z0-9]*)"')


def _body(text: str, start: int) -> str:
    """The brace-delimited body that begins at the first '{' after `start`."""
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at : i + 1]
    raise ValueError("unbalanced braces")


def derive(text: str) -> dict:
    """Flags (flag → the struct that parses it) and keyword values of one sampleOptions.cpp."""
    bodies = {m.group(1): _body(text, m.end()) for m in _PARSE.finditer(text)}
    missing = [
        name for name in ("BuildOptions", "SystemOptions", "InferenceOptions") if name not in bodies
    ]
    if missing:
        raise SystemExit(f"{SOURCE}: no parse() found for {missing}; the parser changed shape")
    flags: dict[str, str] = {}
    for struct in TRTEXEC_PARSERS:
        for flag in _FLAG.findall(bodies.get(struct, "")):
            flags.setdefault(flag, struct)
    keywords = {}
    for flag, variable in KEYWORD_VARIABLES.items():
        found = re.findall(rf"\b{variable}\)?\s*==\s*\"([^\"]+)\"", text)
        if not found:
            raise SystemExit(f"{SOURCE}: no keywords compared with {variable} (for {flag})")
        keywords[flag] = sorted(set(found))
    return {"flags": dict(sorted(flags.items())), "keywords": keywords}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tags", nargs="+")
    parser.add_argument("--repo", type=Path, required=True, help="a clone of NVIDIA/TensorRT")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def git(*command: str) -> str:
        return subprocess.run(
            ["git", "-C", args.repo, *command], check=True, capture_output=True, text=True
        ).stdout

    for tag in args.tags:
        table = {
            "source": {
                "repository": "https://github.com/NVIDIA/TensorRT",
                "tag": tag,
                "commit": git("rev-parse", f"{tag}^{{commit}}").strip(),
                "path": SOURCE,
            },
            **derive(git("show", f"{tag}:{SOURCE}")),
        }
        target = args.out / f"{tag}.json"
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(table, indent=1) + "\n")
        partial.replace(target)
        print(f"{target}: {len(table['flags'])} flags")


if __name__ == "__main__":
    main()
