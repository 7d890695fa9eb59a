"""The pure-Python TFLite flatbuffer verifier (tflm_patch.fbverify)."""

from __future__ import annotations

import mmap
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flatbuffers
import pytest
from conftest import SHARED_NAMES, shared_model_path

from tflm_patch.errors import ModelFormatError
from tflm_patch.fbverify import (
    SCALAR,
    STRING,
    TABLE,
    UNION,
    UNION_TYPE,
    UNUSED,
    VEC_SCALAR,
    VEC_STRING,
    VEC_TABLE,
    FieldSpec,
    parse_schema,
    tflite_schema,
    verify_tflite,
)
from tflm_patch.schema import schema

PREFIX = "not a valid TFLite flatbuffer: "


# -- helpers ------------------------------------------------------------------------------


def _reject(buf: bytes | bytearray) -> str:
    """Run the verifier on bytes it must reject; return the error message."""
    with pytest.raises(ModelFormatError) as info:
        verify_tflite(buf)
    message = str(info.value)
    assert message.startswith(PREFIX)
    assert "\n" not in message
    return message


def _put_u32(buf: bytearray, pos: int, value: int) -> None:
    struct.pack_into("<I", buf, pos, value)


def _field_pos(tab: Any, slot: int) -> int:
    """Absolute position of a present field of a table read with the schema module."""
    off = tab.Offset(4 + 2 * slot)
    assert off, f"field slot {slot} absent"
    return int(tab.Pos + off)


def _root(buf: bytes | bytearray) -> Any:
    return schema().Model.GetRootAs(buf, 0)


def _pack(model_t: Any) -> bytearray:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model_t.Pack(builder), file_identifier=b"TFL3")
    return bytearray(builder.Output())


def _must_unpack(buf: bytes | bytearray) -> None:
    schema().ModelT.InitFromPackedBuf(bytes(buf), 0)


# -- valid models -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHARED_NAMES)
def test_real_model_verifies_and_unpacks(name: str) -> None:
    data = shared_model_path(name).read_bytes()
    verify_tflite(data)
    _must_unpack(data)


def test_mobilenet_verifies_well_under_a_second() -> None:
    data = shared_model_path("mobilenet_v2_int8_224_nchw").read_bytes()
    best = min(_timed(lambda: verify_tflite(data)) for _ in range(3))
    assert best < 0.25, f"{best:.3f} s"


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_mobilenet_table_limit_is_enforced() -> None:
    data = shared_model_path("mobilenet_v2_int8_224_nchw").read_bytes()
    with pytest.raises(ModelFormatError, match="more than 100 tables"):
        verify_tflite(data, max_tables=100)


def test_depth_limit_is_enforced(tiny_int8_bytes: bytes) -> None:
    # Model > subgraphs > tensors > quantization: depth 4
    verify_tflite(tiny_int8_bytes, max_depth=4)
    with pytest.raises(ModelFormatError, match="nested deeper than 3"):
        verify_tflite(tiny_int8_bytes, max_depth=3)


def test_tiny_int8_model_verifies(tiny_int8_bytes: bytes) -> None:
    verify_tflite(tiny_int8_bytes)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_accepts_bytes_like(tiny_int8_bytes: bytes, wrap: Callable[[bytes], Any]) -> None:
    verify_tflite(wrap(tiny_int8_bytes))


def test_python_builder_output_verifies(tiny_int8_bytes: bytes) -> None:
    """The object API's own writer (which the converter uses) produces valid files."""
    model = schema().ModelT.InitFromPackedBuf(tiny_int8_bytes, 0)
    verify_tflite(_pack(model))


# -- Buffer.offset / size (the layout of models over 2 GiB) -------------------------------


def _data_len(buffer_t: Any) -> int:
    return 0 if buffer_t.data is None else len(buffer_t.data)


def _outside_buffer_parts(tiny: bytes, extra_size: int, start: int = 0) -> tuple[bytes, bytes, int]:
    """Move the largest constant buffer of ``tiny`` out of the flatbuffer (Buffer.offset/size):
    return (flatbuffer, payload, payload position), the position 16-aligned after the
    flatbuffer unless ``start`` is given; the size field claims ``extra_size`` more bytes."""
    model = schema().ModelT.InitFromPackedBuf(tiny, 0)
    index = max(range(len(model.buffers)), key=lambda i: _data_len(model.buffers[i]))
    payload = bytes(model.buffers[index].data)
    assert len(payload) > 0
    model.buffers[index].data = None
    model.buffers[index].offset = 2  # non-default, so the field is written; fixed below
    model.buffers[index].size = len(payload) + extra_size
    first = _pack(model)
    start = start or -(-len(first) // 16) * 16
    model.buffers[index].offset = start
    packed = _pack(model)
    assert len(packed) == len(first)
    return bytes(packed), payload, start


def _with_outside_buffer(tiny: bytes, extra_size: int) -> bytes:
    packed, payload, start = _outside_buffer_parts(tiny, extra_size)
    return packed + bytes(start - len(packed)) + payload


def test_buffer_offset_layout_inside_file_verifies(tiny_int8_bytes: bytes) -> None:
    data = _with_outside_buffer(tiny_int8_bytes, 0)
    verify_tflite(data)
    _must_unpack(data)


def test_buffer_offset_layout_past_end_is_rejected(tiny_int8_bytes: bytes) -> None:
    data = _with_outside_buffer(tiny_int8_bytes, 1)
    message = _reject(data)
    assert f"lies outside the {len(data)}-byte file" in message
    assert "Model.buffers[" in message


def test_large_custom_options_past_end_is_rejected(tiny_int8_bytes: bytes) -> None:
    model = schema().ModelT.InitFromPackedBuf(tiny_int8_bytes, 0)
    op = model.subgraphs[0].operators[0]
    op.largeCustomOptionsOffset = 64
    op.largeCustomOptionsSize = 1 << 20
    data = _pack(model)
    message = _reject(data)
    assert "large_custom_options_offset 64 + large_custom_options_size 1048576" in message
    assert "Model.subgraphs[0].operators[0]" in message


def _sparse_file(path: Path, head: bytes, tail: bytes, tail_at: int) -> mmap.mmap:
    with path.open("wb") as f:
        f.write(head)
        f.seek(tail_at)
        f.write(tail)
    with path.open("rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def test_over_2gib_with_buffer_offsets_verifies(tiny_int8_bytes: bytes, tmp_path: Path) -> None:
    """A sparse file: the flatbuffer, then a constant buffer placed beyond 2 GiB."""
    packed, payload, start = _outside_buffer_parts(tiny_int8_bytes, 0, start=2**31 + 16)
    mapped = _sparse_file(tmp_path / "big.tflite", packed, payload, start)
    try:
        assert len(mapped) == 2**31 + 16 + len(payload)
        verify_tflite(mapped)  # type: ignore[arg-type]
        with (
            memoryview(mapped) as view,
            view[: start + len(payload) - 1] as short,
            pytest.raises(ModelFormatError, match=r"size \d+ lies outside the"),
        ):
            verify_tflite(short)
    finally:
        mapped.close()


def test_over_2gib_without_buffer_offsets_is_rejected(
    tiny_int8_bytes: bytes, tmp_path: Path
) -> None:
    mapped = _sparse_file(tmp_path / "big.tflite", tiny_int8_bytes, b"\0", 2**31)
    try:
        with pytest.raises(ModelFormatError) as info:
            verify_tflite(mapped)  # type: ignore[arg-type]
    finally:
        mapped.close()
    assert str(info.value) == (
        f"{PREFIX}file is {2**31 + 1} bytes (over 2 GiB) but uses no Buffer.offset/size, "
        f"the only layout allowed beyond 2 GiB, at byte {2**31 - 1}"
    )


def test_unknown_fields_of_a_newer_schema_are_ignored() -> None:
    """A hand-built Model with version 3 and a field in slot 40, which no schema has yet."""
    builder = flatbuffers.Builder(64)
    builder.StartObject(41)
    builder.PrependUint32Slot(0, 3, 0)
    builder.PrependUint64Slot(40, 12345, 0)
    builder.Finish(builder.EndObject(), file_identifier=b"TFL3")
    data = bytes(builder.Output())
    verify_tflite(data)
    assert schema().ModelT.InitFromPackedBuf(data, 0).version == 3


# -- malformed inputs: one case each ------------------------------------------------------


def _truncated(fraction: float) -> Callable[[bytes], tuple[bytes, str, int | None]]:
    def make(tiny: bytes) -> tuple[bytes, str, int | None]:
        n = int(len(tiny) * fraction)
        return tiny[:n], f"the {n}-byte buffer", None

    return make


def _root_past_end(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    _put_u32(buf, 0, len(buf) + 64)
    return bytes(buf), f"root table offset {len(buf) + 64} points to byte {len(buf) + 64}", 0


def _root_misaligned(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    root = struct.unpack_from("<I", buf, 0)[0]
    _put_u32(buf, 0, root + 2)
    return bytes(buf), "Model: table is not 4-byte aligned", root + 2


def _vtable_past_end(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    root = struct.unpack_from("<I", buf, 0)[0]
    struct.pack_into("<i", buf, root, -len(buf))
    return bytes(buf), f"Model: vtable offset points to byte {root + len(buf)}", root


def _vtable_before_start(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    root = struct.unpack_from("<I", buf, 0)[0]
    struct.pack_into("<i", buf, root, root + 100)
    return bytes(buf), "Model: vtable offset points to byte -100", root


def _field_outside_table(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    root = struct.unpack_from("<I", buf, 0)[0]
    vtable = root - struct.unpack_from("<i", buf, root)[0]
    inline = struct.unpack_from("<H", buf, vtable + 2)[0]
    struct.pack_into("<H", buf, vtable + 4, inline)  # Model.version (slot 0) at the end
    return bytes(buf), f"Model: field version at offset {inline} (4 bytes) lies outside", root


def _zero_offset(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    pos = _field_pos(_root(tiny)._tab, 2)  # Model.subgraphs
    _put_u32(buf, pos, 0)
    return bytes(buf), "Model: subgraphs offset is 0", pos


def _vector_too_long(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    tab = _root(tiny).Subgraphs(0).Tensors(0)._tab
    start = tab.Vector(tab.Offset(4))  # Tensor.shape elements
    _put_u32(buf, start - 4, 0x0FFFFFFF)
    return bytes(buf), "Model.subgraphs[0].tensors[0]: shape vector of 268435455 elements", start


def _string_unterminated(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    tab = _root(tiny).Subgraphs(0).Tensors(0)._tab
    pos = _field_pos(tab, 3)  # Tensor.name
    string = pos + struct.unpack_from("<I", buf, pos)[0]
    n = struct.unpack_from("<I", buf, string)[0]
    assert buf[string + 4 + n] == 0
    buf[string + 4 + n] = ord("x")
    return (
        bytes(buf),
        f"Model.subgraphs[0].tensors[0]: name string of {n} bytes is not 0-terminated",
        string + 4 + n,
    )


def _first_op_with_options(graph: Any) -> int:
    return next(
        i for i in range(graph.OperatorsLength()) if graph.Operators(i).BuiltinOptionsType()
    )


def _union_type_out_of_range(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    graph = _root(tiny).Subgraphs(0)
    index = _first_op_with_options(graph)
    pos = _field_pos(graph.Operators(index)._tab, 3)  # Operator.builtin_options_type
    members = max(v for k, v in vars(schema().BuiltinOptions).items() if not k.startswith("_"))
    assert members < 250
    buf[pos] = 250
    return (
        bytes(buf),
        f"operators[{index}]: builtin_options_type 250 is out of range 0..{members}",
        pos,
    )


def _union_value_bad(tiny: bytes) -> tuple[bytes, str, int | None]:
    buf = bytearray(tiny)
    graph = _root(tiny).Subgraphs(0)
    index = _first_op_with_options(graph)
    pos = _field_pos(graph.Operators(index)._tab, 4)  # Operator.builtin_options
    _put_u32(buf, pos, len(buf))
    return bytes(buf), f"operators[{index}]: builtin_options offset {len(buf)}", pos


CORRUPTIONS: dict[str, Callable[[bytes], tuple[bytes, str, int | None]]] = {
    "empty": lambda tiny: (b"", "file is 0 bytes, shorter than the 8-byte", 0),
    "three_bytes": lambda tiny: (tiny[:3], "file is 3 bytes, shorter than the 8-byte", 0),
    "wrong_identifier": lambda tiny: (
        tiny[:4] + b"TFL2" + tiny[8:],
        "file identifier is b'TFL2', expected b'TFL3'",
        4,
    ),
    "truncated_10pct": _truncated(0.10),
    "truncated_50pct": _truncated(0.50),
    "truncated_99pct": _truncated(0.99),
    "root_offset_past_end": _root_past_end,
    "root_misaligned": _root_misaligned,
    "vtable_past_end": _vtable_past_end,
    "vtable_before_start": _vtable_before_start,
    "field_outside_table": _field_outside_table,
    "zero_offset": _zero_offset,
    "vector_length_overflow": _vector_too_long,
    "string_without_terminator": _string_unterminated,
    "union_type_out_of_range": _union_type_out_of_range,
    "union_value_past_end": _union_value_bad,
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_is_rejected(tiny_int8_bytes: bytes, case: str) -> None:
    data, expected, at = CORRUPTIONS[case](tiny_int8_bytes)
    message = _reject(data)
    assert expected in message
    if at is not None:
        assert message.endswith(f", at byte {at}"), message


@pytest.mark.parametrize("size", [8, 64, 1000, 100_000])
def test_random_bytes_are_rejected(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert data[4:8] != b"TFL3"
    assert "file identifier is" in _reject(data)


@pytest.mark.parametrize("size", [8, 64, 1000, 100_000])
def test_random_bytes_with_identifier_are_rejected(size: int) -> None:
    rng = random.Random(1000 + size)
    data = bytearray(rng.randbytes(size))
    data[4:8] = b"TFL3"
    _reject(data)


# -- fuzzing ------------------------------------------------------------------------------


def _mutate(rng: random.Random, src: bytes) -> bytes:
    buf = bytearray(src)
    kind = rng.randrange(4)
    if kind == 0:  # a few random bytes
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:  # truncation
        del buf[rng.randrange(len(buf)) :]
    elif kind == 2:  # an aligned 32-bit word (offsets, lengths) set to a telling value
        pos = rng.randrange(len(buf) // 4) * 4
        telling = [0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, len(buf), rng.getrandbits(32)]
        value = rng.choice(telling)
        _put_u32(buf, pos, value)
    else:  # a 16-bit word (vtable entries)
        pos = rng.randrange(len(buf) // 2) * 2
        struct.pack_into("<H", buf, pos, rng.choice([0, 2, 4, 0xFFFF, rng.randrange(64)]))
    return bytes(buf)


def test_mutation_fuzz_raises_only_model_format_error(tiny_int8_bytes: bytes) -> None:
    """Every mutant is either rejected with ModelFormatError or passes and then unpacks."""
    rng = random.Random(20240607)
    passed = rejected = 0
    start = time.perf_counter()
    for i in range(300):
        mutant = _mutate(rng, tiny_int8_bytes)
        try:
            verify_tflite(mutant)
        except ModelFormatError:
            rejected += 1
            continue
        except Exception as error:  # any other exception is the bug
            pytest.fail(f"mutant {i}: {type(error).__name__}: {error}")
        passed += 1
        try:
            _must_unpack(mutant)
        except Exception as error:
            pytest.fail(f"mutant {i} passed the verifier but does not unpack: {error!r}")
    elapsed = time.perf_counter() - start
    assert passed > 20 and rejected > 20, (passed, rejected)
    assert elapsed < 20, f"{elapsed:.1f} s"


# -- the schema description agrees with TensorFlow's generated schema module ----------------

_PREPEND_KIND = {
    "PrependBoolSlot": "bool",
    "PrependInt8Slot": "i8",
    "PrependUint8Slot": "u8",
    "PrependInt16Slot": "i16",
    "PrependUint16Slot": "u16",
    "PrependInt32Slot": "i32",
    "PrependUint32Slot": "u32",
    "PrependFloat32Slot": "f32",
    "PrependInt64Slot": "i64",
    "PrependUint64Slot": "u64",
    "PrependFloat64Slot": "f64",
    "PrependUOffsetTRelativeSlot": "offset",
}


class _Recorder:
    """A stand-in flatbuffers.Builder that records the calls of generated functions."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., int]:
        def record(*args: Any) -> int:
            self.calls.append((name, args))
            return 0

        return record


def _call(fn_name: str, *args: Any) -> tuple[str, tuple[Any, ...]]:
    recorder = _Recorder()
    getattr(schema(), fn_name)(recorder, *args)
    assert len(recorder.calls) == 1, recorder.calls
    return recorder.calls[0]


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _expected_prepend(field: FieldSpec) -> str:
    if field.kind == SCALAR:
        return field.ref
    if field.kind == UNION_TYPE:
        return "u8"
    return "offset"


@pytest.mark.parametrize("table", sorted(tflite_schema().tables))
def test_description_matches_generated_schema(table: str) -> None:
    spec = tflite_schema().tables[table]
    assert _call(f"{table}Start") == ("StartObject", (len(spec.fields),))
    for slot, field in enumerate(spec.fields):
        if field.kind == UNUSED:  # deprecated: the generated code has no accessor
            assert not any(
                name.startswith(f"{table}Add") and _call(name, 0)[1][0] == slot
                for name in dir(schema())
                if name.startswith(f"{table}Add")
            )
            continue
        method, args = _call(f"{table}Add{_camel(field.name)}", 0)
        assert args[0] == slot, field.name
        assert _PREPEND_KIND[method] == _expected_prepend(field), field.name
        if field.kind in (VEC_SCALAR, VEC_TABLE, VEC_STRING):
            method, args = _call(f"{table}Start{_camel(field.name)}Vector", 0)
            assert method == "StartVector" and args[0] == field.elem_size, field.name
        if field.kind in (TABLE, STRING, VEC_TABLE, UNION):
            assert field.inline_size == 4


def test_description_covers_every_generated_table() -> None:
    fb = schema()
    generated = {
        name
        for name, value in vars(fb).items()
        if isinstance(value, type) and hasattr(value, "Init") and hasattr(fb, f"{name}Start")
    }
    assert generated == set(tflite_schema().tables)


@pytest.mark.parametrize("union", sorted(tflite_schema().unions))
def test_union_members_match_generated_enum(union: str) -> None:
    values = {k: v for k, v in vars(getattr(schema(), union)).items() if not k.startswith("_")}
    members = tflite_schema().unions[union]
    assert values == {"NONE": 0, **{m: i + 1 for i, m in enumerate(members)}}


def test_parse_schema_rejects_dangling_reference() -> None:
    with pytest.raises(ValueError, match="no table Missing"):
        parse_schema("A: x Missing\n")
    with pytest.raises(ValueError, match="must follow its type field"):
        parse_schema("B: y i32\nU: v union(X)\nunion X: B\n")
