"""numpy int8 reference kernels, bit-exact with TFLM's reference int8 kernels.

Every kernel emulates TFLM's integer arithmetic exactly: int32 accumulators that wrap,
gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT (TFLM's default
double-rounding MultiplyByQuantizedMultiplier, i.e. built without
TFLITE_SINGLE_ROUNDING), truncating integer division, clamping to the activation
range. Integers are carried in int64 numpy arrays. The only floating-point step is
the convolution's dot product, done by BLAS in float64 on integer values whose partial
sums are provably below 2**53, so that every product and sum is exact (checked; an
int64 path is taken otherwise).

Tensors are int8 NHWC. The integer parameters of each op (multipliers, shifts,
offsets, padding, activation range) are frozen dataclasses; `tflm_patch.ref_params`
derives them from a model exactly as TFLM's Prepare does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT8_MIN = -128
INT8_MAX = 127
_FLOAT64_EXACT = 1 << 53  # every integer of smaller magnitude is exact in float64

IntArray = np.ndarray


# --------------------------------------------------------------------------------------
# quantization helpers
# --------------------------------------------------------------------------------------


def _round_half_away(value: float) -> int:
    """std::round / TfLiteRound: nearest integer, halves away from zero."""
    magnitude = math.floor(abs(value) + 0.5)
    return int(-magnitude if value < 0 else magnitude)


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLM's QuantizeMultiplier: (q, shift) with real ~= q * 2**(shift - 31).

    frexp gives q in [0.5, 1); q * 2**31 is rounded half away from zero; a result
    of exactly 2**31 becomes 2**30 with shift + 1; shift < -31 flushes to (0, 0).
    Raises ValueError where TFLM would fail a TFLITE_CHECK (abort).
    """
    x = float(real_multiplier)
    if not math.isfinite(x):
        raise ValueError(f"cannot quantize the multiplier {x!r}")
    if x == 0.0:
        return 0, 0
    q, shift = math.frexp(x)
    q_fixed = _round_half_away(q * float(1 << 31))  # exact: q * 2**31 is a scaling by 2**31
    if q_fixed > (1 << 31):
        raise ValueError(f"QuantizeMultiplier({x!r}) check failed")
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if q_fixed > INT32_MAX:
        raise ValueError(f"QuantizeMultiplier({x!r}) check failed")
    if shift < -31:
        return 0, 0
    return int(q_fixed), int(shift)


def quantize_multiplier_smaller_than_one_exp(real_multiplier: float) -> tuple[int, int]:
    """QuantizeMultiplierSmallerThanOneExp: 0 < real < 1, shift <= 0 (ValueError otherwise)."""
    x = float(real_multiplier)
    if not 0.0 < x < 1.0:
        raise ValueError(f"QuantizeMultiplierSmallerThanOneExp needs 0 < m < 1, got {x!r}")
    q, shift = quantize_multiplier(x)
    if shift > 0:
        raise ValueError(f"QuantizeMultiplierSmallerThanOneExp({x!r}) gave shift {shift}")
    return q, shift


def quantize_value(real: float, scale: float, zero_point: int) -> int:
    """TFLM's kernel_util Quantize(): zero_point + round(float(real) / float(scale)) in float32.

    Raises ValueError where TFLM's Prepare fails (the quotient overflows int32).
    """
    quotient = np.float32(real) / np.float32(scale)
    if not np.isfinite(quotient):
        raise ValueError(f"cannot quantize {real} with scale {scale}")
    rounded = _round_half_away(float(quotient))
    if not INT32_MIN <= rounded <= INT32_MAX:
        raise ValueError(f"quantizing {real} with scale {scale} overflows int32")
    return int(zero_point) + rounded


def wrap_int32(x: IntArray) -> IntArray:
    """Two's-complement wrap of int64 values to the int32 range (C int32 overflow)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _trunc_div(numerator: IntArray, denominator: int | IntArray) -> IntArray:
    """C integer division (truncates toward zero) on int64 arrays."""
    q = np.abs(numerator) // np.abs(denominator)
    return np.where((numerator < 0) != (np.asarray(denominator) < 0), -q, q)


def saturating_rounding_doubling_high_mul(a: int | IntArray, b: int | IntArray) -> IntArray:
    """gemmlowp SaturatingRoundingDoublingHighMul for int32 values held in int64."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b  # |ab| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = _trunc_div(ab + nudge, 1 << 31)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, high)


def rounding_divide_by_pot(x: IntArray, exponent: int | IntArray) -> IntArray:
    """gemmlowp RoundingDivideByPOT: x / 2**exponent, ties away from zero (0 <= e <= 31)."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    if np.any(e < 0) or np.any(e > 31):
        raise ValueError(f"RoundingDivideByPOT exponent out of [0, 31]: {exponent}")
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: IntArray, multiplier: int | IntArray,
                                     shift: int | IntArray) -> IntArray:
    """TFLM's MultiplyByQuantizedMultiplier(int32 x, int32 multiplier, int shift), the
    default double-rounding build: RoundingDivideByPOT(SRDHM(x * 2**max(shift, 0),
    multiplier), max(-shift, 0)). Scalars or arrays broadcasting against x (e.g.
    per-channel multiplier/shift along the last axis). The left shift wraps like C.
    """
    x = np.asarray(x, dtype=np.int64)
    shift_arr = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift_arr, 0)
    right = np.maximum(-shift_arr, 0)
    shifted = wrap_int32(x << left) if np.any(left > 0) else x
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier),
                                  right)


def _requantize(acc: IntArray, multiplier: IntArray | int, shift: IntArray | int,
                output_offset: int, act_min: int, act_max: int) -> np.ndarray:
    """Scale an int32 accumulator to int8: MBQM, + output offset, clamp."""
    out = multiply_by_quantized_multiplier(acc, multiplier, shift) + output_offset
    return np.clip(out, act_min, act_max).astype(np.int8)


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvParams:
    """CONV_2D (int8, per-channel): TFLM's ConvParams plus OpDataConv's per-channel data.

    pad_top/pad_left are TFLM's padding_values.height/width (floor of half the total
    padding); windows reaching past the bottom/right edge simply skip the missing
    rows/columns, as in TFLM. out_height/out_width come from the output tensor.
    """

    input_offset: int  # -input zero point
    output_offset: int  # output zero point
    output_multiplier: tuple[int, ...]  # per output channel
    output_shift: tuple[int, ...]  # per output channel (negative: right shift)
    stride_height: int
    stride_width: int
    dilation_height: int
    dilation_width: int
    pad_top: int
    pad_left: int
    out_height: int
    out_width: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class DepthwiseConvParams(ConvParams):
    depth_multiplier: int = 1


@dataclass(frozen=True)
class AddParams:
    """ADD (int8): TFLM's ArithmeticParams as OpDataAdd fills them."""

    input1_offset: int
    input2_offset: int
    left_shift: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    output_offset: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class MulParams:
    """MUL (int8): TFLM's ArithmeticParams as OpDataMul fills them."""

    input1_offset: int
    input2_offset: int
    output_multiplier: int
    output_shift: int
    output_offset: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class PoolParams:
    """AVERAGE_POOL_2D / MAX_POOL_2D (int8)."""

    filter_height: int
    filter_width: int
    stride_height: int
    stride_width: int
    pad_top: int
    pad_left: int
    out_height: int
    out_width: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class PadParams:
    """PAD / PADV2: (before, after) per dimension and the int8 fill value."""

    paddings: tuple[tuple[int, int], ...]
    pad_value: int


@dataclass(frozen=True)
class FullyConnectedParams:
    """FULLY_CONNECTED (int8): per-tensor (weights_offset used) or per-channel."""

    input_offset: int
    weights_offset: int
    output_offset: int
    output_multiplier: tuple[int, ...]  # one value unless per_channel
    output_shift: tuple[int, ...]
    per_channel: bool
    act_min: int
    act_max: int


@dataclass(frozen=True)
class MeanParams:
    """MEAN (int8): the axes (resolved, deduplicated) and Prepare's multiplier/shift
    (input_scale / output_scale); the 1/count factor is folded in at run time as TFLM
    does."""

    axes: tuple[int, ...]
    keep_dims: bool
    input_zero_point: int
    output_zero_point: int
    multiplier: int
    shift: int


@dataclass(frozen=True)
class RequantizeParams:
    """QUANTIZE int8 -> int8: reference_ops::Requantize."""

    multiplier: int
    shift: int
    input_zero_point: int
    output_zero_point: int


@dataclass(frozen=True)
class SoftmaxParams:
    """SOFTMAX int8 -> int8 (output scale 1/256, zero point -128)."""

    input_multiplier: int
    input_left_shift: int
    diff_min: int


# --------------------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------------------


def _pad_spatial(x: np.ndarray, pad_top: int, pad_left: int, need_h: int, need_w: int,
                 fill: int) -> np.ndarray:
    """x (N, H, W, C) placed at (pad_top, pad_left) in a (N, >=need_h, >=need_w, C) array
    filled with `fill` (rows/columns of x beyond need_h/need_w are kept, unused)."""
    h, w = x.shape[1], x.shape[2]
    bottom = max(0, need_h - pad_top - h)
    right = max(0, need_w - pad_left - w)
    if pad_top == pad_left == bottom == right == 0:
        return x
    return np.pad(x, ((0, 0), (pad_top, bottom), (pad_left, right), (0, 0)),
                  constant_values=fill)


def _tap(xp: np.ndarray, ky: int, kx: int, out_h: int, out_w: int, sh: int, sw: int,
         dh: int, dw: int) -> np.ndarray:
    """The input values under kernel tap (ky, kx) for every output position: (N, OH, OW, C)."""
    y0, x0 = ky * dh, kx * dw
    return xp[:, y0 : y0 + (out_h - 1) * sh + 1 : sh, x0 : x0 + (out_w - 1) * sw + 1 : sw, :]


def _check_4d(name: str, *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.ndim != 4:
            raise ValueError(f"{name}: expected a 4-D NHWC array, got shape {a.shape}")


def _check_offset(name: str, offset: int) -> None:
    if not -255 <= offset <= 255:
        raise ValueError(f"{name}: offset {offset} outside [-255, 255]")


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------


def _exact_matmul(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """a @ b for int64 matrices; float64 BLAS when `bound` (>= any |partial sum|) < 2**53."""
    if bound < _FLOAT64_EXACT:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a, b)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, p: ConvParams) -> np.ndarray:
    """reference_integer_ops::ConvPerChannel (int8, grouped when w has fewer input channels)."""
    _check_4d("conv2d", x, w)
    _check_offset("conv2d input", p.input_offset)
    n, _, _, cin = x.shape
    cout, kh, kw, cin_g = w.shape
    if cin_g == 0 or cin % cin_g or cout % (cin // cin_g):
        raise ValueError(f"conv2d: {cin} input channels do not fit filter shape {w.shape}")
    groups = cin // cin_g
    oh, ow = p.out_height, p.out_width
    need_h = (oh - 1) * p.stride_height + (kh - 1) * p.dilation_height + 1
    need_w = (ow - 1) * p.stride_width + (kw - 1) * p.dilation_width + 1
    # padding with -input_offset (the zero point) makes the skipped taps contribute 0
    xs = x.astype(np.int64) + p.input_offset
    xp = _pad_spatial(xs, p.pad_top, p.pad_left, need_h, need_w, 0)
    taps = [_tap(xp, ky, kx, oh, ow, p.stride_height, p.stride_width,
                 p.dilation_height, p.dilation_width)
            for ky in range(kh) for kx in range(kw)]
    patches = np.stack(taps, axis=3)  # (N, OH, OW, KH*KW, Cin)
    depth = kh * kw * cin_g
    bound = depth * 255 * 128
    per_group = cout // groups
    acc = np.empty((n * oh * ow, cout), dtype=np.int64)
    for g in range(groups):
        cols = patches[..., g * cin_g : (g + 1) * cin_g].reshape(n * oh * ow, depth)
        wg = w[g * per_group : (g + 1) * per_group].reshape(per_group, depth).astype(np.int64)
        acc[:, g * per_group : (g + 1) * per_group] = _exact_matmul(cols, wg.T, bound)
    acc = acc.reshape(n, oh, ow, cout)
    return _finish_conv(acc, b, p)


def _finish_conv(acc: np.ndarray, b: np.ndarray | None, p: ConvParams) -> np.ndarray:
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64).reshape(-1)
    acc = wrap_int32(acc)  # TFLM's int32 accumulator (wraps; sums are modular)
    mult = np.asarray(p.output_multiplier, dtype=np.int64)
    shift = np.asarray(p.output_shift, dtype=np.int64)
    return _requantize(acc, mult, shift, p.output_offset, p.act_min, p.act_max)


def depthwise_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                     p: DepthwiseConvParams) -> np.ndarray:
    """reference_integer_ops::DepthwiseConvPerChannel (int8, any depth multiplier):
    output channel o = c * depth_multiplier + m reads input channel c."""
    _check_4d("depthwise_conv2d", x, w)
    _check_offset("depthwise_conv2d input", p.input_offset)
    _, _, _, cin = x.shape
    _, kh, kw, cout = w.shape
    dm = p.depth_multiplier
    if cout != cin * dm:
        raise ValueError(f"depthwise_conv2d: {cout} output channels != {cin} input channels "
                         f"x depth multiplier {dm}")
    oh, ow = p.out_height, p.out_width
    need_h = (oh - 1) * p.stride_height + (kh - 1) * p.dilation_height + 1
    need_w = (ow - 1) * p.stride_width + (kw - 1) * p.dilation_width + 1
    xs = x.astype(np.int64) + p.input_offset
    if dm > 1:
        xs = np.repeat(xs, dm, axis=3)
    xp = _pad_spatial(xs, p.pad_top, p.pad_left, need_h, need_w, 0)
    w64 = w.astype(np.int64)
    acc = np.zeros((x.shape[0], oh, ow, cout), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            acc += _tap(xp, ky, kx, oh, ow, p.stride_height, p.stride_width,
                        p.dilation_height, p.dilation_width) * w64[0, ky, kx]
    return _finish_conv(acc, b, p)


def add(x1: np.ndarray, x2: np.ndarray, p: AddParams) -> np.ndarray:
    """reference_integer_ops::Add / BroadcastAdd (int8; numpy broadcasting)."""
    v1 = wrap_int32((x1.astype(np.int64) + p.input1_offset) << p.left_shift)
    v2 = wrap_int32((x2.astype(np.int64) + p.input2_offset) << p.left_shift)
    s1 = multiply_by_quantized_multiplier(v1, p.input1_multiplier, p.input1_shift)
    s2 = multiply_by_quantized_multiplier(v2, p.input2_multiplier, p.input2_shift)
    raw_sum = wrap_int32(s1 + s2)
    out = multiply_by_quantized_multiplier(raw_sum, p.output_multiplier, p.output_shift)
    out = out + p.output_offset
    return np.clip(out, p.act_min, p.act_max).astype(np.int8)


def mul(x1: np.ndarray, x2: np.ndarray, p: MulParams) -> np.ndarray:
    """reference_integer_ops::Mul / BroadcastMul (int8; numpy broadcasting): (in1 + off1)
    * (in2 + off2) -> MultiplyByQuantizedMultiplier -> + output offset -> clamp."""
    prod = wrap_int32((x1.astype(np.int64) + p.input1_offset)
                      * (x2.astype(np.int64) + p.input2_offset))
    return _requantize(prod, p.output_multiplier, p.output_shift, p.output_offset,
                       p.act_min, p.act_max)


def _pool_need(p: PoolParams) -> tuple[int, int]:
    return ((p.out_height - 1) * p.stride_height + p.filter_height,
            (p.out_width - 1) * p.stride_width + p.filter_width)


def average_pool(x: np.ndarray, p: PoolParams) -> np.ndarray:
    """reference_integer_ops::AveragePool (int8): mean over the in-image part of each
    window, rounded half away from zero by truncating division."""
    _check_4d("average_pool", x)
    need_h, need_w = _pool_need(p)
    xp = _pad_spatial(x.astype(np.int64), p.pad_top, p.pad_left, need_h, need_w, 0)
    ones = np.ones((1, *x.shape[1:3], 1), dtype=np.int64)
    mp = _pad_spatial(ones, p.pad_top, p.pad_left, need_h, need_w, 0)
    acc = np.zeros((x.shape[0], p.out_height, p.out_width, x.shape[3]), dtype=np.int64)
    count = np.zeros((1, p.out_height, p.out_width, 1), dtype=np.int64)
    for ky in range(p.filter_height):
        for kx in range(p.filter_width):
            args = (ky, kx, p.out_height, p.out_width, p.stride_height, p.stride_width, 1, 1)
            acc += _tap(xp, *args)
            count += _tap(mp, *args)
    if np.any(count == 0):
        raise ValueError("average_pool: a window lies entirely outside the input "
                         "(TFLM's AveragePool fails)")
    half = count // 2
    rounded = np.where(acc > 0, _trunc_div(acc + half, count), _trunc_div(acc - half, count))
    return np.clip(rounded, p.act_min, p.act_max).astype(np.int8)


def max_pool(x: np.ndarray, p: PoolParams) -> np.ndarray:
    """reference_integer_ops::MaxPool (int8): max over the in-image part of each window,
    starting from -128, then clamped to the activation range."""
    _check_4d("max_pool", x)
    need_h, need_w = _pool_need(p)
    xp = _pad_spatial(x, p.pad_top, p.pad_left, need_h, need_w, INT8_MIN)
    out = np.full((x.shape[0], p.out_height, p.out_width, x.shape[3]), INT8_MIN, np.int8)
    for ky in range(p.filter_height):
        for kx in range(p.filter_width):
            tap = _tap(xp, ky, kx, p.out_height, p.out_width, p.stride_height,
                       p.stride_width, 1, 1)
            np.maximum(out, tap, out=out)
    return np.clip(out, p.act_min, p.act_max).astype(np.int8)


def pad(x: np.ndarray, p: PadParams) -> np.ndarray:
    """reference_ops::Pad (PAD / PADV2, constant value)."""
    if len(p.paddings) != x.ndim:
        raise ValueError(f"pad: {len(p.paddings)} padding pairs for a {x.ndim}-D input")
    if any(lo < 0 or hi < 0 for lo, hi in p.paddings):
        raise ValueError(f"pad: negative padding {p.paddings}")
    return np.pad(x, p.paddings, constant_values=np.int8(p.pad_value)).astype(np.int8)


def fully_connected(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                    p: FullyConnectedParams, out_shape: tuple[int, ...] | None = None
                    ) -> np.ndarray:
    """reference_integer_ops::FullyConnected / FullyConnectedPerChannel (int8).

    x is read flat as (batches, accum_depth) with accum_depth = w.shape[-1]; the
    result has shape `out_shape` (TFLM's output tensor) or (batches, units).
    """
    depth = w.shape[-1]
    # TFLM takes the number of units from the output shape (rows of w beyond are unused)
    units = int(out_shape[-1]) if out_shape is not None else int(np.prod(w.shape[:-1]))
    if x.size % depth or units > np.prod(w.shape[:-1]):
        raise ValueError(f"fully_connected: input of {x.size} values, weights {w.shape}, "
                         f"{units} units")
    xs = x.reshape(-1, depth).astype(np.int64) + p.input_offset
    w64 = w.reshape(-1, depth)[:units].astype(np.int64)
    if not p.per_channel:
        w64 = w64 + p.weights_offset
    acc = _exact_matmul(xs, w64.T, depth * 255 * 256)
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64).reshape(-1)[:units]
    acc = wrap_int32(acc)
    mult = np.asarray(p.output_multiplier, dtype=np.int64)
    shift = np.asarray(p.output_shift, dtype=np.int64)
    if p.per_channel:
        mult, shift = mult[:units], shift[:units]
    out = _requantize(acc, mult, shift, p.output_offset, p.act_min, p.act_max)
    return out.reshape(out_shape) if out_shape is not None else out


def mean(x: np.ndarray, p: MeanParams) -> np.ndarray:
    """reference_ops::QuantizedMeanOrSum (int8 MEAN) as TFLM's reduce kernel runs it.

    The sum of each reduced group (int32), minus zero_point * count, is scaled by the
    Prepare multiplier with 1/count folded in: shift s = min(floor(log2 count), 32,
    31 + shift), multiplier' = (multiplier << s) // count, shift' = shift - s.
    """
    count = int(np.prod([x.shape[a] for a in p.axes], dtype=np.int64)) if p.axes else 1
    total = wrap_int32(np.sum(x.astype(np.int64), axis=p.axes, keepdims=p.keep_dims))
    if count == 0:
        return np.zeros(total.shape, dtype=np.int8)
    s = min(count.bit_length() - 1, 32, 31 + p.shift)
    if s < 0:
        raise ValueError(f"mean: shift {p.shift} is out of range")
    multiplier = (((p.multiplier << s) // count + (1 << 31)) % (1 << 32)) - (1 << 31)
    shifted_sum = wrap_int32(total - p.input_zero_point * count)
    out = multiply_by_quantized_multiplier(shifted_sum, multiplier, p.shift - s)
    out = out + p.output_zero_point
    return np.clip(out, INT8_MIN, INT8_MAX).astype(np.int8)


def requantize(x: np.ndarray, p: RequantizeParams) -> np.ndarray:
    """reference_ops::Requantize int8 -> int8 (QUANTIZE between two int8 scales)."""
    v = x.astype(np.int64) - p.input_zero_point
    out = multiply_by_quantized_multiplier(v, p.multiplier, p.shift) + p.output_zero_point
    return np.clip(out, INT8_MIN, INT8_MAX).astype(np.int8)


# --------------------------------------------------------------------------------------
# softmax (gemmlowp fixed-point exp and reciprocal, as TFLM's reference int8 softmax)
# --------------------------------------------------------------------------------------

_SOFTMAX_DIFF_INTEGER_BITS = 5  # scaled differences are Q5.26
_SOFTMAX_ACCUM_INTEGER_BITS = 12  # the sum of exps is Q12.19
# exp(-2**k) in Q0.31 for k = -2 .. 4: gemmlowp's barrel-shifter constants
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))
_EXP_MINUS_ONE_EIGHTH = 1895147668  # exp(-1/8) in Q0.31
_ONE_THIRD = 715827883  # 1/3 in Q0.31
_48_OVER_17 = 1515870810  # in Q2.29
_MINUS_32_OVER_17 = -1010580540  # in Q2.29


def softmax_params_from_scale(beta: float, input_scale: float) -> SoftmaxParams:
    """PreprocessSoftmaxScaling + CalculateInputRadius for 5 integer bits (default build)."""
    real = min(float(beta) * float(input_scale) * float(1 << (31 - _SOFTMAX_DIFF_INTEGER_BITS)),
               float((1 << 31) - 1))
    if not real > 1.0:
        raise ValueError(f"QuantizeMultiplierGreaterThanOne needs m > 1, got {real!r}")
    multiplier, left_shift = quantize_multiplier(real)
    if left_shift < 0:
        raise ValueError(f"QuantizeMultiplierGreaterThanOne({real!r}) gave shift {left_shift}")
    radius = math.floor(1.0 * ((1 << _SOFTMAX_DIFF_INTEGER_BITS) - 1)
                        * float(1 << (31 - _SOFTMAX_DIFF_INTEGER_BITS)) / float(1 << left_shift))
    return SoftmaxParams(input_multiplier=multiplier, input_left_shift=left_shift,
                         diff_min=-int(radius))


def _saturating_shift_left(x: IntArray, exponent: int) -> IntArray:
    """gemmlowp SaturatingRoundingMultiplyByPOT with a positive exponent (int32)."""
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN,
                                                       x << exponent))


def _fx_mul(a: IntArray | int, b: IntArray | int) -> IntArray:
    return saturating_rounding_doubling_high_mul(a, b)


def _exp_on_quarter_interval(a: IntArray) -> IntArray:
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: Taylor expansion around -1/8."""
    x = wrap_int32(a + (1 << 28))
    x2 = _fx_mul(x, x)
    x3 = _fx_mul(x2, x)
    x4 = _fx_mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(
        wrap_int32(_fx_mul(wrap_int32(x4_over_4 + x3), _ONE_THIRD) + x2), 1)
    return wrap_int32(_EXP_MINUS_ONE_EIGHTH
                      + _fx_mul(_EXP_MINUS_ONE_EIGHTH, wrap_int32(x + poly)))


def exp_on_negative_values(a: IntArray, integer_bits: int = _SOFTMAX_DIFF_INTEGER_BITS
                           ) -> IntArray:
    """gemmlowp exp_on_negative_values: Q<integer_bits> input (<= 0) -> Q0.31 result
    (integer_bits <= 5: gemmlowp's clamp at -32 applies only above 5)."""
    frac_bits = 31 - integer_bits
    one_quarter = 1 << (frac_bits - 2)
    a = np.asarray(a, dtype=np.int64)
    a_mod = wrap_int32((a & (one_quarter - 1)) - one_quarter)
    result = _exp_on_quarter_interval(_saturating_shift_left(a_mod, integer_bits))
    remainder = wrap_int32(a_mod - a)
    for exponent, multiplier in _EXP_BARREL:
        if exponent < integer_bits:
            bit = np.int64(1) << (frac_bits + exponent)
            result = np.where((remainder & bit) != 0, _fx_mul(result, multiplier), result)
    return np.where(a == 0, INT32_MAX, result)


def _rounding_half_sum_one(a: IntArray) -> IntArray:
    """gemmlowp RoundingHalfSum(a, F0::One()) for int32 a."""
    total = a + INT32_MAX
    return wrap_int32(_trunc_div(total + np.where(total >= 0, 1, -1), 2))


def _newton_reciprocal(half_denominator: IntArray) -> IntArray:
    """Three Newton-Raphson steps of gemmlowp's 1 / (1 + x): Q2.29 result."""
    x = wrap_int32(_48_OVER_17 + _fx_mul(half_denominator, _MINUS_32_OVER_17))
    for _ in range(3):
        one_minus = wrap_int32(_F2_ONE - _fx_mul(half_denominator, x))
        x = wrap_int32(x + _saturating_shift_left(_fx_mul(x, one_minus), 2))
    return x


def _one_over_one_plus_x(a: IntArray) -> IntArray:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1: Q0.31 in and out (Newton-Raphson)."""
    return _saturating_shift_left(_newton_reciprocal(_rounding_half_sum_one(a)), 1)


def _reciprocal(x: IntArray, integer_digits: int) -> tuple[IntArray, IntArray]:
    """TFLM's GetReciprocal: (Q0.31 scale, num_bits_over_unit) per value of x > 0."""
    x = np.asarray(x, dtype=np.int64)
    u = x & 0xFFFFFFFF
    clz = 32 - np.frompyfunc(int.bit_length, 1, 1)(u).astype(np.int64)
    bits_over_unit = integer_digits - clz
    shifted = wrap_int32(((u << clz) & 0xFFFFFFFF) - (1 << 31))
    return _one_over_one_plus_x(shifted), bits_over_unit


def softmax(x: np.ndarray, p: SoftmaxParams) -> np.ndarray:
    """reference_ops::Softmax int8 -> int8 over the last axis (output scale 1/256,
    zero point -128)."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.int64)
    diff = rows - rows.max(axis=1, keepdims=True)
    use = diff >= p.diff_min
    scaled = saturating_rounding_doubling_high_mul(
        wrap_int32(diff << p.input_left_shift), p.input_multiplier)
    exps = exp_on_negative_values(scaled)
    acc = rounding_divide_by_pot(exps, _SOFTMAX_ACCUM_INTEGER_BITS)
    sum_of_exps = wrap_int32(np.sum(np.where(use, acc, 0), axis=1, keepdims=True))
    scale, bits_over_unit = _reciprocal(sum_of_exps, _SOFTMAX_ACCUM_INTEGER_BITS)
    exponent = bits_over_unit + 31 - 8
    if np.any(exponent < 0) or np.any(exponent > 31):
        raise ValueError("softmax: reciprocal exponent out of [0, 31] (TFLM aborts)")
    unsat = rounding_divide_by_pot(_fx_mul(scale, exps), exponent)
    out = np.clip(unsat + INT8_MIN, INT8_MIN, INT8_MAX)
    out = np.where(use, out, INT8_MIN)
    return out.astype(np.int8).reshape(x.shape)


# --------------------------------------------------------------------------------------
# unary int8 -> int8 elementwise ops, as 256-entry tables
# --------------------------------------------------------------------------------------

INT8_VALUES = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int64)  # table index i <-> i - 128
_INT16_MIN, _INT16_MAX = -(1 << 15), (1 << 15) - 1
_F2_ONE = 1 << 29  # 1.0 in gemmlowp's Q2.29


@dataclass(frozen=True)
class ReluParams:
    """RELU (int8): TFLM's CalculateReluOpData (requantize, then clamp to [zp, 127])."""

    input_offset: int
    output_offset: int
    multiplier: int
    shift: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class ClampParams:
    """RELU6 (int8): TFLM's Relu6Quantized clamps to [zero, six] of the INPUT scale and
    does not requantize."""

    lower: int
    upper: int


@dataclass(frozen=True)
class LeakyReluParams:
    """LEAKY_RELU (int8): reference_ops::QuantizeLeakyRelu."""

    input_offset: int
    output_offset: int
    multiplier_identity: int
    shift_identity: int
    multiplier_alpha: int
    shift_alpha: int


@dataclass(frozen=True)
class HardSwishParams:
    """HARD_SWISH (int8): reference_ops::HardSwish, int16 fixed-point multipliers."""

    input_zero_point: int
    output_zero_point: int
    output_multiplier: int  # int16
    output_exponent: int
    reluish_multiplier: int  # int16
    reluish_exponent: int


@dataclass(frozen=True)
class SigmoidParams:
    """LOGISTIC or TANH (int8): reference_integer_ops::Logistic / Tanh (Q4.27 input)."""

    tanh: bool
    input_zero_point: int
    input_range_radius: int
    input_multiplier: int
    input_left_shift: int


UnaryParams = ReluParams | ClampParams | LeakyReluParams | HardSwishParams | SigmoidParams | \
    RequantizeParams


def lut(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Apply a 256-entry int8 table: out = table[x + 128] (the PATCH_EXEC LUT layer)."""
    return np.asarray(table, dtype=np.int8)[x.astype(np.int64) + 128]


def unary_table(p: UnaryParams) -> np.ndarray:
    """The op's output for every int8 input, in input order -128..127 (int8[256])."""
    x = INT8_VALUES
    if isinstance(p, ReluParams):
        v = multiply_by_quantized_multiplier(x - p.input_offset, p.multiplier, p.shift)
        out = np.clip(v + p.output_offset, p.act_min, p.act_max)
    elif isinstance(p, ClampParams):  # val > upper ? upper : val < lower ? lower : val
        out = np.where(x > p.upper, p.upper, np.where(x < p.lower, p.lower, x))
    elif isinstance(p, LeakyReluParams):
        out = _leaky_relu_values(x, p)
    elif isinstance(p, HardSwishParams):
        out = np.array([_hard_swish_value(int(v), p) for v in x], dtype=np.int64)
    elif isinstance(p, SigmoidParams):
        out = _sigmoid_values(x, p)
    else:
        return requantize(x, p)
    return np.asarray(out, dtype=np.int64).astype(np.int8)


def _leaky_relu_values(x: IntArray, p: LeakyReluParams) -> IntArray:
    """QuantizeLeakyRelu; a negative alpha multiplier is applied as -MBQM(x, |m|) (TFLM
    since 2025; the February 2023 TFLM computed MBQM(x, m), which can differ by one)."""
    v = x - p.input_offset
    pos = multiply_by_quantized_multiplier(v, p.multiplier_identity, p.shift_identity)
    neg = multiply_by_quantized_multiplier(v, abs(p.multiplier_alpha), p.shift_alpha)
    neg = -neg if p.multiplier_alpha < 0 else neg
    return np.clip(p.output_offset + np.where(v >= 0, pos, neg), INT8_MIN, INT8_MAX)


def _srdhm16(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul for int16."""
    if a == b == _INT16_MIN:
        return _INT16_MAX
    ab = a * b
    nudge = (1 << 14) if ab >= 0 else 1 - (1 << 14)
    return _c_div(ab + nudge, 1 << 15)


def _c_div(a: int, b: int) -> int:
    """C integer division (truncation toward zero), b > 0."""
    q = abs(a) // b
    return -q if a < 0 else q


def _sat16(v: int) -> int:
    return max(_INT16_MIN, min(_INT16_MAX, v))


def _rdbpot(x: int, exponent: int) -> int:
    return int(rounding_divide_by_pot(np.asarray(x, dtype=np.int64), exponent))


def _hard_swish_value(x: int, p: HardSwishParams) -> int:
    """reference_ops::HardSwish for one int8 value (int16 fixed point, as TFLM)."""
    v = _wrap16(x - p.input_zero_point)
    hires = _wrap16(v * (1 << 7))
    preshift_out = _srdhm16(hires, p.output_multiplier)
    reluish = hires
    if p.reluish_exponent > 0:
        reluish = _sat16(reluish * (1 << (p.reluish_exponent - 1)))
    reluish = _srdhm16(reluish, p.reluish_multiplier)
    if p.reluish_exponent > 0:
        reluish = _sat16(reluish * 2)
    if p.reluish_exponent < 0:
        reluish = _rdbpot(reluish, -p.reluish_exponent)
    reluish = _wrap16((reluish + (1 << 15)) >> 1)
    if reluish == preshift_out == _INT16_MIN:  # SaturatingDoublingHighMul
        pre = _INT16_MAX
    else:
        pre = _wrap16(_c_div(reluish * preshift_out, 1 << 15))
    out = _wrap16(_rdbpot(pre, -p.output_exponent) + p.output_zero_point)
    return max(INT8_MIN, min(INT8_MAX, out))


def _wrap16(v: int) -> int:
    return ((v + (1 << 15)) & 0xFFFF) - (1 << 15)


def _sigmoid_values(x: IntArray, p: SigmoidParams) -> IntArray:
    """reference_integer_ops::Logistic (output zero point -128, Q0.8) or Tanh (Q0.7)."""
    v = x - p.input_zero_point
    q4 = wrap_int32(multiply_by_quantized_multiplier(v, p.input_multiplier,
                                                     p.input_left_shift))
    if p.tanh:
        raw = _fx_tanh(q4)
        mid = np.clip(rounding_divide_by_pot(raw, 31 - 7), INT8_MIN, INT8_MAX)
    else:
        raw = _fx_logistic(q4)
        mid = np.clip(rounding_divide_by_pot(raw, 31 - 8) - 128, INT8_MIN, INT8_MAX)
    return np.where(v <= -p.input_range_radius, INT8_MIN,
                    np.where(v >= p.input_range_radius, INT8_MAX, mid))


def _fx_logistic(a: IntArray) -> IntArray:
    """gemmlowp::logistic of a Q4.27 value, Q0.31 result."""
    positive = a > 0
    abs_a = np.where(positive, a, wrap_int32(-a))
    if_positive = _one_over_one_plus_x(exp_on_negative_values(wrap_int32(-abs_a), 4))
    if_negative = wrap_int32(INT32_MAX - if_positive)
    return np.where(a == 0, 1 << 30, np.where(positive, if_positive, if_negative))


def _fx_tanh(a: IntArray) -> IntArray:
    """gemmlowp::tanh of a Q4.27 value, Q0.31 result."""
    negative = a < 0
    n = np.where(negative, a, wrap_int32(-a))
    e = exp_on_negative_values(n, 5)  # ExactMulByPot<1>: the same raw value as Q5.26
    half_denominator = _rounding_half_sum_one(e)
    x = _newton_reciprocal(half_denominator)
    t = _saturating_shift_left(wrap_int32(x - _F2_ONE), 2)
    return np.where(a == 0, 0, np.where(negative, wrap_int32(-t), t))


@dataclass(frozen=True)
class ConcatParams:
    """CONCATENATION (int8): TFLM requires every input's scale and zero point to equal the
    output's and no fused activation, so the op is a copy along `axis` (>= 0)."""

    axis: int


def concatenation(xs: list[np.ndarray], p: ConcatParams) -> np.ndarray:
    """reference_ops::Concatenation for int8 with equal quantization: a copy."""
    return np.concatenate([np.asarray(x, dtype=np.int8) for x in xs], axis=p.axis)
