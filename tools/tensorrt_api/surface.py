"""Dump the Python API surface of a real TensorRT bindings wheel, with no GPU and no TensorRT.

The ``tensorrt-cu12-bindings`` wheels on PyPI hold NVIDIA's pybind11 module
(``tensorrt_bindings/tensorrt.so``). It links against libnvinfer, libnvonnxparser and
libnvinfer_plugin but calls only nine plain C entry points of theirs (everything else goes
through C++ vtables of objects those return), and importing it calls none of them. So three
stub libraries with the right SONAMEs, whose nine functions return NULL, let the real module
import; its classes, enums, method docstrings (pybind11 writes every overload's signature
into them) and properties then describe the API exactly as that TensorRT version ships it.

    python tools/tensorrt_api/surface.py 10.3.0 10.16.1.11 11.0.0.114 11.4.0.106

downloads each wheel with pip (or takes ``--wheel FILE``), builds the stubs with gcc,
imports the module in a subprocess with ``LD_LIBRARY_PATH`` on the stubs and writes
``tests/backends/tensorrt/data/tensorrt_api/<version>.json.gz``. Nothing here can create a
builder or an engine: ``trt.Builder(logger)`` raises ``TypeError`` because the stub returned NULL.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "engine" / "data" / "tensorrt_api"
PACKAGE = "tensorrt-cu12-bindings"

#: The only symbols tensorrt.so imports from the TensorRT libraries (``nm -D --undefined-only``
#: of 10.3.0, 10.16.1.11, 11.0.0.114 and 11.4.0.106), by library.
STUB_SYMBOLS = {
    "libnvinfer": [
        "createInferBuilder_INTERNAL",
        "createInferRuntime_INTERNAL",
        "createInferRefitter_INTERNAL",
        "getPluginRegistry",
        "getBuilderPluginRegistry",
    ],
    "libnvonnxparser": [
        "createNvOnnxParser_INTERNAL",
        "createNvOnnxParserRefitter_INTERNAL",
        "getNvOnnxParserVersion",
    ],
    "libnvinfer_plugin": ["initLibNvInferPlugins"],
}

DUMP = Path(__file__).with_name("dump_module.py")


def stub_source(symbols: list[str]) -> str:
    return "".join(f"void *{name}(void) {{ return 0; }}\n" for name in symbols)


def build_stubs(major: str, directory: Path) -> None:
    """libnvinfer.so.MAJOR etc., each defining its symbols as functions returning NULL."""
    for library, symbols in STUB_SYMBOLS.items():
        source = directory / f"{library}.c"
        source.write_text(stub_source(symbols))
        soname = f"{library}.so.{major}"
        subprocess.run(
            ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", directory / soname, source],
            check=True,
        )


def download(version: str, directory: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            directory,
            f"{PACKAGE}=={version}",
        ],
        check=True,
    )
    (wheel,) = directory.glob("*.whl")
    return wheel


def dump(wheel: Path) -> dict:
    """The API surface of the bindings in `wheel` (imported in a subprocess on stubs)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp_path / "site")
        version = wheel.name.split("-")[1]
        build_stubs(version.split(".")[0], tmp_path)
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(
                [str(tmp_path), os.environ.get("LD_LIBRARY_PATH", "")]
            ),
            "PYTHONPATH": str(tmp_path / "site"),
        }
        result = subprocess.run([sys.executable, DUMP], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"importing the bindings of {wheel.name} failed:\n{result.stderr}")
    surface = json.loads(result.stdout)
    surface["source"] = {"wheel": wheel.name, "package": PACKAGE}
    return surface


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", help=f"{PACKAGE} versions to pip download")
    parser.add_argument("--wheel", type=Path, action="append", default=[], help="a local wheel")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = list(args.wheel)
        for version in args.versions:
            directory = Path(tmp) / version
            directory.mkdir()
            wheels.append(download(version, directory))
        for wheel in wheels:
            surface = dump(wheel)
            target = args.out / f"{surface['version']}.json.gz"
            data = json.dumps(surface, indent=1, sort_keys=True).encode() + b"\n"
            partial = target.with_suffix(".tmp")
            with gzip.GzipFile(partial, "wb", mtime=0) as handle:  # mtime=0: reproducible bytes
                handle.write(data)
            partial.replace(target)
            print(
                f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}: "
                f"{len(surface['classes'])} classes, {len(surface['functions'])} functions"
            )


if __name__ == "__main__":
    main()
