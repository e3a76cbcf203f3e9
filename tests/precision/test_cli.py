"""Precision on the command line: export --precision, convert-precision, and the gates/bench."""

from __future__ import annotations

import json

import numpy as np
import pytest

from karst_deploy.onnx_file import read_provenance
from karst_deploy.precision import convert_precision
from tests.cli_helpers import run_cli


def run(*args: object):
    return run_cli(*args)


def _parity_args(digits_model, onnx_path):
    return (
        "verify-parity",
        "--adapter",
        digits_model.adapter,
        "--checkpoint",
        digits_model.checkpoint,
        "--onnx",
        onnx_path,
        "--data",
        "digits",
        "--samples",
        len(digits_model.test_labels),
        "--threads",
        1,
    )


def test_export_int8_then_verify_parity_passes(digits_model, tmp_path):
    out = tmp_path / "int8.onnx"
    exported = run(
        "export",
        "--adapter",
        digits_model.adapter,
        "--checkpoint",
        digits_model.checkpoint,
        "--precision",
        "int8",
        "--calib",
        "digits",
        "--calib-samples",
        64,
        "--out",
        out,
        "--json",
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    summary = json.loads(exported.stdout)
    assert summary["precision"] == "int8" and summary["fp32_export"]["kind"] == "merged"
    assert read_provenance(out)["calibration"]["samples"] == 64
    report_path = tmp_path / "report.json"
    parity = run(*_parity_args(digits_model, out), "--json-out", report_path)
    assert parity.returncode == 0, parity.stdout + parity.stderr
    assert json.loads(report_path.read_text())["passed"] is True


def test_a_constant_calibration_fails_verify_parity_with_exit_1(digits_model, tmp_path):
    zeros = tmp_path / "zeros.npz"
    np.savez(zeros, images=np.zeros((32, 3, 16, 16), np.float32))
    broken = tmp_path / "broken.onnx"
    converted = run(
        "convert-precision",
        "--onnx",
        digits_model.fp32_onnx,
        "--precision",
        "int8",
        "--calib",
        zeros,
        "--out",
        broken,
    )
    assert converted.returncode == 0, converted.stdout + converted.stderr
    parity = run(*_parity_args(digits_model, broken))
    assert parity.returncode == 1
    assert "accuracy drop" in (parity.stdout + parity.stderr) and "exceeds 1 pt" in (
        parity.stdout + parity.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--precision", "int8"), "needs calibration data"),
        (("--precision", "fp16", "--calib", "digits"), "int8 only"),
        (("--precision", "bf16"), "Unknown precision"),
        (("--precision", "int8", "--calib", "digits", "--calib-method", "mse"), "minmax"),
        (("--precision", "int8", "--calib", "nowhere.npz"), "does not exist"),
    ],
)
def test_bad_conversion_requests_exit_2_with_one_paragraph(digits_model, tmp_path, args, message):
    result = run(
        "convert-precision", "--onnx", digits_model.fp32_onnx, "--out", tmp_path / "x.onnx", *args
    )
    assert result.returncode == 2
    assert message in (result.stdout + result.stderr) and "Traceback" not in (
        result.stdout + result.stderr
    )
    assert not (tmp_path / "x.onnx").exists()


def test_bench_puts_precisions_side_by_side(digits_model, tmp_path):
    fp16 = convert_precision(digits_model.fp32_onnx, tmp_path / "fp16.onnx", "fp16").path
    int8 = tmp_path / "int8.onnx"
    convert_precision(digits_model.fp32_onnx, int8, "int8", calib="digits", calib_samples=32)
    bench_args = ("bench", "--onnx", digits_model.fp32_onnx, "--baseline", digits_model.fp32_onnx)
    report = tmp_path / "bench.json"
    result = run(
        *bench_args, "--fp16", fp16, "--int8", int8, "--rounds", 3, "--max-seconds", 0,
        "--json-out", report,
    )  # fmt: skip
    # 1 (not shown) or 75 (inconclusive): a latency verdict on 3 rounds
    assert result.returncode in (0, 1, 75), result.stdout + result.stderr
    measured = json.loads(report.read_text())
    assert set(measured["models"]) == {"base", "merged", "merged-fp16", "merged-int8"}
    assert set(measured["ratios"]["merged-int8"]) == {"1", "8"}

    mislabelled = run(*bench_args, "--int8", fp16, "--rounds", 3)
    assert mislabelled.returncode == 2 and "not int8" in (mislabelled.stdout + mislabelled.stderr)
    needs_data = run(*_parity_args(digits_model, int8)[:7])  # verify-parity without --data
    assert needs_data.returncode == 2 and "--data" in (needs_data.stdout + needs_data.stderr)
