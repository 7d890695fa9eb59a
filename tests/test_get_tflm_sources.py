"""tools/get_tflm_sources.sh against small git repositories made here and served by a
file:// URL: the pinned commit (not the branch head) is fetched, only what the build
needs is laid out, the `export` lines are exact, a second run reuses the cache, and a
missing commit fails without printing its variable."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tflm_patch.cli_doctor import check_arduino_sources, check_tflm_headers

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "get_tflm_sources.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason="git and bash are needed to run the fetch script")

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

# files of each pinned commit; the files after "|" are not part of the layout
TFLM = ["LICENSE", "tensorflow/lite/micro/micro_context.h",
        "python/tflite_micro/python_ops_resolver.h", "signal/src/window.h",
        "|", "tensorflow/lite/micro/micro_context.cc", "README.md", "third_party/x.h"]
FLATBUFFERS = ["LICENSE", "include/flatbuffers/flatbuffers.h", "|", "src/idl_parser.cpp"]
GEMMLOWP = ["LICENSE", "fixedpoint/fixedpoint.h", "internal/common.h", "|", "meta/base.h"]
ARDUINO = ["LICENSE", "library.properties", "src/tensorflow/lite/micro/micro_interpreter.h",
           "src/TensorFlowLite.h", "|", "examples/hello_world/hello_world.ino"]


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def _make_repo(root: Path, name: str, files: list[str], tag: str | None = None) -> str:
    """A bare repository root/name whose pinned commit (returned; tagged `tag` if given)
    has `files`; the branch head is a later commit with one more file."""
    work = root / "work" / name
    work.mkdir(parents=True)
    _git(work, "init", "-q", "-b", "main")
    for f in (f for f in files if f != "|"):
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text(f"{name}: {f}\n")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "pinned")
    pinned = _git(work, "rev-parse", "HEAD")
    if tag:
        _git(work, "tag", "-a", tag, "-m", tag)
    (work / "LICENSE").write_text("changed after the pin\n")
    (work / "include").mkdir(exist_ok=True)
    (work / "include" / "later.h").write_text("later\n")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "later")
    _git(root, "clone", "-q", "--bare", str(work), str(root / name))
    return pinned


@dataclass(frozen=True)
class Remote:
    url: str
    pins: dict[str, str]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Remote:
    root = tmp_path_factory.mktemp("upstream")
    (root / "tensorflow").mkdir()
    (root / "google").mkdir()
    pins = {
        "TFLM_COMMIT": _make_repo(root, "tensorflow/tflite-micro", TFLM),
        "GEMMLOWP_COMMIT": _make_repo(root, "google/gemmlowp", GEMMLOWP),
        "ARDUINO_EXAMPLES_COMMIT": _make_repo(root, "tensorflow/tflite-micro-arduino-examples",
                                              ARDUINO),
        "FLATBUFFERS_REF": "v25.9.23",
    }
    _make_repo(root, "google/flatbuffers", FLATBUFFERS, tag="v25.9.23")
    return Remote(f"file://{root}", pins)


def _run(remote: Remote, cache: Path, *args: str, **pins: str
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_ENV, **remote.pins, **pins}
    return subprocess.run(["bash", str(SCRIPT), "--base-url", remote.url, "--cache",
                           str(cache), *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _tree(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _layout(files: list[str]) -> list[str]:
    kept = files[:files.index("|")]
    return sorted([*kept, ".tflm_patch_source"])


def test_prints_the_exports_and_lays_out_only_the_pinned_headers(remote: Remote,
                                                                 tmp_path: Path) -> None:
    run = _run(remote, tmp_path / "cache", "--arduino")
    assert run.returncode == 0, run.stderr
    cache = (tmp_path / "cache").resolve()
    tflm = cache / f"tflite-micro-{remote.pins['TFLM_COMMIT']}"
    fb = cache / "flatbuffers-v25.9.23"
    gl = cache / f"gemmlowp-{remote.pins['GEMMLOWP_COMMIT']}"
    ard = cache / f"Arduino_TensorFlowLite-{remote.pins['ARDUINO_EXAMPLES_COMMIT']}"
    assert run.stdout.splitlines() == [
        f"export TFLM_ROOT={tflm}",
        f"export TFLM_EXTRA_INCLUDES={fb}/include:{gl}",
        f"export ARDUINO_TENSORFLOWLITE_SRC={ard}/src",
    ]
    assert _tree(tflm) == _layout(TFLM)
    assert _tree(fb) == _layout(FLATBUFFERS)  # the tag's commit: no include/later.h
    assert _tree(gl) == _layout(GEMMLOWP)
    assert _tree(ard) == _layout(ARDUINO)
    assert (gl / "LICENSE").read_text() == "google/gemmlowp: LICENSE\n"  # not the head's
    stamp = (tflm / ".tflm_patch_source").read_text().split()
    assert stamp == ["tensorflow/tflite-micro", remote.pins["TFLM_COMMIT"],
                     remote.pins["TFLM_COMMIT"]]


def test_the_exports_satisfy_the_build_and_doctor(remote: Remote, tmp_path: Path) -> None:
    run = _run(remote, tmp_path / "cache", "--arduino")
    assert run.returncode == 0, run.stderr
    env = dict(line.removeprefix("export ").split("=", 1) for line in run.stdout.splitlines())
    assert check_arduino_sources(env).ok
    headers = check_tflm_headers(env)
    if "compiler" in headers.detail or "wheel" in headers.detail:
        pytest.skip(f"the build cannot be configured here: {headers.detail}")
    assert headers.ok, headers.detail


def test_second_run_reuses_the_cache(remote: Remote, tmp_path: Path) -> None:
    first = _run(remote, tmp_path / "cache")
    second = _run(remote, tmp_path / "cache")
    assert first.returncode == second.returncode == 0
    assert second.stdout == first.stdout
    assert "fetching" not in second.stderr
    assert second.stderr.count("already in") == 3


def test_missing_commit_fails_without_exports(remote: Remote, tmp_path: Path) -> None:
    run = _run(remote, tmp_path / "cache", GEMMLOWP_COMMIT="0" * 40)
    assert run.returncode != 0
    assert "TFLM_EXTRA_INCLUDES" not in run.stdout
    assert not list((tmp_path / "cache").glob("gemmlowp-*"))


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    run = subprocess.run(["bash", str(SCRIPT), "--nope"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("usage: ")
