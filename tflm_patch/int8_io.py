"""`--int8-io` for plan and convert (and `int8_io=True` in the Python API).

`prepare` applies the interface pass (`interface.strip_float_interface`) before planning;
`record` adds what it removed to the plan metadata ("interface"); `note` is the one line
the commands print about it. Without the option, `hint` says when the float input and
output tensors are a large share of the arena, with the arena the option would give.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from tflm_patch.errors import TflmPatchError, UsageError
from tflm_patch.interface import StripResult, interface_bytes, strip_float_interface
from tflm_patch.model import Model, load_model

log = logging.getLogger(__name__)

HINT_SHARE = 0.25  # hint when the float I/O tensors are at least this share of the arena


@dataclass(frozen=True)
class Prepared:
    """What the planner plans: `model` (stripped when asked and possible) and the pass's
    result (None when --int8-io was not asked)."""

    model: Model
    strip: StripResult | None = None

    @property
    def interface(self) -> list[dict[str, Any]]:
        return self.strip.to_json() if self.strip is not None else []


def prepare(model: Model, int8_io: bool) -> Prepared:
    if not int8_io:
        return Prepared(model)
    strip = strip_float_interface(model)
    return Prepared(load_model(strip.model) if strip.changed else model, strip)


def map_split_op(prepared: Prepared, split_op: int | None) -> int | None:
    """A --split-op index of the given model as an index of the stripped one."""
    if split_op is None or prepared.strip is None:
        return split_op
    gone = prepared.strip.removed_ops
    if split_op in gone:
        raise UsageError(f"--split-op {split_op} is an interface operator --int8-io removes")
    return split_op - sum(1 for i in gone if i < split_op)


def record(obj: Any, prepared: Prepared) -> None:
    """The removed interface into the rewritten ModelT's plan metadata."""
    from tflm_patch.rewrite import add_plan_fields

    if prepared.strip is not None and prepared.strip.changed:
        add_plan_fields(obj, {"interface": prepared.interface})


def note(prepared: Prepared) -> str | None:
    """One line on what --int8-io did (None when it was not asked)."""
    s = prepared.strip
    if s is None:
        return None
    if not s.changed:
        why = "; ".join(s.kept) or "the inputs and outputs are not float32 or uint8"
        return f"int8 I/O: nothing to strip, the model is unchanged ({why})"
    parts = [f"{r.io} {r.index} {r.dtype} (scale {r.scale:.6g}, zero point {r.zero_point})"
             for r in s.removed]
    return "int8 I/O: removed the conversion of " + ", ".join(parts)


@dataclass(frozen=True)
class Hint:
    float_bytes: int  # the float/uint8 I/O tensors --int8-io would remove
    arena: int  # the predicted arena they are part of
    int8_io_arena: int  # the predicted arena of the plan with --int8-io
    kind: str = "float"  # "float", "uint8" or "float/uint8": the removed tensors' types

    @property
    def line(self) -> str:
        return (f"hint: the {self.kind} input/outputs take {self.float_bytes:,} B of the "
                f"{self.arena:,} B arena; --int8-io would give {self.int8_io_arena:,} B")

    def to_json(self) -> dict[str, int]:
        return {"float_io_bytes": self.float_bytes, "arena": self.arena,
                "int8_io_arena": self.int8_io_arena}


def _arena(result: Any) -> int:
    return int(result.chosen.arena if result.chosen is not None else result.arena_before)


def hint(model: Model, result: Any, request: Any) -> Hint | None:
    """The hint for a plan made without --int8-io: None unless the removable float I/O
    tensors are >= HINT_SHARE of its arena (only then is the stripped model planned)."""
    from tflm_patch.planner import plan

    n, arena = interface_bytes(model), _arena(result)
    if n == 0 or n < HINT_SHARE * arena:
        return None
    prepared = prepare(model, True)
    try:
        request = replace(request, split_op=map_split_op(prepared, request.split_op))
        other = plan(prepared.model, request)
    except TflmPatchError as e:
        log.info("no --int8-io hint: %s", e)
        return None
    types = sorted({r.dtype for r in prepared.strip.removed}) if prepared.strip else []
    kind = "/".join("float" if t == "float32" else t for t in types) or "float"
    return Hint(n, arena, _arena(other), kind)
