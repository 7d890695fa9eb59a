"""Instructions per Invoke() on the Cortex-M4 (tools/m4_speed.py): the board counter on
loops of known instruction count, the parser of the program's output, and a zoo model
original and patched with Arduino_TensorFlowLite's CMSIS-NN kernels on QEMU. The QEMU
tests skip with the reason without the cross toolchain, QEMU or
ARDUINO_TENSORFLOWLITE_SRC."""

from __future__ import annotations

import m4_speed
import numpy as np
import pytest

from tflm_patch.model import load_model
from tflm_patch.zoo import ZOO_NAMES

ITERATIONS = (1000, 100000, 1000000)  # tools/m4_speed_harness/counter_main.c, kIterations
ZOO_MODEL = "odd_stride2"


# ----------------------------------------------------------------------------- counter


@pytest.fixture(scope="module")
def counter_checks() -> dict[int, m4_speed.CounterCheck]:
    reason = m4_speed.m4.toolchain_reason(qemu=True)
    if reason:
        pytest.skip(reason)
    return {c.iterations: c for c in m4_speed.check_counter()}


@pytest.mark.parametrize("iterations", ITERATIONS)
def test_counter_counts_a_known_loop(counter_checks: dict[int, m4_speed.CounterCheck],
                                     iterations: int) -> None:
    c = counter_checks[iterations]
    assert c.expected == 5 * iterations + 1
    assert abs(c.measured - c.expected) < m4_speed.RESOLUTION, c


# ----------------------------------------------------------------------------- parser


def _tiny_model() -> bytes:
    """person_detect-like output: 2 int8 values; 3 operators."""
    from tflm_patch.zoo import ensure_model

    return ensure_model(ZOO_MODEL).read_bytes()


def _program_output(model_bytes: bytes, ticks: tuple[int, int, int],
                    events: list[tuple[str, int]], outputs: tuple[str, str, str]) -> str:
    model = load_model(model_bytes)
    out = model.tensors[model.outputs[0]]
    lines = ["speed: instructions_per_tick 40"]
    for run in (1, 2):
        lines += [f"speed: run {run} ticks {ticks[run - 1]}",
                  f"speed: run {run} output 0 type 9 bytes {out.nbytes} hex {outputs[run - 1]}"]
    lines += ["speed: arena_used_bytes 12345",
              f"speed: run 3 ticks {ticks[2]} profiler_total_ticks {sum(t for _, t in events)}",
              f"speed: run 3 output 0 type 9 bytes {out.nbytes} hex {outputs[2]}",
              "speed: profiler log begin",
              *(f"{name} took lu ticks ({t} ms).\r" for name, t in events),
              "speed: profiler log end", "speed: done"]
    return "\n".join(lines) + "\n"


def test_parse_run_reads_counts_per_op_and_outputs() -> None:
    data = _tiny_model()
    model = load_model(data)
    n = model.tensors[model.outputs[0]].nbytes
    hexed = bytes(range(n)).hex()
    events = [(op.name, 100 + op.index) for op in model.operators]
    p = m4_speed.parse_run(_program_output(data, (1001, 1000, 1100), events,
                                           (hexed,) * 3), model)
    assert p.total == 40_000
    assert p.first == 40_040
    assert p.arena_used == 12345
    assert [(o.index, o.name, o.instructions) for o in p.per_op] == [
        (op.index, op.name, 40 * (100 + op.index)) for op in model.operators]
    assert p.outputs[0].tobytes() == bytes(range(n))
    assert p.outputs[0].dtype == np.int8


def test_parse_run_refuses_differing_outputs() -> None:
    data = _tiny_model()
    model = load_model(data)
    n = model.tensors[model.outputs[0]].nbytes
    events = [(op.name, 10) for op in model.operators]
    text = _program_output(data, (10, 10, 10), events,
                           ("00" * n, "00" * n, "01" + "00" * (n - 1)))
    with pytest.raises(m4_speed.SpeedError, match="outputs of the three"):
        m4_speed.parse_run(text, model)


def test_parse_run_refuses_events_of_other_operators() -> None:
    data = _tiny_model()
    model = load_model(data)
    n = model.tensors[model.outputs[0]].nbytes
    events = [("CONV_2D", 10) for _ in model.operators[:-1]]
    with pytest.raises(m4_speed.SpeedError, match="profiler event"):
        m4_speed.parse_run(_program_output(data, (10, 10, 10), events, ("00" * n,) * 3),
                           model)


# ----------------------------------------------------------------------------- QEMU


@pytest.fixture(scope="module")
def zoo_profiles() -> tuple[m4_speed.BenchModel, bytes, m4_speed.M4Profile,
                            m4_speed.M4Profile]:
    reason = m4_speed.reason()
    if reason:
        pytest.skip(reason)
    bm = m4_speed.zoo_models([ZOO_MODEL])[0]
    args = (("--objective", "memory") if "--objective" in m4_speed.convert_options()
            else ())
    patched = m4_speed.convert(bm.data, args)
    return (bm, patched, m4_speed.profile(bm.data, bm.inputs),
            m4_speed.profile(patched, bm.inputs))


def test_zoo_model_patched_outputs_bit_identical(zoo_profiles: tuple) -> None:
    bm, patched, original, p = zoo_profiles
    assert patched != bm.data
    assert any(op.name == "PATCH_EXEC" for op in load_model(patched).operators)
    assert [a.tobytes() for a in p.outputs] == [a.tobytes() for a in original.outputs]
    x86 = m4_speed._x86_outputs(patched, bm.inputs)
    assert [a.tobytes() for a in x86] == [
        a.tobytes() for a in m4_speed._x86_outputs(bm.data, bm.inputs)]


def test_zoo_model_convolutions_equal_x86_tflm(zoo_profiles: tuple) -> None:
    """The model up to its last convolution (its MEAN head is left out: February 2023
    TFLM's int8 MEAN rounds differently from the x86 TFLM's) gives x86 TFLM's bytes."""
    from tflm_patch.validate import segment_model

    bm = zoo_profiles[0]
    model = load_model(bm.data)
    last = max(op.index for op in model.operators if op.name == "CONV_2D")
    data = segment_model(model, list(range(last + 1)), [model.inputs[0]],
                         [model.operators[last].outputs[0]])
    got = m4_speed.profile(data, bm.inputs).outputs
    assert [a.tobytes() for a in got] == [
        a.tobytes() for a in m4_speed._x86_outputs(data, bm.inputs)]


@pytest.mark.parametrize("which", ["original", "patched"])
def test_zoo_model_counts(zoo_profiles: tuple, which: str) -> None:
    bm, patched, original, p = zoo_profiles
    prof = original if which == "original" else p
    model = load_model(bm.data if which == "original" else patched)
    assert prof.total > 0
    assert abs(prof.first - prof.total) <= m4_speed.RESOLUTION
    assert [o.name for o in prof.per_op] == [op.name for op in model.operators]
    # the profiled Invoke: the operators take nearly all of it, never more
    assert 0.95 * prof.profiled_total <= prof.per_op_sum <= prof.profiled_total
    assert prof.arena_used > 0


def test_profile_uses_the_same_seeded_input_for_both(zoo_profiles: tuple) -> None:
    bm, patched, _, _ = zoo_profiles
    a = m4_speed.default_inputs(load_model(bm.data))
    b = m4_speed.default_inputs(load_model(patched))
    assert [x.tobytes() for x in a] == [x.tobytes() for x in b]


def test_speed_harness_is_clang_formatted() -> None:
    import shutil
    import subprocess

    tool = shutil.which("clang-format")
    if tool is None:
        pytest.skip("clang-format not installed (pip install clang-format)")
    files = sorted(p for p in m4_speed.HARNESS.iterdir() if p.suffix in (".h", ".c", ".cc"))
    r = subprocess.run([tool, "--style=file", "--dry-run", "--Werror", *map(str, files)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_op_ranges_cover_the_original_operators(zoo_profiles: tuple) -> None:
    """Each operator of the patched model stands for a run of original operators; the runs
    tile the original in order (what the per-op breakdown compares against)."""
    bm, patched, original, p = zoo_profiles
    ranges = m4_speed.op_ranges(load_model(bm.data), load_model(patched))
    assert all(r is not None for r in ranges)
    flat = [k for r in ranges if r is not None for k in range(r[0], r[1] + 1)]
    assert flat == list(range(len(load_model(bm.data).operators)))
    row = m4_speed.Row("m", "v", "i", profile=p, op_ranges=ranges, base=original)
    assert sum(row.replaced_instructions(k) or 0 for k in range(len(ranges))) == \
        original.per_op_sum


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_zoo_model_patched_bit_identical_on_the_m4(name: str) -> None:
    """The Cortex-M4 build of PATCH_EXEC (its DSP kernels) inside Arduino_TensorFlowLite
    with CMSIS-NN: the default plan of each zoo model (the memory objective's where the
    default leaves the model unchanged) gives the original's output bytes there."""
    why = m4_speed.reason()
    if why:
        pytest.skip(why)
    bm = m4_speed.zoo_models([name])[0]
    patched = m4_speed.convert(bm.data, ())
    if patched == bm.data:
        patched = m4_speed.convert(bm.data, ("--objective", "memory"))
    assert any(op.name == "PATCH_EXEC" for op in load_model(patched).operators)
    original = m4_speed.profile(bm.data, bm.inputs)
    got = m4_speed.profile(patched, bm.inputs)
    assert [a.tobytes() for a in got.outputs] == [a.tobytes() for a in original.outputs]
