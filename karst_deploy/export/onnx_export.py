"""torch → ONNX: merge, export, check, embed provenance, write atomically.

Exporter: **dynamo** (``torch.onnx.export(..., dynamo=True)``) with its graph optimiser
**off**, chosen by measurement (torch 2.15, the test table's tiny ViT/DeiT/Swin and
ViT-S/16). Both torch exporters give one ``LayerNormalization`` per norm at opset ≥ 17,
run a dynamic batch and match PyTorch to ~1e-6, and ONNX Runtime runs their graphs equally
fast (it folds constants itself when it loads a session). What decided it: *both the
TorchScript exporter and the dynamo optimiser rewrite the graph depending on the weight
values* — they merge initializers that happen to be equal (a fresh backbone's all-zero
biases; the TorchScript exporter then inserts Identity nodes) and drop a Gemm's all-zero
bias input — so a plain backbone and its merged twin could export to different graphs.
Dynamo without its optimiser exported base and merged graphs with identical operator and
initializer multisets for every (method × backbone) test case, the TorchScript exporter
for none of the KARST ones. That makes "the merged model is the baseline graph with other
numbers in it" a structural fact the bench can check. It is also the supported path (the
TorchScript exporter warns it will be removed). Costs: a few seconds per export (about
2 s for a tiny ViT, 5 s for ViT-S/16), and more Constant nodes in the file (ViT-Ti/2
blocks: 158 nodes, 151 after the folding below; Swin-tiny/2 stages: 341, 275 folded, vs
TorchScript's 583). It needs torch ≥ 2.6.

Integer constant chains are folded after export (`fold_integer_constants`): the exporter
writes some ``axes`` inputs as ``Reshape(Constant, Constant)`` or ``Reshape(Cast(Constant))``
(Swin's final ``ReduceMean``, the class-token ``Slice`` of ViT/DeiT), and TensorRT's ONNX
parser takes ``axes`` only as a build-time constant (onnx-tensorrt ``docs/operators.md``:
ReduceMean in every 10.x/11.x table, Slice up to 10.1; its importer turns a Cast or Reshape
of constants into a network tensor). Only integer (shape) values are folded, never weights,
so base and merged graphs stay structurally identical.

One file, no external data: ViT-B/16 in fp32 is ~346 MB, far below protobuf's 2 GiB
limit, and a single self-contained file is what TensorRT's parser, ``trtexec`` and a
copy to a Jetson want; its sha256 then covers every weight. Larger models are refused
with a clear message rather than silently split.

Checks before success (timm's ``onnx_export.py`` does the same two): ``onnx.checker``
with ``full_check=True`` (shape inference included), and an ONNX Runtime forward on a
seeded batch — 3 images when the batch is dynamic, so a dynamic axis that got
specialised fails — compared with the PyTorch network that was exported, using the fp32
tolerance of `karst_deploy.compare.TOLERANCES`. The file is renamed into place only
after both pass.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from karst_deploy.errors import InputError, KarstDeployError, VerificationError
from karst_deploy.files import atomic_output, refuse_existing, sha256_file

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17 on
EXPORTER = "dynamo"
CHECK_BATCH = 3  # odd, and different from the export example's 2
EXAMPLE_BATCH = 2  # torch.export specialises a dimension of size 1, so never export with 1
PROTOBUF_LIMIT = 2**31


class ExportError(KarstDeployError):
    """torch.onnx could not export the model."""


@dataclass(frozen=True)
class ExportCheck:
    """What `check_export` measured: onnx.checker, then ONNX Runtime vs PyTorch on one batch."""

    onnx_checker: str
    onnxruntime_batch: int
    max_abs_diff: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportResult:
    """What `export_model` wrote and what its checks measured."""

    path: Path
    kind: str
    backbone: str
    method: str | None
    opset: int
    exporter: str
    batch: str | int
    size_bytes: int
    sha256: str
    nodes: int
    layer_norm_ops: int
    check: ExportCheck
    seconds: float
    # Backbone sizes read from --checkpoint because they were not given (--no-adapter).
    inferred: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def export_onnx(
    out: str | os.PathLike[str],
    *,
    backbone: str | None = None,
    adapter: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    unmerged: bool = False,
    num_classes: int | None = None,
    img_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    force: bool = False,
) -> ExportResult:
    """Export an adapted model (merged, or `unmerged`) or, without `adapter`, the plain backbone.

    With `adapter`, the backbone is the one its adapter_config.json names (`backbone`, if
    given, must agree); without, it is built from `backbone`, `num_classes`, `img_size` and
    `model_kwargs` (with a `checkpoint`, a class count or input size not given is read from
    it: `karst_deploy.models.infer_from_checkpoint`, reported in ``inferred``), and so is it
    for a Hugging Face PEFT `adapter` (which records none;
    `num_classes` then defaults to the head stored in it). `batch=None` exports a dynamic
    batch axis named ``batch``. `pretrained` (the user's --pretrained) lets timm download
    its pretrained weights for the backbone.
    """
    from karst_deploy.adapters import AdapterFile, load_adapted_model
    from karst_deploy.adapters.peft_format import is_peft_directory, load_peft_model
    from karst_deploy.models import create_model, infer_from_checkpoint

    refuse_existing(Path(out), force)  # before minutes of work, not after
    inferred: dict[str, int] = {}
    if adapter is not None and is_peft_directory(adapter):
        # PEFT records no backbone: it comes from the flags, num_classes from the stored head.
        model = load_peft_model(
            adapter,
            backbone,
            checkpoint=checkpoint,
            img_size=img_size,
            model_kwargs=model_kwargs,
            num_classes=num_classes,
            pretrained=pretrained,
        )
    elif adapter is not None:
        file = AdapterFile(adapter)
        if backbone is not None and backbone != file.backbone.name:
            raise InputError(
                f"backbone is '{backbone}' but the adapter '{adapter}' was trained on "
                f"'{file.backbone.name}'.",
                parameters=("backbone",),
            )
        given = {"num_classes": num_classes, "img_size": img_size, "model_kwargs": model_kwargs}
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            raise InputError(
                f"{clash[0]} applies only without an adapter; with an adapter the backbone is "
                f"built exactly as '{file.config_path}' records it.",
                parameters=(clash[0],),
            )
        model = load_adapted_model(adapter, checkpoint, pretrained=pretrained)
    else:
        if unmerged:
            raise InputError(
                "unmerged needs an adapter: a plain backbone has nothing to merge.",
                parameters=("unmerged",),
            )
        if backbone is None:
            raise InputError(
                "backbone (a timm name) is required without an adapter.", parameters=("backbone",)
            )
        kwargs = dict(model_kwargs or {})
        if "img_size" in kwargs:  # model_kwargs may carry it, as for train and sensitivity
            if img_size is not None and img_size != kwargs["img_size"]:
                raise InputError(
                    f"img_size {img_size} contradicts model_kwargs img_size {kwargs['img_size']}.",
                    parameters=("img_size", "model_kwargs"),
                )
            img_size = kwargs.pop("img_size")
        if checkpoint is not None and (num_classes is None or img_size is None):
            found = infer_from_checkpoint(backbone, checkpoint, **kwargs)
            inferred = {
                key: value
                for key, value in found.items()
                if {"num_classes": num_classes, "img_size": img_size}[key] is None
            }
            num_classes = inferred.get("num_classes", num_classes)
            img_size = inferred.get("img_size", img_size)
        model = create_model(
            backbone,
            num_classes,
            img_size,
            checkpoint=checkpoint,
            pretrained=pretrained,
            **kwargs,
        )
    result = export_model(
        model,
        out,
        unmerged=unmerged,
        adapter_dir=adapter,
        opset=opset,
        batch=batch,
        force=force,
    )
    if inferred:
        result.inferred = inferred
    return result


def export_model(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    unmerged: bool = False,
    adapter_dir: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    force: bool = False,
) -> ExportResult:
    """Export a model made by `create_model` (plain, or carrying adapters) to one ONNX file.

    Adapters are merged first unless `unmerged`. `adapter_dir`, the directory the adapters
    were loaded from, is hashed into the provenance (so `verify-parity` can match them).
    """
    from karst_deploy.adapters import AdapterFile, adapter_config, merge
    from karst_deploy.adapters.peft_format import PeftDirectory, is_peft_directory
    from karst_deploy.export.record import provenance_record
    from karst_deploy.models import backbone_spec
    from karst_deploy.provenance import write_provenance

    started = time.perf_counter()
    out = Path(out)
    refuse_existing(out, force)
    if opset < MIN_OPSET:
        raise InputError(
            f"opset {opset} is too old: karst-deploy exports opset {MIN_OPSET} or newer, where "
            "LayerNorm is one LayerNormalization op (fp16 engines need it kept whole).",
            parameters=("opset",),
        )
    if opset > onnx.defs.onnx_opset_version():
        raise InputError(
            f"opset {opset} is newer than the installed onnx {onnx.__version__} knows "
            f"(at most {onnx.defs.onnx_opset_version()}); choose {MIN_OPSET} to "
            f"{onnx.defs.onnx_opset_version()}.",
            parameters=("opset",),
        )
    if batch is not None and batch < 1:
        raise InputError(
            f"batch must be None (dynamic) or a positive integer, got {batch}.",
            parameters=("batch",),
        )
    config = adapter_config(model)
    if config is None:
        if unmerged:
            raise InputError("unmerged=True needs a model with adapters; this one is plain.")
        kind, network, document, hashes = "base", model, None, None
    else:
        kind = "unmerged" if unmerged else "merged"
        network = model if unmerged else merge(model)
        if adapter_dir is not None and is_peft_directory(adapter_dir):
            file = PeftDirectory(adapter_dir)
            document, hashes = {"format": "peft", **file.document}, file.sha256()
        elif adapter_dir is not None:
            file = AdapterFile(adapter_dir)
            document, hashes = json.loads(file.config_path.read_text()), file.sha256()
        else:
            document, hashes = {"method": config.method, **config.to_hparams()}, None
    spec = backbone_spec(model)
    record = provenance_record(
        spec,
        kind=kind,
        method=None if config is None else config.method,
        adapter_config=document,
        adapter_sha256=hashes,
        opset=opset,
        exporter=EXPORTER,
        batch=batch,
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in network.state_dict().values())
    if weight_bytes >= PROTOBUF_LIMIT:
        raise InputError(
            f"{spec.name} holds {weight_bytes / 2**30:.1f} GiB of weights, over protobuf's 2 GiB "
            "limit for one ONNX file; karst-deploy writes single-file ONNX only (no external data)."
        )
    network = network.eval()
    example = torch.randn(
        batch or EXAMPLE_BATCH,
        spec.in_chans,
        spec.img_size,
        spec.img_size,
        generator=torch.Generator().manual_seed(0),
    )
    proto = _to_onnx(network, example, opset=opset, dynamic=batch is None)
    write_provenance(proto, record)
    with atomic_output(out, force=force) as tmp:
        onnx.save(proto, str(tmp))
        check = check_export(tmp, network, spec.img_size, spec.num_classes, batch)
    return ExportResult(
        path=out,
        kind=kind,
        backbone=spec.name,
        method=record["method"],
        opset=opset,
        exporter=EXPORTER,
        batch=record["batch"],
        size_bytes=out.stat().st_size,
        sha256=sha256_file(out),
        nodes=len(proto.graph.node),
        layer_norm_ops=sum(node.op_type == "LayerNormalization" for node in proto.graph.node),
        check=check,
        seconds=round(time.perf_counter() - started, 2),
    )


def _to_onnx(
    network: nn.Module, example: torch.Tensor, *, opset: int, dynamic: bool
) -> onnx.ModelProto:
    """The dynamo exporter, optimiser off; input ``images``, output ``logits``, axis ``batch``."""
    # Tracer and deprecation warnings are about torch internals, not the user's model; a real
    # problem surfaces as an exception here or as a failed check afterwards.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                network,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},) if dynamic else None,
                external_data=False,
                optimize=False,  # its rewrites depend on weight values (module docstring)
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; all mean "could not export"
            lines = str(exc).strip().splitlines()
            raise ExportError(
                f"torch.onnx (torch {torch.__version__}, dynamo exporter; karst-deploy needs "
                f"torch >= 2.6 to export) could not export {type(network).__name__}: "
                f"{type(exc).__name__}: {lines[0] if lines else ''}"
            ) from None
    return fold_integer_constants(program.model_proto)


#: Operators whose integer result is folded when all their inputs are constants.
_FOLDABLE = frozenset({"Cast", "Reshape", "Concat", "Unsqueeze", "Squeeze", "Identity"})


def _constant_value(node: onnx.NodeProto) -> Any:
    """The value of a Constant node with a tensor or integer payload, else None."""
    if node.op_type != "Constant" or len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    if attribute.name == "value":
        return onnx.numpy_helper.to_array(attribute.t)
    if attribute.name in ("value_int", "value_ints"):
        return np.asarray(onnx.helper.get_attribute_value(attribute), dtype=np.int64)
    return None


def fold_integer_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace integer-valued Cast/Reshape/Concat/(Un)Squeeze/Identity of constants by Constants.

    Evaluated with ONNX's reference implementation; Constants left unused are dropped. The
    graph is in topological order (as the exporter writes it), so chains fold in one pass.
    """
    from onnx.reference import ReferenceEvaluator

    values: dict[str, Any] = {}
    nodes = []
    for node in model.graph.node:
        value = _constant_value(node)
        inputs = [name for name in node.input if name]
        if value is not None:
            values[node.output[0]] = value
        elif (
            node.op_type in _FOLDABLE
            and len(node.output) == 1
            and inputs
            and all(name in values for name in inputs)
        ):
            (result,) = ReferenceEvaluator(node).run(None, {name: values[name] for name in inputs})
            result = np.asarray(result)
            if result.dtype in (np.int64, np.int32):
                values[node.output[0]] = result
                tensor = onnx.numpy_helper.from_array(result, node.output[0])
                node = onnx.helper.make_node(
                    "Constant", [], [node.output[0]], name=node.name, value=tensor
                )
        nodes.append(node)
    used = {name for node in nodes for name in node.input}
    used |= {output.name for output in model.graph.output}
    kept = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_export(
    path: str | os.PathLike[str],
    network: nn.Module,
    img_size: int,
    num_classes: int,
    batch: int | None,
) -> ExportCheck:
    """onnx.checker (full), the input/output contract, and an ONNX Runtime forward vs `network`.

    Raises VerificationError naming the check that failed; returns the measured figures.
    """
    from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from karst_deploy.compare import TOLERANCES, compare_logits

    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise VerificationError(
            f"The exported graph fails onnx.checker (full_check): {exc}"
        ) from None
    from karst_deploy.models import input_channels

    model = onnx.load(os.fspath(path), load_external_data=False)
    batch_dim = BATCH_AXIS if batch is None else batch
    channels = input_channels(network)
    expected = {
        "input": (INPUT_NAME, [batch_dim, channels, img_size, img_size]),
        "output": (OUTPUT_NAME, [batch_dim, num_classes]),
    }
    actual = {
        "input": (model.graph.input[0].name, _dims(model.graph.input[0])),
        "output": (model.graph.output[0].name, _dims(model.graph.output[0])),
    }
    for role in ("input", "output"):
        if actual[role] != expected[role]:
            raise VerificationError(
                f"The exported graph's {role} is {actual[role][0]!r} with shape {actual[role][1]}; "
                f"expected {expected[role][0]!r} with shape {expected[role][1]}."
            )
    images = torch.randn(
        batch or CHECK_BATCH,
        channels,
        img_size,
        img_size,
        generator=torch.Generator().manual_seed(1),
    )
    with torch.inference_mode():
        reference = network(images).float().numpy()
    with OnnxRuntimeRunner(path) as runner:
        candidate = runner.infer(images.numpy())
    metrics, checks = compare_logits(reference, candidate, TOLERANCES["fp32"])
    failed = [check.detail for check in checks if not check.passed]
    if failed:
        raise VerificationError(
            "ONNX Runtime does not reproduce the PyTorch model on a seeded batch of "
            f"{len(images)}: {'; '.join(failed)}."
        )
    return ExportCheck(
        onnx_checker="passed (full_check)",
        onnxruntime_batch=len(images),
        max_abs_diff=metrics.max_abs_diff,
        top1_agreement=metrics.top1_agreement,
    )
