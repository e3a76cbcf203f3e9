"""verify-parity: passes for every adapter method, fails on a perturbed ONNX, refuses a mismatch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner
from karst_deploy.compare import TOLERANCES, Tolerance, compare_logits, tolerance_for
from karst_deploy.errors import InputError, VerificationError
from karst_deploy.export import compare_structure, export_onnx
from karst_deploy.onnx_file import read_provenance
from karst_deploy.parity import Stage, verify_parity
from karst_deploy.provenance import write_provenance
from tests.cases import METHOD_CASES, method_params
from tests.cli_helpers import run_cli
from tests.export.artifacts import CASE


@pytest.fixture(scope="module")
def exports(method_export):
    """For every method: an adapter directory and its merged ONNX export (session-shared)."""
    result = {}
    for method in METHOD_CASES:
        adapter, merged = method_export(method)
        result[method] = (adapter, merged.path)
    return result


@pytest.fixture(scope="module")
def perturbed(exports, tmp_path_factory):
    """The KARST export with one initializer (block 0's qkv weight) perturbed by ±1e-2."""
    _, path = exports["karst-channel"]
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.name == "blocks.0.attn.qkv.weight")
    values = onnx.numpy_helper.to_array(weight)
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=values.shape).astype(np.float32)
    weight.CopyFrom(onnx.numpy_helper.from_array(values + 1e-2 * signs, weight.name))
    out = tmp_path_factory.mktemp("perturbed") / "perturbed.onnx"
    onnx.save(model, str(out))  # provenance (metadata_props) is kept: only a weight changed
    return out


@method_params
def test_parity_passes_for_every_method(method, exports):
    adapter, path = exports[method]
    report = verify_parity(path, adapter, data="digits", samples=24, images=24, progress=False)
    assert report.passed, report.failures
    assert [s.name for s in report.stages] == ["torch-unmerged", "torch-merged", "onnxruntime"]
    pairs = [(c.reference, c.candidate, c.inputs) for c in report.comparisons]
    assert pairs == [
        ("torch-unmerged", "torch-merged", "random"),
        ("torch-unmerged", "torch-merged", "images"),
        ("torch-merged", "onnxruntime", "random"),
        ("torch-merged", "onnxruntime", "images"),
    ]
    for comparison in report.comparisons:
        metrics = comparison.metrics
        assert metrics.max_abs_diff <= 1e-4 * max(1, metrics.max_abs_reference)
        assert metrics.min_cosine > 0.999999
        per_input = comparison.max_abs_diff_per_input  # what --plot histograms
        assert per_input.max() == pytest.approx(metrics.max_abs_diff, rel=1e-6)
    accuracy = report.accuracy["images"]
    assert len(set(accuracy.values())) == 1  # the same answers, so the same accuracy
    assert report.white_box.passed and report.white_box.precision == "fp32"
    assert report.white_box.nodes_compared > 50 and report.white_box.constants_compared > 20
    assert report.to_dict()["passed"] is True


def test_merged_onnx_differs_from_the_plain_backbone(exports, base_export):
    """An adapter that changed nothing would pass parity; these adapters do change the output."""
    base = base_export(CASE).path
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with OnnxRuntimeRunner(base) as runner:
        plain = runner.infer(images)
    for _, path in exports.values():
        with OnnxRuntimeRunner(path) as runner:
            assert np.abs(runner.infer(images) - plain).max() > 1e-2
        assert compare_structure(base, path).same  # the backbone's graph, other numbers


def test_a_perturbed_initializer_fails_with_exit_1(exports, perturbed, tmp_path):
    adapter, _ = exports["karst-channel"]
    report_path, plot = tmp_path / "report.json", tmp_path / "parity.png"
    result = run_cli(
        "verify-parity", "--adapter", str(adapter), "--onnx", str(perturbed),
        "--samples", "16", "--json-out", str(report_path), "--plot", str(plot),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert plot.read_bytes()[:4] == b"\x89PNG"  # written before the failure: it explains it
    assert "torch-merged → onnxruntime" in result.stderr and "max abs diff" in result.stderr
    assert "white-box" in result.stderr and "blocks.0.attn.qkv.weight" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["failures"]
    assert report["white_box"]["passed"] is False
    failed = [c for c in report["comparisons"] if not c["passed"]]
    assert {(c["reference"], c["candidate"]) for c in failed} == {("torch-merged", "onnxruntime")}
    check = next(k for k in failed[0]["checks"] if k["name"] == "max abs diff")
    assert check["value"] > check["limit"]


def test_cli_passes_with_exit_0(exports, tmp_path):
    adapter, path = exports["lora"]
    plot = tmp_path / "parity.png"
    arguments = (
        "verify-parity", "--adapter", str(adapter), "--onnx", str(path), "--samples", "8",
        "--data", "digits", "--json-out", str(tmp_path / "ok.json"), "--plot", str(plot),
    )  # fmt: skip
    result = run_cli(*arguments)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "ok.json").read_text())["passed"] is True
    # stdout is not a terminal here (as in CI or `| tee`): the table takes the width it needs
    # instead of 80 columns, so no stage name is cut ("torch-unmerg…") or split over lines.
    for stage in ("torch-unmerged", "torch-merged", "onnxruntime"):
        assert stage in result.stdout
    assert "…" not in result.stdout
    assert str(tmp_path / "ok.json") in result.stdout  # the closing line names the file
    assert plot.read_bytes()[:4] == b"\x89PNG" and str(plot) in result.stdout
    (tmp_path / "ok.json").unlink()
    stamp = plot.stat().st_mtime_ns
    refused = run_cli(*arguments)  # the PNG exists, no --force
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert plot.stat().st_mtime_ns == stamp and not (tmp_path / "ok.json").exists()


def test_an_onnx_from_another_adapter_is_refused_with_exit_2(exports):
    adapter, _ = exports["lora"]
    _, other = exports["karst-channel"]
    result = run_cli("verify-parity", "--adapter", str(adapter), "--onnx", str(other))
    assert result.returncode == 2
    assert "another adapter" in result.stderr and "sha256" in result.stderr
    assert "Traceback" not in result.stderr


def test_mismatched_backbone_checkpoint_or_missing_provenance_are_refused(exports, tmp_path):
    adapter, path = exports["lora"]
    with pytest.raises(InputError, match=r"^backbone is 'vit_small_patch16_224' but the adapter"):
        verify_parity(path, adapter, backbone="vit_small_patch16_224")  # the parameter's name
    relabelled = onnx.load(str(path))
    write_provenance(
        relabelled, {**read_provenance(relabelled), "backbone": "vit_small_patch16_224"}
    )
    onnx.save(relabelled, str(tmp_path / "relabelled.onnx"))
    with pytest.raises(InputError, match="backbone 'vit_small_patch16_224', not 'vit_tiny"):
        verify_parity(tmp_path / "relabelled.onnx", adapter)
    checkpoint = tmp_path / "other.safetensors"
    checkpoint.write_bytes(b"not the weights it was exported from")
    with pytest.raises(InputError, match="checkpoint with sha256 none"):
        verify_parity(path, adapter, checkpoint=checkpoint)
    bare = onnx.load(str(path))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(InputError, match="carries no karst-deploy provenance"):
        verify_parity(tmp_path / "bare.onnx", adapter)


def test_extra_stages_are_compared_with_the_previous_one(exports, perturbed):
    """Another runtime (e.g. a TensorRT engine) joins by appending a Stage."""
    adapter, path = exports["karst-channel"]
    extra = Stage("onnxruntime-perturbed", OnnxRuntimeRunner(perturbed))
    report = verify_parity(path, adapter, samples=8, extra_stages=[extra], progress=False)
    verdicts = {(c.reference, c.candidate): c.passed for c in report.comparisons}
    assert verdicts == {
        ("torch-unmerged", "torch-merged"): True,
        ("torch-merged", "onnxruntime"): True,
        ("onnxruntime", "onnxruntime-perturbed"): False,
    }
    with pytest.raises(VerificationError, match="onnxruntime → onnxruntime-perturbed"):
        report.raise_if_failed()


def test_a_registered_runner_is_a_stage_by_name(exports):
    """verify-parity --stage NAME: the registry opens the ONNX on that runner."""
    adapter, path = exports["lora"]
    with pytest.raises(InputError, match="'torch' is not a stage of its own"):
        verify_parity(path, adapter, runners=["torch"], progress=False)
    with pytest.raises(InputError, match="Unknown runner 'tensorflow'; choose one of"):
        verify_parity(path, adapter, runners=["tensorflow"], progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu and a CUDA GPU)",
)
def test_an_onnxruntime_cuda_stage_follows_onnx_runtime(exports):
    adapter, path = exports["lora"]
    report = verify_parity(path, adapter, samples=8, runners=["onnxruntime-cuda"], progress=False)
    assert [c.candidate for c in report.comparisons][-1] == "onnxruntime-cuda"
    assert report.passed, report.failures


def test_compare_logits_names_the_failed_check_and_by_how_much():
    reference = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    metrics, checks = compare_logits(reference, reference.copy(), TOLERANCES["fp32"])
    assert all(c.passed for c in checks) and metrics.max_abs_diff == 0
    flipped = reference.copy()
    flipped[0] = [1.0, 2.0, 0.0]  # sample 0 changes its answer
    metrics, checks = compare_logits(reference, flipped, TOLERANCES["fp32"])
    failed = {c.name: c for c in checks if not c.passed}
    assert set(failed) == {"max abs diff", "top-1 agreement"}
    assert metrics.top1_agreement == 0.5 and "short by 50.00%" in failed["top-1 agreement"].detail
    # The bound scales with the logits: 1e-4 × max(1, 3) here.
    _, checks = compare_logits(reference, reference + 2.9e-4, TOLERANCES["fp32"])
    assert all(c.passed for c in checks)
    _, checks = compare_logits(reference, reference + 3.1e-4, TOLERANCES["fp32"])
    assert not checks[0].passed and "exceeds" in checks[0].detail


def test_accuracy_drop_gate_and_tolerance_table():
    assert TOLERANCES["fp32"] == Tolerance(atol_scale=1e-4, min_top1_agreement=1.0)
    with pytest.raises(InputError, match="No parity tolerance is declared for precision 'int4'"):
        tolerance_for("int4")
    gate = Tolerance(atol_scale=10.0, min_top1_agreement=0.0, max_accuracy_drop=1.0)
    reference = np.eye(4)
    candidate = np.eye(4)[[0, 1, 2, 0]]  # the last sample is now wrong
    metrics, checks = compare_logits(reference, candidate, gate, labels=np.arange(4))
    assert metrics.accuracy_drop == 25.0
    assert [c.name for c in checks if not c.passed] == ["accuracy drop"]


def test_a_fixed_batch_export_is_fed_in_chunks_of_its_batch(exports, tmp_path):
    """`export --batch 3` then verify-parity on 8 inputs: chunks of 3, the last one padded."""
    adapter, dynamic = exports["lora"]
    fixed = export_onnx(tmp_path / "batch3.onnx", adapter=adapter, batch=3).path
    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
    with OnnxRuntimeRunner(dynamic) as reference, OnnxRuntimeRunner(fixed) as runner:
        assert runner.fixed_batch == 3 and reference.fixed_batch is None
        np.testing.assert_allclose(runner.infer(images), reference.infer(images), atol=1e-5)
    result = run_cli(
        "verify-parity", "--adapter", str(adapter), "--onnx", str(fixed), "--samples", "8"
    )
    assert result.returncode == 0, result.stderr


def test_data_with_another_class_count_is_refused(exports):
    adapter, path = exports["lora"]  # a 10-class head
    with pytest.raises(InputError, match=r"^data 'digits:0-4' has 5 classes but the model's head"):
        verify_parity(path, adapter, data="digits:0-4", samples=2, progress=False)


def test_an_atol_that_is_not_finite_and_positive_is_refused(exports):
    adapter, path = exports["lora"]
    result = run_cli(
        "verify-parity", "--adapter", str(adapter), "--onnx", str(path), "--atol", "inf"
    )
    assert result.returncode == 2, result.stderr
    assert "--atol must be a finite positive number, got inf" in result.stderr
    for atol in (float("inf"), float("nan"), -1.0, 0.0):
        with pytest.raises(InputError, match="atol_scale must be a finite positive number"):
            verify_parity(path, adapter, atol_scale=atol)


# -- class names: the adapter's classes select or refuse the data -----------------------------
DIGITS_5_TO_9 = ["5", "6", "7", "8", "9"]


@pytest.fixture(scope="module")
def five_class_export(tmp_path_factory):
    """A KARST adapter whose head names digits 5–9 (as `train --data digits:5-9` records)."""
    import karst_deploy as kd
    from tests.cases import BackboneCase, adapted

    root = tmp_path_factory.mktemp("classes")
    case = BackboneCase("vit-5", CASE.name, {**CASE.kwargs, "num_classes": 5})
    adapter = kd.save_adapters(
        adapted(case, "karst-channel"), root / "adapter", classes=DIGITS_5_TO_9
    )
    return adapter, export_onnx(root / "m.onnx", adapter=adapter).path


def test_parity_takes_the_adapters_classes_from_a_superset(five_class_export):
    """The README's `verify-parity --data digits` on a digits-5–9 adapter: 5–9 only."""
    adapter, path = five_class_export
    report = verify_parity(path, adapter, data="digits", samples=4, images=60, progress=False)
    assert report.passed, report.failures
    images = next(i for i in report.to_dict()["inputs"] if i["name"] == "images")
    assert images["classes_selected"] == DIGITS_5_TO_9
    assert any("adapter's 5 classes" in note for note in report.notes)
    from karst_deploy.parity import image_inputs

    chosen = image_inputs("digits", "test", 1000, 32, (0.5,) * 3, (0.5,) * 3, 5, DIGITS_5_TO_9)
    subset = image_inputs("digits:5-9", "test", 1000, 32, (0.5,) * 3, (0.5,) * 3, 5)
    assert sorted(set(chosen.labels.tolist())) == [0, 1, 2, 3, 4]
    assert len(chosen.labels) == len(subset.labels)  # every test image of 5–9, relabelled


def test_parity_refuses_data_without_the_adapters_classes(five_class_export, tmp_path):
    from PIL import Image

    adapter, path = five_class_export
    for name in ("cat", "dog", "eel"):  # an unrelated 3-class folder
        for split in ("train", "val"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (40, 80, 120)).save(tmp_path / split / name / "0.png")
    for data, lacking in ((str(tmp_path), "'5', '6'"), ("digits:0-4", "'5', '6'")):
        result = run_cli(
            "verify-parity",
            "--adapter",
            str(adapter),
            "--onnx",
            str(path),
            "--data",
            data,
            "--samples",
            "2",
        )
        assert result.returncode == 2, result.stderr
        assert f"lacks {lacking}" in result.stderr and "Traceback" not in result.stderr


def test_adapters_without_class_names_keep_the_class_count_check():
    """Legacy adapters (no 'classes' key): data is matched to the head by count only."""
    from karst_deploy.parity import image_inputs

    legacy = image_inputs("digits:5-9", "test", 10, 32, (0.5,) * 3, (0.5,) * 3, 5)
    assert legacy.description.get("classes_selected") is None
    with pytest.raises(InputError, match="has 10 classes but the model's head has 5"):
        image_inputs("digits", "test", 10, 32, (0.5,) * 3, (0.5,) * 3, 5)


@pytest.mark.parametrize(
    ("classes", "message"),
    [(["5"] * 5, "5 distinct"), (["5", "6"], "has 2 name"), ([5, 6, 7, 8, 9], "class names")],
)
def test_a_bad_classes_key_is_refused(five_class_export, tmp_path, classes, message):
    import shutil

    from karst_deploy.adapters import AdapterFile
    from karst_deploy.errors import AdapterFileError

    adapter, _ = five_class_export
    copy = shutil.copytree(adapter, tmp_path / "adapter")
    document = json.loads((copy / "adapter_config.json").read_text())
    document["classes"] = classes
    (copy / "adapter_config.json").write_text(json.dumps(document))
    with pytest.raises(AdapterFileError, match=message):
        AdapterFile(copy)
