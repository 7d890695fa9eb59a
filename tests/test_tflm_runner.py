"""The x86 TFLM runner: outputs, smallest-arena measurement, crashes contained."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import shared_file, shared_model_path

from tflm_patch.errors import TflmRunError
from tflm_patch.model import load_model, model_to_bytes
from tflm_patch.tflm_runner import allocation_report, parse_report, run_model, smallest_arena

# Independent measurement (../shared/models/README.md), bisection to 16 bytes.
REFERENCE = {
    "person_detect": (85_264, 55_296, 29_968),
    "mobilenet_v2_int8_224_nchw": (2_607_152, 2_451_840, 155_312),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_smallest_arena_matches_reference(name: str) -> None:
    m = smallest_arena(shared_model_path(name).read_bytes())
    print(f"{name}: smallest arena {m.smallest:,} (head {m.report.head:,}, tail "
          f"{m.report.tail:,}) in {m.probes} probes; reference {REFERENCE[name]}")
    assert (m.smallest, m.report.head, m.report.tail) == REFERENCE[name]


def test_smallest_arena_micro_speech() -> None:
    assert smallest_arena(shared_model_path("micro_speech_quantized").read_bytes()).smallest \
        == 7_568


def test_smallest_arena_is_tight(tiny_int8_bytes: bytes) -> None:
    m = smallest_arena(tiny_int8_bytes)
    x = np.zeros((1, 16, 16, 3), np.int8)
    run_model(tiny_int8_bytes, [x], arena_size=m.smallest)
    with pytest.raises(TflmRunError, match="allocat"):
        run_model(tiny_int8_bytes, [x], arena_size=m.smallest - 16)


def _bmp_input(name: str) -> np.ndarray:
    from PIL import Image

    data = Image.open(shared_file(name)).tobytes()
    return np.frombuffer(data, np.uint8).view(np.int8).reshape(1, 96, 96, 1)


@pytest.mark.parametrize("image, expected", [("person.bmp", [-113, 113]),
                                             ("no_person.bmp", [57, -57])])
def test_person_detect_outputs(image: str, expected: list[int]) -> None:
    (out,) = run_model(shared_model_path("person_detect").read_bytes(), [_bmp_input(image)])
    assert out.dtype == np.int8 and out.reshape(-1).tolist() == expected


def test_abort_is_a_clear_error() -> None:
    """A zero input scale on SOFTMAX makes TFLM abort in Prepare: reported, not fatal."""
    m = load_model(shared_model_path("person_detect"))
    obj = copy.deepcopy(m.obj)
    softmax = m.operators[-1]
    assert softmax.name == "SOFTMAX"
    obj.subgraphs[0].tensors[softmax.inputs[0]].quantization.scale = [0.0]
    with pytest.raises(TflmRunError, match=r"TFLM aborted \(SIGABRT\) while allocating"):
        allocation_report(model_to_bytes(obj))


def test_crash_on_tiny_arena_is_a_clear_error(tiny_int8_bytes: bytes) -> None:
    """TFLM dereferences a null allocator when even its own objects do not fit."""
    with pytest.raises(TflmRunError, match=r"TFLM aborted \(SIGSEGV\)"):
        allocation_report(tiny_int8_bytes, arena_size=16)


def test_garbage_model_is_a_clear_error() -> None:
    with pytest.raises(TflmRunError):
        run_model(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), [])


def test_timeout_is_a_clear_error() -> None:
    with pytest.raises(TflmRunError, match="did not finish"):
        smallest_arena(shared_model_path("mobilenet_v2_int8_224_nchw").read_bytes(),
                       timeout=0.01)


def test_parse_report() -> None:
    text = (
        "[RecordingMicroAllocator] Arena allocation total 85264 bytes\n"
        "[RecordingMicroAllocator] Arena allocation head 55296 bytes\n"
        "[RecordingMicroAllocator] Arena allocation tail 29968 bytes\n"
        "[RecordingMicroAllocator] 'TfLiteEvalTensor data' used 2136 bytes with alignment "
        "overhead (requested 2136 bytes for 89 allocations)\n"
        "[RecordingMicroAllocator] 'NodeAndRegistration struct' used 1984 bytes with alignment "
        "overhead (requested 1984 bytes for 31 NodeAndRegistration structs)\n"
    )
    r = parse_report(text)
    assert (r.total, r.head, r.tail) == (85264, 55296, 29968)
    rec = r.record("NodeAndRegistration struct")
    assert rec is not None and (rec.used_bytes, rec.requested_bytes, rec.count) == (1984, 1984, 31)
    with pytest.raises(TflmRunError):
        parse_report("nothing here")
