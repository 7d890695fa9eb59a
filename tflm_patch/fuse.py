"""Fused tail stages: 1x1-grid PATCH_EXECs on the layer-by-layer part (multi-stage plans).

Outside the patched stage TFLM runs every operator layer by layer. Each convolution
keeps its per-channel requantization data (multipliers and shifts, 8 bytes per output
channel) in the arena, and an explicit PAD (PyTorch exports put one before every
depthwise convolution) materializes a padded copy of its input. A *fusion unit* -- one
convolution, with the zero-point PAD right before it folded into its padding -- run as a
PATCH_EXEC with a 1x1 grid computes exactly the same values with no extra MACs, takes its
multipliers/shifts from flash (constant tensors) and never makes the padded copy.

A unit's input may still be read after it (a convolution inside a residual block): it is
an ordinary operator for TFLM's memory planner, not a patched stage.

Squeeze-and-excitation blocks get two wider units: the expansion CONV_2D with the
depthwise convolution after it (a STREAM pair: the expansion exists one channel at a time)
when the depthwise output is scaled by an SE MUL, and the SE MUL (by its runtime
per-channel operand) with the CONV_2D that alone reads its output (and the residual ADD
after it, reading the block input whole as a runtime input), so the scaled tensor never
exists. Their peaks (input + expansion + depthwise output; unscaled + scaled tensor)
are each the whole model's on such networks, so they only pay together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tflm_patch.model import Model, OperatorInfo
from tflm_patch.stage import build_stage, foldable_pad, op_support, side_operand, stage_check

FUSABLE = ("CONV_2D", "DEPTHWISE_CONV_2D")


def unit_grid(model: Model, first: int, last: int) -> tuple[int, int]:
    """The grid of a fusion unit: 1x1, or one patch per output row for a unit with an SE
    MUL (its scaled tensor then exists one row at a time; a pointwise unit has no halo,
    so no extra MACs)."""
    graph = build_stage(model, first, last, live_input=True)
    return (graph.shapes[-1][0], 1) if graph.sides else (1, 1)


def fusion_units(model: Model, exclude: Sequence[tuple[int, int]] = (),
                 support: list[tuple[bool, str]] | None = None) -> list[tuple[int, int]]:
    """(first, last) operator ranges of the fusion units outside `exclude` (inclusive
    operator ranges, the patched stages), in model order."""
    if support is None:
        support = [op_support(model, op) for op in model.operators]
    if support is model.memoized("support"):  # the model's own: its facts are too
        facts = model.memo("fusion_facts", lambda: _Facts.of(model, support))
    else:
        facts = _Facts.of(model, support)
    taken = {i for a, b in exclude for i in range(a, b + 1)}
    units: list[tuple[int, int]] = []
    for i, pad_folds, alone in facts.convs:
        if i in taken:
            continue
        if pad_folds and i - 1 not in taken:  # with the PAD folded
            units.append((i - 1, i))
        elif alone:
            units.append((i, i))
    return _se_units(model, units, support, facts, taken)


@dataclass(frozen=True)
class _Facts:
    """What fusion_units finds whatever the patched stages are, once per model."""

    # (i, PAD i-1 folds into conv i as a valid unit, conv i alone is a valid unit)
    convs: tuple[tuple[int, bool, bool], ...]
    se_depthwise: tuple[int, ...]  # depthwise convs read by an SE MUL
    # (i, end): SE MUL i where [i, i + 1] is a valid unit with a CONV_2D, end = i + 2 when
    # the residual ADD after it fits too (its block input a runtime addend), else i + 1
    se_muls: tuple[tuple[int, int], ...]

    @staticmethod
    def of(model: Model, support: list[tuple[bool, str]]) -> _Facts:
        consumers = model.consumers()
        ops = model.operators

        def valid(a: int, b: int) -> bool:
            return stage_check(model, a, b, support, live_input=True)[0]

        def pad_folds(i: int) -> bool:
            pad, op = ops[i - 1], ops[i]
            return pad.outputs[0] == op.inputs[0] and \
                foldable_pad(model, pad, consumers, op.outputs[0]) and valid(i - 1, i)

        def se_mul(op: OperatorInfo) -> bool:  # (in a patched stage or not)
            return op.name == "MUL" and side_operand(model, op) is not None and \
                support[op.index][0]

        def readers(op: OperatorInfo) -> list[OperatorInfo]:
            return [ops[j] for j in consumers.get(op.outputs[0], [])] if op.outputs else []

        return _Facts(
            tuple((i, i > 0 and pad_folds(i), valid(i, i)) for i, op in enumerate(ops)
                  if op.name in FUSABLE and support[i][0]),
            tuple(op.index for op in ops if op.name == "DEPTHWISE_CONV_2D" and
                  any(se_mul(r) for r in readers(op))),
            tuple((i, i + 2 if i + 2 < len(ops) and ops[i + 2].name == "ADD" and
                   valid(i, i + 2) else i + 1)
                  for i, op in enumerate(ops) if se_mul(op) and i + 1 < len(ops) and
                  ops[i + 1].name == "CONV_2D" and valid(i, i + 1)))


def _se_units(model: Model, units: list[tuple[int, int]], support: list[tuple[bool, str]],
              facts: _Facts, taken: set[int]) -> list[tuple[int, int]]:
    """`units` with the squeeze-and-excitation ones merged in: [expansion .. depthwise]
    before an SE MUL, [SE MUL, CONV_2D (, ADD)] after it (each only when it is a valid
    stage)."""
    ops = model.operators
    merged = units
    ends = dict(facts.se_muls)
    for i, depthwise in sorted([(i, True) for i in facts.se_depthwise] +
                               [(i, False) for i in ends]):
        if depthwise:
            before = [u for u in merged if u[1] == i - 1 and ops[i - 1].name == "CONV_2D"]
            mine = [u for u in merged if u[1] == i]
            if before and mine:
                merged = _merge(model, merged, before[0], mine[0], support)
        elif i not in taken and i + 1 not in taken:
            end = ends[i] if ends[i] not in taken else i + 1
            merged = sorted({*(u for u in merged if u != (i + 1, i + 1)), (i, end)})
    return merged


def _merge(model: Model, units: list[tuple[int, int]], a: tuple[int, int],
           b: tuple[int, int], support: list[tuple[bool, str]]) -> list[tuple[int, int]]:
    """Units a and b as one (a's first .. b's last) when that is a valid stage."""
    if not stage_check(model, a[0], b[1], support, live_input=True)[0]:
        return units
    return sorted({*(u for u in units if u not in (a, b)), (a[0], b[1])})
