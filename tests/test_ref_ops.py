"""The numpy int8 reference kernels against x86 TFLM, byte for byte.

Differential cases: every op of every real model (../shared/models) and zoo model is
fed TFLM's own values of its input tensors (one inference with all tensors preserved,
on seeded random int8 inputs) and must reproduce TFLM's output tensor exactly. The
quantization helpers are checked on edge cases worked out by hand from the C code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_MODELS, SHARED_NAMES, shared_file
from tflm_trace import Trace, run_all_tensors, trace

from tflm_patch import ref_ops
from tflm_patch.errors import TflmRunError, UnsupportedModelError
from tflm_patch.model import Model, load_model, model_to_bytes
from tflm_patch.ref_params import SUPPORTED_OPS, params_for, run_graph, run_op

SEED = 20261124
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1

# ---------------------------------------------------------------------------------------
# models: "shared:NAME" (../shared/models) and "zoo:NAME" (tflm_patch.zoo)
# ---------------------------------------------------------------------------------------

try:
    from tflm_patch.zoo import ZOO_NAMES, ensure_model

    _ZOO_ERROR = ""
except ImportError as e:  # the zoo module is written by another change
    ZOO_NAMES, _ZOO_ERROR = (), f"tflm_patch.zoo is not available: {e}"


def _model_path(spec: str) -> Path | str:
    """The model's path, or a reason why it is not available."""
    kind, name = spec.split(":")
    if kind == "shared":
        path = SHARED_MODELS / f"{name}.tflite"
        return path if path.exists() else f"../shared/models not found ({path} is missing)"
    try:
        return ensure_model(name)
    except Exception as e:  # building a zoo model needs TensorFlow
        return f"zoo model {name} is not available: {e}"


@functools.cache
def _model(spec: str) -> Model | str:
    path = _model_path(spec)
    return load_model(path) if isinstance(path, Path) else path


def _get_model(spec: str) -> Model:
    m = _model(spec)
    if isinstance(m, str):
        pytest.skip(m)
    return m


def _random_inputs(model: Model) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    return [rng.integers(-128, 128, model.tensors[t].shape, dtype=np.int8)
            for t in model.inputs]


MODEL_SPECS = [f"shared:{n}" for n in SHARED_NAMES] + [f"zoo:{n}" for n in ZOO_NAMES]


def _op_cases() -> list[object]:
    cases: list[object] = []
    for spec in MODEL_SPECS:
        m = _model(spec)
        if isinstance(m, str):
            cases.append(pytest.param(spec, -1, id=f"{spec}-unavailable"))
            continue
        cases += [pytest.param(spec, op.index, id=f"{spec}-op{op.index:02d}-{op.name}")
                  for op in m.operators]
    if _ZOO_ERROR:
        cases.append(pytest.param("zoo:*", -1, id="zoo-unavailable"))
    return cases


@pytest.fixture(scope="module")
def traces() -> Callable[[str], Trace]:
    """One TFLM inference per model (all tensors kept), computed on first use."""
    cache: dict[str, Trace] = {}

    def get(spec: str) -> Trace:
        if spec not in cache:
            model = _get_model(spec)
            cache[spec] = trace(model, _random_inputs(model))
        return cache[spec]

    return get


# ---------------------------------------------------------------------------------------
# differential: each op, each model
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.tflm
@pytest.mark.parametrize(("spec", "op_index"), _op_cases())
def test_op_equals_tflm(traces: Callable[[str], Trace], spec: str, op_index: int) -> None:
    if spec == "zoo:*":
        pytest.skip(_ZOO_ERROR)
    model = _get_model(spec)
    tr = traces(spec)
    op = model.operators[op_index]
    expected = tr.op_output(op)
    got = run_op(model, op, tr.op_inputs(op))
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    diff = got.astype(np.int64) - expected.astype(np.int64)
    assert not diff.any(), (f"{np.count_nonzero(diff)} of {diff.size} values differ "
                            f"(max |diff| {np.abs(diff).max()})")


@pytest.mark.slow
@pytest.mark.tflm
@pytest.mark.parametrize("spec", MODEL_SPECS)
def test_whole_graph_equals_tflm_on_every_tensor(traces: Callable[[str], Trace],
                                                 spec: str) -> None:
    model = _get_model(spec)
    tr = traces(spec)
    values = run_graph(model, _random_inputs(model))
    produced = [op.outputs[0] for op in model.operators]
    assert sorted(values) == sorted({*model.inputs, *produced})
    for t in produced:
        np.testing.assert_array_equal(values[t], tr.tensors[t], err_msg=f"tensor {t}")


def _bmp_input(name: str) -> np.ndarray:
    from PIL import Image

    data = Image.open(shared_file(name)).tobytes()
    return np.frombuffer(data, np.uint8).view(np.int8).reshape(1, 96, 96, 1)


@pytest.mark.tflm
@pytest.mark.parametrize(("image", "expected"), [("person.bmp", [-113, 113]),
                                                 ("no_person.bmp", [57, -57])])
def test_person_detect_images(image: str, expected: list[int]) -> None:
    model = _get_model("shared:person_detect")
    x = _bmp_input(image)
    ours = run_graph(model, [x])
    theirs = run_all_tensors(model.raw, [x])
    out = model.outputs[0]
    assert ours[out].reshape(-1).tolist() == expected
    for op in model.operators:
        np.testing.assert_array_equal(ours[op.outputs[0]], theirs[op.outputs[0]],
                                      err_msg=f"op {op.index} {op.name}")


# ---------------------------------------------------------------------------------------
# quantization helpers, hand-derived
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("real", "expected"), [
    (0.0, (0, 0)),
    (0.5, (1 << 30, 0)),  # frexp(0.5) = (0.5, 0)
    (1.0, (1 << 30, 1)),  # frexp(1) = (0.5, 1)
    (0.75, (3 << 29, 0)),
    (3.0, (3 << 29, 2)),
    (-0.5, (-(1 << 30), 0)),
    ((2**30 + 0.5) / 2**31, (2**30 + 1, 0)),  # a tie rounds away from zero
    ((2**30 + 0.25) / 2**31, (2**30, 0)),
    (1.0 - 2.0**-40, (1 << 30, 1)),  # rounds to 2**31: halved, shift + 1
    (2.0**-31, (1 << 30, -30)),
    (2.0**-32, (1 << 30, -31)),  # the smallest shift kept
    (2.0**-33, (0, 0)),  # shift -32 < -31: flushed to zero
])
def test_quantize_multiplier(real: float, expected: tuple[int, int]) -> None:
    assert ref_ops.quantize_multiplier(real) == expected


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_quantize_multiplier_rejects_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="cannot quantize"):
        ref_ops.quantize_multiplier(bad)


def test_quantize_multiplier_smaller_than_one_exp_checks() -> None:
    assert ref_ops.quantize_multiplier_smaller_than_one_exp(0.25) == (1 << 30, -1)
    for bad in (1.0, 0.0, 1.5):
        with pytest.raises(ValueError):
            ref_ops.quantize_multiplier_smaller_than_one_exp(bad)


def _mbqm(x: list[int], mult: int, shift: int) -> list[int]:
    return ref_ops.multiply_by_quantized_multiplier(np.array(x, np.int64), mult,
                                                    shift).tolist()


def test_srdhm_rounds_ties_up_and_saturates() -> None:
    # (a*b + 2**30) / 2**31 for a*b >= 0, (a*b + 1 - 2**30) / 2**31 truncated otherwise
    got = ref_ops.saturating_rounding_doubling_high_mul(
        np.array([1, -1, 3, -3, I32_MIN, I32_MIN, I32_MAX]),
        np.array([1 << 30, 1 << 30, 1 << 30, 1 << 30, I32_MIN, I32_MAX, I32_MAX]))
    assert got.tolist() == [1, 0, 2, -1, I32_MAX, I32_MIN + 1, I32_MAX - 1]


def test_rounding_divide_by_pot_rounds_ties_away_from_zero() -> None:
    x = np.array([1, -1, 3, -3, 5, -5, 6, -6, 7, -7])
    assert ref_ops.rounding_divide_by_pot(x, 1).tolist() == [1, -1, 2, -2, 3, -3, 3, -3, 4, -4]
    assert ref_ops.rounding_divide_by_pot(x, 2).tolist() == [0, 0, 1, -1, 1, -1, 2, -2, 2, -2]
    assert ref_ops.rounding_divide_by_pot(np.array([I32_MAX, I32_MIN]), 31).tolist() == [1, -1]


def test_multiply_by_quantized_multiplier_halving() -> None:
    # multiplier 2**30 (0.5) with shift 0: one rounding in SRDHM (ties toward +inf)
    assert _mbqm([3, -3, 1, -1, 4, -4], 1 << 30, 0) == [2, -1, 1, 0, 2, -2]
    # shift -1 (x / 4): SRDHM then RoundingDivideByPOT, whose ties go away from zero
    assert _mbqm([2, -2, 6, -6, 10, -10], 1 << 30, -1) == [1, -1, 2, -2, 3, -3]
    # shift +1: x * 2 before the multiplication (x exactly)
    assert _mbqm([3, -3, 7], 1 << 30, 1) == [3, -3, 7]


def test_multiply_by_quantized_multiplier_extremes() -> None:
    assert _mbqm([I32_MAX, I32_MIN], I32_MAX, 0) == [I32_MAX - 1, I32_MIN + 1]
    assert _mbqm([I32_MIN], I32_MIN, 0) == [I32_MAX]  # the one saturating product
    # the left shift wraps like C int32 arithmetic: 2**30 * 2 = -2**31
    assert _mbqm([1 << 30], 1 << 30, 1) == [-(1 << 30)]
    assert _mbqm([12345, -12345], 0, 0) == [0, 0]


def test_multiply_by_quantized_multiplier_per_channel() -> None:
    x = np.array([[8, 8, 8], [-8, -8, -8]])
    got = ref_ops.multiply_by_quantized_multiplier(x, np.array([1 << 30] * 3),
                                                   np.array([0, -1, -3]))
    assert got.tolist() == [[4, 2, 1], [-4, -2, -1]]


def test_quantize_value_is_float32_round_half_away() -> None:
    assert ref_ops.quantize_value(6.0, 0.25, -128) == -104
    assert ref_ops.quantize_value(0.0, 0.5, -3) == -3
    assert ref_ops.quantize_value(1.25, 0.5, 0) == 3  # 2.5 rounds away from zero
    assert ref_ops.quantize_value(-1.25, 0.5, 0) == -3
    assert ref_ops.quantize_value(1.0, 3.0, 0) == 0  # 0.333.. rounds to 0


# ---------------------------------------------------------------------------------------
# kernels on hand-made cases
# ---------------------------------------------------------------------------------------


def _pool(k: int, stride: int, pad_left: int, out: int) -> ref_ops.PoolParams:
    """A 1 x k window sliding along W (tensors of shape 1x1xWx1)."""
    return ref_ops.PoolParams(filter_height=1, filter_width=k, stride_height=1,
                              stride_width=stride, pad_top=0, pad_left=pad_left,
                              out_height=1, out_width=out, act_min=-128, act_max=127)


def test_average_pool_rounds_half_away_and_counts_only_inside() -> None:
    x = np.array([1, 2, -1, -2, 5], np.int8).reshape(1, 1, 5, 1)
    # windows of 2, stride 2, one column of padding on the left: [pad,1] [2,-1] [-2,5]
    got = ref_ops.average_pool(x, _pool(2, 2, 1, 3)).reshape(-1).tolist()
    assert got == [1, 1, 2]  # 1/1, 0.5 -> 1, 1.5 -> 2
    got = ref_ops.average_pool(x, _pool(2, 1, 0, 4)).reshape(-1).tolist()
    assert got == [2, 1, -2, 2]  # 1.5, 0.5, -1.5 -> -2, 1.5


def test_max_pool_ignores_padding() -> None:
    x = np.array([-100, -120, -50], np.int8).reshape(1, 1, 3, 1)
    got = ref_ops.max_pool(x, _pool(3, 1, 1, 3)).reshape(-1).tolist()
    assert got == [-100, -50, -50]


def test_depthwise_multiplier_maps_channel_c_to_outputs_c_times_m() -> None:
    x = np.array([[[[1, 10]]]], np.int8)  # 1x1x1x2
    w = np.array([1, 2, 3, 4, 5, 6], np.int8).reshape(1, 1, 1, 6)  # depth multiplier 3
    p = ref_ops.DepthwiseConvParams(
        input_offset=0, output_offset=0, output_multiplier=(1 << 30,) * 6,
        output_shift=(1,) * 6, stride_height=1, stride_width=1, dilation_height=1,
        dilation_width=1, pad_top=0, pad_left=0, out_height=1, out_width=1,
        act_min=-128, act_max=127, depth_multiplier=3)
    got = ref_ops.depthwise_conv2d(x, w, None, p).reshape(-1).tolist()
    assert got == [1, 2, 3, 40, 50, 60]


def test_conv_skips_taps_outside_the_image() -> None:
    # input zero point 5 (offset -5): a padded tap would add w * (0 - 5) if not skipped
    x = np.full((1, 2, 2, 1), 7, np.int8)
    w = np.ones((1, 3, 3, 1), np.int8)
    p = ref_ops.ConvParams(
        input_offset=-5, output_offset=0, output_multiplier=(1 << 30,),
        output_shift=(1,), stride_height=1, stride_width=1, dilation_height=1,
        dilation_width=1, pad_top=1, pad_left=1, out_height=2, out_width=2,
        act_min=-128, act_max=127)
    got = ref_ops.conv2d(x, w, np.array([100], np.int32), p)
    assert got.reshape(-1).tolist() == [108] * 4  # 4 taps x (7 - 5) + 100


def test_pad_fills_with_the_value() -> None:
    x = np.array([[1, 2]], np.int8)
    got = ref_ops.pad(x, ref_ops.PadParams(paddings=((1, 0), (0, 2)), pad_value=-3))
    assert got.tolist() == [[-3, -3, -3, -3], [1, 2, -3, -3]]
    assert got.dtype == np.int8


# ---------------------------------------------------------------------------------------
# what TFLM refuses, refused clearly
# ---------------------------------------------------------------------------------------


def _model_with_add() -> Model:
    for spec in ("zoo:mcunet_dw57", "zoo:mbv2_035_144", "shared:mobilenet_v2_int8_224_nchw"):
        m = _model(spec)
        if isinstance(m, Model):
            return m
    pytest.skip("no model with an ADD is available (zoo and ../shared/models missing)")


@pytest.mark.tflm
def test_degenerate_add_scale_aborts_tflm_and_is_refused_here() -> None:
    model = _model_with_add()
    add = next(op for op in model.operators if op.name == "ADD")
    obj = load_model(model.raw).obj
    obj.subgraphs[0].tensors[add.outputs[0]].quantization.scale = [1e-12]
    broken = load_model(model_to_bytes(obj))
    with pytest.raises(UnsupportedModelError, match=r"\(ADD\): TFLM would abort"):
        params_for(broken, broken.operators[add.index])
    with pytest.raises(UnsupportedModelError, match="ADD"):
        run_graph(broken, _random_inputs(broken))
    with pytest.raises(TflmRunError, match=r"TFLM aborted \(SIGABRT\)"):
        run_all_tensors(broken.raw, _random_inputs(broken))


def test_unsupported_op_is_named() -> None:
    model = _model_with_add()
    obj = load_model(model.raw).obj
    op = obj.subgraphs[0].operators[0]
    code = obj.operatorCodes[op.opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = 47  # EXP
    broken = load_model(model_to_bytes(obj))
    assert "EXP" not in SUPPORTED_OPS
    with pytest.raises(UnsupportedModelError, match=r"operator 0 \(EXP\): no int8"):
        params_for(broken, broken.operators[0])
    with pytest.raises(UnsupportedModelError, match="EXP"):
        run_graph(broken, _random_inputs(broken))


def test_trace_rejects_wrong_inputs() -> None:
    model = _model_with_add()
    shape = model.tensors[model.inputs[0]].shape
    with pytest.raises(TflmRunError, match="got an array of shape"):
        run_all_tensors(model.raw, [np.zeros((1, 2, 3), np.int8)])
    with pytest.raises(TflmRunError, match="is int8, got float32"):
        run_all_tensors(model.raw, [np.zeros(shape, np.float32)])
