"""The arena model against the x86 TFLM interpreter: exact bytes, every model."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_NAMES, shared_model_path

from tflm_patch.arena import predict_arena
from tflm_patch.arena_tail import predict_tail
from tflm_patch.model import load_model
from tflm_patch.tflm_runner import allocation_report, smallest_arena
from tflm_patch.zoo import ZOO_NAMES, ensure_model

MODELS = [f"shared:{n}" for n in SHARED_NAMES] + [f"zoo:{n}" for n in ZOO_NAMES]


def _path(spec: str) -> Path:
    kind, name = spec.split(":")
    return shared_model_path(name) if kind == "shared" else ensure_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("spec", MODELS)
def test_predicted_arena_equals_measured_smallest(spec: str) -> None:
    model = load_model(_path(spec))
    predicted = predict_arena(model)
    measured = smallest_arena(model.raw)
    print(f"{spec}: predicted {predicted.total:,} B (head {predicted.head.size:,} + tail "
          f"{predicted.tail.total:,}), measured {measured.smallest:,} B")
    assert predicted.total == measured.smallest


@pytest.mark.parametrize("spec", MODELS)
def test_tail_categories_equal_recording_allocator(spec: str) -> None:
    model = load_model(_path(spec))
    tail = predict_tail(model)
    report = allocation_report(model.raw)
    assert tail.total == report.tail
    assert report.records, "the recording allocator reported no category"
    for rec in report.records:
        item = tail.item(rec.name)
        assert item is not None, rec.name
        assert (item.aligned_size, item.size, item.count) == (
            rec.used_bytes, rec.requested_bytes, rec.count), rec.name
