"""The project's seeded int8 test models: built, int8, runnable in TFLM, reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflm_patch.model import load_model, require_int8
from tflm_patch.tflm_runner import run_model
from tflm_patch.zoo import ZOO_NAMES, build_model, ensure_zoo


@pytest.fixture(scope="session")
def zoo() -> dict[str, Path]:
    return ensure_zoo()


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_is_int8_and_runs_in_tflm(zoo: dict[str, Path], name: str) -> None:
    m = load_model(zoo[name])
    require_int8(m)
    inp = m.tensors[m.inputs[0]]
    assert inp.dtype == "int8" and m.tensors[m.outputs[0]].dtype == "int8"
    for op in m.operators:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = m.tensors[op.inputs[1]]
            assert w.dtype == "int8" and w.quantization is not None
            assert w.quantization.per_channel
    x = np.random.default_rng(1).integers(-128, 128, inp.shape, dtype=np.int8)
    (out,) = run_model(m.raw, [x])
    assert out.dtype == np.int8 and out.shape == m.tensors[m.outputs[0]].shape
    # a different input gives a different output: the network is not degenerate
    (out2,) = run_model(m.raw, [np.full(inp.shape, 100, np.int8)])
    assert not np.array_equal(out, out2)


def _kernels(m, name: str) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    return {m.tensors[o.inputs[1]].shape[1:3] for o in m.operators if o.name == name}


def test_mbv2_has_residual_adds(zoo: dict[str, Path]) -> None:
    m = load_model(zoo["mbv2_035_144"])
    names = [o.name for o in m.operators]
    assert names.count("ADD") == 10 and "DEPTHWISE_CONV_2D" in names
    assert m.tensors[m.inputs[0]].shape == (1, 144, 144, 3)


def test_pools_dilated_ops(zoo: dict[str, Path]) -> None:
    m = load_model(zoo["pools_dilated"])
    names = {o.name for o in m.operators}
    assert {"MAX_POOL_2D", "AVERAGE_POOL_2D"} <= names
    assert "SPACE_TO_BATCH_ND" not in names  # the dilation is native, not emulated
    convs = [o for o in m.operators if o.name == "CONV_2D"]
    assert any(o.options.dilationHFactor == 2 and o.options.dilationWFactor == 2 for o in convs)
    valid = load_model(zoo["pools_dilated"]).operators[0].options.padding
    assert valid == 1  # Padding.VALID


def test_mcunet_has_5x5_and_7x7_depthwise(zoo: dict[str, Path]) -> None:
    m = load_model(zoo["mcunet_dw57"])
    assert {(5, 5), (7, 7), (3, 3)} <= _kernels(m, "DEPTHWISE_CONV_2D")
    assert "ADD" in {o.name for o in m.operators}


def test_odd_stride2_first_conv(zoo: dict[str, Path]) -> None:
    m = load_model(zoo["odd_stride2"])
    first = m.operators[0]
    assert first.name == "CONV_2D"
    assert first.options.strideH == first.options.strideW == 2 and first.options.padding == 0
    h = m.tensors[m.inputs[0]].shape[1]
    assert h % 2 == 1
    assert m.tensors[first.outputs[0]].shape[1] == (h + 1) // 2


def test_build_is_reproducible(zoo: dict[str, Path]) -> None:
    """A fresh build gives the cached bytes exactly (seeds + reset layer-name counters)."""
    assert build_model("odd_stride2") == zoo["odd_stride2"].read_bytes()
