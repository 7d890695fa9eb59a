"""The dilated-convolution pass: SPACE_TO_BATCH_ND -> convolution -> BATCH_TO_SPACE_ND made by
TensorFlow becomes one dilated convolution exactly when it is one in TFLM (bytes of the x86
TFLM outputs equal), and is left alone otherwise."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from dilate_cases import CASES, Case

from tflm_patch.dilate import Fold, find_folds, fold, fold_model
from tflm_patch.model import Model, load_model
from tflm_patch.rewrite import to_checked_bytes
from tflm_patch.zoo import zoo_dir

CASE_FILE = Path(__file__).with_name("dilate_cases.py")
BY_NAME = {c.name: c for c in CASES}


def _key() -> str:
    versions = []
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "numpy"):
        try:
            versions.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return hashlib.sha256(CASE_FILE.read_bytes() + " ".join(versions).encode()).hexdigest()[:24]


@pytest.fixture(scope="session")
def case_dir() -> Path:
    """The cases built once (one TensorFlow process), cached by this generator's source."""
    out = zoo_dir() / "test_fixtures" / f"dilate-{_key()}"
    if all((out / f"{c.name}.tflite").is_file() for c in CASES):
        return out
    pytest.importorskip("tensorflow", reason="the dilated-convolution cases are made with "
                        "TensorFlow")
    work = out.with_name(f".{out.name}.{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": "-1"}
    r = subprocess.run([sys.executable, str(CASE_FILE), str(work)], capture_output=True,
                       text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    if not out.exists():
        os.replace(work, out)
    return out


def _model(case_dir: Path, name: str) -> Model:
    return load_model(case_dir / f"{name}.tflite")


def _tflm_outputs(data: bytes, model: Model) -> list[bytes]:
    pytest.importorskip("tflite_micro", reason="x86 TFLM (the tflite-micro wheel) is needed")
    from tflm_patch.tflm_runner import run_model

    shape = model.tensors[model.inputs[0]].shape
    outs = []
    for seed in (0, 1, 2):
        x = np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)
        outs += [o.tobytes() for o in run_model(data, [x])]
    return outs


def _ops(m: Model) -> list[str]:
    return [o.name for o in m.operators]


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_tensorflow_writes_the_triple(case_dir: Path, name: str) -> None:
    ops = _ops(_model(case_dir, name))
    assert ops[:3] == ["SPACE_TO_BATCH_ND", "DEPTHWISE_CONV_2D" if BY_NAME[name].kind == "dw"
                       else "CONV_2D", "BATCH_TO_SPACE_ND"]


def _expected_options(case: Case) -> tuple[int, int, int, int, int]:
    padding = 0 if case.padding == "SAME" else 1
    return (padding, 1, 1, *case.rate)


@pytest.mark.first_case_quick
@pytest.mark.tflm
@pytest.mark.parametrize("name", [c.name for c in CASES if c.folds])
def test_fold_is_one_dilated_conv_bit_exact_in_tflm(case_dir: Path, name: str) -> None:
    case = BY_NAME[name]
    original = _model(case_dir, name)
    folded = load_model(fold(original.raw))
    assert _ops(folded) == ["DEPTHWISE_CONV_2D" if case.kind == "dw" else "CONV_2D"]
    o = folded.operators[0].options
    assert (o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor) \
        == _expected_options(case)
    assert folded.inputs == (folded.operators[0].inputs[0],)
    assert folded.tensors[folded.outputs[0]].shape == \
        original.tensors[original.outputs[0]].shape
    s2b, conv, b2s = original.operators[:3]
    dropped = {*s2b.inputs[1:], *b2s.inputs[1:], s2b.outputs[0], conv.outputs[0]}
    assert len(folded.tensors) == len(original.tensors) - len(dropped)
    assert _tflm_outputs(folded.raw, folded) == _tflm_outputs(original.raw, original)


@pytest.mark.parametrize("name", [c.name for c in CASES if not c.folds])
def test_non_equivalent_triple_is_left_unchanged(case_dir: Path, name: str) -> None:
    original = _model(case_dir, name)
    assert find_folds(original) == []
    assert fold_model(original) is original
    assert fold(original.raw) == original.raw


@pytest.mark.parametrize("name", ["conv_k3_r2_same_zp", "dw_k3_r2_same_zp"])
def test_same_reason_names_the_zero_point(case_dir: Path, name: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="tflm_patch.dilate")
    find_folds(_model(case_dir, name))
    assert "SAME needs the zero point as padding; TFLM's SPACE_TO_BATCH_ND pads with 0 " \
           "(input zero point -1)" in caplog.text


@pytest.mark.parametrize(("name", "reason"), [
    ("crop_not_dilated", "the paddings and crops are neither SAME nor VALID"),
    ("shared_intermediate", "is read outside the triple"),
])
def test_other_reasons(case_dir: Path, name: str, reason: str,
                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="tflm_patch.dilate")
    find_folds(_model(case_dir, name))
    assert reason in caplog.text


@pytest.mark.slow
@pytest.mark.tflm
def test_same_with_nonzero_zero_point_would_not_be_exact(case_dir: Path) -> None:
    """Why SAME needs zero point 0: folded anyway, TFLM's outputs differ (the convolution
    pads with the zero point, TFLM's SPACE_TO_BATCH_ND with 0)."""
    from tflm_patch import dilate

    original = _model(case_dir, "conv_k3_r2_same_zp")
    obj = copy.deepcopy(original.obj)
    dilate._apply(obj, Fold(0, 1, 2, (2, 2), 0))
    obj.subgraphs[0].operators = [obj.subgraphs[0].operators[1]]
    dilate.prune(obj)
    forced = load_model(to_checked_bytes(obj))
    assert _tflm_outputs(forced.raw, forced) != _tflm_outputs(original.raw, original)


def test_declared_batch_1_sub_images_are_left_alone(case_dir: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A model converted with an unknown batch declares the sub-images as batch 1 (TFLM,
    which does not resize, writes past that tensor): not folded."""
    original = _model(case_dir, "conv_k3_r2_valid")
    obj = copy.deepcopy(original.obj)
    tensors = obj.subgraphs[0].tensors
    for t in (original.operators[0].outputs[0], original.operators[1].outputs[0]):
        tensors[t].shape = [1, *list(tensors[t].shape)[1:]]
    caplog.set_level("DEBUG", logger="tflm_patch.dilate")
    assert find_folds(load_model(to_checked_bytes(obj))) == []
    assert "the SPACE_TO_BATCH_ND output shape in the file is not the one computed" in caplog.text
