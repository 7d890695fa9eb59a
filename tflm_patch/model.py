"""Reading, inspecting and writing .tflite models (subgraph 0).

`load_model` accepts a path or bytes, rejects anything that is not a well-formed
TFLite flatbuffer with a `ModelFormatError`, and returns a `Model`: an immutable
view (tensors, operators, graph inputs/outputs) over the schema's object API
(`ModelT`), which passes later rewrite steps can edit and write back with
`model_to_bytes`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import flatbuffers
import numpy as np

from tflm_patch.errors import ModelFormatError, UnsupportedModelError
from tflm_patch.schema import schema

log = logging.getLogger(__name__)

FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16  # constant data is 16-byte aligned, as the TFLite converter writes it

# TensorType value -> (name, numpy dtype or None, bits per element)
_TENSOR_TYPES: dict[int, tuple[str, Any, int]] = {
    0: ("float32", np.float32, 32),
    1: ("float16", np.float16, 16),
    2: ("int32", np.int32, 32),
    3: ("uint8", np.uint8, 8),
    4: ("int64", np.int64, 64),
    5: ("string", None, 8),
    6: ("bool", np.bool_, 8),
    7: ("int16", np.int16, 16),
    8: ("complex64", np.complex64, 64),
    9: ("int8", np.int8, 8),
    10: ("float64", np.float64, 64),
    11: ("complex128", np.complex128, 128),
    12: ("uint64", np.uint64, 64),
    13: ("resource", None, 0),
    14: ("variant", None, 0),
    15: ("uint32", np.uint32, 32),
    16: ("uint16", np.uint16, 16),
    17: ("int4", np.int8, 4),
    18: ("bfloat16", None, 16),
    19: ("int2", np.int8, 2),
    20: ("uint4", np.uint8, 4),
}

FLOAT_TYPES = frozenset({"float32", "float16", "float64", "bfloat16"})

T = TypeVar("T")


@cache
def builtin_op_names() -> dict[int, str]:
    """BuiltinOperator value -> name (e.g. 3 -> 'CONV_2D')."""
    ops = schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


@cache
def builtin_op_codes() -> dict[str, int]:
    return {v: k for k, v in builtin_op_names().items()}


@dataclass(frozen=True)
class Quantization:
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int = 0

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int
    is_constant: bool
    is_variable: bool
    quantization: Quantization | None
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # Python ints: no int64 wrap on crafted shapes


@dataclass(frozen=True)
class OperatorInfo:
    index: int
    name: str  # builtin name ("CONV_2D") or the custom code ("PATCH_EXEC")
    builtin_code: int | None  # None for custom operators
    inputs: tuple[int, ...]  # -1 marks an omitted optional input
    outputs: tuple[int, ...]
    options: Any  # the schema's *OptionsT object (None when absent)
    custom_options: bytes | None
    intermediates: tuple[int, ...] = ()

    @property
    def is_custom(self) -> bool:
        return self.builtin_code is None


@dataclass(frozen=True)
class Model:
    """Subgraph 0 of a TFLite model."""

    tensors: tuple[TensorInfo, ...]
    operators: tuple[OperatorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    num_subgraphs: int
    raw: bytes = field(repr=False)
    obj: Any = field(repr=False, compare=False)  # schema ModelT
    # derived facts computed once per model (memo); a copy made with replace() starts empty
    _memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key: Any, compute: Callable[[], T]) -> T:
        """`compute()` the first time `key` is asked for, the same object afterwards
        (for immutable results derived from this model alone)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def memoized(self, key: Any) -> Any:
        """What `memo` holds for `key`, None when nothing yet."""
        return self._memo.get(key)

    def buffer_bytes(self, tensor_index: int) -> bytes | None:
        """The constant data of a tensor, or None when it has none."""
        buf = self.obj.buffers[self.tensors[tensor_index].buffer]
        if buf.data is not None and len(buf.data) > 0:
            return bytes(np.asarray(buf.data, dtype=np.uint8))
        if buf.offset > 1:
            return self.raw[buf.offset : buf.offset + buf.size]
        return None

    def metadata(self, name: str) -> bytes | None:
        """The bytes of metadata entry `name` (b"" when its buffer is empty), or None."""
        for entry in self.obj.metadata or []:
            if metadata_name(entry) == name:
                buf = self.obj.buffers[entry.buffer]
                if buf.data is not None:
                    return bytes(np.asarray(buf.data, dtype=np.uint8))
                if buf.offset > 1:
                    return self.raw[buf.offset : buf.offset + buf.size]
                return b""
        return None

    def constant(self, tensor_index: int) -> np.ndarray:
        """A constant tensor as a numpy array of its shape."""
        t = self.tensors[tensor_index]
        data = self.buffer_bytes(tensor_index)
        _, np_type, bits = _TENSOR_TYPES[_type_code(t.dtype)]
        if data is None or np_type is None or bits < 8:
            raise UnsupportedModelError(
                f"tensor {t.index} ({t.name}) has no readable constant data"
            )
        return np.frombuffer(data, dtype=np_type).reshape(t.shape)

    def consumers(self) -> dict[int, list[int]]:
        """tensor index -> indices of the operators that read it."""
        return {t: list(ops) for t, ops in self.memo("consumers", self._consumers).items()}

    def _consumers(self) -> dict[int, list[int]]:
        result: dict[int, list[int]] = {}
        for op in self.operators:
            for t in op.inputs:
                if t >= 0:
                    result.setdefault(t, []).append(op.index)
        return result

    def producers(self) -> dict[int, int]:
        """tensor index -> index of the operator that writes it."""
        return dict(self.memo("producers", self._producers))

    def _producers(self) -> dict[int, int]:
        return {t: op.index for op in self.operators for t in op.outputs if t >= 0}

    def activation_inputs(self, op: OperatorInfo) -> list[int]:
        """The non-constant inputs of an operator."""
        return [t for t in op.inputs if t >= 0 and not self.tensors[t].is_constant]


def metadata_name(entry: Any) -> str:
    """The name of a schema MetadataT (bytes or str, as the object API gives it)."""
    return str(_decode(entry.name))


def _type_code(name: str) -> int:
    for code, (n, _, _) in _TENSOR_TYPES.items():
        if n == name:
            return code
    raise KeyError(name)


def read_model_bytes(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a directory, not a .tflite file") from None
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read: {e.strerror}") from None


def verify(buf: bytes) -> None:
    """Raise ModelFormatError unless `buf` is a well-formed TFLite flatbuffer."""
    if len(buf) < 8:
        raise ModelFormatError(f"not a TFLite model: only {len(buf)} bytes")
    if buf[4:8] != FILE_IDENTIFIER:
        raise ModelFormatError(
            f"not a TFLite model: file identifier is {bytes(buf[4:8])!r}, "
            f"expected {FILE_IDENTIFIER!r}"
        )
    from tflm_patch.fbverify import verify_tflite

    verify_tflite(buf)


def load_model(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> Model:
    """Load and verify a .tflite model from a path or bytes."""
    raw = read_model_bytes(source)
    verify(raw)
    try:
        obj = schema().ModelT.InitFromPackedBuf(raw, 0)
    except Exception as e:  # the verifier should have caught it; never let it escape raw
        raise ModelFormatError(f"not a valid TFLite flatbuffer: {e}") from None
    return model_from_object(obj, raw)


def model_from_object(obj: Any, raw: bytes = b"") -> Model:
    if not obj.subgraphs:
        raise ModelFormatError("TFLite model has no subgraph")
    sg = obj.subgraphs[0]
    tensors = tuple(_tensor_info(i, t, obj) for i, t in enumerate(sg.tensors or []))
    opcodes = obj.operatorCodes or []
    operators = tuple(_operator_info(i, op, opcodes) for i, op in enumerate(sg.operators or []))
    for op in operators:
        for t in (*op.inputs, *op.outputs):
            if t < -1 or t >= len(tensors):
                raise ModelFormatError(f"operator {op.index} ({op.name}) refers to tensor {t}")
    return Model(
        tensors=tensors,
        operators=operators,
        inputs=tuple(int(i) for i in _seq(sg.inputs)),
        outputs=tuple(int(i) for i in _seq(sg.outputs)),
        num_subgraphs=len(obj.subgraphs),
        raw=raw,
        obj=obj,
    )


def _seq(v: Any) -> Sequence[Any]:
    return [] if v is None else list(v)


def _decode(s: Any) -> str:
    if s is None:
        return ""
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)


def _tensor_info(index: int, t: Any, obj: Any) -> TensorInfo:
    if t.type not in _TENSOR_TYPES:
        raise ModelFormatError(f"tensor {index} has unknown type {t.type}")
    dtype, _, bits = _TENSOR_TYPES[t.type]
    shape = tuple(int(d) for d in _seq(t.shape))
    buffers = obj.buffers or []
    if not 0 <= t.buffer < max(len(buffers), 1):
        raise ModelFormatError(f"tensor {index} refers to buffer {t.buffer} of {len(buffers)}")
    buf = buffers[t.buffer] if buffers else None
    has_data = buf is not None and (
        (buf.data is not None and len(buf.data) > 0) or (buf.offset is not None and buf.offset > 1)
    )
    numel = math.prod(shape)
    nbytes = (max(numel, 0) * bits + 7) // 8
    q = t.quantization
    quant = None
    if q is not None and q.scale is not None and len(q.scale) > 0:
        quant = Quantization(
            scale=tuple(float(s) for s in q.scale),
            zero_point=tuple(int(z) for z in _seq(q.zeroPoint)),
            quantized_dimension=int(q.quantizedDimension),
        )
    return TensorInfo(
        index=index,
        name=_decode(t.name),
        shape=shape,
        dtype=dtype,
        buffer=int(t.buffer),
        is_constant=bool(has_data),
        is_variable=bool(t.isVariable),
        quantization=quant,
        nbytes=nbytes,
    )


def _operator_info(index: int, op: Any, opcodes: Sequence[Any]) -> OperatorInfo:
    if not 0 <= op.opcodeIndex < len(opcodes):
        raise ModelFormatError(f"operator {index} has opcode index {op.opcodeIndex}")
    code = opcodes[op.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    custom_code = _decode(code.customCode) if code.customCode is not None else None
    if builtin == builtin_op_codes()["CUSTOM"]:
        name = custom_code or "CUSTOM"
        builtin_code = None
    else:
        name = builtin_op_names().get(builtin, f"BUILTIN_{builtin}")
        builtin_code = builtin
    custom_options = None
    if op.customOptions is not None and len(op.customOptions) > 0:
        custom_options = bytes(np.asarray(op.customOptions, dtype=np.uint8))
    return OperatorInfo(
        index=index,
        name=name,
        builtin_code=builtin_code,
        inputs=tuple(int(i) for i in _seq(op.inputs)),
        outputs=tuple(int(i) for i in _seq(op.outputs)),
        options=op.builtinOptions,
        custom_options=custom_options,
        intermediates=tuple(int(i) for i in _seq(op.intermediates)),
    )


def model_to_bytes(obj: Any) -> bytes:
    """Serialize a schema ModelT, constant buffers 16-byte aligned, identifier TFL3."""
    originals = obj.buffers
    obj.buffers = [_AlignedBuffer.wrap(b) for b in (originals or [])]
    try:
        builder = flatbuffers.Builder(1024 * 1024)
        offset = obj.Pack(builder)
        builder.Finish(offset, file_identifier=FILE_IDENTIFIER)
        out = bytes(builder.Output())
    finally:
        obj.buffers = originals
    return out


class _AlignedBuffer:
    """A BufferT stand-in whose data vector starts on a BUFFER_ALIGNMENT boundary."""

    def __init__(self, data: bytes | None, offset: int, size: int) -> None:
        self.data, self.offset, self.size = data, offset, size

    @classmethod
    def wrap(cls, b: Any) -> _AlignedBuffer:
        data = None
        if b.data is not None and len(b.data) > 0:
            data = bytes(np.asarray(b.data, dtype=np.uint8))
        return cls(data, int(b.offset or 0), int(b.size or 0))

    def Pack(self, builder: flatbuffers.Builder) -> int:
        fb = schema()
        vec = None
        if self.data is not None:
            builder.StartVector(1, len(self.data), BUFFER_ALIGNMENT)
            builder.head = builder.head - len(self.data)
            builder.Bytes[builder.head : builder.head + len(self.data)] = self.data
            vec = builder.EndVector()
        fb.BufferStart(builder)
        if vec is not None:
            fb.BufferAddData(builder, vec)
        fb.BufferAddOffset(builder, self.offset)
        fb.BufferAddSize(builder, self.size)
        return int(fb.BufferEnd(builder))


def require_int8(model: Model) -> None:
    """Raise UnsupportedModelError unless the model computes in int8 (full-integer)."""
    if model.num_subgraphs < 1 or not model.operators:
        raise UnsupportedModelError("the model has no operators")
    for op in model.operators:
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for t in (*op.inputs, *op.outputs):
            if t >= 0 and model.tensors[t].dtype in FLOAT_TYPES:
                tensor = model.tensors[t]
                raise UnsupportedModelError(
                    f"float model: operator {op.index} ({op.name}) uses {tensor.dtype} tensor "
                    f"'{tensor.name}'; tflm-patch requires a full-integer int8 model "
                    "(convert with TFLiteConverter, optimizations=[DEFAULT], a representative "
                    "dataset and inference_input_type/output_type=int8)"
                )
