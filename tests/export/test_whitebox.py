"""White-box constant comparison: the stated bounds for fp32, fp16 rounding and int8 steps.

The graph walk itself is exercised on real exports by tests/test_tamper.py and
tests/test_parity.py; here the numeric rules are pinned on arrays whose errors are known.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from karst_deploy.export.whitebox import (
    FP32_WEIGHT_RTOL,
    INT8_WEIGHT_LEVELS,
    _compare_constants,
    _Constant,
)

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((8, 16)).astype(np.float32) * 0.05
REFERENCE = _Constant(WEIGHT, "initializer 'w'", onnx.TensorProto.FLOAT)


def fp32(values: np.ndarray) -> _Constant:
    return _Constant(values, "initializer 'w'", onnx.TensorProto.FLOAT)


def fp16(values: np.ndarray) -> _Constant:
    return _Constant(values.astype(np.float16), "initializer 'w'", onnx.TensorProto.FLOAT16)


def int8(weight: np.ndarray, step: np.ndarray, quantized: np.ndarray | None = None) -> _Constant:
    """Symmetric per-row int8 of `weight` with `step` (rounded unless `quantized` is given)."""
    if quantized is None:
        quantized = np.clip(np.round(weight / step), -127, 127)
    step = np.broadcast_to(step, weight.shape)
    return _Constant(quantized * step, "DequantizeLinear 'w'", onnx.TensorProto.INT8, step)


def passes(candidate: _Constant) -> bool:
    message, _ = _compare_constants(candidate, REFERENCE)
    return message is None


def test_fp32_is_held_to_its_bound_elementwise():
    scale = np.abs(WEIGHT).max()
    assert passes(fp32(WEIGHT.copy()))
    nudged = WEIGHT.copy()
    nudged[3, 4] += 0.5 * FP32_WEIGHT_RTOL * scale
    assert passes(fp32(nudged))
    nudged[3, 4] += 2 * FP32_WEIGHT_RTOL * scale
    message, figures = _compare_constants(fp32(nudged), REFERENCE)
    assert "at [3, 4]" in message and "1 of 128 elements out" in message
    assert figures.error_over_limit > 1 and figures.constant == "initializer 'w'"


def test_fp16_allows_its_rounding_and_nothing_more():
    assert passes(fp16(WEIGHT))
    assert not passes(fp16(WEIGHT * (1 + 2.0**-8)))  # two fp16 ulps off


def test_int8_allows_half_a_step_and_refuses_a_coarser_step():
    step = np.abs(WEIGHT).max(axis=1, keepdims=True) / INT8_WEIGHT_LEVELS
    assert passes(int8(WEIGHT, step))
    quantized = np.clip(np.round(WEIGHT / step), -127, 127)
    quantized[2, 5] -= 2 * np.sign(quantized[2, 5]) or 2
    assert not passes(int8(WEIGHT, step, quantized))
    message, _ = _compare_constants(int8(WEIGHT, 4 * step), REFERENCE)
    assert message is not None  # either the values or the step give it away
    coarse = int8(WEIGHT, 1.01 * step)  # within half of its own step, but that step is inflated
    message, _ = _compare_constants(coarse, REFERENCE)
    assert message is not None and "quantization step is 1.01×" in message


@pytest.mark.parametrize(
    "candidate, words",
    [
        (fp32(WEIGHT[:4]), "has shape [4, 16]"),
        (fp32(WEIGHT.astype(np.int64)), "is int64"),
    ],
)
def test_shape_and_type_changes_are_named(candidate, words):
    message, _ = _compare_constants(candidate, REFERENCE)
    assert words in message
