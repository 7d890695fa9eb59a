"""Crafted and mutated patched models for the model-level fuzzer (tests/test_model_fuzz.py,
tools/fuzz_models.py) and the glue's malformed-operator tests.

The base model is one PATCH_EXEC operator alone (odd_stride2 ops 0..4, grid 3x2: five
layers, conv and depthwise with bias, multipliers and shifts) whose output is the model
output, so TFLM's output is the kernel's output and the numpy reference
(patch_ref.run_patch_exec) is the oracle. A crafted case breaks one rule of
docs/patch_exec.md on purpose and names the `PATCH_EXEC: ...` message Prepare must give;
a mutation changes tensor shapes, types, buffers, operator indices, variable flags or
the options blob at random (seeded), and may move a constant's buffer to the very end of
the file, so that reading past it leaves the model's allocation.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import native_fuzz
import numpy as np

from tflm_patch import native, tflm_build
from tflm_patch import patch_format as pf
from tflm_patch.model import load_model, model_from_object, model_to_bytes
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage, replace_stages
from tflm_patch.schedule import make_schedule
from tflm_patch.schema import schema
from tflm_patch.stage import build_stage
from tflm_patch.validate import segment_model
from tflm_patch.zoo import ensure_model

BASE_STAGE = ("odd_stride2", 0, 4, (3, 2))
CONSTANT_FIELDS = ("weights", "bias", "multipliers", "shifts")
BIG = (1 << 31) - 1


@functools.cache
def sanitized_kernel() -> tuple[tflm_build.KernelLibrary | None, str]:
    """The PATCH_EXEC kernel built with ASan + UBSan (once), or None and why not."""
    missing = [v for v in (tflm_build.ENV_ROOT, tflm_build.ENV_EXTRA) if not os.environ.get(v)]
    if missing:
        return None, f"{' and '.join(missing)} not set: the kernel needs the TFLM headers"
    try:
        native.sanitizer_env()
        return tflm_build.build_kernel(sanitize=True), ""
    except native.NativeBuildError as e:
        return None, f"no sanitizer runtimes: {e}"
    except tflm_build.TflmBuildUnavailable as e:
        return None, str(e)


@dataclass(frozen=True)
class Crafted:
    """A model file, how it was made, and the message Prepare must refuse it with (a
    regular expression; "" for mutations, whose outcome is only classified)."""

    name: str
    data: bytes
    expect: str = ""
    verify: bool = True  # False: TFLM gets the file unverified, as on a device


# ------------------------------------------------------------------ the base model


@functools.cache
def _base_bytes() -> bytes:
    model = load_model(ensure_model(BASE_STAGE[0]))
    graph = build_stage(model, BASE_STAGE[1], BASE_STAGE[2])
    patched = model_from_object(replace_stage(model, graph, make_schedule(graph, BASE_STAGE[3]),
                                              pack=False))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    return segment_model(patched, [op.index], [op.inputs[0]], [op.outputs[0]])


def base_bytes() -> bytes:
    return _base_bytes()


@functools.cache
def packed_base_bytes() -> bytes:
    """The base stage as the converter writes it: packed constants (version 3), operator
    input 1 the int8 weights of every layer, input 2 the int32 biases, multipliers and
    shifts."""
    model = load_model(ensure_model(BASE_STAGE[0]))
    graph = build_stage(model, BASE_STAGE[1], BASE_STAGE[2])
    patched = model_from_object(replace_stage(model, graph, make_schedule(graph, BASE_STAGE[3]),
                                              pack=True))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    return segment_model(patched, [op.index], [op.inputs[0]], [op.outputs[0]])


def base_object() -> Any:
    """A fresh ModelT of the base model (callers edit it)."""
    return copy.deepcopy(load_model(_base_bytes()).obj)


def base_input(seed: int = 0) -> list[np.ndarray]:
    o = base_options()
    t = o.tensors[0]
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, (1, t.height, t.width, t.channels), dtype=np.int8)]


@functools.cache
def base_options() -> pf.PatchOptions:
    return pf.decode(bytes(patch_op(load_model(_base_bytes()).obj).customOptions))


def patch_op(obj: Any) -> Any:
    sg = obj.subgraphs[0]
    return next(op for op in sg.operators
                if obj.operatorCodes[op.opcodeIndex].customCode in (CUSTOM_CODE,
                                                                   CUSTOM_CODE.encode()))


def constant_input(field: str) -> int:
    """Operator input index of `field` (weights, bias, ...) of the base model's first
    conv layer."""
    ly = next(ly for ly in base_options().layers if ly.kind in pf.CONV_KINDS)
    return int(getattr(ly, field))


def operator_tensor(obj: Any, which: str) -> Any:
    """The model tensor of operator input `which` ("input 0", "weights", ...) or of
    "output 0"."""
    op = patch_op(obj)
    if which == "output 0":
        index = op.outputs[0]
    else:
        at = 0 if which == "input 0" else constant_input(which)
        index = op.inputs[at] if at < len(op.inputs) else op.inputs[0]
    return obj.subgraphs[0].tensors[index]


def _own_buffer(obj: Any, tensor: Any, data: bytes) -> None:
    """Give `tensor` a new buffer holding `data` (other tensors keep theirs)."""
    buf = schema().BufferT()
    buf.data = np.frombuffer(data, dtype=np.uint8) if data else None
    obj.buffers.append(buf)
    tensor.buffer = len(obj.buffers) - 1


def _buffer_data(obj: Any, tensor: Any) -> bytes:
    data = obj.buffers[tensor.buffer].data
    return b"" if data is None else np.asarray(data, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------ raw file edits


def _buffer_vector(data: bytes, buffer: int) -> tuple[int, int]:
    """(position of the Buffer table's `data` field, position of its vector) in a file."""
    b = schema().Model.GetRootAs(data, 0).Buffers(buffer)
    o = b._tab.Offset(4)  # vtable slot of field 0 (data)
    if o == 0:
        raise ValueError(f"buffer {buffer} has no data vector")
    field = b._tab.Pos + o
    return field, field + struct.unpack_from("<I", data, field)[0]


def move_buffer_to_end(data: bytes, buffer: int, misalign: int = 0) -> bytes:
    """The file with buffer `buffer`'s data vector copied to the very end (the table's
    offset redirected there): the last byte of the file is its last byte. The elements
    start 16-aligned, or `misalign` bytes past that (the length prefix then is not
    4-aligned: the flatbuffer verifier refuses such a file; TFLM does not check)."""
    field, vec = _buffer_vector(data, buffer)
    length = struct.unpack_from("<I", data, vec)[0]
    elements = data[vec + 4:vec + 4 + length]
    start = (len(data) + 4 + 15) // 16 * 16 + misalign  # where the elements go
    out = bytearray(data) + bytes(start - 4 - len(data))
    out += struct.pack("<I", length) + elements
    struct.pack_into("<I", out, field, start - 4 - field)
    return bytes(out)


def tensor_buffer(data: bytes, which: str) -> int:
    """The buffer index of an operator tensor of a model file."""
    return int(operator_tensor(load_model(data).obj, which).buffer)


# ------------------------------------------------------------------ crafted cases


Edit = Callable[[Any], None]


def _set_scratch(value: Callable[[pf.PatchOptions], int]) -> Edit:
    def edit(obj: Any) -> None:
        op = patch_op(obj)
        blob = bytearray(np.asarray(op.customOptions, dtype=np.uint8).tobytes())
        struct.pack_into("<I", blob, 20, value(pf.decode(bytes(blob))))
        op.customOptions = np.frombuffer(bytes(blob), dtype=np.uint8)
    return edit


def _huge_tensor_1(obj: Any) -> None:
    op = patch_op(obj)
    blob = bytearray(np.asarray(op.customOptions, dtype=np.uint8).tobytes())
    struct.pack_into("<HHH", blob, pf.HEADER_BYTES + pf.TENSOR_BYTES, 40000, 40000, 2)
    op.customOptions = np.frombuffer(bytes(blob), dtype=np.uint8)


def _make_constant(which: str) -> Edit:
    def edit(obj: Any) -> None:
        t = operator_tensor(obj, which)
        _own_buffer(obj, t, bytes(int(np.prod(t.shape))))  # int8: one byte per element
    return edit


def _make_variable(which: str) -> Edit:
    def edit(obj: Any) -> None:
        operator_tensor(obj, which).isVariable = True
    return edit


def _shorten(which: str, keep: Callable[[int], int]) -> Edit:
    def edit(obj: Any) -> None:
        t = operator_tensor(obj, which)
        data = _buffer_data(obj, t)
        _own_buffer(obj, t, data[:keep(len(data))])
    return edit


def _shape(which: str, shape: list[int]) -> Edit:
    def edit(obj: Any) -> None:
        operator_tensor(obj, which).shape = list(shape)
    return edit


def _alias_output_to_input(obj: Any) -> None:
    patch_op(obj).outputs = [patch_op(obj).inputs[0]]


def _edited(edit: Edit) -> bytes:
    obj = base_object()
    edit(obj)
    return model_to_bytes(obj)


_ARENA = r"is not planned in the arena"
_SHORT = r"input {} has a \d+-byte buffer; its shape needs \d+"


def _constant_cases() -> dict[str, tuple[Edit, str]]:
    cases: dict[str, tuple[Edit, str]] = {}
    for field in CONSTANT_FIELDS:
        index = constant_input(field)
        cases[f"{field}_buffer_short"] = (_shorten(field, lambda n: n - 4), _SHORT.format(index))
        cases[f"{field}_buffer_one_byte"] = (_shorten(field, lambda n: 1), _SHORT.format(index))
        cases[f"{field}_variable"] = (_make_variable(field),
                                      rf"input {index} is a variable tensor")
    w = constant_input("weights")
    huge = rf"input {w} has a negative dimension or more than 2\^31 - 1 elements"
    cases["weights_shape_overflows_64_bits"] = (_shape("weights", [BIG, BIG, BIG, 3]), huge)
    cases["weights_shape_overflows_32_bits"] = (_shape("weights", [65536, 65536, 1, 1]), huge)
    cases["weights_negative_dimension"] = (_shape("weights", [-1, 3, 3, -8]), huge)
    return cases


# ------------------------------------------------------------------ packed constants

PACKED_NAMES = ("packed_weights_past_the_end", "packed_weights_past_the_end_at_file_end",
                "packed_offset_over_2_31_bytes", "packed_negative_offset",
                "packed_int32_buffer_short", "packed_weights_as_int32",
                "packed_int32_misaligned")


def _packed_layer_field(k: int, position: int, value: Callable[[Any, pf.PatchOptions], int]
                        ) -> Edit:
    """Set field `position` (struct offset in the layer record, a little-endian i32 at
    32 + 4 * i for p[i], a u16 below 32) of layer k of the packed base's options."""
    def edit(obj: Any) -> None:
        op = patch_op(obj)
        blob = bytearray(np.asarray(op.customOptions, dtype=np.uint8).tobytes())
        o = pf.decode(bytes(blob))
        n, m = o.grid
        at = pf.HEADER_BYTES + len(o.tensors) * (pf.TENSOR_BYTES + pf.RANGE_BYTES * (n + m)) \
            + pf.LAYER_BYTES * k + position
        struct.pack_into("<i" if position >= 32 else "<H", blob, at, value(obj, o))
        op.customOptions = np.frombuffer(bytes(blob), dtype=np.uint8)
    return edit


def _int8_length(obj: Any, o: pf.PatchOptions) -> int:
    return len(_buffer_data(obj, obj.subgraphs[0].tensors[patch_op(obj).inputs[1]]))


def _shorten_input(index: int) -> Edit:
    def edit(obj: Any) -> None:
        t = obj.subgraphs[0].tensors[patch_op(obj).inputs[index]]
        _own_buffer(obj, t, _buffer_data(obj, t)[:-4])
    return edit


_PACKED_EDITS: dict[str, tuple[Edit, str]] = {
    # layer 0 (CONV_2D) reads its weights from the end of input 1 on
    "packed_weights_past_the_end": (
        _packed_layer_field(0, 32 + 4 * 4, _int8_length),
        r"input 1 has \d+ elements; the options need at least \d+"),
    "packed_offset_over_2_31_bytes": (
        _packed_layer_field(0, 32 + 4 * 6, lambda obj, o: BIG),
        r"invalid options \(status 7\): layer 0 \(CONV_2D\): operator input 2 is used with "
        r"another type or size, or is over 2\^31 - 1 bytes"),
    "packed_negative_offset": (
        _packed_layer_field(0, 32 + 4 * 4, lambda obj, o: -1),
        r"invalid options \(status 7\): layer 0 \(CONV_2D\): constant offsets \[-1, \d+, "
        r"\d+, \d+\] negative, or a bias offset without a bias"),
    "packed_int32_buffer_short": (_shorten_input(2),
                                  r"input 2 has a \d+-byte buffer; its shape needs \d+"),
    # layer 1 reads its weights (int8) from input 2, the int32 tensor
    "packed_weights_as_int32": (
        _packed_layer_field(1, 24, lambda obj, o: 2),
        r"invalid options \(status 7\): layer 1 \(DEPTHWISE_CONV_2D\): operator input 2 is "
        r"used with another type or size"),
}


LUT_NAMES = ("lut_table_255_entries", "lut_table_int32", "lut_table_buffer_short",
             "lut_table_variable", "lut_table_buffer_short_at_file_end")


@functools.cache
def lut_base_bytes() -> bytes:
    """One PATCH_EXEC of one LUT layer (the table of a HARD_SWISH, operator input 1, its
    own int8 tensor of 256 elements) on the base model's input shape, grid 2x2."""
    fb = schema()
    t = base_options().tensors[0]
    shape = [1, t.height, t.width, t.channels]
    tensors = []
    for k, (scale, zp) in enumerate(((0.05, 10), (0.03, -60))):
        q = fb.QuantizationParametersT()
        q.scale, q.zeroPoint = [scale], [zp]
        tt = fb.TensorT()
        tt.shape, tt.type, tt.buffer, tt.name = list(shape), 9, k + 1, f"t{k}"  # INT8
        tt.quantization = q
        tensors.append(tt)
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = 117, 117, 1  # HARD_SWISH
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    sg = fb.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [1], [op]
    obj = fb.ModelT()
    obj.version, obj.operatorCodes, obj.subgraphs = 3, [code], [sg]
    obj.buffers = [fb.BufferT() for _ in range(3)]
    model = load_model(model_to_bytes(obj))
    graph = build_stage(model, 0, 0)
    return model_to_bytes(replace_stages(model, [(graph, make_schedule(graph, (2, 2)))],
                                         pack=False))


def _table(data: bytes, shape: list[int], dtype: int = 9) -> Edit:
    def edit(obj: Any) -> None:
        t = obj.subgraphs[0].tensors[patch_op(obj).inputs[1]]
        _own_buffer(obj, t, data)
        t.shape, t.type = shape, dtype
    return edit


def _table_variable(obj: Any) -> None:
    obj.subgraphs[0].tensors[patch_op(obj).inputs[1]].isVariable = True


_LUT_EDITS: dict[str, tuple[Edit, str]] = {
    "lut_table_255_entries": (_table(bytes(255), [255]),
                              r"input 1 has 255 elements; the options need 256"),
    "lut_table_int32": (_table(bytes(256), [64], dtype=2), r"input 1 is int32"),
    "lut_table_buffer_short": (_table(bytes(200), [256]),
                               r"input 1 has a 200-byte buffer; its shape needs 256"),
    "lut_table_variable": (_table_variable, r"input 1 is a variable tensor"),
}


def _lut_cases() -> dict[str, Crafted]:
    """The LUT base with a bad table (LUT_NAMES): too short, int32, a short buffer (also
    as the last bytes of the file), a variable tensor."""
    cases = {}
    for name, (edit, expect) in _LUT_EDITS.items():
        obj = copy.deepcopy(load_model(lut_base_bytes()).obj)
        edit(obj)
        cases[name] = Crafted(name, model_to_bytes(obj), expect)
    short = cases["lut_table_buffer_short"]
    patched = load_model(short.data)
    buffer = int(patched.tensors[patch_op(patched.obj).inputs[1]].buffer)
    cases["lut_table_buffer_short_at_file_end"] = Crafted(
        "lut_table_buffer_short_at_file_end", move_buffer_to_end(short.data, buffer),
        short.expect)
    return cases


def _packed_cases() -> dict[str, Crafted]:
    """The packed base broken one rule at a time (PACKED_NAMES): offsets past the end of
    a shared constant (also with its buffer the last bytes of the file), a 64-bit
    offset + count over 2^31 - 1 bytes, a negative offset, a short buffer, one input read
    as two types, the int32 constants misaligned."""
    cases = {}
    for name, (edit, expect) in _PACKED_EDITS.items():
        obj = copy.deepcopy(load_model(packed_base_bytes()).obj)
        edit(obj)
        cases[name] = Crafted(name, model_to_bytes(obj), expect)
    past = cases["packed_weights_past_the_end"]
    buffer = int(load_model(past.data).tensors[patch_op(load_model(past.data).obj).inputs[1]]
                 .buffer)
    cases["packed_weights_past_the_end_at_file_end"] = Crafted(
        "packed_weights_past_the_end_at_file_end", move_buffer_to_end(past.data, buffer),
        past.expect)
    base = packed_base_bytes()
    buffer = int(load_model(base).tensors[patch_op(load_model(base).obj).inputs[2]].buffer)
    cases["packed_int32_misaligned"] = Crafted(
        "packed_int32_misaligned", move_buffer_to_end(base, buffer, misalign=2),
        r"invalid constant input \(status 11\): input 2: int32 data at an address that is "
        "not a multiple of 4", verify=False)
    return cases


_MOVED = (("output_constant", "output 0"), ("weights_buffer_short", "weights"),
          ("bias_buffer_short", "bias"), ("multipliers_buffer_short", "multipliers"),
          ("shifts_buffer_one_byte", "shifts"))
_MISALIGNED = ("bias", "multipliers", "shifts")
CRAFTED_NAMES = (
    "scratch_bytes_near_2_32", "scratch_bytes_2_31", "scratch_bytes_over_what_slots_need",
    "stage_tensor_over_2_31_bytes", "output_constant", "output_variable", "input_constant",
    "output_is_input",
    *(f"{f}_{what}" for f in CONSTANT_FIELDS for what in ("buffer_short", "buffer_one_byte",
                                                          "variable")),
    "weights_shape_overflows_64_bits", "weights_shape_overflows_32_bits",
    "weights_negative_dimension",
    *(f"{name}_at_file_end" for name, _ in _MOVED),
    *(f"{f}_misaligned" for f in _MISALIGNED), *PACKED_NAMES, *LUT_NAMES)


@functools.cache
def crafted_edits() -> dict[str, tuple[Edit, str]]:
    """Edits of a model object (any model whose one PATCH_EXEC is the base stage) that
    break one rule each, with the message Prepare must refuse them with."""
    return {
        "scratch_bytes_near_2_32": (
            _set_scratch(lambda o: 0xFFFFFFF1),
            r"invalid options \(status 5\): scratch_bytes 4294967281 is more than 2147483632"),
        "scratch_bytes_2_31": (
            _set_scratch(lambda o: 1 << 31),
            r"invalid options \(status 5\): scratch_bytes 2147483648 is more than"),
        "scratch_bytes_over_what_slots_need": (
            _set_scratch(lambda o: pf.scratch_bound(o)[0] + 1),
            r"invalid options \(status 5\): scratch_bytes \d+ is more than the \d+ bytes its "
            r"\d+ slots and caches need"),
        "stage_tensor_over_2_31_bytes": (
            _huge_tensor_1, r"invalid options \(status 5\): tensor 1: 40000x40000x2 is "
            r"3200000000 bytes, more than 2\^31 - 1"),
        "output_constant": (_make_constant("output 0"), "output 0 " + _ARENA),
        "output_variable": (_make_variable("output 0"), "output 0 is a variable tensor"),
        "input_constant": (_make_constant("input 0"), "input 0 " + _ARENA),
        "output_is_input": (_alias_output_to_input, "input 0 and output 0 are the same tensor"),
        **_constant_cases(),
    }


@functools.cache
def crafted_cases() -> dict[str, Crafted]:
    """The named crafted models (CRAFTED_NAMES), one per finding and rule."""
    cases = {name: Crafted(name, _edited(edit), expect)
             for name, (edit, expect) in crafted_edits().items()}
    cases.update(_moved_cases(cases))
    cases.update(_packed_cases())
    cases.update(_lut_cases())
    return cases


def _moved_cases(cases: dict[str, Crafted]) -> dict[str, Crafted]:
    """Buffers moved to the end of the file: an overread leaves the allocation."""
    moved: dict[str, Crafted] = {}
    for name, which in _MOVED:
        c = cases[name]
        data = move_buffer_to_end(c.data, tensor_buffer(c.data, which))
        moved[f"{name}_at_file_end"] = Crafted(f"{name}_at_file_end", data, c.expect)
    base = base_bytes()
    for field in _MISALIGNED:
        index = constant_input(field)
        data = move_buffer_to_end(base, tensor_buffer(base, field), misalign=2)
        moved[f"{field}_misaligned"] = Crafted(
            f"{field}_misaligned", data,
            rf"invalid constant input \(status 11\): input {index}: int32 data at an address "
            "that is not a multiple of 4", verify=False)
    return moved


# ------------------------------------------------------------------ valid oddities

VALID_NAMES = ("slots_at_odd_offsets", "scratch_bytes_at_the_bound", "constants_at_file_end",
               "packed_constants")


def _odd_slots(obj: Any) -> None:
    """Every slot one byte further (4-byte alignment lost), the scratch one byte longer."""
    op = patch_op(obj)
    o = pf.decode(np.asarray(op.customOptions, dtype=np.uint8).tobytes())
    tensors = tuple(t if not o.has_slot(k) else replace(t, slot_offset=t.slot_offset + 1)
                    for k, t in enumerate(o.tensors))
    blob = pf.encode(replace(o, tensors=tensors, scratch_bytes=o.scratch_bytes + 1))
    op.customOptions = np.frombuffer(blob, dtype=np.uint8)


@functools.cache
def valid_cases() -> dict[str, Crafted]:
    """Models that obey every rule in unusual ways: they must run, equal to the numpy
    reference."""
    data = base_bytes()
    for field in CONSTANT_FIELDS:
        data = move_buffer_to_end(data, tensor_buffer(data, field))
    cases = {
        "slots_at_odd_offsets": _edited(_odd_slots),
        "scratch_bytes_at_the_bound": _edited(_set_scratch(lambda o: pf.scratch_bound(o)[0])),
        "constants_at_file_end": data,
        "packed_constants": packed_base_bytes(),
    }
    return {name: Crafted(name, d) for name, d in cases.items()}


# ------------------------------------------------------------------ SE side inputs

SE_CRAFTED_NAMES = ("scale_wrong_size", "scale_wrong_type", "scale_constant",
                    "scale_variable", "scale_is_output", "addend_wrong_size",
                    "addend_constant")


@functools.cache
def se_base(data: bytes) -> tuple[bytes, list[np.ndarray]]:
    """From a model with a squeeze-and-excitation block (its first SE MUL followed by the
    projection CONV_2D and the residual ADD): that stage as one PATCH_EXEC (grid 2x1) alone
    in a model whose inputs are the stage input x, the per-channel scale s and the residual
    addend r, and seeded inputs for it."""
    from tflm_patch.stage import side_operand

    model = load_model(data)
    mul = next(op for op in model.operators if side_operand(model, op) is not None)
    graph = build_stage(model, mul.index, mul.index + 2, live_input=True)
    patched = model_from_object(replace_stage(model, graph, make_schedule(graph, (2, 1)),
                                              pack=False))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    runtime = [t for t in patched.activation_inputs(op)[1:]]
    base = segment_model(patched, [op.index], [op.inputs[0], *runtime], [op.outputs[0]])
    shapes = [patched.tensors[t].shape for t in (op.inputs[0], *runtime)]
    rng = np.random.default_rng(5)
    return base, [rng.integers(-128, 128, s, dtype=np.int8) for s in shapes]


def _se_input(which: int) -> Callable[[Any], Any]:
    """The tensor of operator input `which` among the runtime ones (0: the scale s,
    1: the addend r)."""
    def get(obj: Any) -> Any:
        op = patch_op(obj)
        o = pf.decode(np.asarray(op.customOptions, dtype=np.uint8).tobytes())
        index = [ly.weights for ly in o.layers if ly.kind in (pf.MUL, pf.ADD)
                 and ly.weights != pf.NONE][which]
        return obj.subgraphs[0].tensors[op.inputs[index]], index
    return get


def _se_edit(which: int, change: Callable[[Any, Any, Any], None]) -> Callable[[Any], int]:
    def edit(obj: Any) -> int:
        tensor, index = _se_input(which)(obj)
        change(obj, tensor, patch_op(obj))
        return int(index)
    return edit


def _smaller(obj: Any, t: Any, op: Any) -> None:
    t.shape = [*list(t.shape)[:-1], int(t.shape[-1]) - 1]


def _uint8(obj: Any, t: Any, op: Any) -> None:
    t.type = schema().TensorType.UINT8


def _constant(obj: Any, t: Any, op: Any) -> None:
    _own_buffer(obj, t, bytes(int(np.prod(t.shape))))


def _variable(obj: Any, t: Any, op: Any) -> None:
    t.isVariable = True


def _scale_is_output(obj: Any) -> int:
    _, index = _se_input(0)(obj)
    op = patch_op(obj)
    inputs = list(op.inputs)
    inputs[index] = op.outputs[0]
    op.inputs = inputs
    return int(index)


_SE_EDITS: dict[str, tuple[Callable[[Any], int], str]] = {
    "scale_wrong_size": (_se_edit(0, _smaller), r"input {} has \d+ elements; the options need \d+"),
    "scale_wrong_type": (_se_edit(0, _uint8), r"input {} is uint8.*the options need int8"),
    "scale_constant": (_se_edit(0, _constant), r"input {} " + _ARENA),
    "scale_variable": (_se_edit(0, _variable), r"input {} " + _ARENA),
    "scale_is_output": (_scale_is_output, r"input {} is the operator's output"),
    "addend_wrong_size": (_se_edit(1, _smaller), r"input {} has \d+ elements; the options "
                          r"need \d+"),
    "addend_constant": (_se_edit(1, _constant), r"input {} " + _ARENA),
}


@functools.cache
def se_crafted_cases(data: bytes) -> dict[str, Crafted]:
    """se_base(data) broken one runtime-input rule at a time (SE_CRAFTED_NAMES), with the
    one-line message Prepare must refuse it with."""
    cases = {}
    for name, (edit, expect) in _SE_EDITS.items():
        obj = copy.deepcopy(load_model(se_base(data)[0]).obj)
        index = edit(obj)
        cases[name] = Crafted(name, model_to_bytes(obj), expect.format(index))
    return cases


# ------------------------------------------------------------------ mutations

_TYPES = ("INT8", "UINT8", "INT16", "INT32", "INT64", "FLOAT32")
_DIMS = (0, 1, 2, 3, -1, 7, 97, 255, 65535, 65536, BIG, -BIG - 1)
_WHICH = ("input 0", "output 0", *CONSTANT_FIELDS)


def _mutate_shape(obj: Any, rng: random.Random) -> str:
    t = operator_tensor(obj, rng.choice(_WHICH))
    shape = [int(v) for v in t.shape]
    roll = rng.random()
    if roll < 0.15 and shape:
        shape.pop(rng.randrange(len(shape)))
    elif roll < 0.3:
        shape.insert(rng.randrange(len(shape) + 1), rng.choice(_DIMS))
    elif shape:
        i = rng.randrange(len(shape))
        shape[i] = rng.choice((*_DIMS, shape[i] + 1, shape[i] - 1, shape[i] * 2))
    t.shape = shape
    return "shape"


def _mutate_type(obj: Any, rng: random.Random) -> str:
    operator_tensor(obj, rng.choice(_WHICH)).type = getattr(schema().TensorType,
                                                          rng.choice(_TYPES))
    return "type"


def _mutate_buffer(obj: Any, rng: random.Random) -> str:
    t = operator_tensor(obj, rng.choice(_WHICH))
    roll = rng.random()
    if roll < 0.3:
        t.buffer = rng.randrange(len(obj.buffers))  # another tensor's data, or none
        return "buffer index"
    data = _buffer_data(obj, t)
    cut = data[:rng.randrange(len(data) + 1)]
    data = cut if roll < 0.7 else data + bytes(rng.randrange(1, 17))
    _own_buffer(obj, t, data)
    return "buffer length"


def _mutate_indices(obj: Any, rng: random.Random) -> str:
    op = patch_op(obj)
    count = len(obj.subgraphs[0].tensors)
    roll = rng.random()
    if roll < 0.15:
        op.outputs = [rng.randrange(count)]
    elif roll < 0.25 and len(op.inputs) > 1:
        op.inputs = list(op.inputs)[:-1]
    elif roll < 0.3:
        op.inputs = [*op.inputs, rng.randrange(-1, count)]
    else:
        inputs = list(op.inputs)
        inputs[rng.randrange(len(inputs))] = rng.randrange(-1, count)
        op.inputs = inputs
    return "operator indices"


def _mutate_variable(obj: Any, rng: random.Random) -> str:
    t = operator_tensor(obj, rng.choice(_WHICH))
    t.isVariable = not t.isVariable
    return "is_variable"


def _mutate_options(obj: Any, rng: random.Random) -> str:
    op = patch_op(obj)
    blob = np.asarray(op.customOptions, dtype=np.uint8).tobytes()
    op.customOptions = np.frombuffer(native_fuzz.mutate(blob, rng), dtype=np.uint8)
    return "options"


_MUTATORS = (_mutate_shape, _mutate_type, _mutate_buffer, _mutate_indices, _mutate_variable,
             _mutate_options, _mutate_options)


def mutated_case(seed: int) -> Crafted | None:
    """One to three random mutations of the base model (seeded), a constant's buffer
    moved to the end of the file half of the time; None when the result cannot be
    written as a flatbuffer at all."""
    rng = random.Random(seed)
    obj = base_object()
    kinds = [rng.choice(_MUTATORS)(obj, rng) for _ in range(rng.randint(1, 3))]
    try:
        data = model_to_bytes(obj)
    except (struct.error, OverflowError, ValueError, TypeError):
        return None
    if rng.random() < 0.5:
        try:
            which = rng.choice(_WHICH)
            data = move_buffer_to_end(data, tensor_buffer(data, which))
            kinds.append(f"{which} buffer at the end")
        except Exception:  # the mutations left no such tensor or buffer: keep the file
            pass
    return Crafted(f"seed {seed}: {', '.join(kinds)}", data)


# ------------------------------------------------------------------ running and judging

RAN_EQUAL = "ran, equal to the numpy reference"
REFUSED_VERIFIER = "refused by the flatbuffer verifier"
REFUSED_PREPARE = "refused in Prepare (PATCH_EXEC: ...)"
REFUSED_TFLM = "refused by TFLM itself"
# outcomes that are bugs
SANITIZER = "sanitizer report"
SIGNAL = "killed by a signal"
TIMEOUT = "timeout"
MISMATCH = "ran, different from the numpy reference"
NUMPY_ONLY = "the numpy reference accepts what TFLM refuses"
KERNEL_ONLY = "TFLM runs what the numpy reference refuses"
NUMPY_CRASH = "the numpy reference raised an unexpected exception"
BAD = frozenset({SANITIZER, SIGNAL, TIMEOUT, MISMATCH, NUMPY_ONLY, KERNEL_ONLY, NUMPY_CRASH})


@dataclass(frozen=True)
class Verdict:
    case: Crafted
    outcome: str
    detail: str  # TFLM's message (refusals) or the numpy reference's
    numpy_message: str = ""

    @property
    def bad(self) -> bool:
        """A bug: a bad outcome, a crafted case not refused in Prepare, or a valid oddity
        (or the unmodified model) that did not run like the reference."""
        if self.case.expect:
            return self.outcome != REFUSED_PREPARE
        if self.case.name in (*VALID_NAMES, "unmodified"):
            return self.outcome != RAN_EQUAL
        return self.outcome in BAD


def numpy_reference(data: bytes, inputs: list[np.ndarray]) -> tuple[np.ndarray | None, str]:
    """The split path's answer for the PATCH_EXEC operator: (its output, "") or (None,
    why it refuses)."""
    from tflm_patch.errors import TflmPatchError
    from tflm_patch.patch_ref import run_patch_exec

    try:
        model = load_model(data)
        op = next((o for o in model.operators if o.name == CUSTOM_CODE), None)
        if op is None:
            return None, "no PATCH_EXEC operator"
        shape = model.tensors[op.inputs[0]].shape if op.inputs and op.inputs[0] >= 0 else ()
        if math.prod(shape) != inputs[0].size:  # validate's split path reshapes to it
            return None, f"the input does not fit the model's input 0 {list(shape)}"
        side = dict(zip(model.inputs[1:], inputs[1:], strict=False))  # runtime inputs
        return run_patch_exec(model, op, inputs[0].reshape(shape), side=side), ""
    except TflmPatchError as e:
        return None, str(e)


def judge(case: Crafted, run: Any, inputs: list[np.ndarray]) -> Verdict:
    """Classify one tflm_runner.IsolatedOutcome against the numpy reference."""
    if run.sanitizer or run.signal or run.timed_out:
        kind = SANITIZER if run.sanitizer else SIGNAL if run.signal else TIMEOUT
        return Verdict(case, kind, run.sanitizer or run.signal or run.error)
    try:
        ref, why = numpy_reference(case.data, inputs)
    except Exception as e:  # a traceback where a refusal belongs
        return Verdict(case, NUMPY_CRASH, f"{type(e).__name__}: {e}")
    if run.ran:
        if ref is None:
            return Verdict(case, KERNEL_ONLY, why, why)
        same = run.outputs[0].shape == ref.shape and bool((run.outputs[0] == ref).all())
        return Verdict(case, RAN_EQUAL if same else MISMATCH, "")
    if run.phase == "verifying":
        kind = REFUSED_VERIFIER
    elif run.phase == "allocating tensors" and "PATCH_EXEC: " in run.log:
        kind = REFUSED_PREPARE
    else:
        kind = REFUSED_TFLM
    detail = run.log or run.error
    if ref is not None:
        return Verdict(case, NUMPY_ONLY, detail)
    return Verdict(case, kind, detail, why)


def run_cases(cases: list[Crafted], kernel: Any, inputs: list[np.ndarray],
              timeout: float = 60.0) -> list[Verdict]:
    """Every case in its own process of one sanitized TFLM child (verified and unverified
    files in two children), judged."""
    from tflm_patch.native import sanitizer_env
    from tflm_patch.tflm_runner import run_isolated

    verdicts: dict[str, Verdict] = {}
    for verify in (True, False):
        group = [c for c in cases if c.verify == verify]
        if not group:
            continue
        runs = run_isolated([c.data for c in group], inputs, **kernel.runner_kwargs(),
                            env=sanitizer_env() if kernel.sanitized else None,
                            verify=verify, timeout=timeout)
        for c, r in zip(group, runs, strict=True):
            verdicts[c.name] = judge(c, r, inputs)
    return [verdicts[c.name] for c in cases]
