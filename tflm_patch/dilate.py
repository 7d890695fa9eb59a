"""Model pass: SPACE_TO_BATCH_ND -> convolution -> BATCH_TO_SPACE_ND folded into one dilated
convolution (model bytes -> model bytes).

TensorFlow expresses some dilated convolutions (`tf.nn.with_space_to_batch`, and Keras /
`tf.nn.convolution` when the converter cannot fold them itself) as a SPACE_TO_BATCH_ND with
block shape (dh, dw), a VALID stride-1 CONV_2D or DEPTHWISE_CONV_2D on the d*d sub-images,
and a BATCH_TO_SPACE_ND that interleaves them back and crops. Along one axis of size H, with
S2B paddings (pt, pb), kernel k and B2S crops (ct, cb), output pixel i reads the input at
i - (pt - ct) + t*d for taps t < k: exactly a convolution with dilation d whose leading
padding is pt - ct. The triple is that convolution when, on both axes,

* VALID: pt - ct == 0 and the output has H - (k-1)*d pixels (no padded pixel is read), or
* SAME: pt - ct == (k-1)*d // 2 (TFLite's split of the padding, the odd pixel after) and the
  output has H pixels; the padded pixels read must then hold the zero point. TFLM's
  SPACE_TO_BATCH_ND pads with `SpaceToBatchParams::output_offset`, which its kernel never
  sets (0 in a fresh arena), so a SAME triple folds only when the input zero point is 0.

The intermediate tensors must be read by the triple alone (and not be graph outputs), the
block shape, paddings and crops constant, the batch 1, and the quantization of the
convolution's input and output equal to that of the triple's input and output (the
data-movement operators copy bytes). Any other triple is left as it is, with the reason at
debug level. The folded convolution takes the place of the triple's convolution.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from tflm_patch.model import Model, OperatorInfo, load_model
from tflm_patch.rewrite import prune, to_checked_bytes

log = logging.getLogger(__name__)

CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D")
_SAME, _VALID = 0, 1  # schema Padding


@dataclass(frozen=True)
class Fold:
    """One foldable triple: operator indices, the dilation and the padding kind."""

    s2b: int
    conv: int
    b2s: int
    dilation: tuple[int, int]  # (height, width)
    padding: int  # schema Padding: 0 SAME, 1 VALID


@dataclass(frozen=True)
class _Axis:
    size: int  # input pixels
    block: int
    pad: tuple[int, int]  # S2B paddings
    kernel: int
    crop: tuple[int, int]  # B2S crops
    out: int  # output pixels


def _padding_of(axis: _Axis) -> set[int]:
    """The paddings (SAME and/or VALID) a dilated convolution along this axis equals."""
    lead = axis.pad[0] - axis.crop[0]
    reach = (axis.kernel - 1) * axis.block
    kinds = set()
    if lead == 0 and axis.out == axis.size - reach > 0:
        kinds.add(_VALID)
    if lead == reach // 2 and axis.out == axis.size:
        kinds.add(_SAME)
    return kinds


def _const(model: Model, tensor: int) -> list[int] | None:
    t = model.tensors[tensor]
    if not t.is_constant or t.dtype not in ("int32", "int64"):
        return None
    return [int(v) for v in model.constant(tensor).ravel()]


def _intermediates_private(model: Model, s2b: OperatorInfo, conv: OperatorInfo) -> str:
    consumers = model.consumers()
    for t in (s2b.outputs[0], conv.outputs[0]):
        if t in model.outputs or len(consumers.get(t, [])) != 1:
            return f"tensor {t} is read outside the triple"
    return ""


def _same_quant(model: Model, a: int, b: int) -> bool:
    qa, qb = model.tensors[a].quantization, model.tensors[b].quantization
    return qa == qb and model.tensors[a].dtype == model.tensors[b].dtype


def _conv_check(model: Model, conv: OperatorInfo) -> str:
    o = conv.options
    if o is None or o.padding != _VALID or (o.strideH, o.strideW) != (1, 1):
        return "the convolution is not VALID with stride 1"
    if (o.dilationHFactor, o.dilationWFactor) != (1, 1):
        return "the convolution is already dilated"
    return ""


def _axes(model: Model, s2b: OperatorInfo, conv: OperatorInfo,
          b2s: OperatorInfo) -> list[_Axis] | str:
    x, y = model.tensors[s2b.inputs[0]], model.tensors[b2s.outputs[0]]
    block, pads = _const(model, s2b.inputs[1]), _const(model, s2b.inputs[2])
    block2, crops = _const(model, b2s.inputs[1]), _const(model, b2s.inputs[2])
    if None in (block, pads, block2, crops) or block != block2:
        return "block shapes, paddings or crops are not equal constants"
    assert block is not None and pads is not None and crops is not None
    if len(x.shape) != 4 or len(y.shape) != 4 or x.shape[0] != 1 or y.shape[0] != 1:
        return "the input or output is not 4-D with batch 1"
    if len(block) != 2 or len(pads) != 4 or len(crops) != 4 or min(block) < 1:
        return "block shape or paddings are not 2-D"
    kernel = model.tensors[conv.inputs[1]].shape[1:3]
    why = _shapes_check(model, s2b, conv, block, pads, kernel)
    if why:
        return why
    return [_Axis(x.shape[1 + a], block[a], (pads[2 * a], pads[2 * a + 1]), kernel[a],
                  (crops[2 * a], crops[2 * a + 1]), y.shape[1 + a]) for a in (0, 1)]


def _shapes_check(model: Model, s2b: OperatorInfo, conv: OperatorInfo, block: list[int],
                  pads: list[int], kernel: tuple[int, ...]) -> str:
    """The shapes the file declares are those the operators compute (a model converted
    with an unknown batch may declare batch 1 for the d*d sub-images: TFLM, which does
    not resize, then writes past the tensor)."""
    x = model.tensors[s2b.inputs[0]].shape
    padded = [x[1 + a] + pads[2 * a] + pads[2 * a + 1] for a in (0, 1)]
    if any(p % b for p, b in zip(padded, block, strict=True)):
        return "the padded size is not a multiple of the block shape"
    sub = [p // b for p, b in zip(padded, block, strict=True)]
    batch = block[0] * block[1]
    if model.tensors[s2b.outputs[0]].shape[:3] != (batch, *sub):
        return "the SPACE_TO_BATCH_ND output shape in the file is not the one computed"
    if model.tensors[conv.outputs[0]].shape[:3] != (batch, sub[0] - kernel[0] + 1,
                                                    sub[1] - kernel[1] + 1):
        return "the convolution output shape in the file is not the one computed"
    return ""


def _check(model: Model, s2b: OperatorInfo, conv: OperatorInfo,
           b2s: OperatorInfo) -> Fold | str:
    """The fold of this triple, or why it is not exactly one dilated convolution."""
    why = _conv_check(model, conv) or _intermediates_private(model, s2b, conv)
    if why:
        return why
    if not (_same_quant(model, s2b.inputs[0], conv.inputs[0])
            and _same_quant(model, conv.outputs[0], b2s.outputs[0])):
        return "the data-movement operators change the quantization"
    axes = _axes(model, s2b, conv, b2s)
    if isinstance(axes, str):
        return axes
    kinds = _padding_of(axes[0]) & _padding_of(axes[1])
    if not kinds:
        return "the paddings and crops are neither SAME nor VALID of the dilated convolution"
    padding = _VALID if _VALID in kinds else _SAME
    if padding == _SAME and any(a.kernel > 1 for a in axes) and _zero_point(model, s2b) != 0:
        return ("SAME needs the zero point as padding; TFLM's SPACE_TO_BATCH_ND pads with 0 "
                f"(input zero point {_zero_point(model, s2b)})")
    return Fold(s2b.index, conv.index, b2s.index, (axes[0].block, axes[1].block), padding)


def _zero_point(model: Model, s2b: OperatorInfo) -> int:
    q = model.tensors[s2b.inputs[0]].quantization
    return int(q.zero_point[0]) if q is not None and q.zero_point else 0


def _triple(model: Model, b2s: OperatorInfo) -> tuple[OperatorInfo, OperatorInfo] | None:
    producers = model.producers()
    conv_i = producers.get(b2s.inputs[0])
    if conv_i is None or model.operators[conv_i].name not in CONVS:
        return None
    conv = model.operators[conv_i]
    s2b_i = producers.get(conv.inputs[0])
    if s2b_i is None or model.operators[s2b_i].name != "SPACE_TO_BATCH_ND":
        return None
    return model.operators[s2b_i], conv


def find_folds(model: Model) -> list[Fold]:
    """The foldable triples of subgraph 0 (the others are logged at debug level)."""
    folds = []
    for op in model.operators:
        if op.name != "BATCH_TO_SPACE_ND":
            continue
        found = _triple(model, op)
        if found is None:
            continue
        result = _check(model, *found, op)
        if isinstance(result, str):
            log.debug("SPACE_TO_BATCH_ND %d / %s %d / BATCH_TO_SPACE_ND %d left as they are: %s",
                      found[0].index, found[1].name, found[1].index, op.index, result)
        else:
            folds.append(result)
    return folds


def _apply(obj: object, fold: Fold) -> None:
    sg = obj.subgraphs[0]  # type: ignore[attr-defined]
    s2b, conv, b2s = (sg.operators[i] for i in (fold.s2b, fold.conv, fold.b2s))
    conv.inputs = [s2b.inputs[0], *list(conv.inputs)[1:]]
    conv.outputs = [b2s.outputs[0]]
    options = conv.builtinOptions
    options.padding = fold.padding
    options.dilationHFactor, options.dilationWFactor = fold.dilation


def fold_model(model: Model) -> Model:
    """`model` with every foldable triple replaced by one dilated convolution (the same
    object when there is none)."""
    folds = find_folds(model) if model.num_subgraphs == 1 else []
    if not folds:
        return model
    obj = copy.deepcopy(model.obj)
    for fold in folds:
        _apply(obj, fold)
    drop = {i for f in folds for i in (f.s2b, f.b2s)}
    sg = obj.subgraphs[0]
    sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
    prune(obj)
    log.info("folded %d SPACE_TO_BATCH_ND/BATCH_TO_SPACE_ND pair%s into dilated convolutions",
             len(folds), "s" if len(folds) > 1 else "")
    return load_model(to_checked_bytes(obj))


def fold(data: bytes) -> bytes:
    """Model bytes with the foldable dilated-convolution triples folded (the same bytes
    when there is none)."""
    return fold_model(load_model(data)).raw
