"""Tampered ONNX files are caught by verify-parity: exit 1 or 2, the message naming what differs.

One table, `TAMPERS`: each entry edits a real export (fp32, fp16 or int8 of the same
adapter on the tiny ViT) the way an attacker or a careless tool would, and states the
exit code and the words the verdict must contain. The edits that inputs never reveal
(a trojan branch, an equivalent rewrite) are what the white-box stage is for; every
file-content edit is required to be caught by the white-box stage itself, so the test
cannot pass because black-box parity happened to notice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from karst_deploy.errors import KarstDeployError
from karst_deploy.graph_precision import graph_precision
from karst_deploy.onnx_file import read_provenance
from karst_deploy.parity import verify_parity
from karst_deploy.precision import convert_precision
from karst_deploy.provenance import write_provenance
from tests.cli_helpers import run_cli

Edit = Callable[[onnx.ModelProto], None]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, method_export):
    """An adapter and its merged export in fp32 (session-shared), fp16 and int8."""
    root = tmp_path_factory.mktemp("tamper")
    adapter, merged = method_export("karst-channel")
    fp32 = merged.path
    files = {"fp32": fp32}
    files["fp16"] = Path(convert_precision(fp32, root / "fp16.onnx", "fp16").path)
    files["int8"] = Path(
        convert_precision(fp32, root / "int8.onnx", "int8", calib="digits", calib_samples=16).path
    )
    return adapter, files


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _node(model: onnx.ModelProto, op_type: str, name: str | None = None) -> onnx.NodeProto:
    return next(
        n for n in model.graph.node if n.op_type == op_type and (name is None or n.name == name)
    )


def _set(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    tensor.CopyFrom(
        numpy_helper.from_array(values.astype(numpy_helper.to_array(tensor).dtype), tensor.name)
    )


def scale_weight(name: str, factor: float = 1.05) -> Edit:
    def edit(model):
        tensor = _initializer(model, name)
        _set(tensor, numpy_helper.to_array(tensor) * factor)

    return edit


def flip_exponent_bit(model):
    """Halve or double the largest element of one weight by editing one byte of raw_data."""
    tensor = _initializer(model, "blocks.1.attn.proj.weight")
    index = int(np.abs(numpy_helper.to_array(tensor)).argmax())
    data = bytearray(tensor.raw_data)
    data[4 * index + 2] ^= 0x80  # little-endian float32: byte 2 holds the exponent's low bit
    tensor.raw_data = bytes(data)


def set_attribute(op_type: str, attribute: str, value) -> Edit:
    def edit(model):
        node = _node(model, op_type)
        kept = [a for a in node.attribute if a.name != attribute]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute(attribute, value)])

    return edit


def gemm_untransposed(model):
    """Transpose the head weight and drop transB: the same arithmetic, another graph."""
    scale = _initializer(model, "head.weight")
    _set(scale, numpy_helper.to_array(scale).T.copy())
    set_attribute("Gemm", "transB", 0)(model)


def swap_concat_inputs(model):
    node = _node(model, "Concat", "node_cat")  # [cls token, patch tokens]
    first, second = node.input
    node.input[:] = [second, first]


def _reroute_output(model: onnx.ModelProto) -> tuple[str, str]:
    """Rename the graph output's producer output to a hidden name; returns (hidden, output)."""
    output = model.graph.output[0].name
    producer = next(n for n in model.graph.node if output in n.output)
    hidden = f"{output}_clean"
    producer.output[list(producer.output).index(output)] = hidden
    return hidden, output


def _trigger(model: onnx.ModelProto, prefix: str) -> str:
    """A boolean that is true only for inputs whose largest pixel exceeds 1000."""
    image = model.graph.input[0].name
    model.graph.initializer.append(
        numpy_helper.from_array(np.array(1000.0, dtype=np.float32), f"{prefix}_threshold")
    )
    model.graph.node.extend(
        [
            helper.make_node("ReduceMax", [image], [f"{prefix}_max"], keepdims=0),
            helper.make_node("Greater", [f"{prefix}_max", f"{prefix}_threshold"], [f"{prefix}_on"]),
        ]
    )
    return f"{prefix}_on"


def trojan_where(model):
    """logits + 100 on class 0 when a pixel exceeds 1000 (normalised images never do)."""
    hidden, output = _reroute_output(model)
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    boost = np.zeros(classes, dtype=np.float32)
    boost[0] = 100.0
    model.graph.initializer.append(numpy_helper.from_array(boost, "trojan_boost"))
    condition = _trigger(model, "trojan")
    model.graph.node.extend(
        [
            helper.make_node("Add", [hidden, "trojan_boost"], ["trojan_boosted"]),
            helper.make_node("Where", [condition, "trojan_boosted", hidden], [output]),
        ]
    )


def trojan_if(model):
    """The same trigger through an If node whose then-branch adds to the logits."""
    hidden, output = _reroute_output(model)
    condition = _trigger(model, "trojan")
    out_type = model.graph.output[0].type
    then_graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["boost"], value_float=100.0),
            helper.make_node("Add", [hidden, "boost"], ["then_out"]),
        ],
        "then",
        [],
        [helper.make_value_info("then_out", out_type)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", [hidden], ["else_out"])],
        "else",
        [],
        [helper.make_value_info("else_out", out_type)],
    )
    model.graph.node.append(
        helper.make_node(
            "If", [condition], [output], then_branch=then_graph, else_branch=else_graph
        )
    )


def dead_branch(model):
    """A node reading the input whose result goes nowhere."""
    image = model.graph.input[0].name
    model.graph.node.append(helper.make_node("Relu", [image], ["unused"], name="stowaway"))


def fake_qdq(model):
    """A Q/DQ pair on the image input: the graph now *looks* int8."""
    image = model.graph.input[0].name
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0.05, dtype=np.float32), "fake_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "fake_zero"),
        ]
    )
    for node in model.graph.node:
        node.input[:] = ["fake_dq" if name == image else name for name in node.input]
    model.graph.node.insert(
        0, helper.make_node("QuantizeLinear", [image, "fake_scale", "fake_zero"], ["fake_q"])
    )
    model.graph.node.insert(
        1, helper.make_node("DequantizeLinear", ["fake_q", "fake_scale", "fake_zero"], ["fake_dq"])
    )


def external_data(model):
    """One weight moved to an 'external data' file outside the model's directory."""
    tensor = _initializer(model, FC1)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../../etc/hostname")


def relabel(**changes) -> Edit:
    def edit(model):
        write_provenance(model, {**read_provenance(model), **changes})

    return edit


def remove_provenance(model):
    kept = [p for p in model.metadata_props if not p.key.startswith("karst_deploy.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)


def _weight_dequantizer(model: onnx.ModelProto) -> onnx.NodeProto:
    """The DequantizeLinear of block 0's fc1 weight: its MatMul's sum meets fc1's bias."""
    consumers = {name: n for n in model.graph.node for name in n.input}
    add = next(n for n in model.graph.node if "blocks.0.mlp.fc1.bias" in n.input)
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and n.output[0] in add.input)
    node = next(n for n in model.graph.node if n.output[0] in matmul.input[1:])
    assert node.op_type == "DequantizeLinear" and consumers[node.output[0]] is matmul
    return node


def int8_scale(model):
    node = _weight_dequantizer(model)
    scale = _initializer(model, node.input[1])
    _set(scale, numpy_helper.to_array(scale) * 1.05)


def int8_weight_edit(model):
    node = _weight_dequantizer(model)
    weight = _initializer(model, node.input[0])
    values = numpy_helper.to_array(weight).copy()
    index = np.unravel_index(int(np.abs(values.astype(np.int32)).argmax()), values.shape)
    values[index] -= 3 * np.sign(values[index])  # three steps towards zero
    _set(weight, values)


def compose(*edits: Edit) -> Edit:
    def edit(model):
        for each in edits:
            each(model)

    return edit


@dataclass(frozen=True)
class Tamper:
    id: str
    source: str  # "fp32", "fp16" or "int8": which export is edited
    edit: Edit
    exit_code: int
    says: tuple[str, ...]  # words the verdict must contain
    white_box: bool = True  # the white-box stage itself must catch it (exit 1 cases)
    hidden: bool = False  # no test input reveals it: every black-box comparison passes


FC1 = "blocks.0.mlp.fc1.weight"
RELABEL = "its provenance says precision"
TAMPERS = [
    Tamper("fc1-weight-x1.05", "fp32", scale_weight(FC1), 1, (FC1,)),
    Tamper(
        "fc1-weight-x1.05-relabelled-int8",
        "fp32",
        compose(scale_weight(FC1), relabel(precision="int8")),
        2,
        (RELABEL, "'int8'", "graph is fp32"),
    ),
    Tamper(
        "fc1-weight-x1.05-fake-qdq-relabelled-int8",
        "fp32",
        compose(scale_weight(FC1), fake_qdq, relabel(precision="int8")),
        1,
        ("white-box",),
    ),
    Tamper("initializer-byte-edit", "fp32", flip_exponent_bit, 1, ("blocks.1.attn.proj.weight",)),
    Tamper(
        "layernorm-epsilon",
        "fp32",
        set_attribute("LayerNormalization", "epsilon", 1e-3),
        1,
        ("LayerNormalization", "attribute 'epsilon'"),
    ),
    Tamper("gemm-alpha", "fp32", set_attribute("Gemm", "alpha", 1.05), 1, ("attribute 'alpha'",)),
    Tamper("swapped-inputs", "fp32", swap_concat_inputs, 1, ("stands where the reference has",)),
    Tamper(
        "trojan-where",
        "fp32",
        trojan_where,
        1,
        ("Where node", "stands where the reference has Gemm"),
        hidden=True,
    ),
    Tamper("trojan-if", "fp32", trojan_if, 1, ("If node",), hidden=True),
    Tamper(
        "gemm-transB-equivalent", "fp32", gemm_untransposed, 1, ("attribute 'transB'",), hidden=True
    ),
    Tamper(
        "dead-branch",
        "fp32",
        dead_branch,
        1,
        ("Relu node 'stowaway'", "feeds no output"),
        hidden=True,
    ),
    Tamper("precision-relabelled-fp16", "fp32", relabel(precision="fp16"), 2, (RELABEL, "'fp16'")),
    Tamper(
        "backbone-relabelled",
        "fp32",
        relabel(backbone="vit_small_patch16_224"),
        2,
        ("exported from backbone 'vit_small_patch16_224'",),
    ),
    Tamper("external-data", "fp32", external_data, 2, ("external data file", FC1)),
    Tamper("provenance-removed", "fp32", remove_provenance, 2, ("carries no karst-deploy",)),
    Tamper("fp16-fc1-weight-x1.05", "fp16", scale_weight(FC1), 1, (FC1,)),
    Tamper(
        "fp16-relabelled-fp32", "fp16", relabel(precision="fp32"), 2, (RELABEL, "graph is fp16")
    ),
    Tamper("int8-weight-scale-x1.05", "int8", int8_scale, 1, ("DequantizeLinear",)),
    Tamper("int8-weight-edit", "int8", int8_weight_edit, 1, ("DequantizeLinear",)),
    Tamper(
        "int8-relabelled-fp32", "int8", relabel(precision="fp32"), 2, (RELABEL, "graph is int8")
    ),
    # Last: its unmerged reference export replaces the cached merged one (see whitebox).
    Tamper("kind-relabelled-unmerged", "fp32", relabel(kind="unmerged"), 1, ("white-box",)),
]


def verdict(path: Path, adapter: Path, data: str | None) -> tuple[int, str, dict | None]:
    """What `karst-deploy verify-parity` would do, in process: exit code, message, report."""
    try:
        report = verify_parity(path, adapter, data=data, samples=4, images=16, progress=False)
    except KarstDeployError as error:
        return error.exit_code, str(error), None
    return (0 if report.passed else 1), "; ".join(report.failures), report.to_dict()


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda t: t.id)
def test_tampered_files_are_caught(tamper, sources, tmp_path):
    adapter, files = sources
    model = onnx.load(str(files[tamper.source]))
    tamper.edit(model)
    path = tmp_path / f"{tamper.id}.onnx"
    onnx.save(model, str(path))
    # Reduced precision is judged on real images (verify-parity requires --data for it).
    data = None if graph_precision(model) == "fp32" else "digits"
    code, message, report = verdict(path, adapter, data)
    assert code == tamper.exit_code, message
    for words in tamper.says:
        assert words in message, message
    assert str(path) in message or code == 1  # a refusal names the file
    if code == 1 and tamper.white_box:
        assert report["white_box"]["passed"] is False
        assert report["white_box"]["differences"]
    if tamper.hidden:
        assert all(c["passed"] for c in report["comparisons"])  # black-box alone would pass


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_untampered_files_pass_the_white_box_stage(precision, sources):
    """The control: the same files unedited match their reference graph."""
    adapter, files = sources
    code, message, report = verdict(files[precision], adapter, "digits")
    assert report is not None, message
    assert report["white_box"]["passed"], report["white_box"]["differences"]
    assert report["white_box"]["precision"] == precision
    assert report["white_box"]["nodes_compared"] > 50
    if precision != "int8":  # int8 of a random tiny model may lose accuracy: judged elsewhere
        assert code == 0, message


def test_relabelled_int8_is_refused_by_the_cli_with_exit_2(sources, tmp_path):
    adapter, files = sources
    model = onnx.load(str(files["fp32"]))
    compose(scale_weight(FC1), relabel(precision="int8"))(model)
    path = tmp_path / "relabelled.onnx"
    onnx.save(model, str(path))
    result = run_cli("verify-parity", "--adapter", str(adapter), "--onnx", str(path))
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and "'int8'" in result.stderr and "fp32" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_if_trojan_really_fires_on_its_trigger(sources, tmp_path):
    """The trojans are real: ONNX Runtime gives other logits once the trigger is met."""
    from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner

    _, files = sources
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    triggered = images.copy()
    triggered[:, 0, 0, 0] = 5000.0
    for edit in (trojan_where, trojan_if):
        model = onnx.load(str(files["fp32"]))
        edit(model)
        path = tmp_path / f"{edit.__name__}.onnx"
        onnx.save(model, str(path))
        with OnnxRuntimeRunner(files["fp32"]) as clean, OnnxRuntimeRunner(path) as trojan:
            assert np.array_equal(clean.infer(images), trojan.infer(images))
            assert np.abs(clean.infer(triggered) - trojan.infer(triggered)).max() >= 99.0
