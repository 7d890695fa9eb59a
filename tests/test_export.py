"""`tflm-patch export`: C++ source of a model (array, arena, op list), its errors, and that
the output compiles for x86 and the Cortex-M4 (16-byte aligned, read-only data)."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from embedded_helpers import WARNINGS, compile_cc, compiler, patched_zoo, tflm_tree
from m4 import fnv1a32

from tflm_patch import export
from tflm_patch.arena import predict_arena
from tflm_patch.cli import main
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, builtin_op_codes, model_to_bytes
from tflm_patch.native import SOURCE_ROOT

PATCH_EXEC_CALL = 'AddCustom("PATCH_EXEC", tflite::Register_PATCH_EXEC())'


def _with_op_code(model: Model, *, builtin: str | None = None, custom: str | None = None
                  ) -> bytes:
    """The model with operator 0's code replaced (a builtin name or a custom code)."""
    obj = copy.deepcopy(model.obj)
    code = copy.deepcopy(obj.operatorCodes[obj.subgraphs[0].operators[0].opcodeIndex])
    value = builtin_op_codes()[builtin or "CUSTOM"]
    code.builtinCode = value
    code.deprecatedBuiltinCode = min(value, 127)
    code.customCode = custom
    obj.operatorCodes.append(code)
    obj.subgraphs[0].operators[0].opcodeIndex = len(obj.operatorCodes) - 1
    return model_to_bytes(obj)


def _array_bytes(text: str) -> bytes:
    body = text[text.index("= {") + 3:text.index("};")]
    return bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body))


# ----------------------------------------------------------------------------- library


def test_resolver_table_names_builtin_operators() -> None:
    codes = builtin_op_codes()
    assert [n for n in export.RESOLVER_METHODS if n not in codes] == []
    assert export.NOT_IN_ARDUINO_2023.issubset(export.RESOLVER_METHODS)


def test_resolver_ops_of_a_patched_model() -> None:
    model = patched_zoo()
    ops = export.resolver_ops(model)
    assert [o.op for o in ops] == list(dict.fromkeys(op.name for op in model.operators))
    assert sum(o.count for o in ops) == len(model.operators)
    pe = next(o for o in ops if o.op == "PATCH_EXEC")
    assert pe.call == PATCH_EXEC_CALL and pe.in_arduino_2023
    assert {o.call for o in ops if o.op != "PATCH_EXEC"} == {
        f"{export.RESOLVER_METHODS[o.op]}()" for o in ops if o.op != "PATCH_EXEC"}


def test_unknown_builtin_operator_is_named() -> None:
    data = _with_op_code(patched_zoo(), builtin="LSH_PROJECTION")
    with pytest.raises(export.ExportError,
                       match="operator 0 is LSH_PROJECTION: TFLM's MicroMutableOpResolver"):
        export.export_model(data)


def test_unknown_custom_operator_is_named() -> None:
    data = _with_op_code(patched_zoo(), custom="MY_OP")
    with pytest.raises(export.ExportError,
                       match="operator 0 is the custom operator 'MY_OP'"):
        export.export_model(data)


def test_arduino_refuses_operators_newer_than_feb_2023() -> None:
    data = _with_op_code(patched_zoo(), builtin="REVERSE_V2")
    with pytest.raises(export.ExportError, match=r"Arduino_TensorFlowLite .* REVERSE_V2"):
        export.export_model(data, arduino=True)


def test_float_model_is_refused(float_model_bytes: bytes) -> None:
    with pytest.raises(UnsupportedModelError, match="float model"):
        export.export_model(float_model_bytes)


def test_arena_is_the_cortex_m_prediction_plus_the_margin() -> None:
    model = patched_zoo()
    a = export.arena_budget(model)
    assert a.predicted == predict_arena(model, "cortex_m").total
    assert a.total % 16 == 0
    assert a.margin == a.total - a.predicted
    assert max(-(-a.predicted // 10), export.ARENA_MARGIN_MIN) <= a.margin
    assert a.margin < max(-(-a.predicted // 10), export.ARENA_MARGIN_MIN) + 16


def test_model_array_holds_the_model_bytes() -> None:
    model = patched_zoo()
    result = export.export_model(model.raw, symbol="g_net")
    files = {f.name: f.text for f in result.files}
    assert _array_bytes(files["model_data.cc"]) == model.raw
    assert "alignas(16) extern const unsigned char g_net[];" in files["model_data.h"]
    assert "alignas(16) const unsigned char g_net[] = {" in files["model_data.cc"]
    assert f"const unsigned int g_net_len = {len(model.raw)};" in files["model_data.cc"]
    assert f"kTensorArenaSize = {result.arena.total};" in files["model_settings.h"]
    assert f"kNumResolverOps = {len(result.ops)};" in files["model_settings.h"]
    assert PATCH_EXEC_CALL in files["model_ops.h"]


def test_seeded_test_image_is_deterministic() -> None:
    model = patched_zoo()
    a, b = export.seeded_image(model, 7), export.seeded_image(model, 7)
    assert a == b and a != export.seeded_image(model, 8)
    assert len(a.data) == model.tensors[model.inputs[0]].nbytes
    values = np.frombuffer(a.data, np.int8)
    assert int(values.min()) < 0 < int(values.max())


def test_test_image_of_the_wrong_size_is_refused() -> None:
    model = patched_zoo()
    with pytest.raises(export.ExportError, match="the test image has 3 bytes"):
        export.export_model(model.raw, image=export.BundledImage(b"abc", "three bytes"))


# ----------------------------------------------------------------------------- CLI


def test_cli_c_array_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    src = tmp_path / "m.tflite"
    src.write_bytes(patched_zoo().raw)
    rc = main(["export", str(src), "--c-array", str(tmp_path / "out")])
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["model_data.cc", "model_data.h", "model_ops.h", "model_settings.h"]
    assert "kTensorArenaSize" in capsys.readouterr().out


def test_cli_arduino_writes_cpp_and_a_test_image(tmp_path: Path) -> None:
    src = tmp_path / "m.tflite"
    src.write_bytes(patched_zoo().raw)
    assert main(["-q", "export", str(src), "--arduino", str(tmp_path / "sketch")]) == 0
    files = {p.name: p.read_text() for p in (tmp_path / "sketch").iterdir()}
    assert sorted(files) == ["model_data.cpp", "model_data.h", "model_ops.h",
                             "model_settings.h", "test_image.cpp", "test_image.h"]
    assert "#include <tflm_patch.h>" in files["model_ops.h"]
    assert "default_rng(20211029)" in files["test_image.cpp"]


@pytest.mark.parametrize(("content", "message"), [
    (b"", "error: not a TFLite model: only 0 bytes"),
    (b"not a flatbuffer at all, just text", "error: not a TFLite model: file identifier"),
])
def test_cli_bad_file_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     content: bytes, message: str) -> None:
    src = tmp_path / "bad.tflite"
    src.write_bytes(content)
    out = tmp_path / "out"
    assert main(["export", str(src), "--c-array", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}: {message[len('error: '):]}")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_unknown_operator_writes_nothing(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "m.tflite"
    src.write_bytes(_with_op_code(patched_zoo(), custom="MY_OP"))
    assert main(["export", str(src), "--arduino", str(tmp_path / "out")]) == 2
    assert "'MY_OP'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_help_explains_the_files() -> None:
    r = subprocess.run(["tflm-patch", "export", "--help"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0
    for word in ("model_data.h", "kTensorArenaSize", "RegisterModelOps", "--arduino",
                 "--c-array", "margin", "atomically"):
        assert word in r.stdout


# ----------------------------------------------------------------------------- compiles


_MAIN = """\
#include <stdint.h>
#include <stdio.h>

#include "model_data.h"
#include "model_settings.h"
#include "test_image.h"

int main() {
  uint32_t hash = 2166136261u;
  for (unsigned int i = 0; i < g_model_len; ++i) {
    hash = (hash ^ g_model[i]) * 16777619u;
  }
  printf("%u %u %08x %u\\n", g_model_len,
         static_cast<unsigned>(reinterpret_cast<uintptr_t>(g_model) % 16),
         static_cast<unsigned>(hash), kTensorArenaSize);
  return g_test_image[0] == 0 && kNumResolverOps == 0 ? 1 : 0;
}
"""


def _export_dir(tmp_path: Path) -> tuple[Path, export.Export]:
    model = patched_zoo()
    result = export.export_model(model.raw, image=export.seeded_image(model, 1))
    for f in result.files:
        (tmp_path / f.name).write_text(f.text)
    (tmp_path / "main.cc").write_text(_MAIN)
    return tmp_path, result


@pytest.mark.parametrize("cxx", ["c++", "arm-none-eabi-g++"])
def test_export_compiles_with_aligned_read_only_arrays(tmp_path: Path, cxx: str) -> None:
    tool = compiler(cxx)
    d, _ = _export_dir(tmp_path)
    target = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"] \
        if cxx.startswith("arm") else []
    objdump = "arm-none-eabi-objdump" if cxx.startswith("arm") else "objdump"
    for name in ("model_data", "test_image", "main"):
        compile_cc([tool, *target, "-std=c++14", *WARNINGS, "-Os", "-fdata-sections",
                    "-c", str(d / f"{name}.cc"), "-o", str(d / f"{name}.o")])
    for name, symbol in (("model_data", "g_model"), ("test_image", "g_test_image")):
        headers = subprocess.run([objdump, "-h", str(d / f"{name}.o")], capture_output=True,
                                 text=True, check=True).stdout
        m = re.search(rf"\.rodata\.{symbol}\s+\S+\s+\S+\s+\S+\s+\S+\s+2\*\*(\d+)\s*\n\s*(.*)",
                      headers)
        assert m is not None, headers
        assert int(m.group(1)) >= 4, headers  # 16-byte aligned
        assert "READONLY" in m.group(2) and "DATA" in m.group(2)


def test_export_links_and_runs_on_x86(tmp_path: Path) -> None:
    tool = compiler("c++")
    d, result = _export_dir(tmp_path)
    exe = d / "main"
    compile_cc([tool, "-std=c++14", *WARNINGS, *(str(d / f"{n}.cc") for n in
                ("model_data", "test_image", "main")), "-o", str(exe)])
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(result.model_bytes), "0", f"{fnv1a32(patched_zoo().raw):08x}",
                   str(result.arena.total)]


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["current", "feb2023"])
@pytest.mark.parametrize("cxx", ["c++", "arm-none-eabi-g++"])
def test_model_ops_header_compiles_against_tflm(tmp_path: Path, tree: str, cxx: str) -> None:
    """RegisterModelOps instantiated with the TFLM headers: every Add* method exists with
    the signature used, AddCustom takes what Register_PATCH_EXEC returns."""
    t = tflm_tree(tree)
    tool = compiler(cxx)
    d, _ = _export_dir(tmp_path)
    (d / "ops.cc").write_text('#include "model_ops.h"\n\nTfLiteStatus Register() {\n'
                              "  static ModelOpResolver resolver;\n"
                              "  return RegisterModelOps(resolver);\n}\n")
    target = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
              "-Wno-psabi"] if cxx.startswith("arm") else []
    compile_cc([tool, *target, f"-std={t.std}", *WARNINGS, "-fno-exceptions",
                "-DTF_LITE_STATIC_MEMORY", "-I", str(SOURCE_ROOT),
                "-I", str(d), *t.include_flags(), "-c", str(d / "ops.cc"),
                "-o", str(d / "ops.o")])


def _header_methods(root: Path) -> dict[str, str]:
    """Add* method -> the BuiltinOperator it registers, read from a TFLM resolver header."""
    text = (root / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    methods = {}
    for part in re.split(r"(?=TfLiteStatus Add\w+\()", text)[1:]:
        name = re.match(r"TfLiteStatus (Add\w+)\(", part)
        ops = [o for o in re.findall(r"BuiltinOperator_(\w+)", part) if o != "CUSTOM"]
        if name and ops:
            methods[name.group(1)] = ops[0]
    return methods


@pytest.mark.parametrize("tree", ["current", "feb2023"])
def test_resolver_table_matches_the_tflm_header(tree: str) -> None:
    t = tflm_tree(tree)
    methods = _header_methods(t.root)
    expected = {op: m for op, m in export.RESOLVER_METHODS.items()
                if tree == "current" or op not in export.NOT_IN_ARDUINO_2023}
    assert {op: m for op, m in expected.items() if methods.get(m) != op} == {}
    if tree == "feb2023":
        newer = {export.RESOLVER_METHODS[op] for op in export.NOT_IN_ARDUINO_2023}
        assert newer & set(methods) == set()


_ORIGIN_MAIN = """\
#include <stdio.h>

#include "test_image.h"

int main() {
  fputs(g_test_image_origin, stdout);
  return 0;
}
"""
HOSTILE_ORIGIN = 'a"b\\\\\n#error injected\n??/ trigraph \\ \x01 caf\u00e9 */ \\'


def test_hostile_image_origin_compiles_and_is_kept_byte_for_byte(tmp_path: Path) -> None:
    tool = compiler("c++")
    model = patched_zoo()
    image = export.BundledImage(export.seeded_image(model, 1).data, HOSTILE_ORIGIN)
    result = export.export_model(model.raw, image=image, source="x\\\n#error y??/.tflite")
    for f in result.files:
        (tmp_path / f.name).write_text(f.text)
        assert "#error" not in [line.split()[0] for line in f.text.splitlines() if line.split()]
    (tmp_path / "main.cc").write_text(_ORIGIN_MAIN)
    exe = tmp_path / "main"
    compile_cc([tool, "-std=c++14", "-trigraphs", *WARNINGS, str(tmp_path / "test_image.cc"),
                str(tmp_path / "main.cc"), "-o", str(exe)])
    out = subprocess.run([str(exe)], capture_output=True, check=True).stdout
    assert out == HOSTILE_ORIGIN.encode()


@pytest.mark.parametrize("size", [(1 << 32) - 1, 1 << 32, 14_173_009_536])
def test_sizes_over_32_bits_are_refused(size: int) -> None:
    if size < 1 << 32:
        export.check_c_sizes({"kTensorArenaSize": size})
        return
    with pytest.raises(export.ExportError, match="32-bit"):
        export.check_c_sizes({"kTensorArenaSize": size})
