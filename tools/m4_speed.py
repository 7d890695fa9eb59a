#!/usr/bin/env python3
"""Instructions per Invoke() on a Cortex-M4 with Arduino_TensorFlowLite's CMSIS-NN kernels.

Any model (a .tflite or `zoo:NAME`, original or patched) is built into a bare-metal
program for QEMU's `mps2-an386` (Cortex-M4F) with Arduino_TensorFlowLite (TFLM of
February 2023, its CMSIS-NN kernels; `ARDUINO_TENSORFLOWLITE_SRC`, compiled once into the
archive of tools/m4_arduino.py, same flags as the example sketch: -Os, gnu++14,
-DARDUINO), the PATCH_EXEC operator (core + TFLM glue from the package's csrc/, the sources
the Arduino library copies) and an op resolver with every operator the model uses
(`tflm-patch export`'s model_ops.h). The program (tools/m4_speed_harness/speed_main.cc) runs

    qemu-system-arm -M mps2-an386 -nographic -semihosting -icount shift=0 -kernel app.elf

With `-icount shift=0` QEMU's virtual time advances 1 ns per executed instruction, so the
board's Timer0 (QEMU's hw/timer/cmsdk-apb-timer.c: a 32-bit down-counter at the 25 MHz
SYSCLK of hw/arm/mps2.c) read around Invoke() counts instructions in steps of 40
(`RESOLUTION`), and wraps only after 1.7e11. Nothing on the machine counts faster (SysTick
and the dual timer run from the same 25 MHz clock, SysTick with 24 bits, which wraps after
6.7e8 instructions). `check_counter` validates the count on a hand-written loop of known
length.

`profile(model_bytes, inputs)` gives an `M4Profile`: instructions of the second Invoke()
(the first must equal it within the resolution), per operator from TFLM's MicroProfiler
in a third, profiled Invoke (tflite::GetCurrentTimeTicks is the board counter),
`interpreter.arena_used_bytes()` and the outputs. Builds are cached by content hash under
~/.cache/tflm_patch/m4_speed/ (the TFLM archive: minutes once; a model: seconds), and so
are the runs (QEMU is deterministic with -icount).

    python tools/m4_speed.py profile MODEL [--input FILE] [--plan-args "..."] [--per-op]
    python tools/m4_speed.py table [--models ...] [--per-op] [--json]
    python tools/m4_speed.py check-counter
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import m4
import m4_arduino
import numpy as np

from tflm_patch import export
from tflm_patch.errors import TflmPatchError
from tflm_patch.model import Model, load_model
from tflm_patch.native import CORE_DIR

log = logging.getLogger("m4_speed")

REPO_ROOT = m4.REPO_ROOT
HARNESS = REPO_ROOT / "tools" / "m4_speed_harness"
RESOLUTION = 40  # instructions per tick of Timer0 (25 MHz) at -icount shift=0
ARENA_BYTES = 3 * 1024 * 1024  # static arena of the program (RAM: 4 MiB at 0x20000000)
INPUT_SEED = export.DEFAULT_IMAGE_SEED
RECIPE_VERSION = 1
QEMU_ICOUNT = ("-icount", "shift=0")
BASELINE = ("TFLM (Arduino_TensorFlowLite, Feb 2023) with CMSIS-NN kernels, -Os, Cortex-M4 on "
            "QEMU mps2-an386, instructions counted with -icount")


class SpeedError(m4.M4Error):
    """Building or running the speed program failed, or its output is inconsistent."""


@dataclass(frozen=True)
class OpCount:
    index: int  # operator index in the (main) subgraph
    name: str  # TFLM's op name (builtin name, or the custom code)
    instructions: int  # MicroProfiler ticks x RESOLUTION


@dataclass
class M4Profile:
    total: int  # instructions of the second Invoke() (ticks x RESOLUTION)
    per_op: list[OpCount]
    arena_used: int  # interpreter.arena_used_bytes()
    outputs: list[np.ndarray]
    first: int = 0  # instructions of the first Invoke()
    profiled_total: int = 0  # instructions of the profiled Invoke() (profiler included)
    resolution: int = RESOLUTION  # each count is within +-resolution of the exact count

    @property
    def per_op_sum(self) -> int:
        return sum(o.instructions for o in self.per_op)


# ----------------------------------------------------------------------------- tools


def reason() -> str:
    """Why profile() cannot run here ("" when it can)."""
    why = m4_arduino.tool_reason()
    if why:
        return why
    return m4_arduino.source_dir_or_reason()[1]


def qemu_command(elf: Path) -> tuple[str, ...]:
    return (m4.QEMU, "-M", m4.QEMU_MACHINE, "-nographic", "-monitor", "none", "-semihosting",
            *QEMU_ICOUNT, "-kernel", str(elf))


def cache_root() -> Path:
    return Path.home() / ".cache" / "tflm_patch" / "m4_speed"


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:20]


def _files_digest(paths: Sequence[Path]) -> str:
    return _digest(*(x for p in sorted(paths) for x in (p.name, p.read_bytes())))


def _published(key: str, make: Callable[[Path], None]) -> Path:
    """cache_root()/key, made by `make(work_dir)` once (`m4.published`)."""
    return m4.published(cache_root(), key, make)


# ----------------------------------------------------------------------------- build


def patch_exec_sources() -> list[Path]:
    """The PATCH_EXEC core and its TFLM glue (not the Python registerer)."""
    return [*sorted(CORE_DIR.glob("*.cc")), CORE_DIR / "tflm" / "patch_exec_op.cc"]


def _runtime_inputs() -> list[Path]:
    return [*patch_exec_sources(), *CORE_DIR.glob("*.h"), *(CORE_DIR / "tflm").glob("*.h"),
            m4.HARNESS_DIR / "m4_startup.c", m4.HARNESS_DIR / "m4_link.ld",
            *HARNESS.glob("*.*")]


def _cxx(src: Path, *extra: str) -> tuple[str, ...]:
    return (m4.GXX, *m4_arduino.CXX_FLAGS, "-I", str(HARNESS),
            "-I", str(CORE_DIR.parent.parent), *m4_arduino.include_flags(src), *extra)


def build_runtime(src: Path) -> Path:
    """PATCH_EXEC (core + glue), the speed program's main and the start-up code as objects,
    cached by content."""
    key = "rt_" + _digest(f"recipe {RECIPE_VERSION} {m4.compiler_version()} {src.resolve()}",
                          str(m4_arduino.CXX_FLAGS), str(ARENA_BYTES),
                          _files_digest(_runtime_inputs()))

    def make(work: Path) -> None:
        for k, s in enumerate(patch_exec_sources()):
            m4._run((*_cxx(src), "-c", str(s), "-o", str(work / f"{k:02d}_{s.stem}.o")),
                    f"compiling {s.name}")
        m4._run((*_cxx(src, f"-DM4_SPEED_ARENA_BYTES={ARENA_BYTES}u"), "-c",
                 str(HARNESS / "speed_main.cc"), "-o", str(work / "speed_main.o")),
                "compiling speed_main.cc")
        m4._run((m4.GCC, *m4.HARNESS_C_FLAGS, "-c", str(m4.HARNESS_DIR / "m4_startup.c"),
                 "-o", str(work / "zz_startup.o")), "compiling m4_startup.c")

    return _published(key, make)


def _data_asm(inputs: Sequence[np.ndarray]) -> str:
    """speed_data.S: the model and the inputs (files next to it) as read-only symbols."""
    lines = ['\t.section .rodata.speed_data,"a"', "\t.balign 16", "\t.global g_model",
             "g_model:", '\t.incbin "model.tflite"']
    for k in range(len(inputs)):
        lines += ["\t.balign 16", f"g_input_{k}:", f'\t.incbin "input_{k}.bin"']
    lines += ["\t.balign 4", "\t.global g_inputs", "g_inputs:",
              *(f"\t.word g_input_{k}" for k in range(len(inputs))),
              "\t.global g_input_bytes", "g_input_bytes:",
              *(f"\t.word {x.nbytes}" for x in inputs),
              "\t.global g_num_inputs", "g_num_inputs:", f"\t.word {len(inputs)}", ""]
    return "\n".join(lines)


SPEED_OPS_CC = ('#include "speed_ops.h"\n#include "model_ops.h"\n\n'
                "TfLiteStatus RegisterSpeedOps(SpeedOpResolver& resolver) {\n"
                "  return RegisterModelOps(resolver);\n}\n")


def build_ops(src: Path, runtime: Path, model: Model) -> Path:
    """speed_ops.o for the operator kinds of `model` (cached: shared by every model with
    the same kinds), from `tflm-patch export`'s model_ops.h."""
    ops = export.resolver_ops(model)
    missing = [o.op for o in ops if not o.in_arduino_2023]
    if missing:
        raise SpeedError(f"Arduino_TensorFlowLite (TFLM of February 2023) has no kernel for "
                         f"{', '.join(missing)}")
    settings = ("// The op resolver's size (m4_speed).\n#pragma once\n"
                f"constexpr unsigned int kNumResolverOps = {len(ops)};\n")
    glue = '"custom_ops/patch_exec/tflm/patch_exec_op.h"'
    header = export.model_ops_file(ops, "m4_speed", glue).text
    key = "ops_" + _digest(runtime.name, settings, header, SPEED_OPS_CC)

    def make(work: Path) -> None:
        (work / "model_settings.h").write_text(settings)
        (work / "model_ops.h").write_text(header)
        (work / "speed_ops.cc").write_text(SPEED_OPS_CC)
        m4._run((*_cxx(src, "-I", str(work)), "-c", str(work / "speed_ops.cc"), "-o",
                 str(work / "speed_ops.o")), "compiling speed_ops.cc")

    return _published(key, make) / "speed_ops.o"


def build_program(data: bytes, inputs: Sequence[np.ndarray]) -> Path:
    """The speed program of model `data` on `inputs` (cached by content): its folder,
    holding app.elf."""
    src, why = m4_arduino.source_dir_or_reason()
    if src is None:
        raise SpeedError(why)
    archive = m4_arduino.build_arduino_tflm(src)
    runtime = build_runtime(src)
    ops = build_ops(src, runtime, load_model(data))
    arrays = [np.ascontiguousarray(x) for x in inputs]
    key = "app_" + _digest(runtime.name, ops.parent.name, str(archive), data,
                           *(x.tobytes() for x in arrays))

    def make(work: Path) -> None:
        (work / "model.tflite").write_bytes(data)
        for k, x in enumerate(arrays):
            (work / f"input_{k}.bin").write_bytes(x.tobytes())
        (work / "speed_data.S").write_text(_data_asm(arrays))
        _assemble(work)
        m4._run((m4.GXX, *m4.LINK_FLAGS, "-T", str(m4.HARNESS_DIR / "m4_link.ld"),
                 str(work / "speed_data.o"), str(ops), *map(str, sorted(runtime.glob("*.o"))),
                 str(archive), "-o", str(work / "app.elf")), "linking the speed program")

    return _published(key, make)


def _assemble(work: Path) -> None:
    """as resolves .incbin against -I folders."""
    m4._run((m4.GCC, *m4.M4_CPU_FLAGS, f"-Wa,-I{work}", "-c", str(work / "speed_data.S"),
             "-o", str(work / "speed_data.o")), "assembling speed_data.S")


# ----------------------------------------------------------------------------- run


def run_qemu(elf: Path, timeout: float = m4.QEMU_TIMEOUT) -> str:
    cmd = qemu_command(elf)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise SpeedError(f"{' '.join(cmd)}: no exit after {timeout:.0f} s") from None
    except OSError as e:
        raise SpeedError(f"cannot run {m4.QEMU}: {e}") from None
    text = r.stdout + r.stderr
    if r.returncode != 0 or "speed: done" not in text:
        raise SpeedError(f"the speed program failed on QEMU (exit status {r.returncode}):\n"
                         f"{text[-4000:]}")
    return text


_TICKS = re.compile(r"^speed: run (\d) ticks (\d+)(?: profiler_total_ticks (\d+))?$", re.M)
_OUTPUT = re.compile(r"^speed: run (\d) output (\d+) type (\d+) bytes (\d+) hex ([0-9a-f]*)$",
                     re.M)
_ARENA = re.compile(r"^speed: arena_used_bytes (\d+)$", re.M)
# MicroProfiler::Log of Feb 2023 formats "%s took %" PRIu32 " ticks (%d ms).": TFLM's
# MicroVsnprintf has no "l" length modifier, so with newlib's PRIu32 ("lu") it prints "lu"
# and the "%d" takes the ticks. Both forms are read.
_EVENT = re.compile(r"^(\S+) took (?:lu ticks \((\d+) ms\)|(\d+) ticks \(\d+ ms\))\.\r?$", re.M)


def _outputs(text: str, model: Model, run: int) -> list[np.ndarray]:
    found = [m for m in _OUTPUT.finditer(text) if int(m.group(1)) == run]
    if len(found) != len(model.outputs):
        raise SpeedError(f"run {run}: {len(found)} outputs printed, the model has "
                         f"{len(model.outputs)}")
    arrays = []
    for m, t in zip(found, model.outputs, strict=True):
        info = model.tensors[t]
        raw = bytes.fromhex(m.group(5))
        if len(raw) != int(m.group(4)) or len(raw) != info.nbytes:
            raise SpeedError(f"run {run}: output {m.group(2)} has {len(raw)} bytes, tensor "
                             f"{info.shape} {info.dtype} needs {info.nbytes}")
        arrays.append(np.frombuffer(raw, np.dtype(info.dtype)).reshape(info.shape).copy())
    return arrays


def parse_run(text: str, model: Model) -> M4Profile:
    """The M4Profile of a speed program's output; SpeedError when it is inconsistent."""
    ticks = {int(m.group(1)): (int(m.group(2)), m.group(3)) for m in _TICKS.finditer(text)}
    arena = _ARENA.search(text)
    if set(ticks) != {1, 2, 3} or ticks[3][1] is None or arena is None:
        raise SpeedError(f"unexpected output of the speed program:\n{text[-4000:]}")
    runs = [_outputs(text, model, r) for r in (1, 2, 3)]
    if any(len(a) != len(runs[0]) or any(x.tobytes() != y.tobytes() for x, y in zip(a, runs[0],
                                                                                       strict=True))
           for a in runs[1:]):
        raise SpeedError("the outputs of the three Invoke() calls differ")
    body = text.split("speed: profiler log begin", 1)[-1].split("speed: profiler log end")[0]
    events = [(m.group(1), int(m.group(2) or m.group(3))) for m in _EVENT.finditer(body)]
    if sum(t for _, t in events) != int(ticks[3][1] or 0):
        raise SpeedError(f"the profiler's events ({len(events)}) do not add up to its total")
    if len(events) != len(model.operators):
        raise SpeedError(f"{len(events)} profiler events for {len(model.operators)} operators")
    per_op = []
    for (name, t), op in zip(events, model.operators, strict=True):
        if name != op.name:
            raise SpeedError(f"profiler event {op.index} is {name}, operator {op.index} is "
                             f"{op.name}")
        per_op.append(OpCount(op.index, name, t * RESOLUTION))
    first, second = ticks[1][0] * RESOLUTION, ticks[2][0] * RESOLUTION
    if abs(first - second) > RESOLUTION:
        log.warning("first Invoke() %d instructions, second %d: more than the counter's "
                    "resolution apart", first, second)
    return M4Profile(second, per_op, int(arena.group(1)), runs[1], first=first,
                     profiled_total=ticks[3][0] * RESOLUTION)


def default_inputs(model: Model) -> list[np.ndarray]:
    """The seeded int8 input of every model input (depends only on the input shapes: the
    same for a model and its patched version)."""
    from tflm_patch.validate import random_inputs

    return random_inputs(model, INPUT_SEED)


def profile(model_bytes: bytes, inputs: list[np.ndarray] | None = None) -> M4Profile:
    """Instructions per Invoke() of the model on the Cortex-M4 (see the module's doc)."""
    model = load_model(model_bytes)
    arrays = default_inputs(model) if inputs is None else list(inputs)
    if len(arrays) != len(model.inputs):
        raise SpeedError(f"the model has {len(model.inputs)} inputs, {len(arrays)} given")
    fixed = []
    for x, t in zip(arrays, model.inputs, strict=True):
        info = model.tensors[t]
        a = np.asarray(x)
        if a.dtype != np.dtype(info.dtype) or a.size != info.numel:
            raise SpeedError(f"input for tensor {t} is {a.dtype} x{a.size}; the model needs "
                             f"{info.dtype} {list(info.shape)}")
        fixed.append(a.reshape(info.shape))
    folder = build_program(model_bytes, fixed)
    run_key = _digest(" ".join(qemu_command(Path("app.elf"))), _qemu_version())
    run_file = folder / f"run_{run_key}.txt"
    if run_file.is_file():
        text = run_file.read_text()
    else:
        text = run_qemu(folder / "app.elf")
        tmp = run_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(run_file)
    return parse_run(text, model)


def _qemu_version() -> str:
    r = subprocess.run([m4.QEMU, "--version"], capture_output=True, text=True, check=False)
    return r.stdout.splitlines()[0] if r.stdout else ""


# ----------------------------------------------------------------------------- counter check


@dataclass(frozen=True)
class CounterCheck:
    iterations: int
    expected: int  # instructions between the two counter reads, from the code
    measured: int  # ticks x RESOLUTION


_COUNTER = re.compile(r"^counter: iterations (\d+) expected (\d+) ticks (\d+)$", re.M)


def build_counter_program() -> Path:
    """tools/m4_speed_harness/counter_main.c + counter_loop.S (cached): its folder, holding
    counter.elf."""
    sources = [HARNESS / "counter_main.c", HARNESS / "counter_loop.S",
               HARNESS / "board_counter.h", m4.HARNESS_DIR / "m4_startup.c",
               m4.HARNESS_DIR / "m4_link.ld"]
    key = "counter_" + _digest(f"{RECIPE_VERSION} {m4.compiler_version()}",
                               _files_digest(sources))

    def make(work: Path) -> None:
        objects = []
        for s in (HARNESS / "counter_main.c", HARNESS / "counter_loop.S",
                  m4.HARNESS_DIR / "m4_startup.c"):
            obj = work / f"{s.stem}.o"
            m4._run((m4.GCC, *m4.HARNESS_C_FLAGS, "-I", str(HARNESS), "-c", str(s), "-o",
                     str(obj)), f"compiling {s.name}")
            objects.append(str(obj))
        m4._run((m4.GCC, *m4.LINK_FLAGS, "-T", str(m4.HARNESS_DIR / "m4_link.ld"), *objects,
                 "-o", str(work / "counter.elf")), "linking the counter program")

    return _published(key, make)


def check_counter() -> list[CounterCheck]:
    """The board counter on a loop of known instruction count (tools/m4_speed_harness/
    counter_loop.S): each measured count must be within RESOLUTION of the expected."""
    elf = build_counter_program() / "counter.elf"
    cmd = qemu_command(elf)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=m4.QEMU_TIMEOUT,
                       stdin=subprocess.DEVNULL, check=False)
    text = r.stdout + r.stderr
    if r.returncode != 0 or "counter: done" not in text:
        raise SpeedError(f"the counter program failed (exit status {r.returncode}):\n{text}")
    return [CounterCheck(int(m.group(1)), int(m.group(2)), int(m.group(3)) * RESOLUTION)
            for m in _COUNTER.finditer(text)]


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    label: str
    convert_args: tuple[str, ...] | None  # None: the original model

    @property
    def is_original(self) -> bool:
        return self.convert_args is None


ORIGINAL = Variant("original", None)
VARIANTS = (ORIGINAL, Variant("default plan", ()),
            Variant("--objective memory", ("--objective", "memory")),
            Variant("--max-overhead 10%", ("--max-overhead", "10%")),
            Variant("--single-stage", ("--single-stage",)),
            # the two above under the memory objective (the default objective may reject
            # every patched plan for its instruction count)
            Variant("--objective memory --max-overhead 10%",
                    ("--objective", "memory", "--max-overhead", "10%")),
            Variant("--objective memory --single-stage",
                    ("--objective", "memory", "--single-stage")))


def _package_digest() -> str:
    pkg = REPO_ROOT / "tflm_patch"
    return _files_digest(sorted(pkg.glob("*.py")))


def convert_options() -> str:
    """`tflm-patch convert --help` (which options this version has)."""
    r = subprocess.run([sys.executable, "-c", "import sys; from tflm_patch.cli import main; "
                        "sys.exit(main())", "convert", "--help"], capture_output=True,
                       text=True, check=False)
    return r.stdout


def convert(data: bytes, args: Sequence[str]) -> bytes:
    """`tflm-patch convert MODEL -o OUT *args` on `data` (cached by the model, the
    arguments and the package's sources); the model itself when it is left unchanged."""
    key = "convert_" + _digest(data, " ".join(args), _package_digest())

    def make(work: Path) -> None:
        (work / "in.tflite").write_bytes(data)
        cmd = [sys.executable, "-c", "import sys; from tflm_patch.cli import main; "
               "sys.exit(main())", "convert", str(work / "in.tflite"), "-o",
               str(work / "out.tflite"), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        (work / "convert.txt").write_text(r.stdout + r.stderr)
        if r.returncode != 0 or not (work / "out.tflite").is_file():
            lines = (r.stderr or r.stdout).strip().splitlines()
            raise SpeedError(f"tflm-patch convert {' '.join(args)}: "
                             f"{lines[-1] if lines else f'exit status {r.returncode}'}")

    return (_published(key, make) / "out.tflite").read_bytes()


def variant_bytes(data: bytes, variant: Variant) -> bytes:
    return data if variant.convert_args is None else convert(data, variant.convert_args)


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class BenchModel:
    label: str
    data: bytes
    inputs: list[np.ndarray]
    input_origin: str


SRAM_BYTES = 256 * 1024  # the boards this package is for (Nano 33 BLE: 256 KiB SRAM)
FLASH_BYTES = 1024 * 1024


def shared_person_detect() -> BenchModel | str:
    """person_detect on person.bmp (pixel bytes reinterpreted as int8, as the example
    sketch's test image), or why not."""
    from tflm_patch.validate import load_input

    path, image = m4.SHARED_MODELS / "person_detect.tflite", m4.SHARED_MODELS / "person.bmp"
    if not (path.is_file() and image.is_file()):
        return f"person_detect skipped: {path} or {image.name} not found"
    data = path.read_bytes()
    return BenchModel("person_detect", data, load_input(load_model(data), image),
                      "person.bmp")


def fits_board(data: bytes) -> bool:
    """The original's predicted Cortex-M arena fits the board's SRAM, the model its flash."""
    from tflm_patch.arena import predict_arena

    return (len(data) <= FLASH_BYTES
            and predict_arena(load_model(data), "cortex_m").total <= SRAM_BYTES)


def zoo_models(names: Sequence[str] | None = None) -> list[BenchModel]:
    from tflm_patch.zoo import ZOO_NAMES, ensure_model

    result = []
    for name in names or ZOO_NAMES:
        data = ensure_model(name).read_bytes()
        if names is None and not fits_board(data):
            log.info("zoo:%s: its arena does not fit %d KiB of SRAM; left out", name,
                     SRAM_BYTES // 1024)
            continue
        result.append(BenchModel(f"zoo:{name}", data, default_inputs(load_model(data)),
                                 f"seeded random int8 (numpy default_rng({INPUT_SEED}))"))
    return result


def load_bench_model(arg: str, image: str | None = None) -> BenchModel:
    """A .tflite path or zoo:NAME; the input from `image` (8-bit image or .npy) or seeded."""
    from tflm_patch.cli_args import resolve_model_arg
    from tflm_patch.validate import load_input

    data = Path(resolve_model_arg(arg)).read_bytes()
    model = load_model(data)
    label = Path(arg).stem if arg.endswith(".tflite") else arg
    if image:
        return BenchModel(label, data, load_input(model, image), Path(image).name)
    if Path(arg).name == "person_detect.tflite":
        bmp = Path(arg).with_name("person.bmp")
        if bmp.is_file():
            return BenchModel(label, data, load_input(model, bmp), bmp.name)
    return BenchModel(label, data, default_inputs(model),
                      f"seeded random int8 (numpy default_rng({INPUT_SEED}))")


# ----------------------------------------------------------------------------- table


@dataclass
class Row:
    model: str
    variant: str
    input_origin: str
    error: str = ""
    changed: bool = True
    profile: M4Profile | None = None
    ratio: float | None = None
    outputs_equal: bool | None = None  # = the original's outputs on the Cortex-M4
    x86_equal: bool | None = None  # = x86 TFLM's outputs of the same variant
    plan: str = ""
    # the original operators (first, last) behind each operator; None when unknown
    op_ranges: list[tuple[int, int] | None] = field(default_factory=list)
    base: M4Profile | None = None  # the original's profile

    def replaces(self, k: int) -> str:
        r = self.op_ranges[k] if k < len(self.op_ranges) else None
        return "" if r is None else f"op {r[0]}" if r[0] == r[1] else f"ops {r[0]}..{r[1]}"

    def replaced_instructions(self, k: int) -> int | None:
        """The original's instructions in the operators operator k stands for."""
        r = self.op_ranges[k] if k < len(self.op_ranges) else None
        if r is None or self.base is None:
            return None
        return sum(o.instructions for o in self.base.per_op[r[0]:r[1] + 1])


def _x86_outputs(data: bytes, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    from tflm_patch.validate import run_patched

    return run_patched(load_model(data), inputs)


def op_ranges(original: Model, patched: Model) -> list[tuple[int, int] | None]:
    """For each operator of `patched`, the original operators (first, last) it stands for,
    from the plan metadata; None where they cannot be matched."""
    raw = patched.metadata("tflm_patch.plan")
    if raw is None:
        return [(o.index, o.index) for o in patched.operators]
    meta = json.loads(raw)
    stages = [meta["stage"], *meta.get("patched_stages", []), *meta.get("fused_stages", [])]
    ranges = {s["first_op"]: s["last_op"] for s in stages}
    units: list[tuple[int, int]] = []
    k = 0
    while k < len(original.operators):
        last = ranges.get(k, k)
        units.append((k, last))
        k = last + 1
    names = [original.operators[a].name if a == b and a not in ranges else "PATCH_EXEC"
             for a, b in units]
    if names != [o.name for o in patched.operators]:
        # PADs folded into a stage's padding, or a TRANSPOSE folded: keep the order of the
        # PATCH_EXECs only
        execs = iter(sorted(ranges.items()))
        return [next(execs, None) if o.name == "PATCH_EXEC" else None
                for o in patched.operators]
    matched: list[tuple[int, int] | None] = list(units)
    return matched


def _plan_label(data: bytes) -> str:
    meta = load_model(data).metadata("tflm_patch.plan")
    if meta is None:
        return ""
    d = json.loads(meta)
    return (f"ops {d['stage']['first_op']}..{d['stage']['last_op']} {d['grid'][0]}x"
            f"{d['grid'][1]} + {len(d.get('patched_stages', []))} stages + "
            f"{len(d.get('fused_stages', []))} fused")


def bench(bm: BenchModel, variants: Sequence[Variant] = VARIANTS) -> list[Row]:
    rows = []
    base: M4Profile | None = None
    original = load_model(bm.data)
    for v in variants:
        row = Row(bm.label, v.label, bm.input_origin)
        try:
            data = variant_bytes(bm.data, v)
            row.changed = v.is_original or data != bm.data
            row.plan = _plan_label(data)
            row.profile = profile(data, bm.inputs)
            row.op_ranges = op_ranges(original, load_model(data))
            if v.is_original:
                base = row.profile
            row.base = base
            row.outputs_equal = base is not None and _same(row.profile.outputs, base.outputs)
            row.x86_equal = _same(row.profile.outputs, _x86_outputs(data, bm.inputs))
        except TflmPatchError as e:
            row.error = str(e).splitlines()[0]
        if row.profile is not None and base is not None:
            row.ratio = row.profile.total / base.total
        rows.append(row)
    return rows


def _same(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes()
                                    for x, y in zip(a, b, strict=True))


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def format_table(rows: Sequence[Row]) -> str:
    out = [f"Baseline: {BASELINE}.", "",
           "| model | variant | instructions / Invoke | vs original | arena used | "
           "outputs = original | outputs = x86 TFLM | per-op sum / total | plan |",
           "|---|---|---:|---:|---:|---|---|---:|---|"]
    for r in rows:
        p = r.profile
        if p is None:
            out.append(f"| {r.model} | {r.variant} | error: {r.error} | | | | | | |")
            continue
        label = r.variant if r.changed else f"{r.variant} (unchanged)"
        ratio = "1.00x" if r.ratio is None else f"{r.ratio:.2f}x"
        equal = "yes" if r.outputs_equal else "NO"
        x86 = "yes" if r.x86_equal else "no"
        out.append(f"| {r.model} | {label} | {_fmt(p.total)} | {ratio} | {_fmt(p.arena_used)} B "
                   f"| {equal} | {x86} | {p.per_op_sum / p.total:.4f} | {r.plan} |")
    inputs = dict.fromkeys(f"{r.model}: {r.input_origin}" for r in rows)
    out += ["", f"Inputs: {'; '.join(inputs)}.",
            "outputs = original: the variant's output bytes on the Cortex-M4 equal the "
            "original model's there; outputs = x86 TFLM: they equal x86 TFLM's (current "
            "TFLM, reference kernels) for the same model and input (Feb 2023 TFLM's int8 "
            "MEAN rounds differently from today's: models with MEAN can differ there).",
            f"Counts are within +-{RESOLUTION} instructions (Timer0 at 25 MHz); per-op: "
            "TFLM's MicroProfiler in a third Invoke, summed, over the second Invoke's total."]
    return "\n".join(out)


def format_per_op(rows: Sequence[Row]) -> str:
    out = []
    for r in rows:
        p = r.profile
        if p is None:
            continue
        out += ["", f"{r.model}, {r.variant}: {_fmt(p.total)} instructions per Invoke, "
                f"per-op sum {_fmt(p.per_op_sum)} (MicroProfiler, third Invoke)",
                "| op | name | replaces | instructions | share | original ops | ratio |",
                "|---:|---|---|---:|---:|---:|---:|"]
        for o in p.per_op:
            before = r.replaced_instructions(o.index)
            ratio = f"{o.instructions / before:.2f}x" if before else ""
            out.append(f"| {o.index} | {o.name} | {r.replaces(o.index)} | "
                       f"{_fmt(o.instructions)} | {100 * o.instructions / max(p.total, 1):.1f}% "
                       f"| {_fmt(before)} | {ratio} |")
    return "\n".join(out)


def rows_json(rows: Sequence[Row]) -> list[dict[str, object]]:
    result = []
    for r in rows:
        d: dict[str, object] = {"model": r.model, "variant": r.variant,
                                "input": r.input_origin, "changed": r.changed,
                                "plan": r.plan, "error": r.error or None,
                                "ratio": r.ratio, "outputs_equal": r.outputs_equal,
                                "x86_equal": r.x86_equal}
        if r.profile is not None:
            p = dataclasses.asdict(r.profile)
            p["outputs"] = [x.tolist() for x in r.profile.outputs]
            p["per_op"] = [{**dataclasses.asdict(o), "replaces": r.replaces(o.index),
                            "original_instructions": r.replaced_instructions(o.index)}
                           for o in r.profile.per_op]
            d["profile"] = p
        result.append(d)
    return result


# ----------------------------------------------------------------------------- CLI


def _variants(args: argparse.Namespace) -> list[Variant]:
    available = convert_options()
    result = []
    for v in VARIANTS:
        missing = [a for a in v.convert_args or () if a.startswith("--") and a not in available]
        if missing:
            log.warning("%s: tflm-patch convert has no %s option here; left out", v.label,
                        missing[0])
            continue
        result.append(v)
    if args.plan_args:
        result.append(Variant(args.plan_args, tuple(shlex.split(args.plan_args))))
    return result


def table_main(args: argparse.Namespace) -> int:
    why = reason()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    models: list[BenchModel] = []
    if args.models:
        models = [load_bench_model(a) for a in args.models]
    else:
        pd = shared_person_detect()
        if isinstance(pd, str):
            print(pd, file=sys.stderr)
        else:
            models.append(pd)
        models += zoo_models()
    variants = _variants(args)
    rows = [r for bm in models for r in bench(bm, variants)]
    if args.json:
        print(json.dumps({"baseline": BASELINE, "resolution": RESOLUTION,
                          "rows": rows_json(rows)}, indent=1))
    else:
        print(format_table(rows))
        if args.per_op:
            print(format_per_op(rows))
    return 0 if all(r.error == "" and r.outputs_equal for r in rows) else 1


def profile_main(args: argparse.Namespace) -> int:
    why = reason()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    bm = load_bench_model(args.model, args.input)
    variants = [ORIGINAL] if args.plan_args is None else [
        ORIGINAL, Variant(f"convert {args.plan_args}".strip(), tuple(shlex.split(args.plan_args)))]
    rows = bench(bm, variants)
    if args.json:
        print(json.dumps({"baseline": BASELINE, "rows": rows_json(rows)}, indent=1))
    else:
        print(format_table(rows))
        if args.per_op:
            print(format_per_op(rows))
    return 0 if all(r.error == "" and r.outputs_equal for r in rows) else 1


def counter_main(args: argparse.Namespace) -> int:
    why = m4.toolchain_reason(qemu=True)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    checks = check_counter()
    ok = True
    for c in checks:
        good = abs(c.measured - c.expected) < RESOLUTION
        ok &= good
        print(f"loop of {c.iterations:,} iterations: expected {c.expected:,} instructions, "
              f"measured {c.measured:,} ({'ok' if good else 'OFF'}, resolution {RESOLUTION})")
    return 0 if ok and checks else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--per-op", action="store_true",
                   help="also the per-operator instructions (TFLM's MicroProfiler)")
    p.add_argument("--plan-args", metavar="ARGS",
                   help="one more variant: tflm-patch convert with these options, e.g. "
                   "\"--objective memory\"")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="the benchmark table (person_detect + zoo models that "
                       "fit 256 KiB of SRAM, five variants each)")
    t.add_argument("--models", nargs="+", metavar="MODEL", help=".tflite paths or zoo:NAME "
                   "(default: person_detect and the zoo models that fit the board)")
    add_arguments(t)
    pr = sub.add_parser("profile", help="one model: the original, and with --plan-args a "
                        "patched version")
    pr.add_argument("model", help="a .tflite or zoo:NAME")
    pr.add_argument("--input", help="an 8-bit image or .npy as the input (default: seeded; "
                    "person.bmp next to person_detect.tflite)")
    add_arguments(pr)
    sub.add_parser("check-counter", help="the board counter on loops of known length")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        if args.command == "table":
            return table_main(args)
        if args.command == "profile":
            return profile_main(args)
        return counter_main(args)
    except TflmPatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
