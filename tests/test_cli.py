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


# ----------------------------------------------------------------------------- output modes

MEMORY_PLAN = ("--objective", "memory", "--min-saving", "0")


def _three_outputs(data: bytes) -> bytes:
    """The tiny model with the convolution and depthwise outputs as graph outputs too."""
    from tflm_patch.model import model_to_bytes
    from tflm_patch.schema import schema

    obj = schema().ModelT.InitFromPackedBuf(data, 0)
    obj.subgraphs[0].outputs = [10, 7, 8]
    return model_to_bytes(obj)


@pytest.fixture(scope="module")
def two_inputs_bytes() -> bytes:
    """conv(image) -> depthwise, + skip input -> 1x1 conv: a model with 2 inputs."""
    import numpy as np
    import tensorflow as tf

    from tflm_patch.zoo import full_int8

    tf.keras.utils.set_random_seed(3)
    image = tf.keras.Input((24, 24, 3), batch_size=1, name="image")
    skip = tf.keras.Input((12, 12, 8), batch_size=1, name="skip")
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(image)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = tf.keras.layers.Conv2D(4, 1)(tf.keras.layers.Add()([x, skip]))
    rng = np.random.default_rng(3)

    def representative():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield {"image": rng.uniform(-1, 1, (1, 24, 24, 3)).astype(np.float32),
                   "skip": rng.uniform(-1, 1, (1, 12, 12, 8)).astype(np.float32)}

    model = tf.keras.Model([image, skip], x)
    return full_int8(tf.lite.TFLiteConverter.from_keras_model(model), representative)


def test_convert_default_output_is_one_line(capsys, tmp_path, tiny_int8_bytes):  # type: ignore[no-untyped-def]
    src = _write(tmp_path, "m.tflite", tiny_int8_bytes)
    code, out, err = _run(capsys, "convert", src, "-o", str(tmp_path / "p.tflite"), *MEMORY_PLAN)
    assert code == 0 and err == "" and len(out.splitlines()) == 1, out + err
    assert "-> PATCH_EXEC" in out


def test_quiet_prints_nothing(capsys, tmp_path, tiny_int8_bytes):  # type: ignore[no-untyped-def]
    src = _write(tmp_path, "m.tflite", tiny_int8_bytes)
    code, out, err = _run(capsys, "convert", src, "-o", str(tmp_path / "p.tflite"), "-q",
                          *MEMORY_PLAN)
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "p.tflite").exists()


def test_verbose_logs_the_steps(capsys, tmp_path, tiny_int8_bytes):  # type: ignore[no-untyped-def]
    src = _write(tmp_path, "m.tflite", tiny_int8_bytes)
    code, _, err = _run(capsys, "-v", "convert", src, "-o", str(tmp_path / "p.tflite"),
                        *MEMORY_PLAN)
    assert code == 0 and "INFO: planning:" in err


def test_progress_bar_on_a_terminal(capsys, monkeypatch, tmp_path, tiny_int8_bytes):  # type: ignore[no-untyped-def]
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    src = _write(tmp_path, "m.tflite", tiny_int8_bytes)
    assert main(["convert", src, "-o", str(tmp_path / "p.tflite"), *MEMORY_PLAN]) == 0
    out = capsys.readouterr().out
    assert "planning" in term.getvalue() and "stage" in term.getvalue()
    assert len(out.splitlines()) <= 3


@pytest.mark.parametrize("command", ["analyze", "plan", "convert", "validate", "export", "zoo"])
def test_json_on_every_command(command, capsys, tmp_path, tiny_int8_bytes):  # type: ignore[no-untyped-def]
    src = _write(tmp_path, "m.tflite", tiny_int8_bytes)
    argv = {"analyze": ["analyze", src, "--no-measure"], "plan": ["plan", src, *MEMORY_PLAN],
            "convert": ["convert", src, "-o", str(tmp_path / "p.tflite"), *MEMORY_PLAN],
            "validate": ["validate", src, src, "--random", "1"],
            "export": ["export", src, "--c-array", str(tmp_path / "c")],
            "zoo": ["zoo", "--list"]}[command]
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    assert isinstance(json.loads(out), dict)


def test_three_outputs_plan_convert_validate(capsys, tmp_path, tiny_int8_bytes):  # type: ignore[no-untyped-def]
    src = _write(tmp_path, "three.tflite", _three_outputs(tiny_int8_bytes))
    out_path = str(tmp_path / "p.tflite")
    assert _run(capsys, "plan", src, *MEMORY_PLAN)[0] == 0
    code, out, err = _run(capsys, "convert", src, "-o", out_path, *MEMORY_PLAN)
    assert code == 0 and "PATCH_EXEC" in out, err
    code, out, err = _run(capsys, "validate", src, out_path, "--random", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pass"] and [c["outputs"] for c in doc["cases"]] == [3, 3]


@pytest.mark.slow
def test_two_inputs_convert_validate(capsys, tmp_path, two_inputs_bytes):  # type: ignore[no-untyped-def]
    src = _write(tmp_path, "two.tflite", two_inputs_bytes)
    out_path = str(tmp_path / "p.tflite")
    code, out, err = _run(capsys, "convert", src, "-o", out_path, *MEMORY_PLAN)
    assert code == 0 and "PATCH_EXEC" in out, err
    code, out, err = _run(capsys, "validate", src, out_path, "--random", "2")
    assert code == 0 and "PASS (2/2" in out, out + err


def test_extreme_scale_is_left_to_tflm(capsys, tmp_path, tiny_int8_bytes):  # type: ignore[no-untyped-def]
    """A scale whose requantization shift PATCH_EXEC cannot take: that operator stays a
    TFLM operator, and the patched model validates."""
    from tflm_patch.model import model_to_bytes
    from tflm_patch.schema import schema

    obj = schema().ModelT.InitFromPackedBuf(tiny_int8_bytes, 0)
    obj.subgraphs[0].tensors[7].quantization.scale = [1e30]  # conv output, depthwise input
    src = _write(tmp_path, "m.tflite", model_to_bytes(obj))
    out_path = str(tmp_path / "p.tflite")
    code, out, err = _run(capsys, "convert", src, "-o", out_path, *MEMORY_PLAN)
    assert code == 0, err
    from tflm_patch.model import load_model

    assert "DEPTHWISE_CONV_2D" in [op.name for op in load_model(out_path).operators]
    code, out, err = _run(capsys, "validate", src, out_path, "--random", "1")
    assert code == 0 and "PASS" in out, out + err
