"""`tflm-patch export`: a thin command over `tflm_patch.export`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tflm_patch.cli_output import CONSOLE
from tflm_patch.cli_patch import parse_seed, write_atomic
from tflm_patch.errors import UsageError
from tflm_patch.io_checks import check_output_dir, check_output_in_dir, shown

log = logging.getLogger(__name__)

SEED_PREFIX = "seed:"


def _image(arg: str | None, arduino: bool, model: Any) -> Any:
    from tflm_patch.export import DEFAULT_IMAGE_SEED, file_image, seeded_image

    if arg is None:
        return seeded_image(model, DEFAULT_IMAGE_SEED) if arduino else None
    if arg.startswith(SEED_PREFIX):
        try:
            seed = parse_seed(arg[len(SEED_PREFIX):])
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--test-image {shown(arg)!r}: expected seed:N ({e})") from None
        return seeded_image(model, seed)
    return file_image(model, Path(arg))


def _export_names(arduino: bool) -> list[str]:
    ext = ".cpp" if arduino else ".cc"
    return ["model_data.h", f"model_data{ext}", "model_settings.h", "model_ops.h",
            "test_image.h", f"test_image{ext}"]


def cmd_export(args: argparse.Namespace) -> int:
    from tflm_patch.cli_args import load_checked, resolve_model_arg
    from tflm_patch.export import check_symbol, export_model
    from tflm_patch.model import require_int8

    arduino = args.arduino is not None
    check_symbol(args.name)
    out = check_output_dir(args.arduino if arduino else args.c_array)
    path = resolve_model_arg(args.model)
    check_output_in_dir(out, _export_names(arduino), [path])
    path, model = load_checked(path)
    require_int8(model)
    image = _image(args.test_image, arduino, model)
    result = export_model(model.raw, source=shown(path.name), arduino=arduino,
                          symbol=args.name, image=image, margin_fraction=args.margin)
    if not out.exists():
        out.mkdir()
    for f in result.files:
        write_atomic(out / f.name, f.text.encode())
    _summary(path, out, result, image)
    dtype = model.tensors[model.inputs[0]].dtype
    if arduino and dtype != "int8":
        CONSOLE.say(f"note: input 0 is {dtype}; the example sketch feeds int8 "
                    "(`tflm-patch convert --int8-io` gives an int8 input)")
    return 0


def _summary(path: Path, out: Path, result: Any, image: Any) -> None:
    a = result.arena
    if CONSOLE.json:
        CONSOLE.emit_json({"model": shown(path), "directory": shown(out),
                           "files": [f.name for f in result.files],
                           "model_bytes": result.model_bytes, "sha256": result.sha256,
                           "arena": {"total": a.total, "predicted": a.predicted,
                                     "margin": a.margin},
                           "ops": [{"op": o.op, "count": o.count} for o in result.ops],
                           "test_image": image.origin if image is not None else None})
        return
    CONSOLE.say(f"{shown(path.name)} ({result.model_bytes:,} bytes) -> {shown(out)}/: "
                f"{', '.join(f.name for f in result.files)}; kTensorArenaSize = {a.total:,} B "
                f"(predicted {a.predicted:,} for cortex_m + margin {a.margin:,})")
    CONSOLE.detail(f"  ops     {len(result.ops)} kinds for MicroMutableOpResolver"
                   f"<{len(result.ops)}>: " + ", ".join(f"{o.op} x{o.count}" for o in result.ops))
    if image is not None:
        CONSOLE.detail(f"  image   test_image: {image.origin}")


def add_parser(sub: Any, common: Sequence[argparse.ArgumentParser]) -> None:
    from tflm_patch.cli_patch import parse_fraction
    from tflm_patch.export import ARENA_MARGIN_FRACTION, ARENA_MARGIN_MIN, DEFAULT_SYMBOL

    e = sub.add_parser(
        "export", parents=common,
        help="write a model as C++ source for a TFLM application or Arduino sketch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write MODEL (an int8 .tflite, e.g. from `tflm-patch convert`) as C++ "
        "source files into a directory:\n\n"
        "  model_data.h/.cc    the model as `alignas(16) const unsigned char NAME[]` (flash)\n"
        "                      and `const unsigned int NAME_len`\n"
        "  model_settings.h    kTensorArenaSize: the arena the TFLM arena model predicts for\n"
        "                      a 32-bit Cortex-M plus a safety margin (below); input/output\n"
        "                      shapes; the operator list\n"
        "  model_ops.h         RegisterModelOps(resolver): AddXxx() for each builtin,\n"
        "                      AddCustom(\"PATCH_EXEC\", tflite::Register_PATCH_EXEC());\n"
        "                      ModelOpResolver = MicroMutableOpResolver<kNumResolverOps>\n"
        "  test_image.h/.cc    with --test-image (default for --arduino): one input as\n"
        "                      `alignas(16) const int8_t g_test_image[]`\n\n"
        "--arduino writes .cpp sources (what the Arduino IDE compiles in a sketch folder),\n"
        "includes the glue through the library header <tflm_patch.h> (the Arduino library\n"
        "tflm_patch/arduino/tflm_patch) and refuses operators Arduino_TensorFlowLite (TFLM of\n"
        "February 2023) lacks.\n"
        "--c-array writes .cc sources that include\n"
        "\"custom_ops/patch_exec/tflm/patch_exec_op.h\" (tflm_patch/csrc on the include path).\n\n"
        f"Arena margin: max(MARGIN x prediction, {ARENA_MARGIN_MIN} B), total rounded up to\n"
        "16 bytes. It covers what the prediction (TFLM reference kernels) does not model:\n"
        "CMSIS-NN kernels' scratch buffers and older TFLM struct sizes.\n\n"
        "Errors (one line, nothing written): a file that is not a TFLite model, a float\n"
        "model, an operator no MicroMutableOpResolver method is known for (named), a test\n"
        "image of the wrong size. Files are written atomically (never half-written).",
    )
    e.add_argument("model", help="an int8 .tflite (patched or not), or zoo:NAME")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--arduino", metavar="DIR",
                       help="write files for an Arduino sketch folder DIR (created if missing)")
    where.add_argument("--c-array", metavar="DIR",
                       help="write plain C++ files into DIR (created if missing)")
    e.add_argument("--name", default=DEFAULT_SYMBOL, metavar="SYMBOL",
                   help=f"C symbol of the model array (default {DEFAULT_SYMBOL}; the length is "
                   "SYMBOL_len)")
    e.add_argument("--test-image", metavar="FILE|seed:N",
                   help="also write test_image.h/.cc: an 8-bit image (pixel bytes as int8, as "
                   "TFLM's generate_cc_arrays) or .npy of the input's size, or seed:N for a "
                   "seeded synthetic image (--arduino default: "
                   "seed:20211029)")
    e.add_argument("--margin", type=parse_fraction, default=ARENA_MARGIN_FRACTION,
                   metavar="FRACTION",
                   help=f"arena safety margin as a fraction of the prediction (default "
                   f"{ARENA_MARGIN_FRACTION * 100:.0f}%%, at least {ARENA_MARGIN_MIN} B)")
    e.set_defaults(func=cmd_export)
