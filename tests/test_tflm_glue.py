"""The C++ PATCH_EXEC kernel inside the x86 TFLM interpreter (the tflite-micro wheel).

Patched models run whole in TFLM, bit-identical with the original model; the measured
smallest arena equals the arena model's prediction; a malformed options blob or
operator makes interpreter creation fail with a message naming the problem (the runner's
child process would turn a crash into "TFLM crashed", so a crash is visible). Needs the
TFLM headers (TFLM_ROOT, TFLM_EXTRA_INCLUDES; DEVELOPERS.md) and the core; skips with
the reason otherwise. The compile-only check against February 2023 TFLM (the
Arduino_TensorFlowLite API) runs when TFLM_2023_ROOT and TFLM_2023_EXTRA_INCLUDES are set.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import model_fuzz_cases as mf
import numpy as np
import pytest
from conftest import shared_file, shared_model_path
from native_fuzz import with_version2
from test_patch_ref import ZOO_CASES

from tflm_patch import patch_format as pf
from tflm_patch import tflm_build
from tflm_patch.arena import predict_arena
from tflm_patch.dilate import fold_model
from tflm_patch.errors import TflmRunError
from tflm_patch.int8_io import prepare
from tflm_patch.model import Model, load_model, model_from_object, model_to_bytes
from tflm_patch.planner import PlanRequest, patched_model_object, plan
from tflm_patch.rewrite import CUSTOM_CODE, plan_metadata, replace_stage, to_checked_bytes
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import build_stage
from tflm_patch.tflm_runner import run_all_tensors, run_model, smallest_arena
from tflm_patch.validate import TFLM_KERNEL, Executor, compare, random_inputs
from tflm_patch.zoo import ZOO, ensure_model

pytestmark = pytest.mark.tflm

GLUE_FLAGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-fno-exceptions",
              "-DTF_LITE_STATIC_MEMORY=1"]


def _headers_missing() -> str:
    missing = [v for v in (tflm_build.ENV_ROOT, tflm_build.ENV_EXTRA) if not os.environ.get(v)]
    if missing:
        return (f"{' and '.join(missing)} not set: the C++ PATCH_EXEC kernel needs the TFLM "
                "headers (see DEVELOPERS.md)")
    return ""


@cache
def _kernel() -> tflm_build.KernelLibrary:
    return tflm_build.build_kernel()


@pytest.fixture(scope="session")
def kernel() -> tflm_build.KernelLibrary:
    reason = _headers_missing()
    if reason:
        pytest.skip(reason)
    if not tflm_build.CORE_SOURCE.is_file():
        pytest.skip(f"{tflm_build.CORE_SOURCE.relative_to(tflm_build.SOURCE_ROOT)} does not "
                    "exist yet")
    return _kernel()


def _run(kernel: tflm_build.KernelLibrary, data: bytes, inputs: list[np.ndarray]
         ) -> list[np.ndarray]:
    return run_model(data, inputs, **kernel.runner_kwargs())


@cache
def _zoo(name: str) -> Model:
    """A zoo model as the tests run it: its float interface removed (what `--int8-io`
    does; the int8 models are unchanged)."""
    return prepare(load_model(ensure_model(name)), int8_io=True).model


def _model(name: str) -> Model:
    """zoo:NAME, or a model of ../shared/models (skips when absent)."""
    return _zoo(name[4:]) if name.startswith("zoo:") else load_model(shared_model_path(name))


@cache
def _default_plan(name: str) -> tuple[bytes, int]:
    """The planner's default patched model and its predicted arena; where the default
    (latency) objective leaves the model unchanged, the memory objective's plan, so that
    every model runs PATCH_EXEC."""
    model = fold_model(_model(name))  # as convert plans it: dilated convolutions folded
    result = plan(model)
    if result.chosen is None:
        result = plan(model, PlanRequest(objective="memory"))
    assert result.chosen is not None, result.message
    return to_checked_bytes(patched_model_object(model, result)), result.chosen.arena


# ------------------------------------------------------------------ build, no kernel needed


def test_build_needs_the_headers() -> None:
    with pytest.raises(tflm_build.TflmBuildUnavailable,
                       match="TFLM_ROOT and TFLM_EXTRA_INCLUDES not set"):
        tflm_build.config_from_env({})


def test_build_refuses_a_directory_that_is_not_tflm(tmp_path: Path) -> None:
    env = {tflm_build.ENV_ROOT: str(tmp_path), tflm_build.ENV_EXTRA: str(tmp_path)}
    with pytest.raises(tflm_build.TflmBuildUnavailable, match="not a tflite-micro source tree"):
        tflm_build.config_from_env(env)


def test_numpy_path_says_why() -> None:
    ex = Executor(None, "TFLM_ROOT not set")
    assert ex.description == "numpy reference, split at PATCH_EXEC (TFLM_ROOT not set)"


def test_core_and_glue_are_clang_formatted() -> None:
    tool = shutil.which("clang-format")
    if tool is None:
        pytest.skip("clang-format not installed (pip install clang-format)")
    files = sorted(p for p in tflm_build.OPS_DIR.parent.rglob("*")
                   if p.suffix in (".h", ".cc", ".cpp", ".c"))
    assert len(files) > 5
    # the repository's .clang-format (Google style, 100 columns), else plain Google
    root = Path(__file__).resolve().parents[1]
    style = "file" if (root / ".clang-format").is_file() else "Google"
    r = subprocess.run([tool, f"--style={style}", "--dry-run", "--Werror", *map(str, files)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def _compile_glue(root: str, extra: str, *flags: str) -> None:
    compiler = os.environ.get("CXX") or "c++"
    includes = [a for d in (root, *extra.split(":")) if d for a in ("-isystem", d)]
    for src in (tflm_build.GLUE_SOURCE,):
        cmd = [compiler, *GLUE_FLAGS, *flags, "-I", str(tflm_build.SOURCE_ROOT), *includes,
               "-fsyntax-only", str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}{r.stderr}"


@pytest.mark.slow
def test_glue_compiles_against_feb_2023_tflm() -> None:
    """Arduino_TensorFlowLite's TFLM: TfLiteRegistration, non-variadic
    TF_LITE_ENSURE_MSG, no compression, flatbuffers 2.x (DEVELOPERS.md)."""
    root = os.environ.get("TFLM_2023_ROOT", "")
    extra = os.environ.get("TFLM_2023_EXTRA_INCLUDES", "")
    if not root or not extra:
        pytest.skip("TFLM_2023_ROOT and TFLM_2023_EXTRA_INCLUDES not set: the Feb-2023 TFLM "
                    "compile check is off (see DEVELOPERS.md)")
    _compile_glue(root, extra)
    _compile_glue(root, extra, "-DTF_LITE_STRIP_ERROR_STRINGS")
    _compile_glue(root, extra, "-std=gnu++14")  # what the Arduino IDE's Cortex-M core uses


@pytest.mark.slow
def test_glue_compiles_with_error_strings_stripped() -> None:
    """TF_LITE_STRIP_ERROR_STRINGS (small MCU builds) leaves nothing unused."""
    reason = _headers_missing()
    if reason:
        pytest.skip(reason)
    _compile_glue(os.environ[tflm_build.ENV_ROOT], os.environ[tflm_build.ENV_EXTRA],
                  "-DUSE_TFLM_COMPRESSION=1", "-DTF_LITE_STRIP_ERROR_STRINGS")


# ------------------------------------------------------------------ the library


def test_library_needs_only_the_wheel(kernel: tflm_build.KernelLibrary) -> None:
    """Linked with -z defs against the wheel's _runtime.so; exports the registerer."""
    dyn = subprocess.run(["readelf", "-d", str(kernel.path)], capture_output=True, text=True,
                         check=True).stdout
    assert str(tflm_build.wheel_runtime_library()) in dyn
    syms = subprocess.run(["nm", "-D", "--defined-only", str(kernel.path)],
                          capture_output=True, text=True, check=True).stdout
    assert f" T {tflm_build.REGISTERER}\n" in syms


def test_cached_build_is_reused(kernel: tflm_build.KernelLibrary) -> None:
    before = kernel.path.stat().st_mtime_ns
    again = tflm_build.build_kernel()
    assert again == kernel and again.path.stat().st_mtime_ns == before


# ------------------------------------------------------------------ bit-exact in TFLM


@pytest.mark.slow
@pytest.mark.parametrize(("image", "expected"), [("person.bmp", [-113, 113]),
                                                 ("no_person.bmp", [57, -57])])
def test_person_detect_in_tflm(kernel: tflm_build.KernelLibrary, image: str,
                               expected: list[int]) -> None:
    from tflm_patch.validate import load_input

    model = _model("person_detect")
    data, _ = _default_plan("person_detect")
    x = load_input(model, shared_file(image))
    (got,) = _run(kernel, data, x)
    assert got.reshape(-1).tolist() == expected
    (want,) = run_model(model.raw, x)
    assert got.tobytes() == want.tobytes()


@pytest.mark.slow
def test_mobilenet_v2_224_in_tflm(kernel: tflm_build.KernelLibrary) -> None:
    model = _model("mobilenet_v2_int8_224_nchw")
    data, _ = _default_plan("mobilenet_v2_int8_224_nchw")
    patched = load_model(data)
    assert any(op.name == CUSTOM_CODE for op in patched.operators)
    ex = Executor(kernel)
    for seed in range(3):
        c = compare(model, patched, random_inputs(model, seed), f"seed {seed}", ex)
        assert c.executor == TFLM_KERNEL
        assert c.identical, f"seed {seed}: max |diff| {c.max_abs_diff}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_in_tflm(kernel: tflm_build.KernelLibrary, name: str) -> None:
    model = _zoo(name)
    data, _ = _default_plan(f"zoo:{name}")
    patched = load_model(data)
    for seed in range(2):
        c = compare(model, patched, random_inputs(model, seed), f"seed {seed}",
                    Executor(kernel))
        assert c.identical, f"seed {seed}: max |diff| {c.max_abs_diff}"


# the numpy reference's cases, plus one patch
STAGE_CASES = [*ZOO_CASES, ("odd_stride2", 0, 1, (1, 1))]


def _stage_model(model: Model, first: int, last: int, grid: tuple[int, int],
                 cache: bool = False) -> Any:
    graph = build_stage(model, first, last)
    return replace_stage(model, graph, make_schedule(graph, grid, cache=cache))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), STAGE_CASES)
def test_stage_output_bit_exact_in_tflm(kernel: tflm_build.KernelLibrary, name: str,
                                        first: int, last: int, grid: tuple[int, int]) -> None:
    """The PATCH_EXEC output tensor itself, not only the model output, equals TFLM's
    layer-by-layer value."""
    model = _zoo(name)
    graph = build_stage(model, first, last)
    patched = model_from_object(_stage_model(model, first, last, grid))
    data = model_to_bytes(patched.obj)
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    x = random_inputs(model, seed=first + last)
    want = run_all_tensors(model.raw, x)
    got = run_all_tensors(data, x, **kernel.runner_kwargs())
    stage_out = got[op.outputs[0]].reshape(-1)
    ref = want[graph.output].reshape(-1)
    assert stage_out.tobytes() == ref.tobytes(), \
        f"max |diff| {np.abs(stage_out.astype(int) - ref.astype(int)).max()}"
    (out_t,) = patched.outputs
    assert got[out_t].tobytes() == want[model.outputs[0]].tobytes()


def test_person_detect_deep_stage_in_tflm(kernel: tflm_build.KernelLibrary) -> None:
    model = _model("person_detect")
    for first, last, grid in [(0, 12, (3, 3)), (0, 26, (2, 2))]:
        data = model_to_bytes(_stage_model(model, first, last, grid))
        x = random_inputs(model, seed=last)
        assert _run(kernel, data, x)[0].tobytes() == run_model(model.raw, x)[0].tobytes()


# ------------------------------------------------------------------ arena: measured = predicted


ARENA_MODELS = [*(f"zoo:{n}" for n in sorted(ZOO)), "person_detect",
                "mobilenet_v2_int8_224_nchw"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ARENA_MODELS)
def test_measured_arena_equals_prediction(kernel: tflm_build.KernelLibrary, name: str) -> None:
    data, predicted = _default_plan(name)
    patched = load_model(data)
    meta = plan_metadata(patched)
    assert meta is not None and meta["predicted"]["arena_after"] == predicted
    assert predict_arena(patched).total == predicted
    measured = smallest_arena(data, **kernel.runner_kwargs())
    assert measured.smallest == predicted, (
        f"measured {measured.smallest:,} (head {measured.report.head:,} + tail "
        f"{measured.report.tail:,}), predicted {predicted:,}")


# ------------------------------------------------------------------ malformed operators


def _small_patched() -> Any:
    """odd_stride2 with ops 0..4 as one PATCH_EXEC (grid 3x2): PATCH_EXEC is operator 0
    and reads the model input."""
    return _stage_model(_zoo("odd_stride2"), 0, 4, (3, 2))


def _blob(obj: Any) -> bytearray:
    return bytearray(np.asarray(mf.patch_op(obj).customOptions, dtype=np.uint8).tobytes())


def _set_blob(obj: Any, blob: bytes) -> None:
    mf.patch_op(obj).customOptions = np.frombuffer(bytes(blob), dtype=np.uint8)


def _options(obj: Any) -> pf.PatchOptions:
    return pf.decode(bytes(_blob(obj)))


def _edit_blob(edit: Callable[[bytearray], bytes | bytearray]) -> Callable[[Any], None]:
    def apply(obj: Any) -> None:
        _set_blob(obj, edit(_blob(obj)))
    return apply


def _put(fmt: str, offset: int, value: int | bytes) -> Callable[[bytearray], bytearray]:
    def edit(b: bytearray) -> bytearray:
        struct.pack_into(fmt, b, offset, value)
        return b
    return edit


def _tensor_of_input(obj: Any, field: str, layer: int | None = None) -> Any:
    """The model tensor behind operator input `field` (weights, bias, multipliers, shifts)
    of the first (or given) conv layer."""
    o = _options(obj)
    ly = next(ly for k, ly in enumerate(o.layers)
              if ly.kind in pf.CONV_KINDS and (layer is None or k == layer))
    index = getattr(ly, field)
    return obj.subgraphs[0].tensors[mf.patch_op(obj).inputs[index]]


def _shift_out_of_range(obj: Any) -> None:
    t = _tensor_of_input(obj, "shifts")
    buf = copy.deepcopy(obj.buffers[t.buffer])
    data = np.frombuffer(np.asarray(buf.data, dtype=np.uint8).tobytes(), np.int32).copy()
    data[0] = 40
    buf.data = np.frombuffer(data.tobytes(), dtype=np.uint8)
    obj.buffers.append(buf)
    t.buffer = len(obj.buffers) - 1


def _weights_type(obj: Any) -> None:
    from tflm_patch.schema import schema

    _tensor_of_input(obj, "weights").type = schema().TensorType.UINT8


def _bias_shape(obj: Any) -> None:
    t = _tensor_of_input(obj, "bias")
    t.shape = [int(t.shape[0]) - 1]


def _weights_not_constant(obj: Any) -> None:
    _tensor_of_input(obj, "weights").buffer = 0  # buffer 0: the empty sentinel


def _input_shape(obj: Any) -> None:
    sg = obj.subgraphs[0]
    t = sg.tensors[mf.patch_op(obj).inputs[0]]
    t.shape = [1, int(t.shape[1]) + 1, int(t.shape[2]), int(t.shape[3])]


def _output_shape(obj: Any) -> None:
    sg = obj.subgraphs[0]
    t = sg.tensors[mf.patch_op(obj).outputs[0]]
    t.shape = [1, int(t.shape[1]), int(t.shape[2]) - 1, int(t.shape[3])]


def _input_type(obj: Any) -> None:
    from tflm_patch.schema import schema

    sg = obj.subgraphs[0]
    sg.tensors[mf.patch_op(obj).inputs[0]].type = schema().TensorType.UINT8


def _drop_last_input(obj: Any) -> None:
    op = mf.patch_op(obj)
    op.inputs = list(op.inputs)[:-1]


def _nchw_blob(b: bytearray) -> bytes:
    """The options with INPUT_NCHW (and STREAM on every pair), slots packed anew."""
    return pf.encode(with_version2(pf.decode(bytes(b)), nchw=True, stream=True))


def _nchw_input(obj: Any) -> None:
    """INPUT_NCHW options, and input 0 (the model input) made [1, C, H, W]."""
    _edit_blob(_nchw_blob)(obj)
    t = obj.subgraphs[0].tensors[mf.patch_op(obj).inputs[0]]
    _, h, w, c = (int(v) for v in t.shape)
    t.shape = [1, c, h, w]
    if t.shapeSignature is not None and len(t.shapeSignature) == 4:
        t.shapeSignature = [1, c, h, w]


def _no_options(obj: Any) -> None:
    mf.patch_op(obj).customOptions = None


def _slot_past_scratch(b: bytearray) -> bytearray:
    scratch = struct.unpack_from("<I", b, 20)[0]
    struct.pack_into("<I", b, 32 + 16 + 8, scratch)  # tensor 1's slot_offset
    return b


def _range_past_height(b: bytearray) -> bytearray:
    height = struct.unpack_from("<H", b, 32)[0]  # tensor 0
    num_t, n, m = struct.unpack_from("<H", b, 12)[0], *struct.unpack_from("<HH", b, 16)
    ranges = 32 + 16 * num_t
    struct.pack_into("<H", b, ranges + 4 * (n - 1) + 2, height + 1)  # tensor 0, last row hi
    assert m >= 1
    return b


MALFORMED: dict[str, tuple[Callable[[Any], None], str]] = {
    # options blob (validated by the core; Prepare reports its message)
    "truncated": (_edit_blob(lambda b: b[:20]), r"invalid options \(status 1\): .*32-byte header"),
    "truncated_after_header": (_edit_blob(lambda b: b[:-8]),
                               r"invalid options \(status 1\): .*total_bytes"),
    "wrong_magic": (_edit_blob(_put("<4s", 0, b"XPEX")), r"invalid options \(status 2\)"),
    "wrong_version": (_edit_blob(_put("<H", 4, 4)), r"invalid options \(status 3\): .*version 4"),
    "unknown_header_flag": (_edit_blob(_put("<H", 26, 4)),
                            r"invalid options \(status 4\): .*unknown header flags 0x0004"),
    "overflowing_layer_count": (_edit_blob(_put("<H", 14, 0xFFFF)),
                                r"invalid options \(status 4\): .*num_layers 65535"),
    "overflowing_grid": (_edit_blob(_put("<H", 16, 0xFFFF)),
                         r"invalid options \(status 4\): .*grid 65535x2"),
    "slot_past_scratch_end": (_edit_blob(_slot_past_scratch),
                              r"invalid options \(status 5\): .*slot"),
    "range_past_tensor_end": (_edit_blob(_range_past_height),
                              r"invalid options \(status 6\): .*range"),
    "input_index_past_the_end": (_edit_blob(_put("<H", 24, 2)),
                                 r"invalid options \(status 7\): .*outside \[1, 2\)"),
    "no_options": (_no_options, "the operator has no custom options"),
    # the operator's tensors against valid options (checked by the glue)
    "input_count": (_drop_last_input, r"the operator has \d+ inputs; the options say "
                    r"num_inputs = \d+"),
    "input_shape": (_input_shape, r"input 0 has shape \[1, 98, 97, 3\]; the options say "
                    r"\[1, 97, 97, 3\]"),
    "input_nhwc_for_input_nchw": (_edit_blob(_nchw_blob),
                                  r"input 0 has shape \[1, 97, 97, 3\]; the options say "
                                  r"\[1, 3, 97, 97\], i.e. \[1, C, H, W\] \(INPUT_NCHW\)"),
    "input_type": (_input_type, "input 0 is uint8 .*not int8"),
    "output_shape": (_output_shape, r"output 0 has shape \[1, \d+, \d+, \d+\]; the options"),
    "weights_type": (_weights_type, r"input \d+ is uint8 \(type 3\); the options need int8"),
    "bias_size": (_bias_shape, r"input \d+ has \d+ elements; the options need \d+"),
    "weights_not_constant": (_weights_not_constant, r"input \d+ is not a constant tensor"),
    "shift_out_of_range": (_shift_out_of_range,
                           r"invalid constant input \(status 11\): .*shift 40"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_operator_fails_allocation_with_a_message(
        kernel: tflm_build.KernelLibrary, case: str) -> None:
    edit, message = MALFORMED[case]
    obj = _small_patched()
    edit(obj)
    data = model_to_bytes(obj)
    x = [np.zeros((1, 97, 97, 3), np.int8)]
    with pytest.raises(TflmRunError) as info:
        _run(kernel, data, x)
    text = str(info.value)
    assert text.startswith("TFLM failed while allocating tensors"), text  # not a crash
    assert "PATCH_EXEC: " in text, text
    assert re.search(message, text), text


# A hostile model (docs/patch_exec.md, "Operator tensors" and rule 10): the crafted edits
# of tests/model_fuzz_cases.py on the model above (the same stage, so the same inputs)
HOSTILE = ["scratch_bytes_near_2_32", "scratch_bytes_over_what_slots_need",
           "stage_tensor_over_2_31_bytes", "output_constant", "output_variable",
           "input_constant", "output_is_input", "weights_buffer_short",
           "multipliers_buffer_one_byte", "bias_variable", "weights_shape_overflows_64_bits",
           "weights_negative_dimension"]


def _assert_refused(kernel: tflm_build.KernelLibrary, data: bytes, message: str,
                    verify: bool = True) -> None:
    x = [np.zeros((1, 97, 97, 3), np.int8)]
    with pytest.raises(TflmRunError) as info:
        run_model(data, x, **kernel.runner_kwargs(), verify=verify)
    text = str(info.value)
    assert text.startswith("TFLM failed while allocating tensors"), text  # not a crash
    assert "PATCH_EXEC: " in text, text
    assert re.search(message, text), text


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_operator_fails_allocation_with_a_message(
        kernel: tflm_build.KernelLibrary, case: str) -> None:
    edit, message = mf.crafted_edits()[case]
    obj = _small_patched()
    edit(obj)
    _assert_refused(kernel, model_to_bytes(obj), message)


def test_constant_buffer_at_the_file_end_too_short_fails_allocation(
        kernel: tflm_build.KernelLibrary) -> None:
    edit, message = mf.crafted_edits()["shifts_buffer_one_byte"]
    obj = _small_patched()
    edit(obj)
    data = model_to_bytes(obj)
    _assert_refused(kernel, mf.move_buffer_to_end(data, mf.tensor_buffer(data, "shifts")),
                    message)


def test_misaligned_int32_constant_fails_allocation(kernel: tflm_build.KernelLibrary) -> None:
    """Multipliers whose data starts 2 bytes past a multiple of 4 (the flatbuffer verifier
    refuses such a file; TFLM on a device does not check): Prepare refuses them."""
    data = model_to_bytes(_small_patched())
    moved = mf.move_buffer_to_end(data, mf.tensor_buffer(data, "multipliers"), misalign=2)
    index = mf.constant_input("multipliers")
    _assert_refused(kernel, moved, rf"invalid constant input \(status 11\): input {index}: "
                    "int32 data at an address that is not a multiple of 4", verify=False)


def test_unmodified_small_model_runs(kernel: tflm_build.KernelLibrary) -> None:
    """The malformed cases above start from a model that works."""
    model = _zoo("odd_stride2")
    data = model_to_bytes(_small_patched())
    x = random_inputs(model, 5)
    assert _run(kernel, data, x)[0].tobytes() == run_model(model.raw, x)[0].tobytes()


@pytest.mark.first_case_quick
@pytest.mark.parametrize("seed", [0, 1])
def test_input_nchw_stage_in_tflm(kernel: tflm_build.KernelLibrary, seed: int) -> None:
    """Version 2 in TFLM: PATCH_EXEC reads the model input as [1, C, H, W] (INPUT_NCHW)
    and runs both conv -> depthwise pairs STREAM; Prepare accepts the NCHW input and
    the model output equals the original's on the same image."""
    model = _zoo("odd_stride2")
    obj = _small_patched()
    _nchw_input(obj)
    o = _options(obj)
    assert o.input_nchw and [k for k, ly in enumerate(o.layers) if ly.stream] == [0, 2]
    x = random_inputs(model, seed)
    nchw = [np.ascontiguousarray(x[0].transpose(0, 3, 1, 2))]
    got = _run(kernel, model_to_bytes(obj), nchw)[0]
    assert got.tobytes() == run_model(model.raw, x)[0].tobytes()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "last", "grid"), [("zoo:nchw_input", 4, (3, 2)),
                                                    ("mobilenet_v2_int8_224_nchw", 8, (4, 4))])
def test_folded_transpose_stage_in_tflm(kernel: tflm_build.KernelLibrary, name: str, last: int,
                                        grid: tuple[int, int]) -> None:
    """A PATCH_EXEC that folds the model's NCHW -> NHWC TRANSPOSE reads the model input
    [1, C, H, W] in TFLM (INPUT_NCHW; Prepare checks that shape) and equals the model."""
    model = _model(name)
    assert model.operators[0].name == "TRANSPOSE"
    obj = _stage_model(model, 0, last, grid)
    assert _options(obj).input_nchw
    x = random_inputs(model, seed=last)
    got = _run(kernel, model_to_bytes(obj), x)[0]
    assert got.tobytes() == run_model(model.raw, x)[0].tobytes()


# test_halo_cache.CASES: stages converted with halo caches (CACHE_COLS)
CACHE_STAGES = [("mbv2_035_144", 0, 9, (3, 3)), ("mbv2_035_144", 0, 20, (2, 5)),
                ("mbv1_025_96", 0, 10, (2, 4)), ("pools_dilated", 0, 7, (2, 3)),
                ("mcunet_dw57", 0, 12, (2, 4)), ("odd_stride2", 0, 4, (3, 3)),
                ("nchw_input", 0, 10, (2, 3))]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), CACHE_STAGES)
def test_cached_stage_in_tflm(kernel: tflm_build.KernelLibrary, name: str, first: int,
                              last: int, grid: tuple[int, int]) -> None:
    """A stage with halo caches (the caches in the one scratch buffer TFLM gives) equals
    the original model, the PATCH_EXEC output tensor too."""
    model = _zoo(name)
    graph = build_stage(model, first, last)
    obj = _stage_model(model, first, last, grid, cache=True)
    assert any(t.cached for t in _options(obj).tensors)
    patched = model_from_object(obj)
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    x = random_inputs(model, seed=first + last)
    want = run_all_tensors(model.raw, x)
    got = run_all_tensors(model_to_bytes(obj), x, **kernel.runner_kwargs())
    assert got[op.outputs[0]].tobytes() == want[graph.output].tobytes()
    (out_t,) = patched.outputs
    assert got[out_t].tobytes() == want[model.outputs[0]].tobytes()


# ------------------------------------------------------------------ the commands


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tflm_patch.cli", *args], capture_output=True,
                          text=True, env=env, check=False, timeout=900)


@pytest.mark.slow
def test_validate_and_analyze_say_which_path_ran(tmp_path: Path) -> None:
    """Without the headers: the numpy reference, with the reason; with them (and the core):
    the C++ kernel in TFLM, and analyze measures the patched model's arena."""
    data, predicted = _default_plan("zoo:odd_stride2")
    patched = tmp_path / "p.tflite"
    patched.write_bytes(data)
    original = str(ensure_model("odd_stride2"))
    bare = {k: v for k, v in os.environ.items()
            if k not in (tflm_build.ENV_ROOT, tflm_build.ENV_EXTRA)}
    r = _cli("validate", original, str(patched), "--random", "1", env=bare)
    assert r.returncode == 0, r.stderr
    assert ("patched: numpy reference, split at PATCH_EXEC (TFLM_ROOT and "
            "TFLM_EXTRA_INCLUDES not set") in r.stdout
    r = _cli("analyze", str(patched), env=bare)
    assert r.returncode == 0, r.stderr
    assert "TFLM arena measured:  not measured: TFLM needs the C++ PATCH_EXEC kernel" in r.stdout
    if _headers_missing() or not tflm_build.CORE_SOURCE.is_file():
        pytest.skip("the kernel half needs the TFLM headers and the core")
    env = dict(os.environ)
    r = _cli("validate", original, str(patched), "--random", "2", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"patched: {TFLM_KERNEL}" in r.stdout and "verdict: PASS" in r.stdout
    r = _cli("analyze", str(patched), env=env)
    assert r.returncode == 0, r.stderr
    assert f"TFLM arena measured:  {predicted:,} B" in r.stdout and TFLM_KERNEL in r.stdout
