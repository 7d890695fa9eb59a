"""The x86 TFLM runner: outputs, smallest-arena measurement, failures contained."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file, shared_model_path

from tflm_patch._tflm_child import find_smallest
from tflm_patch.errors import TflmRunError
from tflm_patch.model import load_model
from tflm_patch.tflm_runner import (
    allocation_report,
    invoke_latency,
    parse_report,
    run_all_tensors,
    run_model,
    smallest_arena,
)
from tflm_patch.zoo import full_int8

pytestmark = pytest.mark.tflm

# Independent measurement (../shared/models/README.md): bisection on arena_size to 16 bytes.
# model -> (smallest arena, head, tail); None where the README gives no figure.
REFERENCE: dict[str, tuple[int, int | None, int | None]] = {
    "person_detect": (85_264, 55_296, 29_968),
    "mobilenet_v2_int8_224_nchw": (2_607_152, 2_451_840, 155_312),
    "micro_speech_quantized": (7_568, None, None),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_smallest_arena_matches_reference(name: str) -> None:
    data = shared_model_path(name).read_bytes()
    start = time.monotonic()
    m = smallest_arena(data)
    seconds = time.monotonic() - start
    print(f"\n{name}: smallest arena {m.smallest:,} (head {m.report.head:,}, tail "
          f"{m.report.tail:,}), {m.probes} probes, {seconds:.2f} s; reference {REFERENCE[name]}")
    smallest, head, tail = REFERENCE[name]
    assert m.smallest == smallest
    if head is not None:
        assert (m.report.head, m.report.tail) == (head, tail)


def test_granularity_64_rounds_up_person_detect() -> None:
    """85,264 is not a multiple of 64: the next multiple, 85,312, is the answer."""
    m = smallest_arena(shared_model_path("person_detect").read_bytes(), granularity=64)
    assert m.smallest == 85_312


def _tight(data: bytes, inputs: list[np.ndarray]) -> tuple[int, int]:
    """The measured smallest arena, checked by separate runs at it and one granule less."""
    m = smallest_arena(data)
    print(f"\nsmallest {m.smallest:,} (report total {m.report.total:,}) in {m.probes} probes")
    run_model(data, inputs, arena_size=m.smallest)
    with pytest.raises(TflmRunError, match="allocat"):
        run_model(data, inputs, arena_size=m.smallest - 16)
    return m.smallest, m.report.total


def test_smallest_arena_is_tight_on_tiny_model(tiny_int8_bytes: bytes) -> None:
    _tight(tiny_int8_bytes, [np.zeros((1, 16, 16, 3), np.int8)])


def test_smallest_arena_is_tight_when_the_hint_is_off() -> None:
    """hello_world needs more arena while planning than its final head + tail (the
    recording total), so the first guess fails and the search must go on from it."""
    smallest, total = _tight(shared_model_path("hello_world_int8").read_bytes(),
                             [np.zeros((1, 1), np.int8)])
    assert smallest > total


@pytest.mark.parametrize("hint", [16, 640, 1_008, 1_024, 1_040, 4_000, 65_536])
def test_find_smallest_any_hint(hint: int) -> None:
    calls: list[int] = []

    def fits(size: int) -> bool:
        calls.append(size)
        return size >= 1_024

    assert find_smallest(fits, hint, 65_536, 16) == 1_024
    assert all(s % 16 == 0 and 0 < s <= 65_536 for s in calls)
    assert len(calls) <= 2 * 12 + 2  # gallop + bisection, both logarithmic


def _bmp_input(name: str) -> np.ndarray:
    from PIL import Image

    data = Image.open(shared_file(name)).tobytes()
    return np.frombuffer(data, np.uint8).view(np.int8).reshape(1, 96, 96, 1)


@pytest.mark.parametrize("image, expected", [("person.bmp", [-113, 113]),
                                             ("no_person.bmp", [57, -57])])
def test_person_detect_outputs(image: str, expected: list[int]) -> None:
    (out,) = run_model(shared_model_path("person_detect").read_bytes(), [_bmp_input(image)])
    assert out.dtype == np.int8 and out.reshape(-1).tolist() == expected


def test_all_tensors_of_person_detect() -> None:
    path = shared_model_path("person_detect")
    model = load_model(path)
    x = _bmp_input("person.bmp")
    tensors = run_all_tensors(path.read_bytes(), [x])
    assert sorted(tensors) == list(range(len(model.tensors)))
    np.testing.assert_array_equal(tensors[model.inputs[0]], x)
    assert tensors[model.outputs[0]].reshape(-1).tolist() == [-113, 113]


@pytest.fixture(scope="session")
def aborting_model() -> bytes:
    """Seeded Dense (weights ~1e-9) + Softmax: the converter gives the softmax input a
    scale near 1e-8, below 2**-26, so TFLM's SOFTMAX Prepare fails the check
    QuantizeMultiplierGreaterThanOne(beta * scale * 2**26 > 1) and abort()s."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(3)
    inp = tf.keras.Input((8,), batch_size=1)
    init = tf.keras.initializers.RandomNormal(stddev=1e-9, seed=3)
    x = tf.keras.layers.Dense(4, kernel_initializer=init)(inp)
    model = tf.keras.Model(inp, tf.keras.layers.Softmax()(x))
    rng = np.random.default_rng(3)

    def representative():
        for _ in range(4):
            yield [rng.uniform(-1, 1, (1, 8)).astype(np.float32)]

    data = full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative)
    m = load_model(data)
    softmax = next(op for op in m.operators if op.name == "SOFTMAX")
    assert m.tensors[softmax.inputs[0]].quantization.scale[0] < 2.0**-26
    return data


_ABORTING_CALLS: dict[str, Callable[[bytes], object]] = {
    "run_model": lambda data: run_model(data, [np.zeros((1, 8), np.int8)]),
    "allocation_report": allocation_report,
    "smallest_arena": smallest_arena,
}


@pytest.mark.slow
@pytest.mark.parametrize("call", sorted(_ABORTING_CALLS))
def test_abort_is_a_clear_error(aborting_model: bytes, call: str) -> None:
    with pytest.raises(TflmRunError,
                       match=r"^TFLM aborted \(SIGABRT\) while allocating tensors"):
        _ABORTING_CALLS[call](aborting_model)


def test_arena_too_small_for_the_allocator_is_a_clear_error(tiny_int8_bytes: bytes) -> None:
    """TFLM dereferences a null allocator when even its own objects do not fit."""
    with pytest.raises(TflmRunError, match=r"TFLM crashed \(SIGSEGV\) while allocating "
                                           r"tensors: Failed to allocate tail memory"):
        allocation_report(tiny_int8_bytes, arena_size=16)


def test_arena_too_small_for_the_model_is_a_clear_error() -> None:
    data = shared_model_path("person_detect").read_bytes()
    with pytest.raises(TflmRunError, match=r"TFLM failed while allocating tensors: "
                                           r"TFLM failed to allocate tensors; TFLM log: "):
        allocation_report(data, arena_size=85_264 - 16)


def test_random_bytes_are_a_clear_error() -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(TflmRunError, match="not a valid TFLite flatbuffer"):
        run_model(data, [])


def test_truncated_model_is_a_clear_error() -> None:
    data = shared_model_path("person_detect").read_bytes()
    with pytest.raises(TflmRunError, match="not a valid TFLite flatbuffer"):
        smallest_arena(data[: len(data) // 2])


def test_wrong_inputs_are_a_clear_error() -> None:
    data = shared_model_path("person_detect").read_bytes()
    with pytest.raises(TflmRunError, match="has 1 input tensor"):
        run_model(data, [])
    with pytest.raises(TflmRunError, match=r"while setting inputs: .*expected type INT8"):
        run_model(data, [np.zeros((1, 96, 96, 1), np.uint8)])


def test_timeout_is_a_clear_error() -> None:
    data = shared_model_path("mobilenet_v2_int8_224_nchw").read_bytes()
    with pytest.raises(TflmRunError, match=r"did not finish .* within 0.05 s"):
        smallest_arena(data, timeout=0.05)


def test_missing_library_and_registerer_are_clear_errors(tiny_int8_bytes: bytes) -> None:
    x = [np.zeros((1, 16, 16, 3), np.int8)]
    with pytest.raises(TflmRunError, match="while loading custom-op libraries: cannot load"):
        run_model(tiny_int8_bytes, x, preload=["/nonexistent/libnothing.so"])
    with pytest.raises(TflmRunError, match="could not register custom op via NoSuchRegisterer"):
        run_model(tiny_int8_bytes, x, registerers=["NoSuchRegisterer"])


def test_preloaded_registerer_is_called(tmp_path: Path) -> None:
    """A registerer from a preloaded library is found by name (dlsym) and called; here it
    registers nothing and returns true, then false."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc/gcc) to build the test's shared library")
    src = tmp_path / "reg.c"
    src.write_text("int RegisterNothing(void* r) { return 1; }\n"
                   "int RegisterFails(void* r) { return 0; }\n")
    lib = tmp_path / "libreg.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    data = shared_model_path("person_detect").read_bytes()
    (out,) = run_model(data, [_bmp_input("person.bmp")], preload=[str(lib)],
                       registerers=["RegisterNothing"])
    assert out.reshape(-1).tolist() == [-113, 113]
    with pytest.raises(TflmRunError, match="RegisterFails failed to register op"):
        allocation_report(data, preload=[str(lib)], registerers=["RegisterFails"])


def test_invoke_latency_times_models_alternately_on_the_same_input(
        tiny_int8_bytes: bytes) -> None:
    """Inputs are set again before every Invoke (TFLM reuses the input's arena bytes), so
    every run of every model computes the same outputs as one plain run."""
    x = [np.random.default_rng(3).integers(-128, 128, (1, 16, 16, 3), dtype=np.int8)]
    lat = invoke_latency([tiny_int8_bytes, tiny_int8_bytes], x, repeats=7)
    assert [len(s) for s in lat.seconds] == [7, 7]
    assert all(t > 0 for s in lat.seconds for t in s) and lat.median(0) > 0
    (want,) = run_model(tiny_int8_bytes, x)
    assert all(o[0].tobytes() == want.tobytes() for o in lat.outputs)
    with pytest.raises(ValueError, match="repeats"):
        invoke_latency([tiny_int8_bytes], x, repeats=0)


def test_parse_report() -> None:
    # format of RecordingMicroAllocator::PrintAllocations (recording_micro_allocator.cc)
    text = (
        "Number of resource variables the model uses =  0\n"
        "[RecordingMicroAllocator] Arena allocation total 85264 bytes\n"
        "[RecordingMicroAllocator] Arena allocation head 55296 bytes\n"
        "[RecordingMicroAllocator] Arena allocation tail 29968 bytes\n"
        "[RecordingMicroAllocator] 'TfLiteEvalTensor data' used 2136 bytes with alignment "
        "overhead (requested 2136 bytes for 89 allocations)\n"
        "[RecordingMicroAllocator] 'Persistent buffer data' used 24304 bytes with alignment "
        "overhead (requested 24272 bytes for 88 allocations)\n"
        "[RecordingMicroAllocator] 'NodeAndRegistration struct' used 1984 bytes with alignment "
        "overhead (requested 1984 bytes for 31 NodeAndRegistration structs)\n"
    )
    r = parse_report(text)
    assert (r.total, r.head, r.tail) == (85264, 55296, 29968)
    assert [rec.name for rec in r.records] == [
        "TfLiteEvalTensor data", "Persistent buffer data", "NodeAndRegistration struct"]
    rec = r.record("Persistent buffer data")
    assert rec is not None and (rec.used_bytes, rec.requested_bytes, rec.count) == (
        24304, 24272, 88)
    with pytest.raises(TflmRunError, match="has no total, head, tail"):
        parse_report("nothing here")


def test_report_of_person_detect_sums_up() -> None:
    r = allocation_report(shared_model_path("person_detect").read_bytes())
    assert (r.total, r.head, r.tail) == (85_264, 55_296, 29_968)
    rec = r.record("NodeAndRegistration struct")
    assert rec is not None and rec.count == 31  # one per operator (README: 31 ops)
