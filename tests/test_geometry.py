"""Receptive fields on real int8 models, checked through the x86 TFLM interpreter.

A model is cut after operator k (its output becomes the graph output); for a small
rectangle of that output, the rectangle of the model input computed by
`geometry.tensor_rects` must be sound: changing every input pixel outside it leaves
the output rectangle bit-identical in TFLM. Changing pixels inside it must change
the output rectangle (the rectangle is not trivially the whole input).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_model_path

from tflm_patch.geometry import spatial_support, tensor_rects
from tflm_patch.model import Model, load_model, model_to_bytes
from tflm_patch.receptive_field import Rect
from tflm_patch.tflm_runner import run_model
from tflm_patch.zoo import ensure_model

# (model, cut after operator k, output rect as fractions of the output size)
CASES = [
    ("zoo:odd_stride2", 3),
    ("zoo:pools_dilated", 4),
    ("zoo:mcunet_dw57", 12),
    ("zoo:mbv2_035_144", 10),
    ("shared:person_detect", 8),
]


def _load(spec: str) -> Model:
    kind, name = spec.split(":")
    path: Path = shared_model_path(name) if kind == "shared" else ensure_model(name)
    return load_model(path)


def _cut(model: Model, k: int) -> bytes:
    obj = copy.deepcopy(model.obj)
    sg = obj.subgraphs[0]
    sg.operators = sg.operators[: k + 1]
    sg.outputs = [model.operators[k].outputs[0]]
    return model_to_bytes(obj)


@pytest.mark.slow
@pytest.mark.parametrize("spec, k", CASES, ids=[f"{s}@{k}" for s, k in CASES])
def test_receptive_field_is_sound_in_tflm(spec: str, k: int) -> None:
    model = _load(spec)
    for op in model.operators[: k + 1]:
        ok, reason = spatial_support(model, op)
        assert ok, reason
    out_t = model.operators[k].outputs[0]
    _, oh, ow, _ = model.tensors[out_t].shape
    rect = Rect(oh // 2 - 1, oh // 2 + 1, ow // 3, ow // 3 + 2)
    in_t = model.inputs[0]
    rects = tensor_rects(model, range(k + 1), out_t, rect)
    r = rects[in_t]
    _, ih, iw, _ = model.tensors[in_t].shape
    assert 0 < (r.y1 - r.y0) < ih and 0 < (r.x1 - r.x0) < iw, r  # a real sub-rectangle

    cut = _cut(model, k)
    rng = np.random.default_rng(k)
    shape = model.tensors[in_t].shape
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    (base,) = run_model(cut, [x])
    window = (slice(None), slice(rect.y0, rect.y1), slice(rect.x0, rect.x1))
    for trial in range(3):
        y = rng.integers(-128, 128, shape, dtype=np.int8)
        y[:, r.y0:r.y1, r.x0:r.x1, :] = x[:, r.y0:r.y1, r.x0:r.x1, :]
        (out,) = run_model(cut, [y])
        np.testing.assert_array_equal(out[window], base[window], err_msg=f"trial {trial}")
    inside = x.copy()
    inside[:, r.y0:r.y1, r.x0:r.x1, :] = rng.integers(-128, 128, (1, r.y1 - r.y0, r.x1 - r.x0,
                                                                  shape[3]), dtype=np.int8)
    (changed,) = run_model(cut, [inside])
    assert not np.array_equal(changed[window], base[window])


def test_transpose_is_not_spatial() -> None:
    model = load_model(shared_model_path("mobilenet_v2_int8_224_nchw"))
    ok, reason = spatial_support(model, model.operators[0])
    assert not ok and "TRANSPOSE" in reason
    ok, reason = spatial_support(model, model.operators[1])  # the PAD after it
    assert ok, reason


def test_reshape_is_not_spatial() -> None:
    model = load_model(shared_model_path("person_detect"))
    reshape = next(o for o in model.operators if o.name == "RESHAPE")
    ok, reason = spatial_support(model, reshape)
    assert not ok and f"operator {reshape.index} (RESHAPE)" in reason
