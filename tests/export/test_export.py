"""torch → ONNX export: checks, dynamic batch, provenance, unmerged graphs, refusals."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import karst_deploy as kd
from karst_deploy.adapters import AdapterFile
from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
from karst_deploy.errors import InputError, OutputExistsError, VerificationError
from karst_deploy.export import compare_structure, export_onnx
from karst_deploy.export.onnx_export import check_export
from karst_deploy.files import sha256_file
from karst_deploy.onnx_file import read_provenance
from tests.cases import adapted, method_params
from tests.cli_helpers import run_cli
from tests.export.artifacts import CASE, export_base

RECORD_KEYS = {
    "version", "backbone", "img_size", "num_classes", "mean", "std", "model_kwargs", "method",
    "adapter_config", "adapter_sha256", "checkpoint_sha256", "kind", "precision", "opset",
    "exporter",
}  # fmt: skip


@pytest.fixture(scope="module")
def exported(method_export, base_export):
    """A KARST adapter, its merged export and the plain backbone's export (session-shared)."""
    adapter, merged = method_export("karst-channel")
    return {"adapter": adapter, "merged": merged, "base": base_export(CASE)}


def run_onnx(path, batch: int) -> np.ndarray:
    images = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    with OnnxRuntimeRunner(path) as runner:
        return runner.infer(images)


def test_export_checks_pass_and_are_reported(exported):
    result = exported["merged"]
    assert result.kind == "merged" and result.method == "karst" and result.exporter == "dynamo"
    assert result.check.onnx_checker.startswith("passed")
    assert result.check.onnxruntime_batch == 3
    assert result.check.max_abs_diff < 1e-4 and result.check.top1_agreement == 1.0
    assert result.sha256 == sha256_file(result.path)


def test_io_contract_and_dynamic_batch(exported):
    graph = onnx.load(str(exported["merged"].path)).graph
    (given,), (produced,) = graph.input, graph.output
    dims = [d.dim_param or d.dim_value for d in given.type.tensor_type.shape.dim]
    assert (given.name, dims) == ("images", ["batch", 3, 32, 32])
    assert given.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in produced.type.tensor_type.shape.dim]
    assert (produced.name, dims) == ("logits", ["batch", CASE.kwargs["num_classes"]])
    for batch in (1, 3, 5):
        assert run_onnx(exported["merged"].path, batch).shape == (batch, 10)


def test_layer_norm_is_one_op_per_norm(exported):
    model = onnx.load(str(exported["merged"].path))
    operators = Counter(node.op_type for node in model.graph.node)
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in CASE.build().modules())
    assert operators["LayerNormalization"] == norms == exported["merged"].layer_norm_ops
    assert operators["ReduceMean"] == 0
    assert model.opset_import[0].version == 18


def test_provenance_records_the_sources(exported):
    record = read_provenance(exported["merged"].path)
    assert set(record) >= RECORD_KEYS
    adapter = AdapterFile(exported["adapter"])
    assert record["adapter_sha256"] == adapter.sha256()
    assert record["adapter_config"] == json.loads(adapter.config_path.read_text())
    assert (record["backbone"], record["img_size"], record["num_classes"]) == (CASE.name, 32, 10)
    assert (record["kind"], record["method"], record["precision"]) == ("merged", "karst", "fp32")
    assert record["model_kwargs"] == {"patch_size": 8, "depth": 2}
    assert record["checkpoint_sha256"] is None and len(record["mean"]) == 3
    base = read_provenance(exported["base"].path)
    assert (base["kind"], base["method"], base["adapter_sha256"]) == ("base", None, None)


def test_merged_export_computes_the_adapted_model(exported):
    """The ONNX equals the unmerged PyTorch model (same seeded backbone) and differs from base."""
    model = kd.load_adapted_model(exported["adapter"])
    images = np.random.default_rng(3).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    logits = run_onnx(exported["merged"].path, 3)
    assert np.abs(logits - expected).max() <= 1e-4 * max(1, np.abs(expected).max())
    assert np.abs(logits - run_onnx(exported["base"].path, 3)).max() > 1e-2


@method_params
def test_unmerged_export_runs_and_is_structurally_different(method, exported, method_export):
    _, result = method_export(method, unmerged=True)
    assert result.kind == "unmerged" and result.check.top1_agreement == 1.0
    model = adapted(CASE, method)  # the same seeded backbone and adapter values
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = model(images).numpy()
    with OnnxRuntimeRunner(result.path) as runner:
        logits = runner.infer(images.numpy())
    assert np.abs(logits - expected).max() <= 1e-4 * max(1, np.abs(expected).max())
    assert read_provenance(result.path)["kind"] == "unmerged"
    # The structural check tells the unmerged graph from the baseline, and the merged one not.
    comparison = compare_structure(exported["base"].path, result.path)
    assert not comparison.same and comparison.operators
    assert comparison.summary().startswith("graphs differ: ")
    assert compare_structure(exported["base"].path, exported["merged"].path).same


def test_fixed_batch_and_force(tmp_path):
    out = tmp_path / "fixed.onnx"
    out.write_bytes(b"an older artifact")
    with pytest.raises(OutputExistsError):
        export_base(out, batch=4)
    assert out.read_bytes() == b"an older artifact"
    result = export_base(out, batch=4, force=True)
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 32, 32]
    assert result.batch == 4 and read_provenance(out)["batch"] == 4


def test_check_catches_an_onnx_that_differs_from_pytorch(exported, tmp_path):
    model = onnx.load(str(exported["base"].path))
    weight = next(t for t in model.graph.initializer if t.name == "head.weight")
    values = onnx.numpy_helper.to_array(weight)
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=values.shape).astype(np.float32)
    weight.CopyFrom(onnx.numpy_helper.from_array(values + 1e-2 * signs, weight.name))
    onnx.save(model, str(tmp_path / "tampered.onnx"))
    base = CASE.build()
    check_export(exported["base"].path, base, 32, 10, None)  # the untouched file passes
    with pytest.raises(VerificationError, match="max abs diff"):
        check_export(tmp_path / "tampered.onnx", base, 32, 10, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"opset": 16}, "opset 16 is too old"),
        ({"batch": 0}, "positive integer"),
        ({"num_classes": 3}, "^num_classes applies only without an adapter"),
        ({"backbone": "deit_base_patch16_224"}, "was trained on"),
        ({"unmerged": True, "adapter": None, "backbone": CASE.name}, "^unmerged needs an adapter"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, message, exported, tmp_path):
    arguments = {"adapter": exported["adapter"], **options}
    with pytest.raises(InputError, match=message) as refused:
        export_onnx(tmp_path / "x.onnx", **arguments)
    assert not (tmp_path / "x.onnx").exists()
    assert "--" not in str(refused.value)  # the library names parameters; the CLI, flags


def test_cli_export_json_and_refusal(exported, tmp_path):
    out = tmp_path / "cli.onnx"
    args = ["export", "--adapter", str(exported["adapter"]), "--out", str(out), "--batch", "2"]
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "merged" and report["batch"] == 2 and out.is_file()
    again = run_cli(*args)
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    neither = run_cli("export", "--out", str(tmp_path / "y.onnx"))
    assert neither.returncode == 2 and "--no-adapter" in neither.stderr


def test_a_plain_export_reads_class_count_and_input_size_from_the_checkpoint(tmp_path):
    """`export --no-adapter --checkpoint F` with a 10-class 48-px head: sizes from F, said so."""
    from safetensors.torch import save_file

    model = kd.create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=48, patch_size=8, depth=1
    )
    checkpoint = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint)
    out = tmp_path / "base.onnx"
    result = run_cli(
        "export", "--no-adapter", "--backbone", "vit_tiny_patch16_224", "--checkpoint",
        str(checkpoint), "--model-kwargs", '{"patch_size": 8, "depth": 1}', "--out", str(out),
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["inferred"] == {"num_classes": 10, "img_size": 48}
    record = read_provenance(out)
    assert (record["num_classes"], record["img_size"]) == (10, 48)
    given = export_onnx(
        tmp_path / "given.onnx", backbone="vit_tiny_patch16_224", checkpoint=checkpoint,
        num_classes=10, img_size=48, model_kwargs={"patch_size": 8, "depth": 1},
    )  # fmt: skip
    assert given.inferred is None  # nothing to infer when both are given
