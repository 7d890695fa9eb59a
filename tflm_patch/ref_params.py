"""Integer parameters of each op, derived from a model exactly as TFLM's Prepare does,
and a whole-graph int8 runner over the `tflm_patch.ref_ops` kernels.

`params_for(model, op)` replays the Prepare step of TFLM's micro kernel for the op
(conv_common.cc, depthwise_conv_common.cc, add_common.cc, pooling_common.cc,
pad_common.cc, fully_connected_common.cc, reduce_common.cc, quantize_common.cc,
softmax_common.cc): the same float32 -> float64 casts in the same order before
QuantizeMultiplier, the same padding rule (ComputePaddingHeightWidth) and activation
range (CalculateActivationRangeQuantized). Where TFLM's Prepare would fail or abort,
it raises `UnsupportedModelError` with the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tflm_patch import ref_ops
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo, TensorInfo

log = logging.getLogger(__name__)

# ActivationFunctionType and Padding values of the TFLite schema
ACT_NONE, ACT_RELU, ACT_RELU_N1_TO_1, ACT_RELU6 = 0, 1, 2, 3
PADDING_SAME, PADDING_VALID = 0, 1

Params = Any  # one of the ref_ops parameter dataclasses, or None for data-movement ops


@dataclass(frozen=True)
class TensorQuant:
    """What TFLM's TfLiteTensor.params holds: the first scale (float32) and zero point."""

    scale: float
    zero_point: int


def _fail(op: OperatorInfo, reason: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"operator {op.index} ({op.name}): {reason}")


def _tensor(model: Model, op: OperatorInfo, index: int) -> TensorInfo:
    if index < 0:
        raise _fail(op, "a required input is omitted")
    return model.tensors[index]


def _quant(model: Model, op: OperatorInfo, index: int) -> TensorQuant:
    t = _tensor(model, op, index)
    q = t.quantization
    if q is None or not q.scale:
        raise _fail(op, f"tensor {index} ('{t.name}') has no quantization parameters")
    zp = q.zero_point[0] if q.zero_point else 0
    return TensorQuant(float(np.float32(q.scale[0])), int(zp))


def _require_dtype(model: Model, op: OperatorInfo, index: int, *dtypes: str) -> None:
    t = _tensor(model, op, index)
    if t.dtype not in dtypes:
        raise _fail(op, f"tensor {index} ('{t.name}') is {t.dtype}; supported: "
                        f"{', '.join(dtypes)}")


def _options(op: OperatorInfo) -> Any:
    if op.options is None:
        raise _fail(op, "builtin options are missing")
    return op.options


def _quantize_multiplier(op: OperatorInfo, real: float, what: str) -> tuple[int, int]:
    try:
        return ref_ops.quantize_multiplier(real)
    except ValueError as e:
        raise _fail(op, f"{what}: TFLM would abort ({e})") from None


def activation_range(op: OperatorInfo, activation: int, out: TensorQuant) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for an int8 output."""
    lo, hi = ref_ops.INT8_MIN, ref_ops.INT8_MAX
    try:
        if activation in (ACT_RELU, ACT_RELU6):
            lo = max(lo, ref_ops.quantize_value(0.0, out.scale, out.zero_point))
        if activation == ACT_RELU6:
            hi = min(hi, ref_ops.quantize_value(6.0, out.scale, out.zero_point))
        if activation == ACT_RELU_N1_TO_1:
            lo = max(lo, ref_ops.quantize_value(-1.0, out.scale, out.zero_point))
            hi = min(hi, ref_ops.quantize_value(1.0, out.scale, out.zero_point))
    except ValueError as e:
        raise _fail(op, f"activation range: {e}") from None
    return lo, hi


def _out_size(padding: int, size: int, filt: int, stride: int, dilation: int) -> int:
    effective = (filt - 1) * dilation + 1
    if padding == PADDING_SAME:
        return (size + stride - 1) // stride
    return max((size + stride - effective) // stride, 0)


def compute_padding(op: OperatorInfo, padding: int, stride: int, dilation: int, size: int,
                    filt: int) -> int:
    """ComputePaddingHeightWidth along one axis: floor(total padding / 2)."""
    if padding not in (PADDING_SAME, PADDING_VALID):
        raise _fail(op, f"unknown padding type {padding}")
    if stride <= 0 or dilation <= 0 or filt <= 0:
        raise _fail(op, f"invalid stride {stride}, dilation {dilation} or filter size {filt}")
    out = _out_size(padding, size, filt, stride, dilation)
    total = (out - 1) * stride + (filt - 1) * dilation + 1 - size
    return max(total, 0) // 2


def _spatial_out(model: Model, op: OperatorInfo) -> tuple[int, int]:
    shape = model.tensors[op.outputs[0]].shape
    if len(shape) != 4:
        raise _fail(op, f"output shape {shape} is not 4-D NHWC")
    return shape[1], shape[2]


def _conv_multipliers(model: Model, op: OperatorInfo, num_channels: int
                      ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """PopulateConvolutionQuantizationParams' per-channel loop."""
    inp, out = _quant(model, op, op.inputs[0]), _quant(model, op, op.outputs[0])
    filt = _tensor(model, op, op.inputs[1])
    q = filt.quantization
    if q is None or not q.scale:
        raise _fail(op, "the filter has no quantization parameters")
    per_channel = len(q.scale) > 1
    if per_channel and (len(q.scale) != num_channels
                        or filt.shape[q.quantized_dimension] != num_channels):
        raise _fail(op, f"{len(q.scale)} filter scales for {num_channels} channels")
    mults, shifts = [], []
    for i in range(num_channels):
        filter_scale = float(np.float32(q.scale[i] if per_channel else q.scale[0]))
        effective = inp.scale * filter_scale / out.scale  # double, left to right
        m, s = _quantize_multiplier(op, effective, f"channel {i} multiplier")
        mults.append(m)
        shifts.append(s)
    return tuple(mults), tuple(shifts)


def _check_conv_types(model: Model, op: OperatorInfo) -> None:
    if len(op.inputs) not in (2, 3) or len(op.outputs) != 1:
        raise _fail(op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs")
    _require_dtype(model, op, op.inputs[0], "int8")
    _require_dtype(model, op, op.inputs[1], "int8")
    _require_dtype(model, op, op.outputs[0], "int8")
    if len(op.inputs) == 3 and op.inputs[2] >= 0:
        _require_dtype(model, op, op.inputs[2], "int32")
    for t in (op.inputs[0], op.outputs[0]):
        if len(model.tensors[t].shape) != 4:
            raise _fail(op, f"tensor {t} is not 4-D NHWC")


def conv_params(model: Model, op: OperatorInfo) -> ref_ops.ConvParams:
    """ConvPrepare + CalculateOpDataConv + ConvParamsQuantized."""
    _check_conv_types(model, op)
    o = _options(op)
    in_shape = model.tensors[op.inputs[0]].shape
    f_shape = model.tensors[op.inputs[1]].shape
    if len(f_shape) != 4:
        raise _fail(op, f"filter shape {f_shape} is not 4-D")
    return ref_ops.ConvParams(**_conv_common(model, op, o, in_shape, f_shape, f_shape[0]))


def _conv_common(model: Model, op: OperatorInfo, o: Any, in_shape: Sequence[int],
                 f_shape: Sequence[int], num_channels: int) -> dict[str, Any]:
    inp, out = _quant(model, op, op.inputs[0]), _quant(model, op, op.outputs[0])
    mults, shifts = _conv_multipliers(model, op, num_channels)
    act_min, act_max = activation_range(op, int(o.fusedActivationFunction), out)
    oh, ow = _spatial_out(model, op)
    return dict(
        input_offset=-inp.zero_point, output_offset=out.zero_point,
        output_multiplier=mults, output_shift=shifts,
        stride_height=int(o.strideH), stride_width=int(o.strideW),
        dilation_height=int(o.dilationHFactor), dilation_width=int(o.dilationWFactor),
        pad_top=compute_padding(op, int(o.padding), int(o.strideH), int(o.dilationHFactor),
                                in_shape[1], f_shape[1]),
        pad_left=compute_padding(op, int(o.padding), int(o.strideW), int(o.dilationWFactor),
                                 in_shape[2], f_shape[2]),
        out_height=oh, out_width=ow, act_min=act_min, act_max=act_max)


def depthwise_params(model: Model, op: OperatorInfo) -> ref_ops.DepthwiseConvParams:
    """DepthwiseConvPrepare + CalculateOpDataDepthwiseConv + DepthwiseConvParamsQuantized."""
    _check_conv_types(model, op)
    o = _options(op)
    in_shape = model.tensors[op.inputs[0]].shape
    f_shape = model.tensors[op.inputs[1]].shape
    if len(f_shape) != 4:
        raise _fail(op, f"filter shape {f_shape} is not 4-D")
    dm = int(o.depthMultiplier)
    if dm <= 0 or f_shape[3] != in_shape[3] * dm:
        raise _fail(op, f"depth multiplier {dm} does not match {in_shape[3]} input and "
                        f"{f_shape[3]} filter channels")
    common = _conv_common(model, op, o, in_shape, f_shape, f_shape[3])
    return ref_ops.DepthwiseConvParams(**common, depth_multiplier=dm)


def _binary_int8_quant(model: Model, op: OperatorInfo
                       ) -> tuple[TensorQuant, TensorQuant, TensorQuant]:
    """The quantization of a two-input int8 operator's inputs and output (checked)."""
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        raise _fail(op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs")
    for t in (*op.inputs, op.outputs[0]):
        _require_dtype(model, op, t, "int8")
    return (_quant(model, op, op.inputs[0]), _quant(model, op, op.inputs[1]),
            _quant(model, op, op.outputs[0]))


def add_params(model: Model, op: OperatorInfo) -> ref_ops.AddParams:
    """AddPrepare -> CalculateOpDataAdd (int8)."""
    q1, q2, out = _binary_int8_quant(model, op)
    left_shift = 20
    twice_max = 2 * max(q1.scale, q2.scale)  # std::max on float32, then double
    real1 = q1.scale / twice_max
    real2 = q2.scale / twice_max
    real_out = twice_max / ((1 << left_shift) * out.scale)
    try:
        m1, s1 = ref_ops.quantize_multiplier_smaller_than_one_exp(real1)
        m2, s2 = ref_ops.quantize_multiplier_smaller_than_one_exp(real2)
        mo, so = ref_ops.quantize_multiplier_smaller_than_one_exp(real_out)
    except ValueError as e:
        raise _fail(op, f"TFLM would abort: {e}") from None
    activation = int(op.options.fusedActivationFunction) if op.options is not None else 0
    act_min, act_max = activation_range(op, activation, out)
    return ref_ops.AddParams(
        input1_offset=-q1.zero_point, input2_offset=-q2.zero_point, left_shift=left_shift,
        input1_multiplier=m1, input1_shift=s1, input2_multiplier=m2, input2_shift=s2,
        output_multiplier=mo, output_shift=so, output_offset=out.zero_point,
        act_min=act_min, act_max=act_max)


def mul_params(model: Model, op: OperatorInfo) -> ref_ops.MulParams:
    """MulPrepare -> CalculateOpDataMul (int8): real multiplier = s1 * s2 / s_out in
    double from the float32 scales."""
    q1, q2, out = _binary_int8_quant(model, op)
    mult, shift = _quantize_multiplier(op, q1.scale * q2.scale / out.scale,
                                       "output multiplier")
    activation = int(op.options.fusedActivationFunction) if op.options is not None else 0
    act_min, act_max = activation_range(op, activation, out)
    return ref_ops.MulParams(input1_offset=-q1.zero_point, input2_offset=-q2.zero_point,
                             output_multiplier=mult, output_shift=shift,
                             output_offset=out.zero_point, act_min=act_min, act_max=act_max)


def pool_params(model: Model, op: OperatorInfo) -> ref_ops.PoolParams:
    """PoolingPrepare -> CalculateOpDataPooling (int8)."""
    _require_dtype(model, op, op.inputs[0], "int8")
    _require_dtype(model, op, op.outputs[0], "int8")
    o = _options(op)
    inp, out = _quant(model, op, op.inputs[0]), _quant(model, op, op.outputs[0])
    if float(abs(np.float32(inp.scale) - np.float32(out.scale))) > 1.0e-6 or \
            inp.zero_point != out.zero_point:
        raise _fail(op, "input and output quantization differ (TFLM's Prepare fails)")
    in_shape = model.tensors[op.inputs[0]].shape
    if len(in_shape) != 4:
        raise _fail(op, f"input shape {in_shape} is not 4-D NHWC")
    fh, fw = int(o.filterHeight), int(o.filterWidth)
    act_min, act_max = activation_range(op, int(o.fusedActivationFunction), out)
    oh, ow = _spatial_out(model, op)
    return ref_ops.PoolParams(
        filter_height=fh, filter_width=fw,
        stride_height=int(o.strideH), stride_width=int(o.strideW),
        pad_top=compute_padding(op, int(o.padding), int(o.strideH), 1, in_shape[1], fh),
        pad_left=compute_padding(op, int(o.padding), int(o.strideW), 1, in_shape[2], fw),
        out_height=oh, out_width=ow, act_min=act_min, act_max=act_max)


def _constant(model: Model, op: OperatorInfo, index: int, what: str) -> np.ndarray:
    t = _tensor(model, op, index)
    if not t.is_constant:
        raise _fail(op, f"the {what} tensor {index} is not constant")
    return model.constant(index)


def pad_params(model: Model, op: OperatorInfo) -> ref_ops.PadParams:
    """PadPrepare (PAD and PADV2, int8)."""
    if len(op.inputs) not in (2, 3):
        raise _fail(op, f"{len(op.inputs)} inputs")
    _require_dtype(model, op, op.inputs[0], "int8")
    _require_dtype(model, op, op.outputs[0], "int8")
    _require_dtype(model, op, op.inputs[1], "int32")
    paddings = _constant(model, op, op.inputs[1], "paddings").astype(np.int64)
    in_shape = model.tensors[op.inputs[0]].shape
    out_shape = model.tensors[op.outputs[0]].shape
    if paddings.size != 2 * len(out_shape) or len(in_shape) != len(out_shape) \
            or len(in_shape) > 5:
        raise _fail(op, f"paddings of shape {paddings.shape} for a {len(in_shape)}-D input")
    pairs = tuple((int(a), int(b)) for a, b in paddings.reshape(-1, 2))
    for dim, (i, o, (lo, hi)) in enumerate(zip(in_shape, out_shape, pairs, strict=True)):
        if lo < 0 or hi < 0 or i + lo + hi != o:
            raise _fail(op, f"padding {lo, hi} of dimension {dim} does not turn {i} into {o}")
    out = _quant(model, op, op.outputs[0])
    if len(op.inputs) == 3 and op.inputs[2] >= 0:
        _require_dtype(model, op, op.inputs[2], "int8")
        value = _constant(model, op, op.inputs[2], "constant_values").reshape(-1)
        cq = _quant(model, op, op.inputs[2])
        if value.size != 1 or cq.zero_point != out.zero_point or cq.scale != out.scale:
            raise _fail(op, "constant_values must be one int8 quantized like the output")
        pad_value = int(value[0])
    else:
        if not ref_ops.INT8_MIN <= out.zero_point <= ref_ops.INT8_MAX:
            raise _fail(op, f"output zero point {out.zero_point} is not int8")
        pad_value = out.zero_point
    return ref_ops.PadParams(paddings=pairs, pad_value=pad_value)


def fully_connected_params(model: Model, op: OperatorInfo) -> ref_ops.FullyConnectedParams:
    """FullyConnectedPrepare -> CalculateOpDataFullyConnected (int8)."""
    if len(op.inputs) not in (2, 3) or len(op.outputs) != 1:
        raise _fail(op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs")
    _require_dtype(model, op, op.inputs[0], "int8")
    _require_dtype(model, op, op.inputs[1], "int8")
    _require_dtype(model, op, op.outputs[0], "int8")
    has_bias = len(op.inputs) == 3 and op.inputs[2] >= 0
    if has_bias:
        _require_dtype(model, op, op.inputs[2], "int32")
    inp, out = _quant(model, op, op.inputs[0]), _quant(model, op, op.outputs[0])
    filt = _tensor(model, op, op.inputs[1])
    fq = filt.quantization
    if fq is None or not fq.scale:
        raise _fail(op, "the weights have no quantization parameters")
    per_channel = len(fq.scale) > 1
    if per_channel:
        if filt.shape[fq.quantized_dimension] != len(fq.scale):
            raise _fail(op, f"{len(fq.scale)} weight scales for shape {filt.shape}")
        mults, shifts = [], []
        for i, s in enumerate(fq.scale):
            effective = inp.scale * float(np.float32(s)) / out.scale
            m, sh = _quantize_multiplier(op, effective, f"channel {i} multiplier")
            mults.append(m)
            shifts.append(sh)
        mult_t, shift_t = tuple(mults), tuple(shifts)
    else:
        filter_scale = float(np.float32(fq.scale[0]))
        product = inp.scale * filter_scale
        if has_bias:
            bq = model.tensors[op.inputs[2]].quantization
            bias_scale = float(np.float32(bq.scale[0])) if bq is not None and bq.scale else 0.0
            if abs(product - bias_scale) / out.scale > 0.02:
                raise _fail(op, "bias scale differs from input scale x weight scale "
                                "(TFLM's Prepare fails)")
        # GetQuantizedConvolutionMultipler: the scale product is taken in float32
        real = float(np.float32(inp.scale) * np.float32(filter_scale)) / out.scale
        if real < 0:
            raise _fail(op, "negative input x weight scale")
        m, sh = _quantize_multiplier(op, real, "output multiplier")
        mult_t, shift_t = (m,), (sh,)
    fzp = fq.zero_point[0] if fq.zero_point else 0
    activation = int(op.options.fusedActivationFunction) if op.options is not None else 0
    act_min, act_max = activation_range(op, activation, out)
    return ref_ops.FullyConnectedParams(
        input_offset=-inp.zero_point, weights_offset=-int(fzp), output_offset=out.zero_point,
        output_multiplier=mult_t, output_shift=shift_t, per_channel=per_channel,
        act_min=act_min, act_max=act_max)


def mean_params(model: Model, op: OperatorInfo) -> ref_ops.MeanParams:
    """PrepareMeanOrSumHelper (int8) and the axis resolution of QuantizedMeanOrSum."""
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        raise _fail(op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs")
    _require_dtype(model, op, op.inputs[0], "int8")
    _require_dtype(model, op, op.outputs[0], "int8")
    _require_dtype(model, op, op.inputs[1], "int32")
    inp, out = _quant(model, op, op.inputs[0]), _quant(model, op, op.outputs[0])
    ndim = len(model.tensors[op.inputs[0]].shape)
    axes: list[int] = []
    for a in _constant(model, op, op.inputs[1], "axis").reshape(-1):
        resolved = int(a) + ndim if a < 0 else int(a)
        if not 0 <= resolved < ndim:
            raise _fail(op, f"axis {int(a)} out of range for {ndim} dimensions")
        if resolved not in axes:
            axes.append(resolved)
    m, s = _quantize_multiplier(op, inp.scale / out.scale, "mean multiplier")
    keep = bool(op.options.keepDims) if op.options is not None else False
    return ref_ops.MeanParams(axes=tuple(axes), keep_dims=keep,
                              input_zero_point=inp.zero_point,
                              output_zero_point=out.zero_point, multiplier=m, shift=s)


def quantize_params(model: Model, op: OperatorInfo) -> ref_ops.RequantizeParams:
    """QUANTIZE int8 -> int8 (PrepareQuantizeReference)."""
    _require_dtype(model, op, op.inputs[0], "int8")
    _require_dtype(model, op, op.outputs[0], "int8")
    inp, out = _quant(model, op, op.inputs[0]), _quant(model, op, op.outputs[0])
    m, s = _quantize_multiplier(op, inp.scale / out.scale, "requantize multiplier")
    return ref_ops.RequantizeParams(multiplier=m, shift=s, input_zero_point=inp.zero_point,
                                    output_zero_point=out.zero_point)


def softmax_params(model: Model, op: OperatorInfo) -> ref_ops.SoftmaxParams:
    """CalculateSoftmaxParams (int8 -> int8)."""
    _require_dtype(model, op, op.inputs[0], "int8")
    _require_dtype(model, op, op.outputs[0], "int8")
    inp, out = _quant(model, op, op.inputs[0]), _quant(model, op, op.outputs[0])
    if out.zero_point != -128 or np.float32(out.scale) != np.float32(1.0 / 256):
        raise _fail(op, "an int8 softmax output must have scale 1/256 and zero point -128")
    beta = float(np.float32(op.options.beta)) if op.options is not None else 0.0
    try:
        return ref_ops.softmax_params_from_scale(beta, inp.scale)
    except ValueError as e:
        raise _fail(op, f"TFLM would abort: {e}") from None


def _int8_unary(model: Model, op: OperatorInfo) -> tuple[TensorQuant, TensorQuant]:
    """The input and output quantization of an int8 -> int8 unary op."""
    _require_dtype(model, op, op.inputs[0], "int8")
    _require_dtype(model, op, op.outputs[0], "int8")
    return _quant(model, op, op.inputs[0]), _quant(model, op, op.outputs[0])


def _f32(x: float) -> np.float32:
    return np.float32(x)


def relu_params(model: Model, op: OperatorInfo) -> ref_ops.ReluParams:
    """RELU (activations_common.cc CalculateReluOpData<int8_t>)."""
    inp, out = _int8_unary(model, op)
    m, s = _quantize_multiplier(op, float(_f32(inp.scale) / _f32(out.scale)), "relu multiplier")
    act_min = max(ref_ops.INT8_MIN, out.zero_point)  # zp + roundf(0.0f / scale)
    return ref_ops.ReluParams(inp.zero_point, out.zero_point, m, s, act_min, ref_ops.INT8_MAX)


def relu6_params(model: Model, op: OperatorInfo) -> ref_ops.ClampParams:
    """RELU6 (Relu6Prepare): clamp to [zero point, FloatToQuantizedType(6.0f)] of the
    input; TFLM ignores the output quantization."""
    inp, _ = _int8_unary(model, op)
    quotient = _f32(6.0) / _f32(inp.scale)
    if not np.isfinite(quotient):
        raise _fail(op, f"6.0 / scale {inp.scale} is not finite")
    six = ref_ops._round_half_away(float(quotient)) + inp.zero_point
    six = min(max(six, ref_ops.INT8_MIN), ref_ops.INT8_MAX)
    return ref_ops.ClampParams(inp.zero_point, six)


def leaky_relu_params(model: Model, op: OperatorInfo) -> ref_ops.LeakyReluParams:
    """LEAKY_RELU (leaky_relu_common.cc CalculateOpDataLeakyRelu): float32 products."""
    inp, out = _int8_unary(model, op)
    alpha = _f32(_options(op).alpha)
    ma, sa = _quantize_multiplier(op, float(_f32(inp.scale) * alpha / _f32(out.scale)),
                                  "alpha multiplier")
    mi, si = _quantize_multiplier(op, float(_f32(inp.scale) / _f32(out.scale)),
                                  "identity multiplier")
    return ref_ops.LeakyReluParams(inp.zero_point, out.zero_point, mi, si, ma, sa)


def _int16_multiplier(op: OperatorInfo, real: float, what: str) -> tuple[int, int]:
    """QuantizeMultiplier, then DownScaleInt32ToInt16Multiplier."""
    m, s = _quantize_multiplier(op, real, what)
    if m < 0:
        raise _fail(op, f"{what} {real} is negative")
    m16 = (1 << 15) - 1 if m >= ref_ops.INT32_MAX - (1 << 15) else (m + (1 << 15)) >> 16
    return m16, s


def hard_swish_params(model: Model, op: OperatorInfo) -> ref_ops.HardSwishParams:
    """HARD_SWISH (hard_swish_common.cc HardSwishPrepare)."""
    inp, out = _int8_unary(model, op)
    hires = _f32(1.0 / 128.0) * _f32(inp.scale)
    om, oe = _int16_multiplier(op, float(hires / _f32(out.scale)), "output multiplier")
    if oe > 0:
        raise _fail(op, f"output multiplier exponent {oe} > 0 (TFLM's Prepare fails)")
    rm, re_ = _int16_multiplier(op, float(hires / _f32(3.0 / 32768.0)), "reluish multiplier")
    return ref_ops.HardSwishParams(inp.zero_point, out.zero_point, om, oe, rm, re_)


def _sigmoid_params(model: Model, op: OperatorInfo, tanh: bool) -> ref_ops.SigmoidParams:
    """LOGISTIC / TANH int8 Prepare: multiplier of scale * 2^27 by frexp, input radius."""
    inp, out = _int8_unary(model, op)
    if not tanh and out.zero_point != ref_ops.INT8_MIN:
        raise _fail(op, f"output zero point {out.zero_point} is not -128 (TFLM's Prepare "
                        "fails)")
    q, left_shift = math.frexp(inp.scale * float(1 << 27))
    multiplier = ref_ops._round_half_away(q * float(1 << 31))
    if multiplier > ref_ops.INT32_MAX or not 0 <= left_shift <= 31:
        raise _fail(op, f"input scale {inp.scale} is outside what TFLM's int8 kernel handles")
    radius = math.floor(15.0 * float(1 << 27) / float(1 << left_shift))
    return ref_ops.SigmoidParams(tanh, inp.zero_point, radius, multiplier, left_shift)


def logistic_params(model: Model, op: OperatorInfo) -> ref_ops.SigmoidParams:
    return _sigmoid_params(model, op, tanh=False)


def tanh_params(model: Model, op: OperatorInfo) -> ref_ops.SigmoidParams:
    return _sigmoid_params(model, op, tanh=True)


_MAX_CONCAT_INPUTS = 10  # concatenation.cc kMaxInputNum


def concat_params(model: Model, op: OperatorInfo) -> ref_ops.ConcatParams:
    """CONCATENATION (ConcatenationPrepare, int8): no fused activation, at most 10
    inputs, each with the output's scale and zero point (no requantization)."""
    o = _options(op)
    if int(o.fusedActivationFunction) != ACT_NONE:
        raise _fail(op, "a fused activation (TFLM's Prepare requires none)")
    if not 1 <= len(op.inputs) <= _MAX_CONCAT_INPUTS:
        raise _fail(op, f"{len(op.inputs)} inputs (TFLM takes 1..{_MAX_CONCAT_INPUTS})")
    out = _quant(model, op, op.outputs[0])
    _require_dtype(model, op, op.outputs[0], "int8")
    for t in op.inputs:
        _require_dtype(model, op, t, "int8")
        if _quant(model, op, t) != out:
            raise _fail(op, f"input tensor {t} is quantized unlike the output (TFLM's int8 "
                            "concatenation does not requantize)")
    rank = len(model.tensors[op.outputs[0]].shape)
    axis = int(o.axis)
    return ref_ops.ConcatParams(axis + rank if axis < 0 else axis)


LUT_OPS = frozenset({"RELU", "RELU6", "LEAKY_RELU", "HARD_SWISH", "LOGISTIC", "TANH",
                     "QUANTIZE"})


def unary_table(model: Model, op: OperatorInfo) -> np.ndarray:
    """The int8[256] table of a unary int8 -> int8 op (LUT_OPS): entry i is the op's
    output for the input i - 128, computed by emulating TFLM's kernel."""
    if op.name not in LUT_OPS:
        raise _fail(op, f"{op.name} is not a unary op with a table ({', '.join(sorted(LUT_OPS))})")
    return ref_ops.unary_table(params_for(model, op))


_PARAMS: dict[str, Callable[[Model, OperatorInfo], Params]] = {
    "CONV_2D": conv_params,
    "DEPTHWISE_CONV_2D": depthwise_params,
    "ADD": add_params,
    "AVERAGE_POOL_2D": pool_params,
    "MAX_POOL_2D": pool_params,
    "PAD": pad_params,
    "PADV2": pad_params,
    "FULLY_CONNECTED": fully_connected_params,
    "MEAN": mean_params,
    "MUL": mul_params,
    "QUANTIZE": quantize_params,
    "SOFTMAX": softmax_params,
    "RELU": relu_params,
    "RELU6": relu6_params,
    "LEAKY_RELU": leaky_relu_params,
    "HARD_SWISH": hard_swish_params,
    "LOGISTIC": logistic_params,
    "TANH": tanh_params,
    "CONCATENATION": concat_params,
}

# ops that only move bytes: no integer parameters
_DATA_MOVEMENT = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE"})

SUPPORTED_OPS: frozenset[str] = frozenset(_PARAMS) | _DATA_MOVEMENT


def params_for(model: Model, op: OperatorInfo) -> Params:
    """The integer parameters TFLM's Prepare computes for `op` (None for RESHAPE etc.)."""
    if op.name in _DATA_MOVEMENT:
        return None
    make = _PARAMS.get(op.name)
    if make is None:
        raise _fail(op, f"no int8 reference kernel for {op.name} (supported: "
                        f"{', '.join(sorted(SUPPORTED_OPS))})")
    return make(model, op)


def _optional(model: Model, index: int) -> np.ndarray | None:
    return model.constant(index) if index >= 0 else None


def _full_inputs(model: Model, op: OperatorInfo, inputs: Sequence[np.ndarray]
                 ) -> list[np.ndarray | None]:
    """One array (or None for an omitted input) per entry of op.inputs."""
    present = [t for t in op.inputs if t >= 0]
    activations = model.activation_inputs(op)
    given = list(inputs)
    if len(given) == len(present) and len(present) != len(activations):
        feed = dict(zip(present, given, strict=True))
    elif len(given) == len(activations):
        feed = dict(zip(activations, given, strict=True))
    else:
        raise ValueError(f"operator {op.index} ({op.name}) takes {len(activations)} "
                         f"activation input(s), got {len(given)} array(s)")
    result: list[np.ndarray | None] = []
    for t in op.inputs:
        if t < 0:
            result.append(None)
        elif t in feed:
            result.append(np.asarray(feed[t]).reshape(model.tensors[t].shape))
        else:
            result.append(model.constant(t))
    return result


def run_op(model: Model, op: OperatorInfo, inputs: Sequence[np.ndarray],
           params: Params = None) -> np.ndarray:
    """Run one op with the reference kernels: `inputs` are its activation (non-constant)
    inputs in order (or all its present inputs); constants come from the model. The
    result has the shape of the op's output tensor."""
    p = params_for(model, op) if params is None else params
    args = _full_inputs(model, op, inputs)
    out_shape = model.tensors[op.outputs[0]].shape
    result = _dispatch(op, args, p, out_shape)
    if result.size != int(np.prod(out_shape, dtype=np.int64)):
        raise UnsupportedModelError(f"operator {op.index} ({op.name}): computed "
                                    f"{result.shape}, the output tensor is {out_shape}")
    return result.reshape(out_shape)


def _arg(args: list[np.ndarray | None], i: int) -> np.ndarray:
    a = args[i]
    if a is None:
        raise ValueError(f"input {i} is missing")
    return a


def _dispatch(op: OperatorInfo, args: list[np.ndarray | None], p: Params,
              out_shape: tuple[int, ...]) -> np.ndarray:
    name = op.name
    x = _arg(args, 0)
    if name == "CONV_2D":
        return ref_ops.conv2d(x, _arg(args, 1), args[2] if len(args) > 2 else None, p)
    if name == "DEPTHWISE_CONV_2D":
        return ref_ops.depthwise_conv2d(x, _arg(args, 1), args[2] if len(args) > 2 else None,
                                        p)
    if name == "ADD":
        return ref_ops.add(x, _arg(args, 1), p)
    if name == "MUL":
        return ref_ops.mul(x, _arg(args, 1), p)
    if name == "AVERAGE_POOL_2D":
        return ref_ops.average_pool(x, p)
    if name == "MAX_POOL_2D":
        return ref_ops.max_pool(x, p)
    if name in ("PAD", "PADV2"):
        return ref_ops.pad(x, p)
    if name == "FULLY_CONNECTED":
        bias = args[2] if len(args) > 2 else None
        return ref_ops.fully_connected(x, _arg(args, 1), bias, p, out_shape)
    if name == "MEAN":
        return ref_ops.mean(x, p)
    if name == "QUANTIZE":
        return ref_ops.requantize(x, p)
    if name in LUT_OPS:
        return ref_ops.lut(x, ref_ops.unary_table(p))
    if name == "CONCATENATION":
        return ref_ops.concatenation([a for a in args if a is not None], p)
    if name == "SOFTMAX":
        return ref_ops.softmax(x, p)
    if name == "TRANSPOSE":
        perm = _arg(args, 1).reshape(-1).astype(np.int64)
        return np.ascontiguousarray(np.transpose(x, tuple(int(i) for i in perm)))
    if name in _DATA_MOVEMENT:  # RESHAPE, SQUEEZE, EXPAND_DIMS: same bytes, new shape
        return x.reshape(out_shape)
    raise _fail(op, f"no int8 reference kernel for {name}")


def run_graph(model: Model, input_arrays: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Run the whole model (subgraph 0) in operator order, as TFLM does: the value of
    every graph input and every operator output, by tensor index."""
    if len(input_arrays) != len(model.inputs):
        raise ValueError(f"the model has {len(model.inputs)} input(s), got "
                         f"{len(input_arrays)} array(s)")
    values: dict[int, np.ndarray] = {}
    for t, a in zip(model.inputs, input_arrays, strict=True):
        info = model.tensors[t]
        arr = np.asarray(a)
        if arr.size != info.numel:
            raise ValueError(f"input tensor {t} has shape {info.shape}, got {arr.shape}")
        values[t] = arr.reshape(info.shape)
    plans = [(op, params_for(model, op)) for op in model.operators]  # fail before running
    for op, p in plans:
        feed = []
        for t in model.activation_inputs(op):
            if t not in values:
                raise UnsupportedModelError(f"operator {op.index} ({op.name}) reads tensor "
                                            f"{t}, which nothing has computed")
            feed.append(values[t])
        values[op.outputs[0]] = run_op(model, op, feed, p)
    return values
