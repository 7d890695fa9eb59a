"""The PATCH_EXEC core on an emulated Cortex-M4 (QEMU mps2-an386): cross-compiled with
-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os, linked into a bare-metal
test program (tests/m4_harness/), run with semihosting; the FNV-1a 32 checksum of each
PATCH_EXEC output must equal the numpy reference's, byte for byte. The model is the
patched person_detect on person.bmp (../shared/models), else the zoo's mbv1_025_96 on a
seeded input. Skips with the reason when the toolchain or QEMU is missing."""

from __future__ import annotations

from pathlib import Path

import m4
import pytest


@pytest.fixture(scope="module")
def harness_model() -> m4.HarnessModel:
    return m4.default_model()


@pytest.fixture(scope="module")
def cases(harness_model: m4.HarnessModel) -> list[m4.Case]:
    model = harness_model.model
    return m4.make_cases(model, harness_model.stage_input, m4.chain_ops(model))


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, harness_model: m4.HarnessModel,
            cases: list[m4.Case]) -> m4.Harness:
    reason = m4.toolchain_reason(qemu=False)
    if reason:
        pytest.skip(reason)
    return m4.build_harness(harness_model.model, cases, tmp_path_factory.mktemp("m4"),
                            harness_model.label)


@pytest.fixture(scope="module")
def qemu(harness: m4.Harness) -> m4.QemuRun:
    reason = m4.toolchain_reason(qemu=True)
    if reason:
        pytest.skip(reason)
    return m4.run_qemu(harness.elf)


def test_fnv1a32_known_values() -> None:
    assert m4.fnv1a32(b"") == 0x811C9DC5
    assert m4.fnv1a32(b"a") == 0xE40C292C
    assert m4.fnv1a32(b"foobar") == 0xBF9CF968


@pytest.mark.slow
def test_qemu_stage_output_equals_numpy(qemu: m4.QemuRun, cases: list[m4.Case]) -> None:
    """The acceptance check: the patched main stage's output checksum on the Cortex-M4."""
    stage = cases[0]
    got = qemu.checksums()
    assert got[stage.op.index] == f"{stage.checksum:08x}", qemu.output


@pytest.mark.slow
def test_qemu_every_chained_operator_equals_numpy(qemu: m4.QemuRun,
                                                  cases: list[m4.Case]) -> None:
    """Each later PATCH_EXEC reads the device's previous output: the whole chain."""
    assert qemu.checksums() == m4.expected_checksums(cases), qemu.output
    assert [r.bytes for r in qemu.results] == [c.expected.size for c in cases]


@pytest.mark.slow
def test_instruction_counter_is_exact_on_a_known_loop(qemu: m4.QemuRun) -> None:
    """-icount shift=0 and Timer0: a loop of 2,000,000 instructions reads as exactly that
    (to one tick, 40 instructions)."""
    cal = qemu.calibration
    assert cal is not None, qemu.output
    assert cal.expected == 2_000_000
    assert abs(cal.measured - cal.expected) <= m4.INSTRUCTIONS_PER_TICK


@pytest.mark.slow
def test_every_operator_reports_its_instructions(qemu: m4.QemuRun,
                                                 cases: list[m4.Case]) -> None:
    speeds = m4.op_speeds(cases, qemu)
    assert [s.op for s in speeds] == [c.op.index for c in cases]
    assert all(s.instructions > 0 and s.macs > 0 for s in speeds)
    assert all(s.macs >= s.macs_whole for s in speeds)  # halos are recomputed, never fewer


@pytest.mark.slow
def test_person_detect_uses_the_image(harness_model: m4.HarnessModel) -> None:
    if not harness_model.label.startswith("person_detect"):
        pytest.skip("../shared/models not found: the zoo model runs instead of person_detect")
    assert harness_model.input_origin == "person.bmp"
    assert harness_model.stage_input.shape == (1, 96, 96, 1)


@pytest.mark.slow
def test_core_has_no_static_ram(harness: m4.Harness) -> None:
    """No mutable static state: .data and .bss of the core are empty."""
    sizes = m4.kernel_sizes(harness.core)
    assert (sizes.data, sizes.bss) == (0, 0)
    assert sizes.text > 0


@pytest.mark.slow
def test_core_stack_is_bounded(harness: m4.Harness) -> None:
    """No recursion and no dynamic (alloca/VLA) frames: the static worst case is a bound."""
    report = m4.stack_report(harness.core)
    assert {c.entry for c in report.chains} >= {"PatchExecValidate", "PatchExecRun",
                                                "PatchExecRunArray"}
    assert [c.entry for c in report.chains if c.recursive] == []
    assert report.dynamic == ()


@pytest.mark.slow
def test_measured_stack_within_the_static_bound(harness: m4.Harness,
                                               qemu: m4.QemuRun) -> None:
    """The painted stack of every run stays within the call-graph sum for
    PatchExecRunArray (its only callees without frame data are libgcc/libc leaves)."""
    report = m4.stack_report(harness.core)
    bound = next(c.total for c in report.chains if c.entry == "PatchExecRunArray")
    assert max(r.stack for r in qemu.results) <= bound


_CI = """graph: { title: "t.cc"
node: { title: "Top" label: "int Top(Fn)\\nt.cc:4:16\\n100 bytes (static)" }
node: { title: "t.cc:_ZL4Leafi" label: "int Leaf(int)\\nt.cc:3:5\\n40 bytes (static)" }
node: { title: "Cb" label: "const void* ArrayInput(void*)\\nt.cc:9:1\\n24 bytes (static)" }
node: { title: "Deep" label: "void Deep()\\nt.cc:5:1\\n64 bytes (static)" }
node: { title: "__indirect_call" label: "Indirect Call Placeholder" shape : ellipse }
node: { title: "memcpy" label: "void* memcpy(void*, const void*)\\n<built-in>" shape : ellipse }
edge: { sourcename: "Top" targetname: "t.cc:_ZL4Leafi" label: "t.cc:4:1" }
edge: { sourcename: "Top" targetname: "__indirect_call" label: "t.cc:4:2" }
edge: { sourcename: "t.cc:_ZL4Leafi" targetname: "memcpy" label: "t.cc:3:1" }
edge: { sourcename: "Cb" targetname: "Deep" label: "t.cc:9:2" }
}
"""


def test_stack_report_sums_the_deepest_chain(tmp_path: Path) -> None:
    ci = tmp_path / "t.ci"
    ci.write_text(_CI)
    obj = m4.CoreObject(tmp_path / "t.o", tmp_path / "t.su", ci, ())
    report = m4.stack_report([obj], entries=("Top",), indirect=("ArrayInput",))
    chain = report.chains[0]
    # Top 100 -> (indirect) ArrayInput 24 -> Deep 64 beats Top -> Leaf 40
    assert [f.bytes for f in chain.frames] == [100, 24, 64]
    assert chain.total == 188
    assert chain.external == ("void* memcpy(void*, const void*)",)
    assert report.largest_frame.bytes == 100
