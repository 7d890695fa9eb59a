"""Stages: runs of operators one PATCH_EXEC can replace.

A stage is a run of consecutive operators (execution order) that all pass `op_support`,
reads exactly one activation from before it (the stage input) and leaves exactly one
tensor for the ops after it (the stage output). Checks return `(ok, reason)`; the reason
is what the user sees when a forced `--split-op` cannot be honoured.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from tflm_patch import patch_format as pf
from tflm_patch import ref_ops
from tflm_patch.analysis import op_macs
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.geometry import spatial_support
from tflm_patch.model import Model, OperatorInfo
from tflm_patch.ref_params import (
    LUT_OPS,
    add_params,
    concat_params,
    conv_params,
    depthwise_params,
    mul_params,
    pad_params,
    pool_params,
    unary_table,
)

log = logging.getLogger(__name__)

STAGE_OPS = {"CONV_2D": pf.CONV, "DEPTHWISE_CONV_2D": pf.DEPTHWISE,
             "AVERAGE_POOL_2D": pf.AVERAGE_POOL, "MAX_POOL_2D": pf.MAX_POOL,
             "PAD": pf.PAD, "PADV2": pf.PAD, "ADD": pf.ADD, "MUL": pf.MUL,
             "CONCATENATION": pf.CONCAT,
             **dict.fromkeys(sorted(LUT_OPS), pf.LUT)}  # unary ops as 256-entry tables
FUSED_OK = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}


NCHW_TO_NHWC = (0, 2, 3, 1)


def transpose_support(model: Model, op: OperatorInfo) -> tuple[bool, str]:
    """(ok, reason): can PATCH_EXEC fold this TRANSPOSE (read its NCHW input by
    addressing)? Only the NCHW -> NHWC permutation of an int8 tensor, quantization
    unchanged; stage_check also requires it to be the stage's first operator."""
    where = f"operator {op.index} (TRANSPOSE)"
    if len(op.inputs) != 2 or len(op.outputs) != 1 or \
            not model.tensors[op.inputs[1]].is_constant:
        return False, f"{where}: the permutation is not a constant input"
    perm = tuple(int(v) for v in model.constant(op.inputs[1]).reshape(-1))
    src, dst = model.tensors[op.inputs[0]], model.tensors[op.outputs[0]]
    if perm != NCHW_TO_NHWC or len(src.shape) != 4 or src.shape[0] != 1:
        return False, (f"{where}: PATCH_EXEC folds only the NCHW -> NHWC permutation "
                       f"{list(NCHW_TO_NHWC)} of a batch-1 tensor, not {list(perm)}")
    if src.dtype != "int8" or dst.dtype != "int8":
        return False, f"{where}: tensors are {src.dtype} -> {dst.dtype}, not int8"
    qs, qd = src.quantization, dst.quantization
    same = qs is not None and qd is not None and list(qs.scale) == list(qd.scale) and \
        list(qs.zero_point) == list(qd.zero_point)
    if not same:
        return False, f"{where}: input and output quantization differ"
    return True, ""


SHIFT_MIN, SHIFT_MAX = -31, 30  # the requantization shifts PATCH_EXEC accepts
FIELD_MAX = 0xFFFF  # PATCH_EXEC's options store sizes, kernels and strides in 16 bits
_WINDOW_FIELDS = ("strideH", "strideW", "dilationHFactor", "dilationWFactor", "filterHeight",
                  "filterWidth", "depthMultiplier")


def _field_overflow(model: Model, op: OperatorInfo) -> str:
    """Why the operator's sizes do not fit PATCH_EXEC's 16-bit option fields ('' if
    they do)."""
    for t in (*op.inputs, *op.outputs):
        shape = model.tensors[t].shape if t >= 0 else ()
        if any(d > FIELD_MAX for d in shape[1:]):
            return (f"tensor {t} {list(shape)} has a dimension over {FIELD_MAX}, the limit of "
                    "PATCH_EXEC's 16-bit fields")
    for name in _WINDOW_FIELDS:
        value = getattr(op.options, name, None)
        if value is not None and not 0 <= int(value) <= FIELD_MAX:
            return f"{name} {value} does not fit PATCH_EXEC's 16-bit fields"
    return ""


def activation_type_reason(model: Model) -> str:
    """Why no operator can be patched because of its activation type, e.g. an int16
    (16x8-quantized) model; '' when some operator PATCH_EXEC executes has int8 ones."""
    found: dict[str, OperatorInfo] = {}
    for op in model.operators:
        if op.name in STAGE_OPS:
            for t in (*model.activation_inputs(op), *op.outputs):
                found.setdefault(model.tensors[t].dtype, op)
    if not found or "int8" in found:
        return ""
    dtype, op = next(iter(found.items()))
    kind = "int16 activations (16x8 quantization)" if dtype == "int16" else \
        f"{dtype} activations"
    return (f"{kind}, e.g. operator {op.index} ({op.name}): PATCH_EXEC computes int8 "
            "activations only, so no operator of this model can be patched")


def side_operand(model: Model, op: OperatorInfo) -> int | None:
    """The per-channel operand of a squeeze-and-excitation MUL: of its two activation
    inputs, the one of shape [1, 1, 1, C] (C the output's channels; or [1, C], [C]: TFLM
    broadcasts from the right) when the output has more than one pixel and the other
    input has the output's shape; else None."""
    acts = model.activation_inputs(op)
    if op.name != "MUL" or len(acts) != 2 or len(op.outputs) != 1:
        return None
    out = tuple(model.tensors[op.outputs[0]].shape)
    if len(out) != 4 or out[0] != 1 or out[1] * out[2] <= 1:
        return None
    for side, full in ((acts[1], acts[0]), (acts[0], acts[1])):
        shape = tuple(model.tensors[side].shape)
        if 1 <= len(shape) <= 4 and shape[-1] == out[3] and math.prod(shape) == out[3] and \
                tuple(model.tensors[full].shape) == out:
            return side
    return None


def spatial_inputs(model: Model, op: OperatorInfo) -> list[int]:
    """The activation inputs PATCH_EXEC reads patch by patch (all but a MUL's side
    operand)."""
    side = side_operand(model, op)
    return [t for t in model.activation_inputs(op) if t != side]


def runtime_addends(model: Model, first: int, last: int) -> dict[int, int]:
    """operator -> model tensor: the residual ADDs of operators first..last after a
    squeeze-and-excitation MUL whose one operand comes from before the stage and is not
    its input (the block input of a block whose SE MUL starts the stage): PATCH_EXEC reads
    that operand whole as a runtime input, so the scaled block ends inside the stage."""
    ops = model.operators
    firsts = spatial_inputs(model, ops[first])
    stage_in = firsts[0] if firsts else None
    produced: set[int] = set()
    se = False
    found: dict[int, int] = {}
    for i in range(first, last + 1):
        op = ops[i]
        acts = model.activation_inputs(op)
        if op.name == "ADD" and se and len(acts) == 2:
            outside = [t for t in acts if t not in produced]
            if len(outside) == 1 and outside[0] != stage_in and \
                    model.tensors[outside[0]].shape == model.tensors[op.outputs[0]].shape:
                found[i] = outside[0]
        se = se or side_operand(model, op) is not None
        produced.update(op.outputs)
    return found


def _mul_support(model: Model, op: OperatorInfo) -> tuple[bool, str]:
    if side_operand(model, op) is None:
        return False, (f"operator {op.index} (MUL): PATCH_EXEC executes a MUL only by a "
                       "runtime per-channel tensor [1, 1, 1, C] broadcast over rows and "
                       "columns (squeeze-and-excitation)")
    return True, ""


def op_support(model: Model, op: OperatorInfo) -> tuple[bool, str]:
    """(ok, reason): can PATCH_EXEC execute this operator? (worked out once per operator)"""
    if _own(model, op):
        return model.memo(("op_support", op.index), lambda: _op_support(model, op))
    return _op_support(model, op)


def model_support(model: Model) -> list[tuple[bool, str]]:
    """op_support of every operator (one list per model: do not modify it)."""
    return model.memo("support", lambda: [op_support(model, op) for op in model.operators])


def _own(model: Model, op: OperatorInfo) -> bool:
    """Is `op` the model's own operator (whose facts the model may memoize)?"""
    return 0 <= op.index < len(model.operators) and model.operators[op.index] is op


def _op_support(model: Model, op: OperatorInfo) -> tuple[bool, str]:
    where = f"operator {op.index} ({op.name})"
    if op.name == "TRANSPOSE":
        return transpose_support(model, op)
    if op.name not in STAGE_OPS:
        return False, (f"{where}: PATCH_EXEC executes only "
                       f"{', '.join(sorted(STAGE_OPS))} (and folds an NCHW -> NHWC "
                       "TRANSPOSE at a stage's start)")
    for t in (*model.activation_inputs(op), *op.outputs):
        if model.tensors[t].dtype != "int8":
            return False, f"{where}: tensor {t} is {model.tensors[t].dtype}, not int8"
    ok, reason = _mul_support(model, op) if op.name == "MUL" else spatial_support(model, op)
    if not ok:
        return False, reason
    too_big = _field_overflow(model, op)
    if too_big:
        return False, f"{where}: {too_big}"
    if op.name in ("PAD", "PADV2") and model.constant(op.inputs[1]).reshape(-1, 2)[3].any():
        return False, f"{where}: pads the channel dimension"
    fused = getattr(op.options, "fusedActivationFunction", 0) if op.options is not None else 0
    if int(fused) not in FUSED_OK:
        return False, f"{where}: fused activation {fused} is not NONE/RELU/RELU6/RELU_N1_TO_1"
    acts = model.activation_inputs(op)
    if op.name == "ADD" and len(acts) != 2:
        return False, f"{where}: ADD of a constant is not a residual ADD"
    if op.name not in ("ADD", "MUL", "CONCATENATION") and len(acts) != 1:
        return False, f"{where}: {len(acts)} activation inputs"
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and not model.tensors[op.inputs[2]].is_constant:
            return False, f"{where}: the bias is not constant"
        if not model.tensors[op.inputs[1]].is_constant:
            return False, f"{where}: the filter is not constant"
    if op.name == "LEAKY_RELU" and op.options is not None and float(op.options.alpha) < 0:
        return False, (f"{where}: a negative alpha is computed differently by TFLM before "
                       "and since 2025 (February 2023 TFLM: MBQM(x, alpha); since: "
                       "-MBQM(x, -alpha)), so no single table is exact")
    try:
        params = layer_params(model, op)
    except UnsupportedModelError as e:
        return False, str(e)
    shift = getattr(params, "output_shift", ())
    shifts = tuple(shift) if isinstance(shift, tuple | list) else (int(shift),)
    if any(not SHIFT_MIN <= s <= SHIFT_MAX for s in shifts):
        return False, (f"{where}: a requantization shift ({min(shifts)}..{max(shifts)}) is "
                       f"outside PATCH_EXEC's {SHIFT_MIN}..{SHIFT_MAX} (extreme scales)")
    return True, ""


def layer_params(model: Model, op: OperatorInfo) -> object:
    if _own(model, op):
        return model.memo(("layer_params", op.index), lambda: _layer_params(model, op))
    return _layer_params(model, op)


def _layer_params(model: Model, op: OperatorInfo) -> object:
    fn = {"CONV_2D": conv_params, "DEPTHWISE_CONV_2D": depthwise_params,
          "AVERAGE_POOL_2D": pool_params, "MAX_POOL_2D": pool_params, "PAD": pad_params,
          "PADV2": pad_params, "ADD": add_params, "MUL": mul_params,
          "CONCATENATION": concat_params, **dict.fromkeys(LUT_OPS, unary_table)}[op.name]
    return fn(model, op)


@dataclass(frozen=True)
class LayerConstants:
    """The constant inputs of one conv layer: existing model tensors and new arrays."""

    weights: int  # model tensor index
    bias: int | None  # model tensor index
    multipliers: np.ndarray  # int32 [C]
    shifts: np.ndarray  # int32 [C]


@dataclass(frozen=True, eq=False)  # hashed by identity (schedule caches per graph)
class StageGraph:
    """A stage of a model, as PATCH_EXEC layers.

    tensors[k]: the model tensor of stage tensor k (0 = stage input, k + 1 = output of
    layer k; folded PADs have no layer and no tensor). `layers` carry NONE in their
    constant-input fields; the converter fills them in once it knows the operator's
    input list.
    """

    first: int
    last: int
    tensors: tuple[int, ...]
    shapes: tuple[tuple[int, int, int], ...]  # (h, w, c) of each stage tensor
    layers: tuple[pf.Layer, ...]
    constants: tuple[LayerConstants | None, ...]
    macs_per_pixel: tuple[int, ...]  # per layer, per output pixel (all channels)
    input_nchw: bool = False  # a folded TRANSPOSE: tensors[0] is the NCHW model tensor
    # per layer: the runtime model tensor it reads besides stage tensors -- a MUL's
    # per-channel operand, an ADD's addend (runtime_addends) -- which the converter makes
    # an operator input; None for other layers; () when none
    sides: tuple[int | None, ...] = ()
    # per layer: the int8[256] table of a LUT layer (the converter makes it a constant
    # input), None for other layers; () when none
    tables: tuple[np.ndarray | None, ...] = ()
    # schedule.make_schedule's results for this graph, by (grid, cache)
    schedules: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def ops(self) -> range:
        return range(self.first, self.last + 1)

    @property
    def input(self) -> int:
        return self.tensors[0]

    @property
    def output(self) -> int:
        return self.tensors[-1]

    @property
    def side_inputs(self) -> tuple[int, ...]:
        """The runtime tensors the stage reads besides its input (MUL scales, ADD addends),
        once each."""
        return tuple(dict.fromkeys(t for t in self.sides if t is not None))

    @cached_property
    def macs(self) -> int:
        return sum(m * s[0] * s[1] for m, s in zip(self.macs_per_pixel, self.shapes[1:],
                                                   strict=True))

    def describe(self, model: Model) -> str:
        return (f"ops {self.first}..{self.last} ({model.operators[self.first].name} .. "
                f"{model.operators[self.last].name}), {_hwc(self.shapes[0])} -> "
                f"{_hwc(self.shapes[-1])}")


def _hwc(s: tuple[int, int, int]) -> str:
    return f"{s[0]}x{s[1]}x{s[2]}"


def stage_check(model: Model, first: int, last: int,
                support: list[tuple[bool, str]] | None = None, *,
                live_input: bool = False) -> tuple[bool, str]:
    """(ok, reason): can operators first..last (inclusive) be one PATCH_EXEC?
    `support`: op_support of every operator, when the caller has it already.
    live_input: the stage input may still be read after the stage (a fused tail stage
    inside a residual block); a patched stage must end where one tensor is live."""
    if support is None or support is model.memoized("support"):
        # op_support is the model's own: the answer is too
        return model.memo(("stage_check", first, last, live_input),
                          lambda: _stage_check(model, first, last, None, live_input))
    return _stage_check(model, first, last, support, live_input)


def _stage_check(model: Model, first: int, last: int, support: list[tuple[bool, str]] | None,
                 live_input: bool) -> tuple[bool, str]:
    n_ops = len(model.operators)
    if not 0 <= first <= last < n_ops:
        return False, f"operators {first}..{last} are not within the model's 0..{n_ops - 1}"
    produced: set[int] = set()
    outside_inputs: set[int] = set()
    addends = runtime_addends(model, first, last) if 0 <= first <= last < n_ops else {}
    for i in range(first, last + 1):
        op = model.operators[i]
        ok, reason = support[i] if support is not None else op_support(model, op)
        if not ok:
            return False, reason
        if op.name == "TRANSPOSE" and i != first:
            return False, (f"operator {i} (TRANSPOSE): PATCH_EXEC folds a TRANSPOSE only as "
                           "the first operator of a stage (reading the NCHW input)")
        side = side_operand(model, op) if op.name == "MUL" else None
        if side is not None and side in produced:
            return False, (f"operator {i} (MUL): its per-channel operand (tensor {side}) is "
                           "made inside the stage; PATCH_EXEC reads it as a runtime input")
        for t in model.activation_inputs(op):
            if t not in produced and t != side and t != addends.get(i):
                outside_inputs.add(t)
        produced.update(op.outputs)
    if model.operators[first].name == "TRANSPOSE" and first == last:
        return False, (f"operator {first} (TRANSPOSE): a stage needs an operator besides the "
                       "folded TRANSPOSE")
    if len(outside_inputs) != 1:
        return False, (f"operators {first}..{last} read {len(outside_inputs)} activations "
                       "from before the stage (PATCH_EXEC takes exactly one)")
    stage_in = next(iter(outside_inputs))
    stage_out = model.operators[last].outputs[0]
    last_read, outputs = _last_reads(model)

    def read_later(t: int) -> bool:
        return last_read.get(t, -1) > last or t in outputs

    leaking = sorted(t for t in produced if t != stage_out and read_later(t))
    if leaking:
        return False, (f"tensor {leaking[0]} ({model.tensors[leaking[0]].name}) made inside "
                       f"operators {first}..{last} is read after them; the stage must end "
                       "where one tensor is live")
    if read_later(stage_in) and not live_input:
        return False, (f"the stage input (tensor {stage_in}) is read again after operator "
                       f"{last}")
    if not read_later(stage_out):
        return False, f"the stage output (tensor {stage_out}) is never read"
    return True, ""


def _last_reads(model: Model) -> tuple[dict[int, int], frozenset[int]]:
    """tensor -> the last operator reading it as an activation; the graph outputs."""
    def compute() -> tuple[dict[int, int], frozenset[int]]:
        last = {t: op.index for op in model.operators for t in model.activation_inputs(op)}
        return last, frozenset(model.outputs)

    return model.memo("last_reads", compute)


def foldable_pad(model: Model, op: OperatorInfo, consumers: dict[int, list[int]],
                  stage_out: int) -> bool:
    """A PAD whose value is the zero point, read only by one conv/depthwise conv: the
    conv can read the unpadded tensor with a larger padding (skipped taps contribute
    (zero point + input offset) * w = 0, exactly what the explicit pad did)."""
    if op.name not in ("PAD", "PADV2") or op.outputs[0] == stage_out:
        return False
    readers = consumers.get(op.outputs[0], [])
    if len(readers) != 1:
        return False
    reader = model.operators[readers[0]]
    if reader.name not in ("CONV_2D", "DEPTHWISE_CONV_2D") or reader.inputs[0] != op.outputs[0]:
        return False
    q = model.tensors[op.outputs[0]].quantization
    value = pad_params(model, op).pad_value
    return q is not None and bool(q.zero_point) and value == q.zero_point[0]


def stream_pairs(graph_layers: list[pf.Layer], shapes: list[tuple[int, int, int]]) -> set[int]:
    """Layers k to flag STREAM: those the format allows (`pf.stream_candidates`: a CONV_2D
    whose output only the next layer, a depthwise conv with multiplier 1, reads) whose
    input is no larger than their output (the pair keeps the input one layer longer and
    the output one channel deep)."""
    return {k for k in pf.stream_candidates(graph_layers)
            if math.prod(shapes[graph_layers[k].input0]) <= math.prod(shapes[k + 1])}


def build_stage(model: Model, first: int, last: int, *, fold_pads: bool = True,
                live_input: bool = False, stream: bool = True) -> StageGraph:
    """The stage of operators first..last; UnsupportedModelError with the reason if not.
    Built once per model and arguments (the same StageGraph object afterwards).

    fold_pads: a zero-point PAD feeding a single convolution becomes that convolution's
    padding (the padded copy is never made). live_input: as in `stage_check`. stream:
    flag STREAM on the conv -> depthwise pairs of `stream_pairs`. A TRANSPOSE at the
    start is folded: the stage reads its NCHW input (INPUT_NCHW)."""
    return model.memo(("stage", first, last, fold_pads, live_input, stream),
                      lambda: _build_stage(model, first, last, fold_pads, live_input, stream))


def _build_stage(model: Model, first: int, last: int, fold_pads: bool, live_input: bool,
                 stream: bool) -> StageGraph:
    ok, reason = stage_check(model, first, last, live_input=live_input)
    if not ok:
        raise UnsupportedModelError(reason)
    ops = [model.operators[i] for i in range(first, last + 1)]
    stage_in = spatial_inputs(model, ops[0])[0]
    stage_out = ops[-1].outputs[0]
    consumers = model.consumers()
    index = {stage_in: 0}
    nhwc_in = stage_in
    nchw = ops[0].name == "TRANSPOSE"
    if nchw:
        nhwc_in = ops[0].outputs[0]
        index[nhwc_in] = 0
        ops = ops[1:]
    extra_pad: dict[int, tuple[int, int, int]] = {}  # PAD output -> (PAD input, top, left)
    layers: list[pf.Layer] = []
    constants: list[LayerConstants | None] = []
    sides: list[int | None] = []
    tables: list[np.ndarray | None] = []
    macs: list[int] = []
    tensors = [stage_in]
    addends = runtime_addends(model, first, last)
    for op in ops:
        if fold_pads and foldable_pad(model, op, consumers, stage_out):
            pads = model.constant(op.inputs[1]).reshape(-1, 2)
            extra_pad[op.outputs[0]] = (op.inputs[0], int(pads[1][0]), int(pads[2][0]))
            continue
        addend = addends.get(op.index)
        layer, consts = _layer(model, op, index, extra_pad, addend)
        index[op.outputs[0]] = len(layers) + 1
        layers.append(layer)
        constants.append(consts)
        sides.append(side_operand(model, op) if op.name == "MUL" else addend)
        tables.append(np.asarray(layer_params(model, op)) if layer.kind == pf.LUT else None)
        tensors.append(op.outputs[0])
        out = model.tensors[op.outputs[0]].shape
        macs.append(op_macs(model, op) // (out[1] * out[2]))
    shapes = [_shape3(model, t) for t in (nhwc_in, *tensors[1:])]
    if stream:
        for k in stream_pairs(layers, shapes):
            layers[k] = replace(layers[k], flags=pf.LAYER_STREAM)
    return StageGraph(first, last, tuple(tensors), tuple(shapes), tuple(layers),
                      tuple(constants), tuple(macs), nchw,
                      tuple(sides) if any(t is not None for t in sides) else (),
                      tuple(tables) if any(t is not None for t in tables) else ())


def _shape3(model: Model, tensor: int) -> tuple[int, int, int]:
    s = model.tensors[tensor].shape
    return int(s[1]), int(s[2]), int(s[3])


def _layer(model: Model, op: OperatorInfo, index: dict[int, int],
           folded: dict[int, tuple[int, int, int]], addend: int | None = None
           ) -> tuple[pf.Layer, LayerConstants | None]:
    """Layer of `op`; `addend`: an ADD's operand read as a runtime input (input1 NONE)."""
    kind = STAGE_OPS[op.name]
    acts = [t for t in spatial_inputs(model, op) if t != addend]
    p = layer_params(model, op)
    src, more_top, more_left = folded.get(acts[0], (acts[0], 0, 0))
    in0 = index[src]
    zeros = [0] * pf.NUM_P
    if isinstance(p, ref_ops.ConvParams):  # conv and depthwise
        f_shape = model.tensors[op.inputs[1]].shape
        dm = p.depth_multiplier if isinstance(p, ref_ops.DepthwiseConvParams) else 1
        zeros[0:4] = [p.input_offset, p.output_offset, p.act_min, p.act_max]
        bias = op.inputs[2] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        consts = LayerConstants(op.inputs[1], bias,
                                np.asarray(p.output_multiplier, dtype=np.int32),
                                np.asarray(p.output_shift, dtype=np.int32))
        return pf.Layer(kind, in0, kernel=(int(f_shape[1]), int(f_shape[2])),
                        stride=(p.stride_height, p.stride_width),
                        dilation=(p.dilation_height, p.dilation_width),
                        pad_top=p.pad_top + more_top, pad_left=p.pad_left + more_left,
                        depth_multiplier=dm,
                        p=tuple(zeros)), consts
    if isinstance(p, ref_ops.PoolParams):
        zeros[2:4] = [p.act_min, p.act_max]
        return pf.Layer(kind, in0, kernel=(p.filter_height, p.filter_width),
                        stride=(p.stride_height, p.stride_width), pad_top=p.pad_top,
                        pad_left=p.pad_left, p=tuple(zeros)), None
    if isinstance(p, ref_ops.PadParams):
        zeros[0] = p.pad_value
        return pf.Layer(kind, in0, pad_top=p.paddings[1][0], pad_left=p.paddings[2][0],
                        p=tuple(zeros)), None
    if isinstance(p, np.ndarray):  # a unary op's table
        return pf.Layer(pf.LUT, in0), None
    if isinstance(p, ref_ops.ConcatParams):  # along channels (geometry checked the axis)
        return pf.Layer(pf.CONCAT, in0, input1=index[acts[1]]), None
    if isinstance(p, ref_ops.MulParams):
        # the stage tensor is input1: swap the offsets when the model has MUL(s, x)
        off_x, off_s = p.input1_offset, p.input2_offset
        if model.activation_inputs(op)[0] != acts[0]:
            off_x, off_s = off_s, off_x
        zeros[:7] = [off_x, p.output_offset, p.act_min, p.act_max, off_s,
                     p.output_multiplier, p.output_shift]
        return pf.Layer(kind, in0, p=tuple(zeros)), None
    assert isinstance(p, ref_ops.AddParams)
    one = (p.input1_offset, p.input1_multiplier, p.input1_shift)
    two = (p.input2_offset, p.input2_multiplier, p.input2_shift)
    if addend is not None and model.activation_inputs(op)[0] == addend:
        one, two = two, one  # the stage tensor is the model's input2: swap (exact)
    zeros[:] = [one[0], p.output_offset, p.act_min, p.act_max, two[0], p.left_shift, one[1],
                one[2], two[1], two[2], p.output_multiplier, p.output_shift]
    input1 = pf.NONE if addend is not None else index[acts[1]]
    return pf.Layer(kind, in0, input1=input1, p=tuple(zeros)), None


def candidate_stages(model: Model) -> Iterator[tuple[int, int]]:
    """(first, last) of every stage the planner considers: in each run of supported
    operators, the earliest valid start and every valid end after it."""
    support = model_support(model)
    supported = [ok for ok, _ in support]
    i = 0
    n = len(supported)
    while i < n:
        if not supported[i]:
            i += 1
            continue
        run_end = i
        while run_end + 1 < n and supported[run_end + 1]:
            run_end += 1
        first = next((s for s in range(i, run_end + 1)
                      if any(stage_check(model, s, e, support)[0]
                             for e in range(s, run_end + 1))),
                     None)
        if first is not None:
            for last in range(first, run_end + 1):
                if stage_check(model, first, last, support)[0]:
                    yield first, last
        i = run_end + 1


# ------------------------------------------------------------------ where stages stop
MAX_OPS_LISTED = 4  # operator indices listed per name and reason; more are counted


@dataclass(frozen=True)
class StageStop:
    """Operators PATCH_EXEC cannot execute for the same reason (stage.op_support's, with
    its "operator N (NAME): " prefix taken off): every stage ends before them."""

    ops: tuple[int, ...]
    names: tuple[str, ...]
    reason: str

    def line(self) -> str:
        by_name: dict[str, list[int]] = {}
        for i, name in zip(self.ops, self.names, strict=True):
            by_name.setdefault(name, []).append(i)
        parts = []
        for name, ops in by_name.items():
            listed = ", ".join(str(i) for i in ops[:MAX_OPS_LISTED])
            if len(ops) > MAX_OPS_LISTED:
                listed += f", ... ({len(ops)} ops)"
            parts.append(f"op{'s' if len(ops) > 1 else ''} {listed} {name}")
        return f"stages stop at: {'; '.join(parts)} ({self.reason})"

    def to_json(self) -> dict[str, object]:
        return {"ops": list(self.ops), "names": list(self.names), "reason": self.reason}


def stage_stops(model: Model) -> list[StageStop]:
    """One StageStop per distinct reason, in operator order."""
    groups: dict[str, list[OperatorInfo]] = {}
    for op, (ok, reason) in zip(model.operators, model_support(model), strict=True):
        if ok:
            continue
        prefix = f"operator {op.index} ({op.name}): "
        groups.setdefault(reason.removeprefix(prefix), []).append(op)
    return [StageStop(tuple(op.index for op in ops), tuple(op.name for op in ops), reason)
            for reason, ops in groups.items()]
