"""`tflm-patch convert` and `validate` end to end (x86 TFLM for the non-PATCH_EXEC ops)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file, shared_model_path

from tflm_patch import patch_format as pf
from tflm_patch.cli import main
from tflm_patch.evaluate import patched_op_index
from tflm_patch.model import Model, OperatorInfo, load_model
from tflm_patch.rewrite import CUSTOM_CODE, plan_metadata
from tflm_patch.zoo import ZOO_NAMES, ensure_model

pytestmark = pytest.mark.tflm


def _convert(src: Path, out: Path, *extra: str) -> int:
    return main(["convert", str(src), "-o", str(out), *extra])


@pytest.fixture(scope="module")
def person_patched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    src = shared_model_path("person_detect")
    out = tmp_path_factory.mktemp("pd") / "person_patched.tflite"
    assert _convert(src, out) == 0
    return src, out


@pytest.mark.slow
@pytest.mark.parametrize(("image", "expected"), [("person.bmp", "[-113, 113]"),
                                                 ("no_person.bmp", "[57, -57]")])
def test_person_detect_validate_images(person_patched: tuple[Path, Path], image: str,
                                       expected: str, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    src, out = person_patched
    rc = main(["-v", "validate", str(src), str(out), "--input", str(shared_file(image))])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "bit-identical" in text and f"outputs {expected}" in text and "PASS" in text


def test_person_detect_file_structure(person_patched: tuple[Path, Path]) -> None:
    src, out = person_patched
    a, b = load_model(src), load_model(out)
    meta = plan_metadata(b)
    assert meta is not None
    first, last = meta["stage"]["first_op"], meta["stage"]["last_op"]
    stages = [(first, last), *((f["first_op"], f["last_op"])
                               for f in (*meta["patched_stages"], *meta["fused_stages"]))]
    where = patched_op_index(len(a.operators), stages)
    pes = [op.index for op in b.operators if op.name == CUSTOM_CODE]
    assert pes == sorted(where[s] for s, _ in stages)
    pe = b.operators[where[first]]
    assert pe.name == CUSTOM_CODE
    # every other operator is untouched (same op, same tensor names, same options)
    covered = {i for s, e in stages for i in range(s, e + 1)}
    before = [op for op in a.operators if op.index not in covered]
    after = [b.operators[where[op.index]] for op in before]
    assert not {op.index for op in after} & set(pes)
    for x, y in zip(before, after, strict=True):
        assert x.name == y.name and repr(vars(x.options)) == repr(vars(y.options))
        assert [a.tensors[t].name for t in x.inputs] == [b.tensors[t].name for t in y.inputs]
    # weights packed, not duplicated: a layer's bytes appear once in each file
    o = pf.decode(pe.custom_options or b"")
    w = _layer0_weights(b, pe)
    assert o.packed and b.raw.count(w) == 1 and a.raw.count(w) == 1
    # no dead tensors or buffers
    used = {t for op in b.operators for t in (*op.inputs, *op.outputs)} | set(b.inputs)
    assert used == set(range(len(b.tensors)))
    assert sorted({t.buffer for t in b.tensors} | {0} | {
        m.buffer for m in b.obj.metadata}) == list(range(len(b.obj.buffers)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_convert_validate_random(name: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = ensure_model(name)
    out = tmp_path / "p.tflite"
    assert _convert(src, out) == 0
    rc = main(["-v", "validate", str(src), str(out), "--random", "2", "--seed", "5"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert text.count("bit-identical max") == 2


@pytest.mark.slow
def test_mobilenet_v2_validate_three_seeds(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_model_path("mobilenet_v2_int8_224_nchw")
    out = tmp_path / "p.tflite"
    assert _convert(src, out) == 0
    rc = main(["-v", "validate", str(src), str(out), "--random", "3"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert text.count("bit-identical max") == 3


def _layer0_weights(model: Model, pe: OperatorInfo) -> bytes:
    """The bytes of layer 0's weights in the PATCH_EXEC's (packed) int8 input."""
    o = pf.decode(pe.custom_options or b"")
    index, _, shape, offset = pf.constant_slices(o, 0)[0]
    data = model.buffer_bytes(pe.inputs[index])
    assert data is not None
    return data[offset:offset + math.prod(shape)]


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, -1], ids=["patched_stage", "last_fused_stage"])
def test_validate_catches_a_wrong_weight(which: int, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = ensure_model("odd_stride2")
    out = tmp_path / "p.tflite"
    assert _convert(src, out, "--split-op", "1", "--grid", "2x2") == 0
    model = load_model(out)
    pes = [op for op in model.operators if op.name == CUSTOM_CODE]
    assert len(pes) > 1  # the convolutions after the stage are fused too
    pe = pes[which]
    w = _layer0_weights(model, pe)
    flipped = bytes([w[0] ^ 0x40]) + w[1:]
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(model.raw.replace(w, flipped))
    rc = main(["-v", "validate", str(src), str(bad), "--random", "2"])
    text = capsys.readouterr().out
    assert rc == 1 and "MISMATCH" in text and "FAIL" in text


def test_small_model_copied_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    src = shared_model_path("hello_world_int8")
    out = tmp_path / "p.tflite"
    assert _convert(src, out) == 0
    assert out.read_bytes() == src.read_bytes()
    assert "left unchanged" in capsys.readouterr().out


BAD_CASES = ["float", "corrupt", "unsupported split", "impossible budget", "bad grid"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_error_and_no_file(case: str, tmp_path: Path, float_model_bytes: bytes,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = ensure_model("odd_stride2")
    extra: list[str] = []
    if case == "float":
        src = tmp_path / "float.tflite"
        src.write_bytes(float_model_bytes)
        message = "float model"
    elif case == "corrupt":
        src = tmp_path / "corrupt.tflite"
        src.write_bytes(ensure_model("odd_stride2").read_bytes()[:5000])
        message = "error:"
    elif case == "unsupported split":
        extra = ["--split-op", "5"]
        message = "MEAN"
    elif case == "impossible budget":
        extra = ["--budget", "1KiB"]
        message = "impossible budget"
    else:
        extra = ["--split-op", "1", "--grid", "99x1"]
        message = "finer than"
    out = tmp_path / "out.tflite"
    assert _convert(src, out, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.glob(".out.tflite*")) == []


@pytest.mark.slow
def test_plan_prints_front_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "mem.png"
    assert main(["plan", str(ensure_model("mbv1_025_96")), "--objective", "memory",
                 "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "chosen (smallest arena" in text and "<- chosen" in text and "Pareto front" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_input_size_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    src = ensure_model("odd_stride2")
    out = tmp_path / "p.tflite"
    assert _convert(src, out) == 0
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros(7, np.int8))
    assert main(["-v", "validate", str(src), str(out), "--input", str(bad)]) == 2
    assert "needs" in capsys.readouterr().err
