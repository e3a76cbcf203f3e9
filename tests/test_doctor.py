"""`doctor` says what this machine lacks for the GPU paths, and how to get each piece."""

from __future__ import annotations

import importlib.util
import re

import onnxruntime
import torch

from karst_deploy.doctor import diagnose


def test_doctor_reports_gpus_and_what_is_missing():
    report = diagnose()
    assert report.cuda_build == torch.version.cuda
    assert len(report.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for gpu in report.gpus:
        assert gpu.name and re.fullmatch(r"\d+\.\d+", gpu.compute_capability)
        assert gpu.memory_gib > 0
    missing = report.missing
    assert ("CUDA GPU" in missing) == (not torch.cuda.is_available())
    assert ("onnxruntime-gpu" in missing) == (
        "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    )
    if importlib.util.find_spec("tensorrt") is None:
        assert not report.tensorrt.available
        assert "JetPack" in missing["TensorRT"] and "--system-site-packages" in missing["TensorRT"]
    if "CUDA GPU" in missing:
        assert "JetPack" in missing["CUDA GPU"]


def test_doctor_json_is_the_diagnosis():
    report = diagnose()
    data = report.to_dict()
    assert data["missing"] == report.missing and data["cpu"] == report.cpu
    assert data["gpus"] == [gpu.to_dict() for gpu in report.gpus]
    for gpu in data["gpus"]:
        assert set(gpu) == {"name", "compute_capability", "memory_gib"}
    assert data["tensorrt"]["available"] is report.tensorrt.available
    assert "version" in data["tensorrt"] or not report.tensorrt.available  # absent when missing
