"""Converter post-pass: replace a stage by one PATCH_EXEC operator (model bytes -> bytes).

`replace_stage` (`replace_stages` for several) edits a copy of the schema object
(`ModelT`): the stage's operators go,
one PATCH_EXEC comes in their place whose inputs are the stage input and the constants.
Constants are packed (options version 3): every PATCH_EXEC of the model reads its conv
weights from ONE shared int8 tensor and its biases, multipliers and shifts from ONE shared
int32 tensor, each layer's part at an element offset (so TFLM keeps two tensors, not four
per conv layer); `pack=False` writes version 1-2 operators instead (the weights and biases
by reference, new int32 multiplier/shift tensors per layer). `prune` drops the tensors,
buffers and operator codes nothing refers to any more (original weights other operators
still read stay).
`to_checked_bytes` serializes and re-reads the result through the flatbuffer verifier
and the options decoder, so a broken file is never produced.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
from tflm_patch.stage import LayerConstants, StageGraph

log = logging.getLogger(__name__)

CUSTOM_CODE = "PATCH_EXEC"
PLAN_METADATA = "tflm_patch.plan"
_INT32 = 2  # schema TensorType.INT32
_INT8 = 9  # schema TensorType.INT8
PACKED_INT8 = "patch_exec/packed_int8"  # names of the shared constant tensors
PACKED_INT32 = "patch_exec/packed_int32"
WEIGHT_ALIGNMENT = 4  # each layer's weights start on a word (the DSP kernels load words)


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
    return _new_tensor(obj, name, data.astype("<i4").tobytes(), _INT32, int(data.size))


def _new_tensor(obj: Any, name: str, raw: bytes, dtype: int, elements: int) -> int:
    fb = schema()
    buf = fb.BufferT()
    buf.data = np.frombuffer(raw, dtype=np.uint8)
    obj.buffers.append(buf)
    t = fb.TensorT()
    t.shape = [elements]
    t.type = dtype
    t.buffer = len(obj.buffers) - 1
    t.name = name
    sg = obj.subgraphs[0]
    sg.tensors.append(t)
    return len(sg.tensors) - 1


@dataclass
class ConstantPool:
    """The shared constants of a model's PATCH_EXECs (version 3): raw little-endian bytes
    of one int8 and one int32 tensor; identical parts are stored once."""

    int8: bytearray = field(default_factory=bytearray)
    int32: bytearray = field(default_factory=bytearray)
    _seen: dict[tuple[int, bytes], int] = field(default_factory=dict)

    def add(self, raw: bytes, size: int) -> int:
        """The element offset of `raw` (elements of `size` bytes, 1 or 4) in its tensor."""
        pool = self.int8 if size == 1 else self.int32
        key = (size, raw)
        if key not in self._seen:
            if size == 1:
                pool.extend(bytes(-len(pool) % WEIGHT_ALIGNMENT))
            self._seen[key] = len(pool) // size
            pool.extend(raw)
        return self._seen[key]

    def tensors(self, obj: Any) -> tuple[int, int]:
        """Append the two tensors (empty ones too: prune drops what nothing reads)."""
        return (_new_tensor(obj, PACKED_INT8, bytes(self.int8), _INT8, len(self.int8)),
                _new_tensor(obj, PACKED_INT32, bytes(self.int32), _INT32,
                            len(self.int32) // 4))


def replace_stage(model: Model, graph: StageGraph, sched: Schedule,
                  plan: dict[str, Any] | None = None, pack: bool = False) -> Any:
    """A new ModelT with operators graph.first..graph.last replaced by one PATCH_EXEC
    (by default in the version 1-2 layout, its own constant tensors; the converter's
    replace_stages packs)."""
    return replace_stages(model, [(graph, sched)], plan, pack)


def replace_stages(model: Model, stages: Sequence[tuple[StageGraph, Schedule]],
                   plan: dict[str, Any] | None = None, pack: bool = True) -> Any:
    """A new ModelT with every stage replaced by its own PATCH_EXEC (multi-stage plans).
    The stages are operator ranges of `model` that must not overlap. `pack`: all of them
    share two packed constant tensors (version 3)."""
    if model.num_subgraphs != 1:
        raise UnsupportedModelError(f"the model has {model.num_subgraphs} subgraphs; "
                                    "tflm-patch rewrites single-subgraph models only")
    ordered = sorted(stages, key=lambda s: s[0].first, reverse=True)
    for (a, _), (b, _) in itertools.pairwise(ordered):
        if b.last >= a.first:
            raise ValueError(f"stages {b.first}..{b.last} and {a.first}..{a.last} overlap")
    obj = copy.deepcopy(model.obj)
    pool = ConstantPool() if pack else None
    shared = pool.tensors(obj) if pool is not None else None  # data filled in below
    for graph, sched in ordered:  # back to front: earlier operator indices stay valid
        _splice(obj, graph, sched, model, pool, shared)
    if pool is not None and shared is not None:
        _fill(obj, pool, shared)
    if plan is not None:
        set_metadata(obj, PLAN_METADATA, json.dumps(plan, sort_keys=True).encode())
    prune(obj)
    return obj


def _fill(obj: Any, pool: ConstantPool, shared: tuple[int, int]) -> None:
    """Give the two shared tensors the pool's data."""
    sg = obj.subgraphs[0]
    for index, raw, size in ((shared[0], pool.int8, 1), (shared[1], pool.int32, 4)):
        t = sg.tensors[index]
        obj.buffers[t.buffer].data = np.frombuffer(bytes(raw), dtype=np.uint8)
        t.shape = [len(raw) // size]


def _packed_layer(model: Model, layer: pf.Layer, consts: LayerConstants, pool: ConstantPool,
                  w: int, c32: int) -> pf.Layer:
    """A conv layer reading its constants from the pool: inputs w (int8) and c32 (int32),
    element offsets in p[4..7]."""
    weights = model.buffer_bytes(consts.weights) or b""
    at = [pool.add(weights, 1), 0, 0, 0]
    if consts.bias is not None:
        at[1] = pool.add(model.buffer_bytes(consts.bias) or b"", 4)
    at[2] = pool.add(consts.multipliers.astype("<i4").tobytes(), 4)
    at[3] = pool.add(consts.shifts.astype("<i4").tobytes(), 4)
    p = (*layer.p[:4], *at, *layer.p[8:])
    return replace(layer, weights=w, bias=c32 if consts.bias is not None else pf.NONE,
                   multipliers=c32, shifts=c32, p=p)


def _check_packed(options: pf.PatchOptions, graph: StageGraph, model: Model) -> None:
    """Every packed use reads exactly its original data's bytes (a bug otherwise)."""
    for k, consts in enumerate(graph.constants):
        if consts is None:
            continue
        raw = [model.buffer_bytes(consts.weights) or b""]
        raw += [model.buffer_bytes(consts.bias) or b""] if consts.bias is not None else []
        sizes = [len(r) for r in raw] + [4 * consts.multipliers.size, 4 * consts.shifts.size]
        expect = [math.prod(shape) * (1 if dtype == "int8" else 4)
                  for _, dtype, shape in pf.constant_uses(options, k)]
        if sizes != expect:
            raise ModelFormatError(f"internal error: stage {graph.first} layer {k}: constant "
                                   f"bytes {sizes}, the options need {expect}")


def _splice(obj: Any, graph: StageGraph, sched: Schedule, model: Model | None = None,
            pool: ConstantPool | None = None, shared: tuple[int, int] | None = None) -> None:
    """Replace the stage's operators in `obj` by one PATCH_EXEC (new constants appended,
    or with `pool` the layer's constants added to the pool and read from `shared`)."""
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
        side = graph.sides[k] if graph.sides else None
        if side is not None:  # a MUL's runtime per-channel operand
            layers.append(replace(layer, weights=add_input(side)))
            continue
        table = graph.tables[k] if graph.tables else None
        if table is not None:  # a LUT layer's 256-entry table
            layers.append(_table_layer(obj, layer, table, pool, shared, graph.first, k,
                                       add_input))
            continue
        if consts is None:
            layers.append(layer)
            continue
        if pool is not None and shared is not None and model is not None:
            layers.append(_packed_layer(model, layer, consts, pool, add_input(shared[0]),
                                        add_input(shared[1])))
            continue
        prefix = f"patch_exec{graph.first}/layer{k}"
        w = add_input(consts.weights)
        b = add_input(consts.bias) if consts.bias is not None else pf.NONE
        mi = add_input(_new_constant(obj, f"{prefix}/multipliers", consts.multipliers))
        si = add_input(_new_constant(obj, f"{prefix}/shifts", consts.shifts))
        layers.append(_with_constants(layer, w, b, mi, si))
    options = stage_options(graph, sched, tuple(layers), len(inputs), pool is not None)
    if pool is not None and model is not None:
        _check_packed(options, graph, model)
    blob = pf.encode(options)
    op = schema().OperatorT()
    op.opcodeIndex = _op_code_index(obj)
    op.inputs = inputs
    op.outputs = [graph.output]
    op.customOptions = np.frombuffer(blob, dtype=np.uint8)
    sg.operators = [*sg.operators[:graph.first], op, *sg.operators[graph.last + 1:]]


def _table_layer(obj: Any, layer: pf.Layer, table: np.ndarray, pool: ConstantPool | None,
                 shared: tuple[int, int] | None, first: int, k: int,
                 add_input: Callable[[int], int]) -> pf.Layer:
    """A LUT layer reading its table from the pool (offset in p[4]) or from a new int8
    constant of 256 elements."""
    raw = np.asarray(table, dtype=np.int8).tobytes()
    if pool is not None and shared is not None:
        p = (*layer.p[:4], pool.add(raw, 1), *layer.p[5:])
        return replace(layer, weights=add_input(shared[0]), p=p)
    t = _new_tensor(obj, f"patch_exec{first}/layer{k}/table", raw, _INT8, len(raw))
    return replace(layer, weights=add_input(t))


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


def add_plan_fields(obj: Any, fields: dict[str, Any]) -> None:
    """Merge `fields` into the plan metadata of a rewritten ModelT (e.g. "interface": what
    `--int8-io` removed)."""
    for entry in obj.metadata or []:
        if metadata_name(entry) == PLAN_METADATA:
            raw = bytes(np.asarray(obj.buffers[entry.buffer].data, dtype=np.uint8))
            plan = {**json.loads(raw.decode()), **fields}
            set_metadata(obj, PLAN_METADATA, json.dumps(plan, sort_keys=True).encode())
            return
    raise ValueError("the model has no plan metadata")


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
