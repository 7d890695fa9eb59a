"""TFLite operators as spatial nodes for receptive-field analysis.

`spatial_support(model, op)` says whether an operator's output rows/columns depend on
its input rows/columns in a way receptive_field.py models (a window, a pad, an
element-wise op), and if not, why, in words the user sees. `spatial_nodes` converts a
run of operators; tensors are named by their index in the model.
"""

from __future__ import annotations

from collections.abc import Sequence

from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo
from tflm_patch.receptive_field import Rect, SpatialNode, Window, required_rects, same_padding

WINDOW_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D"})
PAD_OPS = frozenset({"PAD", "PADV2"})
BINARY_OPS = frozenset({"ADD", "MUL", "SUB"})
POINTWISE_OPS = frozenset({"RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH", "HARD_SWISH",
                           "QUANTIZE", "DEQUANTIZE", "LEAKY_RELU"})
CONCAT_OPS = frozenset({"CONCATENATION"})  # along channels, two activation inputs
SAME, VALID = 0, 1  # schema Padding


def _hw(model: Model, tensor: int) -> tuple[int, int] | None:
    shape = model.tensors[tensor].shape
    if len(shape) != 4 or shape[0] != 1:
        return None
    return int(shape[1]), int(shape[2])


def spatial_support(model: Model, op: OperatorInfo) -> tuple[bool, str]:
    """(ok, reason): can this op be part of a receptive-field chain?"""
    where = f"operator {op.index} ({op.name})"
    if op.name not in WINDOW_OPS | PAD_OPS | BINARY_OPS | POINTWISE_OPS | CONCAT_OPS:
        return False, f"{where} is not a spatial op the patch planner understands"
    acts = model.activation_inputs(op)
    if not acts or len(op.outputs) != 1:
        return False, f"{where} has no activation input or several outputs"
    if _hw(model, op.outputs[0]) is None or any(_hw(model, t) is None for t in acts):
        return False, f"{where} is not on 4-D NHWC tensors with batch 1"
    if op.name in PAD_OPS:
        if len(op.inputs) < 2 or not model.tensors[op.inputs[1]].is_constant:
            return False, f"{where} has non-constant paddings"
        pads = model.constant(op.inputs[1]).reshape(-1, 2)
        if pads.shape[0] != 4 or pads[0].any():
            return False, f"{where} pads the batch dimension"
    if op.name in CONCAT_OPS:
        return _concat_support(model, op, acts)
    if op.name in BINARY_OPS and len(acts) == 2:
        out = _hw(model, op.outputs[0])
        if any(_hw(model, t) != out for t in acts):
            return False, f"{where} broadcasts over rows/columns"
    return True, ""


def _concat_support(model: Model, op: OperatorInfo, acts: list[int]) -> tuple[bool, str]:
    """A CONCATENATION of two activations along channels, equal in rows and columns."""
    where = f"operator {op.index} (CONCATENATION)"
    if len(acts) != 2 or len(op.inputs) != 2:
        return False, (f"{where} joins {len(op.inputs)} tensors; the patch planner takes a "
                       "concatenation of two activations")
    axis = int(getattr(op.options, "axis", 0)) if op.options is not None else 0
    if axis not in (3, -1):
        return False, f"{where} joins along axis {axis}, not channels"
    out = _hw(model, op.outputs[0])
    if any(_hw(model, t) != out for t in acts):
        return False, f"{where} joins tensors of different rows/columns"
    return True, ""


def _window(model: Model, op: OperatorInfo) -> Window:
    o = op.options
    in_h, in_w = _hw(model, op.inputs[0]) or (0, 0)
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        kh, kw = model.tensors[op.inputs[1]].shape[1:3]
        dh, dw = int(o.dilationHFactor), int(o.dilationWFactor)
    else:
        kh, kw = int(o.filterHeight), int(o.filterWidth)
        dh = dw = 1
    sh, sw = int(o.strideH), int(o.strideW)
    if o.padding == SAME:
        pad_top = same_padding(in_h, kh, sh, dh)[1]
        pad_left = same_padding(in_w, kw, sw, dw)[1]
    else:
        pad_top = pad_left = 0
    return Window((int(kh), int(kw)), (sh, sw), (dh, dw), pad_top, pad_left)


def spatial_node(model: Model, op: OperatorInfo) -> SpatialNode:
    ok, reason = spatial_support(model, op)
    if not ok:
        raise UnsupportedModelError(reason)
    acts = model.activation_inputs(op)
    out = op.outputs[0]
    out_hw = _hw(model, out)
    assert out_hw is not None
    in_hw = tuple(_hw(model, t) or (0, 0) for t in acts)
    inputs = tuple(str(t) for t in acts)
    if op.name in WINDOW_OPS:
        return SpatialNode(op.name, "window", inputs[:1], str(out), in_hw[:1], out_hw,
                           window=_window(model, op))
    if op.name in PAD_OPS:
        p = model.constant(op.inputs[1]).reshape(-1, 2)
        pads = (int(p[1][0]), int(p[1][1]), int(p[2][0]), int(p[2][1]))
        return SpatialNode(op.name, "pad", inputs[:1], str(out), in_hw[:1], out_hw, pads=pads)
    if (op.name in BINARY_OPS and len(acts) == 2) or op.name in CONCAT_OPS:
        return SpatialNode(op.name, "add", inputs, str(out), in_hw, out_hw)
    return SpatialNode(op.name, "pointwise", inputs[:1], str(out), in_hw[:1], out_hw)


def spatial_nodes(model: Model, ops: Sequence[int]) -> list[SpatialNode]:
    return [spatial_node(model, model.operators[i]) for i in ops]


def tensor_rects(model: Model, ops: Sequence[int], tensor: int, rect: Rect) -> dict[int, Rect]:
    """For `rect` of `tensor` (an output of one of `ops`), the rect needed of every tensor
    upstream of it within `ops` (tensor index -> Rect)."""
    rects = required_rects(spatial_nodes(model, ops), str(tensor), rect)
    return {int(name): r for name, r in rects.items()}
