#!/usr/bin/env python3
"""Footprint of the PATCH_EXEC core on a Cortex-M4, and a run on QEMU's mps2-an386.

Cross-compiles the portable core (tflm_patch/csrc/custom_ops/patch_exec/*.cc) with
-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os -fstack-usage and prints:
  flash   .text + .rodata (+ .data) of the core's object (arm-none-eabi-size -A)
  RAM     static .data + .bss
  stack   the deepest call chain of each API function: frames from -fstack-usage /
          -fcallgraph-info summed along the call graph (libgcc/libc leaves listed, not
          counted), and the largest single frame
  scratch the scratch buffer each PATCH_EXEC of the patched model requests
then (unless --no-run) runs the patched model's consecutive PATCH_EXECs on
qemu-system-arm -M mps2-an386 and prints, per operator, the output checksum next to the
numpy reference's and the stack measured by painting; with Arduino_TensorFlowLite's
sources (--arduino-src), also the example sketch whole (tools/m4_arduino.py): its scores
and interpreter.arena_used_bytes(). QEMU does not emulate the DWT cycle counter: no cycle
counts.

    python tools/bench_m4.py [--model PATH|zoo:NAME] [--input IMAGE] [--no-run]
                             [--arduino-src DIR]
    python tools/bench_m4.py --speed [--model PATH|zoo:NAME] [--per-op] [--json]

--speed: instructions per Invoke() of the original and patched models with
Arduino_TensorFlowLite's CMSIS-NN kernels on QEMU with -icount (tools/m4_speed.py table;
without --model: person_detect and the zoo models that fit 256 KiB of SRAM).

Default model: ../shared/models/person_detect.tflite on person.bmp (else the zoo's
mbv1_025_96 on a seeded input), converted with the default plan.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import m4
import m4_arduino

from tflm_patch import patch_format as pf
from tflm_patch.errors import TflmPatchError


def _model(args: argparse.Namespace) -> m4.HarnessModel:
    if args.model is None:
        return m4.default_model()
    from tflm_patch.cli_args import resolve_model_arg
    from tflm_patch.model import load_model
    from tflm_patch.validate import load_input

    original = load_model(resolve_model_arg(args.model))
    model = m4.patched(original)
    first = model.operators[m4.chain_ops(model)[0]]
    if args.input and first.inputs[0] == model.inputs[0]:
        return m4.HarnessModel(f"{args.model} (patched)", model,
                               load_input(original, args.input)[0], Path(args.input).name)
    return m4.seeded_model(f"{args.model} (patched)", model, first)


def _glue_sizes(out: Path) -> m4.KernelSizes | str:
    """The glue's sizes when TFLM_ROOT and TFLM_EXTRA_INCLUDES give TFLM headers, else why
    not."""
    root, extra = os.environ.get("TFLM_ROOT", ""), os.environ.get("TFLM_EXTRA_INCLUDES", "")
    if not root or not extra:
        return "TFLM_ROOT and TFLM_EXTRA_INCLUDES not set"
    obj = m4.compile_glue(out, Path(root), [Path(p) for p in extra.split(":") if p])
    return m4.kernel_sizes([obj])


def _arduino_example(hm: m4.HarnessModel, src: str | None) -> None:
    """The example sketch with this model on Arduino_TensorFlowLite, on QEMU."""
    import shutil

    from tflm_patch import export

    if src:
        os.environ[m4_arduino.ENV_SRC] = src
    with tempfile.TemporaryDirectory(prefix="bench_sketch_") as tmp:
        sketch = Path(tmp) / "person_detection_patched"
        shutil.copytree(m4_arduino.LIBRARY_SRC.parent / "examples" / sketch.name, sketch)
        image = export.BundledImage(hm.stage_input.tobytes(), hm.input_origin)
        result = export.export_model(hm.model.raw, source=hm.label, arduino=True,
                                     image=image)
        for f in result.files:
            (sketch / f.name).write_text(f.text)
        run = m4_arduino.run_exported_sketch(sketch, Path(tmp) / "build")
    a = result.arena
    print(f"  sketch  examples/person_detection_patched with Arduino_TensorFlowLite (TFLM of "
          f"Feb 2023, CMSIS-NN) on QEMU: person {run.person}, no person {run.no_person}; "
          f"interpreter.arena_used_bytes() {_fmt(run.arena_used)} B of kTensorArenaSize "
          f"{_fmt(a.total)} B (predicted {_fmt(a.predicted)} + margin {_fmt(a.margin)})")


def _speed(args: argparse.Namespace) -> int:
    """The benchmark table of tools/m4_speed.py (next to this script)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import m4_speed

    argv = ["table", *(["--models", args.model] if args.model else []),
            *(["--per-op"] if args.per_op else []), *(["--json"] if args.json else [])]
    return int(m4_speed.main(argv))


def _fmt(n: int) -> str:
    return f"{n:,}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="an int8 .tflite or zoo:NAME (converted here)")
    p.add_argument("--input", help="the model input for the first PATCH_EXEC (8-bit image)")
    p.add_argument("--no-run", action="store_true", help="sizes only, no QEMU run")
    p.add_argument("--arduino-src", metavar="DIR",
                   help="Arduino_TensorFlowLite's src/ (default $ARDUINO_TENSORFLOWLITE_SRC): "
                   "also run the example sketch with this model on QEMU and print the arena "
                   "TFLM uses (first build of the library: minutes, then cached)")
    p.add_argument("--speed", action="store_true",
                   help="instructions per Invoke() with CMSIS-NN on QEMU (tools/m4_speed.py)")
    p.add_argument("--per-op", action="store_true", help="with --speed: per operator too")
    p.add_argument("--json", action="store_true", help="with --speed: JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.speed:
        return _speed(args)
    reason = m4.toolchain_reason(qemu=not args.no_run)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    try:
        hm = _model(args)
        ops = m4.chain_ops(hm.model)
        cases = m4.make_cases(hm.model, hm.stage_input, ops)
        with tempfile.TemporaryDirectory(prefix="bench_m4_") as tmp:
            harness = m4.build_harness(hm.model, cases, Path(tmp), hm.label)
            sizes = m4.kernel_sizes(harness.core)
            stack = m4.stack_report(harness.core)
            run = None if args.no_run else m4.run_qemu(harness.elf)
            glue = _glue_sizes(Path(tmp))
    except TflmPatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    print(f"PATCH_EXEC core on Cortex-M4 (arm-none-eabi-g++ {m4.compiler_version()}, "
          f"{' '.join(m4.M4_CPU_FLAGS)} -Os)")
    print(f"  flash   {_fmt(sizes.flash)} B = .text {_fmt(sizes.text)} + .rodata "
          f"{_fmt(sizes.rodata)} + .data {_fmt(sizes.data)}")
    print(f"  RAM     {_fmt(sizes.ram)} B static (.data {_fmt(sizes.data)} + .bss "
          f"{_fmt(sizes.bss)})")
    if isinstance(glue, str):
        print(f"  glue    (TFLM kernel wrapper) not compiled: {glue}")
    else:
        print(f"  glue    (TFLM kernel wrapper, tflm/patch_exec_op.cc, C++17, current TFLM): "
              f"flash {_fmt(glue.flash)} B = .text {_fmt(glue.text)} + .rodata "
              f"{_fmt(glue.rodata)}; RAM {_fmt(glue.ram)} B")
    print("  stack   deepest call chain per API function (frames summed along the call "
          "graph):")
    for c in stack.chains:
        path = " -> ".join(f"{f.name.split('(')[0].split()[-1].split('::')[-1]} "
                           f"{f.bytes if f.bytes is not None else '?'}" for f in c.frames)
        ext = f"; not counted: {', '.join(c.external)}" if c.external else ""
        print(f"          {c.entry:<24} {_fmt(c.total):>6} B  ({path}{ext})")
    print(f"          largest frame: {stack.largest_frame.bytes} B "
          f"({stack.largest_frame.name.split('(')[0]})")
    print(f"  scratch {hm.label}: requested per PATCH_EXEC (RequestScratchBufferInArena):")
    for op in hm.model.operators:
        if op.name == m4.PATCH_EXEC:
            o = pf.decode(op.custom_options or b"")
            print(f"          op {op.index:>2}  grid {o.grid[0]}x{o.grid[1]}  "
                  f"{len(o.layers)} layers  {_fmt(o.scratch_bytes):>7} B")
    if args.arduino_src or os.environ.get(m4_arduino.ENV_SRC):
        try:
            _arduino_example(hm, args.arduino_src)
        except TflmPatchError as e:
            print(f"error: the example sketch: {e}", file=sys.stderr)
            return 1
    if run is not None:
        expected = m4.expected_checksums(cases)
        print(f"  QEMU    {' '.join(run.command[:3])} ...: {hm.label}, input "
              f"{hm.input_origin}")
        for r in run.results:
            verdict = "equal" if expected.get(r.op) == r.checksum else "DIFFERENT"
            print(f"          op {r.op:>2}  {_fmt(r.bytes):>6} B  fnv1a {r.checksum}  numpy "
                  f"{expected.get(r.op)}  {verdict}  stack {_fmt(r.stack)} B (measured)")
        if run.checksums() != expected:
            print("error: the Cortex-M4 output differs from the numpy reference",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
