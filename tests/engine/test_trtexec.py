"""trtexec command emission for TensorRT 10.x and 11.x (works with no TensorRT installed)."""

from __future__ import annotations

import pytest

from karst_deploy.engine.options import BatchProfile, BuildOptions
from karst_deploy.engine.trtexec import TimingSettings, format_command, trtexec_commands
from karst_deploy.errors import InputError
from tests.engine.graphs import save, tiny_classifier

# Flags trtexec's option parser accepts (getAndDelOption calls in samples/common/sampleOptions.cpp
# of NVIDIA/TensorRT v10.3.0 and v11.1; --fp16 is gone in 11.x, --includeDataTransfers,
# --noCudaGraph and --noSpinWait are new there).
COMMON = {
    "--onnx",
    "--saveEngine",
    "--loadEngine",
    "--minShapes",
    "--optShapes",
    "--maxShapes",
    "--shapes",
    "--memPoolSize",
    "--timingCacheFile",
    "--builderOptimizationLevel",
    "--useDLACore",
    "--allowGPUFallback",
    "--hardwareCompatibilityLevel",
    "--versionCompatible",
    "--stronglyTyped",
    "--profilingVerbosity",
    "--exportLayerInfo",
    "--skipInference",
    "--noDataTransfers",
    "--useCudaGraph",
    "--useSpinWait",
    "--noTF32",
}
KNOWN_FLAGS = {
    10: COMMON | {"--fp16"},
    11: COMMON | {"--includeDataTransfers", "--noCudaGraph", "--noSpinWait"},
}


def flags(args):
    return [a.split("=")[0] for a in args[1:]]


@pytest.fixture
def onnx_file(tmp_path):
    return save(tiny_classifier("fp16", "fp16"), tmp_path / "model.onnx")


def test_default_build_commands_per_version(onnx_file, tmp_path):
    ten, eleven = trtexec_commands(onnx_file, tmp_path / "model.engine")
    for commands in (ten, eleven):
        assert commands.build[:3] == [
            "trtexec",
            f"--onnx={onnx_file}",
            f"--saveEngine={tmp_path / 'model.engine'}",
        ]
        assert {
            "--minShapes=images:1x3x8x8",
            "--optShapes=images:1x3x8x8",
            "--maxShapes=images:8x3x8x8",
            "--skipInference",
            "--profilingVerbosity=detailed",
            "--noTF32",
        } <= set(commands.build)
        assert set(flags(commands.build)) <= KNOWN_FLAGS[commands.tensorrt_major]
        assert set(flags(commands.timing)) <= KNOWN_FLAGS[commands.tensorrt_major]
    assert "--stronglyTyped" in ten.build  # 10.x: precision from the ONNX types
    assert "--stronglyTyped" not in eleven.build and "--fp16" not in eleven.build  # 11.x: always


def test_every_option_maps_to_its_flag(onnx_file, tmp_path):
    options = BuildOptions(
        batch=BatchProfile(2, 4, 16),
        workspace_mib=2048,
        timing_cache=tmp_path / "t.cache",
        builder_optimization_level=4,
        dla_core=1,
        version_compatible=True,
    )
    ten, eleven = trtexec_commands(onnx_file, tmp_path / "m.engine", options)
    for commands in (ten, eleven):
        assert {
            "--minShapes=images:2x3x8x8",
            "--optShapes=images:4x3x8x8",
            "--maxShapes=images:16x3x8x8",
            "--memPoolSize=workspace:2048",
            f"--timingCacheFile={tmp_path / 't.cache'}",
            "--builderOptimizationLevel=4",
            "--useDLACore=1",
            "--allowGPUFallback",
            "--versionCompatible",
        } <= set(commands.build)
        assert not any(a.startswith("--workspace") for a in commands.build)  # removed in 10.0
    assert any("DLA" in note for note in eleven.notes)
    hardware = trtexec_commands(onnx_file, "m.engine", BuildOptions(hardware_compat="ampere+"))
    assert "--hardwareCompatibilityLevel=ampere+" in hardware[0].build


def test_fp16_flag_is_a_tensorrt_10_path(tmp_path):
    onnx_file = save(tiny_classifier(), tmp_path / "fp32.onnx")
    ten, eleven = trtexec_commands(onnx_file, "m.engine", BuildOptions(fp16=True))
    assert "--fp16" in ten.build and "--stronglyTyped" not in ten.build
    assert eleven.build is None and "removed --fp16" in eleven.notes[0]
    assert eleven.to_dict()["build"] is None


def test_timing_commands_measure_the_same_thing_on_10_and_11(onnx_file):
    ten, eleven = trtexec_commands(onnx_file, "m.engine", BuildOptions(batch=BatchProfile(1, 8, 8)))
    assert ten.timing == [
        "trtexec",
        "--loadEngine=m.engine",
        "--shapes=images:8x3x8x8",
        "--noDataTransfers",
        "--useCudaGraph",
        "--useSpinWait",
    ]
    assert eleven.timing == ["trtexec", "--loadEngine=m.engine", "--shapes=images:8x3x8x8"]
    with_copies = TimingSettings(include_transfers=True, cuda_graph=False, spin_wait=True)
    ten, eleven = trtexec_commands(onnx_file, "m.engine", timing=with_copies)
    assert ten.timing[3:] == ["--useSpinWait"]
    assert eleven.timing[3:] == ["--includeDataTransfers", "--noCudaGraph"]


def test_fixed_batch_onnx_needs_no_shapes(tmp_path):
    onnx_file = save(tiny_classifier(batch=4), tmp_path / "fixed.onnx")
    (ten,) = trtexec_commands(onnx_file, "m.engine", majors=(10,))
    assert not any("Shapes" in a or a.startswith("--shapes") for a in ten.build + ten.timing)


def test_unsupported_versions_and_quoting(onnx_file):
    with pytest.raises(InputError, match="--tensorrt-version 8"):
        trtexec_commands(onnx_file, "m.engine", majors=(8,))
    text = format_command(["trtexec", "--onnx=my model.onnx", "--useCudaGraph"])
    assert text == "trtexec \\\n    '--onnx=my model.onnx' \\\n    --useCudaGraph"
