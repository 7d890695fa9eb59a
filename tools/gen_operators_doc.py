#!/usr/bin/env python3
"""Generate docs/operators.md: what tflm-patch does with each operator of the TFLM wheel.

    python tools/gen_operators_doc.py            # rewrite docs/operators.md
    python tools/gen_operators_doc.py --check    # exit 1 if it is out of date

The operator list is the pinned tflite-micro wheel's own: every builtin operator code is
offered to its interpreter in a model of that one operator without tensors, and an
operator is registered unless TFLM answers "Didn't find op for builtin opcode" (one child
process, `tflm_runner.allocation_reports`). What each operator gets comes from the same
data the code decides with: `stage.STAGE_OPS` and the constants of `stage.op_support`
(inside a stage), `arena_tail.OP_TAIL` with `arena_head.SCRATCH_REGISTRY` (arena from the
tables) and `arena_measure` (arena measured in x86 TFLM, or why not).
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "operators.md"
NOT_REGISTERED = "Didn't find op for builtin opcode"
log = logging.getLogger("gen_operators_doc")

# What PATCH_EXEC requires of an operator beyond the conditions every stage operator
# shares (GENERAL below). An operator of stage.STAGE_OPS missing here gets "see
# stage.op_support".
NOTES = {
    "CONV_2D": "constant filter and bias; any stride, dilation and SAME/VALID padding",
    "DEPTHWISE_CONV_2D": "constant filter and bias; any stride, dilation, depth multiplier",
    "AVERAGE_POOL_2D": "any window, stride and padding",
    "MAX_POOL_2D": "any window, stride and padding",
    "PAD": "constant paddings of rows and columns (not batch or channels); folded into the "
           "next window operator when it can be",
    "PADV2": "as PAD, with a constant pad value",
    "ADD": "two activations of equal rows and columns (a residual ADD)",
    "MUL": "by a runtime per-channel tensor [1, 1, 1, C] broadcast over rows and columns "
           "(squeeze-and-excitation)",
    "CONCATENATION": "two activations along channels, equal in rows and columns",
    "TRANSPOSE": "only NCHW -> NHWC of a batch-1 int8 tensor, quantization unchanged, as "
                 "a stage's first operator (folded into how the stage reads its input)",
}
LUT_NOTE = "a unary int8 -> int8 operator, computed as a 256-entry table"
RELU_NOTE = ", alpha >= 0"


def general_conditions() -> str:
    from tflm_patch.stage import FIELD_MAX, FUSED_OK, SHIFT_MAX, SHIFT_MIN

    fused = "/".join(FUSED_OK[k] for k in sorted(FUSED_OK))
    return (f"int8 activations on 4-D NHWC tensors of batch 1; a fused activation of {fused}; "
            f"every size, kernel and stride at most {FIELD_MAX:,}; requantization shifts in "
            f"{SHIFT_MIN}..{SHIFT_MAX}")


def registered_builtins() -> list[str]:
    """The builtin operators the wheel's interpreter resolves (names, sorted)."""
    from tflm_patch import tflm_runner
    from tflm_patch.model import builtin_op_names

    names = {code: name for code, name in builtin_op_names().items()
             if name not in ("CUSTOM", "PLACEHOLDER_FOR_GREATER_OP_CODES", "DELEGATE")}
    codes = sorted(names)
    reports = tflm_runner.allocation_reports([_empty_op_model(c) for c in codes])
    return sorted(names[c] for c, r in zip(codes, reports, strict=True)
                  if not (isinstance(r, str) and NOT_REGISTERED in r))


def _empty_op_model(code: int) -> bytes:
    from tflm_patch.model import model_to_bytes
    from tflm_patch.schema import schema

    fb = schema()
    obj = fb.ModelT()
    obj.version = 3
    obj.buffers = [fb.BufferT()]
    opcode = fb.OperatorCodeT()
    opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), 1
    obj.operatorCodes = [opcode]
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [], []
    sg = fb.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = [], [], [], [op]
    obj.subgraphs = [sg]
    return model_to_bytes(obj)


def in_stage(name: str) -> str:
    from tflm_patch.ref_params import LUT_OPS
    from tflm_patch.stage import STAGE_OPS

    if name not in STAGE_OPS and name != "TRANSPOSE":
        return "no"
    if name in NOTES:
        note = NOTES[name]
    elif name in LUT_OPS:
        note = LUT_NOTE + (RELU_NOTE if name == "LEAKY_RELU" else "")
    else:
        note = "see `stage.op_support`"
    return f"**yes**: {note}"


def outside(name: str) -> str:
    from tflm_patch.arena_head import SCRATCH_REGISTRY
    from tflm_patch.arena_measure import NOT_MEASURABLE
    from tflm_patch.arena_tail import OP_TAIL

    if name in NOT_MEASURABLE:
        return f"not supported: {NOT_MEASURABLE[name]}"
    if name in OP_TAIL and name in SCRATCH_REGISTRY:
        return "yes (exact arena: table)"
    return "yes (exact arena: measured)"


def render(names: list[str]) -> str:
    from tflm_patch.stage import STAGE_OPS

    wheel = metadata.version("tflite-micro")
    inside = sum(1 for n in names if n in STAGE_OPS or n == "TRANSPOSE")
    lines = [
        "# Operators",
        "",
        "<!-- generated by `python tools/gen_operators_doc.py`; do not edit by hand -->",
        "",
        f"Every builtin operator the pinned TFLM wheel (`tflite-micro=={wheel}`) registers: "
        f"{len(names)} operators, {inside} of which can be inside a patched stage.",
        "",
        "- **In a stage**: `PATCH_EXEC` can compute the operator patch by patch, when the "
        "conditions hold (`stage.op_support` checks them and `tflm-patch plan` names the "
        "operators where stages stop, with the reason). Every stage operator needs: "
        f"{general_conditions()}.",
        "- **Outside stages**: the operator stays a TFLM operator, and the arena model "
        "predicts the model's arena exactly: from its tables (allocations known from TFLM's "
        "source), or measured once in x86 TFLM (`arena_measure`: a one-operator model and "
        "a few variants with the same shapes, types, quantization, options and constant "
        "inputs; cached). An operator measured but that x86 TFLM cannot run alone makes the "
        "prediction unavailable, with TFLM's reason.",
        "",
        "| operator | in a stage | outside stages |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {in_stage(n)} | {outside(n)} |" for n in names]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/operators.md differs")
    p.add_argument("--output", type=Path, default=DOC)
    args = p.parse_args(argv)
    text = render(registered_builtins())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python tools/gen_operators_doc.py")
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
