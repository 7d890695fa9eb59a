"""Export a model for a TFLM application: C++ source text, no TFLM needed to generate it.

`export_model` turns model bytes into the files an application compiles in:

- `model_data.h` / `.cc` (`.cpp` for Arduino sketches): the model as an
  `alignas(16) const unsigned char` array (in flash on a microcontroller: `const` data
  goes to `.rodata`) and its length;
- `model_settings.h`: the tensor arena to declare (the arena model's prediction for a
  32-bit Cortex-M TFLM, `predict_arena(model, "cortex_m")`, plus a safety margin, see
  `ArenaBudget`), the input/output shapes and, as comments, the operator list;
- `model_ops.h`: `RegisterModelOps(resolver)`, which registers each operator the model
  uses once with a `tflite::MicroMutableOpResolver` (builtins through their `Add*`
  method, PATCH_EXEC through `AddCustom`), and `kNumResolverOps` for its size;
- optionally `test_image.h` / `.cc`: one input as an `int8_t` array (a file's bytes, or a
  seeded synthetic image), for a sketch that runs without a camera.

Everything here maps bytes to text (`ExportFile`s); writing them is the CLI's job
(`cli_export`). Unknown operators (no resolver method known) are refused by name.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tflm_patch import __version__
from tflm_patch.errors import TflmPatchError
from tflm_patch.model import Model, load_model, require_int8

log = logging.getLogger(__name__)

PATCH_EXEC = "PATCH_EXEC"
ARENA_TARGET = "cortex_m"
# Safety margin on top of the predicted arena: this fraction of the prediction, at least
# ARENA_MARGIN_MIN bytes, rounded up so that the total is a multiple of 16. What it covers:
# the prediction is TFLM's reference-kernel allocation with current struct layouts, while
# an Arduino build (Arduino_TensorFlowLite, TFLM of February 2023) uses CMSIS-NN kernels,
# some of which request scratch buffers the reference kernels do not (pooling: 4 bytes
# per channel; convolution/fully connected: im2col and accumulator buffers), and older
# TFLM structs of slightly different sizes.
ARENA_MARGIN_FRACTION = 0.10
ARENA_MARGIN_MIN = 2048
ARENA_ALIGN = 16
DEFAULT_SYMBOL = "g_model"
DEFAULT_IMAGE_SEED = 20211029  # the zoo's seed (MCUNetV2's arXiv date)
BYTES_PER_LINE = 12

# BuiltinOperator name -> MicroMutableOpResolver method. Read from TFLM's
# micro_mutable_op_resolver.h (tests check every entry against the headers when
# TFLM_ROOT / TFLM_2023_ROOT are set).
RESOLVER_METHODS: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin", "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd", "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce", "CAST": "AddCast",
    "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv", "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "ELU": "AddElu", "EQUAL": "AddEqual",
    "EXP": "AddExp", "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv", "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather", "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual", "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization", "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd", "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic", "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D", "MIRROR_PAD": "AddMirrorPad",
    "MEAN": "AddMean", "MINIMUM": "AddMinimum", "MUL": "AddMul", "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2",
    "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable",
    "REDUCE_ALL": "AddReduceAll", "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu", "RELU6": "AddRelu6", "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape",
    "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQUEEZE": "AddSqueeze", "SQRT": "AddSqrt",
    "SQUARE": "AddSquare", "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf",
    "TANH": "AddTanh", "TRANSPOSE_CONV": "AddTransposeConv", "TRANSPOSE": "AddTranspose",
    "UNPACK": "AddUnpack", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}
# Builtins whose Add* method came after February 2023: Arduino_TensorFlowLite (frozen at
# that TFLM) cannot run them.
NOT_IN_ARDUINO_2023 = frozenset({"BATCH_MATMUL", "DYNAMIC_UPDATE_SLICE", "EMBEDDING_LOOKUP",
                                 "REDUCE_ALL", "REDUCE_MIN", "REVERSE_V2"})
# Custom operators TFLM registers with a method of its own.
CUSTOM_METHODS: dict[str, str] = {
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess",
    "CIRCULAR_BUFFER": "AddCircularBuffer",
}
PATCH_EXEC_CALL = f'AddCustom("{PATCH_EXEC}", tflite::Register_PATCH_EXEC())'

_IO_NAME = re.compile(r"k(Input|Output)\d*(Type|Rank|Shape|Bytes|Scale|ZeroPoint)")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_C_SIZE = 0xFFFFFFFF  # the generated sizes are `unsigned int`: 32 bits on every target
MAX_C_INT = 0x7FFFFFFF
CXX_KEYWORDS = frozenset({
    "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break",
    "case", "catch", "char", "char8_t", "char16_t", "char32_t", "class", "compl", "concept",
    "const", "consteval", "constexpr", "constinit", "const_cast", "continue", "co_await",
    "co_return", "co_yield", "decltype", "default", "delete", "do", "double", "dynamic_cast",
    "else", "enum", "explicit", "export", "extern", "false", "float", "for", "friend", "goto",
    "if", "inline", "int", "long", "mutable", "namespace", "new", "noexcept", "not", "not_eq",
    "nullptr", "operator", "or", "or_eq", "private", "protected", "public", "register",
    "reinterpret_cast", "requires", "return", "short", "signed", "sizeof", "static",
    "static_assert", "static_cast", "struct", "switch", "template", "this", "thread_local",
    "throw", "true", "try", "typedef", "typeid", "typename", "union", "unsigned", "using",
    "virtual", "void", "volatile", "wchar_t", "while", "xor", "xor_eq", "main", "NULL"})
# Names the generated files define or use: a model symbol (or SYMBOL_len) must not clash.
GENERATED_NAMES = frozenset({
    "g_test_image", "g_test_image_origin", "kTestImageBytes", "kTensorArenaSize",
    "kTensorArenaPredicted", "kInputRank", "kInputShape", "kInputBytes", "kOutputRank",
    "kOutputShape", "kOutputBytes", "kNumResolverOps", "ModelOpResolver", "RegisterModelOps",
    "kNumInputs", "kNumOutputs", "kInputType", "kInputScale", "kInputZeroPoint",
    "kOutputType", "kOutputScale", "kOutputZeroPoint",
    "kCapacity", "resolver", "statuses", "status", "tflite", "TfLiteStatus", "kTfLiteOk",
    "kTfLiteError", "int8_t", "uint8_t", "tensor_arena", "std"})


class ExportError(TflmPatchError):
    """The model cannot be exported as asked (unknown operator, bad test image, ...)."""


@dataclass(frozen=True)
class ResolverOp:
    """One entry of the op resolver: an operator kind the model uses."""

    op: str  # builtin name ("CONV_2D") or custom code ("PATCH_EXEC")
    call: str  # what to call on the resolver, e.g. "AddConv2D()"
    count: int  # how many operators of the model are of this kind
    in_arduino_2023: bool  # Arduino_TensorFlowLite (Feb 2023 TFLM) has the method


@dataclass(frozen=True)
class ArenaBudget:
    """The tensor arena to declare: the prediction plus the safety margin."""

    predicted: int  # predict_arena(model, "cortex_m").total
    head: int  # activations + scratch buffers (part of `predicted`)
    tail: int  # persistent allocations (part of `predicted`)
    margin: int

    @property
    def total(self) -> int:
        return self.predicted + self.margin


@dataclass(frozen=True)
class BundledImage:
    """One model input (input 0) as bytes of its type, and where it comes from (said in
    the source)."""

    data: bytes
    origin: str
    dtype: str = "int8"  # "int8", "uint8" or "float32"


C_TYPES = {"int8": "int8_t", "uint8": "uint8_t", "float32": "float"}


@dataclass(frozen=True)
class ExportFile:
    name: str
    text: str


@dataclass(frozen=True)
class Export:
    files: tuple[ExportFile, ...]
    ops: tuple[ResolverOp, ...]
    arena: ArenaBudget
    model_bytes: int
    sha256: str


def resolver_ops(model: Model) -> tuple[ResolverOp, ...]:
    """The operator kinds of `model`, in order of first use. Unknown ones raise
    ExportError naming the operator."""
    counts: Counter[str] = Counter(op.name for op in model.operators)
    result: list[ResolverOp] = []
    for name in dict.fromkeys(op.name for op in model.operators):
        first = next(op for op in model.operators if op.name == name)
        if first.is_custom:
            if name == PATCH_EXEC:
                call, arduino = PATCH_EXEC_CALL, True
            elif name in CUSTOM_METHODS:
                call, arduino = f"{CUSTOM_METHODS[name]}()", True
            else:
                raise ExportError(f"operator {first.index} is the custom operator {name!r}: "
                                  "no MicroMutableOpResolver registration is known for it "
                                  f"(known custom operators: {PATCH_EXEC}, "
                                  f"{', '.join(CUSTOM_METHODS)})")
        elif name in RESOLVER_METHODS:
            call, arduino = f"{RESOLVER_METHODS[name]}()", name not in NOT_IN_ARDUINO_2023
        else:
            raise ExportError(f"operator {first.index} is {name}: TFLM's "
                              "MicroMutableOpResolver has no Add* method for it")
        result.append(ResolverOp(name, call, counts[name], arduino))
    return tuple(result)


def arena_budget(model: Model, fraction: float = ARENA_MARGIN_FRACTION,
                 minimum: int = ARENA_MARGIN_MIN) -> ArenaBudget:
    """predict_arena(model, "cortex_m") plus max(fraction * prediction, minimum), the sum
    rounded up to a multiple of 16."""
    from tflm_patch.arena import predict_arena

    if not (math.isfinite(fraction) and fraction >= 0) or minimum < 0:
        raise ExportError("the arena margin must be a finite, non-negative fraction")
    pred = predict_arena(model, ARENA_TARGET)
    if pred.unpredicted:
        log.warning("kTensorArenaSize leaves out what these operators allocate (check it on "
                    "the board): %s", "; ".join(pred.unpredicted))
    margin = max(math.ceil(pred.total * fraction), minimum)
    total = -(-(pred.total + margin) // ARENA_ALIGN) * ARENA_ALIGN
    return ArenaBudget(pred.total, pred.head.size, pred.tail.total, total - pred.total)


# ----------------------------------------------------------------------------- source text


def _c_bytes(data: bytes, indent: str = "    ") -> str:
    """Comma-separated hex bytes, BYTES_PER_LINE per line."""
    hexed = [f"0x{b:02x}" for b in data]
    lines = [indent + ", ".join(hexed[i:i + BYTES_PER_LINE]) + ","
             for i in range(0, len(hexed), BYTES_PER_LINE)]
    return "\n".join(lines)


def _guard(name: str) -> str:
    return "TFLM_PATCH_EXPORT_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_"


_COMMENT_SAFE = re.compile(r"[^A-Za-z0-9 ._,:;()+=@#%&'\[\]{}<>!/*~^$|-]")


def comment_text(text: str) -> str:
    """`text` safe inside a // comment: no line break, no backslash (a line splice would
    comment out the next line), no '?' (trigraphs), ASCII only; others become '_'."""
    return _COMMENT_SAFE.sub("_", text)


def c_string(text: str) -> str:
    """`text` as a C/C++ string literal: printable ASCII as is (but for \\, " and ?),
    everything else (control characters, UTF-8 bytes) as three-digit octal escapes."""
    data = text.encode("utf-8", "backslashreplace")
    body = "".join(chr(b) if 0x20 <= b < 0x7F and chr(b) not in '\\"?' else f"\\{b:03o}"
                   for b in data)
    return f'"{body}"'


def _banner(source: str, what: str) -> str:
    return (f"// {comment_text(what)}\n// Generated by `tflm-patch export` (tflm_patch "
            f"{__version__}) from {comment_text(source)}.\n"
            "// Do not edit: export the model again instead.\n")


def check_symbol(symbol: str) -> str:
    """A C++ identifier for the model array: not a keyword, not reserved (leading
    underscore + capital, double underscore), not a name the generated files use (also
    as SYMBOL_len)."""
    if not _IDENTIFIER.fullmatch(symbol):
        raise ExportError(f"--name {symbol!r} is not a C++ identifier (letters, digits and "
                          "_, not starting with a digit, at most 128 characters)")
    if symbol in CXX_KEYWORDS:
        raise ExportError(f"--name {symbol!r} is a C++ keyword")
    if symbol.startswith("__") or re.match(r"_[A-Z]", symbol) or "__" in symbol:
        raise ExportError(f"--name {symbol!r} is reserved for the implementation (leading "
                          "underscore and capital, or a double underscore)")
    for name in (symbol, f"{symbol}_len"):
        if name in GENERATED_NAMES or _IO_NAME.fullmatch(name):
            raise ExportError(f"--name {symbol!r}: {name} is a name the generated files "
                              "already use")
    return symbol


def check_c_sizes(sizes: dict[str, int]) -> None:
    """Every size constant fits the `unsigned int` it is written as (32 bits)."""
    for name, value in sizes.items():
        if not 0 <= value <= MAX_C_SIZE:
            raise ExportError(f"{name} = {value:,} does not fit a 32-bit unsigned int; the "
                              "model cannot run on a 32-bit TFLM")


def model_data_files(data: bytes, source: str, symbol: str = DEFAULT_SYMBOL,
                     source_ext: str = ".cc") -> tuple[ExportFile, ExportFile]:
    """model_data.h and model_data<source_ext>: `alignas(16) const unsigned char
    symbol[]` (the model bytes) and `const unsigned int symbol_len`."""
    check_symbol(symbol)
    digest = hashlib.sha256(data).hexdigest()
    header = "model_data.h"
    guard = _guard(header)
    h = (_banner(source, f"The model: {len(data):,} bytes, sha256 {digest}.")
         + f"#ifndef {guard}\n#define {guard}\n\n"
         "// 16-byte aligned (TFLM reads the flatbuffer in place) and const (flash).\n"
         f"alignas(16) extern const unsigned char {symbol}[];\n"
         f"extern const unsigned int {symbol}_len;\n\n"
         f"#endif  // {guard}\n")
    cc = (_banner(source, f"The model: {len(data):,} bytes, sha256 {digest}.")
          + f'#include "{header}"\n\n'
          f"alignas(16) const unsigned char {symbol}[] = {{\n{_c_bytes(data)}\n}};\n"
          f"const unsigned int {symbol}_len = {len(data)};\n")
    return ExportFile(header, h), ExportFile(f"model_data{source_ext}", cc)


def _shape_init(shape: tuple[int, ...]) -> str:
    return "{" + ", ".join(str(d) for d in shape) + "}" if shape else "{1}"


def _c_float(value: float) -> str:
    """A float32 value as a C++ float literal that reads back to the same float."""
    return np.format_float_scientific(np.float32(value), unique=True) + "f"


def _io_block(model: Model, io: str, k: int, interface: dict[tuple[str, int], Any]) -> str:
    """The constants of input (output) k: kInput<k>... (k = 0: kInput..., the names a
    single-input sketch uses)."""
    from tflm_patch.validate import input_quantizer

    t = model.tensors[(model.inputs if io == "input" else model.outputs)[k]]
    prefix = f"k{io.capitalize()}{k if k else ''}"
    q = t.quantization
    scale, zp = (q.scale[0], q.zero_point[0] if q.zero_point else 0) \
        if q is not None and len(q.scale) == 1 else (0.0, 0)
    what = ("real = scale * (q - zero point)" if q is not None and len(q.scale) == 1
            else "not quantized (scale 0)")
    lines = [f"// {io.capitalize()} {k} '{comment_text(t.name)}': {t.dtype} {list(t.shape)}, "
             f"{what}."]
    removed = interface.get((io, k))
    if removed is not None:
        lines.append(f"// It was {removed.dtype} before `--int8-io` removed its conversion; "
                     + ("quantize data with\n//   q = round(x / scale) + zero_point, clamped "
                        "to -128..127." if io == "input" else "dequantize with\n//   "
                        "x = scale * (q - zero_point)."))
    elif t.dtype == "float32" and io == "input" and input_quantizer(model, t.index):
        s, z = input_quantizer(model, t.index)  # type: ignore[misc]
        lines.append(f"// The model quantizes it to int8 (scale {_c_float(s)}, zero point "
                     f"{z});\n//   `tflm-patch convert --int8-io` removes that conversion.")
    lines += [f'constexpr char {prefix}Type[] = "{t.dtype}";',
              f"constexpr int {prefix}Rank = {max(len(t.shape), 1)};",
              f"constexpr int {prefix}Shape[] = {_shape_init(t.shape)};",
              f"constexpr unsigned int {prefix}Bytes = {t.nbytes};",
              f"constexpr float {prefix}Scale = {_c_float(scale)};",
              f"constexpr int {prefix}ZeroPoint = {zp};"]
    return "\n".join(lines) + "\n"


def _io_text(model: Model) -> str:
    from tflm_patch.interface import interface_metadata

    interface = {(r.io, r.index): r for r in interface_metadata(model)}
    blocks = [_io_block(model, io, k, interface)
              for io, ts in (("input", model.inputs), ("output", model.outputs))
              for k in range(len(ts))]
    return (f"// {len(model.inputs)} input(s), {len(model.outputs)} output(s): "
            "interpreter->input(k) is described by\n// the kInput<k>* constants (k = 0: "
            "kInput*), interpreter->output(k) by kOutput<k>*.\n"
            f"constexpr int kNumInputs = {len(model.inputs)};\n"
            f"constexpr int kNumOutputs = {len(model.outputs)};\n\n" + "\n".join(blocks))


def model_settings_file(model: Model, ops: tuple[ResolverOp, ...], arena: ArenaBudget,
                        source: str) -> ExportFile:
    """model_settings.h: arena size, every input's and output's type, shape and
    quantization (and the float interface `--int8-io` removed), the operator list."""
    name = "model_settings.h"
    guard = _guard(name)
    width = max(len(o.op) for o in ops)
    op_lines = "\n".join(f"//   {o.op:<{width}} x{o.count:<3} {o.call}" for o in ops)
    pct = f"{ARENA_MARGIN_FRACTION:.0%}"
    text = (
        _banner(source, "Settings of the exported model.")
        + f"#ifndef {guard}\n#define {guard}\n\n"
        "// The tensor arena to declare:\n"
        "//   alignas(16) static uint8_t tensor_arena[kTensorArenaSize];\n"
        f"// = {arena.predicted:,} B predicted for TFLM on a 32-bit Cortex-M by\n"
        f'//   tflm_patch.arena.predict_arena(model, "{ARENA_TARGET}") ({arena.head:,} B '
        f"activations and\n//   scratch buffers + {arena.tail:,} B persistent data)\n"
        f"// + {arena.margin:,} B safety margin ({pct} of the prediction, at least "
        f"{ARENA_MARGIN_MIN:,} B,\n"
        "//   total rounded up to 16): CMSIS-NN kernels' scratch buffers and older TFLM\n"
        "//   struct sizes (Arduino_TensorFlowLite), which the prediction does not model.\n"
        f"constexpr unsigned int kTensorArenaSize = {arena.total};\n"
        f"constexpr unsigned int kTensorArenaPredicted = {arena.predicted};\n\n"
        + _io_text(model) + "\n"
        f"// The {len(model.operators)} operators use {len(ops)} kinds; the op resolver "
        "registers each once\n// (model_ops.h: RegisterModelOps):\n"
        f"{op_lines}\n"
        f"constexpr unsigned int kNumResolverOps = {len(ops)};\n\n"
        f"#endif  // {guard}\n"
    )
    return ExportFile(name, text)


def model_ops_file(ops: tuple[ResolverOp, ...], source: str, glue_include: str) -> ExportFile:
    """model_ops.h: RegisterModelOps for any MicroMutableOpResolver<N>, N >= the op count."""
    name = "model_ops.h"
    guard = _guard(name)
    calls = "\n".join(f"      resolver.{o.call}," for o in ops)
    text = (
        _banner(source, "The operators of the exported model, for the op resolver.")
        + f"#ifndef {guard}\n#define {guard}\n\n"
        f"#include {glue_include}\n"
        '#include "model_settings.h"\n'
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
        "// A resolver with room for exactly the model's operators.\n"
        "using ModelOpResolver = tflite::MicroMutableOpResolver<kNumResolverOps>;\n\n"
        "// Registers every operator kind the model uses, once. kTfLiteError when the\n"
        "// resolver is full or an operator is already registered.\n"
        "template <unsigned int kCapacity>\n"
        "TfLiteStatus RegisterModelOps(\n"
        "    tflite::MicroMutableOpResolver<kCapacity>& resolver) {\n"
        "  static_assert(kCapacity >= kNumResolverOps,\n"
        '                "the resolver is too small for the model");\n'
        "  // A braced list is evaluated left to right: registration in this order.\n"
        "  const TfLiteStatus statuses[] = {\n"
        f"{calls}\n"
        "  };\n"
        "  for (const TfLiteStatus status : statuses) {\n"
        "    if (status != kTfLiteOk) return kTfLiteError;\n"
        "  }\n"
        "  return kTfLiteOk;\n"
        "}\n\n"
        f"#endif  // {guard}\n"
    )
    return ExportFile(name, text)


def _c_values(image: BundledImage) -> list[str]:
    if image.dtype == "float32":
        return [_c_float(v) for v in np.frombuffer(image.data, "<f4")]
    return [str(int(v)) for v in np.frombuffer(image.data, image.dtype)]


def image_files(image: BundledImage, shape: tuple[int, ...], source: str,
                     source_ext: str = ".cc") -> tuple[ExportFile, ExportFile]:
    """test_image.h / test_image<source_ext>: `alignas(16) const int8_t g_test_image[]`
    (uint8_t or float for such an input)."""
    header = "test_image.h"
    guard = _guard(header)
    dims = "x".join(str(d) for d in shape)
    origin = image.origin
    ctype = C_TYPES[image.dtype]
    h = (_banner(source, f"A bundled test input: {image.dtype} {dims}. Origin: {origin}.")
         + f"#ifndef {guard}\n#define {guard}\n\n#include <stdint.h>\n\n"
         f"alignas(16) extern const {ctype} g_test_image[];\n"
         f"constexpr unsigned int kTestImageBytes = {len(image.data)};\n"
         "// Where the image comes from (printed by the example).\n"
         "extern const char g_test_image_origin[];\n\n"
         f"#endif  // {guard}\n")
    values = _c_values(image)
    body = "\n".join("    " + ", ".join(values[i:i + 16]) + ","
                     for i in range(0, len(values), 16))
    cc = (_banner(source, f"A bundled test input: {image.dtype} {dims}. Origin: {origin}.")
          + f'#include "{header}"\n\n'
          f"alignas(16) const {ctype} g_test_image[] = {{\n{body}\n}};\n"
          f"const char g_test_image_origin[] = {c_string(origin)};\n")
    return ExportFile(header, h), ExportFile(f"test_image{source_ext}", cc)


# ----------------------------------------------------------------------------- test images


def seeded_image(model: Model, seed: int) -> BundledImage:
    """A deterministic synthetic input like the zoo's representative images
    (zoo.sample_image), seeded, quantized with the input tensor's scale and zero point."""
    from tflm_patch.validate import dequantized, input_quantizer
    from tflm_patch.zoo import sample_image

    info = model.tensors[model.inputs[0]]
    _check_image_type(model)
    shape = tuple(info.shape[1:]) if len(info.shape) > 1 else tuple(info.shape)
    x = sample_image(np.random.default_rng(seed), shape)
    q = info.quantization
    scale, zp = (q.scale[0], q.zero_point[0]) if q and q.scale else (1 / 128, 0)
    if info.dtype == "float32":  # what its QUANTIZE reads: dequantized int8 values
        scale, zp = input_quantizer(model, info.index) or (1 / 128, 0)
    lo, hi = (0, 255) if info.dtype == "uint8" else (-128, 127)
    values = np.clip(np.round(x / scale) + zp, lo, hi)
    origin = (f"synthetic: numpy default_rng({seed}) smooth random field (as the tflm_patch "
              "zoo's representative images), quantized with the input scale/zero point")
    if info.dtype == "float32":
        data = dequantized(model, info.index, values.astype(np.int8).reshape(info.shape))
        return BundledImage(data.astype("<f4").tobytes(), origin + ", dequantized",
                            "float32")
    return BundledImage(values.astype(info.dtype).tobytes(), origin, info.dtype)


def _check_image_type(model: Model) -> None:
    info = model.tensors[model.inputs[0]]
    if info.dtype not in C_TYPES:
        raise ExportError(f"input 0 is {info.dtype}: a test image is int8, uint8 or float32")


def file_image(model: Model, path: Path) -> BundledImage:
    """An 8-bit image or .npy file as the model input (image bytes reinterpreted as int8,
    as TFLM's generate_cc_arrays and `tflm-patch validate --input` do)."""
    from tflm_patch.validate import load_input

    _check_image_type(model)
    arr = load_input(model, path)[0]
    how = ("pixel bytes reinterpreted as int8, as TFLM's generate_cc_arrays.py does"
           if path.suffix.lower() != ".npy" else f"{arr.dtype.name} .npy")
    if arr.dtype == np.float32 and path.suffix.lower() != ".npy":
        how += ", dequantized"
    return BundledImage(arr.astype(arr.dtype.newbyteorder("<")).tobytes(),
                        f"{path.name} ({how})", arr.dtype.name)


# ----------------------------------------------------------------------------- export


def _check_sizes(model: Model, arena: ArenaBudget, model_bytes: int,
                 image: BundledImage | None) -> None:
    io = [model.tensors[t] for t in (*model.inputs, *model.outputs)]
    check_c_sizes({"kTensorArenaSize": arena.total, "kTensorArenaPredicted": arena.predicted,
                   **{f"the bytes of tensor {t.index}": t.nbytes for t in io},
                   "the model length": model_bytes,
                   "kTestImageBytes": len(image.data) if image is not None else 0})
    for t in io:
        if any(d > MAX_C_INT for d in t.shape):
            raise ExportError(f"tensor {t.index} {list(t.shape)}: a dimension does not fit "
                              "the generated `int` shape arrays")


def export_model(data: bytes, *, source: str = "model.tflite", arduino: bool = False,
                 symbol: str = DEFAULT_SYMBOL, image: BundledImage | None = None,
                 margin_fraction: float = ARENA_MARGIN_FRACTION) -> Export:
    """The export of `data` (a .tflite). `arduino`: files for an Arduino sketch (.cpp
    sources, the library header <tflm_patch.h>, only operators Arduino_TensorFlowLite's
    February 2023 TFLM has)."""
    model = load_model(data)
    require_int8(model)
    if not model.inputs or not model.outputs:
        raise ExportError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} "
                          "outputs; a TFLM application needs at least one of each")
    ops = resolver_ops(model)
    if arduino:
        missing = [o.op for o in ops if not o.in_arduino_2023]
        if missing:
            raise ExportError(f"Arduino_TensorFlowLite (TFLM of February 2023) has no kernel "
                              f"for {', '.join(missing)}; export with --c-array for a newer "
                              "TFLM")
    arena = arena_budget(model, margin_fraction)
    _check_sizes(model, arena, len(data), image)
    ext = ".cpp" if arduino else ".cc"
    glue = "<tflm_patch.h>" if arduino else '"custom_ops/patch_exec/tflm/patch_exec_op.h"'
    files = [*model_data_files(data, source, symbol, ext),
             model_settings_file(model, ops, arena, source),
             model_ops_file(ops, source, glue)]
    if image is not None:
        info = model.tensors[model.inputs[0]]
        if len(image.data) != info.nbytes:
            raise ExportError(f"the test image has {len(image.data)} bytes; the input "
                              f"tensor {list(info.shape)} needs {info.nbytes}")
        files.extend(image_files(image, info.shape, source, ext))
    log.debug("export: %d files, arena %d B", len(files), arena.total)
    return Export(tuple(files), ops, arena, len(data), hashlib.sha256(data).hexdigest())
