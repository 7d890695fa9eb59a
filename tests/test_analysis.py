"""Per-op analysis: MACs, lifetimes, layer-by-layer peak (figures derived by hand from shapes)."""

from __future__ import annotations

import pytest
from conftest import shared_model_path

from tflm_patch.analysis import analyze, lifetimes
from tflm_patch.model import load_model


def test_person_detect_macs_of_first_ops() -> None:
    a = analyze(load_model(shared_model_path("person_detect")))
    # op 0: depthwise 3x3, multiplier 8, 96x96x1 -> 48x48x8: 48*48*8*9
    assert a.ops[0].macs == 48 * 48 * 8 * 9
    # op 2: pointwise conv 48x48x8 -> 48x48x16: 48*48*16*8
    assert a.ops[2].output_shape == (1, 48, 48, 16)
    assert a.ops[2].macs == 48 * 48 * 16 * 8


def test_person_detect_layer_by_layer_peak() -> None:
    a = analyze(load_model(shared_model_path("person_detect")))
    # 48x48x8 in + 48x48x16 out, int8 (equals the measured TFLM head of 55,296 B)
    assert a.peak_bytes == 48 * 48 * 8 + 48 * 48 * 16 == 55_296
    assert a.peak.name == "CONV_2D"


def test_mobilenet_v2_peak_at_first_block_expansion_pad() -> None:
    a = analyze(load_model(shared_model_path("mobilenet_v2_int8_224_nchw")))
    peak = a.peak
    assert peak.name == "PAD"
    assert peak.output_shape == (1, 114, 114, 96)
    # expansion output 112x112x96 + its padded copy 114x114x96
    assert a.peak_bytes == 112 * 112 * 96 + 114 * 114 * 96
    # the op before it is the first block's 1x1 expansion conv to 96 channels at 112x112
    before = a.ops[peak.index - 1]
    assert before.name == "CONV_2D" and before.output_shape == (1, 112, 112, 96)
    # MobileNetV2 1.0 at 224: about 300 M MACs (paper: 300 M)
    assert 295_000_000 < a.total_macs < 310_000_000


def test_tiny_model_macs(tiny_int8_bytes: bytes) -> None:
    m = load_model(tiny_int8_bytes)
    a = analyze(m)
    by_name = {s.name: s for s in a.ops}
    # conv 3x3 stride 2, 16x16x3 -> 8x8x8
    assert by_name["CONV_2D"].macs == 8 * 8 * 8 * 3 * 3 * 3
    # depthwise 3x3 on 8x8x8
    assert by_name["DEPTHWISE_CONV_2D"].macs == 8 * 8 * 8 * 3 * 3
    # dense 8 -> 4
    assert by_name["FULLY_CONNECTED"].macs == 8 * 4


@pytest.mark.parametrize("name", ["person_detect", "mobilenet_v2_int8_224_nchw"])
def test_lifetimes_cover_every_use(name: str) -> None:
    m = load_model(shared_model_path(name))
    lives = {lt.tensor: lt for lt in lifetimes(m)}
    for op in m.operators:
        for t in [*m.activation_inputs(op), *op.outputs]:
            assert lives[t].first <= op.index <= lives[t].last
    for t in m.inputs:
        assert lives[t].first == 0
    for t in m.outputs:
        assert lives[t].last == len(m.operators) - 1
    a = analyze(m)
    for s in a.ops:
        assert s.live_bytes >= s.in_out_bytes
    assert a.peak_bytes == max(s.live_bytes for s in a.ops)
