"""The PATCH_EXEC core on a Cortex-M4: cross-compile, sizes, stack, and a run in QEMU.

- `compile_core`: the core built as for a Cortex-M4F (`M4_CPU_FLAGS`, `-Os`; its Arm
  DSP path) with `-fstack-usage` and `-fcallgraph-info=su`; `kernel_sizes` reads its flash
  (.text + .rodata) and static RAM (.data + .bss) from `arm-none-eabi-size -A`,
  `stack_report` the deepest call chain from the call graph (frames summed along it).
- `build_harness` + `run_qemu`: a bare-metal test program (tests/m4_harness/: own
  start-up, vector table and linker script; newlib semihosting) that runs consecutive
  PATCH_EXEC operators of a patched model on `qemu-system-arm -M mps2-an386` and prints
  the FNV-1a 32 checksum of each output and the stack the core used (painted and
  scanned); `expected_checksums` gives the numpy reference's checksums
  (`patch_ref.run_patch_exec`), which must be equal.

Instruction counts: QEMU does not emulate the DWT cycle counter, so QEMU runs with
`-icount shift=0` (virtual time advances 1 ns per executed instruction) and the program
reads the board's CMSDK APB Timer0 (25 MHz: one tick per `INSTRUCTIONS_PER_TICK`
instructions) around each PatchExecRunArray; `QemuRun.calibration` is the same counter
around a loop of known length (checked by the tests). Counts are exact to one tick.
Needs Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi,
libstdc++-arm-none-eabi-newlib and qemu-system-arm; `toolchain_reason()` says what
is missing.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from tflm_patch import patch_format as pf
from tflm_patch.errors import TflmPatchError
from tflm_patch.model import Model, OperatorInfo
from tflm_patch.native import CORE_DIR, SOURCE_ROOT, core_sources
from tflm_patch.patch_ref import run_patch_exec

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]  # this checkout
HARNESS_DIR = REPO_ROOT / "tests" / "m4_harness"
PATCH_EXEC = "PATCH_EXEC"

GXX, GCC, SIZE, QEMU = ("arm-none-eabi-g++", "arm-none-eabi-gcc", "arm-none-eabi-size",
                        "qemu-system-arm")
APT_PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi",
                "libstdc++-arm-none-eabi-newlib", "qemu-system-arm")
QEMU_MACHINE = "mps2-an386"
QEMU_TIMEOUT = 300.0  # seconds

M4_CPU_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
# The core as the issue measures it: -Os and the stack-usage report, plus what an
# embedded C++ build uses (no exceptions/RTTI, a section per function for --gc-sections).
CORE_FLAGS = (*M4_CPU_FLAGS, "-Os", "-fstack-usage", "-fcallgraph-info=su", "-std=c++14",
              "-fno-exceptions", "-fno-rtti", "-ffunction-sections", "-fdata-sections",
              "-Wall", "-Wextra", "-Werror", "-Wno-psabi")
HARNESS_CXX_FLAGS = (*M4_CPU_FLAGS, "-Os", "-std=c++14", "-fno-exceptions", "-fno-rtti",
                     "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra", "-Werror",
                     "-Wno-psabi")
HARNESS_C_FLAGS = (*M4_CPU_FLAGS, "-Os", "-std=c11", "-ffunction-sections", "-fdata-sections",
                   "-Wall", "-Wextra", "-Werror")
LINK_FLAGS = (*M4_CPU_FLAGS, "-nostartfiles", "--specs=rdimon.specs", "-Wl,--gc-sections")

# Entry points of the core (patch_exec_core.h) whose stack the report gives.
API_FUNCTIONS = ("PatchExecValidate", "PatchExecCheckConstants", "PatchExecRun",
                 "PatchExecRunArray", "PatchExecConstantSpec")
# The function an indirect call of the core reaches in PatchExecRunArray (get_input).
INDIRECT_TARGETS = ("ArrayInput",)

_LINE = re.compile(r"^m4: op (\d+) bytes (\d+) fnv1a ([0-9a-f]{8}) stack (\d+) ticks (\d+)")
_CALIBRATION = re.compile(r"^m4: calibration instructions (\d+) ticks (\d+)")
# -icount shift=0: 1 ns of virtual time per instruction; Timer0 counts at 25 MHz.
INSTRUCTIONS_PER_TICK = 40


class M4Error(TflmPatchError):
    """Cross-compiling or running the Cortex-M4 program failed."""


# ----------------------------------------------------------------------------- tools


def toolchain_reason(qemu: bool = True) -> str:
    """'' when the cross toolchain (and qemu-system-arm if `qemu`) is installed, else why
    not."""
    missing = [t for t in (GXX, GCC, SIZE, *((QEMU,) if qemu else ())) if not shutil.which(t)]
    if missing:
        return (f"{', '.join(missing)} not installed (apt-get install "
                f"{' '.join(APT_PACKAGES)})")
    return ""


def published(root: Path, key: str, make: Callable[[Path], None], done: str = "ok") -> Path:
    """root/key, made once by `make(work_dir)` in a fresh directory and published by
    renaming it; `done` names the file whose presence means the directory is complete
    ("ok" is written after `make` returns)."""
    final = root / key
    if (final / done).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build_", dir=root))
    try:
        make(work)
        (work / "ok").write_text("")
        if final.exists():  # an incomplete directory left by an interrupted build
            shutil.rmtree(final, ignore_errors=True)
        try:
            work.rename(final)
        except OSError:  # another process published it first
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def _run(cmd: Sequence[str], what: str, timeout: float = 600.0) -> str:
    log.debug("%s: %s", what, " ".join(cmd))
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        raise M4Error(f"{what}: timed out after {timeout:.0f} s") from None
    except OSError as e:
        raise M4Error(f"{what}: cannot run {cmd[0]}: {e}") from None
    if r.returncode != 0:
        raise M4Error(f"{what} failed ({' '.join(cmd)}):\n{r.stdout}{r.stderr}")
    return r.stdout


@cache
def compiler_version() -> str:
    return _run([GXX, "-dumpversion"], "arm-none-eabi-g++ -dumpversion").strip()


# ----------------------------------------------------------------------------- the core


@dataclass(frozen=True)
class CoreObject:
    obj: Path
    stack_usage: Path  # .su (-fstack-usage)
    call_graph: Path  # .ci (-fcallgraph-info=su)
    command: tuple[str, ...]


def compile_core(out_dir: Path) -> list[CoreObject]:
    """Every .cc of the core compiled for the Cortex-M4 into `out_dir`."""
    objects = []
    for src in core_sources():
        obj = out_dir / f"{src.stem}.o"
        cmd = (GXX, *CORE_FLAGS, "-I", str(SOURCE_ROOT), "-c", str(src), "-o", str(obj))
        _run(cmd, f"compiling {src.name} for Cortex-M4")
        objects.append(CoreObject(obj, obj.with_suffix(".su"), obj.with_suffix(".ci"), cmd))
    if not objects:
        raise M4Error(f"no core sources in {CORE_DIR}")
    return objects


@dataclass(frozen=True)
class KernelSizes:
    text: int
    rodata: int
    data: int
    bss: int

    @property
    def flash(self) -> int:
        return self.text + self.rodata + self.data  # .data's initial values live in flash

    @property
    def ram(self) -> int:
        return self.data + self.bss


def kernel_sizes(objects: Sequence[CoreObject]) -> KernelSizes:
    """Section sizes summed over the core's objects (`arm-none-eabi-size -A`)."""
    sums = dict.fromkeys(("text", "rodata", "data", "bss"), 0)
    for o in objects:
        for line in _run([SIZE, "-A", str(o.obj)], "arm-none-eabi-size").splitlines():
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                continue
            name, size = parts[0], int(parts[1])
            if name.startswith((".ARM.exidx", ".ARM.extab")):
                name = ".rodata"  # unwind tables: read-only, in flash
            for kind in sums:
                if name == f".{kind}" or name.startswith(f".{kind}."):
                    sums[kind] += size
    return KernelSizes(**sums)


GLUE_SOURCE = CORE_DIR / "tflm" / "patch_exec_op.cc"


def compile_glue(out_dir: Path, tflm_root: Path, extra: Sequence[Path]) -> CoreObject:
    """The TFLM glue compiled like the core (C++17: current TFLM needs it) against the TFLM
    headers of `tflm_root` (+ flatbuffers/gemmlowp in `extra`)."""
    obj = out_dir / "patch_exec_op.o"
    flags = [f for f in CORE_FLAGS if f != "-std=c++14"]
    includes = [a for d in (tflm_root, *extra) for a in ("-isystem", str(d))]
    cmd = (GXX, *flags, "-std=c++17", "-DTF_LITE_STATIC_MEMORY", "-I", str(SOURCE_ROOT),
           *includes, "-c", str(GLUE_SOURCE), "-o", str(obj))
    _run(cmd, "compiling the TFLM glue for Cortex-M4")
    return CoreObject(obj, obj.with_suffix(".su"), obj.with_suffix(".ci"), cmd)


# ----------------------------------------------------------------------------- stack


@dataclass(frozen=True)
class Frame:
    name: str  # the function's signature as GCC prints it
    bytes: int | None  # None: no stack information (external: libgcc, libc)
    qualifier: str = ""  # "static", "dynamic", "dynamic,bounded"


@dataclass(frozen=True)
class Chain:
    entry: str
    frames: tuple[Frame, ...]  # entry first
    external: tuple[str, ...]  # external functions called on the way (not counted)
    recursive: bool = False

    @property
    def total(self) -> int:
        return sum(f.bytes or 0 for f in self.frames)


@dataclass(frozen=True)
class StackReport:
    chains: tuple[Chain, ...]  # per API function
    largest_frame: Frame
    dynamic: tuple[str, ...] = field(default=())  # frames that are not "static"

    @property
    def worst(self) -> Chain:
        return max(self.chains, key=lambda c: c.total)


_NODE = re.compile(r'^node: \{ title: "([^"]+)" label: "([^"]*)"')
_EDGE = re.compile(r'^edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
_BYTES = re.compile(r"\\n(\d+) bytes \(([a-z,]+)\)")


def _parse_call_graph(paths: Sequence[Path]) -> tuple[dict[str, Frame], dict[str, set[str]]]:
    nodes: dict[str, Frame] = {}
    edges: dict[str, set[str]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            m = _NODE.match(line)
            if m:
                title, label = m.groups()
                b = _BYTES.search(label)
                frame = Frame(label.split("\\n")[0], int(b.group(1)) if b else None,
                              b.group(2) if b else "")
                if title not in nodes or nodes[title].bytes is None:
                    nodes[title] = frame
                continue
            m = _EDGE.match(line)
            if m:
                edges.setdefault(m.group(1), set()).add(m.group(2))
    return nodes, edges


def stack_report(objects: Sequence[CoreObject], entries: Sequence[str] = API_FUNCTIONS,
                 indirect: Sequence[str] = INDIRECT_TARGETS) -> StackReport:
    """The deepest call chain from each API function: frames (.ci / .su) summed along the
    call graph. An indirect call counts the largest frame among `indirect` (the callbacks
    the caller passes); external functions (libgcc, libc) have no frame data and are listed
    instead of counted."""
    nodes, edges = _parse_call_graph([o.call_graph for o in objects])
    indirect_titles = [t for t, f in nodes.items()
                       if any(re.search(rf"\b{re.escape(n)}\b", f.name) for n in indirect)]

    def targets(title: str) -> set[str]:
        out: set[str] = set()
        for t in edges.get(title, set()):
            out.update(indirect_titles if t == "__indirect_call" else (t,))
        return out

    memo: dict[str, tuple[int, tuple[str, ...], bool]] = {}

    def deepest(title: str, path: frozenset[str]) -> tuple[int, tuple[str, ...], bool]:
        if title in path:
            return 0, (), True
        if title in memo:
            return memo[title]
        frame = nodes.get(title, Frame(title, None))
        best: tuple[int, tuple[str, ...], bool] = (0, (), False)
        recursive = False
        for t in sorted(targets(title)):
            cand = deepest(t, path | {title})
            recursive |= cand[2]
            if cand[0] > best[0] or (cand[0] == best[0] and len(cand[1]) > len(best[1])):
                best = cand
        result = ((frame.bytes or 0) + best[0], (title, *best[1]), recursive)
        memo[title] = result
        return result

    def reachable(title: str) -> set[str]:
        seen, todo = set(), [title]
        while todo:
            t = todo.pop()
            if t not in seen:
                seen.add(t)
                todo.extend(targets(t))
        return seen

    chains = []
    for name in entries:
        title = next((t for t, f in nodes.items() if t == name or t.endswith(f":{name}")
                      or f.name.split("(")[0].split()[-1] == name), None)
        if title is None:
            continue
        _, path, recursive = deepest(title, frozenset())
        external = sorted({nodes[t].name for t in reachable(title)
                           if t in nodes and nodes[t].bytes is None and t != "__indirect_call"})
        chains.append(Chain(name, tuple(nodes.get(t, Frame(t, None)) for t in path),
                            tuple(external), recursive))
    if not chains:
        raise M4Error("no API function found in the call graph (-fcallgraph-info)")
    sized = [f for f in nodes.values() if f.bytes is not None]
    largest = max(sized, key=lambda f: f.bytes or 0)
    dynamic = tuple(sorted({f.name for f in sized if f.qualifier != "static"}))
    return StackReport(tuple(chains), largest, dynamic)


# ----------------------------------------------------------------------------- cases


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class Case:
    op: OperatorInfo
    input: np.ndarray | None  # the embedded stage input; None: the previous case's output
    expected: np.ndarray  # numpy reference output

    @property
    def checksum(self) -> int:
        return fnv1a32(self.expected.tobytes())


def chain_ops(model: Model, first: int | None = None, limit: int | None = None) -> list[int]:
    """PATCH_EXEC operators from `first` (default: the first one) while each reads the
    previous one's output (the next operator in the model)."""
    pes = [op.index for op in model.operators if op.name == PATCH_EXEC]
    if not pes:
        raise M4Error("the model has no PATCH_EXEC operator")
    start = pes[0] if first is None else first
    if model.operators[start].name != PATCH_EXEC:
        raise M4Error(f"operator {start} is {model.operators[start].name}, not PATCH_EXEC")
    chain = [start]
    while limit is None or len(chain) < limit:
        k = chain[-1] + 1
        if k >= len(model.operators):
            break
        op = model.operators[k]
        if op.name != PATCH_EXEC or op.inputs[0] != model.operators[k - 1].outputs[0]:
            break
        chain.append(k)
    return chain


def make_cases(model: Model, stage_input: np.ndarray, ops: Sequence[int]) -> list[Case]:
    """The cases of `ops` (a chain_ops result) and their numpy reference outputs."""
    cases = []
    x = np.asarray(stage_input, dtype=np.int8)
    for k, i in enumerate(ops):
        op = model.operators[i]
        y = run_patch_exec(model, op, x)
        cases.append(Case(op, x if k == 0 else None, y))
        x = y
    return cases


def expected_checksums(cases: Sequence[Case]) -> dict[int, str]:
    return {c.op.index: f"{c.checksum:08x}" for c in cases}


# ----------------------------------------------------------------------------- generation


_C_TYPES = {"int8": ("int8_t", np.int8), "int32": ("int32_t", np.int32),
            "uint8": ("uint8_t", np.uint8), "int16": ("int16_t", np.int16)}


def _array(ctype: str, name: str, values: np.ndarray, per_line: int = 16) -> str:
    flat = [str(int(v)) for v in values.ravel()]
    if ctype == "int32_t":  # INT32_MIN is not a literal
        flat = [f"({int(v) + 1} - 1)" if int(v) == -(2**31) else s
                for v, s in zip(values.ravel(), flat, strict=True)]
    body = "\n".join("    " + ", ".join(flat[i:i + per_line]) + ","
                     for i in range(0, len(flat), per_line)) or "    0,"
    return f"alignas(16) const {ctype} {name}[] = {{\n{body}\n}};\n"


def generate_data(model: Model, cases: Sequence[Case], label: str) -> str:
    """m4_data.cc: the cases' options, constants and embedded input (C++ source)."""
    out = [f"// Generated by tools/m4.py from {label}: {len(cases)} PATCH_EXEC "
           "operators.\n// Do not edit.\n#include <stddef.h>\n#include <stdint.h>\n\n"
           '#include "m4_cases.h"\n\nnamespace {\n\n']
    done: dict[int, str] = {}
    rows = []
    scratch = output = 1
    for k, c in enumerate(cases):
        op = c.op
        blob = op.custom_options or b""
        out.append(_array("uint8_t", f"kBlob{k}", np.frombuffer(blob, np.uint8)))
        refs = ["nullptr"]
        for t in op.inputs[1:]:
            if t < 0:
                refs.append("nullptr")
                continue
            if t not in done:
                info = model.tensors[t]
                if info.dtype not in _C_TYPES:
                    raise M4Error(f"operator {op.index}: constant {t} is {info.dtype}")
                ctype, dtype = _C_TYPES[info.dtype]
                data = model.buffer_bytes(t)
                if data is None:
                    raise M4Error(f"operator {op.index}: input {t} is not a constant")
                out.append(_array(ctype, f"kTensor{t}", np.frombuffer(data, dtype)))
                done[t] = f"kTensor{t}"
            refs.append(done[t])
        out.append(f"const void* const kInputs{k}[] = {{{', '.join(refs)}}};\n")
        if c.input is not None:
            out.append(_array("int8_t", f"kInput{k}", c.input))
        scratch = max(scratch, pf.scratch_bytes(blob))
        output = max(output, c.expected.size)
        in_bytes = c.input.size if c.input is not None else 0
        rows.append(f"    {{{op.index}, kBlob{k}, {len(blob)}, kInputs{k}, {len(op.inputs)}, "
                    f"{f'kInput{k}' if c.input is not None else 'nullptr'}, {in_bytes}, "
                    f"{c.expected.size}}},\n")
    out.append("\n}  // namespace\n\n")
    out.append("const M4Case kM4Cases[] = {\n" + "".join(rows) + "};\n")
    out.append(f"const uint32_t kM4NumCases = {len(cases)};\n")
    out.append(f"alignas(16) int8_t g_m4_scratch[{scratch}];\n"
               f"const uint32_t kM4ScratchBytes = {scratch};\n"
               f"alignas(16) int8_t g_m4_output_a[{output}];\n"
               f"alignas(16) int8_t g_m4_output_b[{output}];\n"
               f"const uint32_t kM4OutputBytes = {output};\n")
    return "".join(out)


# ----------------------------------------------------------------------------- build, run


@dataclass(frozen=True)
class Harness:
    elf: Path
    core: tuple[CoreObject, ...]


def build_harness(model: Model, cases: Sequence[Case], out_dir: Path,
                  label: str = "a patched model") -> Harness:
    """Compile the core, the test program and the generated data; link app.elf."""
    out_dir.mkdir(parents=True, exist_ok=True)
    core = compile_core(out_dir)
    data = out_dir / "m4_data.cc"
    data.write_text(generate_data(model, cases, label))
    objs = [o.obj for o in core]
    for src, flags, tool in ((HARNESS_DIR / "m4_main.cc", HARNESS_CXX_FLAGS, GXX),
                             (data, HARNESS_CXX_FLAGS, GXX),
                             (HARNESS_DIR / "m4_startup.c", HARNESS_C_FLAGS, GCC)):
        obj = out_dir / f"{src.stem}.o"
        _run((tool, *flags, "-I", str(SOURCE_ROOT), "-I", str(HARNESS_DIR), "-c", str(src),
              "-o", str(obj)),
             f"compiling {src.name} for Cortex-M4")
        objs.append(obj)
    elf = out_dir / "app.elf"
    _run((GXX, *LINK_FLAGS, "-T", str(HARNESS_DIR / "m4_link.ld"), *map(str, objs), "-o",
          str(elf), f"-Wl,-Map={out_dir / 'app.map'}"), "linking the Cortex-M4 test program")
    return Harness(elf, tuple(core))


@dataclass(frozen=True)
class OpResult:
    op: int
    bytes: int
    checksum: str
    stack: int
    ticks: int  # Timer0 ticks around PatchExecRunArray

    @property
    def instructions(self) -> int:
        return self.ticks * INSTRUCTIONS_PER_TICK


@dataclass(frozen=True)
class Calibration:
    """The counter around a loop of `expected` instructions."""

    expected: int
    ticks: int

    @property
    def measured(self) -> int:
        return self.ticks * INSTRUCTIONS_PER_TICK


@dataclass(frozen=True)
class QemuRun:
    results: tuple[OpResult, ...]
    output: str
    command: tuple[str, ...]
    calibration: Calibration | None = None

    def checksums(self) -> dict[int, str]:
        return {r.op: r.checksum for r in self.results}


def qemu_command(elf: Path) -> tuple[str, ...]:
    return (QEMU, "-M", QEMU_MACHINE, "-nographic", "-monitor", "none", "-semihosting",
            "-icount", "shift=0", "-kernel", str(elf))


def run_qemu(elf: Path, timeout: float = QEMU_TIMEOUT) -> QemuRun:
    """Run the test program; every case must report, then 'm4: done'."""
    cmd = qemu_command(elf)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as e:
        raise M4Error(f"{' '.join(cmd)}: no exit after {timeout:.0f} s; output: "
                      f"{(e.stdout or b'')!r}") from None
    except OSError as e:
        raise M4Error(f"cannot run {QEMU}: {e}") from None
    text = r.stdout + r.stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.startswith("m4: ")]
    if "m4: done" not in lines or r.returncode != 0:
        raise M4Error(f"the Cortex-M4 program failed (exit status {r.returncode}):\n{text}")
    results = []
    calibration = None
    for ln in lines:
        m = _LINE.match(ln)
        if m:
            results.append(OpResult(int(m.group(1)), int(m.group(2)), m.group(3),
                                    int(m.group(4)), int(m.group(5))))
        c = _CALIBRATION.match(ln)
        if c:
            calibration = Calibration(int(c.group(1)), int(c.group(2)))
    return QemuRun(tuple(results), text, cmd, calibration)


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class HarnessModel:
    """The patched model the test program runs and its stage input."""

    label: str
    model: Model
    stage_input: np.ndarray
    input_origin: str


SHARED_MODELS = REPO_ROOT.parent / "shared" / "models"
FALLBACK_ZOO = "mbv1_025_96"
FALLBACK_SEED = 5


def patched(model: Model) -> Model:
    """The planner's memory-objective plan (the smallest arena within its MAC limit: the
    most PATCH_EXEC operators) applied to `model`."""
    from tflm_patch.model import load_model
    from tflm_patch.planner import PlanRequest, patched_model_object, plan
    from tflm_patch.rewrite import to_checked_bytes

    result = plan(model, PlanRequest(objective="memory"))
    if result.chosen is None:
        raise M4Error(f"no PATCH_EXEC plan for the model: {result.message}")
    return load_model(to_checked_bytes(patched_model_object(model, result)))


def default_model(shared: Path = SHARED_MODELS) -> HarnessModel:
    """person_detect patched with the default plan and person.bmp as input when
    ../shared/models has them; else the zoo's mbv1_025_96 and a seeded random input."""
    from tflm_patch.model import load_model
    from tflm_patch.validate import load_input

    pd, image = shared / "person_detect.tflite", shared / "person.bmp"
    if pd.is_file() and image.is_file():
        original = load_model(pd)
        model = patched(original)
        first = model.operators[chain_ops(model)[0]]
        if first.inputs[0] == model.inputs[0]:
            x = load_input(original, image)[0]
            return HarnessModel("person_detect (patched)", model, x, "person.bmp")
        return seeded_model("person_detect (patched)", model, first)
    from tflm_patch.zoo import ensure_model

    model = patched(load_model(ensure_model(FALLBACK_ZOO)))
    return seeded_model(f"zoo:{FALLBACK_ZOO} (patched)", model,
                   model.operators[chain_ops(model)[0]])


def seeded_model(label: str, model: Model, op: OperatorInfo) -> HarnessModel:
    """`model` with a seeded random int8 input for operator `op`."""
    shape = model.tensors[op.inputs[0]].shape
    x = np.random.default_rng(FALLBACK_SEED).integers(-128, 128, size=shape, dtype=np.int8)
    return HarnessModel(label, model, x, f"seeded random int8 (numpy default_rng("
                        f"{FALLBACK_SEED}))")


# ----------------------------------------------------------------------------- speed


def layer_macs(o: pf.PatchOptions, k: int) -> int:
    """Multiply-accumulates of a convolution layer k per output value (0 for other kinds)."""
    ly = o.layers[k]
    if ly.kind not in pf.CONV_KINDS:
        return 0
    per = ly.kernel[0] * ly.kernel[1]
    return per * o.tensors[ly.input0].channels if ly.kind == pf.CONV else per


def stage_macs(o: pf.PatchOptions) -> tuple[int, int]:
    """(MACs of the stage's convolutions computed once over whole tensors, MACs the
    patch-by-patch run computes: every patch's range less what a halo cache holds)."""
    whole = patched = 0
    for k in range(len(o.layers)):
        t = o.tensors[k + 1]
        per = layer_macs(o, k) * t.channels
        whole += per * t.height * t.width
        for i in range(len(t.rows)):
            rows = t.rows[i][1] - t.rows[i][0]
            for j in range(len(t.cols)):
                lo, hi = t.computed_cols(j)
                patched += per * rows * max(0, hi - lo)
    return whole, patched


@dataclass(frozen=True)
class OpSpeed:
    op: int
    layers: str  # e.g. "CONV_2D+DEPTHWISE_CONV_2D (STREAM)"
    grid: tuple[int, int]
    macs_whole: int
    macs: int
    instructions: int

    @property
    def per_mac(self) -> float:
        return self.instructions / self.macs if self.macs else float("nan")


def op_speeds(cases: Sequence[Case], run: QemuRun) -> list[OpSpeed]:
    """Instructions and MACs of every PATCH_EXEC operator the program ran."""
    by_op = {r.op: r for r in run.results}
    rows = []
    for c in cases:
        o = pf.decode(c.op.custom_options or b"")
        kinds = "+".join(pf.KIND_NAMES[ly.kind].replace("_2D", "") for ly in o.layers)
        if any(ly.flags & pf.LAYER_STREAM for ly in o.layers):
            kinds += " (STREAM)"
        whole, patched = stage_macs(o)
        rows.append(OpSpeed(c.op.index, kinds, o.grid, whole, patched,
                            by_op[c.op.index].instructions))
    return rows


def speed_table(rows: Sequence[OpSpeed]) -> str:
    """Markdown table of `op_speeds`, with a total row."""
    out = ["| op | layers | grid | MACs (whole) | MACs (patched) | instructions | instr/MAC |",
           "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.op} | {r.layers} | {r.grid[0]}x{r.grid[1]} | {r.macs_whole:,} | "
                   f"{r.macs:,} | {r.instructions:,} | {r.per_mac:.2f} |")
    macs = sum(r.macs for r in rows)
    instr = sum(r.instructions for r in rows)
    out.append(f"| all | | | {sum(r.macs_whole for r in rows):,} | {macs:,} | {instr:,} | "
               f"{instr / macs if macs else float('nan'):.2f} |")
    return "\n".join(out)
