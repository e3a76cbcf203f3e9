"""The JSON sidecar written next to every engine (``model.engine`` → ``model.engine.json``).

A TensorRT engine runs only on the TensorRT version and GPU model that built it, unless it was
built version-compatible (runs on the same or a later TensorRT, TensorRT developer guide
"Version Compatibility") or hardware-compatible at the ``AMPERE_PLUS`` level (runs on any
Ampere-or-newer desktop GPU, "Hardware Compatibility"). The sidecar records what the engine
was built with, so a mismatch is refused with the command that rebuilds it, instead of a
TensorRT deserialization error or, worse, a silently slow engine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from karst_deploy import __version__
from karst_deploy.errors import InputError
from karst_deploy.files import sha256_file

FORMAT = "karst-deploy-engine"
VERSION = 1


class EngineMismatchError(InputError):
    """An engine does not fit this machine's TensorRT or GPU, or its sidecar does not fit it."""


@dataclass(frozen=True)
class RuntimeEnvironment:
    """The TensorRT version and GPU an engine is built or run on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.gpu_name, "compute_capability": self.compute_capability}


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def make_sidecar(
    *,
    engine_sha256: str,
    environment: RuntimeEnvironment,
    onnx: dict[str, Any],
    precision: dict[str, Any],
    profile: dict[str, Any],
    builder: dict[str, Any],
    build_command: str,
    provenance: dict[str, Any] | None,
) -> dict[str, Any]:
    """The sidecar record (see the README's "Jetson and TensorRT" section for every field)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "engine_sha256": engine_sha256,
        "tensorrt_version": environment.tensorrt_version,
        "gpu": environment.to_dict(),
        "onnx": onnx,
        "precision": precision,
        "profile": profile,
        "builder": builder,
        "build_command": build_command,
        "provenance": provenance,
        "created_by": f"karst-deploy {__version__}",
    }


def read_sidecar(engine: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of `engine`, or None when there is none (e.g. an engine built by trtexec)."""
    path = sidecar_path(engine)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"Engine sidecar '{path}' is not readable JSON: {exc}") from None
    missing = [
        key
        for key in ("engine_sha256", "tensorrt_version", "gpu", "builder", "build_command")
        if key not in record
    ]
    if record.get("format") != FORMAT or missing:
        raise InputError(
            f"'{path}' is not a karst-deploy engine sidecar (format '{record.get('format')}', "
            f"missing {missing}). Rebuild the engine with `karst-deploy build-engine`."
        )
    return record


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def check_sidecar(
    record: dict[str, Any], engine: str | os.PathLike[str], here: RuntimeEnvironment
) -> None:
    """Refuse an engine that its sidecar says cannot run on `here`, naming the rebuild command."""
    rebuild = f"rebuild it on this machine with:\n  {record['build_command']} --force"
    if sha256_file(engine) != record["engine_sha256"]:
        raise EngineMismatchError(
            f"Engine '{engine}' does not match its sidecar '{sidecar_path(engine)}' (sha256 "
            f"differs): the engine file was replaced or altered after it was built; {rebuild}"
        )
    built_trt = record["tensorrt_version"]
    version_compatible = bool(record["builder"].get("version_compatible"))
    if built_trt != here.tensorrt_version and not (
        version_compatible and _version_tuple(here.tensorrt_version) >= _version_tuple(built_trt)
    ):
        why = (
            "a version-compatible engine runs only on the same or a later TensorRT"
            if version_compatible
            else "engines run only on the TensorRT version that built them (build with "
            "--version-compat to relax this, at some cost in speed)"
        )
        raise EngineMismatchError(
            f"Engine '{engine}' was built with TensorRT {built_trt}; this machine has TensorRT "
            f"{here.tensorrt_version}, and {why}. To run it, {rebuild}"
        )
    built_gpu = record["gpu"]
    level = record["builder"].get("hardware_compat", "none")
    if level == "ampere+":
        if _version_tuple(here.compute_capability) < (8, 0):
            raise EngineMismatchError(
                f"Engine '{engine}' was built hardware-compatible for Ampere and newer GPUs; this "
                f"GPU '{here.gpu_name}' has compute capability {here.compute_capability} (< 8.0). "
                f"To run it, {rebuild}"
            )
    elif (built_gpu.get("name"), built_gpu.get("compute_capability")) != (
        here.gpu_name,
        here.compute_capability,
    ):
        raise EngineMismatchError(
            f"Engine '{engine}' was built on '{built_gpu.get('name')}' (compute capability "
            f"{built_gpu.get('compute_capability')}); this GPU is '{here.gpu_name}' "
            f"({here.compute_capability}). Engines are tied to the GPU that built them (build "
            f"with --hardware-compat ampere+ for desktop Ampere+ portability). To run it, {rebuild}"
        )


def engine_source_precision(
    engine: str | os.PathLike[str], onnx: str | os.PathLike[str]
) -> str | None:
    """The precision `engine` was built in, after checking it was built from `onnx`.

    None when the engine has no sidecar (e.g. built by trtexec): its source cannot be checked.
    """
    if not Path(engine).is_file():
        raise InputError(f"--engine '{engine}' does not exist or is not a file.")
    record = read_sidecar(engine)
    if record is None:
        return None
    built_from = record.get("onnx", {}).get("sha256")
    if built_from != sha256_file(onnx):
        raise EngineMismatchError(
            f"Engine '{engine}' was built from an ONNX file with sha256 {built_from} "
            f"('{record.get('onnx', {}).get('path')}'), not from '{onnx}', so comparing them "
            f"proves nothing. Rebuild it from this file:\n  {record['build_command']} --force"
        )
    return record.get("precision", {}).get("requested")
