"""Model I/O: loading, graph view, writing back."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_NAMES, shared_model_path

from tflm_patch.errors import ModelFormatError, UnsupportedModelError
from tflm_patch.model import BUFFER_ALIGNMENT, load_model, model_to_bytes, require_int8
from tflm_patch.schema import schema


@pytest.mark.parametrize("name", SHARED_NAMES)
def test_round_trip_rereads_equal(name: str) -> None:
    original = load_model(shared_model_path(name))
    written = model_to_bytes(original.obj)
    again = load_model(written)
    assert again.tensors == original.tensors
    assert [(o.name, o.inputs, o.outputs) for o in again.operators] == [
        (o.name, o.inputs, o.outputs) for o in original.operators
    ]
    assert again.inputs == original.inputs and again.outputs == original.outputs
    for t in original.tensors:
        assert again.buffer_bytes(t.index) == original.buffer_bytes(t.index)
    # writing the re-read model gives the same bytes: the writer is deterministic
    assert model_to_bytes(again.obj) == written


@pytest.mark.parametrize("name", SHARED_NAMES)
def test_written_constant_buffers_are_aligned(name: str) -> None:
    written = model_to_bytes(load_model(shared_model_path(name)).obj)
    root = schema().Model.GetRootAs(written, 0)
    checked = 0
    for i in range(root.BuffersLength()):
        table = root.Buffers(i)._tab
        field = table.Offset(4)  # Buffer.data, field id 0
        if field and table.VectorLen(field) > 0:
            assert table.Vector(field) % BUFFER_ALIGNMENT == 0, f"buffer {i}"
            checked += 1
    assert checked > 0


def test_person_detect_graph_view() -> None:
    m = load_model(shared_model_path("person_detect"))
    assert len(m.operators) == 31
    inp = m.tensors[m.inputs[0]]
    assert inp.shape == (1, 96, 96, 1) and inp.dtype == "int8" and not inp.is_constant
    first = m.operators[0]
    assert first.name == "DEPTHWISE_CONV_2D"
    assert first.options.depthMultiplier == 8
    weights = m.tensors[first.inputs[1]]
    assert weights.is_constant and weights.dtype == "int8"
    assert weights.quantization is not None and weights.quantization.per_channel
    assert len(weights.quantization.scale) == weights.shape[-1] == 8
    assert m.constant(first.inputs[1]).shape == weights.shape
    bias = m.tensors[first.inputs[2]]
    assert bias.dtype == "int32" and bias.nbytes == 4 * 8
    assert {o.name for o in m.operators} == {
        "DEPTHWISE_CONV_2D", "CONV_2D", "AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX"
    }


def test_tiny_int8_model_loads(tiny_int8_bytes: bytes) -> None:
    m = load_model(tiny_int8_bytes)
    require_int8(m)
    assert m.tensors[m.inputs[0]].shape == (1, 16, 16, 3)
    assert [o.name for o in m.operators][:2] == ["CONV_2D", "DEPTHWISE_CONV_2D"]


def test_float_model_is_refused(float_model_bytes: bytes) -> None:
    m = load_model(float_model_bytes)
    with pytest.raises(UnsupportedModelError, match=r"float model.*int8"):
        require_int8(m)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "only 0 bytes"),
        (b"hello world, not a model", "file identifier"),
        (bytes(64), "file identifier"),
    ],
    ids=["empty", "text", "zeros"],
)
def test_not_a_model(data: bytes, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        load_model(data)


def test_truncated_model(tiny_int8_bytes: bytes) -> None:
    with pytest.raises(ModelFormatError):
        load_model(tiny_int8_bytes[: len(tiny_int8_bytes) // 2])


def test_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelFormatError, match="no such file"):
        load_model(tmp_path / "nope.tflite")


def test_constant_values_match_buffer(tiny_int8_bytes: bytes) -> None:
    m = load_model(tiny_int8_bytes)
    conv = m.operators[0]
    w = m.constant(conv.inputs[1])
    assert w.dtype == np.int8
    assert w.tobytes() == m.buffer_bytes(conv.inputs[1])
