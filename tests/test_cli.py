"""The `tflm-patch` command line: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_model_path

from tflm_patch.cli import main, parse_size


@pytest.mark.parametrize(
    "text, value",
    [("262144", 262144), ("256KiB", 262144), ("256k", 262144), ("250kB", 250000),
     ("1MiB", 1 << 20), ("0.5MiB", 1 << 19)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def _run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize(
    "kind, expect",
    [
        ("empty", "only 0 bytes"),
        ("text", "file identifier"),
        ("png", "file identifier"),
        ("truncated", "not a valid TFLite flatbuffer"),
        ("corrupt_root", "not a valid TFLite flatbuffer"),
        ("missing", "no such file"),
    ],
)
def test_bad_files_give_one_error_line(capsys, tmp_path, tiny_int8_bytes, kind, expect):  # type: ignore[no-untyped-def]
    data = {
        "empty": b"",
        "text": b"this is a text file, not a model\n" * 4,
        "png": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "truncated": tiny_int8_bytes[: len(tiny_int8_bytes) * 2 // 3],
        "corrupt_root": (len(tiny_int8_bytes) + 1000).to_bytes(4, "little") + tiny_int8_bytes[4:],
    }
    path = str(tmp_path / "missing.tflite") if kind == "missing" else _write(
        tmp_path, f"{kind}.tflite", data[kind])
    code, out, err = _run(capsys, "analyze", "--no-measure", path)
    assert code != 0
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert expect in lines[0]
    assert out == ""


def test_float_model_says_int8_required(capsys, tmp_path, float_model_bytes):  # type: ignore[no-untyped-def]
    code, _, err = _run(capsys, "analyze", _write(tmp_path, "f.tflite", float_model_bytes))
    assert code != 0
    lines = _error_lines(err)
    assert len(lines) == 1 and "float model" in lines[0] and "int8" in lines[0]


def test_analyze_person_detect_table_and_json(capsys, tmp_path):  # type: ignore[no-untyped-def]
    path = str(shared_model_path("person_detect"))
    plot = tmp_path / "pd.png"
    code, out, err = _run(capsys, "analyze", path, "--plot", str(plot), "--budget", "64KiB")
    assert code == 0, err
    assert "layer-by-layer peak: 54.0 KiB (55,296 B) at op #2 CONV_2D" in out
    assert "TFLM arena measured:  85,264 B = head 55,296 + tail 29,968" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    code, out, err = _run(capsys, "analyze", path, "--json", "--no-measure")
    assert code == 0
    doc = json.loads(out)
    assert doc["peak"]["bytes"] == 55_296 and doc["peak"]["op_index"] == 2
    assert doc["operators"][0]["macs"] == 48 * 48 * 8 * 9
    assert len(doc["operators"]) == 31
    assert doc["arena"]["measured_total"] is None


def test_analyze_mobilenet_v2_peak_and_plot(capsys, tmp_path):  # type: ignore[no-untyped-def]
    path = str(shared_model_path("mobilenet_v2_int8_224_nchw"))
    plot = tmp_path / "mbv2.png"
    code, out, err = _run(capsys, "analyze", path, "--no-measure", "--plot", str(plot),
                          "--budget", "256KiB")
    assert code == 0, err
    peak_line = next(line for line in out.splitlines() if line.startswith("layer-by-layer peak"))
    assert "at op #7 PAD" in peak_line and "2,451,840 B" in peak_line
    assert plot.stat().st_size > 10_000


def test_console_script_help() -> None:
    r = subprocess.run([sys.executable, "-m", "tflm_patch.cli", "analyze", "--help"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0
    assert "--budget" in r.stdout and "--plot" in r.stdout and "zoo:NAME" in r.stdout
