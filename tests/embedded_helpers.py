"""Helpers of the embedded tests (export, Arduino library, Cortex-M4): TFLM header trees
from the environment, cross-compiler flags, a patched model without ../shared."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import m4
import pytest

from tflm_patch.model import Model, load_model
from tflm_patch.zoo import ensure_model

REPO_ROOT = Path(__file__).resolve().parents[1]
STUBS = REPO_ROOT / "tests" / "arduino_stubs"
ARDUINO_LIBRARY = REPO_ROOT / "tflm_patch" / "arduino" / "tflm_patch"
EXAMPLE = ARDUINO_LIBRARY / "examples" / "person_detection_patched"

WARNINGS = ("-Wall", "-Wextra", "-Werror")
# The Nano 33 BLE's C++ flags (ArduinoCore-mbed, variants/ARDUINO_NANO33BLE/cxxflags.txt):
# softfp, C++14, unsigned char, no RTTI/exceptions.
NANO33BLE_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=softfp", "-mfpu=fpv4-sp-d16",
                   "-Os", "-fno-rtti", "-fno-exceptions", "-funsigned-char", "-Wno-psabi")
M4_HARD_FLAGS = (*m4.M4_CPU_FLAGS, "-Os", "-fno-rtti", "-fno-exceptions", "-Wno-psabi")


@dataclass(frozen=True)
class TflmTree:
    """A TFLM source tree whose headers a compile check uses."""

    name: str  # "current" or "feb2023"
    root: Path
    extra: tuple[Path, ...]
    std: str  # the C++ standard the tree needs (current TFLM: C++17)

    def include_flags(self) -> list[str]:
        return [a for d in (self.root, *self.extra) for a in ("-isystem", str(d))]


TREES = {
    "current": ("TFLM_ROOT", "TFLM_EXTRA_INCLUDES", "gnu++17",
                "tools/get_tflm_sources.sh prints them; see DEVELOPERS.md"),
    # Arduino_TensorFlowLite's TFLM (February 2023), built with the Nano's gnu++14
    "feb2023": ("TFLM_2023_ROOT", "TFLM_2023_EXTRA_INCLUDES", "gnu++14",
                "DEVELOPERS.md, 'Compile check against February 2023 TFLM'"),
}


def tflm_tree(name: str) -> TflmTree:
    """The tree from the environment; skips the test with the reason when unset."""
    root_var, extra_var, std, how = TREES[name]
    root, extra = os.environ.get(root_var, ""), os.environ.get(extra_var, "")
    if not root or not extra:
        pytest.skip(f"{root_var} and {extra_var} not set: no {name} TFLM headers to compile "
                    f"against ({how})")
    return TflmTree(name, Path(root), tuple(Path(p) for p in extra.split(":") if p), std)


def compiler(name: str) -> str:
    """'c++' (x86) or 'arm-none-eabi-g++'; skips when it is not installed."""
    if shutil.which(name) is None:
        pytest.skip(f"{name} not installed (apt-get install {' '.join(m4.APT_PACKAGES)})")
    return name


def compile_cc(cmd: Sequence[str]) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}{r.stderr}"


@cache
def patched_zoo(name: str = "odd_stride2") -> Model:
    """A zoo model patched with the default plan (no ../shared needed)."""
    return m4.patched(load_model(ensure_model(name)))


@cache
def example_model() -> tuple[bytes, str, str]:
    """(patched model bytes, label, test image argument) for the Arduino example:
    person_detect and person.bmp from ../shared/models when present, else the zoo's
    mbv1_025_96 (96x96, like person_detect) and a seeded image."""
    pd, image = m4.SHARED_MODELS / "person_detect.tflite", m4.SHARED_MODELS / "person.bmp"
    if pd.is_file() and image.is_file():
        return m4.patched(load_model(pd)).raw, "person_detect", str(image)
    return patched_zoo("mbv1_025_96").raw, "zoo:mbv1_025_96", "seed:20211029"
