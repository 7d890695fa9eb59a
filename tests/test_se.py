"""Squeeze-and-excitation blocks inside PATCH_EXEC stages.

An SE block scales its tensor x by a small runtime per-channel tensor s (MEAN over H, W ->
1x1 convs -> sigmoid / hard sigmoid -> broadcast MUL). PATCH_EXEC takes s as an extra
operator input (an arena tensor made before the stage) and applies the MUL (layer kind 8)
inside the stage that consumes x * s, so x * s never exists; the residual ADD after the
projection may read the block input whole as a runtime addend (an ADD layer with input1
NONE). The seeded Keras SE models are made here (TensorFlow, cached like the zoo's models):
exact int8 bytes of the numpy reference, the C++ core (ctypes) and the kernel in x86 TFLM
against the original model in x86 TFLM; the measured arena equals the prediction; bad side
inputs are refused in Prepare with one line (the kernel built with ASan + UBSan).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import model_fuzz_cases as mf
import numpy as np
import pytest
from conftest import _cached_model
from native_support import encode_raw

from tflm_patch import native, tflm_build
from tflm_patch import patch_format as pf
from tflm_patch.model import Model, load_model, model_from_object, model_to_bytes
from tflm_patch.native import run_patch_exec_native
from tflm_patch.patch_ref import run_patch_exec
from tflm_patch.planner import PlanRequest, patched_model_object, plan
from tflm_patch.rewrite import CUSTOM_CODE
from tflm_patch.stage import op_support, runtime_addends, side_operand, stage_check
from tflm_patch.tflm_runner import run_model, smallest_arena
from tflm_patch.validate import Executor, random_inputs, run_patched
from tflm_patch.zoo import full_int8

SEEDS = (0, 1)


# ------------------------------------------------------------------ the models


def _make_se_hard_sigmoid() -> bytes:
    """Two inverted residual blocks with SE (1x1 convs, hard sigmoid, Multiply(x, s)),
    the first with a residual ADD; the output is the second block's 12x12x12 tensor."""
    import tensorflow as tf

    layers = tf.keras.layers
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(11)

    def se(x, squeeze):
        s = layers.GlobalAveragePooling2D(keepdims=True)(x)
        s = layers.Conv2D(squeeze, 1, activation="relu")(s)
        s = layers.Conv2D(x.shape[-1], 1, activation="hard_sigmoid")(s)
        return layers.Multiply()([x, s])

    inp = tf.keras.Input((24, 24, 8), batch_size=1)
    y = layers.Conv2D(32, 1, activation="relu")(inp)
    y = layers.DepthwiseConv2D(3, padding="same", activation="relu")(y)
    y = layers.Conv2D(8, 1)(se(y, 8))
    x = layers.Add()([inp, y])
    y = layers.Conv2D(40, 1, activation="relu")(x)
    y = layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu")(y)
    out = layers.Conv2D(12, 1)(se(y, 8))
    model = tf.keras.Model(inp, out)
    rng = np.random.default_rng(11)

    def representative():
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 24, 24, 8)).astype(np.float32)]

    return full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative)


def _make_se_sigmoid_dense() -> bytes:
    """One residual block whose SE is GAP -> Dense -> ReLU -> Dense -> sigmoid -> reshape
    -> Multiply(s, x) (the per-channel operand first)."""
    import tensorflow as tf

    layers = tf.keras.layers
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(12)
    inp = tf.keras.Input((20, 20, 8), batch_size=1)
    y = layers.Conv2D(24, 1, activation="relu6")(inp)
    y = layers.DepthwiseConv2D(3, padding="same", activation="relu6")(y)
    s = layers.GlobalAveragePooling2D()(y)
    s = layers.Dense(6, activation="relu")(s)
    s = layers.Dense(24, activation="sigmoid")(s)
    s = layers.Reshape((1, 1, 24))(s)
    y = layers.Conv2D(8, 1)(layers.Multiply()([s, y]))
    out = layers.Add()([inp, y])
    model = tf.keras.Model(inp, out)
    rng = np.random.default_rng(12)

    def representative():
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 20, 20, 8)).astype(np.float32)]

    return full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative)


MAKERS = {"hard_sigmoid": _make_se_hard_sigmoid, "sigmoid_dense": _make_se_sigmoid_dense}


@pytest.fixture(scope="session")
def se_models() -> dict[str, bytes]:
    """The seeded SE models (TensorFlow only when a model changed)."""
    try:
        return {name: _cached_model(make) for name, make in MAKERS.items()}
    except ImportError as e:
        pytest.skip(f"TensorFlow is not installed ({e}): the SE test models cannot be made")


@functools.cache
def _patched(data: bytes, objective: str = "memory") -> tuple[Model, Model, int]:
    """(original, patched, predicted arena) of the planner's plan."""
    model = load_model(data)
    result = plan(model, PlanRequest(objective=objective))
    assert result.chosen is not None, result.message
    return model, model_from_object(patched_model_object(model, result)), result.chosen.arena


def _se_ops(model: Model) -> list[tuple[int, pf.PatchOptions]]:
    """(operator, options) of the PATCH_EXECs with a MUL layer."""
    out = []
    for op in model.operators:
        if op.name == CUSTOM_CODE:
            o = pf.decode(op.custom_options or b"")
            if any(ly.kind == pf.MUL for ly in o.layers):
                out.append((op.index, o))
    return out


def _kernel_or_skip() -> tflm_build.KernelLibrary:
    missing = [v for v in (tflm_build.ENV_ROOT, tflm_build.ENV_EXTRA) if not os.environ.get(v)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not set: the C++ PATCH_EXEC kernel needs the "
                    "TFLM headers (see DEVELOPERS.md)")
    return tflm_build.build_kernel()


# ------------------------------------------------------------------ stages


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_se_mul_is_a_stage_op(se_models: dict[str, bytes], name: str) -> None:
    model = load_model(se_models[name])
    muls = [op for op in model.operators if side_operand(model, op) is not None]
    assert len(muls) == (2 if name == "hard_sigmoid" else 1)
    for op in muls:
        assert op_support(model, op) == (True, "")
        # the MUL with the projection after it (and the residual ADD, whose block input
        # is then a runtime addend) is one valid stage
        assert stage_check(model, op.index, op.index + 1, live_input=True)[0]
    first = muls[0].index
    assert model.operators[first + 2].name == "ADD"
    assert stage_check(model, first, first + 2, live_input=True)[0]
    assert list(runtime_addends(model, first, first + 2)) == [first + 2]


def test_mul_by_a_constant_is_not_a_stage_op(se_models: dict[str, bytes]) -> None:
    model = load_model(se_models["hard_sigmoid"])
    consts = [op for op in model.operators
              if op.name == "MUL" and len(model.activation_inputs(op)) == 1]
    assert consts, "hard sigmoid has a MUL by a constant"
    ok, reason = op_support(model, consts[0])
    assert not ok and "per-channel tensor" in reason


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_plan_puts_the_se_mul_in_a_stage(se_models: dict[str, bytes], name: str) -> None:
    _, patched, _ = _patched(se_models[name])
    se_ops = _se_ops(patched)
    assert se_ops, "no PATCH_EXEC with a MUL layer"
    for index, o in se_ops:
        op = patched.operators[index]
        for ly in o.layers:
            if ly.kind == pf.MUL:
                side = patched.tensors[op.inputs[ly.weights]]
                assert side.numel == side.shape[-1] == o.tensors[0].channels
                assert not side.is_constant
    assert not any(op.name == "MUL" and len(patched.activation_inputs(op)) == 2
                   for op in patched.operators), "an SE MUL is left outside the stages"


# ------------------------------------------------------------------ bit-exactness


@pytest.mark.first_case_quick
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_numpy_reference_bit_exact(se_models: dict[str, bytes], name: str, seed: int) -> None:
    """The split path (x86 TFLM between PATCH_EXECs, numpy for them) against the original
    model in x86 TFLM: the same bytes."""
    original, patched, _ = _patched(se_models[name])
    x = random_inputs(original, seed)
    want = run_model(original.raw, x)
    got = run_patched(patched, x, patch_runner=run_patch_exec)
    assert [g.tobytes() for g in got] == [w.tobytes() for w in want]


@pytest.mark.first_case_quick
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_c_core_bit_exact(se_models: dict[str, bytes], name: str, seed: int) -> None:
    """The C++ core through ctypes (the runtime inputs from the split path's values)."""
    try:
        native.load()
    except native.NativeBuildError as e:
        pytest.skip(f"the C++ core cannot be built here: {e}")
    original, patched, _ = _patched(se_models[name])
    x = random_inputs(original, seed)
    want = run_model(original.raw, x)
    got = run_patched(patched, x, patch_runner=run_patch_exec_native)
    assert [g.tobytes() for g in got] == [w.tobytes() for w in want]


@pytest.mark.first_case_quick
@pytest.mark.tflm
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_kernel_in_tflm_bit_exact(se_models: dict[str, bytes], name: str, seed: int) -> None:
    kernel = _kernel_or_skip()
    original, patched, _ = _patched(se_models[name])
    x = random_inputs(original, seed)
    want = run_model(original.raw, x)
    got = run_patched(patched, x, executor=Executor(kernel))
    assert [g.tobytes() for g in got] == [w.tobytes() for w in want]


@pytest.mark.first_case_quick
@pytest.mark.tflm
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_measured_arena_equals_prediction(se_models: dict[str, bytes], name: str) -> None:
    kernel = _kernel_or_skip()
    original, patched, predicted = _patched(se_models[name])
    data = model_to_bytes(patched.obj)
    measured = smallest_arena(data, **kernel.runner_kwargs()).smallest
    assert measured == predicted
    assert measured < smallest_arena(original.raw).smallest


# ------------------------------------------------------------------ the options format


def _mul_options() -> pf.PatchOptions:
    """A valid blob: MUL by operator input 1 (8 channels), then ADD of the runtime addend
    operator input 2, on a 6x6 tensor in 2x1 patches."""
    rows, cols = ((0, 3), (3, 6)), ((0, 6),)
    t = pf.StageTensor(6, 6, 8, rows, cols)
    mid = dataclasses.replace(t, slot_offset=0, slot_bytes=3 * 6 * 8)
    mul = pf.Layer(pf.MUL, 0, weights=1, p=(3, -2, -128, 127, -5, 1 << 30, -7, 0, 0, 0, 0, 0))
    add = pf.Layer(pf.ADD, 1, weights=2, p=(-2, 1, -128, 127, 4, 20, 1 << 30, -1, 1 << 30,
                                            -1, 1 << 30, -18))
    return pf.PatchOptions((t, mid, t), (mul, add), (2, 1), 3 * 6 * 8, 3)


def _bad(**changes: object) -> pf.PatchOptions:
    o = _mul_options()
    layers = (dataclasses.replace(o.layers[0], **changes), o.layers[1])  # type: ignore[arg-type]
    return dataclasses.replace(o, layers=layers)


BAD_OPTIONS = {
    "mul_without_side_input": (_bad(weights=pf.NONE), "needs its side input in weights"),
    "mul_with_a_bias": (_bad(bias=1), "needs its side input in weights and nothing else"),
    "mul_side_input_past_the_end": (_bad(weights=3), r"weights input 3 outside \[1, 3\)"),
    "mul_shift_out_of_range": (_bad(p=(3, -2, -128, 127, -5, 1 << 30, 31, 0, 0, 0, 0, 0)),
                               "multiplier 1073741824 or shift 31 out of range"),
    "mul_unused_parameter": (_bad(p=(3, -2, -128, 127, -5, 1 << 30, -7, 1, 0, 0, 0, 0)),
                             "unused parameters are not 0"),
    "mul_with_input1": (_bad(input1=0), "input1 must be NONE"),
}


def test_valid_mul_options_round_trip() -> None:
    o = _mul_options()
    blob = pf.encode(o)
    assert pf.decode(blob) == o
    assert pf.constant_specs(o) == {1: (pf.RUNTIME_INT8, (8,)), 2: (pf.RUNTIME_INT8, (6, 6, 8))}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_mul_options_refused_alike(case: str) -> None:
    """Python and the C core refuse the same blob with the same message."""
    o, message = BAD_OPTIONS[case]
    blob = encode_raw(o)
    with pytest.raises(pf.OptionsError, match=message) as info:
        pf.decode(blob)
    try:
        lib = native.load()
    except native.NativeBuildError as e:
        pytest.skip(f"the C++ core cannot be built here: {e}")
    v = lib.validate(blob)
    assert not v.ok and v.message == str(info.value)


def test_core_runs_mul_and_addend_like_numpy() -> None:
    """The two-layer blob in the C core against numpy's broadcast MUL and ADD."""
    try:
        lib = native.load()
    except native.NativeBuildError as e:
        pytest.skip(f"the C++ core cannot be built here: {e}")
    from tflm_patch import ref_ops

    o = _mul_options()
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 6, 6, 8), dtype=np.int8)
    s = rng.integers(-128, 128, 8, dtype=np.int8)
    addend = rng.integers(-128, 128, (1, 6, 6, 8), dtype=np.int8)
    got = lib.run(pf.encode(o), x, [None, s, addend])
    p, q = o.layers[0].p, o.layers[1].p
    mid = ref_ops.mul(x, s.reshape(1, 1, 1, 8), ref_ops.MulParams(p[0], p[4], p[5], p[6], p[1],
                                                                   p[2], p[3]))
    want = ref_ops.add(mid, addend, ref_ops.AddParams(q[0], q[4], q[5], q[6], q[7], q[8], q[9],
                                                      q[10], q[11], q[1], q[2], q[3]))
    assert got.tobytes() == want.tobytes()


# ------------------------------------------------------------------ bad side inputs in TFLM


@functools.cache
def _se_verdicts(data: bytes) -> dict[str, mf.Verdict]:
    kernel, reason = mf.sanitized_kernel()
    if kernel is None:
        pytest.skip(reason)
    base, inputs = mf.se_base(data)
    cases = [mf.Crafted("unmodified", base), *mf.se_crafted_cases(data).values()]
    return {v.case.name: v for v in mf.run_cases(cases, kernel, inputs)}


@pytest.mark.tflm
@pytest.mark.slow
def test_se_base_runs_like_the_reference(se_models: dict[str, bytes]) -> None:
    v = _se_verdicts(se_models["hard_sigmoid"])["unmodified"]
    assert v.outcome == mf.RAN_EQUAL, v


@pytest.mark.tflm
@pytest.mark.slow
@pytest.mark.parametrize("case", mf.SE_CRAFTED_NAMES)
def test_bad_side_input_refused_in_prepare(se_models: dict[str, bytes], case: str) -> None:
    v = _se_verdicts(se_models["hard_sigmoid"])[case]
    assert v.outcome == mf.REFUSED_PREPARE, v
    assert re.search(v.case.expect, v.detail), v.detail
    assert len(v.detail.strip().splitlines()) == 1, v.detail
    assert v.numpy_message and re.search(v.case.expect, v.numpy_message), v.numpy_message
