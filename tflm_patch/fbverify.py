"""A structural verifier for .tflite flatbuffers, in pure Python.

The ``flatbuffers`` Python package reads whatever offsets it finds, so a damaged or
hostile file makes it raise anything from ``IndexError`` to ``struct.error`` or
return garbage (negative positions silently wrap around in ``struct.unpack_from``).
`verify_tflite` walks the whole buffer first, in the spirit of the C++
``flatbuffers::Verifier``: every offset points inside the buffer, every vtable is
sane, scalars, tables and vector lengths are aligned, every vector and string fits,
strings end in a 0 byte, union types are in range, and depth and table count are
bounded. A buffer that passes can be unpacked with the schema's object API
(``ModelT.InitFromPackedBuf``) without an exception.

The walk is driven by `SCHEMA_TEXT`, a compact description of the TFLite schema
tables (field slots in order, with their types) written for this module from
TensorFlow's generated ``schema_py_generated`` (the schema as code). Grammar, one
table per line, continuation lines indented::

    Table: field kind, field kind, ...     (the n-th entry is field slot n)
    union Name: Member1 Member2 ...        (union type value n+1 = n-th member)

A kind is a scalar (``bool i8 u8 i16 u16 i32 u32 f32 i64 u64 f64``), ``str``, a
table name, ``[scalar]``, ``[str]``, ``[Table]``, ``type(Union)`` (the union type
byte) or ``union(Union)`` (the union value, in the slot after its type). ``_`` is a
deprecated slot. Fields a newer schema appends beyond the described ones are ignored,
as by the C++ verifier and by the object API of the installed schema module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from typing import NoReturn

from tflm_patch.errors import ModelFormatError

FILE_IDENTIFIER = b"TFL3"
HEADER_SIZE = 8  # root table offset + file identifier
MAX_DEPTH = 64  # defaults of flatbuffers::Verifier
MAX_TABLES = 1_000_000
MAX_FLATBUFFER_SIZE = 2**31 - 1  # flatbuffer offsets cannot reach past 2 GiB

SCHEMA_TEXT = """\
Model: version u32, operator_codes [OperatorCode], subgraphs [SubGraph], description str,
    buffers [Buffer], metadata_buffer [i32], metadata [Metadata], signature_defs [SignatureDef],
    external_buffer_groups [ExternalBufferGroup], external_buffers [ExternalBuffer]
OperatorCode: deprecated_builtin_code i8, custom_code str, version i32, builtin_code i32
SubGraph: tensors [Tensor], inputs [i32], outputs [i32], operators [Operator], name str,
    debug_metadata_index i32
Tensor: shape [i32], type i8, buffer u32, name str, quantization QuantizationParameters,
    is_variable bool, sparsity SparsityParameters, shape_signature [i32], has_rank bool,
    variant_tensors [VariantSubType], external_buffer u32
QuantizationParameters: min [f32], max [f32], scale [f32], zero_point [i64],
    details_type type(QuantizationDetails), details union(QuantizationDetails),
    quantized_dimension i32
CustomQuantization: custom [u8]
BlockwiseQuantization: scales i32, zero_points i32, block_size i32
SparsityParameters: traversal_order [i32], block_map [i32], dim_metadata [DimensionMetadata]
DimensionMetadata: format i8, dense_size i32, array_segments_type type(SparseIndexVector),
    array_segments union(SparseIndexVector), array_indices_type type(SparseIndexVector),
    array_indices union(SparseIndexVector)
Int32Vector: values [i32]
Uint16Vector: values [u16]
Uint8Vector: values [u8]
VariantSubType: shape [i32], type i8, has_rank bool
Operator: opcode_index u32, inputs [i32], outputs [i32],
    builtin_options_type type(BuiltinOptions), builtin_options union(BuiltinOptions),
    custom_options [u8], custom_options_format i8, mutating_variable_inputs [bool],
    intermediates [i32], large_custom_options_offset u64, large_custom_options_size u64,
    builtin_options2_type type(BuiltinOptions2), builtin_options2 union(BuiltinOptions2),
    debug_metadata_index i32
Buffer: data [u8], offset u64, size u64
Metadata: name str, buffer u32
SignatureDef: inputs [TensorMap], outputs [TensorMap], signature_key str, _, subgraph_index u32
TensorMap: name str, tensor_index u32
ExternalBufferGroup: name str
ExternalBuffer: id u32, group u32, offset u64, length u64, packing str
StablehloGatherOptions: offset_dims [i64], collapsed_slice_dims [i64], start_index_map [i64],
    index_vector_dim i64, slice_sizes [i64], indices_are_sorted bool
StablehloTransposeOptions: permutation [i64]
StablehloDotGeneralOptions: lhs_batching_dimensions [i64], rhs_batching_dimensions [i64],
    lhs_contracting_dimensions [i64], rhs_contracting_dimensions [i64], precision_config [u32]
StablehloReduceWindowOptions: window_dimensions [i64], window_strides [i64],
    base_dilations [i64], window_dilations [i64], padding [i64], body_subgraph_index i32
StablehloWhileOptions: cond_subgraph_index i32, body_subgraph_index i32
StablehloSortOptions: dimension i64, is_stable bool, comparator_subgraph_index i32
StablehloConcatenateOptions: dimension i64
StablehloBroadcastInDimOptions: broadcast_dimensions [i64]
StablehloCompareOptions: comparison_direction u32, compare_type u32
StablehloDynamicSliceOptions: slice_sizes [i64]
StablehloPadOptions: edge_padding_low [i64], edge_padding_high [i64], interior_padding [i64]
StablehloIotaOptions: iota_dimension i64
StablehloCustomCallOptions: call_target_name str, has_side_effect bool, backend_config str,
    api_version i32, called_computations [i32], custom_attributes [u8]
StablehloReduceOptions: dimensions [i64], body_subgraph_index i32
StablehloSliceOptions: start_indices [i64], limit_indices [i64], strides [i64]
StablehloConvolutionOptions: window_strides [i64], padding [i64], lhs_dilation [i64],
    rhs_dilation [i64], window_reversal [bool], input_batch_dimension i64,
    input_feature_dimension i64, input_spatial_dimensions [i64],
    kernel_input_feature_dimension i64, kernel_output_feature_dimension i64,
    kernel_spatial_dimensions [i64], output_batch_dimension i64, output_feature_dimension i64,
    output_spatial_dimensions [i64], feature_group_count i64, batch_group_count i64,
    precision_config [u32]
StablehloScatterOptions: indices_are_sorted bool, update_window_dims [i64],
    inserted_window_dims [i64], scatter_dims_to_operand_dims [i64], index_vector_dim i64,
    unique_indices bool, update_computation_subgraph_index i32
StablehloCaseOptions: branch_subgraph_indices [i32]
StablehloRngBitGeneratorOptions: algorithm i8
Conv2DOptions: padding i8, stride_w i32, stride_h i32, fused_activation_function i8,
    dilation_w_factor i32, dilation_h_factor i32, quantized_bias_type i8
Conv3DOptions: padding i8, stride_d i32, stride_w i32, stride_h i32,
    fused_activation_function i8, dilation_d_factor i32, dilation_w_factor i32,
    dilation_h_factor i32
Pool2DOptions: padding i8, stride_w i32, stride_h i32, filter_width i32, filter_height i32,
    fused_activation_function i8
DepthwiseConv2DOptions: padding i8, stride_w i32, stride_h i32, depth_multiplier i32,
    fused_activation_function i8, dilation_w_factor i32, dilation_h_factor i32
ConcatEmbeddingsOptions: num_channels i32, num_columns_per_channel [i32],
    embedding_dim_per_channel [i32]
LSHProjectionOptions: type i8
SVDFOptions: rank i32, fused_activation_function i8, asymmetric_quantize_inputs bool
RNNOptions: fused_activation_function i8, asymmetric_quantize_inputs bool
SequenceRNNOptions: time_major bool, fused_activation_function i8,
    asymmetric_quantize_inputs bool
BidirectionalSequenceRNNOptions: time_major bool, fused_activation_function i8,
    merge_outputs bool, asymmetric_quantize_inputs bool
FullyConnectedOptions: fused_activation_function i8, weights_format i8, keep_num_dims bool,
    asymmetric_quantize_inputs bool, quantized_bias_type i8
SoftmaxOptions: beta f32
ConcatenationOptions: axis i32, fused_activation_function i8
AddOptions: fused_activation_function i8, pot_scale_int16 bool
MulOptions: fused_activation_function i8
L2NormOptions: fused_activation_function i8
LocalResponseNormalizationOptions: radius i32, bias f32, alpha f32, beta f32
LSTMOptions: fused_activation_function i8, cell_clip f32, proj_clip f32, kernel_type i8,
    asymmetric_quantize_inputs bool
UnidirectionalSequenceLSTMOptions: fused_activation_function i8, cell_clip f32, proj_clip f32,
    time_major bool, asymmetric_quantize_inputs bool, diagonal_recurrent_tensors bool
BidirectionalSequenceLSTMOptions: fused_activation_function i8, cell_clip f32, proj_clip f32,
    merge_outputs bool, time_major bool, asymmetric_quantize_inputs bool
ResizeBilinearOptions: _, _, align_corners bool, half_pixel_centers bool
ResizeNearestNeighborOptions: align_corners bool, half_pixel_centers bool
CallOptions: subgraph u32
PadOptions:
PadV2Options:
ReshapeOptions: new_shape [i32]
SpaceToBatchNDOptions:
BatchToSpaceNDOptions:
SkipGramOptions: ngram_size i32, max_skip_size i32, include_all_ngrams bool
SpaceToDepthOptions: block_size i32
DepthToSpaceOptions: block_size i32
SubOptions: fused_activation_function i8, pot_scale_int16 bool
DivOptions: fused_activation_function i8
TopKV2Options:
EmbeddingLookupSparseOptions: combiner i8
GatherOptions: axis i32, batch_dims i32
TransposeOptions:
ExpOptions:
CosOptions:
ReducerOptions: keep_dims bool
SqueezeOptions: squeeze_dims [i32]
SplitOptions: num_splits i32
SplitVOptions: num_splits i32
StridedSliceOptions: begin_mask i32, end_mask i32, ellipsis_mask i32, new_axis_mask i32,
    shrink_axis_mask i32, offset bool
LogSoftmaxOptions:
CastOptions: in_data_type i8, out_data_type i8
DequantizeOptions:
MaximumMinimumOptions:
TileOptions:
ArgMaxOptions: output_type i8
ArgMinOptions: output_type i8
GreaterOptions:
GreaterEqualOptions:
LessOptions:
LessEqualOptions:
NegOptions:
SelectOptions:
SliceOptions:
TransposeConvOptions: padding i8, stride_w i32, stride_h i32, fused_activation_function i8,
    quantized_bias_type i8
ExpandDimsOptions:
SparseToDenseOptions: validate_indices bool
EqualOptions:
NotEqualOptions:
ShapeOptions: out_type i8
RankOptions:
PowOptions:
FakeQuantOptions: min f32, max f32, num_bits i32, narrow_range bool
PackOptions: values_count i32, axis i32
LogicalOrOptions:
OneHotOptions: axis i32
AbsOptions:
HardSwishOptions:
LogicalAndOptions:
LogicalNotOptions:
UnpackOptions: num i32, axis i32
FloorDivOptions:
SquareOptions:
ZerosLikeOptions:
FillOptions:
FloorModOptions:
RangeOptions:
LeakyReluOptions: alpha f32
SquaredDifferenceOptions:
MirrorPadOptions: mode i8
UniqueOptions: idx_out_type i8
ReverseV2Options:
AddNOptions:
GatherNdOptions:
WhereOptions:
ReverseSequenceOptions: seq_dim i32, batch_dim i32
MatrixDiagOptions:
QuantizeOptions:
MatrixSetDiagOptions:
IfOptions: then_subgraph_index i32, else_subgraph_index i32
CallOnceOptions: init_subgraph_index i32
WhileOptions: cond_subgraph_index i32, body_subgraph_index i32
NonMaxSuppressionV4Options:
NonMaxSuppressionV5Options:
ScatterNdOptions:
SelectV2Options:
DensifyOptions:
SegmentSumOptions:
BatchMatMulOptions: adj_x bool, adj_y bool, asymmetric_quantize_inputs bool
CumsumOptions: exclusive bool, reverse bool
BroadcastToOptions:
Rfft2dOptions:
HashtableOptions: table_id i32, key_dtype i8, value_dtype i8
HashtableFindOptions:
HashtableImportOptions:
HashtableSizeOptions:
VarHandleOptions: container str, shared_name str
ReadVariableOptions:
AssignVariableOptions:
RandomOptions: seed i64, seed2 i64
BucketizeOptions: boundaries [f32]
GeluOptions: approximate bool
DynamicUpdateSliceOptions:
UnsortedSegmentProdOptions:
UnsortedSegmentMaxOptions:
UnsortedSegmentSumOptions:
ATan2Options:
UnsortedSegmentMinOptions:
SignOptions:
BitcastOptions:
BitwiseXorOptions:
RightShiftOptions:
DilateOptions:
ReduceWindowOptions: reduce_function i32
StableHLOCompositeOptions: name str, decomposition_subgraph_index i32,
    composite_attributes [u8], composite_attributes_format i8, version i32
StablehloShiftLeftOptions:
union QuantizationDetails: CustomQuantization BlockwiseQuantization
union SparseIndexVector: Int32Vector Uint16Vector Uint8Vector
union BuiltinOptions: Conv2DOptions DepthwiseConv2DOptions ConcatEmbeddingsOptions
    LSHProjectionOptions Pool2DOptions SVDFOptions RNNOptions FullyConnectedOptions
    SoftmaxOptions ConcatenationOptions AddOptions L2NormOptions
    LocalResponseNormalizationOptions LSTMOptions ResizeBilinearOptions CallOptions
    ReshapeOptions SkipGramOptions SpaceToDepthOptions EmbeddingLookupSparseOptions MulOptions
    PadOptions GatherOptions BatchToSpaceNDOptions SpaceToBatchNDOptions TransposeOptions
    ReducerOptions SubOptions DivOptions SqueezeOptions SequenceRNNOptions StridedSliceOptions
    ExpOptions TopKV2Options SplitOptions LogSoftmaxOptions CastOptions DequantizeOptions
    MaximumMinimumOptions ArgMaxOptions LessOptions NegOptions PadV2Options GreaterOptions
    GreaterEqualOptions LessEqualOptions SelectOptions SliceOptions TransposeConvOptions
    SparseToDenseOptions TileOptions ExpandDimsOptions EqualOptions NotEqualOptions ShapeOptions
    PowOptions ArgMinOptions FakeQuantOptions PackOptions LogicalOrOptions OneHotOptions
    LogicalAndOptions LogicalNotOptions UnpackOptions FloorDivOptions SquareOptions
    ZerosLikeOptions FillOptions BidirectionalSequenceLSTMOptions
    BidirectionalSequenceRNNOptions UnidirectionalSequenceLSTMOptions FloorModOptions
    RangeOptions ResizeNearestNeighborOptions LeakyReluOptions SquaredDifferenceOptions
    MirrorPadOptions AbsOptions SplitVOptions UniqueOptions ReverseV2Options AddNOptions
    GatherNdOptions CosOptions WhereOptions RankOptions ReverseSequenceOptions MatrixDiagOptions
    QuantizeOptions MatrixSetDiagOptions HardSwishOptions IfOptions WhileOptions
    DepthToSpaceOptions NonMaxSuppressionV4Options NonMaxSuppressionV5Options ScatterNdOptions
    SelectV2Options DensifyOptions SegmentSumOptions BatchMatMulOptions CumsumOptions
    CallOnceOptions BroadcastToOptions Rfft2dOptions Conv3DOptions HashtableOptions
    HashtableFindOptions HashtableImportOptions HashtableSizeOptions VarHandleOptions
    ReadVariableOptions AssignVariableOptions RandomOptions BucketizeOptions GeluOptions
    DynamicUpdateSliceOptions UnsortedSegmentProdOptions UnsortedSegmentMaxOptions
    UnsortedSegmentMinOptions UnsortedSegmentSumOptions ATan2Options SignOptions BitcastOptions
    BitwiseXorOptions RightShiftOptions
union BuiltinOptions2: StablehloConcatenateOptions StablehloBroadcastInDimOptions
    StablehloSliceOptions StablehloConvolutionOptions StablehloCustomCallOptions
    StablehloReduceOptions StablehloScatterOptions StablehloCompareOptions
    StablehloDynamicSliceOptions StablehloPadOptions StablehloIotaOptions
    StablehloDotGeneralOptions StablehloReduceWindowOptions StablehloSortOptions
    StablehloWhileOptions StablehloGatherOptions StablehloTransposeOptions DilateOptions
    StablehloRngBitGeneratorOptions ReduceWindowOptions StableHLOCompositeOptions
    StablehloShiftLeftOptions StablehloCaseOptions
"""

# kinds of fields
SCALAR, STRING, TABLE, VEC_SCALAR, VEC_STRING, VEC_TABLE, UNION_TYPE, UNION, UNUSED = range(9)

_SCALAR_FORMATS: dict[str, str] = {
    "bool": "B", "i8": "b", "u8": "B", "i16": "h", "u16": "H", "i32": "i", "u32": "I",
    "f32": "f", "i64": "q", "u64": "Q", "f64": "d",
}  # fmt: skip
_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_VT_HEADER = struct.Struct("<HH").unpack_from

# tables whose (offset, size) u64 fields locate data outside the flatbuffer proper
# (the layout of models over 2 GiB)
_OUTSIDE_DATA = {
    "Buffer": ("offset", "size"),
    "Operator": ("large_custom_options_offset", "large_custom_options_size"),
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field slot of a table."""

    name: str
    kind: int  # SCALAR, STRING, ... (module constants)
    inline_size: int  # bytes inside the table (scalar size, 4 for offsets, 1 if unused)
    elem_size: int  # vector element size (0 when not a vector)
    ref: str  # scalar type name, table name or union name ("" for strings)


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True, slots=True)
class SchemaSpec:
    tables: dict[str, TableSpec]
    unions: dict[str, tuple[str, ...]]  # union name -> member tables (type value i+1)


def _parse_field(table: str, text: str) -> FieldSpec:
    if text == "_":
        return FieldSpec("_", UNUSED, 1, 0, "")
    name, kind = text.split()
    if kind in _SCALAR_FORMATS:
        return FieldSpec(name, SCALAR, struct.calcsize(_SCALAR_FORMATS[kind]), 0, kind)
    if kind == "str":
        return FieldSpec(name, STRING, 4, 0, "")
    if kind.startswith("type(") and kind.endswith(")"):
        return FieldSpec(name, UNION_TYPE, 1, 0, kind[5:-1])
    if kind.startswith("union(") and kind.endswith(")"):
        return FieldSpec(name, UNION, 4, 0, kind[6:-1])
    if kind.startswith("[") and kind.endswith("]"):
        elem = kind[1:-1]
        if elem in _SCALAR_FORMATS:
            size = struct.calcsize(_SCALAR_FORMATS[elem])
            return FieldSpec(name, VEC_SCALAR, 4, size, elem)
        if elem == "str":
            return FieldSpec(name, VEC_STRING, 4, 4, "")
        return FieldSpec(name, VEC_TABLE, 4, 4, elem)
    if kind.isidentifier():
        return FieldSpec(name, TABLE, 4, 0, kind)
    raise ValueError(f"schema description: bad kind {kind!r} of {table}.{name}")


def parse_schema(text: str) -> SchemaSpec:
    """Parse a description in the grammar of `SCHEMA_TEXT` and check its references."""
    entries: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            entries[-1] += " " + line.strip()
        else:
            entries.append(line.strip())
    tables: dict[str, TableSpec] = {}
    unions: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        head, _, body = entry.partition(":")
        if head.startswith("union "):
            unions[head[6:].strip()] = tuple(body.split())
            continue
        parts = [p.strip() for p in body.split(",")] if body.strip() else []
        tables[head] = TableSpec(head, tuple(_parse_field(head, p) for p in parts))
    _check_references(tables, unions)
    return SchemaSpec(tables, unions)


def _check_references(tables: dict[str, TableSpec], unions: dict[str, tuple[str, ...]]) -> None:
    for members in unions.values():
        for member in members:
            if member not in tables:
                raise ValueError(f"schema description: union member {member} is not a table")
    for spec in tables.values():
        for slot, f in enumerate(spec.fields):
            if f.kind in (TABLE, VEC_TABLE) and f.ref not in tables:
                raise ValueError(f"schema description: {spec.name}.{f.name}: no table {f.ref}")
            if f.kind in (UNION_TYPE, UNION) and f.ref not in unions:
                raise ValueError(f"schema description: {spec.name}.{f.name}: no union {f.ref}")
            if f.kind == UNION and (
                slot == 0
                or spec.fields[slot - 1].kind != UNION_TYPE
                or spec.fields[slot - 1].ref != f.ref
            ):
                raise ValueError(
                    f"schema description: {spec.name}.{f.name} must follow its type field"
                )


@cache
def tflite_schema() -> SchemaSpec:
    """The parsed description of the TFLite schema that drives `verify_tflite`."""
    return parse_schema(SCHEMA_TEXT)


def verify_tflite(
    buf: bytes | bytearray | memoryview,
    *,
    max_depth: int = MAX_DEPTH,
    max_tables: int = MAX_TABLES,
) -> None:
    """Raise ModelFormatError('not a valid TFLite flatbuffer: <what>, at byte <offset>')
    on the first problem; return None if ``buf`` is a well-formed TFLite flatbuffer."""
    if isinstance(buf, bytes | bytearray):
        _verify(buf, max_depth, max_tables)
        return
    # released on return, so that e.g. an mmap can be closed even after an error
    with memoryview(buf) as view, view.cast("B") as data:
        _verify(data, max_depth, max_tables)


def _verify(data: bytes | bytearray | memoryview, max_depth: int, max_tables: int) -> None:
    size = len(data)
    if size < HEADER_SIZE:
        _fail(
            f"file is {size} bytes, shorter than the {HEADER_SIZE}-byte flatbuffer header "
            "(root offset and file identifier)",
            0,
        )
    ident = bytes(data[4:8])
    if ident != FILE_IDENTIFIER:
        _fail(f"file identifier is {ident!r}, expected {FILE_IDENTIFIER!r}", 4)
    verifier = _Verifier(data, min(size, MAX_FLATBUFFER_SIZE), size, max_depth, max_tables)
    root = verifier.offset(0, "root table")
    verifier.table(root, tflite_schema().tables["Model"], "Model")
    if size > MAX_FLATBUFFER_SIZE and not verifier.uses_outside_data:
        _fail(
            f"file is {size} bytes (over 2 GiB) but uses no Buffer.offset/size, "
            "the only layout allowed beyond 2 GiB",
            MAX_FLATBUFFER_SIZE,
        )


def _fail(what: str, at: int) -> NoReturn:
    raise ModelFormatError(f"not a valid TFLite flatbuffer: {what}, at byte {at}")


class _Verifier:
    """One walk over one buffer: bounds ``end`` for the flatbuffer proper, ``file_size``
    for data located by Buffer.offset/size."""

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        end: int,
        file_size: int,
        max_depth: int,
        max_tables: int,
    ) -> None:
        self.data = data
        self.end = end
        self.file_size = file_size
        self.max_depth = max_depth
        self.max_tables = max_tables
        self.depth = 0
        self.tables = 0
        self.path: list[str | int] = []  # where we are, for error messages
        self.seen: set[tuple[str, int]] = set()  # (table or vector type, position) verified
        self.uses_outside_data = False
        self.schema = tflite_schema()

    # -- errors and primitive checks ------------------------------------------------------

    def fail(self, what: str, at: int) -> NoReturn:
        where = "".join(f"[{p}]" if isinstance(p, int) else p for p in self.path)
        _fail(f"{where}: {what}" if where else what, at)

    def need(self, pos: int, size: int, what: str) -> None:
        if pos < 0 or pos + size > self.end:
            self.fail(f"{what} ({size} bytes) lies outside the {self.end}-byte buffer", pos)

    def aligned(self, pos: int, align: int, what: str) -> None:
        if pos & (align - 1):
            self.fail(f"{what} is not {align}-byte aligned", pos)

    def offset(self, pos: int, what: str) -> int:
        """Follow the unsigned 32-bit offset stored at ``pos``; return its target."""
        self.aligned(pos, 4, f"{what} offset")
        self.need(pos, 4, f"{what} offset")
        off = _U32(self.data, pos)[0]
        if off == 0:
            self.fail(f"{what} offset is 0", pos)
        if off > MAX_FLATBUFFER_SIZE:
            self.fail(f"{what} offset {off} exceeds 2 GiB", pos)
        target = pos + off
        if target >= self.end:
            self.fail(
                f"{what} offset {off} points to byte {target}, "
                f"past the end of the {self.end}-byte buffer",
                pos,
            )
        return target

    def vector(self, field_pos: int, elem_size: int, what: str) -> tuple[int, int]:
        """Check the vector referenced at ``field_pos``; return (first element, length)."""
        vec = self.offset(field_pos, what)
        self.aligned(vec, 4, f"{what} vector")
        self.need(vec, 4, f"{what} vector length")
        n = _U32(self.data, vec)[0]
        self.need(vec + 4, n * elem_size, f"{what} vector of {n} elements")
        return vec + 4, n

    def string(self, field_pos: int, what: str) -> None:
        start, n = self.vector(field_pos, 1, f"{what} string")
        self.need(start + n, 1, f"{what} string terminator")
        if self.data[start + n] != 0:
            self.fail(f"{what} string of {n} bytes is not 0-terminated", start + n)

    # -- tables -----------------------------------------------------------------------------

    def table(self, pos: int, spec: TableSpec, label: str) -> None:
        """Verify the table of type ``spec`` at ``pos`` and everything it references."""
        key = (spec.name, pos)
        if key in self.seen:
            return
        self.path.append(label)
        self.depth += 1
        self.tables += 1
        if self.depth > self.max_depth:
            self.fail(f"tables nested deeper than {self.max_depth}", pos)
        if self.tables > self.max_tables:
            self.fail(f"more than {self.max_tables} tables", pos)
        fields = spec.fields
        slots, inline = self.table_header(pos, len(fields))
        for slot, field_off in enumerate(slots):
            if field_off:
                self.field(pos, slot, fields[slot], field_off, inline, slots)
        if spec.name in _OUTSIDE_DATA:
            self.outside_data(pos, spec, slots)
        self.depth -= 1
        self.path.pop()
        self.seen.add(key)

    def table_header(self, pos: int, known: int) -> tuple[tuple[int, ...], int]:
        """Check the table start and its vtable; return (offsets of the first ``known``
        field slots or fewer, inline size). Further slots are not read: a vtable of
        thousands of unknown slots shared by many tables costs nothing."""
        self.aligned(pos, 4, "table")
        self.need(pos, 4, "table")
        vtable = pos - _I32(self.data, pos)[0]
        if vtable < 0 or vtable + 4 > self.end:
            self.fail(
                f"vtable offset points to byte {vtable}, outside the {self.end}-byte buffer",
                pos,
            )
        self.aligned(vtable, 2, "vtable")
        vsize, inline = _VT_HEADER(self.data, vtable)
        if vsize < 4 or vsize & 1:
            self.fail(f"vtable size {vsize} is not an even number >= 4", vtable)
        self.need(vtable, vsize, "vtable")
        if inline < 4:
            self.fail(f"table size {inline} in the vtable is smaller than 4", vtable)
        self.need(pos, inline, f"table of {inline} bytes")
        n = min((vsize - 4) >> 1, known)
        slots = struct.unpack_from(f"<{n}H", self.data, vtable + 4) if n else ()
        return slots, inline

    def field(
        self, pos: int, slot: int, f: FieldSpec, field_off: int, inline: int, slots: tuple[int, ...]
    ) -> None:
        if field_off < 4 or field_off + f.inline_size > inline:
            self.fail(
                f"field {f.name} at offset {field_off} ({f.inline_size} bytes) lies outside "
                f"its {inline}-byte table",
                pos,
            )
        fpos = pos + field_off
        kind = f.kind
        if kind in (SCALAR, UNUSED):
            self.aligned(fpos, f.inline_size, f"field {f.name}")
        elif kind == UNION_TYPE:
            value = self.data[fpos]
            members = len(self.schema.unions[f.ref])
            if value > members:
                self.fail(f"{f.name} {value} is out of range 0..{members} of {f.ref}", fpos)
        elif kind == VEC_SCALAR:
            self.vector(fpos, f.elem_size, f.name)
        elif kind == STRING:
            self.string(fpos, f.name)
        elif kind == TABLE:
            target = self.offset(fpos, f.name)
            self.table(target, self.schema.tables[f.ref], f".{f.name}")
        elif kind in (VEC_TABLE, VEC_STRING):
            self.offset_vector(fpos, f)
        elif kind == UNION:
            self.union(pos, slot, f, fpos, slots)

    def union(self, pos: int, slot: int, f: FieldSpec, fpos: int, slots: tuple[int, ...]) -> None:
        type_off = slots[slot - 1]  # the type field is the slot before (checked by the parser)
        value = self.data[pos + type_off] if type_off else 0
        if value == 0:  # NONE: the value is ignored, as by the C++ verifier and object API
            return
        member = self.schema.unions[f.ref][value - 1]
        target = self.offset(fpos, f.name)
        self.table(target, self.schema.tables[member], f".{f.name}<{member}>")

    def offset_vector(self, fpos: int, f: FieldSpec) -> None:
        start, n = self.vector(fpos, 4, f.name)
        key = (f"[{f.ref}]", start)
        if key in self.seen:
            return
        self.path.append(f".{f.name}")
        spec = self.schema.tables[f.ref] if f.kind == VEC_TABLE else None
        for j in range(n):
            elem = start + 4 * j
            if spec is None:
                self.string(elem, f"element {j}")
            else:
                self.table(self.offset(elem, f"element {j}"), spec, f"[{j}]")
        self.path.pop()
        self.seen.add(key)

    def outside_data(self, pos: int, spec: TableSpec, slots: tuple[int, ...]) -> None:
        """Buffer.offset/size (and Operator.large_custom_options_*) must lie in the file."""
        names = [f.name for f in spec.fields]
        off_name, size_name = _OUTSIDE_DATA[spec.name]
        offset = self.u64_field(pos, slots, names.index(off_name))
        size = self.u64_field(pos, slots, names.index(size_name))
        if offset <= 1:  # 0: not used; 1: placeholder written before the data is placed
            return
        self.uses_outside_data = True
        if offset + size > self.file_size:
            self.fail(
                f"{off_name} {offset} + {size_name} {size} "
                f"lies outside the {self.file_size}-byte file",
                pos,
            )

    def u64_field(self, pos: int, slots: tuple[int, ...], slot: int) -> int:
        if slot >= len(slots) or slots[slot] == 0:
            return 0
        return int(_U64(self.data, pos + slots[slot])[0])
