"""Converter post-pass: replace a stage by one PATCH_EXEC operator (model bytes -> bytes).

`replace_stage` (`replace_stages` for several) edits a copy of the schema object
(`ModelT`): the stage's operators go,
one PATCH_EXEC comes in their place whose inputs are the stage input and the constant
tensors (existing weights/biases by reference, new int32 multiplier/shift tensors), and
`prune` drops the tensors, buffers and operator codes nothing refers to any more.
`to_checked_bytes` serializes and re-reads the result through the flatbuffer verifier
and the options decoder, so a broken file is never produced.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from tflm_patch import patch_format as pf
from tflm_patch.errors import ModelFormatError, UnsupportedModelError
from tflm_patch.model import (
    Model,
    builtin_op_codes,
    load_model,
    metadata_name,
    model_to_bytes,
)
from tflm_patch.schedule import Schedule, stage_options
from tflm_patch.schema import schema
from tflm_patch.stage import StageGraph

log = logging.getLogger(__name__)

CUSTOM_CODE = "PATCH_EXEC"
PLAN_METADATA = "tflm_patch.plan"
_INT32 = 2  # schema TensorType.INT32


def _op_code_index(obj: Any) -> int:
    fb = schema()
    custom = builtin_op_codes()["CUSTOM"]
    for i, code in enumerate(obj.operatorCodes or []):
        name = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        if name == CUSTOM_CODE:
            return i
    code = fb.OperatorCodeT()
    code.builtinCode = custom
    code.deprecatedBuiltinCode = custom
    code.customCode = CUSTOM_CODE
    code.version = 1
    obj.operatorCodes = [*(obj.operatorCodes or []), code]
    return len(obj.operatorCodes) - 1


def _new_constant(obj: Any, name: str, data: np.ndarray) -> int:
    fb = schema()
    buf = fb.BufferT()
    buf.data = np.frombuffer(data.astype("<i4").tobytes(), dtype=np.uint8)
    obj.buffers.append(buf)
    t = fb.TensorT()
    t.shape = [int(data.size)]
    t.type = _INT32
    t.buffer = len(obj.buffers) - 1
    t.name = name
    sg = obj.subgraphs[0]
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def replace_stage(model: Model, graph: StageGraph, sched: Schedule,
                  plan: dict[str, Any] | None = None) -> Any:
    """A new ModelT with operators graph.first..graph.last replaced by one PATCH_EXEC."""
    return replace_stages(model, [(graph, sched)], plan)


def replace_stages(model: Model, stages: Sequence[tuple[StageGraph, Schedule]],
                   plan: dict[str, Any] | None = None) -> Any:
    """A new ModelT with every stage replaced by its own PATCH_EXEC (multi-stage plans).
    The stages are operator ranges of `model` that must not overlap."""
    if model.num_subgraphs != 1:
        raise UnsupportedModelError(f"the model has {model.num_subgraphs} subgraphs; "
                                    "tflm-patch rewrites single-subgraph models only")
    ordered = sorted(stages, key=lambda s: s[0].first, reverse=True)
    for (a, _), (b, _) in itertools.pairwise(ordered):
        if b.last >= a.first:
            raise ValueError(f"stages {b.first}..{b.last} and {a.first}..{a.last} overlap")
    obj = copy.deepcopy(model.obj)
    for graph, sched in ordered:  # back to front: earlier operator indices stay valid
        _splice(obj, graph, sched)
    if plan is not None:
        set_metadata(obj, PLAN_METADATA, json.dumps(plan, sort_keys=True).encode())
    prune(obj)
    return obj


def _splice(obj: Any, graph: StageGraph, sched: Schedule) -> None:
    """Replace the stage's operators in `obj` by one PATCH_EXEC (new constants appended)."""
    sg = obj.subgraphs[0]
    inputs = [graph.input]
    where: dict[int, int] = {}

    def add_input(tensor: int) -> int:
        if tensor not in where:
            where[tensor] = len(inputs)
            inputs.append(tensor)
        return where[tensor]

    layers = []
    for k, (layer, consts) in enumerate(zip(graph.layers, graph.constants, strict=True)):
        if consts is None:
            layers.append(layer)
            continue
        prefix = f"patch_exec{graph.first}/layer{k}"
        w = add_input(consts.weights)
        b = add_input(consts.bias) if consts.bias is not None else pf.NONE
        mi = add_input(_new_constant(obj, f"{prefix}/multipliers", consts.multipliers))
        si = add_input(_new_constant(obj, f"{prefix}/shifts", consts.shifts))
        layers.append(_with_constants(layer, w, b, mi, si))
    options = stage_options(graph, sched, tuple(layers), len(inputs))
    blob = pf.encode(options)
    op = schema().OperatorT()
    op.opcodeIndex = _op_code_index(obj)
    op.inputs = inputs
    op.outputs = [graph.output]
    op.customOptions = np.frombuffer(blob, dtype=np.uint8)
    sg.operators = [*sg.operators[:graph.first], op, *sg.operators[graph.last + 1:]]


def _with_constants(layer: pf.Layer, w: int, b: int, mi: int, si: int) -> pf.Layer:
    return replace(layer, weights=w, bias=b, multipliers=mi, shifts=si)


def set_metadata(obj: Any, name: str, data: bytes) -> None:
    """Add (or replace) a metadata entry `name` holding `data` in its own buffer."""
    fb = schema()
    buf = fb.BufferT()
    buf.data = np.frombuffer(data, dtype=np.uint8)
    for entry in obj.metadata or []:
        if metadata_name(entry) == name:
            obj.buffers[entry.buffer] = buf
            return
    obj.buffers.append(buf)
    meta = fb.MetadataT()
    meta.name = name
    meta.buffer = len(obj.buffers) - 1
    obj.metadata = [*(obj.metadata or []), meta]


def plan_metadata(model: Model) -> dict[str, Any] | None:
    raw = model.metadata(PLAN_METADATA)
    if raw is None:
        return None
    try:
        doc = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise ModelFormatError(f"metadata {PLAN_METADATA!r} is not JSON") from None
    if not isinstance(doc, dict):
        raise ModelFormatError(f"metadata {PLAN_METADATA!r} is not a JSON object")
    return doc


# ---------------------------------------------------------------------------- prune
def prune(obj: Any) -> None:
    """Drop tensors no operator or graph input/output refers to, buffers no tensor or
    metadata refers to (buffer 0, the empty sentinel, stays) and unused operator codes;
    renumber all references."""
    sg = obj.subgraphs[0]
    # numpy arrays in the object API: `or []` would ask an array for its truth value
    used_t: set[int] = {int(t) for seq in (sg.inputs, sg.outputs) if seq is not None
                        for t in seq}
    for op in sg.operators:
        for seq in (op.inputs, op.outputs, op.intermediates):
            used_t.update(int(t) for t in (seq if seq is not None else []) if t >= 0)
    keep_t = sorted(used_t)
    t_map = {old: new for new, old in enumerate(keep_t)}
    sg.tensors = [sg.tensors[i] for i in keep_t]

    def remap(seq: Any) -> Any:
        return None if seq is None else [t_map[int(t)] if t >= 0 else -1 for t in seq]

    for op in sg.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        op.intermediates = remap(op.intermediates)
    sg.inputs, sg.outputs = remap(sg.inputs), remap(sg.outputs)
    for sig in obj.signatureDefs or []:
        for tmap in (*(sig.inputs or []), *(sig.outputs or [])):
            tmap.tensorIndex = t_map[tmap.tensorIndex]

    used_b = {0} | {int(t.buffer) for t in sg.tensors}
    used_b |= {int(m.buffer) for m in obj.metadata or []}
    used_b |= {int(b) for b in (obj.metadataBuffer if obj.metadataBuffer is not None else [])}
    keep_b = sorted(b for b in used_b if b < len(obj.buffers))
    b_map = {old: new for new, old in enumerate(keep_b)}
    obj.buffers = [obj.buffers[i] for i in keep_b]
    for t in sg.tensors:
        t.buffer = b_map[int(t.buffer)]
    for m in obj.metadata or []:
        m.buffer = b_map[int(m.buffer)]
    if obj.metadataBuffer is not None:
        obj.metadataBuffer = [b_map[int(b)] for b in obj.metadataBuffer]

    used_c = sorted({int(op.opcodeIndex) for op in sg.operators})
    c_map = {old: new for new, old in enumerate(used_c)}
    obj.operatorCodes = [obj.operatorCodes[i] for i in used_c]
    for op in sg.operators:
        op.opcodeIndex = c_map[int(op.opcodeIndex)]


def to_checked_bytes(obj: Any) -> bytes:
    """Serialize; re-read through the verifier and decode every PATCH_EXEC's options."""
    data = model_to_bytes(obj)
    try:
        model = load_model(data)
    except ModelFormatError as e:  # a bug in the rewrite, never the user's fault
        raise ModelFormatError(f"internal error: the rewritten model does not verify: {e}") \
            from None
    for op in model.operators:
        if op.name == CUSTOM_CODE:
            pf.decode(op.custom_options or b"")
    return data
