"""CONCATENATION along channels inside a stage (PATCH_EXEC layer kind 9): TFLM's int8
concatenation requires every input quantized like the output and no fused activation,
so the layer is a copy; the converter's int8 -> int8 QUANTIZE before it is a LUT layer.
The numpy reference, the C core and x86 TFLM give the same bytes."""

from __future__ import annotations

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

from tflm_patch import patch_format as pf
from tflm_patch import ref_ops
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, load_model, model_to_bytes
from tflm_patch.ref_params import params_for


def _make_concat_int8_model() -> bytes:
    """Two concatenations between convolutions, one with a TANH branch (fixed output
    scale, so the converter requantizes it with an int8 QUANTIZE); seeded."""
    import tensorflow as tf

    from tflm_patch.zoo import full_int8

    tf.keras.utils.set_random_seed(5)
    inp = tf.keras.Input((20, 20, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    a = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
    a = tf.keras.layers.Conv2D(6, 1)(a)
    b = tf.keras.layers.Conv2D(4, 1)(x)
    b = tf.keras.layers.Activation("tanh")(b)
    x = tf.keras.layers.Concatenate()([a, b])
    x = tf.keras.layers.Conv2D(12, 3, padding="same", activation="relu")(x)
    c = tf.keras.layers.Conv2D(5, 1, activation="relu6")(x)
    x = tf.keras.layers.Concatenate()([x, c])
    x = tf.keras.layers.Conv2D(16, 3, strides=2, padding="same")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(4)(x))
    rng = np.random.default_rng(5)

    def representative():  # type: ignore[no-untyped-def]
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 20, 20, 3)).astype(np.float32)]

    return full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative)


@pytest.fixture(scope="session")
def concat_model() -> Model:
    pytest.importorskip("tensorflow", reason="the concatenation model is made with TensorFlow")
    from conftest import _cached_model

    return load_model(_cached_model(_make_concat_int8_model))


def _concat_ops(model: Model) -> list[int]:
    return [op.index for op in model.operators if op.name == "CONCATENATION"]


def test_model_has_two_concatenations_and_a_requantization(concat_model: Model) -> None:
    names = [op.name for op in concat_model.operators]
    assert names.count("CONCATENATION") == 2 and "QUANTIZE" in names


def test_stage_layers(concat_model: Model) -> None:
    from tflm_patch.stage import build_stage

    graph = build_stage(concat_model, 0, stage_end_before_mean(concat_model))
    kinds = [ly.kind for ly in graph.layers]
    assert kinds.count(pf.CONCAT) == 2 and kinds.count(pf.LUT) == 2  # TANH, QUANTIZE
    for k, ly in enumerate(graph.layers):
        if ly.kind == pf.CONCAT:
            op = concat_model.operators[graph.first + k]
            assert op.name == "CONCATENATION"
            want = [graph.tensors.index(t) for t in op.inputs]
            assert [ly.input0, ly.input1] == want


GRIDS = [(1, 1), (2, 2), (3, 4), (5, 5)]


@pytest.mark.parametrize("cache", [False, True], ids=["plain", "cached"])
@pytest.mark.parametrize("grid", GRIDS, ids=[f"{g[0]}x{g[1]}" for g in GRIDS])
def test_stage_reference_and_core_equal_the_model(concat_model: Model, grid: tuple[int, int],
                                                  cache: bool) -> None:


    assert_stage_equals_model(concat_model, stage_end_before_mean(concat_model), grid, cache)


@pytest.mark.first_case_quick
@pytest.mark.tflm
@pytest.mark.parametrize("seed", [0, 1])
def test_converted_model_is_bit_identical_in_tflm(concat_model: Model, seed: int) -> None:
    assert_converted_bit_identical(concat_model, set(_concat_ops(concat_model)), seed)


# ---------------------------------------------------------------------------------------
# what a stage refuses, with the reason
# ---------------------------------------------------------------------------------------


def _edited(model: Model, edit: Any) -> Model:
    obj = load_model(model.raw).obj
    edit(obj, obj.subgraphs[0].operators[_concat_ops(model)[0]])
    return load_model(model_to_bytes(obj))


def test_three_inputs_are_refused_with_the_reason(concat_model: Model) -> None:
    from tflm_patch.stage import op_support

    def third_input(obj: Any, op: Any) -> None:
        op.inputs = [*op.inputs, op.inputs[0]]

    m = _edited(concat_model, third_input)
    ok, reason = op_support(m, m.operators[_concat_ops(m)[0]])
    assert not ok and "joins 3 tensors" in reason


def test_requantizing_concatenation_is_refused_as_tflm_does(concat_model: Model) -> None:
    from tflm_patch.stage import op_support

    def other_scale(obj: Any, op: Any) -> None:
        obj.subgraphs[0].tensors[op.inputs[1]].quantization.scale = [0.5]

    m = _edited(concat_model, other_scale)
    op = m.operators[_concat_ops(m)[0]]
    with pytest.raises(UnsupportedModelError, match="quantized unlike the output"):
        params_for(m, op)
    assert not op_support(m, op)[0]


def test_fused_activation_is_refused_as_tflm_does(concat_model: Model) -> None:
    def relu(obj: Any, op: Any) -> None:
        op.builtinOptions.fusedActivationFunction = 1

    m = _edited(concat_model, relu)
    with pytest.raises(UnsupportedModelError, match="fused activation"):
        params_for(m, m.operators[_concat_ops(m)[0]])


# ---------------------------------------------------------------------------------------
# the layer record: Python and C validators agree, character for character
# ---------------------------------------------------------------------------------------


def _concat_options(**layer: Any) -> pf.PatchOptions:
    """Tensor 0 (6x4x3) -> layer 0 LUT -> tensor 1 (6x4x3); layer 1 CONCAT(0, 1) ->
    tensor 2 (6x4x6); a 2x2 grid, the table operator input 1."""
    rows, cols = ((0, 3), (3, 6)), ((0, 2), (2, 4))
    t = [pf.StageTensor(6, 4, c, rows, cols) for c in (3, 3, 6)]
    t[1] = replace(t[1], slot_offset=0, slot_bytes=18)
    lut = pf.Layer(pf.LUT, 0, weights=1)
    cat = replace(pf.Layer(pf.CONCAT, 0, input1=1), **layer)
    return pf.PatchOptions(tuple(t), (lut, cat), (2, 2), 18, 2)


BAD_CONCAT: dict[str, tuple[dict[str, Any], str]] = {
    "input1 none": ({"input1": pf.NONE}, "input1 65535 is not produced before it"),
    "input1 from the future": ({"input1": 2}, "input1 2 is not produced before it"),
    "kernel 3": ({"kernel": (3, 3)}, "kernel and stride must be 1"),
    "weights": ({"weights": 1}, "has constant inputs but is not a convolution"),
    "p set": ({"p": (0,) * 11 + (1,)}, "unused parameters are not 0"),
}


def test_concat_options_round_trip() -> None:
    o = _concat_options()
    assert pf.decode(pf.encode(o)) == o


@pytest.mark.parametrize("case", sorted(BAD_CONCAT))
def test_malformed_concat_layer_is_refused_by_both(case: str) -> None:
    from native_support import core

    changes, message = BAD_CONCAT[case]
    blob = encode_raw(_concat_options(**changes))
    with pytest.raises(pf.OptionsError, match=message) as info:
        pf.decode(blob)
    got = core().validate(blob)
    assert not got.ok and got.message == str(info.value)


def test_concat_of_the_wrong_channels_is_refused_by_both() -> None:
    from native_support import core

    o = _concat_options()
    bad = replace(o, tensors=(*o.tensors[:2], replace(o.tensors[2], channels=7)))
    blob = encode_raw(bad)
    with pytest.raises(pf.OptionsError, match="is not the channels of") as info:
        pf.decode(blob)
    assert core().validate(blob).message == str(info.value)


def test_core_joins_the_channels() -> None:
    from native_support import core

    rng = np.random.default_rng(9)
    table = np.arange(-128, 128, dtype=np.int8)[::-1].copy()
    x = rng.integers(-128, 128, (1, 6, 4, 3), dtype=np.int8)
    got = core().run(pf.encode(_concat_options()), x, [None, table])
    np.testing.assert_array_equal(got, np.concatenate([x, ref_ops.lut(x, table)], axis=-1))


@pytest.mark.slow
def test_concat_stages_and_bad_blobs_under_asan(concat_model: Model) -> None:
    """The stage on several grids (with and without caches) and the malformed CONCATENATION
    records in the core built with AddressSanitizer + UBSan: no report, the same bytes."""
    bad = [(case, encode_raw(_concat_options(**changes)))
           for case, (changes, _) in BAD_CONCAT.items()]
    assert_clean_under_asan(concat_model, stage_end_before_mean(concat_model), GRIDS, bad)


@pytest.mark.slow
@pytest.mark.parametrize("grid", [(1, 1), (3, 4)], ids=["1x1", "3x4"])
def test_stage_on_the_cortex_m4_equals_numpy(concat_model: Model, grid: tuple[int, int],
                                             tmp_path: Any) -> None:
    """The stage's output checksum on QEMU (Cortex-M4, DSP kernels) = the numpy reference."""
    assert_stage_checksum_on_m4(concat_model, stage_end_before_mean(concat_model), grid, tmp_path,
                                "concatenation")
