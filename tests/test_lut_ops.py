"""Unary int8 -> int8 ops as 256-entry tables (the PATCH_EXEC LUT layer), exhaustively
against x86 TFLM.

For each op and quantization, a one-op model whose 16x16x1 input holds every int8 value
once runs in the tflite-micro wheel; its output must equal the table that
`ref_params.unary_table` computes by emulating TFLM's integer kernel.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from native_support import (
    assert_clean_under_asan,
    assert_converted_bit_identical,
    assert_stage_checksum_on_m4,
    assert_stage_equals_model,
    encode_raw,
    stage_end_before_mean,
)

from tflm_patch import ref_ops
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, builtin_op_codes, load_model, model_to_bytes
from tflm_patch.ref_params import LUT_OPS, run_graph, unary_table
from tflm_patch.schema import schema

SHAPE = [1, 16, 16, 1]
ALL_INT8 = np.arange(-128, 128, dtype=np.int8).reshape(SHAPE)

# (op, input (scale, zero point), output (scale, zero point), options)
CASES: list[tuple[str, tuple[float, int], tuple[float, int], dict[str, Any]]] = [
    ("RELU", (0.05, -10), (0.05, -128), {}),
    ("RELU", (0.1, 5), (0.03, -128), {}),
    ("RELU", (0.02, 0), (0.045, -100), {}),
    ("RELU6", (0.05, -10), (0.05, -128), {}),
    ("RELU6", (0.013, -128), (0.0235, -128), {}),
    ("RELU6", (0.1, 60), (0.2, 0), {}),
    ("LEAKY_RELU", (0.05, -10), (0.04, 20), {"alpha": 0.1}),
    ("LEAKY_RELU", (0.03, 40), (0.05, -30), {"alpha": 0.3}),
    ("LEAKY_RELU", (0.02, 0), (0.06, 0), {"alpha": 2.5}),
    ("LEAKY_RELU", (0.05, 0), (0.05, 0), {"alpha": -0.2}),
    ("HARD_SWISH", (0.05, 10), (0.03, -60), {}),
    ("HARD_SWISH", (0.2, -128), (0.1, -20), {}),
    ("HARD_SWISH", (0.01, 0), (0.02, -120), {}),
    ("HARD_SWISH", (0.0937, 37), (0.0512, -97), {}),
    ("LOGISTIC", (0.05, 0), (1 / 256, -128), {}),
    ("LOGISTIC", (0.2, 30), (1 / 256, -128), {}),
    ("LOGISTIC", (0.01, -100), (1 / 256, -128), {}),
    ("LOGISTIC", (0.5, 7), (1 / 256, -128), {}),
    ("TANH", (0.05, 0), (1 / 128, 0), {}),
    ("TANH", (0.2, 20), (1 / 128, 0), {}),
    ("TANH", (0.011, -50), (1 / 128, 0), {}),
    ("QUANTIZE", (0.05, 3), (0.1, -7), {}),
    ("QUANTIZE", (0.1, 0), (0.05, 0), {}),
    ("QUANTIZE", (0.05, 3), (0.05, -3), {}),
    ("QUANTIZE", (0.0731, -20), (0.0731, -20), {}),
]
IDS = [f"{op}-{i}" for i, (op, *_rest) in enumerate(CASES)]


def _quant(scale: float, zero_point: int) -> Any:
    q = schema().QuantizationParametersT()
    q.scale, q.zeroPoint = [scale], [zero_point]
    return q


def _tensor(name: str, buffer: int, scale: float, zero_point: int) -> Any:
    t = schema().TensorT()
    t.shape, t.type, t.buffer, t.name = list(SHAPE), schema().TensorType.INT8, buffer, name
    t.quantization = _quant(scale, zero_point)
    return t


def _options(op_name: str, options: dict[str, Any]) -> tuple[int, Any]:
    s = schema()
    if op_name == "LEAKY_RELU":
        o = s.LeakyReluOptionsT()
        o.alpha = options["alpha"]
        return s.BuiltinOptions.LeakyReluOptions, o
    if op_name == "QUANTIZE":
        return s.BuiltinOptions.QuantizeOptions, s.QuantizeOptionsT()
    return s.BuiltinOptions.NONE, None


def one_op_model(op_name: str, inp: tuple[float, int], out: tuple[float, int],
                 options: dict[str, Any]) -> bytes:
    """A model with one `op_name` operator from a [1, 16, 16, 1] int8 input to an int8
    output of the same shape, with the given quantizations."""
    s = schema()
    code = s.OperatorCodeT()
    code.builtinCode = builtin_op_codes()[op_name]
    code.deprecatedBuiltinCode = min(code.builtinCode, 127)
    code.version = 1
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    op.builtinOptionsType, op.builtinOptions = _options(op_name, options)
    sg = s.SubGraphT()
    sg.tensors = [_tensor("input", 1, *inp), _tensor("output", 2, *out)]
    sg.inputs, sg.outputs, sg.operators, sg.name = [0], [1], [op], "main"
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs = 3, [code], [sg]
    m.buffers = [s.BufferT() for _ in range(3)]
    m.description = "one unary op"
    return model_to_bytes(m)


def _model(case: int) -> Model:
    op_name, inp, out, options = CASES[case]
    return load_model(one_op_model(op_name, inp, out, options))


def test_every_lut_op_has_cases() -> None:
    assert {c[0] for c in CASES} == LUT_OPS


@pytest.mark.tflm
@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_table_equals_tflm_on_all_256_inputs(case: int) -> None:
    from tflm_patch.tflm_runner import run_model

    model = _model(case)
    table = unary_table(model, model.operators[0])
    assert table.dtype == np.int8 and table.shape == (256,)
    got = run_model(model.raw, [ALL_INT8])[0].reshape(-1)
    np.testing.assert_array_equal(table, got)


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_reference_graph_applies_the_table(case: int) -> None:
    model = _model(case)
    out = run_graph(model, [ALL_INT8])[model.outputs[0]].reshape(-1)
    np.testing.assert_array_equal(out, unary_table(model, model.operators[0]))


def test_lut_applies_table_by_value() -> None:
    table = np.arange(127, -129, -1, dtype=np.int8)  # negation, saturating at 127
    x = np.array([[-128, -1, 0, 5, 127]], np.int8)
    assert ref_ops.lut(x, table).tolist() == [[127, 0, -1, -6, -128]]


def test_relu6_table_clamps_with_the_input_scale() -> None:
    model = _model(IDS.index("RELU6-5"))  # input 0.1 / 60: six = 60 + 60 = 120
    table = unary_table(model, model.operators[0])
    assert table[:128 + 60].min() == 60 and table.max() == 120
    assert table[128 + 120:].tolist() == [120] * 8


def test_logistic_output_zero_point_must_be_minus_128() -> None:
    model = load_model(one_op_model("LOGISTIC", (0.05, 0), (1 / 256, 0), {}))
    with pytest.raises(UnsupportedModelError, match="zero point 0 is not -128"):
        unary_table(model, model.operators[0])


def test_non_unary_op_has_no_table() -> None:
    model = _model(0)
    with pytest.raises(UnsupportedModelError, match="not a unary op"):
        unary_table(model, replace(model.operators[0], name="ADD"))


# ---------------------------------------------------------------------------------------
# unary ops inside stages: numpy reference == C core == x86 TFLM
# ---------------------------------------------------------------------------------------

STAGE_UNARY = ("HARD_SWISH", "LEAKY_RELU", "LOGISTIC", "TANH", "RELU", "RELU6")


def _make_unary_int8_model() -> bytes:
    """Every unary op a stage takes, between convolutions (seeded; the code is the cache
    key)."""
    import tensorflow as tf

    from tflm_patch.zoo import full_int8

    tf.keras.utils.set_random_seed(11)
    inp = tf.keras.Input((24, 24, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = tf.keras.layers.Activation("hard_swish")(x)
    y = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
    y = tf.keras.layers.LeakyReLU(0.1)(y)
    y = tf.keras.layers.Conv2D(8, 1)(y)
    y = tf.keras.layers.Activation("sigmoid")(y)
    x = tf.keras.layers.Add()([x, y])
    x = tf.keras.layers.Conv2D(12, 3, padding="same")(x)
    x = tf.keras.layers.Activation("tanh")(x)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = tf.keras.layers.Activation("sigmoid")(x)
    x = tf.keras.layers.ReLU(6.0)(x)
    x = tf.keras.layers.Conv2D(16, 1)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(4)(x))
    rng = np.random.default_rng(11)

    def representative():  # type: ignore[no-untyped-def]
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 24, 24, 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    return full_int8(conv, representative)


@pytest.fixture(scope="session")
def unary_model() -> Model:
    """A full-int8 Keras model with every unary op a stage takes between convolutions."""
    pytest.importorskip("tensorflow", reason="the unary-op model is made with TensorFlow")
    from conftest import _cached_model

    return load_model(_cached_model(_make_unary_int8_model))


def test_unary_ops_are_in_the_model_and_supported(unary_model: Model) -> None:
    from tflm_patch.stage import op_support

    names = [op.name for op in unary_model.operators]
    for name in STAGE_UNARY:
        assert name in names
    for op in unary_model.operators[:stage_end_before_mean(unary_model) + 1]:
        assert op_support(unary_model, op) == (True, ""), op.name


def test_stage_has_one_lut_layer_per_unary_op(unary_model: Model) -> None:
    from tflm_patch import patch_format as pf
    from tflm_patch.stage import build_stage

    graph = build_stage(unary_model, 0, stage_end_before_mean(unary_model))
    luts = [k for k, ly in enumerate(graph.layers) if ly.kind == pf.LUT]
    ops = [op for op in unary_model.operators if op.name in STAGE_UNARY]
    assert len(luts) == len(ops) == 7
    for k, op in zip(luts, ops, strict=True):
        table = graph.tables[k]
        assert table is not None
        np.testing.assert_array_equal(table, unary_table(unary_model, op))


GRIDS = [(1, 1), (2, 3), (3, 3), (6, 6)]


@pytest.mark.parametrize("cache", [False, True], ids=["plain", "cached"])
@pytest.mark.parametrize("grid", GRIDS, ids=[f"{g[0]}x{g[1]}" for g in GRIDS])
def test_stage_reference_and_core_equal_the_model(unary_model: Model, grid: tuple[int, int],
                                                  cache: bool) -> None:


    assert_stage_equals_model(unary_model, stage_end_before_mean(unary_model), grid, cache)


@pytest.mark.first_case_quick
@pytest.mark.tflm
@pytest.mark.parametrize("seed", [0, 1])
def test_converted_model_is_bit_identical_in_tflm(unary_model: Model, seed: int) -> None:
    unary_ops = {op.index for op in unary_model.operators if op.name in STAGE_UNARY}
    assert_converted_bit_identical(unary_model, unary_ops, seed)


# ---------------------------------------------------------------------------------------
# the LUT layer record: Python and C validators agree, character for character
# ---------------------------------------------------------------------------------------


def _lut_options(packed: bool = False, **layer: Any) -> Any:
    """One LUT layer over an 8x6x4 tensor, a 2x2 grid, the table operator input 1."""
    from tflm_patch import patch_format as pf

    rows, cols = ((0, 4), (4, 8)), ((0, 3), (3, 6))
    tensors = tuple(pf.StageTensor(8, 6, 4, rows, cols) for _ in range(2))
    ly = replace(pf.Layer(pf.LUT, 0, weights=1), **layer)
    return pf.PatchOptions(tensors, (ly,), (2, 2), 0, 2,
                           pf.FLAG_PACKED if packed else 0)


BAD_LUT: dict[str, tuple[dict[str, Any], bool, str]] = {
    "no table": ({"weights": 0xFFFF}, False, "needs its table in weights and nothing else"),
    "bias": ({"bias": 1}, False, "needs its table in weights and nothing else"),
    "multipliers": ({"multipliers": 1}, False, "needs its table in weights and nothing else"),
    "kernel 3": ({"kernel": (3, 3)}, False, "kernel and stride must be 1"),
    "stride 2": ({"stride": (2, 1)}, False, "kernel and stride must be 1"),
    "p0 set": ({"p": (5,) + (0,) * 11}, False, "unused parameters are not 0"),
    "p4 without PACKED": ({"p": (0,) * 4 + (3,) + (0,) * 7}, False,
                          "unused parameters are not 0"),
    "p5 with PACKED": ({"p": (0,) * 5 + (1,) + (0,) * 6}, True, "unused parameters are not 0"),
    "negative offset": ({"p": (0,) * 4 + (-1,) + (0,) * 7}, True, "table offset -1 is negative"),
    "input1": ({"input1": 0}, False, "input1 must be NONE"),
}


def test_lut_options_round_trip() -> None:
    from tflm_patch import patch_format as pf

    for packed in (False, True):
        p = (0,) * 4 + (512 if packed else 0,) + (0,) * 7
        o = _lut_options(packed, p=p)
        assert pf.decode(pf.encode(o)) == o
        assert pf.constant_specs(o) == {1: ("int8", (768,) if packed else (256,))}


@pytest.mark.parametrize("case", sorted(BAD_LUT))
def test_malformed_lut_layer_is_refused_by_both(case: str) -> None:
    from native_support import core

    from tflm_patch import patch_format as pf

    changes, packed, message = BAD_LUT[case]
    blob = encode_raw(_lut_options(packed, **changes))
    with pytest.raises(pf.OptionsError, match=message) as info:
        pf.decode(blob)
    got = core().validate(blob)
    assert not got.ok
    assert got.message == str(info.value)


def test_lut_output_of_another_shape_is_refused_by_both() -> None:
    from native_support import core

    from tflm_patch import patch_format as pf

    o = _lut_options()
    out = replace(o.tensors[1], channels=5)
    blob = encode_raw(replace(o, tensors=(o.tensors[0], out)))
    with pytest.raises(pf.OptionsError, match="input and output shapes differ") as info:
        pf.decode(blob)
    assert core().validate(blob).message == str(info.value)


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_core_applies_the_table_at_its_offset(packed: bool) -> None:
    from native_support import core

    from tflm_patch import patch_format as pf

    lib = core()
    offset = 40 if packed else 0
    o = _lut_options(packed, p=(0,) * 4 + (offset,) + (0,) * 7)
    rng = np.random.default_rng(5)
    table = rng.integers(-128, 128, 256, dtype=np.int8)
    data = np.concatenate([rng.integers(-128, 128, offset, dtype=np.int8), table,
                           rng.integers(-128, 128, 9 if packed else 0, dtype=np.int8)])
    x = rng.integers(-128, 128, (1, 8, 6, 4), dtype=np.int8)
    got = lib.run(pf.encode(o), x, [None, data])
    np.testing.assert_array_equal(got, ref_ops.lut(x, table))


# ---------------------------------------------------------------------------------------
# a hostile table: refused in Prepare (x86 TFLM) and by the numpy reference alike
# ---------------------------------------------------------------------------------------


def _patched_object(model: Model, pack: bool) -> Any:
    from tflm_patch.rewrite import replace_stages
    from tflm_patch.schedule import make_schedule
    from tflm_patch.stage import build_stage

    graph = build_stage(model, 0, stage_end_before_mean(model))
    return replace_stages(model, [(graph, make_schedule(graph, (2, 2)))], pack=pack)


def _table_tensor(obj: Any) -> tuple[int, Any]:
    """(operator input index, model tensor) of the first LUT layer's table."""
    from tflm_patch import patch_format as pf
    from tflm_patch.rewrite import CUSTOM_CODE

    sg = obj.subgraphs[0]
    op = next(o for o in sg.operators
              if obj.operatorCodes[o.opcodeIndex].customCode in (CUSTOM_CODE,
                                                                 CUSTOM_CODE.encode()))
    o = pf.decode(np.asarray(op.customOptions, dtype=np.uint8).tobytes())
    index = next(ly.weights for ly in o.layers if ly.kind == pf.LUT)
    return index, sg.tensors[op.inputs[index]]


def _set_table(obj: Any, t: Any, data: bytes, shape: list[int], dtype: int = 9) -> None:
    buf = schema().BufferT()
    buf.data = np.frombuffer(data, dtype=np.uint8)
    obj.buffers.append(buf)
    t.buffer, t.shape, t.type = len(obj.buffers) - 1, shape, dtype


def _short_table(obj: Any, t: Any) -> None:
    _set_table(obj, t, bytes(255), [255])


def _int32_table(obj: Any, t: Any) -> None:
    _set_table(obj, t, bytes(256), [64], dtype=2)


def _table_buffer_short(obj: Any, t: Any) -> None:
    _set_table(obj, t, bytes(200), [256])


def _table_variable(obj: Any, t: Any) -> None:
    t.isVariable = True


def _packed_cut(obj: Any, t: Any) -> None:
    _set_table(obj, t, bytes(100), [100])


HOSTILE_TABLES = {
    "table_255_entries": (False, _short_table, r"input {} has 255 elements; the options need 256"),
    "table_int32": (False, _int32_table, r"input {} is int32"),
    "table_buffer_short": (False, _table_buffer_short,
                           r"input {} has a 200-byte buffer; its shape needs 256"),
    "table_variable": (False, _table_variable, r"input {} is a variable tensor"),
    "packed_table_cut": (True, _packed_cut,
                         r"input {} has 100 elements; the options need at least \d+"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TABLES))
def test_hostile_table_is_refused_by_the_reference(unary_model: Model, case: str) -> None:
    from tflm_patch import patch_format as pf
    from tflm_patch.patch_ref import check_operator_tensors
    from tflm_patch.rewrite import CUSTOM_CODE

    pack, edit, message = HOSTILE_TABLES[case]
    obj = _patched_object(unary_model, pack)
    index, t = _table_tensor(obj)
    edit(obj, t)
    patched = load_model(model_to_bytes(obj))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    with pytest.raises(UnsupportedModelError, match=message.format(index)):
        check_operator_tensors(patched, op, pf.decode(op.custom_options or b""))


@pytest.mark.tflm
@pytest.mark.parametrize("case", sorted(HOSTILE_TABLES))
def test_hostile_table_fails_allocation_in_tflm(unary_model: Model, case: str) -> None:
    from tflm_patch import tflm_build
    from tflm_patch.errors import TflmRunError
    from tflm_patch.tflm_runner import run_model

    kernel, reason = tflm_build.kernel_or_reason()
    if kernel is None:
        pytest.skip(f"the PATCH_EXEC kernel cannot be built here: {reason}")
    pack, edit, message = HOSTILE_TABLES[case]
    obj = _patched_object(unary_model, pack)
    index, t = _table_tensor(obj)
    edit(obj, t)
    x = np.zeros(unary_model.tensors[unary_model.inputs[0]].shape, np.int8)
    with pytest.raises(TflmRunError) as info:
        run_model(model_to_bytes(obj), [x], **kernel.runner_kwargs(), verify=False)
    text = str(info.value)
    assert text.startswith("TFLM failed while allocating tensors"), text
    assert re.search("PATCH_EXEC: " + message.format(index), text), text


@pytest.mark.slow
def test_lut_stages_and_bad_blobs_under_asan(unary_model: Model) -> None:
    """The stage on several grids (with and without caches) and the malformed LUT records
    in the core built with AddressSanitizer + UBSan: no report, the same bytes."""
    bad = [(case, encode_raw(_lut_options(packed, **changes)))
           for case, (changes, packed, _) in BAD_LUT.items()]
    assert_clean_under_asan(unary_model, stage_end_before_mean(unary_model), GRIDS, bad)


@pytest.mark.slow
@pytest.mark.parametrize("grid", [(1, 1), (3, 3)], ids=["1x1", "3x3"])
def test_stage_on_the_cortex_m4_equals_numpy(unary_model: Model, grid: tuple[int, int],
                                             tmp_path: Any) -> None:
    """The stage's output checksum on QEMU (Cortex-M4, DSP kernels) = the numpy reference."""
    assert_stage_checksum_on_m4(unary_model, stage_end_before_mean(unary_model), grid, tmp_path,
                                "unary ops")
