"""Operators without an arena-table entry: measured once in x86 TFLM, predicted exactly.

Small Keras models (seeded, converted to int8, cached like conftest's fixtures) put
operators the tables of arena_tail/arena_head do not know (SPACE_TO_BATCH_ND,
BATCH_TO_SPACE_ND, TRANSPOSE_CONV, SPLIT, DEPTH_TO_SPACE, ...) next to table operators
(MEAN, MUL, HARD_SWISH, LOGISTIC, CONCATENATION, RESIZE_NEAREST_NEIGHBOR, STRIDED_SLICE,
...), outside and inside the planned stages. The predicted arena equals the smallest arena
measured in x86 TFLM, exact integers, before and after convert.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import _versions

import tflm_patch
from tflm_patch import arena_measure, tflm_runner
from tflm_patch.arena import predict_arena
from tflm_patch.arena_tail import predict_tail
from tflm_patch.model import load_model, model_to_bytes
from tflm_patch.zoo import full_int8, zoo_dir

pytest.importorskip("tflite_micro", reason="the tflite-micro wheel is not installed")
pytestmark = pytest.mark.tflm


def _layers():  # type: ignore[no-untyped-def]
    import tensorflow as tf

    return tf, tf.keras.layers


def _conv(x, c, k=3, s=1, d=1, act="relu"):  # type: ignore[no-untyped-def]
    _, L = _layers()
    return L.Conv2D(c, k, strides=s, padding="same", dilation_rate=d, activation=act)(x)


def _dilated():  # type: ignore[no-untyped-def]
    """Dilated convolutions: SPACE_TO_BATCH_ND / CONV_2D / BATCH_TO_SPACE_ND (a dynamic
    batch size keeps the converter from folding them into a dilated CONV_2D)."""
    tf, L = _layers()
    x = tf.keras.Input((48, 48, 3))
    y = _conv(x, 16)
    y = _conv(y, 16, d=2)
    y = _conv(y, 24, s=2)
    y = _conv(y, 24, d=3)
    y = L.GlobalAveragePooling2D()(y)
    return tf.keras.Model(x, L.Dense(5)(y))


def _se_hswish():  # type: ignore[no-untyped-def]
    """Squeeze-and-excitation (MEAN, 1x1 convs, LOGISTIC, MUL) and HARD_SWISH."""
    tf, L = _layers()
    x = tf.keras.Input((48, 48, 3), batch_size=1)
    y = _conv(x, 16, s=2, act="hard_swish")
    y = _conv(y, 16)
    s = L.GlobalAveragePooling2D(keepdims=True)(y)
    s = L.Conv2D(8, 1, activation="relu")(s)
    s = L.Conv2D(16, 1, activation="sigmoid")(s)
    y = L.Multiply()([y, s])
    y = _conv(y, 24, s=2)
    return tf.keras.Model(x, L.GlobalAveragePooling2D()(y))


def _neck():  # type: ignore[no-untyped-def]
    """Upsampling neck: RESIZE_NEAREST_NEIGHBOR, CONCATENATION, STRIDED_SLICE,
    TRANSPOSE_CONV, PAD, RESHAPE, two outputs."""
    tf, L = _layers()
    x = tf.keras.Input((48, 48, 3), batch_size=1)
    a = _conv(_conv(x, 16), 8, s=2)
    b = _conv(a, 16, s=2)
    u = L.Resizing(24, 24, interpolation="nearest")(b)
    y = L.Concatenate()([a, u])
    y = L.Cropping2D(((1, 3), (2, 2)))(y)
    y = L.Conv2DTranspose(8, 3, strides=2, padding="same")(y)
    y = L.ZeroPadding2D(1)(y)
    y = _conv(y, 4, s=4)
    return tf.keras.Model(x, [L.Reshape((-1,))(y), L.GlobalAveragePooling2D()(b)])


def _shuffle():  # type: ignore[no-untyped-def]
    """SPLIT, DEPTH_TO_SPACE, SPACE_TO_DEPTH, MAXIMUM, SUB, SQUEEZE, PACK."""
    tf, L = _layers()
    x = tf.keras.Input((32, 32, 4), batch_size=1)
    y = _conv(_conv(_conv(x, 16), 16), 16)
    p, q = L.Lambda(lambda t: tf.split(t, 2, axis=3))(y)
    y = L.Maximum()([p, q])
    y = L.Lambda(lambda t: tf.nn.space_to_depth(t, 2))(y)
    y = _conv(y, 16, s=2)
    y = L.Lambda(lambda t: tf.nn.depth_to_space(t, 2))(y)
    y = L.Subtract()([y, L.Lambda(lambda t: t * 0.5)(y)])
    y = _conv(y, 8, s=4)
    m = L.GlobalAveragePooling2D(keepdims=True)(y)
    m = L.Lambda(lambda t: tf.stack([tf.squeeze(t, [1, 2])] * 2, axis=1))(m)
    return tf.keras.Model(x, m)


def _assorted():  # type: ignore[no-untyped-def]
    """PRELU, MIRROR_PAD, RESIZE_BILINEAR, ABS, MINIMUM, SQUARED_DIFFERENCE, REDUCE_MAX,
    GATHER, BATCH_MATMUL (nine kernel allocations), LOG_SOFTMAX, L2_NORMALIZATION,
    ARG_MAX."""
    tf, L = _layers()
    x = tf.keras.Input((16, 16, 4), batch_size=1)
    y = L.Conv2D(8, 3, padding="same")(x)
    y = L.PReLU(shared_axes=[1, 2])(y)
    y = L.Lambda(lambda t: tf.pad(t, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT"))(y)
    y = L.Lambda(lambda t: tf.image.resize(t, (12, 12), method="bilinear"))(y)
    y = L.Lambda(lambda t: tf.abs(t) - tf.minimum(t, 0.3))(y)
    y = L.Lambda(lambda t: tf.math.squared_difference(t, 0.5))(y)
    m = L.Lambda(lambda t: tf.reduce_max(t, axis=[1, 2], keepdims=True))(y)
    y = L.Lambda(lambda t: t[0] - t[1])([y, m])
    g = L.Lambda(lambda t: tf.gather(t, [0, 2, 4, 6], axis=3))(y)
    b = L.Lambda(lambda t: tf.matmul(tf.reshape(t, (1, 144, 4)), tf.reshape(t, (1, 144, 4)),
                                     transpose_a=True))(g)
    a = L.Lambda(lambda t: tf.argmax(t, axis=3, output_type=tf.int32))(y)
    s = L.Lambda(lambda t: tf.nn.log_softmax(tf.reshape(t, (1, -1))))(b)
    return tf.keras.Model(x, [L.Lambda(lambda t: tf.math.l2_normalize(t, axis=-1))(s), a])


BUILDERS: dict[str, Callable[[], object]] = {
    "dilated": _dilated, "se_hswish": _se_hswish, "neck": _neck, "shuffle": _shuffle,
    "assorted": _assorted}
# operators of each model that the tables do not know (measured)
MEASURED = {
    "dilated": {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"},
    "se_hswish": set(),
    "neck": {"TRANSPOSE_CONV"},
    "shuffle": {"SPLIT", "MAXIMUM", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE"},
    "assorted": {"PRELU", "MIRROR_PAD", "RESIZE_BILINEAR", "ABS", "MINIMUM",
                 "SQUARED_DIFFERENCE", "REDUCE_MAX", "GATHER", "BATCH_MATMUL", "LOG_SOFTMAX",
                 "L2_NORMALIZATION", "ARG_MAX"},
}


def _convert(name: str) -> bytes:
    tf, _ = _layers()
    tf.keras.utils.set_random_seed(3)
    model = BUILDERS[name]()
    shape = model.input_shape[1:]  # type: ignore[attr-defined]
    rng = np.random.default_rng(3)

    def representative():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, *shape)).astype(np.float32)]

    return full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative)


def _model_bytes(name: str) -> bytes:
    """The converted model, cached by the code that makes it and the TensorFlow version."""
    code = "".join(inspect.getsource(f) for f in (_conv, _convert, BUILDERS[name]))
    key = hashlib.sha256(f"{name}\0{code}\0{_versions()}".encode()).hexdigest()[:24]
    path = zoo_dir() / "test_fixtures" / f"anyop_{name}-{key}.tflite"
    if path.is_file():
        return path.read_bytes()
    data = _convert(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


@pytest.fixture(scope="session")
def anyop_models() -> dict[str, bytes]:
    try:
        return {name: _model_bytes(name) for name in BUILDERS}
    except ImportError as e:  # TensorFlow is imported only when a model must be made
        pytest.skip(f"TensorFlow makes the test models and cannot be imported: {e}")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_models_have_the_operators(anyop_models: dict[str, bytes], name: str) -> None:
    model = load_model(anyop_models[name])
    assert {op.name for op in model.operators
            if arena_measure.needs_measurement(op)} == MEASURED[name]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_predicted_arena_equals_measured(anyop_models: dict[str, bytes], name: str) -> None:
    model = load_model(anyop_models[name])
    predicted = predict_arena(model)
    measured = tflm_runner.smallest_arena(model.raw)
    assert (predicted.total, predicted.head.size, predicted.tail.total) == (
        measured.smallest, measured.report.head, measured.report.tail)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_tail_counts_equal_recording_allocator(anyop_models: dict[str, bytes],
                                               name: str) -> None:
    model = load_model(anyop_models[name])
    arena_measure.ensure_measured(model)  # what predict_arena does first
    tail = predict_tail(model)
    report = tflm_runner.allocation_report(model.raw)
    assert tail.total == report.tail
    for rec in report.records:
        item = tail.item(rec.name)
        assert item is not None, rec.name
        assert (item.aligned_size, item.count) == (rec.used_bytes, rec.count), rec.name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_patched_arena_equals_measured(anyop_models: dict[str, bytes], name: str) -> None:
    """convert plans around the measured operators; the patched model's arena (plain
    TFLM when no plan pays) is predicted exactly and never larger than the original's."""
    original = load_model(anyop_models[name])
    result = tflm_patch.plan(original.raw)
    patched = load_model(result.patched)
    predicted = predict_arena(patched).total
    if patched.raw != original.raw and not _kernel_available():
        pytest.skip("the PATCH_EXEC kernel cannot be built here (TFLM headers not "
                    "configured): the patched arena cannot be measured")
    measured = tflm_runner.smallest_arena(patched.raw, **_kernel_args(patched.raw,
                                                                      original.raw))
    assert predicted == measured.smallest == result.arena_after
    assert result.arena_after <= result.arena_before


def _kernel_available() -> bool:
    from tflm_patch import tflm_build

    try:
        tflm_build.build_kernel()
    except tflm_build.TflmBuildUnavailable:
        return False
    return True


def _kernel_args(patched: bytes, original: bytes) -> dict[str, Any]:
    if patched == original:
        return {}
    from tflm_patch import tflm_build

    return dict(tflm_build.build_kernel().runner_kwargs())


def test_measurement_is_cached_and_batched(anyop_models: dict[str, bytes],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Once measured, a fresh Model of the same bytes starts no TFLM child process."""
    predict_arena(load_model(anyop_models["dilated"]))

    def refuse(*_args: object, **_kw: object) -> object:
        raise AssertionError("measured again")

    monkeypatch.setattr(tflm_runner, "allocation_reports", refuse)
    monkeypatch.setattr(arena_measure, "_MEMORY", {})
    predict_arena(load_model(anyop_models["dilated"]))


def test_table_models_start_no_measurement(tiny_int8_bytes: bytes,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kw: object) -> object:
        raise AssertionError("a table-only model was measured")

    monkeypatch.setattr(tflm_runner, "allocation_reports", refuse)
    model = load_model(tiny_int8_bytes)
    assert not any(arena_measure.needs_measurement(op) for op in model.operators)
    assert predict_arena(model).total > 0


def test_operator_the_wheel_lacks_is_unpredicted_but_planned(
        anyop_models: dict[str, bytes]) -> None:
    """An operator x86 TFLM does not register (here BATCH_TO_SPACE_ND's code changed to
    TILE) makes the prediction unavailable with TFLM's reason; the planner still plans,
    comparing arenas without that operator's own allocations, and says so."""
    from tflm_patch.model import builtin_op_codes

    model = load_model(anyop_models["dilated"])
    obj = model.obj
    codes = builtin_op_codes()
    for code in obj.operatorCodes:
        if max(int(code.builtinCode), int(code.deprecatedBuiltinCode)) == \
                codes["BATCH_TO_SPACE_ND"]:
            code.builtinCode = code.deprecatedBuiltinCode = codes["TILE"]
    broken = load_model(model_to_bytes(obj))
    prediction = predict_arena(broken)
    assert prediction.unpredicted
    assert all("Didn't find op for builtin opcode 'TILE'" in line
               for line in prediction.unpredicted)
    result = tflm_patch.plan(broken.raw)
    assert "TILE" in result.reason


def test_operators_doc_is_up_to_date() -> None:
    """docs/operators.md is what tools/gen_operators_doc.py makes now (STAGE_OPS, the
    arena tables and the wheel's operators)."""
    import gen_operators_doc

    text = gen_operators_doc.render(gen_operators_doc.registered_builtins())
    assert gen_operators_doc.DOC.read_text() == text, \
        "docs/operators.md is out of date: run python tools/gen_operators_doc.py"


def test_plan_names_where_stages_stop(anyop_models: dict[str, bytes], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`plan` prints one line per distinct reason an operator stops the stages (and
    --json lists them); the measured SPACE_TO_BATCH_ND operators are among them."""
    import json

    from tflm_patch.cli import main
    from tflm_patch.stage import stage_stops

    path = tmp_path / "dilated.tflite"
    path.write_bytes(anyop_models["dilated"])
    model = load_model(path)
    stops = stage_stops(model)
    s2b = {op.index for op in model.operators if op.name == "SPACE_TO_BATCH_ND"}
    assert len(s2b) == 2
    assert any(s2b <= set(s.ops) for s in stops)
    assert main(["plan", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("stages stop at: ")] == \
        [s.line() for s in stops]
    assert main(["--json", "plan", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stage_stops"] == [s.to_json() for s in stops]
