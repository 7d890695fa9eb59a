"""The tail of TFLM's arena: every persistent allocation, replayed in TFLM's order.

TFLM allocates persistent data from the end of the arena downwards
(`SingleArenaBufferAllocator::AllocatePersistentBuffer`: tail = AlignDown(tail - size,
alignment)). The allocator's own objects, the memory planner and the model structs are
allocated with their C++ `alignof`, kernel data (`context->AllocatePersistentBuffer`,
`MicroAllocator::AllocatePersistentBuffer`) with `MicroArenaBufferAlignment()` = 16, so the
padding depends on the order. `tail_allocations` lists the allocations in the order the
wheel's Python interpreter makes them:

1. `RecordingMicroAllocator::Create` (interpreter_wrapper.cc): the recording arena
   allocator, the GreedyMemoryPlanner, the RecordingMicroAllocator itself (a device's
   `MicroInterpreter(model, resolver, arena, size)` makes the non-recording ones);
2. `MicroAllocator::StartModelAllocation`: MicroBuiltinDataAllocator, SubgraphAllocations,
   the TfLiteEvalTensor array, the NodeAndRegistration array;
3. `MicroInterpreter::PrepareNodeAndRegistrationDataFromFlatbuffer`: each operator's builtin
   option struct (flatbuffer_conversions.cc parsers, MicroBuiltinDataAllocator);
4. `MicroInterpreterGraph::InitSubgraphs`: every kernel's Init, then `PrepareSubgraphs`:
   every kernel's Prepare (per-op registry `OP_TAIL` below; an operator without an entry
   is measured once in x86 TFLM, `arena_measure`, its option struct from `BUILTIN_DATA`);
5. `MicroAllocator::FinishModelAllocation`: ScratchBufferHandle array (one per scratch
   request), then in `CommitStaticMemoryPlan` the buffers of variable tensors; the plan is
   made now, with the tail as it stands (`TailPrediction.before_io_tensors`);
6. `MicroInterpreter::AllocateTensors`: the input TfLiteTensor* array, a TfLiteTensor and its
   quantization (TfLiteAffineQuantization + zero-point TfLiteIntArray; the scale array points
   into the flatbuffer) per input, then the same for the outputs.

`predict_tail` replays them from a 16-byte-aligned arena end (the wheel's `new uint8_t[]`
arena with an arena size that is a multiple of 16) and sums them by category; categories
that RecordingMicroAllocator records carry its names, so they compare with its report.

Struct sizes are facts of TFLM's headers (checkout 90b983c2b), printed with sizeof/alignof
by throwaway programs outside this repository: for x86_64 with g++ and the wheel's defines
(TF_LITE_STATIC_MEMORY, USE_TFLM_COMPRESSION: the wheel is built with
--//:with_compression=true, see pypi_build.sh), checked against the wheel's
RecordingMicroAllocator on every model the tests use; for cortex_m with arm-none-eabi-g++
12.2 -mcpu=cortex-m4 -mthumb -mfloat-abi=hard (short enums, the toolchain's default) and
TF_LITE_STATIC_MEMORY, without compression, reference kernels: computed, not measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tflm_patch.arena_head import TYPE_SIZE, align_up, offline_offsets, scratch_requests
from tflm_patch.arena_measured import MeasuredOp, measured_op
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo

KERNEL_ALIGNMENT = 16  # MicroArenaBufferAlignment() (micro_arena_constants.h)
INT16_LUT_ENTRIES = 513  # LUTSize<int16_t>() (kernels/internal/common.h)
COMPRESSION_METADATA = "COMPRESSION_METADATA"  # compression_utils.h


@dataclass(frozen=True)
class CType:
    """sizeof and alignof of one C/C++ type."""

    size: int
    align: int


@dataclass(frozen=True)
class Target:
    """The build whose arena is predicted: pointer size, allocator kind, struct layouts."""

    name: str
    pointer_size: int
    recording_allocator: bool  # RecordingMicroAllocator (the wheel) or MicroAllocator
    verified: bool  # checked against a measured arena
    types: Mapping[str, CType] = field(repr=False)

    def ctype(self, name: str) -> CType:
        return self.types[name]

    def sizeof(self, name: str) -> int:
        return self.types[name].size


# Names are the C++ type names; "OpData (file)" for the kernels' file-local OpData structs.
_X86_64_TYPES = {
    # allocator objects
    "RecordingSingleArenaBufferAllocator": CType(104, 8),
    "SingleArenaBufferAllocator": CType(72, 8),
    "GreedyMemoryPlanner": CType(72, 8),
    "RecordingMicroAllocator": CType(272, 8),  # 248 without USE_TFLM_COMPRESSION
    "MicroAllocator": CType(72, 8),
    "MicroBuiltinDataAllocator": CType(16, 8),  # micro_allocator.cc, anonymous namespace
    # model structs
    "SubgraphAllocations": CType(24, 8),  # + CompressedTensorList with compression
    "TfLiteEvalTensor": CType(24, 8),
    "NodeAndRegistration": CType(64, 8),
    "TfLiteTensor": CType(64, 8),
    "TfLiteAffineQuantization": CType(24, 8),
    "TfLiteIntArray": CType(4, 4),  # header only; TfLiteIntArrayGetSizeInBytes(n) = 4 + 4n
    "ScratchBufferHandle": CType(8, 8),
    # kernel data allocated in Init (only the size matters: 16-byte aligned)
    "OpDataConv": CType(80, 8),  # 72 without compression (weights/bias scratch indices)
    "OpDataPatchExec": CType(16, 8),  # ours: docs/patch_exec.md (options ptr, size, scratch)
    "OpDataFullyConnected": CType(72, 8),  # 64 without compression
    "OpDataPooling": CType(32, 4),
    "OpDataAdd": CType(60, 4),
    "OpDataSub": CType(52, 4),
    "OpDataMul": CType(36, 4),
    "OpDataReduce": CType(44, 4),
    "OpData (pad.h)": CType(56, 4),
    "SoftmaxParams": CType(80, 8),
    "OpDataQuantizeReference": CType(32, 8),
    "DequantizeOpData": CType(32, 8),
    "ReluOpData": CType(28, 4),
    "Relu6OpData": CType(8, 4),
    "OpDataLogistic": CType(16, 4),
    "OpData (tanh.cc)": CType(16, 4),
    "HardSwishParams": CType(20, 4),
    "LeakyReluOpData": CType(24, 4),
    "OpData (concatenation.cc)": CType(80, 8),
    "StridedSliceParams": CType(84, 4),
    # builtin option structs (builtin_op_data.h)
    "TfLiteConvParams": CType(28, 4),
    "TfLiteDepthwiseConvParams": CType(28, 4),
    "TfLitePoolParams": CType(40, 4),
    "TfLiteAddParams": CType(8, 4),
    "TfLiteSubParams": CType(8, 4),
    "TfLiteMulParams": CType(4, 4),
    "TfLiteReshapeParams": CType(36, 4),
    "TfLiteSoftmaxParams": CType(4, 4),
    "TfLiteReducerParams": CType(1, 1),
    "TfLiteFullyConnectedParams": CType(16, 4),
    "TfLiteConcatenationParams": CType(8, 4),
    "TfLiteStridedSliceParams": CType(24, 4),
    "TfLiteShapeParams": CType(4, 4),
    "TfLitePackParams": CType(8, 4),
    "TfLiteSqueezeParams": CType(36, 4),
    "TfLiteLeakyReluParams": CType(4, 4),
    "TfLiteResizeNearestNeighborParams": CType(2, 1),
    "TfLiteArgMaxParams": CType(4, 4),
    "TfLiteArgMinParams": CType(4, 4),
    "TfLiteBatchMatMulParams": CType(3, 1),
    "TfLiteCallOnceParams": CType(4, 4),
    "TfLiteCastParams": CType(8, 4),
    "TfLiteCumsumParams": CType(2, 1),
    "TfLiteDepthToSpaceParams": CType(4, 4),
    "TfLiteDivParams": CType(4, 4),
    "TfLiteGatherParams": CType(8, 4),
    "TfLiteIfParams": CType(8, 4),
    "TfLiteL2NormParams": CType(4, 4),
    "TfLiteMirrorPaddingParams": CType(4, 4),
    "TfLiteResizeBilinearParams": CType(2, 1),
    "TfLiteSpaceToDepthParams": CType(4, 4),
    "TfLiteSplitParams": CType(4, 4),
    "TfLiteSplitVParams": CType(4, 4),
    "TfLiteSVDFParams": CType(12, 4),
    "TfLiteTransposeConvParams": CType(20, 4),
    "TfLiteUnpackParams": CType(8, 4),
    "TfLiteUnidirectionalSequenceLSTMParams": CType(16, 4),
    "TfLiteVarHandleParams": CType(16, 8),
    "TfLiteWhileParams": CType(8, 4),
}

_CORTEX_M_TYPES = {
    "RecordingSingleArenaBufferAllocator": CType(52, 4),
    "SingleArenaBufferAllocator": CType(36, 4),
    "GreedyMemoryPlanner": CType(44, 4),
    "RecordingMicroAllocator": CType(124, 4),
    "MicroAllocator": CType(36, 4),
    "MicroBuiltinDataAllocator": CType(8, 4),
    "SubgraphAllocations": CType(8, 4),
    "TfLiteEvalTensor": CType(12, 4),
    "NodeAndRegistration": CType(32, 4),
    "TfLiteTensor": CType(32, 4),
    "TfLiteAffineQuantization": CType(12, 4),
    "TfLiteIntArray": CType(4, 4),
    "ScratchBufferHandle": CType(4, 4),
    "OpDataConv": CType(56, 4),
    "OpDataPatchExec": CType(12, 4),
    "OpDataFullyConnected": CType(48, 4),
    "OpDataPooling": CType(32, 4),
    "OpDataAdd": CType(60, 4),
    "OpDataSub": CType(52, 4),
    "OpDataMul": CType(36, 4),
    "OpDataReduce": CType(44, 4),
    "OpData (pad.h)": CType(56, 4),
    "SoftmaxParams": CType(56, 8),
    "OpDataQuantizeReference": CType(32, 8),
    "DequantizeOpData": CType(32, 8),
    "ReluOpData": CType(28, 4),
    "Relu6OpData": CType(8, 4),
    "OpDataLogistic": CType(16, 4),
    "OpData (tanh.cc)": CType(16, 4),
    "HardSwishParams": CType(20, 4),
    "LeakyReluOpData": CType(24, 4),
    "OpData (concatenation.cc)": CType(24, 4),
    "StridedSliceParams": CType(84, 4),
    "TfLiteConvParams": CType(28, 4),
    "TfLiteDepthwiseConvParams": CType(28, 4),
    "TfLitePoolParams": CType(40, 4),
    "TfLiteAddParams": CType(2, 1),  # short enums
    "TfLiteSubParams": CType(2, 1),
    "TfLiteMulParams": CType(1, 1),
    "TfLiteReshapeParams": CType(36, 4),
    "TfLiteSoftmaxParams": CType(4, 4),
    "TfLiteReducerParams": CType(1, 1),
    "TfLiteFullyConnectedParams": CType(5, 1),
    "TfLiteConcatenationParams": CType(8, 4),
    "TfLiteStridedSliceParams": CType(24, 4),
    "TfLiteShapeParams": CType(1, 1),
    "TfLitePackParams": CType(8, 4),
    "TfLiteSqueezeParams": CType(36, 4),
    "TfLiteLeakyReluParams": CType(4, 4),
    "TfLiteResizeNearestNeighborParams": CType(2, 1),
    "TfLiteArgMaxParams": CType(1, 1),
    "TfLiteArgMinParams": CType(1, 1),
    "TfLiteBatchMatMulParams": CType(3, 1),
    "TfLiteCallOnceParams": CType(4, 4),
    "TfLiteCastParams": CType(2, 1),
    "TfLiteCumsumParams": CType(2, 1),
    "TfLiteDepthToSpaceParams": CType(4, 4),
    "TfLiteDivParams": CType(1, 1),
    "TfLiteGatherParams": CType(8, 4),
    "TfLiteIfParams": CType(8, 4),
    "TfLiteL2NormParams": CType(1, 1),
    "TfLiteMirrorPaddingParams": CType(1, 1),
    "TfLiteResizeBilinearParams": CType(2, 1),
    "TfLiteSpaceToDepthParams": CType(4, 4),
    "TfLiteSplitParams": CType(4, 4),
    "TfLiteSplitVParams": CType(4, 4),
    "TfLiteSVDFParams": CType(8, 4),
    "TfLiteTransposeConvParams": CType(16, 4),
    "TfLiteUnpackParams": CType(8, 4),
    "TfLiteUnidirectionalSequenceLSTMParams": CType(16, 4),
    "TfLiteVarHandleParams": CType(8, 4),
    "TfLiteWhileParams": CType(8, 4),
}

X86_64 = Target("x86_64", 8, recording_allocator=True, verified=True, types=_X86_64_TYPES)
CORTEX_M = Target("cortex_m", 4, recording_allocator=False, verified=False,
                  types=_CORTEX_M_TYPES)
TARGETS: dict[str, Target] = {t.name: t for t in (X86_64, CORTEX_M)}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UnsupportedModelError(
            f"no struct layout for target {name!r} (known: {', '.join(TARGETS)})")
    return TARGETS[name]


# ------------------------------------------------------------------------------ results
# Categories named as RecordingMicroAllocator::PrintAllocations names them ...
EVAL_TENSORS = "TfLiteEvalTensor data"
PERSISTENT_TENSORS = "Persistent TfLiteTensor data"
PERSISTENT_QUANT = "Persistent TfLiteTensor quantization data"
PERSISTENT_BUFFERS = "Persistent buffer data"
VARIABLE_BUFFERS = "TfLiteTensor variable buffer data"
NODES = "NodeAndRegistration struct"
RECORDED_CATEGORIES = (EVAL_TENSORS, PERSISTENT_TENSORS, PERSISTENT_QUANT, PERSISTENT_BUFFERS,
                       VARIABLE_BUFFERS, NODES)
# ... and the allocations it does not record.
ALLOCATORS = "allocator objects"
BUILTIN_DATA_CATEGORY = "builtin option structs"
SUBGRAPHS = "subgraph allocations"
SCRATCH_HANDLES = "scratch buffer handles"


@dataclass(frozen=True)
class Allocation:
    """One AllocatePersistentBuffer call (an array of `count` structs counts as one call)."""

    category: str
    size: int
    alignment: int
    count: int = 1  # what RecordingMicroAllocator counts (structs for the arrays)
    what: str = ""


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
    before_io_tensors: int = 0  # the tail while CommitStaticMemoryPlan plans (step 5)

    def item(self, category: str) -> TailItem | None:
        return next((i for i in self.items if i.category == category), None)


# ----------------------------------------------------------------------- per-op registry
PrepareFn = Callable[[Model, OperatorInfo, Target], list[int]]


def _no_prepare(_model: Model, _op: OperatorInfo, _target: Target) -> list[int]:
    return []


@dataclass(frozen=True)
class OpTail:
    """What one operator puts in the tail.

    builtin_data: C type its flatbuffer options parser allocates (MicroBuiltinDataAllocator,
    alignof), or None; init_data: C type its kernel's Init allocates with
    context->AllocatePersistentBuffer, or None (no Init, or Init allocates nothing);
    prepare: the sizes its kernel's Prepare allocates with AllocatePersistentBuffer, in order.
    """

    builtin_data: str | None
    init_data: str | None
    prepare: PrepareFn = _no_prepare


def _per_channel(channels: int) -> list[int]:
    # per_channel_output_multiplier, per_channel_output_shift: int32 each
    return [4 * channels, 4 * channels]


def _conv_prepare(model: Model, op: OperatorInfo, _t: Target) -> list[int]:
    # conv_common.cc ConvPrepare: filter->dims->data[kConvQuantizedDimension = 0]
    return _per_channel(model.tensors[op.inputs[1]].shape[0])


def _depthwise_prepare(model: Model, op: OperatorInfo, _t: Target) -> list[int]:
    # depthwise_conv_common.cc: filter->dims->data[kDepthwiseConvQuantizedDimension = 3]
    return _per_channel(model.tensors[op.inputs[1]].shape[3])


def _fully_connected_prepare(model: Model, op: OperatorInfo, _t: Target) -> list[int]:
    # fully_connected_common.cc: only for quantized inputs whose filter TfLiteTensor has
    # affine quantization (scale and zero point present) with more than one scale
    if model.tensors[op.inputs[0]].dtype == "float32":
        return []
    q = model.tensors[op.inputs[1]].quantization
    if q is None or not q.zero_point or len(q.scale) <= 1:
        return []
    return _per_channel(len(q.scale))


def _softmax_prepare(model: Model, op: OperatorInfo, _t: Target) -> list[int]:
    # softmax_common.cc InitializeLutForInt16: exp and 1/(1+x) int16 tables
    if model.tensors[op.inputs[0]].dtype == "int16":
        return [2 * INT16_LUT_ENTRIES, 2 * INT16_LUT_ENTRIES]
    return []


def _reshape_prepare(model: Model, op: OperatorInfo, _t: Target) -> list[int]:
    # reshape_common.cc: a -1 in the output shape moves the dims to the tail
    # (CreateWritableTensorDimsWithCopy: TfLiteIntArrayGetSizeInBytes(rank))
    shape = model.tensors[op.outputs[0]].shape
    return [4 + 4 * len(shape)] if -1 in shape else []


OP_TAIL: dict[str, OpTail] = {
    "ADD": OpTail("TfLiteAddParams", "OpDataAdd"),
    "SUB": OpTail("TfLiteSubParams", "OpDataSub"),
    "MUL": OpTail("TfLiteMulParams", "OpDataMul"),
    "AVERAGE_POOL_2D": OpTail("TfLitePoolParams", "OpDataPooling"),
    "MAX_POOL_2D": OpTail("TfLitePoolParams", "OpDataPooling"),
    "CONV_2D": OpTail("TfLiteConvParams", "OpDataConv", _conv_prepare),
    "DEPTHWISE_CONV_2D": OpTail("TfLiteDepthwiseConvParams", "OpDataConv", _depthwise_prepare),
    "FULLY_CONNECTED": OpTail("TfLiteFullyConnectedParams", "OpDataFullyConnected",
                              _fully_connected_prepare),
    "SOFTMAX": OpTail("TfLiteSoftmaxParams", "SoftmaxParams", _softmax_prepare),
    "MEAN": OpTail("TfLiteReducerParams", "OpDataReduce"),
    "SUM": OpTail("TfLiteReducerParams", "OpDataReduce"),
    "PAD": OpTail(None, "OpData (pad.h)"),
    "PADV2": OpTail(None, "OpData (pad.h)"),
    "RESHAPE": OpTail("TfLiteReshapeParams", None, _reshape_prepare),
    "TRANSPOSE": OpTail(None, None),
    "QUANTIZE": OpTail(None, "OpDataQuantizeReference"),
    "DEQUANTIZE": OpTail(None, "DequantizeOpData"),
    "RELU": OpTail(None, "ReluOpData"),
    "RELU6": OpTail(None, "Relu6OpData"),
    "LOGISTIC": OpTail(None, "OpDataLogistic"),
    "TANH": OpTail(None, "OpData (tanh.cc)"),
    "HARD_SWISH": OpTail(None, "HardSwishParams"),
    "LEAKY_RELU": OpTail("TfLiteLeakyReluParams", "LeakyReluOpData"),
    "CONCATENATION": OpTail("TfLiteConcatenationParams", "OpData (concatenation.cc)"),
    "STRIDED_SLICE": OpTail("TfLiteStridedSliceParams", "StridedSliceParams"),
    "SQUEEZE": OpTail("TfLiteSqueezeParams", None),
    "SHAPE": OpTail("TfLiteShapeParams", None),
    "PACK": OpTail("TfLitePackParams", None),
    "RESIZE_NEAREST_NEIGHBOR": OpTail("TfLiteResizeNearestNeighborParams", None),
    # our custom operator (docs/patch_exec.md): no builtin data, OpData from Init
    "PATCH_EXEC": OpTail(None, "OpDataPatchExec"),
}


# The option struct each builtin operator's parser allocates (the parser the wheel's
# PythonOpsResolver registers, flatbuffer_conversions.cc), for operators measured in x86
# TFLM (arena_measure): their Init and Prepare allocations are measured, these are not.
BUILTIN_DATA: dict[str, str] = {
    "ADD": "TfLiteAddParams", "ARG_MAX": "TfLiteArgMaxParams",
    "ARG_MIN": "TfLiteArgMinParams", "AVERAGE_POOL_2D": "TfLitePoolParams",
    "BATCH_MATMUL": "TfLiteBatchMatMulParams", "CALL_ONCE": "TfLiteCallOnceParams",
    "CAST": "TfLiteCastParams", "CONCATENATION": "TfLiteConcatenationParams",
    "CONV_2D": "TfLiteConvParams", "CUMSUM": "TfLiteCumsumParams",
    "DEPTH_TO_SPACE": "TfLiteDepthToSpaceParams",
    "DEPTHWISE_CONV_2D": "TfLiteDepthwiseConvParams", "DIV": "TfLiteDivParams",
    "FULLY_CONNECTED": "TfLiteFullyConnectedParams", "GATHER": "TfLiteGatherParams",
    "IF": "TfLiteIfParams", "L2_NORMALIZATION": "TfLiteL2NormParams",
    "L2_POOL_2D": "TfLitePoolParams", "LEAKY_RELU": "TfLiteLeakyReluParams",
    "MAX_POOL_2D": "TfLitePoolParams", "MIRROR_PAD": "TfLiteMirrorPaddingParams",
    "MEAN": "TfLiteReducerParams", "MUL": "TfLiteMulParams", "PACK": "TfLitePackParams",
    "REDUCE_ALL": "TfLiteReducerParams", "REDUCE_MAX": "TfLiteReducerParams",
    "REDUCE_MIN": "TfLiteReducerParams", "RESHAPE": "TfLiteReshapeParams",
    "RESIZE_BILINEAR": "TfLiteResizeBilinearParams",
    "RESIZE_NEAREST_NEIGHBOR": "TfLiteResizeNearestNeighborParams",
    "SHAPE": "TfLiteShapeParams", "SOFTMAX": "TfLiteSoftmaxParams",
    "SPACE_TO_DEPTH": "TfLiteSpaceToDepthParams", "SPLIT": "TfLiteSplitParams",
    "SPLIT_V": "TfLiteSplitVParams", "SQUEEZE": "TfLiteSqueezeParams",
    "STRIDED_SLICE": "TfLiteStridedSliceParams", "SUB": "TfLiteSubParams",
    "SUM": "TfLiteReducerParams", "SVDF": "TfLiteSVDFParams",
    "TRANSPOSE_CONV": "TfLiteTransposeConvParams", "UNPACK": "TfLiteUnpackParams",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "TfLiteUnidirectionalSequenceLSTMParams",
    "VAR_HANDLE": "TfLiteVarHandleParams", "WHILE": "TfLiteWhileParams",
}


def register_op(name: str, entry: OpTail) -> None:
    """Add (or replace) the tail entry of an operator, e.g. a custom op's kernel."""
    OP_TAIL[name] = entry


def op_tail(op: OperatorInfo) -> OpTail:
    entry = OP_TAIL.get(op.name)
    if entry is None:
        raise UnsupportedModelError(
            f"operator {op.index} ({op.name}): the arena prediction does not know its "
            "persistent data (no entry in arena_tail.OP_TAIL)")
    return entry


def measured_allocations(model: Model, op: OperatorInfo, t: Target,
                         m: MeasuredOp | None = None) -> OpAllocations:
    """OpAllocations of an operator without an OP_TAIL entry: its option struct from
    BUILTIN_DATA, its kernel allocations measured in x86 TFLM (arena_measure; `m` when
    the caller has the measurement)."""
    if m is None:
        m = measured_op(model, op)
    name = BUILTIN_DATA.get(op.name) if not op.is_custom else None
    builtin = (_struct(t, BUILTIN_DATA_CATEGORY, name),) if name else ()
    kernel: tuple[Allocation, ...] = ()  # none when unmeasured (arena_measure.unpredicted)
    if m.phase:
        kernel = (_kernel(m.first, f"{op.name} {op.index} {m.phase} (measured)"),)
    if m.rest_count:
        kernel += (Allocation(PERSISTENT_BUFFERS, m.rest, KERNEL_ALIGNMENT, m.rest_count,
                              f"{op.name} {op.index} (measured)"),)
    if m.phase == "prepare":
        return OpAllocations(builtin, (), kernel)
    return OpAllocations(builtin, kernel, ())


def op_persistent_allocations(model: Model, op: OperatorInfo,
                              target: str = "x86_64") -> list[int]:
    """Bytes `op`'s kernel allocates with AllocatePersistentBuffer, Init then Prepare, in
    order; each is placed 16-byte aligned in the tail."""
    allocs = op_allocations(model, op, get_target(target))
    return [a.size for a in (*allocs.init, *allocs.prepare)]


# ------------------------------------------------------------------------ the sequence
def _check_model(model: Model) -> None:
    if model.num_subgraphs != 1:
        raise UnsupportedModelError(
            f"the model has {model.num_subgraphs} subgraphs; the arena prediction handles one")
    for meta in model.obj.metadata or []:
        name = meta.name.decode() if isinstance(meta.name, bytes) else meta.name
        if name == COMPRESSION_METADATA:
            raise UnsupportedModelError(
                "the model has compressed tensors; the arena prediction does not model "
                "TFLM's compression data")


def _struct(t: Target, category: str, name: str, count: int = 1) -> Allocation:
    c = t.ctype(name)
    return Allocation(category, c.size * count, c.align, count, name)


def _allocator_objects(t: Target) -> list[Allocation]:
    if t.recording_allocator:  # RecordingMicroAllocator::Create
        names = ("RecordingSingleArenaBufferAllocator", "GreedyMemoryPlanner",
                 "RecordingMicroAllocator")
    else:  # MicroAllocator::Create(arena, size, kGreedy)
        names = ("SingleArenaBufferAllocator", "GreedyMemoryPlanner", "MicroAllocator")
    return [_struct(t, ALLOCATORS, n) for n in names]


def _kernel(size: int, what: str) -> Allocation:
    return Allocation(PERSISTENT_BUFFERS, size, KERNEL_ALIGNMENT, 1, what)


def _variable_buffers(model: Model) -> list[Allocation]:
    # MicroAllocator::AllocateVariables: TfLiteEvalTensorByteLength, 16-byte aligned, for
    # the variable tensors the offline plan (if any) leaves to the online planner
    offsets = offline_offsets(model)
    out = []
    for tensor in model.tensors:
        if tensor.is_variable and (offsets is None or offsets[tensor.index] == -1):
            size = tensor.numel * TYPE_SIZE[tensor.dtype]
            out.append(Allocation(VARIABLE_BUFFERS, size, KERNEL_ALIGNMENT, 1, tensor.name))
    return out


def _io_tensors(model: Model, t: Target, tensors: tuple[int, ...]) -> list[Allocation]:
    # MicroInterpreter::AllocateTensors + MicroAllocator::AllocatePersistentTfLiteTensor
    allocs = [_kernel(t.pointer_size * len(tensors), "TfLiteTensor* array")]
    for i in tensors:
        allocs.append(_struct(t, PERSISTENT_TENSORS, "TfLiteTensor"))
        q = model.tensors[i].quantization
        if q is not None and q.scale and q.zero_point:
            allocs.append(_struct(t, PERSISTENT_QUANT, "TfLiteAffineQuantization"))
            int_array = t.ctype("TfLiteIntArray")
            allocs.append(Allocation(PERSISTENT_QUANT, int_array.size + 4 * len(q.scale),
                                     int_array.align, 1, "zero_point TfLiteIntArray"))
    return allocs


@dataclass(frozen=True)
class OpAllocations:
    """What one operator adds to the tail: its builtin option struct, its kernel's Init
    and Prepare allocations (each list in TFLM's order)."""

    builtin: tuple[Allocation, ...]
    init: tuple[Allocation, ...]
    prepare: tuple[Allocation, ...]


def op_allocations(model: Model, op: OperatorInfo, t: Target) -> OpAllocations:
    if op.name not in OP_TAIL:
        return measured_allocations(model, op, t)
    entry = op_tail(op)
    builtin = ((_struct(t, BUILTIN_DATA_CATEGORY, entry.builtin_data),)
               if entry.builtin_data else ())
    init = (_kernel(t.sizeof(entry.init_data), f"{op.name} {op.index} Init"),) \
        if entry.init_data else ()
    prepare = tuple(_kernel(size, f"{op.name} {op.index} Prepare")
                    for size in entry.prepare(model, op, t))
    return OpAllocations(builtin, init, prepare)


def patch_exec_allocations(model: Model, t: Target) -> OpAllocations:
    """op_allocations of a PATCH_EXEC operator added to `model`."""
    op = OperatorInfo(len(model.operators), "PATCH_EXEC", None, (), (), None, None)
    return op_allocations(model, op, t)


@dataclass(frozen=True)
class ModelAllocations:
    """The parts of the tail that are not per operator: the variable buffers and the
    input/output tensors."""

    variables: tuple[Allocation, ...]
    io_tensors: tuple[Allocation, ...]


def model_allocations(model: Model, t: Target) -> ModelAllocations:
    return ModelAllocations(tuple(_variable_buffers(model)),
                            tuple(_io_tensors(model, t, model.inputs)
                                  + _io_tensors(model, t, model.outputs)))


def assemble_tail(t: Target, num_subgraphs: int, num_tensors: int,
                  ops: Sequence[OpAllocations], num_scratch: int,
                  rest: ModelAllocations) -> tuple[list[Allocation], int]:
    """All tail allocations in TFLM's order from their parts, and how many precede the
    input/output tensors."""
    allocs = _allocator_objects(t)
    # StartModelAllocation
    allocs.append(_struct(t, ALLOCATORS, "MicroBuiltinDataAllocator"))
    allocs.append(_struct(t, SUBGRAPHS, "SubgraphAllocations", num_subgraphs))
    allocs.append(_struct(t, EVAL_TENSORS, "TfLiteEvalTensor", num_tensors))
    allocs.append(_struct(t, NODES, "NodeAndRegistration", len(ops)))
    # builtin options, then Init of every kernel, then Prepare of every kernel
    for part in ("builtin", "init", "prepare"):
        for op in ops:
            allocs.extend(getattr(op, part))
    # FinishModelAllocation
    if num_scratch:
        allocs.append(_struct(t, SCRATCH_HANDLES, "ScratchBufferHandle", num_scratch))
    allocs += rest.variables
    planned = len(allocs)
    allocs += rest.io_tensors
    return allocs, planned


def tail_allocations(model: Model, target: str = "x86_64") -> tuple[list[Allocation], int]:
    """All tail allocations in TFLM's order, and how many precede the input/output tensors
    (i.e. exist while CommitStaticMemoryPlan plans)."""
    _check_model(model)
    t = get_target(target)
    n_scratch = sum(len(scratch_requests(model, op, target)) for op in model.operators)
    return assemble_tail(t, model.num_subgraphs, len(model.tensors),
                         [op_allocations(model, op, t) for op in model.operators], n_scratch,
                         model_allocations(model, t))


def replay(allocs: list[Allocation], start: int = 0) -> list[int]:
    """Tail bytes used after each allocation, from a 16-byte-aligned arena end."""
    used = start
    out = []
    for a in allocs:
        used = align_up(used + a.size, a.alignment)
        out.append(used)
    return out


def predict_tail(model: Model, target: str = "x86_64") -> TailPrediction:
    """Replay the tail allocations; bytes, requested bytes and counts per category."""
    return summarize_tail(*tail_allocations(model, target))


def summarize_tail(allocs: list[Allocation], planned: int) -> TailPrediction:
    """The tail of these allocations (tail_allocations' result)."""
    used = replay(allocs)
    totals: dict[str, tuple[int, int, int]] = {}
    previous = 0
    for a, u in zip(allocs, used, strict=True):
        size, aligned, count = totals.get(a.category, (0, 0, 0))
        totals[a.category] = (size + a.size, aligned + u - previous, count + a.count)
        previous = u
    items = tuple(TailItem(c, *v) for c, v in totals.items())
    total = used[-1] if used else 0
    before_io = used[planned - 1] if planned else 0
    return TailPrediction(total, items, before_io)
