"""Build the C++ PATCH_EXEC kernel into a library the x86 TFLM interpreter can load.

The tflite-micro wheel finds custom operators through registerer functions it looks
up by name (``custom_op_registerers=["PatchExecRegisterer"]``), so the kernel is a
shared library loaded with RTLD_GLOBAL before the interpreter is created (the TFLM
child process does that: ``tflm_runner.run_model(..., **kernel.runner_kwargs())``).

The library is compiled from the project's sources (the portable core, C++14, and
the TFLM glue + registerer, C++17) against TFLM headers that are not part of the
project: ``TFLM_ROOT`` (a tflite-micro checkout) and ``TFLM_EXTRA_INCLUDES``
(colon-separated: flatbuffers' and gemmlowp's include roots); DEVELOPERS.md says how
to lay them out. Defines match the wheel's build (TF_LITE_STATIC_MEMORY,
USE_TFLM_COMPRESSION: the wheel has compression support, which changes MicroContext's
layout; NDEBUG for bazel's opt mode). The library links against the wheel's own
``_runtime.so``: the few TFLM functions the glue calls (MicroPrintf inside
AddCustom, RegisterOp, AllocateTempInputTensor, ...) are the wheel's, and
``-z defs`` proves at link time that nothing else is missing.

The sanitizer variant (``build_kernel(sanitize=True)``) compiles the same sources with
``-fsanitize=address,undefined`` (every report fatal); the wheel is not instrumented, so
its child process needs the sanitizer runtimes preloaded (``KernelLibrary.sanitized``:
``tflm_runner`` then starts the child with ``native.sanitizer_env()``).

Builds are cached under ``~/.cache/tflm_patch/tflm_kernel/<key>/`` (key: hash of the
sources, flags, compiler and the wheel's library), published atomically (a finished
directory is renamed into place), and reused while every header the compiler read
is unchanged (size and mtime, from the compiler's dependency files).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from tflm_patch.errors import TflmPatchError
from tflm_patch.native import CORE_DIR, SOURCE_ROOT, core_headers, core_sources

log = logging.getLogger(__name__)

REGISTERER = "PatchExecRegisterer"
ENV_ROOT = "TFLM_ROOT"
ENV_EXTRA = "TFLM_EXTRA_INCLUDES"
LIBRARY_NAME = "libpatch_exec_tflm.so"
RECIPE_VERSION = 1  # bump when the build recipe changes in a way the key does not see

OPS_DIR = CORE_DIR
CORE_SOURCE = OPS_DIR / "patch_exec_core.cc"
CORE_HEADER = OPS_DIR / "patch_exec_core.h"
GLUE_SOURCE = OPS_DIR / "tflm" / "patch_exec_op.cc"
GLUE_HEADER = OPS_DIR / "tflm" / "patch_exec_op.h"
REGISTERER_SOURCE = OPS_DIR / "tflm" / "python_registerer.cc"

COMMON_FLAGS = ("-fPIC", "-O2", "-DNDEBUG", "-fno-exceptions")
# tensorflow/lite/micro/build_def.bzl tflm_defines()/tflm_copts(), with compression
# as in python/tflite_micro/pypi_build.sh (--//:with_compression=true)
TFLM_DEFINES = ("-DTF_LITE_STATIC_MEMORY=1", "-DUSE_TFLM_COMPRESSION=1",
                "-DFLATBUFFERS_LOCALE_INDEPENDENT=0")
SANITIZER_FLAGS = ("-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", "-DNDEBUG",
                   "-fno-exceptions", "-fsanitize=address,undefined",
                   "-fno-sanitize-recover=all")
CORE_FLAGS = ("-std=c++14", "-Wall", "-Wextra", "-Werror")
GLUE_FLAGS = ("-std=c++17", "-Wall", "-Wextra", "-Werror")


class TflmBuildUnavailable(TflmPatchError):
    """The kernel cannot be built here (headers not configured, core missing, ...)."""


class TflmBuildError(TflmPatchError):
    """Compiling or linking the kernel failed."""


class RunnerKwargs(TypedDict):
    registerers: tuple[str, ...]
    preload: tuple[str, ...]


@dataclass(frozen=True)
class KernelLibrary:
    """A built PATCH_EXEC library and the registerer the wheel must call."""

    path: Path
    registerer: str = REGISTERER
    sanitized: bool = False  # built with ASan + UBSan: its process needs the runtimes

    def runner_kwargs(self) -> RunnerKwargs:
        """Keyword arguments of the tflm_runner functions that make PATCH_EXEC known."""
        return {"registerers": (self.registerer,), "preload": (str(self.path),)}


@dataclass(frozen=True)
class BuildConfig:
    compiler: str
    tflm_root: Path
    extra_includes: tuple[Path, ...]
    runtime_library: Path  # the wheel's _runtime.so
    core_sources: tuple[Path, ...] = (CORE_SOURCE,)
    sanitize: bool = False  # -fsanitize=address,undefined (SANITIZER_FLAGS)

    @property
    def common_flags(self) -> tuple[str, ...]:
        return SANITIZER_FLAGS if self.sanitize else COMMON_FLAGS

    def include_flags(self) -> list[str]:
        flags = ["-I", str(SOURCE_ROOT)]
        for d in (self.tflm_root, *self.extra_includes):
            flags += ["-isystem", str(d)]  # no -Werror on TFLM's own headers
        return flags

    def core_command(self, source: Path, out: Path) -> list[str]:
        return [self.compiler, *CORE_FLAGS, *self.common_flags, "-I", str(SOURCE_ROOT), "-c",
                str(source), "-o", str(out), "-MD", "-MF", f"{out}.d"]

    def glue_command(self, source: Path, out: Path) -> list[str]:
        return [self.compiler, *GLUE_FLAGS, *self.common_flags, *TFLM_DEFINES,
                *self.include_flags(), "-c", str(source), "-o", str(out), "-MD", "-MF",
                f"{out}.d"]

    def link_command(self, objects: Sequence[Path], out: Path) -> list[str]:
        # the wheel's library by absolute path: it becomes DT_NEEDED as that path
        sanitizers = ["-fsanitize=address,undefined"] if self.sanitize else []
        return [self.compiler, "-shared", *sanitizers, "-o", str(out), *map(str, objects),
                str(self.runtime_library), "-Wl,-z,defs"]


def wheel_runtime_library() -> Path:
    """The tflite-micro wheel's extension module (found without importing it)."""
    spec = importlib.util.find_spec("tflite_micro")
    if spec is None or not spec.submodule_search_locations:
        raise TflmBuildUnavailable("the tflite-micro wheel is not installed")
    for root in spec.submodule_search_locations:
        found = sorted(Path(root, "python", "tflite_micro").glob("_runtime*.so"))
        if found:
            return found[0]
    raise TflmBuildUnavailable("the tflite-micro wheel has no python/tflite_micro/_runtime*.so")


def config_from_env(env: Mapping[str, str] | None = None,
                    core: Sequence[Path] | None = None, *, sanitize: bool = False
                    ) -> BuildConfig:
    """Build settings from TFLM_ROOT / TFLM_EXTRA_INCLUDES (and CXX); unavailable if unset.
    `sanitize`: the ASan + UBSan variant."""
    env = os.environ if env is None else env
    root, extra = env.get(ENV_ROOT, ""), env.get(ENV_EXTRA, "")
    if not root or not extra:
        missing = " and ".join(v for v, s in ((ENV_ROOT, root), (ENV_EXTRA, extra)) if not s)
        raise TflmBuildUnavailable(f"{missing} not set (TFLM headers, see DEVELOPERS.md)")
    tflm_root = Path(root)
    if not (tflm_root / "tensorflow" / "lite" / "micro" / "micro_context.h").is_file():
        raise TflmBuildUnavailable(f"{ENV_ROOT}={root} is not a tflite-micro source tree")
    if not (tflm_root / "python" / "tflite_micro" / "python_ops_resolver.h").is_file():
        raise TflmBuildUnavailable(f"{ENV_ROOT}={root} has no python/tflite_micro/"
                                   "python_ops_resolver.h (too old for the wheel)")
    includes = tuple(Path(p) for p in extra.split(":") if p)
    for d in includes:
        if not d.is_dir():
            raise TflmBuildUnavailable(f"{ENV_EXTRA}: {d} is not a directory")
    compiler = env.get("CXX") or "c++"
    if shutil.which(shlex.split(compiler)[0]) is None:
        raise TflmBuildUnavailable(f"no C++ compiler {compiler!r} on PATH")
    if core is None:
        if not CORE_SOURCE.is_file():
            raise TflmBuildUnavailable(f"the PATCH_EXEC core {CORE_SOURCE.relative_to(SOURCE_ROOT)}"
                                       " does not exist yet")
        core = core_sources()
    for src in (*core, GLUE_SOURCE, REGISTERER_SOURCE):
        if not src.is_file():
            raise TflmBuildUnavailable(f"{src} does not exist")
    return BuildConfig(compiler, tflm_root, includes, wheel_runtime_library(), tuple(core),
                       sanitize)


def cache_root() -> Path:
    return Path.home() / ".cache" / "tflm_patch" / "tflm_kernel"


def _compiler_version(compiler: str) -> str:
    try:
        out = subprocess.run([*shlex.split(compiler), "--version"], capture_output=True,
                             text=True, timeout=60, check=False)
    except OSError as e:
        raise TflmBuildUnavailable(f"cannot run the C++ compiler {compiler!r}: {e}") from None
    return out.stdout.strip()


def build_key(config: BuildConfig) -> str:
    """Hash of everything that decides the library's bytes, except TFLM's headers (those
    are checked through the dependency files when a cached build is reused)."""
    h = hashlib.sha256()

    def add(text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        h.update(len(data).to_bytes(8, "little") + data)

    add(f"recipe {RECIPE_VERSION}")
    add(_compiler_version(config.compiler))
    ours = {*config.core_sources, *core_headers(), GLUE_SOURCE, GLUE_HEADER,
            REGISTERER_SOURCE}
    for src in sorted(ours):
        add(str(src))
        add(src.read_bytes())
    scratch = Path("/o")
    for cmd in (config.core_command(scratch, scratch),
                config.glue_command(GLUE_SOURCE, scratch),
                config.link_command([scratch], scratch)):
        add("\0".join(cmd))
    st = config.runtime_library.stat()
    add(f"{config.runtime_library} {st.st_size} {st.st_mtime_ns}")
    return h.hexdigest()[:24]


def _read_depfile(path: Path) -> list[str]:
    """The files a make-style dependency file lists (the target excluded)."""
    text = path.read_text().replace("\\\n", " ")
    _, _, deps = text.partition(": ")
    files: list[str] = []
    cur = ""
    for tok in deps.split(" "):
        if tok.endswith("\\"):  # an escaped space inside a path
            cur += tok[:-1] + " "
            continue
        cur += tok
        if cur.strip():
            files.append(cur.strip())
        cur = ""
    return files


def _stamp(path: str) -> list[Any]:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def _fresh(directory: Path) -> bool:
    """A cached build whose every input file still has its size and mtime."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        if not (directory / LIBRARY_NAME).is_file():
            return False
        return all(_stamp(p) == [p, size, mtime] for p, size, mtime in manifest["inputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _run_all(commands: Sequence[list[str]]) -> None:
    """Run the compile commands in parallel; TflmBuildError with the first failure."""
    procs = [(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)) for cmd in commands]
    failures = []
    for cmd, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append((cmd, out, proc.returncode))
        elif out.strip():
            log.debug("%s: %s", shlex.join(cmd), out.strip())
    if failures:
        cmd, out, code = failures[0]
        lines = [ln for ln in out.splitlines() if "error" in ln] or out.splitlines()
        first = lines[0] if lines else f"{Path(cmd[0]).name} exited with status {code}"
        log.error("build command failed: %s\n%s", shlex.join(cmd), out)
        raise TflmBuildError(f"building the PATCH_EXEC TFLM kernel failed: {first.strip()}")


def _build_into(config: BuildConfig, work: Path) -> None:
    core_o = [work / f"core{i}_{src.stem}.o" for i, src in enumerate(config.core_sources)]
    glue_o, reg_o = work / "patch_exec_op.o", work / "registerer.o"
    _run_all([*(config.core_command(src, o) for src, o in zip(config.core_sources, core_o,
                                                              strict=True)),
              config.glue_command(GLUE_SOURCE, glue_o),
              config.glue_command(REGISTERER_SOURCE, reg_o)])
    objects = [*core_o, glue_o, reg_o]
    _run_all([config.link_command(objects, work / LIBRARY_NAME)])
    inputs: dict[str, list[Any]] = {}
    for obj in objects:
        for dep in _read_depfile(Path(f"{obj}.d")):
            full = os.path.abspath(dep)
            inputs.setdefault(full, _stamp(full))
    inputs.setdefault(str(config.runtime_library), _stamp(str(config.runtime_library)))
    for f in work.iterdir():
        if f.name != LIBRARY_NAME:
            f.unlink()
    (work / "manifest.json").write_text(json.dumps({"inputs": list(inputs.values())}))


def build_kernel(config: BuildConfig | None = None, *, cache_dir: Path | None = None,
                 force: bool = False, sanitize: bool = False) -> KernelLibrary:
    """The PATCH_EXEC library for the wheel: built, or reused from the cache. `sanitize`
    (when no config is given): the ASan + UBSan variant."""
    config = config or config_from_env(sanitize=sanitize)
    lib = _build_or_reuse(config, cache_dir, force)
    return KernelLibrary(lib, sanitized=config.sanitize)


def _build_or_reuse(config: BuildConfig, cache_dir: Path | None, force: bool) -> Path:
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / build_key(config)
    if not force and _fresh(final):
        return final / LIBRARY_NAME
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _build_into(config, work)
        if final.exists():  # stale (a header changed) or forced: move it out of the way
            trash = Path(tempfile.mkdtemp(prefix=".stale-", dir=root))
            os.replace(final, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(work, final)
        except OSError:
            if not _fresh(final):  # not a concurrent build of the same key: a real error
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("built %s in %.1f s", final / LIBRARY_NAME, time.monotonic() - start)
    return final / LIBRARY_NAME


@functools.cache
def _kernel_or_reason() -> tuple[KernelLibrary | None, str]:
    try:
        return build_kernel(), ""
    except TflmPatchError as e:
        return None, str(e)


def kernel_or_reason() -> tuple[KernelLibrary | None, str]:
    """(the library, "") if it can be built here, else (None, why not). Built once per
    process."""
    return _kernel_or_reason()
