"""The JSON sidecar written next to every engine (``model.engine`` → ``model.engine.json``).

A TensorRT engine runs only on the TensorRT version and GPU model that built it, unless it was
built version-compatible (runs on the same or a later TensorRT, TensorRT developer guide
"Version Compatibility") or hardware-compatible at the ``AMPERE_PLUS`` level (runs on any
Ampere-or-newer desktop GPU, "Hardware Compatibility"). The sidecar records what the engine
was built with, so a mismatch is refused with the command that rebuilds it, instead of a
TensorRT deserialization error or, worse, a silently slow engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from karst_deploy import __version__
from karst_deploy import records as r
from karst_deploy.backends.tensorrt.util import RuntimeEnvironment
from karst_deploy.errors import InputError, clip
from karst_deploy.files import sha256_file
from karst_deploy.jsonfile import parse_object
from karst_deploy.provenance import NESTED as PROVENANCE_NESTED
from karst_deploy.provenance import SCHEMA

FORMAT = "karst-deploy-engine"
VERSION = 1


class EngineMismatchError(InputError):
    """An engine does not fit this machine's TensorRT or GPU, or its sidecar does not fit it."""


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


#: Top-level keys of a sidecar and their checks (karst_deploy.records); nested objects are
#: checked key by key in `_NESTED` (unknown nested keys allowed, for later builders).
_SCHEMA: dict[str, r.Checker] = {
    "format": r.one_of(FORMAT),
    "version": r.one_of(VERSION),
    "engine_sha256": r.sha256,
    "tensorrt_version": r.pattern(
        r"\d{1,4}(\.\d{1,6}){1,3}", "a TensorRT version such as '10.3.0'"
    ),
    "gpu": r.obj,
    "onnx": r.obj,
    "precision": r.obj,
    "profile": r.obj,
    "builder": r.obj,
    "build_command": r.text(20_000),
    "provenance": r.optional(r.obj),
    "created_by": r.text(200),
}
_NESTED: dict[str, dict[str, r.Checker]] = {
    "gpu": {
        "name": r.text(200),
        "compute_capability": r.pattern(r"\d{1,2}\.\d{1,2}", "a compute capability such as '8.7'"),
    },
    "onnx": {"path": r.text(5000), "sha256": r.sha256},
    "precision": {"requested": r.one_of("fp32", "fp16", "int8")},
    "builder": {
        "version_compatible": r.boolean,
        "hardware_compat": r.one_of("none", "ampere+"),
        "dla_core": r.optional(r.integer(0, 15)),
    },
}
_REQUIRED = ("format", "engine_sha256", "tensorrt_version", "gpu", "builder", "build_command")

#: Compute capabilities of Jetson (integrated) GPUs: TX1/Nano 5.3, TX2 6.2, Xavier 7.2,
#: Orin 8.7, Thor 10.1 (11.0 from CUDA 13).
JETSON_COMPUTE_CAPABILITIES = ("5.3", "6.2", "7.2", "8.7", "10.1", "11.0")


def read_sidecar(engine: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checked sidecar of `engine`, or None when there is none (e.g. built by trtexec).

    A sidecar that is a dangling symbolic link or not a regular file is refused, never taken
    for "no sidecar"; every key is checked (type, range) before it is used.
    """
    path = sidecar_path(engine)
    if not os.path.lexists(path):
        return None
    if not path.exists():
        raise InputError(
            f"Engine sidecar '{clip(path)}' is a symbolic link to '{clip(os.readlink(path))}', "
            "which does not exist; restore the sidecar or rebuild the engine with "
            "`karst-deploy build-engine`."
        )
    if not path.is_file():
        raise InputError(f"Engine sidecar '{clip(path)}' is not a regular file.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Engine sidecar '{clip(path)}' is not readable JSON: {exc}") from None
    where = f"Engine sidecar '{clip(path)}'"
    record = parse_object(text, where)
    missing = [key for key in _REQUIRED if key not in record]
    if record.get("format") != FORMAT or missing:
        raise InputError(
            f"'{clip(path)}' is not a karst-deploy engine sidecar (format "
            f"{clip(repr(record.get('format')), 80)}, missing {missing}). Rebuild the engine "
            "with `karst-deploy build-engine`."
        )
    r.validate(record, _SCHEMA, where, nested=_NESTED)
    if record.get("provenance") is not None:
        r.validate(
            record["provenance"], SCHEMA, f"{where} key 'provenance'", nested=PROVENANCE_NESTED
        )
    return record


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def is_jetson(here: RuntimeEnvironment) -> bool:
    """Whether `here` is an integrated Jetson GPU (by compute capability or name)."""
    name = here.gpu_name.lower()
    return here.compute_capability in JETSON_COMPUTE_CAPABILITIES or any(
        word in name for word in ("orin", "xavier", "tegra", "jetson", "thor")
    )


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
            "version_compatible=True to relax this, at some cost in speed)"
        )
        raise EngineMismatchError(
            f"Engine '{engine}' was built with TensorRT {built_trt}; this machine has TensorRT "
            f"{here.tensorrt_version}, and {why}. To run it, {rebuild}",
            parameters=("version_compatible",),
        )
    built_gpu = record["gpu"]
    level = record["builder"].get("hardware_compat", "none")
    if level == "ampere+":
        if is_jetson(here):
            raise EngineMismatchError(
                f"Engine '{engine}' was built hardware-compatible (ampere+), but this GPU "
                f"'{here.gpu_name}' ({here.compute_capability}) is a Jetson: TensorRT supports "
                "hardware compatibility only on Ampere-or-newer discrete GPUs, not on JetPack "
                f'(TensorRT developer guide, "Hardware Compatibility"). To run it, {rebuild}'
            )
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
            f"with hardware_compat ampere+ for desktop Ampere+ portability). To run it, {rebuild}",
            parameters=("hardware_compat",),
        )


def engine_source_precision(
    engine: str | os.PathLike[str], onnx: str | os.PathLike[str]
) -> str | None:
    """The precision `engine` was built in, after checking it was built from `onnx`.

    None when the engine has no sidecar (e.g. built by trtexec): its source cannot be checked.
    """
    if not Path(engine).is_file():
        raise InputError(
            f"engine '{engine}' does not exist or is not a file.", parameters=("engine",)
        )
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
