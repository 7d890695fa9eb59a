"""The wheel: built from a copy of the sources, installed (not editable) into a fresh virtual
environment, it runs convert, validate (the C++ kernel in x86 TFLM when the TFLM headers are
configured) and export --arduino, builds a zoo model, and reads nothing from the checkout:
an audit hook in the installed package's process fails the command on any file opened, or
command run, under the checkout."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tflm_patch.model import load_model
from tflm_patch.tflm_build import kernel_or_reason
from tflm_patch.validate import NUMPY_SPLIT, TFLM_KERNEL

pytestmark = [
    pytest.mark.slow,
    # built without build isolation: no package index needed, setuptools must be here
    pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                       reason="setuptools is not installed: cannot build the wheel offline"),
]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ("csrc", "arduino")
ZOO_MODEL = "odd_stride2"  # the memory objective patches it in about a second
SKETCH_FILES = ["model_data.cpp", "model_data.h", "model_ops.h", "model_settings.h",
                "test_image.cpp", "test_image.h"]
TIMEOUT = 1200.0

# Runs the `tflm-patch` CLI in the installed package; exit 99 when it opened a file or ran a
# command under the checkout (argv[1]).
RUNNER = """
import os, sys
root = sys.argv[1]
seen = []
def under_root(value):
    return isinstance(value, (str, bytes, os.PathLike)) and \\
        os.path.abspath(os.fsdecode(value)).startswith(root)
def hook(event, args):
    if event == "open" and args and under_root(args[0]):
        seen.append(os.fsdecode(args[0]))
    elif event == "subprocess.Popen" and root in repr(args[1]):
        seen.append(repr(args[1]))
sys.addaudithook(hook)
from tflm_patch.cli import main
code = main(sys.argv[2:])
if seen:
    print("read from the checkout:", *sorted(set(seen)), file=sys.stderr)
    code = 99
sys.exit(code)
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    bin: Path
    site: Path  # the environment's site-packages/tflm_patch
    work: Path
    env: dict[str, str]

    def run(self, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.python), "-c", RUNNER, str(ROOT) + os.sep, *args],
                              cwd=self.work, env=env or self.env, capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)


def _copy_sources(dest: Path) -> None:
    """What the wheel is built from, without caches or build leftovers of the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "tflm_patch", dest / "tflm_patch",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _call(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT, check=False)
    assert run.returncode == 0, f"{cmd}: {run.stdout[-1500:]}{run.stderr[-1500:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TFLM_PATCH_ZOO_DIR"] = str(tmp / "zoo")  # the zoo is built by the installed package
    _copy_sources(tmp / "src")
    _call([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "-w", str(tmp / "dist"), str(tmp / "src")], tmp, env)
    wheel = next((tmp / "dist").glob("tflm_patch-*.whl"))
    # the environment sees the dependencies installed here (TensorFlow, tflite-micro, ...)
    # but gets its own, non-editable tflm_patch
    _call([sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")], tmp, env)
    python = tmp / "venv" / "bin" / "python"
    _call([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
          tmp, env)
    work = tmp / "work"
    work.mkdir()
    site = Path(subprocess.run(
        [str(python), "-c", "import tflm_patch, os; print(os.path.dirname(tflm_patch.__file__))"],
        cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip())
    return Installed(wheel, python, python.parent, site, work, env)


@pytest.fixture(scope="module")
def patched(installed: Installed) -> Path:
    out = installed.work / "patched.tflite"
    run = installed.run("convert", f"zoo:{ZOO_MODEL}", "-o", str(out), "--objective", "memory")
    assert run.returncode == 0, run.stderr
    return out


def test_wheel_holds_every_source_file(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for data in PACKAGE_DATA:
        files = [p for p in (ROOT / "tflm_patch" / data).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
        assert files
        missing = [str(p.relative_to(ROOT)) for p in files
                   if str(p.relative_to(ROOT)) not in names]
        assert not missing


def test_package_is_imported_from_the_environment(installed: Installed) -> None:
    assert installed.site == installed.python.parent.parent / "lib" / \
        f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "tflm_patch"
    run = subprocess.run([str(installed.bin / "tflm-patch"), "doctor"], cwd=installed.work,
                         env=installed.env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].split()[-1] == str(installed.site)


def test_convert_builds_a_zoo_model_and_patches_it(installed: Installed,
                                                   patched: Path) -> None:
    assert (installed.work / ".." / "zoo" / f"{ZOO_MODEL}.tflite").resolve().is_file()
    model = load_model(patched)
    assert any(op.name == "PATCH_EXEC" for op in model.operators)


def test_validate_runs_patch_exec_in_tflm(installed: Installed, patched: Path) -> None:
    kernel, reason = kernel_or_reason()
    if kernel is None:
        pytest.skip(f"the C++ kernel cannot be built here: {reason}")
    run = installed.run("validate", f"zoo:{ZOO_MODEL}", str(patched), "--random", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert TFLM_KERNEL in run.stdout
    assert "verdict: PASS (2/2 inputs bit-identical" in run.stdout


def test_validate_without_headers_runs_the_numpy_reference(installed: Installed,
                                                           patched: Path) -> None:
    env = {k: v for k, v in installed.env.items() if k != "TFLM_ROOT"}
    run = installed.run("validate", f"zoo:{ZOO_MODEL}", str(patched), "--random", "1",
                        env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{NUMPY_SPLIT} (TFLM_ROOT not set" in run.stdout
    assert "verdict: PASS (1/1 inputs bit-identical" in run.stdout


def test_export_arduino(installed: Installed, patched: Path) -> None:
    sketch = installed.work / "sketch"
    run = installed.run("export", str(patched), "--arduino", str(sketch))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in sketch.iterdir()) == SKETCH_FILES
    assert "PATCH_EXEC" in (sketch / "model_ops.h").read_text()


def test_python_api_converts_bytes(installed: Installed, patched: Path) -> None:
    code = ("import sys, tflm_patch\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "out = tflm_patch.convert(data, objective='memory')\n"
            "sys.stdout.buffer.write(out)\n")
    model = installed.work / ".." / "zoo" / f"{ZOO_MODEL}.tflite"
    run = subprocess.run([str(installed.python), "-c", code, str(model)], cwd=installed.work,
                         env=installed.env, capture_output=True, timeout=TIMEOUT, check=False)
    assert run.returncode == 0, run.stderr[-1500:]
    assert run.stdout == patched.read_bytes()
