"""What an ONNX file asks of TensorRT, read from real ONNX graphs (fp32, fp16, QDQ-int8)."""

from __future__ import annotations

import onnx
import pytest

from karst_deploy.backends.tensorrt.onnx_graph import summarize_onnx
from karst_deploy.errors import InputError
from tests.backends.tensorrt.graphs import CONV_NODE, HEAD_NODE, save, tiny_classifier


@pytest.mark.parametrize(
    ("conv", "head", "overall"),
    [
        ("fp32", "fp32", "fp32"),
        ("fp16", "fp16", "fp16"),
        ("fp16", "fp32", "fp16"),  # head kept in fp32 on purpose
        ("int8", "int8", "int8"),
        ("fp32", "int8", "int8"),  # patch embedding left unquantized
    ],
)
def test_precision_is_read_per_compute_node(conv, head, overall, tmp_path):
    summary = summarize_onnx(save(tiny_classifier(conv, head), tmp_path / "m.onnx"))
    assert summary.precision == overall and summary.precision_source == "graph"
    assert summary.compute_nodes == {CONV_NODE: conv, HEAD_NODE: head}
    assert (summary.input_name, summary.input_chw, summary.fixed_batch) == (
        "images",
        (3, 8, 8),
        None,
    )


def test_unnamed_nodes_get_the_parsers_names(tmp_path):
    summary = summarize_onnx(save(tiny_classifier(named=False), tmp_path / "m.onnx"))
    assert set(summary.compute_nodes) == {"node_of_patches", "node_of_scores"}


def test_provenance_precision_is_used_and_cross_checked(tmp_path):
    record = {"precision": "int8", "backbone": "vit_tiny_patch16_224"}
    ok = summarize_onnx(
        save(tiny_classifier("int8", "int8", provenance=record), tmp_path / "a.onnx")
    )
    assert (
        ok.precision_source == "provenance" and ok.provenance["backbone"] == "vit_tiny_patch16_224"
    )
    lying = save(tiny_classifier(provenance=record), tmp_path / "b.onnx")
    with pytest.raises(InputError, match="provenance says precision 'int8' but the graph is fp32"):
        summarize_onnx(lying)
    with pytest.raises(InputError, match="'bf16' is not one of"):
        summarize_onnx(save(tiny_classifier(provenance={"precision": "bf16"}), tmp_path / "c.onnx"))


def test_fixed_batch_is_reported(tmp_path):
    assert summarize_onnx(save(tiny_classifier(batch=8), tmp_path / "m.onnx")).fixed_batch == 8


def test_bad_files_are_refused_clearly(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        summarize_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        summarize_onnx(tmp_path / "junk.onnx")
    model = tiny_classifier()
    extra = onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, [1])
    model.graph.input.append(extra)
    with pytest.raises(InputError, match="2 graph inputs"):
        summarize_onnx(save(model, tmp_path / "two.onnx"))
    model = tiny_classifier()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(InputError, match="only the batch axis may be dynamic"):
        summarize_onnx(save(model, tmp_path / "dyn.onnx"))
