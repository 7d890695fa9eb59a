"""The Arduino example sketch, whole, on an emulated Cortex-M4 with Arduino_TensorFlowLite.

Given the sources of Arduino_TensorFlowLite (tflite-micro-arduino-examples, TFLM of
February 2023; `ARDUINO_TENSORFLOWLITE_SRC` = its `src/` folder, never part of this
repository), `build_arduino_tflm` compiles them as the Arduino IDE would for the Nano 33
BLE's Cortex-M4 (`-DARDUINO`, which that library uses in place of TF_LITE_STATIC_MEMORY
and to pick its CMSIS-NN kernels) into a static archive, cached under
~/.cache/tflm_patch/arduino_tflm/ (a first build takes minutes). `build_example` links the
example sketch (tflm_patch/arduino/tflm_patch/examples/person_detection_patched, with the files
`tflm-patch export --arduino` wrote) with the tflm_patch library, that archive, a
semihosting stand-in for the Arduino core (tests/arduino_stubs/) and the start-up code of
tests/m4_harness/; `run_example` runs it on QEMU's mps2-an386 and reads what the sketch
prints on Serial: the scores and `interpreter.arena_used_bytes()`. QEMU's time is not the
board's: the latency is not measured (the stand-in's micros() stands still).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import m4

from tflm_patch.native import ARDUINO_LIBRARY

log = logging.getLogger(__name__)

ENV_SRC = "ARDUINO_TENSORFLOWLITE_SRC"
STUBS = m4.REPO_ROOT / "tests" / "arduino_stubs"
LIBRARY_SRC = ARDUINO_LIBRARY / "src"
SKETCH = "person_detection_patched.ino"
AR = "arm-none-eabi-ar"
RECIPE_VERSION = 1

# The Nano 33 BLE compiles C++ as gnu++14 (ArduinoCore-mbed); hard float here because the
# program links with the hard-float newlib of Debian's toolchain (the board uses softfp:
# same instructions, another calling convention).
COMMON = (*m4.M4_CPU_FLAGS, "-Os", "-ffunction-sections", "-fdata-sections",
          "-DARDUINO=10819", "-DNDEBUG", "-Wno-psabi")
CXX_FLAGS = (*COMMON, "-std=gnu++14", "-fno-rtti", "-fno-exceptions")
C_FLAGS = (*COMMON, "-std=gnu11")
THIRD_PARTY_INCLUDES = ("third_party/flatbuffers/include", "third_party/gemmlowp",
                        "third_party/ruy", "third_party/cmsis",
                        "third_party/cmsis/CMSIS/Core/Include", "third_party/cmsis_nn",
                        "third_party/cmsis_nn/Include")

_SCORES = re.compile(r"person (-?\d+) \(([0-9.]+)\)\s+no person (-?\d+) \(([0-9.]+)\)\s+"
                     r"arena used (\d+) of (\d+) B")


def source_dir_or_reason(env: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    env = os.environ if env is None else env
    value = env.get(ENV_SRC, "")
    if not value:
        return None, (f"{ENV_SRC} not set (the src/ folder of Arduino_TensorFlowLite, "
                      "github.com/tensorflow/tflite-micro-arduino-examples)")
    src = Path(value)
    if not (src / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file():
        return None, f"{ENV_SRC}={value} is not Arduino_TensorFlowLite's src/ folder"
    return src, ""


def include_flags(src: Path) -> list[str]:
    dirs = [src, *(src / d for d in THIRD_PARTY_INCLUDES if (src / d).is_dir())]
    return [a for d in dirs for a in ("-I", str(d))]


def library_sources(src: Path) -> list[Path]:
    """TFLM and its third-party code; not the board peripherals or the serial test
    protocol (they need the Arduino core)."""
    return sorted(p for top in ("tensorflow", "third_party") for p in (src / top).rglob("*")
                  if p.suffix in (".c", ".cpp") and p.is_file())


def _key(src: Path, sources: Sequence[Path]) -> str:
    h = hashlib.sha256(f"recipe {RECIPE_VERSION} {m4.compiler_version()} {CXX_FLAGS} "
                       f"{C_FLAGS} {src.resolve()}".encode())
    for p in sources:
        st = p.stat()
        h.update(f"{p.relative_to(src)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path.home() / ".cache" / "tflm_patch" / "arduino_tflm"


def build_arduino_tflm(src: Path, jobs: int | None = None) -> Path:
    """The library compiled into a static archive (cached; published by renaming a
    finished directory)."""
    sources = library_sources(src)
    if not sources:
        raise m4.M4Error(f"no sources under {src}")
    archive = "libarduino_tflm.a"

    def make(work: Path) -> None:
        log.info("compiling Arduino_TensorFlowLite for Cortex-M4 (%d files, once)...",
                 len(sources))
        includes = include_flags(src)

        def compile_one(k: int) -> Path:
            s = sources[k]
            obj = work / f"{k:04d}_{s.stem}.o"
            tool, flags = (m4.GCC, C_FLAGS) if s.suffix == ".c" else (m4.GXX, CXX_FLAGS)
            m4._run((tool, *flags, *includes, "-c", str(s), "-o", str(obj)),
                    f"compiling {s.relative_to(src)}")
            return obj

        with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            objects = list(pool.map(compile_one, range(len(sources))))
        m4._run((AR, "rcs", str(work / archive), *map(str, objects)), "arm-none-eabi-ar")
        for o in objects:
            o.unlink()

    return m4.published(cache_root(), _key(src, sources), make, done=archive) / archive


def build_example(sketch_dir: Path, src: Path, archive: Path, out_dir: Path) -> Path:
    """The sketch (without camera) + exported files + tflm_patch library + archive."""
    out_dir.mkdir(parents=True, exist_ok=True)
    includes = ["-I", str(STUBS), "-I", str(LIBRARY_SRC), "-I", str(sketch_dir),
                *include_flags(src)]
    units: list[tuple[Path, list[str]]] = [
        (sketch_dir / SKETCH, ["-DTFLM_PATCH_USE_CAMERA=0", "-x", "c++"]),
        (STUBS / "qemu_runtime.cc", []),
        *((p, []) for p in sorted(sketch_dir.glob("*.cpp"))),
        *((p, []) for p in sorted(LIBRARY_SRC.rglob("*.cpp"))),
    ]
    objects = []
    for k, (path, extra) in enumerate(units):
        obj = out_dir / f"{k:02d}_{path.stem}.o"
        m4._run((m4.GXX, *CXX_FLAGS, *includes, *extra, "-c", str(path), "-o", str(obj)),
                f"compiling {path.name}")
        objects.append(obj)
    startup = out_dir / "m4_startup.o"
    m4._run((m4.GCC, *m4.HARNESS_C_FLAGS, "-c", str(m4.HARNESS_DIR / "m4_startup.c"), "-o",
             str(startup)), "compiling m4_startup.c")
    elf = out_dir / "sketch.elf"
    m4._run((m4.GXX, *m4.LINK_FLAGS, "-T", str(m4.HARNESS_DIR / "m4_link.ld"),
             *map(str, objects), str(startup), str(archive), "-o", str(elf)),
            "linking the sketch")
    return elf


@dataclass(frozen=True)
class ExampleRun:
    person: int
    no_person: int
    arena_used: int
    arena_declared: int
    output: str


def run_example(elf: Path, timeout: float = m4.QEMU_TIMEOUT) -> ExampleRun:
    cmd = m4.qemu_command(elf)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise m4.M4Error(f"{' '.join(cmd)}: no exit after {timeout:.0f} s") from None
    text = r.stdout + r.stderr
    m = _SCORES.search(text)
    if r.returncode != 0 or "m4: done" not in text or m is None:
        raise m4.M4Error(f"the sketch failed on QEMU (exit status {r.returncode}):\n{text}")
    return ExampleRun(int(m.group(1)), int(m.group(3)), int(m.group(5)), int(m.group(6)),
                      text)


def tool_reason() -> str:
    reason = m4.toolchain_reason(qemu=True)
    if not reason and shutil.which(AR) is None:
        reason = f"{AR} not installed"
    return reason


def run_exported_sketch(sketch_dir: Path, out_dir: Path) -> ExampleRun:
    """Build Arduino_TensorFlowLite (cached), the sketch in `sketch_dir`, run it."""
    src, reason = source_dir_or_reason()
    if src is None:
        raise m4.M4Error(reason)
    archive = build_arduino_tflm(src)
    return run_example(build_example(sketch_dir, src, archive, out_dir))

