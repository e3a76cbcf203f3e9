"""Reading precision back from graphs: detection, the precision guard, topological repair."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest

from karst_deploy.errors import InputError, VerificationError
from karst_deploy.precision import convert_precision, describe_precision, require_precision
from karst_deploy.precision.base import run_onnx
from karst_deploy.precision.graph import check_valid, sort_topologically


def test_precision_is_detected_from_the_graph_alone(digits_model, tmp_path):
    fp16 = convert_precision(digits_model.fp32_onnx, tmp_path / "fp16.onnx", "fp16").path
    int8 = tmp_path / "int8.onnx"
    convert_precision(digits_model.fp32_onnx, int8, "int8", calib="digits", calib_samples=16)
    for path, precision in ((digits_model.fp32_onnx, "fp32"), (fp16, "fp16"), (int8, "int8")):
        model = onnx.load(path)
        del model.metadata_props[:]  # no provenance: the graph has to tell
        assert describe_precision(model)["precision"] == precision
        require_precision(path, precision)
    with pytest.raises(InputError, match="is an int8 model, not fp16"):
        require_precision(int8, "fp16")


def test_a_shuffled_graph_is_restored_to_topological_order(digits_model):
    model = onnx.load(digits_model.fp32_onnx)
    nodes = list(model.graph.node)
    random.Random(0).shuffle(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    with pytest.raises(VerificationError, match="not valid ONNX"):
        check_valid(model, "shuffled")
    sort_topologically(model.graph)
    check_valid(model, "sorted")
    images = digits_model.test_images[:4]
    np.testing.assert_array_equal(run_onnx(model, images), run_onnx(digits_model.fp32_onnx, images))
