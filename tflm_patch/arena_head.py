"""The head of TFLM's arena, predicted by construction.

The head is the non-persistent part of the arena. After `AllocateTensors` it
holds exactly one thing: the memory plan of every activation tensor and every
scratch buffer, as TFLM's `GreedyMemoryPlanner` lays them out. This module
rebuilds that plan from the same rules TFLM applies (tflite-micro 90b983c2b):

Which buffers enter the plan (micro_allocation_info.cc, InitializeAllocationInfo):
  * every tensor of the subgraph without constant data (a buffer whose `data`
    vector is non-empty), that is not a variable and has a non-zero byte length
    (element count x TfLiteTypeSizeOf: int4 counts one byte per element);
  * every scratch buffer a kernel requests in its Prepare
    (RequestScratchBufferInArena), after all tensors, in request order;
  * with offline planning ("OfflineMemoryAllocation" metadata) a tensor keeps
    its fixed offset, and an offline-planned variable tensor is planned too.

Lifetimes ("allocation scopes", MarkAllocationLifetimes): scope 0 is the start
of the subgraph (graph inputs are created and used there), operator k runs in
scope k + 1; a tensor is created in the scope of the first operator that writes
it and lives until the last scope that reads or writes it; graph outputs live
until the scope of the last operator; a scratch buffer lives in the scope of the
operator that requested it. A buffer TFLM never marks keeps -1 for both.

Planner (memory_planner/greedy_memory_planner.cc): sizes are rounded up to
MicroArenaBufferAlignment() = 16 (micro_allocator.cc CreatePlan). Offline
buffers come first, in the order added. The online buffers are sorted by size,
descending, with a stable bubble sort over the buffers *in reverse order of
addition*, so equal sizes are placed last-added first. Each buffer then goes
into the lowest gap, between the buffers it shares time with (ordered by
offset), that is large enough; the plan size is max(offset + size).

The head size equals the plan size: CommitStaticMemoryPlan reserves exactly
GetMaximumMemorySize() bytes at the 16-aligned head of the arena, and
RecordingMicroAllocator reports max(head, temp) = head once AllocateTensors has
returned. (During Prepare and planning the non-persistent side temporarily
holds more: temp TfLiteTensors, the scratch-request array and the planner's
working arrays. That bounds the smallest arena of tiny models, not the head.)
"""

from __future__ import annotations

import bisect
import logging
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tflm_patch.arena_measured import measured_op
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo, TensorInfo
from tflm_patch.patch_format import scratch_bytes

log = logging.getLogger(__name__)

# MicroArenaBufferAlignment() in tensorflow/lite/micro/micro_arena_constants.h.
ARENA_ALIGNMENT = 16
# kOnlinePlannedBuffer in tensorflow/lite/micro/memory_planner/micro_memory_planner.h.
ONLINE_PLANNED = -1
# kUninitializedLifetime in tensorflow/lite/micro/micro_allocation_info.cc.
UNMARKED = -1
# Metadata name of an offline memory plan (micro_allocation_info.cc).
OFFLINE_PLAN_METADATA = "OfflineMemoryAllocation"
# Metadata name of TFLM tensor compression (compression/metadata_saved.h): compressed
# tensors add decompression scratch buffers that this module does not model.
COMPRESSION_METADATA = "COMPRESSION_METADATA"

# sizeof(void*) per target: ADD_N requests one pointer per input as scratch.
POINTER_SIZE = {"x86_64": 8, "cortex_m": 4}

# TfLiteTypeSizeOf (tensorflow/lite/micro/memory_helpers.cc), by our dtype name.
# int4 tensors are unpacked, one byte per element. Types absent here make TFLM fail.
TYPE_SIZE = {
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "int16": 2,
    "int32": 4,
    "uint32": 4,
    "uint8": 1,
    "uint16": 2,
    "int8": 1,
    "int64": 8,
    "uint64": 8,
    "bool": 1,
    "resource": 4,
    "complex64": 8,
    "complex128": 16,
    "int4": 1,
}

INT32_SIZE = 4  # sizeof(int) and sizeof(int32_t) on both targets


@dataclass(frozen=True)
class PlannedBuffer:
    """One buffer of the head plan.

    `tensor` is the tensor index (None for a scratch buffer); `op` is the index of
    the operator that requested a scratch buffer (None for a tensor). `size` is the
    16-aligned size given to the planner. `first`/`last` are TFLM allocation scopes:
    0 = graph inputs, k + 1 = while operator k runs, -1 = never marked.
    """

    label: str
    tensor: int | None
    op: int | None
    size: int
    first: int
    last: int
    offset: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class HeadPlan:
    size: int
    buffers: tuple[PlannedBuffer, ...]


# --------------------------------------------------------------------------- planner


def align_up(value: int, alignment: int = ARENA_ALIGNMENT) -> int:
    return (value + alignment - 1) // alignment * alignment


def greedy_plan(
    sizes_and_lifetimes: Sequence[tuple[int, int, int]],
    alignment: int = ARENA_ALIGNMENT,
    offline_offsets: Sequence[int] | None = None,
) -> tuple[int, list[int]]:
    """TFLM's GreedyMemoryPlanner over (size, first, last) buffers in order of addition.

    Sizes are rounded up to `alignment` first (as CreatePlan does). Lifetimes are
    inclusive: two buffers share time unless one's first comes after the other's
    last. `offline_offsets[i]` fixes buffer i at that offset (-1 = plan it online).
    Returns (plan size, offset of each buffer).
    """
    count = len(sizes_and_lifetimes)
    if offline_offsets is not None and len(offline_offsets) != count:
        raise ValueError(f"{len(offline_offsets)} offline offsets for {count} buffers")
    if count == 0:
        return 0, []
    sizes = [align_up(s, alignment) for s, _, _ in sizes_and_lifetimes]
    firsts = [f for _, f, _ in sizes_and_lifetimes]
    lasts = [last for _, _, last in sizes_and_lifetimes]
    fixed = list(offline_offsets) if offline_offsets is not None else [ONLINE_PLANNED] * count

    order = _placement_order(sizes, fixed)
    offsets = [ONLINE_PLANNED] * count
    placed_offsets: list[int] = []  # offsets of placed buffers, ascending
    placed_ids: list[int] = []  # buffer ids, in the same order
    for buffer_id in order:
        if fixed[buffer_id] != ONLINE_PLANNED:
            offset = fixed[buffer_id]
        else:
            offset = _first_fit(buffer_id, placed_ids, placed_offsets, sizes, firsts, lasts)
        offsets[buffer_id] = offset
        # equal offsets: the newcomer goes after those already placed there
        position = bisect.bisect_right(placed_offsets, offset)
        placed_offsets.insert(position, offset)
        placed_ids.insert(position, buffer_id)
    total = max(offsets[i] + sizes[i] for i in range(count))
    return total, offsets


def greedy_order(sizes: Sequence[int]) -> list[int]:
    """_placement_order of online buffers: by size descending, the later-added first."""
    return sorted(range(len(sizes) - 1, -1, -1), key=lambda i: -sizes[i])


class Placement:
    """Buffers placed so far by the greedy planner: (offset, end, first, last) by offset."""

    def __init__(self, placed: list[tuple[int, int, int, int]] | None = None,
                 total: int = 0) -> None:
        self.placed = placed if placed is not None else []
        self.total = total

    def copy(self) -> Placement:
        return Placement(list(self.placed), self.total)

    def place(self, size: int, first: int, last: int) -> int:
        """_first_fit for a buffer alive in scopes first..last; returns its offset."""
        offset = 0
        for o, end, f, la in self.placed:
            if f > last or first > la:
                continue  # not alive at the same time
            if o - offset >= size:
                break
            if end > offset:
                offset = end
        self.put(offset, size, first, last)
        return offset

    def put(self, offset: int, size: int, first: int, last: int) -> None:
        """Add a buffer at a known offset."""
        # equal offsets: the newcomer goes after those already placed there
        entry = (offset, offset + size, first, last)
        self.placed.insert(bisect.bisect_right(self.placed, (offset, _AFTER)), entry)
        self.total = max(self.total, offset + size)


_AFTER = 1 << 62  # sorts after every end


def _placement_order(sizes: Sequence[int], fixed: Sequence[int]) -> list[int]:
    """Offline buffers in order of addition, then online ones by size descending.

    TFLM fills the online part from the back (last-added first) and bubble-sorts it
    stably, so among equal sizes the later-added buffer is placed first.
    """
    offline = [i for i in range(len(sizes)) if fixed[i] != ONLINE_PLANNED]
    online = [i for i in reversed(range(len(sizes))) if fixed[i] == ONLINE_PLANNED]
    online.sort(key=lambda i: -sizes[i])  # stable, like ReverseSortInPlace
    return offline + online


def _first_fit(
    wanted: int,
    placed_ids: Sequence[int],
    placed_offsets: Sequence[int],
    sizes: Sequence[int],
    firsts: Sequence[int],
    lasts: Sequence[int],
) -> int:
    """The lowest offset whose gap before the next simultaneously live buffer fits `wanted`."""
    candidate = 0
    for other, other_offset in zip(placed_ids, placed_offsets, strict=True):
        if firsts[other] > lasts[wanted] or firsts[wanted] > lasts[other]:
            continue  # not alive at the same time
        if other_offset - candidate >= sizes[wanted]:
            break
        candidate = max(candidate, other_offset + sizes[other])
    return candidate


# --------------------------------------------------------------------------- tensors


def tensor_bytes(model: Model, tensor: TensorInfo) -> int:
    """TfLiteEvalTensorByteLength of a tensor as it stands when the plan is made."""
    size = TYPE_SIZE.get(tensor.dtype)
    if size is None:
        raise UnsupportedModelError(
            f"tensor {tensor.index} ({tensor.name}) has type {tensor.dtype}, which TFLM "
            "cannot allocate"
        )
    return _element_count(model, tensor) * size


def _element_count(model: Model, tensor: TensorInfo) -> int:
    shape = tensor.shape
    if any(d < 0 for d in shape):
        shape = _resolved_reshape_output(model, tensor)
    return math.prod(int(d) for d in shape)


def _resolved_reshape_output(model: Model, tensor: TensorInfo) -> tuple[int, ...]:
    """RESHAPE's Prepare replaces one -1 of its output shape (reshape_common.cc)."""
    producer = model.producers().get(tensor.index)
    shape = tensor.shape
    if (
        producer is None
        or model.operators[producer].name != "RESHAPE"
        or sum(d == -1 for d in shape) != 1
        or any(d < -1 for d in shape)
    ):
        raise UnsupportedModelError(
            f"tensor {tensor.index} ({tensor.name}) has dynamic shape {list(shape)}; "
            "the arena prediction needs static shapes"
        )
    source = model.tensors[model.operators[producer].inputs[0]]
    known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
    elements = _element_count(model, source)
    return tuple(elements // known if d == -1 else d for d in shape)


def _has_flatbuffer_data(model: Model, tensor: TensorInfo) -> bool:
    """GetFlatbufferTensorBuffer: only a non-empty `data` vector counts (not offset/size)."""
    buffers = model.obj.buffers or []
    if not 0 <= tensor.buffer < len(buffers):
        return False
    data = buffers[tensor.buffer].data
    return data is not None and len(data) > 0


def offline_offsets(model: Model) -> list[int] | None:
    """The "OfflineMemoryAllocation" plan: int32 [version, subgraphs, tensors, offsets...]."""
    raw = model.metadata(OFFLINE_PLAN_METADATA)
    if raw is None:
        return None
    if len(raw) < 12:
        raise UnsupportedModelError(f"{OFFLINE_PLAN_METADATA} metadata is truncated")
    count = struct.unpack_from("<I", raw, 8)[0]
    if count != len(model.tensors) or len(raw) < 12 + 4 * count:
        raise UnsupportedModelError(
            f"{OFFLINE_PLAN_METADATA} metadata plans {count} tensors, the model has "
            f"{len(model.tensors)}: TFLM rejects it"
        )
    return list(struct.unpack_from(f"<{count}i", raw, 12))


# --------------------------------------------------------------------------- scratch

ScratchFn = Callable[[Model, OperatorInfo, int], list[int]]


def _input(model: Model, op: OperatorInfo, k: int) -> TensorInfo:
    if k >= len(op.inputs) or op.inputs[k] < 0:
        raise UnsupportedModelError(f"operator {op.index} ({op.name}) lacks input {k}")
    return model.tensors[op.inputs[k]]


def _output(model: Model, op: OperatorInfo, k: int = 0) -> TensorInfo:
    return model.tensors[op.outputs[k]]


def _rank(tensor: TensorInfo) -> int:
    return len(tensor.shape)


def _numel(model: Model, tensor: TensorInfo) -> int:
    return _element_count(model, tensor)


def _int4_filter_scratch(model: Model, op: OperatorInfo, _ptr: int) -> list[int]:
    # conv_common.cc / depthwise_conv_common.cc / fully_connected.cc Prepare: an int4
    # filter is unpacked into a scratch buffer of its element count.
    flt = _input(model, op, 1)
    return [_numel(model, flt)] if flt.dtype == "int4" else []


def _mean_sum_scratch(model: Model, op: OperatorInfo, _ptr: int) -> list[int]:
    # reduce_common.cc PrepareMeanOrSumHelper: int8/int16 add an int32 accumulator per
    # output element, then input_iter (int per input dim), resolved_axis (int per axis).
    inp, axis, out = _input(model, op, 0), _input(model, op, 1), _output(model, op)
    sizes = []
    if inp.dtype in ("int8", "int16"):
        sizes.append(INT32_SIZE * _numel(model, out))
    sizes += [INT32_SIZE * _rank(inp), INT32_SIZE * _numel(model, axis)]
    return sizes


def _min_max_all_scratch(model: Model, op: OperatorInfo, _ptr: int) -> list[int]:
    # reduce_common.cc PrepareMinMaxHelper / PrepareAllHelper.
    inp, axis = _input(model, op, 0), _input(model, op, 1)
    return [INT32_SIZE * _rank(inp), INT32_SIZE * _numel(model, axis)]


def _mirror_pad_scratch(model: Model, op: OperatorInfo, _ptr: int) -> list[int]:
    # mirror_pad.cc Prepare: two int arrays of the input rank.
    rank = _rank(_input(model, op, 0))
    return [INT32_SIZE * rank, INT32_SIZE * rank]


def _add_n_scratch(model: Model, op: OperatorInfo, ptr: int) -> list[int]:
    # add_n.cc Prepare: one data pointer per input (float32 and int8 only).
    dtype = _output(model, op).dtype
    if dtype not in ("float32", "int8"):
        raise UnsupportedModelError(
            f"operator {op.index} (ADD_N) on {dtype}: TFLM does not support it"
        )
    return [ptr * len(op.inputs)]


def _transpose_conv_scratch(model: Model, op: OperatorInfo, _ptr: int) -> list[int]:
    # transpose_conv.cc Prepare: int32 (int8 input) or int64 (int16 input) accumulators
    # per output element; then CalculateOpData converts an int16 bias to int64.
    inp, out = _input(model, op, 2), _output(model, op)
    sizes = []
    if inp.dtype == "int8":
        sizes.append(4 * _numel(model, out))
    elif inp.dtype == "int16":
        sizes.append(8 * _numel(model, out))
        if len(op.inputs) > 3 and op.inputs[3] >= 0:
            bias = model.tensors[op.inputs[3]]
            if bias.dtype == "int16":
                sizes.append(8 * _numel(model, bias))
    return sizes


def _patch_exec_scratch(_model: Model, op: OperatorInfo, _ptr: int) -> list[int]:
    # docs/patch_exec.md: one buffer of the header's scratch_bytes, none when it is 0
    n = scratch_bytes(op.custom_options or b"")
    return [n] if n else []


def _no_scratch(_model: Model, _op: OperatorInfo, _ptr: int) -> list[int]:
    return []


# Builtin ops whose reference kernels (tensorflow/lite/micro/kernels/*.cc, registered
# by the Python wheel's op resolver) never call RequestScratchBufferInArena.
_NO_SCRATCH_OPS = (
    "ABS",
    "ADD",
    "ARG_MAX",
    "ARG_MIN",
    "AVERAGE_POOL_2D",
    "BATCH_MATMUL",
    "BATCH_TO_SPACE_ND",
    "BROADCAST_ARGS",
    "BROADCAST_TO",
    "CAST",
    "CEIL",
    "CONCATENATION",
    "COS",
    "CUMSUM",
    "DEPTH_TO_SPACE",
    "DEQUANTIZE",
    "DIV",
    "DYNAMIC_UPDATE_SLICE",
    "ELU",
    "EMBEDDING_LOOKUP",
    "EQUAL",
    "EXP",
    "EXPAND_DIMS",
    "FILL",
    "FLOOR",
    "FLOOR_DIV",
    "FLOOR_MOD",
    "GATHER",
    "GATHER_ND",
    "GREATER",
    "GREATER_EQUAL",
    "HARD_SWISH",
    "L2_NORMALIZATION",
    "L2_POOL_2D",
    "LEAKY_RELU",
    "LESS",
    "LESS_EQUAL",
    "LOG",
    "LOG_SOFTMAX",
    "LOGICAL_AND",
    "LOGICAL_NOT",
    "LOGICAL_OR",
    "LOGISTIC",
    "MAX_POOL_2D",
    "MAXIMUM",
    "MINIMUM",
    "MUL",
    "NEG",
    "NOT_EQUAL",
    "PACK",
    "PAD",
    "PADV2",
    "PRELU",
    "QUANTIZE",
    "RELU",
    "RELU6",
    "RESHAPE",
    "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR",
    "REVERSE_V2",
    "ROUND",
    "RSQRT",
    "SELECT_V2",
    "SHAPE",
    "SIN",
    "SLICE",
    "SOFTMAX",
    "SPACE_TO_BATCH_ND",
    "SPACE_TO_DEPTH",
    "SPLIT",
    "SPLIT_V",
    "SQRT",
    "SQUARE",
    "SQUARED_DIFFERENCE",
    "SQUEEZE",
    "STRIDED_SLICE",
    "SUB",
    "TANH",
    "TRANSPOSE",
    "UNPACK",
    "ZEROS_LIKE",
)

# Operator name -> its scratch requests in Prepare, in request order. Adding an
# operator (e.g. the custom PATCH_EXEC) is adding one entry.
SCRATCH_REGISTRY: dict[str, ScratchFn] = {
    **dict.fromkeys(_NO_SCRATCH_OPS, _no_scratch),
    "CONV_2D": _int4_filter_scratch,
    "DEPTHWISE_CONV_2D": _int4_filter_scratch,
    "FULLY_CONNECTED": _int4_filter_scratch,
    "MEAN": _mean_sum_scratch,
    "SUM": _mean_sum_scratch,
    "REDUCE_MAX": _min_max_all_scratch,
    "REDUCE_MIN": _min_max_all_scratch,
    "REDUCE_ALL": _min_max_all_scratch,
    "MIRROR_PAD": _mirror_pad_scratch,
    "ADD_N": _add_n_scratch,
    "TRANSPOSE_CONV": _transpose_conv_scratch,
    "PATCH_EXEC": _patch_exec_scratch,
}


def _pointer_size(target: str) -> int:
    try:
        return POINTER_SIZE[target]
    except KeyError:
        raise UnsupportedModelError(
            f"unknown target {target!r}; known: {', '.join(POINTER_SIZE)}"
        ) from None


def scratch_requests(model: Model, op: OperatorInfo, target: str = "x86_64") -> list[int]:
    """Byte sizes of the scratch buffers `op`'s kernel requests in Prepare, in order."""
    fn = SCRATCH_REGISTRY.get(op.name)
    if fn is None:  # measured in x86 TFLM (arena_measure), 16-byte multiples
        _pointer_size(target)
        scratch = measured_op(model, op).scratch
        return list(scratch) if scratch is not None else []
    return fn(model, op, _pointer_size(target))


# --------------------------------------------------------------------------- the plan


@dataclass
class _Allocation:
    label: str
    tensor: int | None
    op: int | None
    nbytes: int
    first: int = UNMARKED
    last: int = UNMARKED
    offline: int = ONLINE_PLANNED


def _check_supported(model: Model) -> None:
    if model.num_subgraphs != 1:
        raise UnsupportedModelError(
            f"the model has {model.num_subgraphs} subgraphs; the arena prediction handles "
            "single-subgraph models only"
        )
    if model.metadata(COMPRESSION_METADATA) is not None:
        raise UnsupportedModelError(
            "the model has TFLM compression metadata; the arena prediction does not model "
            "decompression scratch buffers"
        )


def _mark_lifetimes(model: Model, tensors: list[_Allocation]) -> None:
    """AllocationInfoBuilder::MarkAllocationLifetimes for subgraph 0 (tensors only)."""

    def create(t: int, scope: int) -> None:
        if tensors[t].first == UNMARKED:
            tensors[t].first = scope

    def use(t: int, scope: int) -> None:
        tensors[t].last = scope

    for t in model.inputs:
        create(t, 0)
        use(t, 0)
    scope = 0
    for op in model.operators:
        scope += 1
        for t in op.outputs:
            if t >= 0:
                create(t, scope)
        for t in op.inputs:
            if t >= 0:
                use(t, scope)
        for t in op.outputs:
            if t >= 0:
                use(t, scope)
    for t in model.outputs:
        create(t, scope)
        use(t, scope)


def _tensor_allocations(model: Model) -> list[_Allocation]:
    offline = offline_offsets(model)
    allocations = [
        _Allocation(t.name or f"tensor {t.index}", t.index, None, tensor_bytes(model, t))
        for t in model.tensors
    ]
    _mark_lifetimes(model, allocations)
    planned = []
    for t, alloc in zip(model.tensors, allocations, strict=True):
        needs = not _has_flatbuffer_data(model, t) and not t.is_variable and alloc.nbytes != 0
        if offline is not None:
            alloc.offline = offline[t.index]
            if t.is_variable and alloc.offline != ONLINE_PLANNED:
                needs = True
        if needs:
            planned.append(alloc)
    return planned


def _scratch_allocations(model: Model, target: str) -> list[_Allocation]:
    result = []
    for op in model.operators:
        for k, nbytes in enumerate(scratch_requests(model, op, target)):
            label = f"scratch {k} of op {op.index} ({op.name})"
            result.append(_Allocation(label, None, op.index, nbytes, op.index + 1, op.index + 1))
    return result


def plan_head(model: Model, target: str = "x86_64") -> HeadPlan:
    """TFLM's memory plan of `model`: the head of the arena and where each buffer goes."""
    _pointer_size(target)
    _check_supported(model)
    allocations = _tensor_allocations(model) + _scratch_allocations(model, target)
    size, offsets = greedy_plan(
        [(a.nbytes, a.first, a.last) for a in allocations],
        ARENA_ALIGNMENT,
        [a.offline for a in allocations],
    )
    buffers = tuple(
        PlannedBuffer(
            label=a.label,
            tensor=a.tensor,
            op=a.op,
            size=align_up(a.nbytes),
            first=a.first,
            last=a.last,
            offset=offset,
        )
        for a, offset in zip(allocations, offsets, strict=True)
    )
    log.debug("head plan: %d buffers, %d bytes", len(buffers), size)
    return HeadPlan(size=size, buffers=buffers)


# --------------------------------------------------------------------------- planning-time need

# Struct sizes on each target, from the headers (x86_64 printed with g++ from
# tflite-micro 90b983c2b; cortex_m worked out for 32-bit pointers and size_t, unverified):
# sizeof(internal::ScratchBufferRequest) {size_t bytes; int node_idx; int subgraph_idx}
SCRATCH_REQUEST_SIZE = {"x86_64": 16, "cortex_m": 12}
# sizeof(AllocationInfo) {size_t; void**; int; int; int32_t; bool}, alignof = pointer size
ALLOCATION_INFO_SIZE = {"x86_64": 32, "cortex_m": 24}
# sizeof(size_t): GraphAllocationInfo::subgraph_offsets has one per subgraph
SIZE_T_SIZE = {"x86_64": 8, "cortex_m": 4}
# GreedyMemoryPlanner::per_buffer_size(): BufferRequirements (4 ints) + 3 ints + ListEntry
# (3 ints) = 40 bytes on both targets
PLANNER_BYTES_PER_BUFFER = 40
# kMaxScratchBuffersPerOp in micro_allocator.cc: room for this many more requests is kept
MAX_SCRATCH_BUFFERS_PER_OP = 12


def planning_head_bytes(model: Model, target: str = "x86_64",
                        plan: HeadPlan | None = None) -> int:
    """Non-persistent bytes CommitStaticMemoryPlan needs while it plans (not the head).

    From the 16-aligned arena start: the scratch-request array sized for all requests
    plus kMaxScratchBuffersPerOp, then (temp) the subgraph offsets and one
    AllocationInfo per tensor and scratch buffer, then the planner's working arrays
    (40 bytes per planned buffer) from the next 16-aligned address. The arena also
    needs the persistent bytes allocated by then (all but the input/output tensors
    AllocateTensors adds afterwards), so for tiny models this, not head + tail, sets
    the smallest arena (hello_world_int8: TFLM reports "Too many buffers" below 1888
    bytes although head + tail = 1456). Derived from the source; checked through
    arena.predict_arena against the measured smallest arena (tests/test_arena.py).
    """
    if plan is None:
        plan = plan_head(model, target)
    scratch = sum(1 for b in plan.buffers if b.op is not None)
    return planning_bytes(target, scratch, len(model.tensors), model.num_subgraphs,
                          len(plan.buffers))


def planning_bytes(target: str, scratch: int, tensors: int, subgraphs: int,
                   buffers: int) -> int:
    """planning_head_bytes from the counts: scratch requests, tensors, subgraphs and
    buffers in the plan."""
    pointer = _pointer_size(target)
    end = SCRATCH_REQUEST_SIZE[target] * (scratch + MAX_SCRATCH_BUFFERS_PER_OP)
    end = align_up(end, SIZE_T_SIZE[target]) + SIZE_T_SIZE[target] * subgraphs
    end = align_up(end, pointer) + ALLOCATION_INFO_SIZE[target] * (tensors + scratch)
    return align_up(end) + PLANNER_BYTES_PER_BUFFER * buffers
