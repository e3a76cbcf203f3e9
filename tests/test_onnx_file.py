"""`OnnxFile`: one reader for an ONNX file's image input, batch axis, precision and provenance.

Real ONNX graphs (tests/engine/graphs.py: fp32, fp16 and QDQ-int8 classifiers that pass
onnx.checker and run in ONNX Runtime) and hostile files: missing, junk, external data,
oversized, a lying precision label.
"""

from __future__ import annotations

import onnx
import pytest

from karst_deploy.errors import InputError, with_flags
from karst_deploy.files import sha256_file
from karst_deploy.onnx_file import (
    MAX_ONNX_BYTES,
    OnnxFile,
    image_input,
    read_provenance,
    require_precision,
)
from tests.backends.tensorrt.graphs import save, tiny_classifier

RECORD = {"precision": "int8", "backbone": "vit_tiny_patch16_224"}


@pytest.mark.parametrize(
    ("conv", "head", "precision"),
    [("fp32", "fp32", "fp32"), ("fp16", "fp32", "fp16"), ("fp32", "int8", "int8")],
)
def test_the_facts_of_a_file(conv, head, precision, tmp_path):
    path = save(tiny_classifier(conv, head), tmp_path / "m.onnx")
    file = OnnxFile(path)
    image = file.image_input
    assert (image.name, image.dtype, image.chw, image.batch) == (
        "images",
        "float32",
        (3, 8, 8),
        None,
    )
    assert image.size == 8 and image.dynamic_batch and image.accepts(5)
    assert file.precision == precision and file.precision_source == "graph"
    assert file.provenance is None and read_provenance(path) is None
    assert file.sha256 == sha256_file(path)
    require_precision(path, precision)
    other = "fp16" if precision != "fp16" else "fp32"
    with pytest.raises(InputError, match=f"is an {precision} model, not {other}"):
        require_precision(path, other)


def test_a_fixed_batch_and_the_provenance_are_read(tmp_path):
    path = save(tiny_classifier("int8", "int8", batch=4, provenance=RECORD), tmp_path / "m.onnx")
    file = OnnxFile(path)
    assert file.image_input.batch == 4 and not file.image_input.accepts(1)
    assert file.precision == "int8" and file.precision_source == "provenance"
    assert file.provenance == RECORD == read_provenance(path)
    assert read_provenance(file.model) == RECORD


def test_a_label_the_graph_contradicts_is_refused(tmp_path):
    path = save(tiny_classifier(provenance=RECORD), tmp_path / "m.onnx")
    file = OnnxFile(path)  # loading is fine; the precision is what is wrong
    with pytest.raises(InputError, match="provenance says precision 'int8' but the graph is fp32"):
        _ = file.precision


def test_hostile_files_are_refused_naming_the_parameter(tmp_path):
    with pytest.raises(InputError, match=r"^onnx '.*missing.onnx' does not exist") as missing:
        OnnxFile(tmp_path / "missing.onnx", "onnx")
    assert missing.value.parameters == ("onnx",)
    assert with_flags(missing.value).startswith("--onnx '")
    with pytest.raises(InputError, match="does not exist or is not a file"):
        OnnxFile(tmp_path)  # a directory
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        OnnxFile(tmp_path / "junk.onnx")
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as handle:  # sparse: nothing is written, and nothing may be read
        handle.truncate(MAX_ONNX_BYTES + 1)
    with pytest.raises(InputError, match="over protobuf's 2 GiB limit"):
        OnnxFile(huge)


def test_external_data_is_refused_before_any_path_is_followed(tmp_path):
    model = tiny_classifier()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../../etc/hostname")
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(InputError, match=f"keeps tensor '{tensor.name}' in an external data file"):
        OnnxFile(path)


def test_the_image_input_contract(tmp_path):
    model = tiny_classifier()
    model.graph.input.append(
        onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, [1])
    )
    with pytest.raises(InputError, match="2 graph inputs"):
        image_input(model)
    model = tiny_classifier()
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    with pytest.raises(InputError, match="only the batch axis may be dynamic"):
        image_input(model)
    model = tiny_classifier()
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    with pytest.raises(InputError, match="INT64 of rank 4"):
        image_input(model)
