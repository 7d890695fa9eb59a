"""The project's seeded int8 test models: built, int8, the expected ops, runnable in TFLM with
the same int8 outputs as TFLite's reference kernels, reproducible, cached correctly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tflm_patch import zoo
from tflm_patch.errors import ZooError
from tflm_patch.model import Model, OperatorInfo, load_model, require_int8
from tflm_patch.zoo import ALL_NAMES, TRAIT_NAMES, ZOO_NAMES, build_model, ensure_model, ensure_zoo

TOOLS = Path(__file__).resolve().parents[1] / "tools"

# What each architecture must convert to, counted from its definition (batch norms folded:
# no MUL/ADD of their own; full int8: no QUANTIZE/DEQUANTIZE; SAME pads fused: no PAD).
EXPECTED: dict[str, tuple[tuple[int, ...], dict[str, int]]] = {
    # stem + 16 expansions + 17 projections + the final 1x1 (1280); 17 blocks; residuals in
    # the stages of 2, 3, 4, 3, 3 blocks: 1 + 2 + 3 + 2 + 2
    "mbv2_035_144": ((1, 144, 144, 3), {"CONV_2D": 35, "DEPTHWISE_CONV_2D": 17, "ADD": 10,
                                        "MEAN": 1, "FULLY_CONNECTED": 1}),
    # stem + 13 pointwise, 13 depthwise
    "mbv1_025_96": ((1, 96, 96, 3), {"CONV_2D": 14, "DEPTHWISE_CONV_2D": 13, "MEAN": 1,
                                     "FULLY_CONNECTED": 1}),
    "pools_dilated": ((1, 64, 64, 3), {"CONV_2D": 3, "MAX_POOL_2D": 2, "AVERAGE_POOL_2D": 2,
                                       "DEPTHWISE_CONV_2D": 1, "RESHAPE": 1,
                                       "FULLY_CONNECTED": 1}),
    # stem, dw, pw + 5 blocks x (expand, project); 1 + 5 depthwise; 2 blocks keep their shape
    "mcunet_dw57": ((1, 112, 112, 3), {"CONV_2D": 12, "DEPTHWISE_CONV_2D": 6, "ADD": 2,
                                       "MEAN": 1, "FULLY_CONNECTED": 1}),
    "odd_stride2": ((1, 97, 97, 3), {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 2, "MEAN": 1,
                                     "FULLY_CONNECTED": 1}),
    # NCHW input, the TRANSPOSE to NHWC first; stem, dw, pw + 4 blocks x (expand, project)
    "nchw_input": ((1, 3, 80, 80), {"TRANSPOSE": 1, "CONV_2D": 10, "DEPTHWISE_CONV_2D": 5,
                                    "ADD": 2, "MEAN": 1, "FULLY_CONNECTED": 1}),
    # the trait models: stem + 4 blocks (expand in 3, project in 4), QUANTIZE/DEQUANTIZE kept
    "float_io": ((1, 64, 64, 3), {"QUANTIZE": 1, "CONV_2D": 9, "DEPTHWISE_CONV_2D": 4,
                                  "ADD": 1, "MEAN": 1, "FULLY_CONNECTED": 1,
                                  "DEQUANTIZE": 1}),
    # stem + 4 blocks x 2; neck: 3 lateral 1x1 + 3 heads; 2 upsamplings and concatenations
    "det_head3": ((1, 128, 160, 3), {"CONV_2D": 15, "DEPTHWISE_CONV_2D": 4,
                                     "RESIZE_NEAREST_NEIGHBOR": 2, "CONCATENATION": 2}),
    # 3 SE blocks: MEAN, 2 1x1 convs (the +3 and ReLU6 of the hard sigmoid in the second),
    # MUL by 1/6, the broadcast MUL; and the final MEAN
    "se_blocks": ((1, 96, 96, 3), {"CONV_2D": 17, "DEPTHWISE_CONV_2D": 5, "MEAN": 4, "MUL": 6,
                                   "ADD": 2, "FULLY_CONNECTED": 1}),
    # stem + 4 blocks, each hard-swish after the stem, the expansions and the depthwise convs
    "hard_swish": ((1, 80, 80, 3), {"CONV_2D": 9, "HARD_SWISH": 9, "DEPTHWISE_CONV_2D": 4,
                                    "ADD": 2, "MEAN": 1, "FULLY_CONNECTED": 1}),
    "dilated_s2b": ((1, 63, 63, 3), {"CONV_2D": 4, "SPACE_TO_BATCH_ND": 3,
                                     "BATCH_TO_SPACE_ND": 3, "DEPTHWISE_CONV_2D": 2,
                                     "MEAN": 1, "FULLY_CONNECTED": 1}),
}
INT8_IO = [n for n in ALL_NAMES if not zoo.ZOO[n].float_io]

# The x86 TFLM interpreter in its own process (TFLM aborts the process on some bad models):
# three seeded random inputs (int8, or float32 in [-1, 1] for a float interface), every
# output (as int, or float) as JSON on the last line.
SEEDED_INPUT = """
def seeded_input(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.int8:
        return rng.integers(-128, 128, shape, dtype=np.int8)
    return rng.uniform(-1, 1, shape).astype(np.float32)
"""
TFLM_SCRIPT = """
import json, sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
""" + SEEDED_INPUT + """
data = open(sys.argv[1], "rb").read()
it = runtime.Interpreter.from_bytes(data, custom_op_registerers=[], arena_size=16 << 20)
d = it.get_input_details(0)
n_out = int(sys.argv[2])
outs = []
for seed in (0, 1, 2):
    it.set_input(seeded_input(seed, d["shape"], d["dtype"]), 0)
    it.invoke()
    outs.append([it.get_output(k).ravel().tolist() for k in range(n_out)])
print(json.dumps(outs))
"""


@pytest.fixture(scope="session")
def zoo_paths() -> dict[str, Path]:
    return ensure_zoo(ALL_NAMES)


def _model(zoo_paths: dict[str, Path], name: str) -> Model:
    return load_model(zoo_paths[name])


def _weights_of(m: Model, kind: str) -> list[tuple[OperatorInfo, tuple[int, ...]]]:
    return [(o, m.tensors[o.inputs[1]].shape) for o in m.operators if o.name == kind]


def test_zoo_lists_the_six_models_and_the_traits() -> None:
    assert len(ZOO_NAMES) == 6 and set(ALL_NAMES) == set(EXPECTED)
    assert ALL_NAMES == ZOO_NAMES + TRAIT_NAMES
    assert all(zoo.ZOO[n].description for n in ALL_NAMES)


@pytest.mark.parametrize("name", INT8_IO)
def test_model_is_full_int8_per_channel(zoo_paths: dict[str, Path], name: str) -> None:
    m = _model(zoo_paths, name)
    require_int8(m)
    assert m.tensors[m.inputs[0]].dtype == "int8"
    assert all(m.tensors[t].dtype == "int8" for t in m.outputs)
    for op in m.operators:
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        w = m.tensors[op.inputs[1]]
        q = w.quantization
        axis = 0 if op.name == "CONV_2D" else 3  # OHWI vs 1HWC
        assert w.dtype == "int8" and q is not None
        assert q.quantized_dimension == axis and len(q.scale) == w.shape[axis] > 1, op.index
        assert set(q.zero_point) == {0}
        assert m.tensors[op.inputs[2]].dtype == "int32"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_model_has_expected_input_and_ops(zoo_paths: dict[str, Path], name: str) -> None:
    m = _model(zoo_paths, name)
    shape, ops = EXPECTED[name]
    assert m.tensors[m.inputs[0]].shape == shape
    assert dict(Counter(o.name for o in m.operators)) == ops


def _tflite_reference(data: bytes) -> list[list[list[float]]]:
    """Outputs of TensorFlow Lite's reference kernels for the inputs of TFLM_SCRIPT."""
    import tensorflow as tf

    if not hasattr(tf.lite, "Interpreter"):
        pytest.skip("this TensorFlow has no tf.lite.Interpreter: no reference to compare with")
    it = tf.lite.Interpreter(
        model_content=data,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF,
    )
    it.allocate_tensors()
    scope: dict[str, Any] = {"np": np}
    exec(SEEDED_INPUT, scope)
    inp = it.get_input_details()[0]
    outs = []
    for seed in (0, 1, 2):
        it.set_tensor(inp["index"], scope["seeded_input"](seed, inp["shape"], inp["dtype"]))
        it.invoke()
        outs.append([it.get_tensor(d["index"]).ravel().tolist()
                     for d in it.get_output_details()])
    return outs


@pytest.mark.slow
@pytest.mark.tflm
@pytest.mark.parametrize("name", ALL_NAMES)
def test_model_runs_in_tflm_like_tflite_reference(zoo_paths: dict[str, Path], name: str) -> None:
    m = _model(zoo_paths, name)
    r = subprocess.run([sys.executable, "-c", TFLM_SCRIPT, str(zoo_paths[name]),
                        str(len(m.outputs))], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"TFLM failed on {name} (exit {r.returncode}): {r.stderr[-2000:]}"
    tflm = json.loads(r.stdout.strip().splitlines()[-1])
    if name == "dilated_s2b":  # TFLM pads SPACE_TO_BATCH_ND with 0, TFLite with the zero point
        assert tflm != _tflite_reference(m.raw)
    else:
        assert tflm == _tflite_reference(m.raw)
    # not degenerate: different inputs give different outputs, and they are not all clipped
    for k in range(len(m.outputs)):
        assert tflm[0][k] != tflm[1][k] != tflm[2][k]
        assert any(-128 < v < 127 for v in tflm[0][k]), k


def test_mbv2_residual_adds_join_equal_shapes(zoo_paths: dict[str, Path]) -> None:
    m = _model(zoo_paths, "mbv2_035_144")
    for op in (o for o in m.operators if o.name == "ADD"):
        a, b = (m.tensors[i].shape for i in op.inputs)
        assert a == b == m.tensors[op.outputs[0]].shape


def test_pools_dilated_ops(zoo_paths: dict[str, Path]) -> None:
    m = _model(zoo_paths, "pools_dilated")
    first = m.operators[0]
    assert first.name == "CONV_2D" and first.options.padding == 1  # Padding.VALID
    assert m.tensors[first.outputs[0]].shape == (1, 62, 62, 16)
    dilated = [o for o, _ in _weights_of(m, "CONV_2D") if o.options.dilationHFactor == 2]
    assert len(dilated) == 1 and dilated[0].options.dilationWFactor == 2
    # 3x3 dilated by 2 covers 5x5: VALID on 31x31 gives 27x27
    assert m.tensors[dilated[0].outputs[0]].shape == (1, 27, 27, 24)


def test_mcunet_has_5x5_and_7x7_depthwise_at_both_strides(zoo_paths: dict[str, Path]) -> None:
    m = _model(zoo_paths, "mcunet_dw57")
    kinds = {(shape[1], shape[2], o.options.strideH) for o, shape in
             _weights_of(m, "DEPTHWISE_CONV_2D")}
    assert {(5, 5, 1), (5, 5, 2), (7, 7, 1), (7, 7, 2)} <= kinds


def test_odd_stride2_first_conv(zoo_paths: dict[str, Path]) -> None:
    m = _model(zoo_paths, "odd_stride2")
    first = m.operators[0]
    assert first.name == "CONV_2D" and first.options.padding == 0  # Padding.SAME
    assert first.options.strideH == first.options.strideW == 2
    assert m.tensors[m.inputs[0]].shape[1:3] == (97, 97)
    assert m.tensors[first.outputs[0]].shape[1:3] == (49, 49)  # ceil(97 / 2)


@pytest.mark.slow
def test_build_is_byte_reproducible(zoo_paths: dict[str, Path]) -> None:
    """A fresh build of the smallest model (new TensorFlow process) equals the cached bytes."""
    assert build_model("pools_dilated") == zoo_paths["pools_dilated"].read_bytes()


def test_importing_the_zoo_does_not_import_tensorflow() -> None:
    code = "import sys, tflm_patch.zoo; sys.exit(int('tensorflow' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.mark.slow
def test_make_zoo_help_and_report(zoo_paths: dict[str, Path]) -> None:
    r = subprocess.run([sys.executable, str(TOOLS / "make_zoo.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(n in r.stdout for n in ZOO_NAMES)
    assert "--out" in r.stdout and "--force" in r.stdout
    r = subprocess.run([sys.executable, str(TOOLS / "make_zoo.py"), "--out",
                        str(zoo_paths["odd_stride2"].parent), "odd_stride2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    size = zoo_paths["odd_stride2"].stat().st_size
    assert f"{size:,} B" in r.stdout and "input 1x97x97x3" in r.stdout
    assert "CONV_2D 3, DEPTHWISE_CONV_2D 2" in r.stdout
    r = subprocess.run([sys.executable, str(TOOLS / "make_zoo.py"), "no_such_model"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown model 'no_such_model'" in r.stderr


# ------------------------------------------------------- the cache, with a fake builder


@pytest.fixture
def fake_builds(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace the TensorFlow child by one writing b"fake <name> <n>"; records each call."""
    calls: list[list[str]] = []

    def fake(names: list[str], out_dir: Path) -> Iterator[tuple[str, float]]:
        calls.append(list(names))
        for name in names:
            (out_dir / f"{name}.tflite").write_bytes(f"fake {name} {len(calls)}".encode())
            yield name, 0.5

    monkeypatch.setattr(zoo, "_run_builder", fake)
    monkeypatch.setattr(zoo, "_tensorflow_installed", lambda: True)
    return calls


def test_cache_builds_missing_then_reuses(fake_builds: list[list[str]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFLM_PATCH_ZOO_DIR", str(tmp_path))
    assert zoo.zoo_dir() == tmp_path
    paths = ensure_zoo(["odd_stride2", "pools_dilated"])
    assert fake_builds == [["odd_stride2", "pools_dilated"]]  # one child for both
    assert paths["odd_stride2"].read_bytes() == b"fake odd_stride2 1"
    stamp = json.loads((tmp_path / "odd_stride2.json").read_text())
    assert stamp["bytes"] == 18 and stamp["key"] == zoo.model_key("odd_stride2")
    assert ensure_model("odd_stride2") == tmp_path / "odd_stride2.tflite"
    assert len(fake_builds) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock", "odd_stride2.json", "odd_stride2.tflite", "pools_dilated.json",
        "pools_dilated.tflite"]  # no temporary files left


def test_cache_rebuilds_stale_key(fake_builds: list[list[str]], tmp_path: Path) -> None:
    ensure_model("odd_stride2", directory=tmp_path)
    stamp = tmp_path / "odd_stride2.json"
    stamp.write_text(stamp.read_text().replace(zoo.model_key("odd_stride2"), "0" * 64))
    ensure_model("odd_stride2", directory=tmp_path)
    assert fake_builds == [["odd_stride2"], ["odd_stride2"]]
    assert (tmp_path / "odd_stride2.tflite").read_bytes() == b"fake odd_stride2 2"


def test_cache_rebuilds_changed_file(fake_builds: list[list[str]], tmp_path: Path) -> None:
    path = ensure_model("odd_stride2", directory=tmp_path)
    path.write_bytes(b"fake odd_stride2 X")  # same size, other bytes
    ensure_model("odd_stride2", directory=tmp_path)
    assert len(fake_builds) == 2 and path.read_bytes() == b"fake odd_stride2 2"


def test_cache_force_rebuilds(fake_builds: list[list[str]], tmp_path: Path) -> None:
    ensure_model("odd_stride2", directory=tmp_path)
    ensure_model("odd_stride2", directory=tmp_path, force=True)
    assert len(fake_builds) == 2


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match=r"unknown zoo model 'nope'; choose from: mbv2_035_144"):
        ensure_model("nope", directory=tmp_path)
    with pytest.raises(ZooError, match="unknown zoo model"):
        build_model("nope")


def test_without_tensorflow_stale_models_are_kept_missing_ones_fail(
    fake_builds: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ensure_model("odd_stride2", directory=tmp_path)
    stamp = tmp_path / "odd_stride2.json"
    stamp.write_text(stamp.read_text().replace(zoo.model_key("odd_stride2"), "0" * 64))
    monkeypatch.setattr(zoo, "_tensorflow_installed", lambda: False)
    assert ensure_model("odd_stride2", directory=tmp_path).read_bytes() == b"fake odd_stride2 1"
    assert "TensorFlow is not installed to rebuild it" in caplog.text
    with pytest.raises(ZooError, match="zoo model mcunet_dw57 must be built and TensorFlow "
                       r"is not installed \(pip install tensorflow-cpu==2.21.0\)"):
        ensure_model("mcunet_dw57", directory=tmp_path)
    assert len(fake_builds) == 1


# ------------------------------------------------- the child process, failing on purpose


def test_failing_build_child_names_model_and_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "print('built odd_stride2 0.1', flush=True); raise RuntimeError('converter broke')"
    monkeypatch.setattr(zoo, "_child_command", lambda out, names: [sys.executable, "-c", code])
    with pytest.raises(ZooError, match=r"^building zoo model mcunet_dw57 failed \(exit 1\): "
                       r"RuntimeError: converter broke$"):
        list(zoo._run_builder(["odd_stride2", "mcunet_dw57"], Path(".")))


def test_hanging_build_child_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import time; time.sleep(60)"
    monkeypatch.setattr(zoo, "_child_command", lambda out, names: [sys.executable, "-c", code])
    monkeypatch.setattr(zoo, "BUILD_TIMEOUT", 1.0)
    with pytest.raises(ZooError, match=r"odd_stride2 failed \(timed out after 1 s\)"):
        build_model("odd_stride2")
