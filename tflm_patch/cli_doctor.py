"""`tflm-patch doctor`: what this installation can do, and what each missing piece
switches off. One line per piece; always exit status 0."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tflm_patch
from tflm_patch.cli_output import CONSOLE
from tflm_patch.errors import TflmPatchError

# importlib.metadata and tflm_build are imported where a check runs: every command builds
# the parser with this module, and they would add ~0.14 s of start-up to each
ENV_ARDUINO = "ARDUINO_TENSORFLOWLITE_SRC"
ARM_TOOLS = ("arm-none-eabi-g++", "arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-ar")
QEMU = "qemu-system-arm"
VERSION_TIMEOUT = 20.0  # seconds for one `TOOL --version`


@dataclass(frozen=True)
class Check:
    """One piece: `ok`, what was found (version, path) or why it is missing, and what its
    absence switches off ('' when nothing)."""

    name: str
    ok: bool
    detail: str
    switches_off: str = ""


def _first_line(command: Sequence[str]) -> str:
    """The first line `command` prints (its version), '' if it cannot run."""
    try:
        out = subprocess.run(list(command), capture_output=True, text=True,
                             timeout=VERSION_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _dist_version(*names: str) -> str | None:
    from importlib import metadata

    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def check_package() -> Check:
    where = Path(tflm_patch.__file__).resolve().parent
    return Check("tflm-patch", True, f"{tflm_patch.__version__} at {where}")


def check_tensorflow() -> Check:
    found = _dist_version("tensorflow-cpu", "tensorflow")
    if found is None:
        return Check("TensorFlow", False, "not installed (pip install tensorflow-cpu)",
                     "everything: the .tflite schema module comes from TensorFlow; and "
                     "building zoo models")
    return Check("TensorFlow", True, f"{found} (the .tflite schema, zoo models)")


def _pinned(dist: str) -> str | None:
    """The exact version of `dist` this package requires (`dist==X`), if any."""
    from importlib import metadata

    try:
        requires = metadata.requires("tflm-patch") or []
    except metadata.PackageNotFoundError:
        return None
    for req in requires:
        name, sep, version = req.partition("==")
        if sep and name.strip() == dist:
            return version.split(";")[0].strip()
    return None


def check_tflm_wheel() -> Check:
    from tflm_patch import tflm_build

    off = ("every x86 TFLM run: validate, analyze's measured arena, tflm_patch.interpreter(), "
           "the TFLM tests")
    try:
        tflm_build.wheel_runtime_library()
    except TflmPatchError as e:
        return Check("tflite-micro wheel", False, str(e), off)
    version, pin = _dist_version("tflite-micro"), _pinned("tflite-micro")
    if pin is not None and version != f"tflite-micro {pin}":
        return Check("tflite-micro wheel", False, f"{version} installed, the package pins "
                     f"{pin} (custom-op libraries are ABI-bound to the wheel's TFLM)",
                     "the C++ PATCH_EXEC kernel in x86 TFLM may not load or may misbehave")
    return Check("tflite-micro wheel", True, f"{version} (the pinned version)"
                 if pin is not None else str(version))


def check_tflm_headers(env: Mapping[str, str]) -> Check:
    from tflm_patch import tflm_build

    try:
        config = tflm_build.config_from_env(env)
    except TflmPatchError as e:
        return Check("TFLM headers", False, str(e),
                     "the C++ PATCH_EXEC kernel in x86 TFLM: validate runs PATCH_EXEC with "
                     "the numpy reference instead, analyze cannot measure patched models, "
                     "tflm_patch.interpreter() is unavailable, the TFLM glue tests skip")
    extra = ":".join(map(str, config.extra_includes))
    return Check("TFLM headers", True, f"{tflm_build.ENV_ROOT}={config.tflm_root} "
                 f"{tflm_build.ENV_EXTRA}={extra}")


def check_compiler(env: Mapping[str, str]) -> Check:
    compiler = env.get("CXX") or "c++"
    words = shlex.split(compiler) or ["c++"]
    if shutil.which(words[0]) is None:
        return Check("C++ compiler", False, f"no {compiler!r} on PATH (set CXX)",
                     "the C++ PATCH_EXEC kernel in x86 TFLM and the native core tests")
    return Check("C++ compiler", True, _first_line([*words, "--version"]) or compiler)


def check_arm_toolchain() -> Check:
    missing = [t for t in ARM_TOOLS if shutil.which(t) is None]
    if missing:
        return Check("arm-none-eabi toolchain", False, f"{', '.join(missing)} not on PATH "
                     "(bash tools/install_m4_toolchain.sh, or gcc-arm-none-eabi)",
                     "Cortex-M4 builds: flash/stack sizes, the M4 and Arduino sketch tests")
    return Check("arm-none-eabi toolchain", True, _first_line([ARM_TOOLS[1], "--version"]))


def check_qemu() -> Check:
    if shutil.which(QEMU) is None:
        return Check("QEMU", False, f"{QEMU} not on PATH",
                     "running PATCH_EXEC and the Arduino sketch on an emulated Cortex-M4 "
                     "(mps2-an386)")
    return Check("QEMU", True, _first_line([QEMU, "--version"]))


def check_arduino_sources(env: Mapping[str, str]) -> Check:
    value = env.get(ENV_ARDUINO, "")
    off = ("building the Arduino sketch with Arduino_TensorFlowLite and running it on QEMU "
           "(export --arduino still works)")
    if not value:
        return Check("Arduino_TensorFlowLite", False, f"{ENV_ARDUINO} not set (its src/ "
                     "folder; tools/get_tflm_sources.sh --arduino)", off)
    if not Path(value, "tensorflow", "lite", "micro", "micro_interpreter.h").is_file():
        return Check("Arduino_TensorFlowLite", False,
                     f"{ENV_ARDUINO}={value} is not Arduino_TensorFlowLite's src/ folder", off)
    return Check("Arduino_TensorFlowLite", True, f"{ENV_ARDUINO}={value}")


def check_clang_format() -> Check:
    if shutil.which("clang-format") is None:
        return Check("clang-format", False, "not on PATH (pip install clang-format)",
                     "the formatting checks of the C++ sources")
    return Check("clang-format", True, _first_line(["clang-format", "--version"]))


def run_checks(env: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in the order `doctor` prints them."""
    env = os.environ if env is None else env
    checks: list[Callable[[], Check]] = [
        check_package, check_tensorflow, check_tflm_wheel,
        lambda: check_tflm_headers(env), lambda: check_compiler(env), check_arm_toolchain,
        check_qemu, lambda: check_arduino_sources(env), check_clang_format,
    ]
    return [check() for check in checks]


def format_check(c: Check) -> str:
    line = f"{'ok' if c.ok else 'missing':<8} {c.name:<24} {c.detail}"
    return line + (f"; off: {c.switches_off}" if c.switches_off else "")


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks()
    if CONSOLE.json:
        CONSOLE.emit_json([asdict(c) for c in checks])
        return 0
    for c in checks:
        CONSOLE.say(format_check(c))
    return 0


def add_parser(sub: Any, common: Sequence[argparse.ArgumentParser]) -> None:
    d = sub.add_parser(
        "doctor", parents=common,
        help="say what is configured here and what each missing piece switches off",
        description="Check this installation: the package, TensorFlow, the tflite-micro "
        "wheel, the TFLM headers (TFLM_ROOT, TFLM_EXTRA_INCLUDES), the C++ compiler, the "
        "arm-none-eabi toolchain, QEMU, Arduino_TensorFlowLite (ARDUINO_TENSORFLOWLITE_SRC) "
        "and clang-format. One line each; exit status 0.")
    d.set_defaults(func=cmd_doctor)
