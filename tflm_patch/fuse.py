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
"""

from __future__ import annotations

from collections.abc import Sequence

from tflm_patch.model import Model
from tflm_patch.stage import foldable_pad, op_support, stage_check

FUSABLE = ("CONV_2D", "DEPTHWISE_CONV_2D")


def fusion_units(model: Model, exclude: Sequence[tuple[int, int]] = (),
                 support: list[tuple[bool, str]] | None = None) -> list[tuple[int, int]]:
    """(first, last) operator ranges of the fusion units outside `exclude` (inclusive
    operator ranges, the patched stages), in model order."""
    if support is None:
        support = [op_support(model, op) for op in model.operators]
    consumers = model.consumers()

    def free(i: int) -> bool:
        return not any(a <= i <= b for a, b in exclude)

    units: list[tuple[int, int]] = []
    for i, op in enumerate(model.operators):
        if op.name not in FUSABLE or not free(i) or not support[i][0]:
            continue
        first = i
        if i > 0 and free(i - 1):
            pad = model.operators[i - 1]
            if pad.outputs[0] == op.inputs[0] and foldable_pad(model, pad, consumers,
                                                                op.outputs[0]):
                first = i - 1
        for start in dict.fromkeys((first, i)):  # with the PAD folded if possible
            if stage_check(model, start, i, support, live_input=True)[0]:
                units.append((start, i))
                break
    return units
