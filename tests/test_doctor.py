"""`tflm-patch doctor`: one line per piece, what a missing piece switches off, exit 0."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tflm_patch import cli_doctor
from tflm_patch.cli import main
from tflm_patch.cli_doctor import (
    check_arduino_sources,
    check_compiler,
    check_tflm_headers,
    check_tflm_wheel,
    format_check,
    run_checks,
)
from tflm_patch.errors import TflmPatchError
from tflm_patch.tflm_build import wheel_runtime_library

ROOT = Path(__file__).resolve().parents[1]

NAMES = ["tflm-patch", "TensorFlow", "tflite-micro wheel", "TFLM headers", "C++ compiler",
         "arm-none-eabi toolchain", "QEMU", "Arduino_TensorFlowLite", "clang-format"]


def test_doctor_checks_every_piece_in_order() -> None:
    assert [c.name for c in run_checks({})] == NAMES


def test_doctor_prints_one_line_per_piece_and_exits_0(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(NAMES)
    assert all(line.split()[0] in ("ok", "missing") for line in lines)


def test_doctor_json_lists_every_piece(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in doc] == NAMES
    assert set(doc[0]) == {"name", "ok", "detail", "switches_off"}
    assert doc[0]["ok"] is True  # the package itself


def test_missing_headers_say_what_they_switch_off() -> None:
    c = check_tflm_headers({})
    assert not c.ok
    assert "TFLM_ROOT and TFLM_EXTRA_INCLUDES not set" in c.detail
    assert "numpy reference" in c.switches_off
    line = format_check(c)
    assert line.startswith("missing  TFLM headers") and "; off: " in line


def test_headers_that_are_no_tflm_tree_are_named(tmp_path: Path) -> None:
    c = check_tflm_headers({"TFLM_ROOT": str(tmp_path), "TFLM_EXTRA_INCLUDES": str(tmp_path)})
    assert not c.ok
    assert c.detail == f"TFLM_ROOT={tmp_path} is not a tflite-micro source tree"


def test_missing_compiler() -> None:
    c = check_compiler({"CXX": "no-such-compiler-xyz"})
    assert not c.ok
    assert c.detail == "no 'no-such-compiler-xyz' on PATH (set CXX)"
    assert "x86 TFLM" in c.switches_off


def test_arduino_sources_unset_wrong_and_present(tmp_path: Path) -> None:
    unset = check_arduino_sources({})
    assert not unset.ok and "not set" in unset.detail and "QEMU" in unset.switches_off
    wrong = check_arduino_sources({"ARDUINO_TENSORFLOWLITE_SRC": str(tmp_path)})
    assert not wrong.ok and "is not Arduino_TensorFlowLite's src/ folder" in wrong.detail
    header = tmp_path / "tensorflow" / "lite" / "micro" / "micro_interpreter.h"
    header.parent.mkdir(parents=True)
    header.write_text("")
    found = check_arduino_sources({"ARDUINO_TENSORFLOWLITE_SRC": str(tmp_path)})
    assert found.ok and found.switches_off == ""
    assert format_check(found) == (f"ok       {'Arduino_TensorFlowLite':<24} "
                                   f"ARDUINO_TENSORFLOWLITE_SRC={tmp_path}")


def _pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.startswith("tflite-micro=="))


def test_tflm_wheel_other_than_the_pin_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        wheel_runtime_library()
    except TflmPatchError as e:
        pytest.skip(f"the tflite-micro wheel is not usable here: {e}")
    assert cli_doctor._pinned("tflite-micro") == _pin()
    monkeypatch.setattr(cli_doctor, "_dist_version", lambda *names: "tflite-micro 0.1.0")
    c = check_tflm_wheel()
    assert not c.ok
    assert c.detail.startswith(f"tflite-micro 0.1.0 installed, the package pins {_pin()} ")
