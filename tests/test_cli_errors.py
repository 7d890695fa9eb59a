"""Bad input never gives a traceback, an exit code of 0 or a lost file.

Every case runs one command on a crafted model or a bad value and checks: a non-zero exit,
exactly one line on stderr (no traceback), and that no file in the working folder was
created, changed or removed (and that a FIFO or device given as output is still one).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tflm_patch.cli import main
from tflm_patch.model import model_to_bytes
from tflm_patch.schema import schema

# tensors of the tiny model (conftest: conv 3x3/2 -> depthwise -> mean -> fully connected)
INPUT, CONV_W, CONV_OUT, DW_OUT, OUTPUT = 0, 6, 7, 8, 10
CONV, DW = 0, 1


def _edit(data: bytes, change: Callable[[Any], None]) -> bytes:
    obj = schema().ModelT.InitFromPackedBuf(data, 0)
    change(obj)
    return model_to_bytes(obj)


def _tensor(obj: Any, index: int) -> Any:
    return obj.subgraphs[0].tensors[index]


def _set(index: int, **fields: Any) -> Callable[[Any], None]:
    def change(obj: Any) -> None:
        for name, value in fields.items():
            setattr(_tensor(obj, index), name, value)
    return change


def _scale(index: int, value: float) -> Callable[[Any], None]:
    def change(obj: Any) -> None:
        _tensor(obj, index).quantization.scale = [value] * len(
            _tensor(obj, index).quantization.scale)
    return change


def _short_weights(obj: Any) -> None:
    obj.buffers[_tensor(obj, CONV_W).buffer].data = np.zeros(1, np.uint8)


def _conv_stride(obj: Any) -> None:
    options = obj.subgraphs[0].operators[CONV].builtinOptions
    options.strideH = options.strideW = 1 << 30


def _op_input(op: int, slot: int, tensor: int) -> Callable[[Any], None]:
    def change(obj: Any) -> None:
        o = obj.subgraphs[0].operators[op]
        o.inputs = list(o.inputs)
        o.inputs[slot] = tensor
    return change


def _graph(inputs: list[int] | None = None, outputs: list[int] | None = None
           ) -> Callable[[Any], None]:
    def change(obj: Any) -> None:
        sg = obj.subgraphs[0]
        if inputs is not None:
            sg.inputs = inputs
        if outputs is not None:
            sg.outputs = outputs
    return change


def _metadata_name(obj: Any) -> None:
    obj.metadata[0].name = b"\xff\xfename"


def _opcode(obj: Any) -> None:
    obj.subgraphs[0].operators[DW].opcodeIndex = 99


def _int16(obj: Any) -> None:
    for t in obj.subgraphs[0].tensors:
        if t.type == 9 and not (obj.buffers[t.buffer].data is not None
                                and len(obj.buffers[t.buffer].data)):
            t.type = 7  # int16 activations, int8 weights: 16x8 quantization


def _signature(obj: Any) -> None:
    obj.signatureDefs[0].outputs[0].tensorIndex = 1 << 20


def _quantized_dimension(obj: Any) -> None:
    _tensor(obj, CONV_W).quantization.quantizedDimension = 369098755


def _metadata_buffer(obj: Any) -> None:
    obj.metadata[0].buffer = 872415254


def _long_axes(obj: Any) -> None:
    _tensor(obj, 1).shape = [1]  # MEAN's axes: 2 values in the buffer, 1 in the shape


def _constant_output(obj: Any) -> None:
    obj.subgraphs[0].operators[CONV].outputs = [CONV_W]


# name -> change of the tiny model (and the words the error line must contain)
MODEL_CASES: dict[str, tuple[Callable[[Any], None], str]] = {
    "conv_stride_2_30": (_conv_stride, "operator 0 (CONV_2D)"),
    "activation_over_4_GiB": (_set(CONV_OUT, shape=[1, 65536, 65536, 8]), "32-bit"),
    "output_scale_zero": (_scale(OUTPUT, 0.0), "scale 0.0"),
    "negative_scale": (_scale(CONV_OUT, -0.5), "scale -0.5"),
    "nan_scale": (_scale(DW_OUT, float("nan")), "scale nan"),
    "rank0_weights": (_set(CONV_W, shape=[]), "tensor 6"),
    "conv_weights_1_byte": (_short_weights, "holds 1 bytes"),
    "negative_dimension": (_set(DW_OUT, shape=[1, -8, 8, 8]), "negative dimension"),
    "tensor_index_out_of_range": (_op_input(DW, 0, 999), "tensor 999"),
    "buffer_index_out_of_range": (_set(CONV_W, buffer=9999), "buffer 9999"),
    "opcode_index_out_of_range": (_opcode, "opcode index 99"),
    "zero_inputs": (_graph(inputs=[]), "no inputs"),
    "zero_outputs": (_graph(outputs=[]), "no outputs"),
    "graph_output_out_of_range": (_graph(outputs=[OUTPUT, 77]), "out of range"),
    "constant_graph_input": (_graph(inputs=[INPUT, CONV_W]), "constant"),
    "read_before_written": (_op_input(CONV, 0, DW_OUT), "no earlier operator writes"),
    "writes_a_constant": (_constant_output, "a constant"),
    "non_utf8_metadata_name": (_metadata_name, "not UTF-8"),
    "signature_out_of_range": (_signature, "signature"),
    "quantized_dimension_out_of_range": (_quantized_dimension, "per-channel scales"),
    "metadata_buffer_out_of_range": (_metadata_buffer, "metadata entry 0"),
    "buffer_longer_than_shape": (_long_axes, "holds 8 bytes"),
    "output_type_differs": (_set(OUTPUT, type=2), "types differ"),
    "depthwise_without_bias": (_op_input(DW, 2, -1), "no bias"),
}
COMMANDS = ("analyze", "plan", "convert", "validate", "export")


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    result = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        result[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), digest)
    return result


def _argv(command: str, model: Path, folder: Path) -> list[str]:
    return {
        "analyze": ["analyze", str(model), "--no-measure"],
        "plan": ["plan", str(model)],
        "convert": ["convert", str(model), "-o", str(folder / "out.tflite")],
        "validate": ["validate", str(model), str(model), "--random", "1"],
        "export": ["export", str(model), "--c-array", str(folder / "exported")],
    }[command]


def _fails_cleanly(capsys: pytest.CaptureFixture[str], folder: Path, argv: list[str],
                   words: str = "") -> str:
    """Run argv; assert exit != 0, one stderr line, no file changed. The error line."""
    before = _snapshot(folder)
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code != 0, out
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert words in lines[0], lines[0]
    assert _snapshot(folder) == before
    return lines[0]


@pytest.fixture
def work(tmp_path: Path, tiny_int8_bytes: bytes) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "tiny.tflite").write_bytes(tiny_int8_bytes)
    return folder


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_malformed_model_is_refused(case: str, command: str, work: Path,
                                    tiny_int8_bytes: bytes,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    change, words = MODEL_CASES[case]
    model = work / f"{case}.tflite"
    model.write_bytes(_edit(tiny_int8_bytes, change))
    _fails_cleanly(capsys, work, _argv(command, model, work), words)


@pytest.fixture
def patched(work: Path) -> Path:
    out = work / "patched.tflite"
    assert main(["-q", "convert", str(work / "tiny.tflite"), "-o", str(out), "--objective",
                 "memory", "--min-saving", "0"]) == 0
    return out


def _truncate_options(obj: Any) -> None:
    for op in obj.subgraphs[0].operators:
        if op.customOptions is not None and len(op.customOptions):
            op.customOptions = op.customOptions[:20]


def _options_version(obj: Any) -> None:
    for op in obj.subgraphs[0].operators:
        if op.customOptions is not None and len(op.customOptions):
            op.customOptions = np.array(op.customOptions, np.uint8)
            op.customOptions[4] = 0x7F


PATCHED_CASES = {"options_truncated": _truncate_options, "options_version": _options_version}


@pytest.mark.parametrize("command", ["analyze", "validate", "export"])
@pytest.mark.parametrize("case", sorted(PATCHED_CASES))
def test_malformed_patch_exec_is_refused(case: str, command: str, work: Path, patched: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = work / f"{case}.tflite"
    model.write_bytes(_edit(patched.read_bytes(), PATCHED_CASES[case]))
    argv = _argv(command, model, work)
    if command == "validate":
        argv = ["validate", str(work / "tiny.tflite"), str(model), "--random", "1"]
    _fails_cleanly(capsys, work, argv, "PATCH_EXEC")


def test_validate_with_the_models_swapped(work: Path, patched: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, work, ["validate", str(patched), str(work / "tiny.tflite")],
                   "original (unpatched) model first")


def _transpose_three_inputs(obj: Any) -> None:
    ops = obj.subgraphs[0].operators
    op = next(o for o in ops if obj.operatorCodes[o.opcodeIndex].builtinCode == 39)
    op.inputs = [*op.inputs, op.inputs[1]]


def test_transpose_tflm_cannot_prepare_is_refused(work: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A TRANSPOSE with 3 inputs (TFLM fails to prepare it): refused, never folded away."""
    from tflm_patch.zoo import ensure_model

    model = work / "nchw.tflite"
    model.write_bytes(_edit(ensure_model("nchw_input").read_bytes(), _transpose_three_inputs))
    _fails_cleanly(capsys, work, ["convert", str(model), "-o", str(work / "o.tflite")],
                   "(TRANSPOSE): has inputs")


def test_int16_model_says_why(work: Path, tiny_int8_bytes: bytes,
                              capsys: pytest.CaptureFixture[str]) -> None:
    model = work / "int16.tflite"
    model.write_bytes(_edit(tiny_int8_bytes, _int16))
    _fails_cleanly(capsys, work, ["convert", str(model), "-o", str(work / "o.tflite")],
                   "int16 activations")


def test_float_model_says_why(work: Path, float_model_bytes: bytes,
                              capsys: pytest.CaptureFixture[str]) -> None:
    model = work / "float.tflite"
    model.write_bytes(float_model_bytes)
    _fails_cleanly(capsys, work, ["convert", str(model), "-o", str(work / "o.tflite")],
                   "float model")


# ----------------------------------------------------------------------------- outputs


def test_convert_onto_its_input_leaves_it_byte_identical(
        work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = work / "tiny.tflite"
    data = model.read_bytes()
    _fails_cleanly(capsys, work, ["convert", str(model), "-o", str(model)], "input")
    assert model.read_bytes() == data


def test_convert_onto_a_hard_link_of_its_input(work: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    os.link(work / "tiny.tflite", work / "same.tflite")
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o",
                                  str(work / "same.tflite")], "input")


def test_convert_onto_a_symlink_to_its_input(work: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (work / "link.tflite").symlink_to(work / "tiny.tflite")
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o",
                                  str(work / "link.tflite")], "symbolic link")


def test_convert_onto_a_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "d").mkdir()
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o", str(work / "d")],
                   "directory")


def test_convert_onto_a_fifo(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = work / "fifo"
    os.mkfifo(fifo)
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o", str(fifo)],
                   "not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_convert_onto_a_device(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null on this system")
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o", "/dev/null"],
                   "not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_convert_into_proc(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o",
                                  "/proc/patched.tflite"], "cannot create a file")


def test_convert_into_a_missing_directory(work: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o",
                                  str(work / "missing" / "o.tflite")], "does not exist")


def test_plot_into_a_missing_directory_writes_no_model(
        work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o",
                                  str(work / "o.tflite"), "--plot",
                                  str(work / "missing" / "p.png")], "does not exist")


def test_plot_into_proc_writes_no_model(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    _fails_cleanly(capsys, work, ["convert", str(work / "tiny.tflite"), "-o",
                                  str(work / "o.tflite"), "--plot", "/proc/p.png"],
                   "cannot create a file")


def test_plot_with_an_unknown_suffix(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, work, ["plan", str(work / "tiny.tflite"), "--plot",
                                  str(work / "p.xyz")], "must end in")


def test_model_that_is_a_fifo_is_not_read(work: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fifo = work / "model_fifo"
    os.mkfifo(fifo)
    _fails_cleanly(capsys, work, ["analyze", str(fifo)], "not a regular file")


def test_export_onto_a_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "f").write_text("x")
    _fails_cleanly(capsys, work, ["export", str(work / "tiny.tflite"), "--c-array",
                                  str(work / "f")], "not a directory")


def test_export_over_a_fifo_in_the_directory(work: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (work / "out").mkdir()
    os.mkfifo(work / "out" / "model_data.h")
    _fails_cleanly(capsys, work, ["export", str(work / "tiny.tflite"), "--c-array",
                                  str(work / "out")], "not a regular file")


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(("extra", "words"), [
    (["--seed", "-1"], "--seed"),
    (["--seed", "x"], "--seed"),
    (["--random", "-1"], "--random"),
    (["--random", "99999999"], "--random"),
    (["--seed", str((1 << 63) - 1), "--random", "2"], "largest seed"),
], ids=["seed_-1", "seed_text", "random_-1", "random_huge", "seed_overflow"])
def test_validate_bad_values(extra: list[str], words: str, work: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    model = str(work / "tiny.tflite")
    _fails_cleanly(capsys, work, ["validate", model, model, *extra], words)


@pytest.mark.parametrize(("extra", "words"), [
    (["--margin", "nan"], "finite"),
    (["--margin", "inf"], "finite"),
    (["--margin", "-1"], "negative"),
    (["--margin", "1e30"], "32-bit"),
    (["--test-image", "seed:-5"], "seed"),
    (["--test-image", "seed:abc"], "seed"),
    (["--name", "int"], "keyword"),
    (["--name", "g_model\nint x;"], "identifier"),
    (["--name", "g_model\n"], "identifier"),
    (["--name", "kTensorArenaSize"], "already use"),
    (["--name", "g_test_image"], "already use"),
    (["--name", "__reserved"], "reserved"),
    (["--name", "9lives"], "identifier"),
], ids=["margin_nan", "margin_inf", "margin_negative", "margin_1e30", "seed_-5", "seed_text",
        "name_keyword", "name_multiline", "name_trailing_newline", "name_clash_settings",
        "name_clash_image", "name_reserved", "name_digit"])
def test_export_bad_values(extra: list[str], words: str, work: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, work, ["export", str(work / "tiny.tflite"), "--c-array",
                                  str(work / "out"), *extra], words)


@pytest.mark.parametrize(("extra", "words"), [
    (["--max-overhead", "nan"], "finite"),
    (["--min-saving", "inf"], "finite"),
    (["--split-op", "-1"], "--split-op"),
    (["--max-grid", "0"], "--max-grid"),
    (["--max-grid", "100000"], "--max-grid"),
    (["--grid", "0x3"], "--grid"),
    (["--budget", "0"], "--budget"),
    (["--budget", "1" + "0" * 400], "--budget"),
    (["--budget", "9" * 5000 + "KiB"], "--budget"),
    (["--top", "0"], "--top"),
], ids=["max_overhead_nan", "min_saving_inf", "split_op_-1", "max_grid_0", "max_grid_huge",
        "grid_0", "budget_0", "budget_1e400", "budget_5000_digits", "top_0"])
def test_plan_bad_values(extra: list[str], words: str, work: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, work, ["plan", str(work / "tiny.tflite"), *extra], words)


def test_unknown_zoo_model(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, work, ["plan", "zoo:nope"], "unknown zoo model")


def test_model_is_a_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, work, ["plan", str(work)], "directory")


# ----------------------------------------------------------------------------- input files


def _npy_header(shape: tuple[int, ...], descr: str = "|i1") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


def _png(width: int, height: int) -> bytes:
    """A grayscale PNG header claiming width x height, with a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(bytes(1024))) + chunk(b"IEND", b""))


def _object_npy(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


INPUT_FILES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "object_array": (".npy", _object_npy, "Python objects"),
    "text_as_npy": (".npy", lambda p: p.write_text("not numpy\n" * 20), "not a valid .npy"),
    "npy_asking_93_GiB": (".npy", lambda p: p.write_bytes(
        _npy_header((1, 100_000, 100_000, 10)) + bytes(1)), "needs"),
    "npy_short_data": (".npy", lambda p: p.write_bytes(_npy_header((1, 16, 16, 3))
                                                       + bytes(10)), "file holds"),
    "npy_float": (".npy", lambda p: np.save(p, np.zeros((1, 16, 16, 3), np.float32)),
                  "float32"),
    "text_as_image": (".png", lambda p: p.write_text("hello\n"), "not an image"),
    "png_bomb": (".png", lambda p: p.write_bytes(_png(60000, 60000)), "pixels"),
    "png_bomb_warning_size": (".png", lambda p: p.write_bytes(_png(15000, 15000)), "pixels"),
    "png_wrong_size": (".png", lambda p: p.write_bytes(_png(2000, 3000)), "needs"),
    "empty_file": (".bmp", lambda p: p.write_bytes(b""), "not an image"),
}


@pytest.mark.parametrize("case", sorted(INPUT_FILES))
def test_validate_bad_input_file(case: str, work: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    suffix, make, words = INPUT_FILES[case]
    data = work / f"input{suffix}"
    make(data)
    model = str(work / "tiny.tflite")
    _fails_cleanly(capsys, work, ["validate", model, model, "--input", str(data)], words)


@pytest.mark.parametrize("case", ["png_bomb", "png_bomb_warning_size", "object_array",
                                  "npy_asking_93_GiB"])
def test_export_bad_test_image(case: str, work: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    suffix, make, words = INPUT_FILES[case]
    data = work / f"image{suffix}"
    make(data)
    _fails_cleanly(capsys, work, ["export", str(work / "tiny.tflite"), "--c-array",
                                  str(work / "out"), "--test-image", str(data)], words)


# ----------------------------------------------------------------------------- file names


def _run_bytes(argv: list[bytes], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    code = "import sys; from tflm_patch.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable.encode(), b"-c", code.encode(), *argv], cwd=cwd,
                          capture_output=True, timeout=300, check=False)


def test_non_utf8_file_name_error_is_one_line(work: Path) -> None:
    name = b"bad\xff\nname.tflite"
    (work / os.fsdecode(name)).write_bytes(b"not a model at all")
    before = _snapshot(work)
    r = _run_bytes([b"plan", name], work)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "\\xff" in err and "\\n" in err
    assert _snapshot(work) == before


def test_non_utf8_file_name_exports(work: Path) -> None:
    name = b"m\xff.tflite"
    (work / os.fsdecode(name)).write_bytes((work / "tiny.tflite").read_bytes())
    r = _run_bytes([b"export", name, b"--c-array", b"out", b"--test-image", name[:0] + b"seed:1"],
                   work)
    assert r.returncode == 0, r.stderr
    text = (work / "out" / "model_data.cc").read_bytes()
    assert b"\xff" not in text and b"m_" in text


# ----------------------------------------------------------------------------- encoder


@pytest.mark.parametrize(("field", "value"), [("stride", (1 << 30, 1)), ("pad_top", -1)])
def test_options_encoder_names_a_field_out_of_range(field: str, value: Any, patched: Path
                                                    ) -> None:
    """A value that does not fit its field is an OptionsError naming it, not struct.error."""
    import dataclasses

    from tflm_patch import patch_format as pf
    from tflm_patch.model import load_model

    op = next(o for o in load_model(patched).operators if o.name == "PATCH_EXEC")
    options = pf.decode(op.custom_options or b"")
    layer = dataclasses.replace(options.layers[0], **{field: value})
    with pytest.raises(pf.OptionsError, match="layer 0, field"):
        pf.encode(dataclasses.replace(options, layers=(layer, *options.layers[1:])))
