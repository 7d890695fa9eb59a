"""`tflm-patch export`: a thin command over `tflm_patch.export`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tflm_patch.cli_patch import write_atomic
from tflm_patch.errors import TflmPatchError

log = logging.getLogger(__name__)

SEED_PREFIX = "seed:"


def _image(arg: str | None, arduino: bool, model: Any) -> Any:
    from tflm_patch.export import DEFAULT_IMAGE_SEED, file_image, seeded_image

    if arg is None:
        return seeded_image(model, DEFAULT_IMAGE_SEED) if arduino else None
    if arg.startswith(SEED_PREFIX):
        try:
            seed = int(arg[len(SEED_PREFIX):])
        except ValueError:
            raise TflmPatchError(f"--test-image {arg!r}: expected seed:N with an integer N"
                                 ) from None
        return seeded_image(model, seed)
    return file_image(model, Path(arg))


def _output_dir(arg: str) -> Path:
    out = Path(arg)
    if out.exists() and not out.is_dir():
        raise TflmPatchError(f"{out}: exists and is not a directory")
    if not out.exists():
        if not out.parent.is_dir():
            raise TflmPatchError(f"{out.parent}: the parent directory does not exist")
        out.mkdir()
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from tflm_patch.cli import resolve_model_arg
    from tflm_patch.export import export_model
    from tflm_patch.model import load_model, read_model_bytes, require_int8

    arduino = args.arduino is not None
    path = resolve_model_arg(args.model)
    data = read_model_bytes(path)
    model = load_model(data)
    require_int8(model)
    image = _image(args.test_image, arduino, model)
    result = export_model(data, source=path.name, arduino=arduino, symbol=args.name,
                          image=image, margin_fraction=args.margin)
    out = _output_dir(args.arduino if arduino else args.c_array)
    for f in result.files:
        write_atomic(out / f.name, f.text.encode())
    a = result.arena
    print(f"{path.name} ({result.model_bytes:,} bytes) -> {out}/: "
          f"{', '.join(f.name for f in result.files)}")
    print(f"  arena   kTensorArenaSize = {a.total:,} B (predicted {a.predicted:,} for "
          f"cortex_m + margin {a.margin:,})")
    print(f"  ops     {len(result.ops)} kinds for MicroMutableOpResolver<{len(result.ops)}>: "
          + ", ".join(f"{o.op} x{o.count}" for o in result.ops))
    if image is not None:
        print(f"  image   test_image: {image.origin}")
    return 0


def add_parser(sub: Any) -> None:
    from tflm_patch.cli_patch import parse_fraction
    from tflm_patch.export import ARENA_MARGIN_FRACTION, ARENA_MARGIN_MIN, DEFAULT_SYMBOL

    e = sub.add_parser(
        "export", help="write a model as C++ source for a TFLM application or Arduino sketch",
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
