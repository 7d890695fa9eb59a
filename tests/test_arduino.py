"""The Arduino library (tflm_patch/arduino/tflm_patch): its PATCH_EXEC sources stay identical
to tflm_patch/csrc/ (tools/sync_arduino.py), it and the person detection example compile for the
Nano 33 BLE's Cortex-M4 against TFLM's headers (current, and February 2023 as in
Arduino_TensorFlowLite) with the export's model files, and the glue compiles for the
Cortex-M4 too. Compile checks skip with the reason when the headers or the cross compiler
are missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import m4_arduino
import pytest
from embedded_helpers import (
    ARDUINO_LIBRARY,
    EXAMPLE,
    M4_HARD_FLAGS,
    NANO33BLE_FLAGS,
    REPO_ROOT,
    STUBS,
    WARNINGS,
    compile_cc,
    compiler,
    example_model,
    tflm_tree,
)

from tflm_patch import export
from tflm_patch.model import load_model

SYNC = REPO_ROOT / "tools" / "sync_arduino.py"
OPS = Path("tflm_patch/csrc/custom_ops/patch_exec")
COPY = Path("tflm_patch/arduino/tflm_patch/src/custom_ops/patch_exec")


def _sync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SYNC), *args], capture_output=True, text=True,
                          check=False)


# ----------------------------------------------------------------------------- sync


def test_library_sources_are_in_sync_with_csrc() -> None:
    r = _sync()
    assert r.returncode == 0, r.stdout + r.stderr


def _tree(tmp_path: Path) -> Path:
    """A copy of csrc/ and the library, in sync."""
    for d in (OPS, COPY):
        shutil.copytree(REPO_ROOT / d, tmp_path / d)
    assert _sync("--root", str(tmp_path), "--write").returncode == 0
    return tmp_path


@pytest.mark.parametrize(("drift", "expected"), [
    ("edited", f"{COPY}/patch_exec_core.cpp: differs from its source"),
    ("deleted", f"{COPY}/tflm/patch_exec_op.h: no copy of its source"),
    ("added", f"{COPY}/patch_exec_extra.h: has no source in csrc/ any more"),
    ("new source", f"{COPY}/patch_exec_new.h: no copy of its source"),
])
def test_sync_check_fails_on_drift(tmp_path: Path, drift: str, expected: str) -> None:
    root = _tree(tmp_path)
    if drift == "edited":
        (root / OPS / "patch_exec_core.cc").write_text("// changed\n")
    elif drift == "deleted":
        (root / COPY / "tflm" / "patch_exec_op.h").unlink()
    elif drift == "added":
        (root / COPY / "patch_exec_extra.h").write_text("// stale\n")
    else:
        (root / OPS / "patch_exec_new.h").write_text("// new\n")
    r = _sync("--root", str(root))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [expected]
    assert _sync("--root", str(root), "--write").returncode == 0
    assert _sync("--root", str(root)).returncode == 0


def test_python_registerer_is_not_in_the_library() -> None:
    assert (REPO_ROOT / OPS / "tflm" / "python_registerer.cc").is_file()
    assert not list((REPO_ROOT / COPY).rglob("python_registerer*"))


def test_library_properties() -> None:
    props = dict(line.split("=", 1) for line in
                 (ARDUINO_LIBRARY / "library.properties").read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    for key in ("name", "version", "author", "maintainer", "sentence", "paragraph",
                "category", "url", "architectures", "includes"):
        assert props.get(key), key
    assert props["name"] == "tflm_patch"
    assert (ARDUINO_LIBRARY / "src" / props["includes"]).is_file()


def test_arduino_sources_are_clang_formatted() -> None:
    tool = shutil.which("clang-format")
    if tool is None:
        pytest.skip("clang-format not installed (pip install clang-format)")
    files = [ARDUINO_LIBRARY / "src" / "tflm_patch.h", *sorted(STUBS.glob("*.[ch]*")),
             *sorted((REPO_ROOT / "tests" / "m4_harness").glob("*.[ch]*"))]
    r = subprocess.run([tool, "--style=file", "--dry-run", "--Werror", *map(str, files)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    sketch = EXAMPLE / "person_detection_patched.ino"
    r = subprocess.run([tool, "--style=file", "--dry-run", "--Werror",
                        "--assume-filename=sketch.cpp"], input=sketch.read_text(),
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- compiles


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["current", "feb2023"])
def test_glue_compiles_for_cortex_m4(tmp_path: Path, tree: str) -> None:
    t = tflm_tree(tree)
    tool = compiler("arm-none-eabi-g++")
    compile_cc([tool, *M4_HARD_FLAGS, f"-std={t.std}", *WARNINGS, "-DTF_LITE_STATIC_MEMORY",
                "-I", str(REPO_ROOT / "tflm_patch" / "csrc"), *t.include_flags(), "-c",
                str(REPO_ROOT / OPS / "tflm" / "patch_exec_op.cc"), "-o",
                str(tmp_path / "glue.o")])


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["current", "feb2023"])
def test_library_compiles_for_nano33ble(tmp_path: Path, tree: str) -> None:
    """Every .cpp of the library (core + glue) with the Nano 33 BLE's flags."""
    t = tflm_tree(tree)
    tool = compiler("arm-none-eabi-g++")
    sources = sorted((ARDUINO_LIBRARY / "src").rglob("*.cpp"))
    assert len(sources) >= 2
    for k, src in enumerate(sources):
        compile_cc([tool, *NANO33BLE_FLAGS, f"-std={t.std}", *WARNINGS,
                    "-DTF_LITE_STATIC_MEMORY", "-I", str(ARDUINO_LIBRARY / "src"),
                    *t.include_flags(), "-c", str(src), "-o", str(tmp_path / f"{k}.o")])


@pytest.fixture(scope="module")
def sketch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example with its model files, as `tflm-patch export --arduino` writes them."""
    data, label, image_arg = example_model()
    d = tmp_path_factory.mktemp("sketch") / "person_detection_patched"
    shutil.copytree(EXAMPLE, d)
    model = load_model(data)
    image = (export.seeded_image(model, int(image_arg[5:])) if image_arg.startswith("seed:")
             else export.file_image(model, Path(image_arg)))
    result = export.export_model(data, source=f"{label} (patched)", arduino=True,
                                 image=image)
    for f in result.files:
        (d / f.name).write_text(f.text)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("camera", ["camera", "no_camera"])
@pytest.mark.parametrize("tree", ["current", "feb2023"])
def test_example_compiles_for_nano33ble(tmp_path: Path, sketch: Path, tree: str,
                                        camera: str) -> None:
    """The sketch as C++, with stand-ins for Arduino.h and Arduino_OV767X.h, the library
    and the exported headers."""
    t = tflm_tree(tree)
    tool = compiler("arm-none-eabi-g++")
    flag = f"-DTFLM_PATCH_USE_CAMERA={int(camera == 'camera')}"
    compile_cc([tool, *NANO33BLE_FLAGS, f"-std={t.std}", *WARNINGS, "-DTF_LITE_STATIC_MEMORY",
                flag, "-I", str(STUBS), "-I", str(ARDUINO_LIBRARY / "src"), "-I", str(sketch),
                *t.include_flags(), "-x", "c++", "-c",
                str(sketch / "person_detection_patched.ino"), "-o", str(tmp_path / "s.o")])


def test_example_model_files_compile_for_nano33ble(tmp_path: Path, sketch: Path) -> None:
    tool = compiler("arm-none-eabi-g++")
    for src in (sketch / "model_data.cpp", sketch / "test_image.cpp"):
        compile_cc([tool, *NANO33BLE_FLAGS, "-std=gnu++14", *WARNINGS, "-c", str(src), "-o",
                    str(tmp_path / f"{src.stem}.o")])


def test_example_says_how_to_generate_its_files(tmp_path: Path) -> None:
    """Without the exported files the sketch stops with a message naming the command."""
    tool = compiler("c++")
    r = subprocess.run([tool, "-std=gnu++17", "-I", str(STUBS), "-x", "c++", "-fsyntax-only",
                        "-DTFLM_PATCH_USE_CAMERA=0", "-I", str(ARDUINO_LIBRARY / "src"),
                        str(EXAMPLE / "person_detection_patched.ino")],
                       capture_output=True, text=True, check=False, cwd=tmp_path)
    assert r.returncode != 0
    assert "tflm-patch export --arduino" in r.stderr


@pytest.mark.slow
def test_example_runs_on_qemu_with_arduino_tensorflowlite(tmp_path: Path,
                                                         sketch: Path) -> None:
    """The whole sketch with the real Arduino_TensorFlowLite (Feb 2023 TFLM, CMSIS-NN) on
    an emulated Cortex-M4: TFLM's expected scores for person.bmp, and the arena TFLM uses
    fits the declared kTensorArenaSize."""
    src, reason = m4_arduino.source_dir_or_reason()
    if src is None:
        pytest.skip(reason)
    reason = m4_arduino.tool_reason()
    if reason:
        pytest.skip(reason)
    run = m4_arduino.run_exported_sketch(sketch, tmp_path)
    declared = int(re.search(r"kTensorArenaSize = (\d+);",
                             (sketch / "model_settings.h").read_text()).group(1))
    assert run.arena_declared == declared
    assert run.arena_used <= declared, run.output
    if example_model()[1] == "person_detect":
        assert (run.person, run.no_person) == (113, -113), run.output
