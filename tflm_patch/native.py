"""Host build of the PATCH_EXEC C++ core (csrc/custom_ops/patch_exec) and a ctypes wrapper.

`build(variant)` compiles every .cc of csrc/custom_ops/patch_exec/ with the system C++
compiler ($CXX, else c++ / g++) into a shared library cached under
~/.cache/tflm_patch/native/<key>/ ($TFLM_PATCH_NATIVE_DIR overrides), where the key
hashes the sources, headers, flags and the compiler's version; a library is compiled
to a unique temporary name and renamed into place, so parallel builds are safe.
Variants: "release" (-O2), "asan" (-O1 with AddressSanitizer and
UndefinedBehaviorSanitizer, no recovery), "ubsan" (UBSan only: loads into any process)
"portable" (-O2 without the SSE2 inner loops) and "dsp" (-O2 with the Arm DSP-extension
inner loops of the Cortex-M4, the instructions emulated in portable C++).

`load(variant)` gives a `CoreLibrary` (validate, scratch_bytes, constant specs, run).
Every buffer the C code sees is an exact-size malloc'd copy, so that under ASan a read
or write one byte past any of them is reported. The asan variant can only be loaded in
a process whose first library is the ASan runtime, started with `sanitizer_env()`
(LD_PRELOAD of libasan and libubsan, halt on the first report).
"""

from __future__ import annotations

import ctypes
import enum
import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tflm_patch.errors import TflmPatchError, UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo

log = logging.getLogger(__name__)

# The C++ sources ship as package data: include root of "custom_ops/patch_exec/..."
SOURCE_ROOT = Path(str(resources.files("tflm_patch") / "csrc"))
CORE_DIR = SOURCE_ROOT / "custom_ops" / "patch_exec"
# The Arduino library (its PATCH_EXEC sources are copies of CORE_DIR, tools/sync_arduino.py)
ARDUINO_LIBRARY = Path(str(resources.files("tflm_patch") / "arduino" / "tflm_patch"))
ENV_CXX = "CXX"
ENV_CACHE = "TFLM_PATCH_NATIVE_DIR"
COMMON_FLAGS = ("-std=c++14", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wconversion",
                "-fno-exceptions", "-fno-rtti", "-fPIC", "-shared")
VARIANT_FLAGS: dict[str, tuple[str, ...]] = {
    "release": ("-O2", "-DNDEBUG"),
    "asan": ("-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
             "-fno-sanitize-recover=all"),
    # UBSan alone loads into any process (the fuzzer's atheris phase)
    "ubsan": ("-O1", "-g", "-fsanitize=undefined", "-fno-omit-frame-pointer",
              "-fno-sanitize-recover=all"),
    # the portable C++ inner loops instead of SSE2 (tests check both are bit-exact)
    "portable": ("-O2", "-DNDEBUG", "-DPATCH_EXEC_PORTABLE"),
    # the Arm DSP-extension inner loops (patch_exec_dsp.h) with portable definitions of
    # the instructions, as the Cortex-M4 runs them (tests check they are bit-exact)
    "dsp": ("-O2", "-DNDEBUG", "-DPATCH_EXEC_EMULATE_DSP"),
}
SANITIZER_REPORT_MARKS = ("ERROR: AddressSanitizer", "runtime error:",
                          "SUMMARY: UndefinedBehaviorSanitizer", "ERROR: LeakSanitizer")
_STDERR_TAIL = 40  # lines of compiler output in a NativeBuildError


class NativeBuildError(TflmPatchError):
    """The C++ core could not be compiled or loaded here."""


class CompilerNotFound(NativeBuildError):
    """No C++ compiler on this machine (tests skip with this message)."""


class NativeRunError(TflmPatchError):
    """The C++ core refused a blob, its constants or its input."""


class Status(enum.IntEnum):
    """PatchExecStatus of patch_exec_core.h."""

    OK = 0
    TRUNCATED = 1
    MAGIC = 2
    VERSION = 3
    COUNTS = 4
    TENSOR = 5
    RANGE = 6
    LAYER = 7
    SHAPE = 8
    HALO = 9
    SLOT_OVERLAP = 10
    CONSTANT = 11
    ARGUMENT = 12


@dataclass(frozen=True)
class Validation:
    status: Status
    message: str

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


@dataclass(frozen=True)
class ConstantSpec:
    """What an operator input must be: dtype ("int8", "int32", None when unused), size."""

    dtype: str | None
    elements: int


# ------------------------------------------------------------------------------ build


def core_sources() -> tuple[Path, ...]:
    return tuple(sorted(CORE_DIR.glob("*.cc")))


def core_headers() -> tuple[Path, ...]:
    return tuple(sorted(CORE_DIR.glob("*.h")))


def compiler() -> list[str]:
    """The compiler command: $CXX (split like a shell word list), else c++ or g++."""
    env = os.environ.get(ENV_CXX, "").strip()
    if env:
        argv = shlex.split(env)
        if shutil.which(argv[0]) is None:
            raise CompilerNotFound(f"${ENV_CXX}={env!r}: {argv[0]} is not an executable")
        return argv
    for name in ("c++", "g++"):
        path = shutil.which(name)
        if path is not None:
            return [path]
    raise CompilerNotFound("no C++ compiler: neither c++ nor g++ is on PATH and $CXX is not "
                           "set (install g++ to build the PATCH_EXEC core)")


@functools.cache
def _compiler_version(argv: tuple[str, ...]) -> str:
    try:
        proc = subprocess.run([*argv, "--version"], capture_output=True, text=True,
                              timeout=60, check=False)
    except OSError as e:
        raise CompilerNotFound(f"cannot run the C++ compiler {argv[0]}: {e}") from None
    if proc.returncode != 0:
        raise NativeBuildError(f"{argv[0]} --version failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def cache_root() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "tflm_patch" / "native"


def compile_command(cxx: Sequence[str], variant: str, out: Path) -> list[str]:
    if variant not in VARIANT_FLAGS:
        raise NativeBuildError(f"unknown variant {variant!r} (known: {', '.join(VARIANT_FLAGS)})")
    return [*cxx, *COMMON_FLAGS, *VARIANT_FLAGS[variant], "-I", str(CORE_DIR),
            *map(str, core_sources()), "-o", str(out)]


def build_key(cxx: Sequence[str], variant: str) -> str:
    h = hashlib.sha256()
    for path in (*core_sources(), *core_headers()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update("\0".join([*cxx, *COMMON_FLAGS, *VARIANT_FLAGS[variant]]).encode())
    h.update(_compiler_version(tuple(cxx)).encode())
    return h.hexdigest()[:24]


def build(variant: str = "release") -> Path:
    """The shared library of `variant`, compiled unless a cached copy exists."""
    if not core_sources():
        raise NativeBuildError(f"no C++ sources in {CORE_DIR}")
    cxx = compiler()
    if variant not in VARIANT_FLAGS:
        raise NativeBuildError(f"unknown variant {variant!r} (known: {', '.join(VARIANT_FLAGS)})")
    folder = cache_root() / build_key(cxx, variant)
    lib = folder / f"libpatch_exec_core_{variant}.so"
    if lib.is_file():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{variant}-", suffix=".so", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = compile_command(cxx, variant, tmp)
    log.info("building the PATCH_EXEC core (%s): %s", variant, shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-_STDERR_TAIL:])
            raise NativeBuildError(f"compiling the PATCH_EXEC core ({variant}) failed with exit "
                                   f"code {proc.returncode}:\n{tail}")
        os.replace(tmp, lib)  # atomic: a concurrent build publishes an identical file
    finally:
        tmp.unlink(missing_ok=True)
    return lib


def unavailable_reason(variant: str = "release") -> str | None:
    """Why the core cannot be built here (None when it can): for pytest skips."""
    try:
        build(variant)
        if variant == "asan":
            sanitizer_env()
    except NativeBuildError as e:
        return str(e)
    return None


# ------------------------------------------------------------------------ sanitizers


def _runtime_library(cxx: Sequence[str], name: str) -> str:
    proc = subprocess.run([*cxx, f"-print-file-name={name}"], capture_output=True, text=True,
                          timeout=60, check=False)
    path = proc.stdout.strip()
    if proc.returncode != 0 or not os.path.isabs(path) or not os.path.exists(path):
        raise NativeBuildError(f"the compiler has no {name} (needed to preload the sanitizer "
                               "runtime into Python)")
    return path


def sanitizer_env() -> dict[str, str]:
    """Environment of a Python child that can load the asan variant: the ASan and UBSan
    runtimes preloaded, the first report fatal, no leak check (Python's own allocations
    are not ours), Python's allocator off so that every allocation has redzones."""
    cxx = compiler()
    preload = [_runtime_library(cxx, "libasan.so"), _runtime_library(cxx, "libubsan.so")]
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join([*preload, env.get("LD_PRELOAD", "")]).strip()
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=87"
    env["PYTHONMALLOC"] = "malloc"
    env["OPENBLAS_NUM_THREADS"] = "1"  # the numpy reference in the child: no spinning threads
    return env


def under_sanitizers() -> bool:
    return "libasan" in os.environ.get("LD_PRELOAD", "")


# ----------------------------------------------------------------------- ctypes wrapper

_INPUT_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32)
_P = ctypes.POINTER


class _Buffer:
    """An exact-size malloc'd copy of some bytes (or an exact-size zeroed block)."""

    _libc: Any = None

    def __init__(self, size: int, data: bytes | None = None):
        if _Buffer._libc is None:
            libc = ctypes.CDLL(None)
            libc.malloc.restype = ctypes.c_void_p
            libc.malloc.argtypes = [ctypes.c_size_t]
            libc.calloc.restype = ctypes.c_void_p
            libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
            libc.free.restype = None
            libc.free.argtypes = [ctypes.c_void_p]
            _Buffer._libc = libc
        self.size = size
        self.ptr: int | None = None
        if size > 0:
            libc = _Buffer._libc
            self.ptr = libc.malloc(size) if data is not None else libc.calloc(size, 1)
            if not self.ptr:
                raise MemoryError(f"cannot allocate {size} bytes")
            if data is not None:
                ctypes.memmove(self.ptr, data, size)

    def read(self) -> bytes:
        return ctypes.string_at(self.ptr, self.size) if self.ptr else b""

    def free(self) -> None:
        if self.ptr:
            _Buffer._libc.free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.free()


def _bind(lib: ctypes.CDLL) -> None:
    i8p = ctypes.c_void_p
    lib.PatchExecValidate.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                                      ctypes.c_size_t]
    lib.PatchExecValidate.restype = ctypes.c_int
    lib.PatchExecScratchBytes.argtypes = [ctypes.c_void_p]
    lib.PatchExecScratchBytes.restype = ctypes.c_uint32
    lib.PatchExecNumInputs.argtypes = [ctypes.c_void_p]
    lib.PatchExecNumInputs.restype = ctypes.c_uint32
    i32p = _P(ctypes.c_int32)
    lib.PatchExecIoShape.argtypes = [ctypes.c_void_p, ctypes.c_int, i32p, i32p, i32p]
    lib.PatchExecIoShape.restype = None
    lib.PatchExecInputNchw.argtypes = [ctypes.c_void_p]
    lib.PatchExecInputNchw.restype = ctypes.c_int
    lib.PatchExecConstantsPacked.argtypes = [ctypes.c_void_p]
    lib.PatchExecConstantsPacked.restype = ctypes.c_int
    lib.PatchExecConstantSpec.argtypes = [ctypes.c_void_p, ctypes.c_uint32, _P(ctypes.c_int),
                                          _P(ctypes.c_uint32)]
    lib.PatchExecConstantSpec.restype = ctypes.c_int
    lib.PatchExecCheckConstants.argtypes = [ctypes.c_void_p, _INPUT_FN, ctypes.c_void_p,
                                            ctypes.c_char_p, ctypes.c_size_t]
    lib.PatchExecCheckConstants.restype = ctypes.c_int
    lib.PatchExecRunArray.argtypes = [ctypes.c_void_p, i8p, _P(ctypes.c_void_p),
                                      ctypes.c_uint32, i8p, i8p]
    lib.PatchExecRunArray.restype = ctypes.c_int
    i64p = _P(ctypes.c_int64)
    lib.PatchExecWindowAxisForTest.argtypes = [ctypes.c_int64] * 7 + [i64p, i64p]
    lib.PatchExecWindowAxisForTest.restype = ctypes.c_int


RUNTIME_INT8 = "runtime int8"  # patch_format.RUNTIME_INT8: a MUL's per-channel operand
_DTYPES = {1: "int8", 2: "int32", 3: RUNTIME_INT8}


def _storage(dtype: str) -> np.dtype[Any]:
    """The numpy dtype of a spec's data (a runtime operand is int8 too)."""
    return np.dtype("int8" if dtype == RUNTIME_INT8 else dtype)
_MESSAGE_BYTES = 512


class PreparedRun:
    """A blob, input and constants copied into exact-size native buffers, ready to run
    (repeatedly: `run` times only the C call). Free with `close` (or a with block)."""

    def __init__(self, lib: CoreLibrary, blob: bytes, stage_input: np.ndarray,
                 constants: Sequence[np.ndarray | None]):
        self._lib = lib
        validation = lib.validate(blob)
        if not validation.ok:
            raise NativeRunError(f"PATCH_EXEC options rejected ({validation.status.name}): "
                                 f"{validation.message}")
        self._blob = _Buffer(len(blob), blob)
        self.output_shape = lib.io_shape(blob, 1)
        self._check_input(lib.input_shape(blob), stage_input)
        self._input = _Buffer(stage_input.nbytes, np.ascontiguousarray(stage_input).tobytes())
        self._consts = self._copy_constants(blob, constants)
        ptrs = [None] + [c.ptr if c is not None else None for c in self._consts[1:]]
        self._ptr_array = (ctypes.c_void_p * len(ptrs))(*ptrs)
        checked = lib.check_constants_ptrs(self._blob, self._ptr_array)
        if not checked.ok:
            raise NativeRunError(f"PATCH_EXEC constants rejected: {checked.message}")
        self._output = _Buffer(int(np.prod(self.output_shape)))
        self._scratch = _Buffer(lib.scratch_bytes(blob))

    @staticmethod
    def _check_input(shape: tuple[int, ...], x: np.ndarray) -> None:
        if x.dtype != np.int8 or tuple(x.shape) != shape:
            raise NativeRunError(f"stage input is {x.dtype} {tuple(x.shape)}, the options say "
                                 f"int8 {shape}")

    def _copy_constants(self, blob: bytes, constants: Sequence[np.ndarray | None]
                        ) -> list[_Buffer | None]:
        specs = self._lib.constant_specs(blob)
        if len(constants) != len(specs):
            raise NativeRunError(f"{len(constants)} operator inputs given, the options say "
                                 f"{len(specs)}")
        out: list[_Buffer | None] = [None]
        packed = self._lib.constants_packed(blob)
        for index in range(1, len(specs)):
            spec = specs[index]
            arr = constants[index]
            if spec.dtype is None:
                out.append(None)
                continue
            if arr is None or arr.dtype != _storage(spec.dtype) or \
                    not _count_ok(packed and spec.dtype != RUNTIME_INT8, arr.size,
                                  spec.elements):
                got = "nothing" if arr is None else f"{arr.dtype} x {arr.size}"
                raise NativeRunError(f"operator input {index}: {got}, the options need "
                                     f"{spec.dtype} x {spec.elements}")
            data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
            out.append(_Buffer(len(data), data))
        return out

    def run(self) -> np.ndarray:
        status = self._lib.run_ptrs(self._blob, self._input, self._ptr_array, self._output,
                                    self._scratch)
        if status != Status.OK:
            raise NativeRunError(f"PatchExecRun failed: {Status(status).name}")
        return np.frombuffer(self._output.read(), dtype=np.int8).reshape(self.output_shape)

    def close(self) -> None:
        for b in (self._blob, self._input, self._output, self._scratch, *self._consts):
            if b is not None:
                b.free()

    def __enter__(self) -> PreparedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CoreLibrary:
    """ctypes access to one build of the core. Blobs are validated before any other call
    reads them (the C functions other than PatchExecValidate trust their blob)."""

    def __init__(self, path: Path, variant: str):
        self.path, self.variant = path, variant
        self._lib = ctypes.CDLL(str(path))
        _bind(self._lib)

    def validate(self, blob: bytes) -> Validation:
        buf = _Buffer(len(blob), bytes(blob))
        message = ctypes.create_string_buffer(_MESSAGE_BYTES)
        status = self._lib.PatchExecValidate(buf.ptr, buf.size, message, _MESSAGE_BYTES)
        buf.free()
        return Validation(Status(status), message.value.decode("utf-8", "replace"))

    def _validated(self, blob: bytes) -> _Buffer:
        v = self.validate(blob)
        if not v.ok:
            raise NativeRunError(f"PATCH_EXEC options rejected ({v.status.name}): {v.message}")
        return _Buffer(len(blob), bytes(blob))

    def scratch_bytes(self, blob: bytes) -> int:
        """PatchExecScratchBytes (the blob validated first)."""
        buf = self._validated(blob)  # kept alive (and freed) around the call
        value = int(self._lib.PatchExecScratchBytes(buf.ptr))
        buf.free()
        return value

    def num_inputs(self, blob: bytes) -> int:
        buf = self._validated(blob)
        value = int(self._lib.PatchExecNumInputs(buf.ptr))
        buf.free()
        return value

    def io_shape(self, blob: bytes, which: int) -> tuple[int, int, int, int]:
        h, w, c = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
        buf = self._validated(blob)
        self._lib.PatchExecIoShape(buf.ptr, which, ctypes.byref(h), ctypes.byref(w),
                                   ctypes.byref(c))
        buf.free()
        return 1, h.value, w.value, c.value

    def input_nchw(self, blob: bytes) -> bool:
        """PatchExecInputNchw: does input 0 come as [1, C, H, W] (a folded TRANSPOSE)?"""
        buf = self._validated(blob)
        value = bool(self._lib.PatchExecInputNchw(buf.ptr))
        buf.free()
        return value

    def constants_packed(self, blob: bytes) -> bool:
        """PatchExecConstantsPacked: version 3, a constant input holds at least its spec's
        elements (else exactly)?"""
        buf = self._validated(blob)
        value = bool(self._lib.PatchExecConstantsPacked(buf.ptr))
        buf.free()
        return value

    def input_shape(self, blob: bytes) -> tuple[int, int, int, int]:
        """The shape of operator input 0: (1, H, W, C), or (1, C, H, W) with INPUT_NCHW."""
        _, h, w, c = self.io_shape(blob, 0)
        return (1, c, h, w) if self.input_nchw(blob) else (1, h, w, c)

    def _spec(self, buf: _Buffer, index: int) -> ConstantSpec:
        t, n = ctypes.c_int(), ctypes.c_uint32()
        status = self._lib.PatchExecConstantSpec(buf.ptr, index, ctypes.byref(t),
                                                 ctypes.byref(n))
        if status != Status.OK:  # validation guarantees one spec per input
            raise NativeRunError(f"operator input {index}: PatchExecConstantSpec failed "
                                 f"({Status(status).name})")
        return ConstantSpec(_DTYPES.get(t.value), int(n.value))

    def constant_spec(self, blob: bytes, index: int) -> ConstantSpec:
        buf = self._validated(blob)
        try:
            return self._spec(buf, index)
        finally:
            buf.free()

    def constant_specs(self, blob: bytes) -> list[ConstantSpec]:
        """Spec of every operator input; entry 0 (the stage input) is ConstantSpec(None, 0)."""
        buf = self._validated(blob)
        try:
            n = int(self._lib.PatchExecNumInputs(buf.ptr))
            return [ConstantSpec(None, 0), *(self._spec(buf, i) for i in range(1, n))]
        finally:
            buf.free()

    def check_constants_ptrs(self, blob: _Buffer, ptrs: Any) -> Validation:
        n = len(ptrs)

        def get(_context: int | None, index: int) -> int | None:
            return ptrs[index] if index < n else None

        callback = _INPUT_FN(get)
        message = ctypes.create_string_buffer(_MESSAGE_BYTES)
        status = self._lib.PatchExecCheckConstants(blob.ptr, callback, None, message,
                                                   _MESSAGE_BYTES)
        return Validation(Status(status), message.value.decode("utf-8", "replace"))

    def run_ptrs(self, blob: _Buffer, x: _Buffer, ptrs: Any, out: _Buffer,
                 scratch: _Buffer) -> int:
        return int(self._lib.PatchExecRunArray(blob.ptr, x.ptr, ptrs, len(ptrs), out.ptr,
                                               scratch.ptr))

    def prepare(self, blob: bytes, stage_input: np.ndarray,
                constants: Sequence[np.ndarray | None]) -> PreparedRun:
        return PreparedRun(self, bytes(blob), stage_input, constants)

    def run(self, blob: bytes, stage_input: np.ndarray,
            constants: Sequence[np.ndarray | None]) -> np.ndarray:
        """The stage output int8 [1, H, W, C] of `stage_input` (shaped as `input_shape`:
        [1, C, H, W] with INPUT_NCHW). `constants[i]` is operator input i (entry 0, the
        stage input, is ignored); unused inputs may be None."""
        with self.prepare(blob, stage_input, constants) as prepared:
            return prepared.run()

    def window_axis(self, o0: int, o1: int, n: int, k: int, s: int, d: int, p: int
                    ) -> tuple[int, int] | None:
        lo, hi = ctypes.c_int64(), ctypes.c_int64()
        found = self._lib.PatchExecWindowAxisForTest(o0, o1, n, k, s, d, p, ctypes.byref(lo),
                                                     ctypes.byref(hi))
        return (lo.value, hi.value) if found else None


@functools.cache
def load(variant: str = "release") -> CoreLibrary:
    """The core library of `variant`, built if needed. The asan variant only loads in a
    process started with `sanitizer_env()` (see `run_sanitized`)."""
    if variant == "asan" and not under_sanitizers():
        raise NativeBuildError("the asan variant needs the ASan runtime preloaded: run it "
                               "in a process started with sanitizer_env() (LD_PRELOAD)")
    return CoreLibrary(build(variant), variant)


def _count_ok(packed: bool, elements: int, need: int) -> bool:
    """A constant of `elements` elements for a spec of `need`: at least with packed
    constants (version 3), else exactly."""
    return elements >= need if packed else elements == need


def model_constants(model: Model, op: OperatorInfo, lib: CoreLibrary,
                    side: Mapping[int, np.ndarray] | None = None) -> list[np.ndarray | None]:
    """The operator's inputs as the core needs them (checked against the options):
    entry i is operator input i; entry 0 and unused inputs are None. A MUL's runtime
    operand comes from `side` (values by model tensor index)."""
    specs = lib.constant_specs(op.custom_options or b"")
    if len(specs) != len(op.inputs):
        raise UnsupportedModelError(f"PATCH_EXEC operator {op.index}: {len(op.inputs)} inputs, "
                                    f"the options say {len(specs)}")
    consts: list[np.ndarray | None] = [None]
    packed = lib.constants_packed(op.custom_options or b"")
    for index in range(1, len(op.inputs)):
        spec = specs[index]
        if spec.dtype is None:
            consts.append(None)
            continue
        if spec.dtype == RUNTIME_INT8:
            value = (side or {}).get(op.inputs[index])
            if value is None:
                raise UnsupportedModelError(f"PATCH_EXEC operator {op.index}: no value for its "
                                            f"runtime input {index} (tensor {op.inputs[index]})")
            consts.append(np.asarray(value, dtype=np.int8).reshape(-1))
            continue
        t = model.tensors[op.inputs[index]]
        if not t.is_constant or t.dtype != spec.dtype or \
                not _count_ok(packed, t.numel, spec.elements):
            raise UnsupportedModelError(f"PATCH_EXEC operator {op.index}: input {index} is "
                                        f"{t.dtype} {t.shape} (constant: {t.is_constant}), "
                                        f"the options need constant {spec.dtype} x "
                                        f"{spec.elements}")
        consts.append(model.constant(op.inputs[index]))
    return consts


def run_patch_exec_native(model: Model, op: OperatorInfo, stage_input: np.ndarray,
                          variant: str = "release",
                          side: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
    """Run one PATCH_EXEC operator of `model` with the C++ core (as
    patch_ref.run_patch_exec does with numpy). `stage_input` is [1, H, W, C], or
    [1, C, H, W] when the options set INPUT_NCHW; `side` as in patch_ref."""
    lib = load(variant)
    blob = op.custom_options or b""
    validation = lib.validate(blob)
    if not validation.ok:
        raise NativeRunError(f"PATCH_EXEC operator {op.index}: options rejected "
                             f"({validation.status.name}): {validation.message}")
    if len(op.inputs) != lib.num_inputs(blob) or len(op.outputs) != 1:
        raise UnsupportedModelError(f"PATCH_EXEC operator {op.index}: {len(op.inputs)} inputs, "
                                    f"the options say {lib.num_inputs(blob)}")
    return lib.run(blob, np.asarray(stage_input), model_constants(model, op, lib, side))
