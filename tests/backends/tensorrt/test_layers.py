"""The precision check over engine-inspector reports of every TensorRT schema.

The reports are written here in the shapes NVIDIA documents, since no engine can be built on
these machines: the 8.x/10.x schema of ``IEngineInspector`` JSON (``"Layers"`` of ``Name``,
``LayerType``, ``ParameterType``, ``Inputs``/``Outputs`` with ``"Format/Datatype"`` strings such
as ``"Channel major FP16 format where channel % 8 == 0"``, ``Weights.Type``, ``Metadata``) as in
the trt-engine-explorer examples of NVIDIA/TensorRT; Myelin layers of 10.x (``gemm``, ``mha``,
``kgen``) whose data types read ``"Half"``/``"Float"``/``"Int8"``; and the 11.x schema, where
the field is split into ``"DataType"`` and ``"Format"`` and ``"Bindings"`` became
``"I/O Tensors"`` (TensorRT migration guide, IEngineInspector 10.x → 11.x).
"""

from __future__ import annotations

import json

import pytest

from karst_deploy.backends.tensorrt.layers import (
    check_precision,
    onnx_nodes,
    parse_layers,
    tensor_precision,
)
from karst_deploy.errors import InputError

DTYPE_TEXT = {"fp32": "Float", "fp16": "Half", "int8": "Int8"}
CLASSIC_TEXT = {
    "fp32": "Row major linear FP32",
    "fp16": "Channel major FP16 format where channel % 8 == 0",
    "int8": "Four wide channel vectorized row major Int8 format",
}


def tensor(dtype: str, schema: str) -> dict:
    if schema == "11":
        return {
            "Name": "t",
            "Location": "Device",
            "Dimensions": [8, 197, 192],
            "DataType": DTYPE_TEXT[dtype],
            "Format": "Row major linear format (kLINEAR)",
        }
    return {
        "Name": "t",
        "Location": "Device",
        "Dimensions": [8, 197, 192],
        "Format/Datatype": DTYPE_TEXT[dtype],
    }


def gemm(node: str, dtype: str, schema: str = "10", kind: str = "gemm") -> dict:
    return {
        "Name": f"{node}_myl0_{len(node)}",
        "LayerType": kind,
        "Inputs": [tensor(dtype, schema), tensor(dtype, schema)],
        "Outputs": [tensor(dtype, schema)],
        "TacticName": "sm87_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x32",
        "StreamId": 0,
        "Metadata": f"[ONNX Layer: {node}]",
    }


def pointwise(name: str, dtype: str, schema: str = "10") -> dict:
    return {
        "Name": name,
        "LayerType": "kgen",
        "Inputs": [tensor(dtype, schema)],
        "Outputs": [tensor(dtype, schema)],
        "Metadata": "[ONNX Layer: /blocks.0/norm1/LayerNormalization]",
    }


def vit_report(gemm_dtypes: dict[str, str], schema: str = "10") -> str:
    """A ViT engine: LayerNorm (kgen, fp32 as our fp16 export keeps it) plus the GEMMs."""
    layers = [pointwise("__myl_LayerNorm_myl0_0", "fp32", schema)]
    layers += [gemm(node, dtype, schema) for node, dtype in gemm_dtypes.items()]
    io = (
        {"I/O Tensors": [{"Name": "images", "IOMode": "Input", "DataType": "Float"}]}
        if schema == "11"
        else {"Bindings": ["images", "logits"]}
    )
    return json.dumps({"Layers": layers, **io})


BLOCK = [
    "/blocks.0/attn/qkv/MatMul",
    "/blocks.0/attn/proj/MatMul",
    "/blocks.0/mlp/fc1/MatMul",
    "/blocks.0/mlp/fc2/MatMul",
]


@pytest.mark.parametrize(
    ("text", "precision"),
    [
        ("Row major linear FP32", "fp32"),
        ("Row major linear FP16 format", "fp16"),
        ("Channel major FP16 format where channel % 16 == 0", "fp16"),
        ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
        ("Channel major INT8 format where channel % 16 == 0", "int8"),
        ("Row major linear BFloat16 format", "bf16"),
        ("Row major linear FP8 format", "fp8"),
        ("Row major linear Int32", "other"),
        ("Row major linear UInt8 format", "other"),
        ("Row major linear BOOL", "other"),
        ("Half", "fp16"),
        ("Float", "fp32"),
        ("Int8", "int8"),
        ("Unknown format", None),
    ],
)
def test_tensor_precision_reads_every_format_string(text, precision):
    assert tensor_precision({"Format/Datatype": text}) == precision
    assert tensor_precision({"DataType": text}) == precision


def test_metadata_lists_every_fused_onnx_node():
    metadata = (
        "[ONNX Layer: /a/MatMul]\x1f[ONNX Layer: /b/Add | Local Function: Block]"
        "\x1fsomething else\x1f[ONNX Layer: node_of_y]"
    )
    assert onnx_nodes(metadata) == ["/a/MatMul", "/b/Add", "node_of_y"]
    assert onnx_nodes(None) == []


@pytest.mark.parametrize("schema", ["10", "11"])
def test_a_real_fp16_build_passes(schema):
    report = check_precision(parse_layers(vit_report(dict.fromkeys(BLOCK, "fp16"), schema)), "fp16")
    assert report.passed and report.matched == 4 and report.realized_counts() == {"fp16": 4}


@pytest.mark.parametrize("schema", ["10", "11"])
def test_an_fp16_build_that_silently_stayed_fp32_is_caught(schema):
    report = check_precision(parse_layers(vit_report(dict.fromkeys(BLOCK, "fp32"), schema)), "fp16")
    assert not report.passed and report.share == 0
    assert "0 of 4" in report.explain() and "/blocks.0/attn/qkv/MatMul" in report.explain()
    assert report.to_dict()["mismatches"][0]["realized"] == "fp32"


def test_nodes_the_onnx_keeps_in_fp32_are_expected_in_fp32():
    expected = {**dict.fromkeys(BLOCK, "fp16"), "/head/MatMul": "fp32"}
    layers = parse_layers(vit_report({**dict.fromkeys(BLOCK, "fp16"), "/head/MatMul": "fp32"}))
    assert check_precision(layers, "fp16", expected).passed
    # A head that reads fp16 (a Cast fused into it) is no wider than asked: accepted.
    fused = parse_layers(vit_report(dict.fromkeys([*BLOCK, "/head/MatMul"], "fp16")))
    assert check_precision(fused, "fp16", expected).passed
    # An fp16 block that stayed fp32 is caught even when the head is right.
    wide = parse_layers(
        vit_report({**dict.fromkeys(BLOCK, "fp16"), BLOCK[2]: "fp32", "/head/MatMul": "fp32"})
    )
    report = check_precision(wide, "fp16", expected)
    assert not report.passed and [(v.expected, v.realized) for v in report.mismatches] == [
        ("fp16", "fp32")
    ]


def test_int8_tolerates_a_few_wider_layers_but_not_many():
    nodes = [f"/blocks.{i}/mlp/fc1/MatMul" for i in range(10)]
    one_wide = parse_layers(vit_report({**dict.fromkeys(nodes[:9], "int8"), nodes[9]: "fp16"}))
    assert check_precision(one_wide, "int8", min_match_share=0.9).passed
    two_wide = parse_layers(
        vit_report({**dict.fromkeys(nodes[:8], "int8"), **dict.fromkeys(nodes[8:], "fp32")})
    )
    report = check_precision(two_wide, "int8", min_match_share=0.9)
    assert not report.passed and report.realized_counts() == {"int8": 8, "fp32": 2}


def test_classic_convolution_layers_use_their_weights_type():
    conv = {
        "Name": "Conv_0 + Relu_1",
        "LayerType": "CaskConvolution",
        "ParameterType": "Convolution",
        "Inputs": [{"Name": "x", "Format/Datatype": CLASSIC_TEXT["fp16"]}],
        "Outputs": [{"Name": "y", "Format/Datatype": CLASSIC_TEXT["fp16"]}],
        "Weights": {"Type": "Half", "Count": 9408},
        "Bias": {"Type": "Half", "Count": 64},
    }
    reformat = {
        "Name": "Reformatting CopyNode",
        "LayerType": "Reformat",
        "Inputs": [{"Format/Datatype": CLASSIC_TEXT["fp32"]}],
        "Outputs": [],
    }
    layers = parse_layers({"Layers": [reformat, conv], "Bindings": ["x", "y"]})
    assert [(layer.kind, layer.precision, layer.is_compute) for layer in layers] == [
        ("Reformat", "fp32", False),
        ("Convolution", "fp16", True),
    ]
    assert check_precision(layers, "fp16").passed
    conv["Weights"]["Type"] = "Int8"  # int8 weights: the layer computes in int8
    assert parse_layers({"Layers": [conv]})[0].precision == "int8"


def test_fused_attention_counts_as_compute():
    layers = parse_layers({"Layers": [gemm("/blocks.0/attn/MatMul", "fp16", kind="mha")]})
    assert layers[0].is_compute and check_precision(layers, "fp16").passed


def test_layer_names_only_cannot_be_verified():
    report = check_precision(parse_layers({"Layers": ["a", "b"], "Bindings": []}), "fp16")
    assert not report.passed and "DETAILED" in report.explain()


def test_dla_layers_are_listed_and_accepted_only_for_reduced_precision():
    dla = {
        "Name": "{ForeignNode[/blocks.0/attn/qkv/MatMul...]}",
        "LayerType": "DLA",
        "Inputs": [],
        "Outputs": [],
    }
    layers = parse_layers({"Layers": [dla]})
    assert check_precision(layers, "fp16").passed
    assert check_precision(layers, "fp16").dla_layers == [dla["Name"]]
    assert not check_precision(layers, "fp32").passed


@pytest.mark.parametrize(
    ("text", "message"), [("{", "not JSON"), ('{"Bindings": []}', "no 'Layers'")]
)
def test_malformed_reports_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_layers(text)


def test_unknown_layer_entries_and_fields_are_tolerated():
    """11.x reports were read from documentation only: unknown shapes must not crash parsing."""
    layers = parse_layers(
        {
            "Layers": [
                7,
                {"Name": "gemm", "LayerType": "gemm", "Inputs": "not a list", "Tactic": 3},
                {"Name": "mm", "LayerType": "MatrixMultiply", "Inputs": [{"Format": "Half"}]},
            ],
            "I/O Tensors": [],
        }
    )
    assert [(layer.name, layer.precision) for layer in layers] == [("gemm", None), ("mm", "fp16")]
