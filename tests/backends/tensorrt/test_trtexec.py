"""trtexec command emission for TensorRT 10.x and 11.x (works with no TensorRT installed)."""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import pytest

from karst_deploy.backends.tensorrt.options import BatchProfile, BuildOptions
from karst_deploy.backends.tensorrt.trtexec import TimingSettings, format_command, trtexec_commands
from karst_deploy.errors import InputError, with_flags
from tests.backends.tensorrt.graphs import save, tiny_classifier

#: trtexec's own option parser per release tag (tools/tensorrt_api/trtexec_flags.py over
#: samples/common/sampleOptions.cpp of NVIDIA/TensorRT); the newest tag in our source snapshot is
#: v11.1, so 11.2-11.4 are assumed to accept what 11.0 and 11.1 both accept.
TABLES = Path(__file__).with_name("data") / "trtexec_flags"
TAGS = {10: ("v10.3.0", "v10.16"), 11: ("v11.0", "v11.1")}


@functools.cache
def table(tag):
    return json.loads((TABLES / f"{tag}.json").read_text())


def rejected(args, tag):
    """The arguments trtexec at `tag` would not accept (unknown flag or keyword)."""
    accepted, keywords = table(tag)["flags"], table(tag)["keywords"]
    bad = []
    for arg in args[1:]:
        flag, _, value = arg.partition("=")
        if flag not in accepted or (
            flag in keywords
            and value.split(":")[0].lower() not in {k.lower() for k in keywords[flag]}
        ):
            bad.append(arg)
    return bad


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
        for tag in TAGS[commands.tensorrt_major]:
            assert not rejected(commands.build, tag) and not rejected(commands.timing, tag)
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
    with pytest.raises(InputError, match=r"^majors: TensorRT 8 is not supported") as refused:
        trtexec_commands(onnx_file, "m.engine", majors=(8,))
    assert with_flags(refused.value).startswith("--tensorrt-version: TensorRT 8")
    text = format_command(["trtexec", "--onnx=my model.onnx", "--useCudaGraph"])
    assert text == "trtexec \\\n    '--onnx=my model.onnx' \\\n    --useCudaGraph"


def test_flag_tables_name_their_source():
    for tags in TAGS.values():
        for tag in tags:
            source = table(tag)["source"]
            assert source["tag"] == tag and len(source["commit"]) == 40
            assert source["path"] == "samples/common/sampleOptions.cpp"
    # What the tables say about the flags our gating depends on.
    assert "--fp16" in table("v10.3.0")["flags"] and "--fp16" not in table("v11.0")["flags"]
    assert (
        "--noCudaGraph" not in table("v10.16")["flags"]
        and "--noCudaGraph" in table("v11.0")["flags"]
    )
    assert rejected(["trtexec", "--workspace=64", "--fp16"], "v11.1") == [
        "--workspace=64",
        "--fp16",
    ]
    assert rejected(["trtexec", "--hardwareCompatibilityLevel=turing+"], "v10.3.0")


OPTION_GRID = {
    "batch": [None, BatchProfile(1, 4, 16)],
    "workspace_mib": [None, 512],
    "timing_cache": [None, Path("t.cache")],
    "builder_optimization_level": [None, 5],
    "dla_core": [None, 1],
    "hardware_compat": ["none", "ampere+"],
    "version_compatible": [False, True],
}
TIMINGS = [
    TimingSettings(),
    TimingSettings(include_transfers=True, cuda_graph=False, spin_wait=False),
]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "fp32 --fp16"])
def test_every_emitted_flag_is_accepted_by_each_trtexec_version(precision, tmp_path):
    """All supported option combinations x timing settings, against every tag of the major."""
    conv = precision.split()[0]
    onnx_file = save(tiny_classifier(conv, conv), tmp_path / "model.onnx")
    keys = list(OPTION_GRID)
    checked = 0
    for values in itertools.product(*OPTION_GRID.values()):
        fields = dict(zip(keys, values, strict=True))
        fields["fp16"] = precision.endswith("--fp16")
        if fields["dla_core"] is not None and (
            fields["hardware_compat"] != "none" or (conv == "fp32" and not fields["fp16"])
        ):
            continue  # refused by BuildOptions / resolve_request
        options = BuildOptions(**fields)
        for timing in TIMINGS:
            for commands in trtexec_commands(onnx_file, "m.engine", options, timing=timing):
                for tag in TAGS[commands.tensorrt_major]:
                    for args in filter(None, (commands.build, commands.timing)):
                        assert not rejected(args, tag), (tag, fields, args)
                        checked += 1
    assert checked > 500


def test_timing_command_loads_what_the_build_made(onnx_file):
    """F1/F2: trtexec allows a version-compatible engine's lean runtime only with
    --versionCompatible, and runs a DLA engine on core N only with --useDLACore=N
    (samples/common/sampleEngines.cpp: setEngineHostCodeAllowed, setDLACore)."""
    options = BuildOptions(version_compatible=True, dla_core=1)
    for commands in trtexec_commands(onnx_file, "m.engine", options):
        assert "--versionCompatible" in commands.timing
        assert "--useDLACore=1" in commands.timing
    (plain,) = trtexec_commands(onnx_file, "m.engine", majors=(10,))
    assert not any(a.startswith(("--versionCompatible", "--useDLACore")) for a in plain.timing)


def test_dla_notes_for_tensorrt_11(onnx_file):
    """F5: no DLA in 11.0-11.3; 11.4.1 on AGX Orin with JetPack >= 7.2.2; Thor none."""
    ten, eleven = trtexec_commands(onnx_file, "m.engine", BuildOptions(dla_core=0))
    (note,) = [n for n in eleven.notes if "DLA" in n]
    assert "11.0 to 11.3 have no DLA" in note and "11.4.1" in note and "JetPack 7.2.2" in note
    assert "Thor has no DLA" in note and "JetPack 6 stays on" in note
    assert not any("DLA" in n for n in ten.notes)
