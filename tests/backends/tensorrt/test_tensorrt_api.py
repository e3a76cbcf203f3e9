"""Our TensorRT code against the real TensorRT Python API of 10.3, 10.x, 11.0 and 11.x.

No TensorRT is imported: `trt_api` reads our code with `ast` and checks every use against the
API surfaces dumped from NVIDIA's bindings wheels (tools/tensorrt_api/surface.py).
"""

from __future__ import annotations

import ast
import re

import pytest

from tests.backends.tensorrt import trt_api

PLANTED = trt_api.SURFACES.parent / "planted_trt_misuse.py"
#: JetPack 6 (10.3), the newest 10.x, the first and the newest 11.x.
EXPECTED_VERSIONS = ["10.3.0", "10.16.1.11", "11.0.0.114", "11.4.0.106"]
VERSIONS = trt_api.versions()


def test_the_four_surfaces_are_committed():
    assert VERSIONS == EXPECTED_VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_our_tensorrt_code_conforms(version):
    result = trt_api.check(version)
    assert not result.problems, "\n".join(map(str, result.problems))


def test_every_tensorrt_call_of_ours_was_typed_and_checked():
    """The uses that matter were resolved to their TensorRT class (not skipped as unknown)."""
    result = trt_api.check(VERSIONS[0])
    checked = {(u.kind, u.member) for u in result.uses}
    for use in [
        ("override", "ILogger.log"),
        ("call", "Runtime(...)"),
        ("write", "Runtime.engine_host_code_allowed"),
        ("write", "Runtime.DLA_core"),
        ("call", "Runtime.deserialize_cuda_engine"),
        ("call", "IExecutionContext.execute_async_v3"),
        ("call", "IExecutionContext.set_tensor_address"),
        ("call", "Builder.create_network"),
        ("call", "OnnxParser.parse_from_file"),
        ("call", "ParserError.desc"),
        ("write", "IBuilderConfig.profiling_verbosity"),
        ("call", "IBuilderConfig.set_timing_cache"),
        ("call", "IBuilderConfig.create_timing_cache"),
        ("write", "IBuilderConfig.DLA_core"),
        ("write", "IBuilderConfig.hardware_compatibility_level"),
        ("read", "HardwareCompatibilityLevel.AMPERE_PLUS"),
        ("call", "IBuilderConfig.can_run_on_DLA"),
        ("write", "EngineInspector.execution_context"),
        ("call", "EngineInspector.get_engine_information"),
        ("call", "ITimingCache.serialize"),
        ("read", "Builder.num_DLA_cores"),
    ]:
        assert use in checked, use
    probed = {u.member for u in result.uses if u.probed}
    assert probed == {"BuilderFlag.FP16", "NetworkDefinitionCreationFlag.STRONGLY_TYPED"}


def test_runtime_dla_core_is_set_before_deserializing():
    """F2: IRuntime::setDLACore applies to engines deserialized after it (as in trtexec)."""
    uses = trt_api.check(VERSIONS[0]).uses
    (write,) = [u for u in uses if (u.kind, u.member) == ("write", "Runtime.DLA_core")]
    (load,) = [u for u in uses if (u.kind, u.member) == ("call", "Runtime.deserialize_cuda_engine")]
    assert write.file == load.file and write.line < load.line


def _planted(version: str) -> set[tuple[int, str]]:
    expected = set()
    for number, line in enumerate(PLANTED.read_text().splitlines(), 1):
        match = re.search(r"# expect: (\S+)(?: @(\d+))?$", line)
        if match and (match.group(2) is None or version.startswith(match.group(2) + ".")):
            expected.add((number, match.group(1)))
    return expected


@pytest.mark.parametrize("version", VERSIONS)
def test_checker_catches_every_planted_mistake(version):
    """Removed member, wrong keyword, read-only write, IEngineInspector, wrong arity/override,
    an ignored success bool (set_timing_cache, F3)."""
    result = trt_api.check(version, [PLANTED])
    found = {(p.line, p.member) for p in result.problems}
    assert found == _planted(version)
    for problem in result.problems:  # the message names file:line, the member and the version
        text = str(problem)
        assert text.startswith(
            f"tests/backends/tensorrt/data/planted_trt_misuse.py:{problem.line}: "
        )
        assert problem.member in text and f"TensorRT {version}" in text


def test_surfaces_hold_what_nvidia_ships():
    """Facts our code relies on, read from the real bindings (so a bad dump is noticed)."""
    ten, eleven = trt_api.surface("10.3.0"), trt_api.surface("11.4.0.106")
    assert ten["version"] == "10.3.0" and eleven["version"] == "11.4.0.106"
    assert "FP16" in ten["classes"]["BuilderFlag"]["enum_members"]
    assert "FP16" not in eleven["classes"]["BuilderFlag"]["enum_members"]
    for surf in (ten, eleven):
        assert "EngineInspector" in surf["classes"] and "IEngineInspector" not in surf["classes"]
        (set_cache,) = surf["classes"]["IBuilderConfig"]["members"]["set_timing_cache"]["overloads"]
        assert set_cache["returns"] == "bool"
        assert surf["classes"]["Runtime"]["members"]["DLA_core"]["writable"]
        assert not surf["classes"]["ICudaEngine"]["members"]["num_io_tensors"]["writable"]


#: Roots of attribute chains in our TensorRT files that hold no TensorRT object (torch, numpy,
#: our dataclasses). Any other attribute named like a TensorRT member must have been checked.
NON_TENSORRT_ROOTS = {
    "self", "super", "np", "torch", "onnxruntime", "options", "request", "summary", "built",
    "errors", "fallback", "devices", "properties", "images", "device_in", "device_out",
    "environment", "logits", "state", "info", "plan",
}  # fmt: skip


def _root(node):
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def test_no_tensorrt_member_escaped_the_checker():
    """Every attribute named like a TensorRT member was typed and checked, or is not TensorRT."""
    surf = trt_api.surface(VERSIONS[-1])
    names = {*surf["functions"], *surf["attributes"], *surf["classes"]}
    for entry in surf["classes"].values():
        names |= set(entry["members"])
    checked = {
        (u.file, u.line, u.member.rpartition(".")[2]) for u in trt_api.check(VERSIONS[-1]).uses
    }
    escaped = []
    for file in trt_api.TENSORRT_FILES:
        for node in ast.walk(ast.parse((trt_api.ROOT / file).read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in names
                and (file, node.lineno, node.attr) not in checked
                and _root(node) not in NON_TENSORRT_ROOTS
            ):
                escaped.append(f"{file}:{node.lineno}: {ast.unparse(node)}")
    assert not escaped, "unchecked (type not inferred; or add a non-TensorRT root):\n" + "\n".join(
        escaped
    )
