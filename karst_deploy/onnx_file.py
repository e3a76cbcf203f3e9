"""One ONNX file, loaded once and checked: its image input, batch axis, precision, provenance.

Every step that is handed an ONNX file (verify-parity, bench, build-engine, the precision
conversions, the ONNX Runtime TensorRT provider) opens it here, so each fact has one reader:

* loading: a regular file of at most `MAX_ONNX_BYTES` (protobuf's limit for one message),
  parsed without following external-data paths, and refused when any tensor lives in an
  external data file (our exports are single self-contained files; a path in a file from
  someone else must not reach the file system);
* the image input: exactly one float32/float16 graph input [batch, C, H, W] with fixed C,
  H and W; the batch axis is fixed (an int) or dynamic (None);
* precision: the graph's own (`karst_deploy.graph_precision`, the one rule); a provenance
  label that disagrees is refused, since a label is a claim anyone can edit;
* provenance: `karst_deploy.provenance` reads (and checks) the record.

Leaf module: it imports only the other leaves (errors, files, graph_precision, provenance).
Errors name the Python parameter the path came in (`parameter`), which the CLI maps to
its flag (`karst_deploy.errors.InputError.parameters`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from karst_deploy.errors import InputError, clip
from karst_deploy.files import sha256_file
from karst_deploy.graph_precision import all_graphs, precision_evidence
from karst_deploy.provenance import EXPORT_KEYS, record_of

#: Protobuf refuses messages over 2 GiB; a larger file cannot be one ONNX model.
MAX_ONNX_BYTES = 2**31
_FLOAT_INPUTS = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


@dataclass(frozen=True)
class ImageInput:
    """The image batch a graph takes: [batch, channels, height, width]."""

    name: str
    dtype: str  # "float32" or "float16"
    channels: int
    height: int
    width: int
    batch: int | None  # the fixed batch size, or None when the axis is dynamic

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def size(self) -> int | None:
        """The side of a square image (None when height and width differ)."""
        return self.height if self.height == self.width else None

    @property
    def dynamic_batch(self) -> bool:
        return self.batch is None

    def accepts(self, batch: int) -> bool:
        """Whether a batch of `batch` images can be fed in one call."""
        return self.batch is None or self.batch == batch


def image_input(model: onnx.ModelProto, where: str = "the ONNX model") -> ImageInput:
    """The one image input of `model` (see the module docstring); InputError otherwise."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InputError(
            f"{where} has {len(inputs)} graph inputs ({clip([i.name for i in inputs])}); "
            "karst-deploy models take exactly one image batch [batch, 3, H, W]."
        )
    tensor = inputs[0].type.tensor_type
    dtype = _FLOAT_INPUTS.get(tensor.elem_type)
    dims = list(tensor.shape.dim)
    if dtype is None or len(dims) != 4:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise InputError(
            f"{where} input '{clip(inputs[0].name)}' must be a float32/float16 tensor of rank 4 "
            f"[batch, 3, H, W]; it is {kind} of rank {len(dims)}."
        )
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
        raise InputError(
            f"{where} input '{clip(inputs[0].name)}' must have fixed channel, height and width; "
            "only the batch axis may be dynamic."
        )
    first = dims[0]
    batch = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None
    channels, height, width = (d.dim_value for d in dims[1:])
    return ImageInput(inputs[0].name, dtype, channels, height, width, batch)


def load_onnx(path: str | os.PathLike[str], parameter: str | None = None) -> onnx.ModelProto:
    """Parse `path` with the checks of the module docstring (size, no external data)."""
    path = Path(path)
    label = f"{parameter} '{clip(path)}'" if parameter else f"ONNX file '{clip(path)}'"
    parameters = (parameter,) if parameter else ()
    if not path.is_file():
        raise InputError(f"{label} does not exist or is not a file.", parameters=parameters)
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise InputError(
            f"{label} is {size:,} bytes, over protobuf's 2 GiB limit for one ONNX model.",
            parameters=parameters,
        )
    try:  # never follow external-data paths a file names
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise InputError(
            f"{label} is not a readable ONNX file: {clip(exc)}", parameters=parameters
        ) from None
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise InputError(
                    f"{label} keeps tensor '{clip(tensor.name)}' in an external data file; "
                    "karst-deploy reads single self-contained ONNX files (as it exports them), "
                    "export it again.",
                    parameters=parameters,
                )
    return model


class OnnxFile:
    """An ONNX file, parsed once; each fact is read the first time it is asked for.

    `parameter` names the argument the path was given as, for messages (e.g. ``onnx``).
    """

    def __init__(self, path: str | os.PathLike[str], parameter: str | None = None) -> None:
        self.path = Path(path)
        self.parameter = parameter
        self.model = load_onnx(self.path, parameter)

    @property
    def label(self) -> str:
        """How messages name this file."""
        return f"'{clip(self.path)}'"

    @functools.cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @functools.cached_property
    def provenance(self) -> dict[str, Any] | None:
        """The checked provenance record, or None when the file has none."""
        return record_of(self.model, self.label)

    @functools.cached_property
    def image_input(self) -> ImageInput:
        return image_input(self.model, self.label)

    @functools.cached_property
    def graph_precision(self) -> tuple[str, str]:
        """The precision the graph shows and what shows it (`precision_evidence`)."""
        return precision_evidence(self.model)

    @functools.cached_property
    def precision(self) -> str:
        """The graph's precision, after refusing a provenance label that says otherwise."""
        shown, evidence = self.graph_precision
        label = (self.provenance or {}).get("precision")
        if label is not None and label != shown:
            raise InputError(
                f"{self.label}: its provenance says precision {label!r} but the graph is "
                f"{shown} ({evidence}); the record does not describe this graph (edited after "
                "export?). Export or convert it again with karst-deploy."
            )
        return shown

    @property
    def precision_source(self) -> str:
        """``provenance`` when a (matching) label states the precision, else ``graph``."""
        return "provenance" if (self.provenance or {}).get("precision") else "graph"

    def require_precision(self, expected: str) -> None:
        """Refuse the file unless its graph (and label) is `expected` precision."""
        if self.precision != expected:
            raise InputError(
                f"{self.label} is an {self.precision} model, not {expected} "
                f"({self.graph_precision[1]}).",
                parameters=(self.parameter,) if self.parameter else (),
            )


def require_precision(
    path: str | os.PathLike[str], expected: str, parameter: str | None = None
) -> None:
    """Refuse an ONNX file whose graph is not `expected` precision, or whose label disagrees."""
    OnnxFile(path, parameter).require_precision(expected)


def read_provenance(
    source: onnx.ModelProto | str | os.PathLike[str], where: str | None = None
) -> dict[str, Any] | None:
    """The checked provenance record of an ONNX model or file (`OnnxFile`), or None."""
    if isinstance(source, onnx.ModelProto):
        return record_of(source, where or "the ONNX model")
    return OnnxFile(source).provenance


def require_provenance(source: OnnxFile | str | os.PathLike[str]) -> dict[str, Any]:
    """The record of an ONNX file, or a clear error when it has none."""
    if not isinstance(source, OnnxFile):
        source = OnnxFile(source)
    record = source.provenance
    if record is None:
        raise InputError(
            f"{source.label} carries no karst-deploy provenance (metadata key "
            "'karst_deploy.provenance'); export it with `karst-deploy export` so it records "
            "the backbone and adapter it was made from."
        )
    missing = [key for key in EXPORT_KEYS if key not in record]
    if missing:
        raise InputError(
            f"{source.label}: provenance lacks key '{missing[0]}', which every export records; "
            "the metadata was edited. Export the model again with `karst-deploy export`."
        )
    return record
