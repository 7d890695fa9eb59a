"""The tail of TFLM's arena: every persistent allocation, replayed in TFLM's order.

TFLM allocates persistent data from the end of the arena downwards
(`SingleArenaBufferAllocator::AllocatePersistentBuffer`: tail = AlignDown(tail -
size, alignment)). Structs are allocated with their own alignment (`alignof`),
kernel data (`context->AllocatePersistentBuffer`) with 16 bytes, so the padding
depends on the order. `tail_allocations` lists the allocations in the order the
wheel's Python interpreter makes them (RecordingMicroAllocator::Create,
MicroInterpreter::AllocateTensors: StartModelAllocation, builtin option parsing,
kernel Init, kernel Prepare, FinishModelAllocation, input/output TfLiteTensors);
`predict_tail` replays them.

Struct sizes are facts read off TFLM's headers (commit 90b983c2b, compiled with
TF_LITE_STATIC_MEMORY as TFLM builds) for x86_64, the wheel's target, and checked
against the wheel's RecordingMicroAllocator for every model the tests use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo

KERNEL_ALIGNMENT = 16  # MicroArenaBufferAlignment()


@dataclass(frozen=True)
class TargetLayout:
    """sizeof/alignof of the TFLM structs that live in the tail, for one target ABI."""

    name: str
    pointer: int
    structs: dict[str, tuple[int, int]]  # name -> (sizeof, alignof)

    def size(self, name: str) -> tuple[int, int]:
        return self.structs[name]


# x86_64, TF_LITE_STATIC_MEMORY (as printed by sizeof/alignof against TFLM 90b983c2b).
X86_64 = TargetLayout(
    "x86_64",
    8,
    {
        "RecordingSingleArenaBufferAllocator": (104, 8),
        "GreedyMemoryPlanner": (72, 8),
        "RecordingMicroAllocator": (272, 8),  # 248 at 90b983c2b; the wheel reports 272
        "MicroBuiltinDataAllocator": (16, 8),  # vtable pointer + allocator pointer
        "SubgraphAllocations": (24, 8),  # 16 at 90b983c2b; the wheel requests 24
        "TfLiteEvalTensor": (24, 8),
        "NodeAndRegistration": (64, 8),
        "TfLiteTensor": (64, 8),
        "TfLiteAffineQuantization": (24, 8),
        "TfLiteIntArray": (4, 4),
        "ScratchBufferHandle": (8, 8),
        # kernel OpData (allocated with KERNEL_ALIGNMENT; only the size matters)
        "OpDataConv": (80, 8),  # 72 at 90b983c2b; the wheel (1fae604) has one more field
        "OpDataFullyConnected": (72, 8),  # likewise 64 at 90b983c2b
        "OpDataPooling": (32, 4),
        "OpDataAdd": (60, 4),
        "OpDataMul": (36, 4),
        "OpDataReduce": (44, 4),
        "OpDataPad": (56, 4),
        "SoftmaxParams": (80, 8),
        "OpDataQuantizeReference": (32, 8),
        "DequantizeOpData": (32, 8),
        # builtin option structs (MicroBuiltinDataAllocator, alignof)
        "TfLiteConvParams": (28, 4),
        "TfLiteDepthwiseConvParams": (28, 4),
        "TfLitePoolParams": (40, 4),
        "TfLiteAddParams": (8, 4),
        "TfLiteMulParams": (4, 4),
        "TfLiteReshapeParams": (36, 4),
        "TfLiteSoftmaxParams": (4, 4),
        "TfLiteReducerParams": (1, 1),
        "TfLiteFullyConnectedParams": (16, 4),
        "TfLiteConcatenationParams": (8, 4),
        "TfLiteStridedSliceParams": (24, 4),
        "TfLiteShapeParams": (4, 4),
        "TfLitePackParams": (8, 4),
    },
)

TARGETS = {"x86_64": X86_64}


@dataclass(frozen=True)
class Allocation:
    category: str
    size: int
    alignment: int
    count: int = 1  # structs in the allocation (RecordingMicroAllocator counts these)


@dataclass(frozen=True)
class TailItem:
    category: str
    size: int  # requested bytes
    aligned_size: int  # bytes the tail moved, alignment padding included
    count: int


@dataclass(frozen=True)
class TailPrediction:
    total: int
    items: tuple[TailItem, ...]
    before_io_tensors: int  # tail when the memory plan is committed (before input/output tensors)

    def item(self, category: str) -> TailItem | None:
        return next((i for i in self.items if i.category == category), None)


# Categories named as RecordingMicroAllocator prints them
EVAL_TENSORS = "TfLiteEvalTensor data"
PERSISTENT_TENSORS = "Persistent TfLiteTensor data"
PERSISTENT_QUANT = "Persistent TfLiteTensor quantization data"
PERSISTENT_BUFFERS = "Persistent buffer data"
NODES = "NodeAndRegistration struct"
ALLOCATORS = "allocator objects"
BUILTIN_DATA = "builtin option structs"
SUBGRAPHS = "subgraph allocations"
SCRATCH_HANDLES = "scratch buffer handles"


# ----------------------------------------------------------------- per-op registries
# Builtin option struct parsed from the flatbuffer (flatbuffer_conversions.cc), or None.
_BUILTIN_DATA: dict[str, str | None] = {
    "CONV_2D": "TfLiteConvParams",
    "DEPTHWISE_CONV_2D": "TfLiteDepthwiseConvParams",
    "AVERAGE_POOL_2D": "TfLitePoolParams",
    "MAX_POOL_2D": "TfLitePoolParams",
    "ADD": "TfLiteAddParams",
    "MUL": "TfLiteMulParams",
    "RESHAPE": "TfLiteReshapeParams",
    "SOFTMAX": "TfLiteSoftmaxParams",
    "MEAN": "TfLiteReducerParams",
    "SUM": "TfLiteReducerParams",
    "FULLY_CONNECTED": "TfLiteFullyConnectedParams",
    "CONCATENATION": "TfLiteConcatenationParams",
    "STRIDED_SLICE": "TfLiteStridedSliceParams",
    "SHAPE": "TfLiteShapeParams",
    "PACK": "TfLitePackParams",
    "PAD": None,
    "PADV2": None,
    "TRANSPOSE": None,
    "QUANTIZE": None,
    "DEQUANTIZE": None,
    "RELU": None,
    "RELU6": None,
    "LOGISTIC": None,
    "HARD_SWISH": None,
}

# Kernel Init: the OpData struct allocated with context->AllocatePersistentBuffer, or None.
_INIT_DATA: dict[str, str | None] = {
    "CONV_2D": "OpDataConv",
    "DEPTHWISE_CONV_2D": "OpDataConv",
    "AVERAGE_POOL_2D": "OpDataPooling",
    "MAX_POOL_2D": "OpDataPooling",
    "ADD": "OpDataAdd",
    "MUL": "OpDataMul",
    "MEAN": "OpDataReduce",
    "SUM": "OpDataReduce",
    "FULLY_CONNECTED": "OpDataFullyConnected",
    "SOFTMAX": "SoftmaxParams",
    "PAD": "OpDataPad",
    "PADV2": "OpDataPad",
    "QUANTIZE": "OpDataQuantizeReference",
    "DEQUANTIZE": "DequantizeOpData",
    "RESHAPE": None,
    "TRANSPOSE": None,
}


def _per_channel_arrays(channels: int) -> list[int]:
    # per_channel_output_multiplier and per_channel_output_shift, int32 each
    return [4 * channels, 4 * channels]


def _conv_prepare(model: Model, op: OperatorInfo) -> list[int]:
    return _per_channel_arrays(model.tensors[op.inputs[1]].shape[0])


def _depthwise_prepare(model: Model, op: OperatorInfo) -> list[int]:
    return _per_channel_arrays(model.tensors[op.inputs[1]].shape[3])


def _fc_prepare(model: Model, op: OperatorInfo) -> list[int]:
    q = model.tensors[op.inputs[1]].quantization
    if q is not None and q.per_channel:
        return _per_channel_arrays(len(q.scale))
    return []


def _softmax_prepare(model: Model, op: OperatorInfo) -> list[int]:
    if model.tensors[op.inputs[0]].dtype == "int16":
        raise UnsupportedModelError("SOFTMAX on int16 (lookup tables) is not modelled")
    return []


# Kernel Prepare: persistent allocations (sizes, 16-byte aligned), in order.
_PREPARE: dict[str, Callable[[Model, OperatorInfo], list[int]]] = {
    "CONV_2D": _conv_prepare,
    "DEPTHWISE_CONV_2D": _depthwise_prepare,
    "FULLY_CONNECTED": _fc_prepare,
    "SOFTMAX": _softmax_prepare,
}


def supported_ops() -> frozenset[str]:
    return frozenset(_BUILTIN_DATA) & frozenset(_INIT_DATA) | frozenset(
        k for k in _BUILTIN_DATA if k in _INIT_DATA
    )


def _check_op(op: OperatorInfo) -> None:
    if op.name not in _BUILTIN_DATA or op.name not in _INIT_DATA:
        raise UnsupportedModelError(
            f"the arena model does not know the persistent data of operator {op.index} "
            f"({op.name}); cannot predict the TFLM arena"
        )


def op_persistent_allocations(model: Model, op: OperatorInfo,
                              target: str = "x86_64") -> list[int]:
    """Bytes the kernel of `op` allocates with context->AllocatePersistentBuffer (Init, then
    Prepare), in order; each is 16-byte aligned in the arena."""
    _check_op(op)
    layout = _layout(target)
    init = _INIT_DATA[op.name]
    sizes = [layout.size(init)[0]] if init else []
    prepare = _PREPARE.get(op.name)
    return sizes + (prepare(model, op) if prepare else [])


def _layout(target: str) -> TargetLayout:
    if target not in TARGETS:
        raise UnsupportedModelError(
            f"no struct layout for target {target!r} (known: {', '.join(TARGETS)})")
    return TARGETS[target]


def tail_allocations(model: Model, target: str = "x86_64") -> tuple[list[Allocation], int]:
    """All tail allocations in TFLM's order, and how many precede the input/output tensors."""
    if model.num_subgraphs != 1:
        raise UnsupportedModelError("models with several subgraphs are not supported")
    lay = _layout(target)
    allocs: list[Allocation] = []

    def struct(category: str, name: str, count: int = 1) -> None:
        size, align = lay.size(name)
        allocs.append(Allocation(category, size * count, align, count))

    # RecordingMicroAllocator::Create (interpreter_wrapper.cc)
    struct(ALLOCATORS, "RecordingSingleArenaBufferAllocator")
    struct(ALLOCATORS, "GreedyMemoryPlanner")
    struct(ALLOCATORS, "RecordingMicroAllocator")
    # MicroAllocator::StartModelAllocation
    struct(ALLOCATORS, "MicroBuiltinDataAllocator")
    struct(SUBGRAPHS, "SubgraphAllocations", model.num_subgraphs)
    struct(EVAL_TENSORS, "TfLiteEvalTensor", len(model.tensors))
    struct(NODES, "NodeAndRegistration", len(model.operators))
    for op in model.operators:
        _check_op(op)
    # MicroInterpreter::PrepareNodeAndRegistrationDataFromFlatbuffer: builtin options
    for op in model.operators:
        name = _BUILTIN_DATA[op.name]
        if name:
            struct(BUILTIN_DATA, name)
    # kernel Init for every op, then kernel Prepare for every op
    for op in model.operators:
        init = _INIT_DATA[op.name]
        if init:
            allocs.append(Allocation(PERSISTENT_BUFFERS, lay.size(init)[0], KERNEL_ALIGNMENT))
    for op in model.operators:
        prepare = _PREPARE.get(op.name)
        for size in prepare(model, op) if prepare else []:
            allocs.append(Allocation(PERSISTENT_BUFFERS, size, KERNEL_ALIGNMENT))
    # FinishModelAllocation: scratch buffer handles (one per request)
    from tflm_patch.arena_head import scratch_requests

    n_scratch = sum(len(scratch_requests(model, op, target)) for op in model.operators)
    if n_scratch:
        struct(SCRATCH_HANDLES, "ScratchBufferHandle", n_scratch)
    planned = len(allocs)
    # MicroInterpreter::AllocateTensors: input, then output TfLiteTensor pointers and tensors
    for io in (model.inputs, model.outputs):
        allocs.append(Allocation(PERSISTENT_BUFFERS, lay.pointer * len(io), KERNEL_ALIGNMENT))
        for t in io:
            struct(PERSISTENT_TENSORS, "TfLiteTensor")
            q = model.tensors[t].quantization
            if q is not None and q.scale and q.zero_point:
                struct(PERSISTENT_QUANT, "TfLiteAffineQuantization")
                int_size, int_align = lay.size("TfLiteIntArray")
                allocs.append(Allocation(PERSISTENT_QUANT, int_size + 4 * len(q.scale),
                                         int_align))
    return allocs, planned


def predict_tail(model: Model, target: str = "x86_64") -> TailPrediction:
    """Replay the tail allocations from a 16-aligned arena end; bytes per category."""
    allocs, planned = tail_allocations(model, target)
    used = 0
    before_io = 0
    totals: dict[str, list[int]] = {}
    for i, a in enumerate(allocs):
        if i == planned:
            before_io = used
        new_used = -(-(used + a.size) // a.alignment) * a.alignment
        entry = totals.setdefault(a.category, [0, 0, 0])
        entry[0] += a.size
        entry[1] += new_used - used
        entry[2] += a.count
        used = new_used
    if planned == len(allocs):
        before_io = used
    items = tuple(TailItem(c, v[0], v[1], v[2]) for c, v in totals.items())
    return TailPrediction(used, items, before_io)
