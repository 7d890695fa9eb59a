"""The arena tail against the x86 TFLM interpreter's RecordingMicroAllocator: exact bytes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_NAMES, shared_model_path

from tflm_patch.arena_head import plan_head, planning_head_bytes
from tflm_patch.arena_tail import (
    RECORDED_CATEGORIES,
    OpTail,
    op_persistent_allocations,
    predict_tail,
    register_op,
    tail_allocations,
)
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.tflm_runner import allocation_report, smallest_arena
from tflm_patch.zoo import ZOO_NAMES, ensure_model

MODELS = [f"shared:{n}" for n in SHARED_NAMES] + [f"zoo:{n}" for n in ZOO_NAMES]


def _path(spec: str) -> Path:
    kind, name = spec.split(":")
    return shared_model_path(name) if kind == "shared" else ensure_model(name)


def _check_against_report(name: str, model: Model) -> None:
    tail = predict_tail(model)
    report = allocation_report(model.raw)
    print(f"{name}: tail predicted {tail.total:,} B, measured {report.tail:,} B")
    for category in RECORDED_CATEGORIES:
        rec, item = report.record(category), tail.item(category)
        got = (item.aligned_size, item.size, item.count) if item else None
        want = (rec.used_bytes, rec.requested_bytes, rec.count) if rec else None
        print(f"  {category!r}: predicted (used, requested, count) {got}, measured {want}")
        assert got == want, category
    assert report.records, "the recording allocator reported no category"
    assert tail.total == report.tail


@pytest.mark.slow
@pytest.mark.tflm
@pytest.mark.parametrize("spec", MODELS)
def test_tail_and_categories_equal_recording_allocator(spec: str) -> None:
    _check_against_report(spec, load_model(_path(spec)))


@pytest.mark.slow
@pytest.mark.tflm
@pytest.mark.parametrize("spec", MODELS)
def test_head_plus_tail_equals_measured_arena(spec: str) -> None:
    """head + tail is RecordingMicroAllocator's total after AllocateTensors. The smallest
    arena that works is that, unless planning needs more: the planner's head
    (`planning_head_bytes`) beside the tail as it stands before the input/output tensors
    (only hello_world_int8 among these)."""
    model = load_model(_path(spec))
    head, tail = plan_head(model).size, predict_tail(model)
    planning = planning_head_bytes(model) + tail.before_io_tensors
    measured = smallest_arena(model.raw)
    print(f"{spec}: head {head:,} + tail {tail.total:,} = {head + tail.total:,} B "
          f"(measured total {measured.report.total:,} B); while planning {planning:,} B; "
          f"predicted smallest {max(head + tail.total, planning):,} B, measured smallest "
          f"{measured.smallest:,} B")
    assert head + tail.total == measured.report.total
    assert max(head + tail.total, planning) == measured.smallest


# ------------------------------------------------------- ops outside the shared/zoo models
def _convert(model, shape: tuple[int, ...], int16: bool) -> bytes:
    import tensorflow as tf

    rng = np.random.default_rng(3)

    def representative():
        for _ in range(8):
            yield [rng.uniform(-1, 1, shape).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    if int16:
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int16
    else:  # float input/output: QUANTIZE first, DEQUANTIZE last
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(conv.convert())


@pytest.fixture(scope="module")
def many_ops_bytes() -> bytes:
    """LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, CONCATENATION, MUL, STRIDED_SLICE, SUB,
    RESIZE_NEAREST_NEIGHBOR, QUANTIZE, DEQUANTIZE beside the usual ops."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(3)
    layers = tf.keras.layers
    inp = tf.keras.Input((8, 8, 4), batch_size=1)
    x = layers.Conv2D(8, 3, padding="same")(inp)
    y = layers.Concatenate()([
        layers.Activation("sigmoid")(x), layers.Activation("tanh")(x), layers.LeakyReLU(0.2)(x),
        layers.Activation("hard_swish")(x)])
    y = layers.Subtract()([y[:, 1:7, 1:7, :], layers.Multiply()([y, y])[:, :6, :6, :]])
    y = layers.Resizing(12, 12, interpolation="nearest")(y)
    y = layers.MaxPooling2D(2)(y)
    y = layers.Dense(5)(layers.Reshape((36, 32))(y))
    out = layers.Softmax()(layers.Reshape((180,))(y))
    return _convert(tf.keras.Model(inp, out), (1, 8, 8, 4), int16=False)


@pytest.fixture(scope="module")
def int16_softmax_bytes() -> bytes:
    """16x8 quantization: SOFTMAX on int16 allocates its two lookup tables in Prepare."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(3)
    inp = tf.keras.Input((8, 8, 4), batch_size=1)
    x = tf.keras.layers.Flatten()(tf.keras.layers.Conv2D(8, 3, padding="same")(inp))
    out = tf.keras.layers.Softmax()(tf.keras.layers.Dense(10)(x))
    return _convert(tf.keras.Model(inp, out), (1, 8, 8, 4), int16=True)


@pytest.mark.slow
@pytest.mark.tflm
def test_many_ops_tail_equals_recording_allocator(many_ops_bytes: bytes) -> None:
    model = load_model(many_ops_bytes)
    names = {op.name for op in model.operators}
    assert {"LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "CONCATENATION", "STRIDED_SLICE",
            "SUB", "MUL", "RESIZE_NEAREST_NEIGHBOR", "QUANTIZE", "DEQUANTIZE"} <= names, names
    _check_against_report("many_ops", model)


@pytest.mark.slow
@pytest.mark.tflm
def test_int16_softmax_tail_equals_recording_allocator(int16_softmax_bytes: bytes) -> None:
    model = load_model(int16_softmax_bytes)
    softmax = next(op for op in model.operators if op.name == "SOFTMAX")
    assert model.tensors[softmax.inputs[0]].dtype == "int16"
    # SoftmaxParams (80 B on x86_64), then two int16 tables of 513 entries
    assert op_persistent_allocations(model, softmax) == [80, 1026, 1026]
    _check_against_report("int16_softmax", model)


# --------------------------------------------------------------------- registry, no TFLM
def test_conv_allocations_are_opdata_and_per_channel_arrays() -> None:
    model = load_model(shared_model_path("person_detect"))
    dw, conv = model.operators[0], model.operators[2]
    assert (dw.name, conv.name) == ("DEPTHWISE_CONV_2D", "CONV_2D")
    # op 0: depthwise 3x3 with 8 output channels, op 2: 1x1 conv with 16 filters.
    # OpDataConv (80 B with the wheel's USE_TFLM_COMPRESSION), then the int32 per-channel
    # multipliers and shifts
    assert op_persistent_allocations(model, dw) == [80, 32, 32]
    assert op_persistent_allocations(model, conv) == [80, 64, 64]
    assert op_persistent_allocations(model, conv, "cortex_m") == [56, 64, 64]


def test_reshape_with_unknown_dimension_copies_its_dims() -> None:
    m = load_model(shared_model_path("person_detect"))
    op = next(o for o in m.operators if o.name == "RESHAPE")
    assert op_persistent_allocations(m, op) == []
    obj = copy.deepcopy(m.obj)
    obj.subgraphs[0].tensors[op.outputs[0]].shape = np.array([1, -1], dtype=np.int32)
    edited = model_from_object(obj)
    # TfLiteIntArrayGetSizeInBytes(2) = 4 + 2 * 4
    assert op_persistent_allocations(edited, edited.operators[op.index]) == [12]


def test_op_the_wheel_lacks_is_unpredicted_naming_it(tiny_int8_bytes: bytes) -> None:
    """An operator without a table entry is measured in x86 TFLM (arena_measure); one the
    wheel does not register is left out of the prediction, which says so."""
    from tflm_patch.arena import predict_arena

    m = load_model(tiny_int8_bytes)
    obj = copy.deepcopy(m.obj)
    code = obj.operatorCodes[obj.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = 32  # CUSTOM
    code.customCode = "MY_OP"
    edited = model_from_object(obj)
    (line,) = predict_arena(edited).unpredicted
    assert line.startswith("operator 0 (MY_OP): x86 TFLM cannot run it alone")
    assert "Failed to get registration from op code CUSTOM" in line
    assert op_persistent_allocations(edited, edited.operators[0]) == []


def test_registered_custom_op_joins_the_tail(tiny_int8_bytes: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tflm_patch import arena_head, arena_tail

    m = load_model(tiny_int8_bytes)
    obj = copy.deepcopy(m.obj)
    first = obj.subgraphs[0].operators[0]
    code = obj.operatorCodes[first.opcodeIndex]
    original = m.operators[0].name
    code.builtinCode = code.deprecatedBuiltinCode = 32
    code.customCode = "MY_OP"
    edited = model_from_object(obj)
    monkeypatch.setattr(arena_tail, "OP_TAIL", dict(arena_tail.OP_TAIL))
    monkeypatch.setitem(arena_head.SCRATCH_REGISTRY, "MY_OP", lambda *_: [])
    register_op("MY_OP", OpTail(None, None, lambda *_: [100, 8]))
    assert op_persistent_allocations(edited, edited.operators[0]) == [100, 8]
    allocs, _ = tail_allocations(edited)
    prepare = [a.size for a in allocs if a.what == "MY_OP 0 Prepare"]
    assert prepare == [100, 8]
    assert original in arena_tail.OP_TAIL


def test_unknown_target_is_refused() -> None:
    model = load_model(shared_model_path("hello_world_int8"))
    with pytest.raises(UnsupportedModelError, match="riscv"):
        predict_tail(model, "riscv")
