"""Float (and uint8) interfaces: the interface pass, `--int8-io` in plan/convert and the API,
`validate` and `export` of float-interface models, and models with several inputs and
outputs. The test models are made here with TensorFlow (default float interface, int8
inside), cached like the other fixtures."""

from __future__ import annotations

import copy
import json
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import _cached_model
from embedded_helpers import WARNINGS, compile_cc, compiler

import tflm_patch
from tflm_patch import export
from tflm_patch.cli import main
from tflm_patch.interface import INTERFACE_METADATA, interface_metadata, strip_float_interface
from tflm_patch.model import Model, load_model, model_to_bytes
from tflm_patch.rewrite import plan_metadata
from tflm_patch.schema import schema
from tflm_patch.validate import Executor, compare, dequantized, quantized, random_inputs

MEMORY_PLAN = ("--objective", "memory", "--min-saving", "0")
INNER_OPS = ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]


# ----------------------------------------------------------------------------- test models


def _float_io_keras():  # type: ignore[no-untyped-def]
    import tensorflow as tf

    tf.keras.utils.set_random_seed(11)
    inp = tf.keras.Input((32, 32, 3), batch_size=1, name="image")
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = tf.keras.layers.Conv2D(8, 1, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, tf.keras.layers.Dense(4)(x))


def _convert_interface(model, inputs, io_type=None) -> bytes:  # type: ignore[no-untyped-def]
    """int8 kernels inside; the interface TFLiteConverter gives by default (float32), or
    `io_type` (e.g. tf.uint8)."""
    import tensorflow as tf

    rng = np.random.default_rng(11)

    def representative():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield {name: rng.uniform(-1, 1, (1, *s)).astype(np.float32)
                   for name, s in inputs.items()}

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io_type is not None:
        conv.inference_input_type = io_type
        conv.inference_output_type = io_type
    return bytes(conv.convert())


def _make_float_io_model() -> bytes:
    return _convert_interface(_float_io_keras(), {"image": (32, 32, 3)})


def _make_uint8_io_model() -> bytes:
    import tensorflow as tf

    return _convert_interface(_float_io_keras(), {"image": (32, 32, 3)}, tf.uint8)


def _make_multi_io_model() -> bytes:
    """2 float inputs, 3 float outputs (a detection-head-like network)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(12)
    image = tf.keras.Input((24, 24, 3), batch_size=1, name="image")
    skip = tf.keras.Input((12, 12, 8), batch_size=1, name="skip")
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(image)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = tf.keras.layers.Add()([x, skip])
    big = tf.keras.layers.Conv2D(6, 1, name="head_big")(x)
    y = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    small = tf.keras.layers.Conv2D(6, 1, name="head_small")(y)
    score = tf.keras.layers.Dense(2, name="score")(tf.keras.layers.GlobalAveragePooling2D()(y))
    model = tf.keras.Model([image, skip], [big, small, score])
    return _convert_interface(model, {"image": (24, 24, 3), "skip": (12, 12, 8)})


@pytest.fixture(scope="session")
def float_io() -> Model:
    return load_model(_cached_model(_make_float_io_model))


@pytest.fixture(scope="session")
def uint8_io() -> Model:
    return load_model(_cached_model(_make_uint8_io_model))


@pytest.fixture(scope="session")
def multi_io() -> Model:
    return load_model(_cached_model(_make_multi_io_model))


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _quant(model: Model, t: int) -> tuple[float, int]:
    q = model.tensors[t].quantization
    assert q is not None
    return q.scale[0], q.zero_point[0]


def _numpy_executor() -> Executor:
    return Executor(None, "forced for the test")


def _tflm_executor() -> Executor:
    from tflm_patch import tflm_build

    kernel, reason = tflm_build.kernel_or_reason()
    if kernel is None:
        pytest.skip(f"the C++ kernel cannot be built here: {reason}")
    return Executor(kernel)


# ----------------------------------------------------------------------------- the pass


def test_float_io_model_is_what_the_converter_gives(float_io: Model) -> None:
    assert [op.name for op in float_io.operators] == ["QUANTIZE", *INNER_OPS, "DEQUANTIZE"]
    assert [float_io.tensors[t].dtype for t in (*float_io.inputs, *float_io.outputs)] == \
        ["float32", "float32"]


def test_strip_gives_the_expected_structure(float_io: Model) -> None:
    quant, deq = float_io.operators[0], float_io.operators[-1]
    result = strip_float_interface(float_io.raw)
    m = load_model(result.model)
    assert [op.name for op in m.operators] == INNER_OPS
    assert len(m.tensors) == len(float_io.tensors) - 2
    assert [m.tensors[t].name for t in m.inputs] == [float_io.tensors[quant.outputs[0]].name]
    assert [m.tensors[t].name for t in m.outputs] == [float_io.tensors[deq.inputs[0]].name]
    assert [m.tensors[t].dtype for t in (*m.inputs, *m.outputs)] == ["int8", "int8"]
    assert m.inputs == (m.operators[0].inputs[0],)
    assert m.outputs == (m.operators[-1].outputs[0],)
    assert result.removed_ops == (0, len(float_io.operators) - 1)
    assert result.kept == ()


def test_strip_records_the_removed_quantization(float_io: Model) -> None:
    quant, deq = float_io.operators[0], float_io.operators[-1]
    result = strip_float_interface(float_io)
    s_in, z_in = _quant(float_io, quant.outputs[0])
    s_out, z_out = _quant(float_io, deq.inputs[0])
    name_in = float_io.tensors[float_io.inputs[0]].name
    name_out = float_io.tensors[float_io.outputs[0]].name
    expected = [
        {"io": "input", "index": 0, "name": name_in, "shape": [1, 32, 32, 3],
         "dtype": "float32", "scale": s_in, "zero_point": z_in},
        {"io": "output", "index": 0, "name": name_out, "shape": [1, 4], "dtype": "float32",
         "scale": s_out, "zero_point": z_out},
    ]
    assert result.to_json() == expected
    stripped = load_model(result.model)
    assert json.loads(stripped.metadata(INTERFACE_METADATA) or b"") == expected
    assert [r.to_json() for r in interface_metadata(stripped)] == expected


def test_strip_of_the_signature_follows_the_int8_tensors(float_io: Model) -> None:
    if not float_io.obj.signatureDefs:
        pytest.skip("this TensorFlow writes no signature")
    m = load_model(strip_float_interface(float_io).model)
    sig = m.obj.signatureDefs[0]
    assert [t.tensorIndex for t in sig.inputs] == list(m.inputs)
    assert [t.tensorIndex for t in sig.outputs] == list(m.outputs)


def test_nothing_to_strip_returns_the_same_bytes(tiny_int8_bytes: bytes,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tflm_patch.interface"):
        result = strip_float_interface(tiny_int8_bytes)
    assert result.model == tiny_int8_bytes
    assert (result.changed, result.removed, result.kept) == (False, (), ())
    assert "nothing to strip; the model is unchanged" in caplog.text


def _with_requantize(model: Model) -> bytes:
    """The model with an int8 -> int8 QUANTIZE (requantization to twice the scale) between
    its first and second operator: a QUANTIZE that is not at the interface."""
    fb = schema()
    obj = copy.deepcopy(model.obj)
    sg = obj.subgraphs[0]
    first_out = sg.operators[1].outputs[0]
    t = copy.deepcopy(sg.tensors[first_out])
    t.name = "requantized"
    t.quantization.scale = [float(t.quantization.scale[0]) * 2]
    sg.tensors.append(t)
    new = len(sg.tensors) - 1
    op = fb.OperatorT()
    op.opcodeIndex = sg.operators[0].opcodeIndex  # QUANTIZE
    op.inputs, op.outputs = [first_out], [new]
    sg.operators[2].inputs = [new if int(i) == first_out else int(i)
                              for i in sg.operators[2].inputs]
    sg.operators = [*sg.operators[:2], op, *sg.operators[2:]]
    return model_to_bytes(obj)


def test_quantize_inside_the_model_stays(float_io: Model) -> None:
    model = load_model(_with_requantize(float_io))
    assert [op.name for op in model.operators] == \
        ["QUANTIZE", "CONV_2D", "QUANTIZE", *INNER_OPS[1:], "DEQUANTIZE"]
    stripped = load_model(strip_float_interface(model).model)
    assert [op.name for op in stripped.operators] == ["CONV_2D", "QUANTIZE", *INNER_OPS[1:]]
    inputs = random_inputs(model, 4)
    want = compare(model, model, inputs, "x", _numpy_executor())
    got = compare(stripped, stripped, [quantized(model, model.inputs[0], inputs[0])], "x",
                  _numpy_executor())
    dq = got.original[0].astype(np.float32) - np.float32(_quant(stripped, stripped.outputs[0])[1])
    expected = dq * np.float32(_quant(stripped, stripped.outputs[0])[0])
    assert want.original[0].tobytes() == expected.astype(np.float32).tobytes()


def test_float_input_that_is_also_an_output_keeps_its_quantize(float_io: Model) -> None:
    obj = copy.deepcopy(float_io.obj)
    obj.subgraphs[0].outputs = [*float_io.outputs, float_io.inputs[0]]
    result = strip_float_interface(model_to_bytes(obj))
    m = load_model(result.model)
    assert [op.name for op in m.operators] == ["QUANTIZE", *INNER_OPS]
    assert [r.io for r in result.removed] == ["output"]
    assert result.kept == (f"input 0 (float32 tensor {float_io.inputs[0]} "
                           f"'{float_io.tensors[float_io.inputs[0]].name}') keeps its "
                           "conversion: it is also a model output",
                           f"output 1 (float32 tensor {float_io.inputs[0]} "
                           f"'{float_io.tensors[float_io.inputs[0]].name}') keeps its "
                           "conversion: it is not written by a DEQUANTIZE")


def test_uint8_interface_is_stripped(uint8_io: Model) -> None:
    assert [uint8_io.tensors[t].dtype for t in uint8_io.inputs] == ["uint8"]
    result = strip_float_interface(uint8_io)
    m = load_model(result.model)
    assert [op.name for op in m.operators] == INNER_OPS
    r_in = result.removed[0]
    s_u, z_u = _quant(uint8_io, uint8_io.inputs[0])
    assert (r_in.dtype, r_in.interface_scale, r_in.interface_zero_point) == ("uint8", s_u, z_u)
    assert (r_in.scale, r_in.zero_point) == _quant(m, m.inputs[0])


def test_multi_io_strip(multi_io: Model) -> None:
    assert (len(multi_io.inputs), len(multi_io.outputs)) == (2, 3)
    result = strip_float_interface(multi_io)
    m = load_model(result.model)
    assert [(r.io, r.index) for r in result.removed] == \
        [("input", 0), ("input", 1), ("output", 0), ("output", 1), ("output", 2)]
    assert [m.tensors[t].dtype for t in (*m.inputs, *m.outputs)] == ["int8"] * 5
    assert [m.tensors[t].shape for t in m.inputs] == \
        [multi_io.tensors[t].shape for t in multi_io.inputs]
    assert [op.name for op in m.operators if op.name in ("QUANTIZE", "DEQUANTIZE")] == []


def test_float_inputs_are_quantized_exactly(float_io: Model) -> None:
    t = float_io.inputs[0]
    q = np.arange(-128, 128, dtype=np.int8)
    assert quantized(float_io, t, dequantized(float_io, t, q)).tobytes() == q.tobytes()


# ----------------------------------------------------------------------------- plan/convert


def test_api_int8_io_plan(float_io: Model) -> None:
    result = tflm_patch.plan(float_io.raw, int8_io=True, objective="memory", min_saving=0.0)
    assert result.changed
    patched = load_model(result.patched)
    meta = plan_metadata(patched)
    assert meta is not None and result.plan is not None
    assert meta["interface"] == strip_float_interface(float_io).to_json() == \
        result.plan["interface"]
    assert [patched.tensors[t].dtype for t in (*patched.inputs, *patched.outputs)] == \
        ["int8", "int8"]


def test_api_without_int8_io_keeps_the_interface(float_io: Model) -> None:
    patched = load_model(tflm_patch.convert(float_io.raw, objective="memory", min_saving=0.0))
    assert [patched.tensors[t].dtype for t in (*patched.inputs, *patched.outputs)] == \
        ["float32", "float32"]
    meta = plan_metadata(patched)
    assert meta is not None and "interface" not in meta


def _plan_json(capsys: pytest.CaptureFixture[str], src: str, *more: str) -> dict:  # type: ignore[type-arg]
    code, out, err = _run(capsys, "plan", src, *MEMORY_PLAN, "--json", *more)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_cli_hint_names_the_int8_io_arena(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          float_io: Model) -> None:
    src = _write(tmp_path, "f.tflite", float_io.raw)
    plain = _plan_json(capsys, src)
    stripped = _plan_json(capsys, src, "--int8-io")
    arena = plain["chosen"]["predicted"]["arena_after"]
    k = stripped["chosen"]["predicted"]["arena_after"]
    n = 32 * 32 * 3 * 4 + 4 * 4
    assert plain["hint"] == {"float_io_bytes": n, "arena": arena, "int8_io_arena": k}
    assert k < arena
    code, out, _ = _run(capsys, "plan", src, *MEMORY_PLAN)
    assert code == 0
    hints = [line for line in out.splitlines() if line.startswith("hint:")]
    assert hints == [f"hint: the float input/outputs take {n:,} B of the {arena:,} B arena; "
                     f"--int8-io would give {k:,} B"]


def test_cli_no_hint_for_int8_models(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     tiny_int8_bytes: bytes) -> None:
    src = _write(tmp_path, "m.tflite", tiny_int8_bytes)
    assert _plan_json(capsys, src)["hint"] is None
    code, out, _ = _run(capsys, "convert", src, "-o", str(tmp_path / "p.tflite"), *MEMORY_PLAN)
    assert code == 0 and len(out.splitlines()) == 1


def test_cli_int8_io_on_an_int8_model_says_so(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path, tiny_int8_bytes: bytes) -> None:
    src = _write(tmp_path, "m.tflite", tiny_int8_bytes)
    out_path = tmp_path / "p.tflite"
    code, out, err = _run(capsys, "convert", src, "-o", str(out_path), "--int8-io",
                          *MEMORY_PLAN)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ("int8 I/O: nothing to strip, the model is unchanged (the inputs and "
                        "outputs are not float32 or uint8)")
    assert len(lines) == 2 and "-> PATCH_EXEC" in lines[1]
    meta = plan_metadata(load_model(out_path))
    assert meta is not None and "interface" not in meta


def test_cli_convert_int8_io_writes_the_interface(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path, float_io: Model) -> None:
    src = _write(tmp_path, "f.tflite", float_io.raw)
    out_path = tmp_path / "p.tflite"
    code, out, err = _run(capsys, "convert", src, "-o", str(out_path), "--int8-io",
                          *MEMORY_PLAN)
    assert code == 0, err
    removed = strip_float_interface(float_io).removed
    assert out.splitlines()[0] == (
        f"int8 I/O: removed the conversion of input 0 float32 (scale {removed[0].scale:.6g}, "
        f"zero point {removed[0].zero_point}), output 0 float32 (scale "
        f"{removed[1].scale:.6g}, zero point {removed[1].zero_point})")
    patched = load_model(out_path)
    meta = plan_metadata(patched)
    assert meta is not None and meta["interface"] == [r.to_json() for r in removed]
    assert [r.to_json() for r in interface_metadata(patched)] == meta["interface"]


def test_cli_split_op_counts_in_the_given_model(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path, float_io: Model) -> None:
    src = _write(tmp_path, "f.tflite", float_io.raw)
    doc = _plan_json(capsys, src, "--int8-io", "--split-op", "2", "--single-stage")
    assert doc["chosen"]["stage"]["last_op"] == 1  # operator 2 of the given model
    code, _, err = _run(capsys, "plan", src, "--int8-io", "--split-op", "0")
    assert code == 2 and "--split-op 0 is an interface operator --int8-io removes" in err


# ----------------------------------------------------------------------------- validate


def _convert(capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Model, name: str,
             *more: str) -> tuple[str, str]:
    src = _write(tmp_path, f"{name}.tflite", model.raw)
    out_path = str(tmp_path / f"{name}_p.tflite")
    code, out, err = _run(capsys, "convert", src, "-o", out_path, *MEMORY_PLAN, *more)
    assert code == 0 and "PATCH_EXEC" in out, out + err
    return src, out_path


@pytest.mark.first_case_quick
@pytest.mark.parametrize("executor", ["tflm", "numpy"])
def test_int8_io_patched_is_bit_identical_with_the_stripped_original(
        executor: str, float_io: Model) -> None:
    ex = _tflm_executor() if executor == "tflm" else _numpy_executor()
    patched = load_model(tflm_patch.convert(float_io.raw, int8_io=True, objective="memory",
                                            min_saving=0.0))
    from tflm_patch.validate import matched_original

    original, line = matched_original(float_io, patched)
    assert line is not None and "stripped" in line
    assert [op.name for op in original.operators] == INNER_OPS
    for seed in range(3):
        c = compare(original, patched, random_inputs(original, seed), f"seed {seed}", ex)
        assert c.identical and c.executor == ex.description


@pytest.mark.first_case_quick
@pytest.mark.parametrize("executor", ["tflm", "numpy"])
def test_float_interface_patched_is_bit_identical(executor: str, multi_io: Model) -> None:
    ex = _tflm_executor() if executor == "tflm" else _numpy_executor()
    patched = load_model(tflm_patch.convert(multi_io.raw, objective="memory", min_saving=0.0))
    assert any(op.name == "PATCH_EXEC" for op in patched.operators)
    inputs = random_inputs(multi_io, 5)
    assert [a.dtype.name for a in inputs] == ["float32", "float32"]
    c = compare(multi_io, patched, inputs, "seed 5", ex)
    assert c.identical and len(c.patched) == 3
    assert [a.dtype.name for a in c.patched] == ["float32"] * 3


def test_api_validate_int8_io_against_the_float_original(float_io: Model) -> None:
    patched = tflm_patch.convert(float_io.raw, int8_io=True, objective="memory",
                                 min_saving=0.0)
    c = tflm_patch.validate(float_io.raw, patched, seed=3)
    assert c.identical and [a.dtype.name for a in c.patched] == ["int8"]


def test_cli_validate_int8_io_against_the_float_original(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, float_io: Model) -> None:
    src, patched = _convert(capsys, tmp_path, float_io, "f", "--int8-io")
    npy = tmp_path / "x.npy"
    x = dequantized(float_io, float_io.inputs[0],
                    np.random.default_rng(9).integers(-128, 128, (1, 32, 32, 3), np.int8))
    np.save(npy, x)
    code, out, err = _run(capsys, "validate", src, patched, "--input", str(npy),
                          "--random", "2")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == ("original: its float interface stripped as --int8-io does (2 "
                        "conversions), compared with the int8 I/O model")
    assert lines[1].startswith("verdict: PASS (3/3 inputs bit-identical, 1 output(s) each")


@pytest.mark.slow
def test_cli_validate_uint8_int8_io(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   uint8_io: Model) -> None:
    src, patched = _convert(capsys, tmp_path, uint8_io, "u", "--int8-io")
    code, out, err = _run(capsys, "validate", src, patched, "--random", "2")
    assert code == 0, out + err
    assert out.splitlines()[1].startswith("verdict: PASS (2/2 inputs bit-identical")
    code, out, _ = _run(capsys, "plan", src, *MEMORY_PLAN)
    assert code == 0 and "hint: the uint8 input/outputs take 3,076 B of the" in out


@pytest.mark.slow
def test_cli_validate_float_interface_with_npy(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path, float_io: Model) -> None:
    src, patched = _convert(capsys, tmp_path, float_io, "f")
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((1, 32, 32, 3), np.float32))
    code, out, err = _run(capsys, "validate", src, patched, "--input", str(npy))
    assert code == 0 and out.startswith("verdict: PASS (1/1"), out + err
    np.save(npy, np.zeros((1, 32, 32, 3), np.int8))
    code, _, err = _run(capsys, "validate", src, patched, "--input", str(npy))
    assert code == 2 and "int8 data; the model input is float32" in err


@pytest.mark.slow
def test_cli_validate_multi_io(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                               multi_io: Model) -> None:
    src, patched = _convert(capsys, tmp_path, multi_io, "m", "--int8-io")
    code, out, err = _run(capsys, "validate", src, patched, "--random", "2", "--json")
    assert code == 0, err
    doc = json.loads(out[out.index("{"):])
    assert doc["pass"] and [c["outputs"] for c in doc["cases"]] == [3, 3]
    assert doc["original_interface_stripped"] is True


def test_analyze_multi_io_float_model(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      multi_io: Model) -> None:
    src = _write(tmp_path, "m.tflite", multi_io.raw)
    code, out, err = _run(capsys, "analyze", src, "--no-measure")
    assert code == 0 and "TFLM arena predicted:" in out, out + err


# ----------------------------------------------------------------------------- export


def _settings(model: Model) -> str:
    files = {f.name: f.text for f in export.export_model(model.raw).files}
    return files["model_settings.h"]


def test_export_settings_of_an_int8_io_model(float_io: Model) -> None:
    patched = load_model(tflm_patch.convert(float_io.raw, int8_io=True, objective="memory",
                                            min_saving=0.0))
    text = _settings(patched)
    s_in, z_in = _quant(patched, patched.inputs[0])
    s_out, z_out = _quant(patched, patched.outputs[0])
    for line in ("constexpr int kNumInputs = 1;", "constexpr int kNumOutputs = 1;",
                 'constexpr char kInputType[] = "int8";', "constexpr int kInputRank = 4;",
                 "constexpr int kInputShape[] = {1, 32, 32, 3};",
                 "constexpr unsigned int kInputBytes = 3072;",
                 f"constexpr float kInputScale = {export._c_float(s_in)};",
                 f"constexpr int kInputZeroPoint = {z_in};",
                 "// It was float32 before `--int8-io` removed its conversion; quantize data with",
                 'constexpr char kOutputType[] = "int8";',
                 "constexpr int kOutputShape[] = {1, 4};",
                 f"constexpr float kOutputScale = {export._c_float(s_out)};",
                 f"constexpr int kOutputZeroPoint = {z_out};"):
        assert line in text.splitlines(), line
    literal = re.search(r"kInputScale = (\S+)f;", text)
    assert literal is not None and np.float32(float(literal.group(1))) == np.float32(s_in)


def test_export_settings_list_every_input_and_output(multi_io: Model) -> None:
    text = _settings(multi_io)
    lines = text.splitlines()
    assert "constexpr int kNumInputs = 2;" in lines and "constexpr int kNumOutputs = 3;" in lines
    for prefix, t in (("kInput", multi_io.inputs[0]), ("kInput1", multi_io.inputs[1]),
                      ("kOutput", multi_io.outputs[0]), ("kOutput1", multi_io.outputs[1]),
                      ("kOutput2", multi_io.outputs[2])):
        info = multi_io.tensors[t]
        shape = ", ".join(str(d) for d in info.shape)
        assert f"constexpr int {prefix}Shape[] = {{{shape}}};" in lines
        assert f"constexpr unsigned int {prefix}Bytes = {info.nbytes};" in lines
        assert f'constexpr char {prefix}Type[] = "float32";' in lines
        assert f"constexpr float {prefix}Scale = 0.e+00f;" in lines
    s, z = _quant(multi_io, multi_io.operators[0].outputs[0])
    assert f"// The model quantizes it to int8 (scale {export._c_float(s)}, zero point {z});" \
        in lines


_SETTINGS_MAIN = """\
#include <stdio.h>

#include "model_settings.h"
#include "test_image.h"

int main() {
  printf("%d %d %s %s %u %u\\n", kNumInputs, kNumOutputs, kInputType, kOutput2Type,
         kInput1Bytes, kTestImageBytes);
  return g_test_image[0] == 12345.0f ? 1 : 0;
}
"""


def test_export_of_a_multi_io_float_model_compiles(tmp_path: Path, multi_io: Model) -> None:
    tool = compiler("c++")
    image = export.seeded_image(multi_io, 1)
    assert image.dtype == "float32"
    result = export.export_model(multi_io.raw, image=image)
    for f in result.files:
        (tmp_path / f.name).write_text(f.text)
    (tmp_path / "main.cc").write_text(_SETTINGS_MAIN)
    exe = tmp_path / "main"
    compile_cc([tool, "-std=c++14", *WARNINGS, str(tmp_path / "test_image.cc"),
                str(tmp_path / "main.cc"), "-o", str(exe)])
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    first, second = (multi_io.tensors[t].nbytes for t in multi_io.inputs)
    assert out.split() == ["2", "3", "float32", "float32", str(second), str(first)]


def test_float_test_image_quantizes_back_to_the_int8_image(multi_io: Model) -> None:
    image = export.seeded_image(multi_io, 1)
    x = np.frombuffer(image.data, "<f4").reshape(multi_io.tensors[multi_io.inputs[0]].shape)
    q = quantized(multi_io, multi_io.inputs[0], x)
    assert dequantized(multi_io, multi_io.inputs[0], q).tobytes() == x.tobytes()


def test_cli_export_of_a_float_interface_model(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path, float_io: Model) -> None:
    src = _write(tmp_path, "f.tflite", float_io.raw)
    code, out, err = _run(capsys, "export", src, "--arduino", str(tmp_path / "a"))
    assert code == 0, err
    assert out.splitlines()[-1] == ("note: input 0 is float32; the example sketch feeds int8 "
                                    "(`tflm-patch convert --int8-io` gives an int8 input)")
    h = (tmp_path / "a" / "test_image.h").read_text()
    assert "alignas(16) extern const float g_test_image[];" in h
    assert "constexpr unsigned int kTestImageBytes = 12288;" in h
