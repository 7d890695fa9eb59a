"""Model checker: refuse a malformed model with one line naming the tensor or operator.

The flatbuffer verifier (`fbverify`) proves the bytes are a well-formed TFLite
flatbuffer; `check_model` proves the model they describe makes sense before anything
plans, measures or rewrites it:

- graph: at least one input and one output, every index in range, no constant or
  variable input or output; signature entries name graph inputs/outputs; metadata
  entries name buffers in range; names and custom codes are UTF-8;
- tensors: no negative dimension, at most 2^32 - 1 bytes (TFLM sizes are 32-bit on a
  microcontroller), a constant's buffer exactly as long as its shape x type size,
  quantization scales finite and positive, zero points in the type's range, one scale
  (or one per channel of the quantized dimension);
- operators: every activation input written by an earlier operator (or a graph input),
  no operator writing a constant, and for the operators the tool computes with
  (convolutions, pooling, fully connected, ADD, PAD, MEAN, TRANSPOSE) the options of the
  right kind, the ranks, channel counts and output shapes TFLM itself would compute;
  every PATCH_EXEC's options decode and pass the format's rules (`patch_format.decode`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from tflm_patch.errors import MalformedModelError, UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo, TensorInfo

MAX_TENSOR_BYTES = (1 << 32) - 1
_ZERO_POINT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
_OPTIONS = {"CONV_2D": "Conv2DOptionsT", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptionsT",
            "AVERAGE_POOL_2D": "Pool2DOptionsT", "MAX_POOL_2D": "Pool2DOptionsT",
            "FULLY_CONNECTED": "FullyConnectedOptionsT", "ADD": "AddOptionsT"}
_WINDOW_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D")
_QUANTIZED_OPS = frozenset({*_WINDOW_OPS, "FULLY_CONNECTED", "ADD"})
_ACTIVATIONS = range(0, 6)  # ActivationFunctionType NONE..SIGN_BIT
_SAME, _VALID = 0, 1


def check_model(model: Model) -> None:
    """Raise MalformedModelError (UnsupportedModelError for a model without inputs or
    outputs) with one line naming the first tensor or operator that is wrong."""
    _check_graph(model)
    for t in model.tensors:
        _check_tensor(model, t)
    _check_dataflow(model)
    for op in model.operators:
        _check_operator(model, op)


def _tensor_name(t: TensorInfo) -> str:
    name = t.name if len(t.name) <= 60 else "..." + t.name[-57:]
    return f"tensor {t.index} '{name}'"


def _check_graph(model: Model) -> None:
    if not model.inputs:
        raise UnsupportedModelError("the model has no inputs: nothing to run it on")
    if not model.outputs:
        raise UnsupportedModelError("the model has no outputs: nothing it computes is kept")
    for kind, seq in (("input", model.inputs), ("output", model.outputs)):
        for t in seq:
            if not 0 <= t < len(model.tensors):
                raise MalformedModelError(f"graph {kind} {t} is out of range (the model has "
                                          f"{len(model.tensors)} tensors)")
    for kind, seq in (("input", model.inputs), ("output", model.outputs)):
        for t in seq:
            if model.tensors[t].is_constant or model.tensors[t].is_variable:
                raise MalformedModelError(f"graph {kind} {_tensor_name(model.tensors[t])} is "
                                          "a constant or variable tensor")
    _check_signatures(model)
    _check_strings(model)
    _check_metadata(model)


def _check_metadata(model: Model) -> None:
    buffers = len(model.obj.buffers or [])
    for k, entry in enumerate(model.obj.metadata or []):
        if not 0 <= int(entry.buffer) < buffers:
            raise MalformedModelError(f"metadata entry {k} '{_text(entry.name)}' refers to "
                                      f"buffer {entry.buffer} of {buffers}")
    for b in model.obj.metadataBuffer if model.obj.metadataBuffer is not None else []:
        if not 0 <= int(b) < buffers:
            raise MalformedModelError(f"metadata buffer {b} is out of range ({buffers} "
                                      "buffers)")


def _check_strings(model: Model) -> None:
    """Flatbuffer strings are UTF-8: metadata names and custom operator codes."""
    for k, entry in enumerate(model.obj.metadata or []):
        if not _utf8(entry.name):
            raise MalformedModelError(f"metadata entry {k} has a name that is not UTF-8: "
                                      f"'{_text(entry.name)}'")
    for k, code in enumerate(model.obj.operatorCodes or []):
        if not _utf8(code.customCode):
            raise MalformedModelError(f"operator code {k} has a custom code that is not "
                                      f"UTF-8: '{_text(code.customCode)}'")


def _utf8(value: object) -> bool:
    if not isinstance(value, bytes):
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_signatures(model: Model) -> None:
    """Signature tensors of subgraph 0 name graph inputs and outputs."""
    graph_io = set(model.inputs) | set(model.outputs)
    for sig in model.obj.signatureDefs or []:
        if int(sig.subgraphIndex) != 0:
            continue
        key = _text(sig.signatureKey)
        for tmap in (*(sig.inputs or []), *(sig.outputs or [])):
            if int(tmap.tensorIndex) not in graph_io:
                raise MalformedModelError(f"signature {key!r} entry {_text(tmap.name)!r} refers "
                                          f"to tensor {tmap.tensorIndex}, not a model input or "
                                          "output")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


def _nbytes(t: TensorInfo, bits: int) -> int:
    return (math.prod(t.shape) * bits + 7) // 8


def _check_tensor(model: Model, t: TensorInfo) -> None:
    name = _tensor_name(t)
    if any(d < 0 for d in t.shape):
        raise MalformedModelError(f"{name} has a negative dimension {list(t.shape)}")
    bits = _bits(t.dtype)
    size = _nbytes(t, bits)
    if size > MAX_TENSOR_BYTES:
        raise MalformedModelError(f"{name} {list(t.shape)} {t.dtype} has {size:,} bytes: more "
                                  "than TFLM's 32-bit sizes allow")
    if t.is_constant:
        data = model.buffer_bytes(t.index)
        have = 0 if data is None else len(data)
        exact = t.dtype not in ("string", "resource", "variant")  # numbers: size is known
        if have < size or (exact and have != size):
            raise MalformedModelError(f"{name}: its buffer {t.buffer} holds {have:,} bytes, the "
                                      f"shape {list(t.shape)} {t.dtype} needs {size:,}")
    _check_quantization(t, name)


def _bits(dtype: str) -> int:
    from tflm_patch.model import _TENSOR_TYPES

    return next(bits for n, _, bits in _TENSOR_TYPES.values() if n == dtype)


def _check_quantization(t: TensorInfo, name: str) -> None:
    q = t.quantization
    if q is None:
        return
    for s in q.scale:
        if not math.isfinite(s) or s <= 0:
            raise MalformedModelError(f"{name} has quantization scale {s}: scales must be "
                                      "finite and positive")
    if q.zero_point and len(q.zero_point) != len(q.scale):
        raise MalformedModelError(f"{name} has {len(q.scale)} scales but "
                                  f"{len(q.zero_point)} zero points")
    lo, hi = _ZERO_POINT_RANGE.get(t.dtype, (-(1 << 31), (1 << 31) - 1))
    for z in q.zero_point:
        if not lo <= z <= hi:
            raise MalformedModelError(f"{name} ({t.dtype}) has zero point {z}, outside "
                                      f"{lo}..{hi}")
    # converters leave quantized_dimension 3 on 1-D biases (TFLM ignores it there)
    d = q.quantized_dimension
    if len(t.shape) == 1:
        d = 0
    if len(q.scale) > 1 and not (0 <= d < len(t.shape) and t.shape[d] == len(q.scale)):
        raise MalformedModelError(f"{name} {list(t.shape)} has {len(q.scale)} per-channel "
                                  f"scales along dimension {q.quantized_dimension}")


def _check_dataflow(model: Model) -> None:
    """Operators in execution order: each reads what is already there, none writes a
    constant or writes a tensor twice."""
    ready = set(model.inputs) | {t.index for t in model.tensors
                                 if t.is_constant or t.is_variable}
    written: set[int] = set()
    for op in model.operators:
        where = f"operator {op.index} ({op.name})"
        for t in op.inputs:
            if t >= 0 and t not in ready:
                raise MalformedModelError(f"{where} reads {_tensor_name(model.tensors[t])}, "
                                          "which no earlier operator writes and which is not "
                                          "a model input or constant")
        for t in op.outputs:
            if t < 0:
                raise MalformedModelError(f"{where} has an omitted output")
            tensor = model.tensors[t]
            if tensor.is_constant:
                raise MalformedModelError(f"{where} writes {_tensor_name(tensor)}, a constant")
            if t in written or t in model.inputs:
                raise MalformedModelError(f"{where} writes {_tensor_name(tensor)}, which is "
                                          "already written")
            written.add(t)
            ready.add(t)
    for t in model.outputs:
        if t not in ready:
            raise MalformedModelError(f"graph output {_tensor_name(model.tensors[t])} is never "
                                      "written")


# ----------------------------------------------------------------------------- operators


def _check_patch_exec(op: OperatorInfo) -> None:
    """A PATCH_EXEC operator's options decode and pass the format's rules."""
    from tflm_patch import patch_format as pf

    try:
        pf.decode(op.custom_options or b"")
    except pf.OptionsError as e:
        raise MalformedModelError(f"operator {op.index} (PATCH_EXEC): {e}") from None


def _check_operator(model: Model, op: OperatorInfo) -> None:
    if op.name == "PATCH_EXEC":
        _check_patch_exec(op)
        return
    if op.name not in _OPTIONS and op.name not in ("PAD", "PADV2", "MEAN", "TRANSPOSE"):
        return
    where = f"operator {op.index} ({op.name})"
    for message in _operator_problems(model, op):
        raise MalformedModelError(f"{where}: {message}")


def _operator_problems(model: Model, op: OperatorInfo) -> Iterator[str]:
    want = _OPTIONS.get(op.name)
    if want is not None and op.options is not None and type(op.options).__name__ != want:
        yield f"has {type(op.options).__name__[:-1]} instead of {want[:-1]}"
    if op.name in _WINDOW_OPS and op.options is None:
        yield f"has no {want[:-1] if want else 'options'}"
    if len(op.outputs) != 1:
        yield f"has {len(op.outputs)} outputs, expected 1"
    activation = getattr(op.options, "fusedActivationFunction", 0)
    if int(activation) not in _ACTIVATIONS:
        yield f"fused activation {activation} is not an ActivationFunctionType"
    if op.name in _QUANTIZED_OPS:
        yield from _quantized_io(model, op)
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        yield from _conv_problems(model, op)
    elif op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        yield from _pool_problems(model, op)
    elif op.name == "FULLY_CONNECTED":
        yield from _fc_problems(model, op)
    elif op.name == "ADD":
        if len(op.inputs) != 2 or min(op.inputs) < 0:
            yield f"has inputs {list(op.inputs)}, expected 2 tensors"
    elif op.name == "MEAN":
        yield from _mean_problems(model, op)
    elif op.name == "TRANSPOSE":
        yield from _transpose_problems(model, op)
    else:
        yield from _pad_problems(model, op)


def _transpose_problems(model: Model, op: OperatorInfo) -> Iterator[str]:
    """What TFLM's transpose_common.cc requires: 2 inputs, a constant permutation."""
    problems = [*_required(model, op, (2, 2))]
    yield from problems
    if problems:
        return
    src, perm, dst = (model.tensors[t] for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if perm.dtype != "int32" or not perm.is_constant or list(perm.shape) != [len(src.shape)]:
        yield (f"permutation {_tensor_name(perm)} is {perm.dtype} {list(perm.shape)}, expected "
               f"constant int32 [{len(src.shape)}]")
        return
    order = [int(v) for v in model.constant(op.inputs[1]).reshape(-1)]
    if sorted(order) != list(range(len(src.shape))):
        yield f"{order} is not a permutation of the input's {len(src.shape)} dimensions"
    elif list(dst.shape) != [src.shape[k] for k in order]:
        yield (f"output {_tensor_name(dst)} has shape {list(dst.shape)}; the input "
               f"{list(src.shape)} permuted by {order} gives {[src.shape[k] for k in order]}")


def _mean_problems(model: Model, op: OperatorInfo) -> Iterator[str]:
    problems = [*_required(model, op, (2, 2))]
    yield from problems
    if problems:
        return
    axes, src = model.tensors[op.inputs[1]], model.tensors[op.inputs[0]]
    if axes.dtype != "int32" or len(axes.shape) != 1 or not axes.is_constant or \
            axes.numel < 1:
        yield (f"axes {_tensor_name(axes)} is {axes.dtype} {list(axes.shape)}, expected "
               "constant int32 [n >= 1]")
        return
    values = model.constant(op.inputs[1]).reshape(-1).tolist()
    if any(not -len(src.shape) <= int(v) < len(src.shape) for v in values):
        yield f"axes {values} are out of range for the input {list(src.shape)}"


def _required(model: Model, op: OperatorInfo, count: tuple[int, int]) -> Iterator[str]:
    lo, hi = count
    if not lo <= len(op.inputs) <= hi or any(t < 0 for t in op.inputs[:lo]):
        want = f"{lo}" if lo == hi else f"{lo}..{hi} (the first {lo} present)"
        yield f"has inputs {list(op.inputs)}, expected {want}"


def _quantized_io(model: Model, op: OperatorInfo) -> Iterator[str]:
    acts = [t for t in (op.inputs[:2] if op.name == "ADD" else op.inputs[:1]) if t >= 0]
    types = {model.tensors[t].dtype for t in (*acts, *op.outputs)}
    if len(types) > 1:
        yield (f"input and output types differ ({', '.join(sorted(types))}); TFLM's kernel "
               "needs one type")
    for t in (*op.inputs[:2], *op.outputs):
        if t < 0:
            continue
        tensor = model.tensors[t]
        if tensor.dtype in ("int8", "int16", "uint8") and (
                tensor.quantization is None or not tensor.quantization.scale):
            yield f"{_tensor_name(tensor)} ({tensor.dtype}) has no quantization scale"


def _rank(model: Model, t: int, rank: int, what: str) -> Iterator[str]:
    tensor = model.tensors[t]
    if len(tensor.shape) != rank:
        yield f"{what} {_tensor_name(tensor)} has shape {list(tensor.shape)}, expected rank {rank}"


def _out_size(size: int, kernel: int, stride: int, dilation: int, padding: int) -> int:
    if padding == _SAME:
        return (size + stride - 1) // stride
    effective = (kernel - 1) * dilation + 1
    return (size - effective + stride) // stride


def _window_problems(model: Model, op: OperatorInfo, kernel: tuple[int, int],
                     dilation: tuple[int, int], channels: int) -> Iterator[str]:
    o = op.options
    stride = (int(o.strideH), int(o.strideW))
    if int(o.padding) not in (_SAME, _VALID):
        yield f"padding {o.padding} is neither SAME nor VALID"
        return
    if min(stride) < 1 or min(dilation) < 1 or min(kernel) < 1:
        yield (f"kernel {kernel[0]}x{kernel[1]}, strides {stride[0]}x{stride[1]} and dilations "
               f"{dilation[0]}x{dilation[1]} must all be at least 1")
        return
    src, dst = model.tensors[op.inputs[0]].shape, model.tensors[op.outputs[0]].shape
    want = [src[0], *(_out_size(src[1 + k], kernel[k], stride[k], dilation[k], int(o.padding))
                      for k in range(2)), channels]
    if list(dst) != want or min(want) < 1:
        yield (f"output {_tensor_name(model.tensors[op.outputs[0]])} has shape {list(dst)}; "
               f"the input {list(src)}, kernel, strides and padding give {want}")


def _conv_problems(model: Model, op: OperatorInfo) -> Iterator[str]:
    problems = [*_required(model, op, (2, 3))]
    if not problems:
        problems += [*_rank(model, op.inputs[0], 4, "input"), *_rank(model, op.inputs[1], 4,
                     "filter"), *_rank(model, op.outputs[0], 4, "output")]
    yield from problems
    if problems:
        return
    o = op.options
    w = model.tensors[op.inputs[1]].shape
    in_c = model.tensors[op.inputs[0]].shape[3]
    out_c = w[0] if op.name == "CONV_2D" else w[3]
    if op.name == "CONV_2D" and (w[3] < 1 or in_c % w[3]):
        yield f"filter {list(w)} does not divide the {in_c} input channels"
    if op.name == "DEPTHWISE_CONV_2D" and (w[0] != 1 or in_c < 1 or out_c % in_c):
        yield f"filter {list(w)} is not [1, kh, kw, a multiple of the {in_c} input channels]"
    if op.name == "DEPTHWISE_CONV_2D" and (len(op.inputs) < 3 or op.inputs[2] < 0):
        yield "has no bias (TFLM's depthwise kernel reads it while preparing: it crashes)"
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        bias = model.tensors[op.inputs[2]]
        if bias.numel != out_c or len(bias.shape) != 1:
            yield f"bias {_tensor_name(bias)} has shape {list(bias.shape)}, expected [{out_c}]"
    yield from _window_problems(model, op, (w[1], w[2]),
                                (int(o.dilationHFactor), int(o.dilationWFactor)), out_c)


def _pool_problems(model: Model, op: OperatorInfo) -> Iterator[str]:
    problems = [*_required(model, op, (1, 1))]
    if not problems:
        problems += [*_rank(model, op.inputs[0], 4, "input"),
                     *_rank(model, op.outputs[0], 4, "output")]
    yield from problems
    if not problems:
        o = op.options
        yield from _window_problems(model, op, (int(o.filterHeight), int(o.filterWidth)),
                                    (1, 1), model.tensors[op.inputs[0]].shape[3])


def _fc_problems(model: Model, op: OperatorInfo) -> Iterator[str]:
    problems = [*_required(model, op, (2, 3))]
    if not problems:
        problems += [*_rank(model, op.inputs[1], 2, "weights")]
    yield from problems
    if problems:
        return
    units, depth = model.tensors[op.inputs[1]].shape
    src, dst = model.tensors[op.inputs[0]], model.tensors[op.outputs[0]]
    if depth < 1 or src.numel % depth:
        yield f"input {list(src.shape)} is not a whole number of rows of depth {depth}"
    elif not dst.shape or dst.shape[-1] != units or dst.numel != src.numel // depth * units:
        yield (f"output {_tensor_name(dst)} has shape {list(dst.shape)}; {units} units on "
               f"{src.numel // depth} rows")


def _pad_problems(model: Model, op: OperatorInfo) -> Iterator[str]:
    problems = [*_required(model, op, (2, 3))]
    yield from problems
    if problems:
        return
    src = model.tensors[op.inputs[0]]
    pads = model.tensors[op.inputs[1]]
    if pads.is_constant and (pads.dtype not in ("int32", "int64")
                             or list(pads.shape) != [len(src.shape), 2]):
        yield (f"paddings {_tensor_name(pads)} is {pads.dtype} {list(pads.shape)}, expected "
               f"int32 [{len(src.shape)}, 2]")
        return
    if pads.is_constant:
        values = model.constant(op.inputs[1]).reshape(-1, 2)
        want = [int(d + a + b) for d, (a, b) in zip(src.shape, values.tolist(), strict=True)]
        dst = model.tensors[op.outputs[0]]
        if (values < 0).any() or list(dst.shape) != want:
            yield (f"output {_tensor_name(dst)} has shape {list(dst.shape)}; the input "
                   f"{list(src.shape)} padded by {values.tolist()} gives {want}")
