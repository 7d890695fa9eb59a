// TFLM glue of PATCH_EXEC (docs/patch_exec.md). Init keeps a pointer to the
// options blob and validates it; Prepare checks that the operator's tensors are
// the ones the blob describes ("Operator tensors": input and output in the arena,
// constants really constant with buffers of their exact size, no size that
// overflows) and requests the one scratch buffer; Eval hands the tensors to the
// portable core. All validation happens before Eval: Eval checks nothing and
// allocates nothing. The model is untrusted data.
//
// Arena use is fixed by the contract (the project's arena model counts exactly
// this): one persistent OpData from Init, one scratch buffer of scratch_bytes
// (none when 0) from Prepare, nothing else. Temporary TfLiteTensors in Prepare
// are released before Prepare returns.
#include "custom_ops/patch_exec/tflm/patch_exec_op.h"

#include <stddef.h>
#include <stdint.h>

#include "custom_ops/patch_exec/patch_exec_core.h"
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_context.h"

// TF_LITE_ENSURE_MSG with printf arguments (TFLM's own macro takes a plain
// message only, before November 2023). Logs "PATCH_EXEC: <message>" through the
// context (MicroPrintf) and fails the calling function.
#define PATCH_EXEC_ENSURE(context, condition, ...)               \
  do {                                                           \
    static_cast<void>(context);                                  \
    if (!(condition)) {                                          \
      TF_LITE_KERNEL_LOG((context), "PATCH_EXEC: " __VA_ARGS__); \
      return kTfLiteError;                                       \
    }                                                            \
  } while (0)

namespace tflite {
namespace {

// Persistent per-operator data: 16 bytes on 64-bit targets, 12 on 32-bit.
struct OpData {
  // The options blob inside the flatbuffer; nullptr if it did not validate in
  // Init (Prepare then reports why).
  const uint8_t* options;
  uint32_t options_size;
  // Index of the scratch buffer, or -1 when scratch_bytes is 0.
  int32_t scratch_index;
};
static_assert(sizeof(OpData) == sizeof(void*) + 2 * sizeof(uint32_t),
              "OpData's size is part of the arena contract");

constexpr int kStageInput = 0;
constexpr int kStageOutput = 0;
constexpr size_t kMessageSize = 256;

// Where PatchExecInputFn finds operator inputs.
struct InputSource {
  TfLiteContext* context;
  const TfLiteNode* node;
};

// PatchExecInputFn over the node's eval tensors (constants point into the
// flatbuffer from the start, so this works in Prepare too).
const void* GetConstantInput(void* source, uint32_t index) {
  const InputSource* s = static_cast<const InputSource*>(source);
  if (index >= static_cast<uint32_t>(s->node->inputs->size)) {
    return nullptr;
  }
  const int tensor_index = s->node->inputs->data[index];
  if (tensor_index < 0) {
    return nullptr;
  }
  const TfLiteEvalTensor* tensor = GetMicroContext(s->context)->GetEvalTensor(tensor_index);
  return tensor == nullptr ? nullptr : tensor->data.raw;
}

[[maybe_unused]] const char* TypeName(TfLiteType type) {
  if (type == kTfLiteInt8) return "int8";
  if (type == kTfLiteInt32) return "int32";
  if (type == kTfLiteUInt8) return "uint8";
  if (type == kTfLiteInt16) return "int16";
  if (type == kTfLiteFloat32) return "float32";
  return "another type";
}

TfLiteType RequiredType(PatchExecConstType type) {
  return type == kPatchExecConstInt8 ? kTfLiteInt8 : kTfLiteInt32;
}

// Largest tensor PATCH_EXEC accepts (the core's rule: 32-bit targets index every
// tensor with int32_t).
constexpr int64_t kMaxTensorBytes = 0x7FFFFFFF;

// Element count of `dims`, or -1 when a dimension is negative or the count exceeds
// kMaxTensorBytes (checked at every step: no 32- or 64-bit overflow).
int64_t ElementCount(const TfLiteIntArray* dims) {
  if (dims == nullptr) return -1;
  int64_t count = 1;
  for (int i = 0; i < dims->size; ++i) {
    const int64_t d = dims->data[i];
    if (d < 0 || (d > 0 && count > kMaxTensorBytes / d)) return -1;
    count *= d;
  }
  return count;
}

// Length of the flatbuffer vector whose elements start at `data`: TFLM points a
// constant tensor at its buffer's `data` vector, which the flatbuffer format stores as a
// little-endian uint32 element count right before the elements.
uint32_t FlatbufferVectorLength(const void* data) {
  const uint8_t* p = static_cast<const uint8_t*>(data) - sizeof(uint32_t);
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

// What Prepare needs of one operator tensor, read from a temporary TfLiteTensor.
struct TensorFacts {
  TfLiteType type;
  int64_t elements;  // -1: negative dimension or too large
  size_t bytes;      // TFLM's size (element count x type size, from the shape)
  bool constant;     // kTfLiteMmapRo with data: points into the model
  bool variable;
  uint32_t buffer_length;  // bytes of the model buffer behind a constant; else 0
};

TensorFacts FactsOf(const TfLiteTensor& tensor) {
  TensorFacts f;
  f.type = tensor.type;
  f.elements = ElementCount(tensor.dims);
  f.bytes = tensor.bytes;
  f.constant = tensor.allocation_type == kTfLiteMmapRo && tensor.data.raw != nullptr;
  f.variable = tensor.is_variable;
  f.buffer_length = f.constant ? FlatbufferVectorLength(tensor.data.raw) : 0;
  return f;
}

bool IsCompressed(MicroContext* micro_context, const TfLiteNode* node, int index) {
#ifdef USE_TFLM_COMPRESSION
  return micro_context->IsTensorCompressed(node, index);
#else
  (void)micro_context;
  (void)node;
  (void)index;
  return false;
#endif
}

void* Init(TfLiteContext* context, const char* buffer, size_t length) {
  TFLITE_DCHECK(context->AllocatePersistentBuffer != nullptr);
  OpData* data = static_cast<OpData*>(context->AllocatePersistentBuffer(context, sizeof(OpData)));
  if (data == nullptr) {
    return nullptr;  // Prepare reports it
  }
  const uint8_t* blob = reinterpret_cast<const uint8_t*>(buffer);
  const bool fits = length <= UINT32_MAX;
  const bool valid =
      blob != nullptr && fits && PatchExecValidate(blob, length, nullptr, 0) == kPatchExecOk;
  data->options = valid ? blob : nullptr;
  data->options_size = fits ? static_cast<uint32_t>(length) : 0;
  data->scratch_index = -1;
  return data;
}

// Called when Init found the options invalid: validates them again, this time
// with a message, and reports it.
TfLiteStatus ReportInvalidOptions(TfLiteContext* context, const TfLiteNode* node) {
  const uint8_t* blob = static_cast<const uint8_t*>(node->custom_initial_data);
  const size_t size = static_cast<size_t>(node->custom_initial_data_size);
  PATCH_EXEC_ENSURE(context, blob != nullptr && size > 0, "the operator has no custom options");
  PATCH_EXEC_ENSURE(context, size <= UINT32_MAX, "the custom options are too large");
  char message[kMessageSize] = {0};
  const PatchExecStatus status = PatchExecValidate(blob, size, message, sizeof(message));
  PATCH_EXEC_ENSURE(context, status == kPatchExecOk, "invalid options (status %d): %s",
                    static_cast<int>(status), message);
  // Init's verdict and this one differ: the blob changed in between.
  TF_LITE_KERNEL_LOG(context, "PATCH_EXEC: the options were invalid in Init but not in Prepare");
  return kTfLiteError;
}

// Input 0 or output 0: int8 [1, h, w, c] as the options' tensor 0 or T-1; input 0 is
// [1, c, h, w] when the options set INPUT_NCHW (a folded TRANSPOSE). Both are planned in
// the arena (not constant: PATCH_EXEC would write into the model; not variable).
TfLiteStatus CheckActivation(TfLiteContext* context, const TfLiteTensor* tensor,
                             const uint8_t* options, int which, [[maybe_unused]] const char* what) {
  PATCH_EXEC_ENSURE(context, tensor != nullptr, "%s is missing", what);
  PATCH_EXEC_ENSURE(context, tensor->type == kTfLiteInt8, "%s is %s (type %d), not int8", what,
                    TypeName(tensor->type), static_cast<int>(tensor->type));
  int32_t h = 0;
  int32_t w = 0;
  int32_t c = 0;
  PatchExecIoShape(options, which, &h, &w, &c);
  const bool nchw = which == 0 && PatchExecInputNchw(options) != 0;
  [[maybe_unused]] const char* layout = nchw ? "[1, C, H, W] (INPUT_NCHW)" : "[1, H, W, C]";
  const int32_t expect[4] = {1, nchw ? c : h, nchw ? h : w, nchw ? w : c};
  const TfLiteIntArray* dims = tensor->dims;
  PATCH_EXEC_ENSURE(context, dims != nullptr && dims->size == 4, "%s has %d dimensions, not 4: %s",
                    what, dims == nullptr ? 0 : dims->size, layout);
  PATCH_EXEC_ENSURE(context,
                    dims->data[0] == expect[0] && dims->data[1] == expect[1] &&
                        dims->data[2] == expect[2] && dims->data[3] == expect[3],
                    "%s has shape [%d, %d, %d, %d]; the options say [1, %d, %d, %d], i.e. %s", what,
                    dims->data[0], dims->data[1], dims->data[2], dims->data[3],
                    static_cast<int>(expect[1]), static_cast<int>(expect[2]),
                    static_cast<int>(expect[3]), layout);
  PATCH_EXEC_ENSURE(context, tensor->allocation_type == kTfLiteArenaRw,
                    "%s is not planned in the arena: a constant stage input or output is not "
                    "allowed",
                    what);
  PATCH_EXEC_ENSURE(context, !tensor->is_variable, "%s is a variable tensor", what);
  const int64_t elements = static_cast<int64_t>(h) * w * c;  // < 2^31 (validated options)
  PATCH_EXEC_ENSURE(context,
                    static_cast<uint64_t>(tensor->bytes) == static_cast<uint64_t>(elements),
                    "%s is %u bytes; its shape needs %d", what,
                    static_cast<unsigned>(tensor->bytes), static_cast<int>(elements));
  return kTfLiteOk;
}

// A runtime input (operator input `index`: a MUL layer's per-channel operand or an ADD
// layer's addend): an int8 tensor of exactly `elements` values planned in the arena
// (computed by the operators before this one; its data is read only in Eval), not a
// variable and not the operator's output.
TfLiteStatus CheckRuntimeInput(TfLiteContext* context, const TfLiteNode* node, int index,
                               uint32_t elements) {
  PATCH_EXEC_ENSURE(context, node->inputs->data[index] != node->outputs->data[kStageOutput],
                    "input %d is the operator's output", index);
  MicroContext* micro_context = GetMicroContext(context);
  TfLiteTensor* tensor = micro_context->AllocateTempInputTensor(node, index);
  PATCH_EXEC_ENSURE(context, tensor != nullptr, "cannot read input %d", index);
  const TensorFacts f = FactsOf(*tensor);
  const bool arena = tensor->allocation_type == kTfLiteArenaRw;
  micro_context->DeallocateTempTfLiteTensor(tensor);
  PATCH_EXEC_ENSURE(context, f.type == kTfLiteInt8,
                    "input %d is %s (type %d); the options need int8", index, TypeName(f.type),
                    static_cast<int>(f.type));
  PATCH_EXEC_ENSURE(context, f.elements == static_cast<int64_t>(elements) && f.bytes == elements,
                    "input %d has %d elements; the options need %d", index,
                    static_cast<int>(f.elements), static_cast<int>(elements));
  PATCH_EXEC_ENSURE(context, arena && !f.variable,
                    "input %d is not planned in the arena: a MUL's per-channel input or an ADD's "
                    "addend is a runtime tensor",
                    index);
  return kTfLiteOk;
}

// Operator input `index` >= 1 against what the options need: type, element count
// (overflow-checked; with packed constants at least what every use reads), TFLM's byte size,
// constant data in the flatbuffer (not a variable, whose run-time data is an arena copy) and a
// model buffer of exactly that many bytes.
TfLiteStatus CheckConstant(TfLiteContext* context, const TfLiteNode* node, const uint8_t* options,
                           int index) {
  PatchExecConstType type = kPatchExecConstUnused;
  uint32_t elements = 0;
  const PatchExecStatus status =
      PatchExecConstantSpec(options, static_cast<uint32_t>(index), &type, &elements);
  PATCH_EXEC_ENSURE(context, status == kPatchExecOk, "no constant spec for input %d (status %d)",
                    index, static_cast<int>(status));
  if (type == kPatchExecConstUnused) {
    return kTfLiteOk;  // no layer reads it
  }
  PATCH_EXEC_ENSURE(context, node->inputs->data[index] >= 0,
                    "input %d is omitted but a layer reads it", index);
  if (type == kPatchExecConstRuntimeInt8) {
    return CheckRuntimeInput(context, node, index, elements);
  }
  MicroContext* micro_context = GetMicroContext(context);
  PATCH_EXEC_ENSURE(context, !IsCompressed(micro_context, node, index),
                    "input %d is compressed; PATCH_EXEC reads "
                    "plain constants only",
                    index);
  TfLiteTensor* tensor = micro_context->AllocateTempInputTensor(node, index);
  PATCH_EXEC_ENSURE(context, tensor != nullptr, "cannot read input %d", index);
  const TensorFacts f = FactsOf(*tensor);
  micro_context->DeallocateTempTfLiteTensor(tensor);

  const TfLiteType required = RequiredType(type);
  PATCH_EXEC_ENSURE(context, f.type == required, "input %d is %s (type %d); the options need %s",
                    index, TypeName(f.type), static_cast<int>(f.type), TypeName(required));
  PATCH_EXEC_ENSURE(context, f.elements >= 0,
                    "input %d has a negative dimension or more than 2^31 - 1 elements", index);
  // packed constants (version 3): shared by layers and operators, each use a part of it
  const bool packed = PatchExecConstantsPacked(options) != 0;
  PATCH_EXEC_ENSURE(context, !packed || f.elements >= static_cast<int64_t>(elements),
                    "input %d has %d elements; the options need at least %d", index,
                    static_cast<int>(f.elements), static_cast<int>(elements));
  PATCH_EXEC_ENSURE(context, packed || f.elements == static_cast<int64_t>(elements),
                    "input %d has %d elements; the options need %d", index,
                    static_cast<int>(f.elements), static_cast<int>(elements));
  const uint64_t nbytes = static_cast<uint64_t>(f.elements) * (required == kTfLiteInt8 ? 1 : 4);
  PATCH_EXEC_ENSURE(context, static_cast<uint64_t>(f.bytes) == nbytes,
                    "input %d is %u bytes; its shape needs %u", index,
                    static_cast<unsigned>(f.bytes), static_cast<unsigned>(nbytes));
  PATCH_EXEC_ENSURE(context, f.constant,
                    "input %d is not a constant tensor (its data must be in the model)", index);
  PATCH_EXEC_ENSURE(context, !f.variable,
                    "input %d is a variable tensor (TFLM runs it from a copy in the arena)", index);
  PATCH_EXEC_ENSURE(context, f.buffer_length == nbytes,
                    "input %d has a %u-byte buffer; its shape needs %u", index,
                    static_cast<unsigned>(f.buffer_length), static_cast<unsigned>(nbytes));
  return kTfLiteOk;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  TFLITE_DCHECK(context != nullptr);
  PATCH_EXEC_ENSURE(context, node->user_data != nullptr, "Init could not allocate its OpData");
  OpData* data = static_cast<OpData*>(node->user_data);
  if (data->options == nullptr) {
    return ReportInvalidOptions(context, node);
  }
  const uint8_t* options = data->options;

  const int num_inputs = static_cast<int>(PatchExecNumInputs(options));
  PATCH_EXEC_ENSURE(context, node->inputs->size == num_inputs,
                    "the operator has %d inputs; the options say "
                    "num_inputs = %d",
                    node->inputs->size, num_inputs);
  PATCH_EXEC_ENSURE(context, node->outputs->size == 1, "the operator has %d outputs, not 1",
                    node->outputs->size);
  PATCH_EXEC_ENSURE(context,
                    node->inputs->data[kStageInput] >= 0 && node->outputs->data[kStageOutput] >= 0,
                    "input 0 or output 0 is omitted");
  PATCH_EXEC_ENSURE(context, node->inputs->data[kStageInput] != node->outputs->data[kStageOutput],
                    "input 0 and output 0 are the same tensor");

  MicroContext* micro_context = GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, kStageInput);
  const TfLiteStatus input_ok = CheckActivation(context, input, options, 0, "input 0");
  if (input != nullptr) {
    micro_context->DeallocateTempTfLiteTensor(input);
  }
  TF_LITE_ENSURE_STATUS(input_ok);
  TfLiteTensor* output = micro_context->AllocateTempOutputTensor(node, kStageOutput);
  const TfLiteStatus output_ok = CheckActivation(context, output, options, 1, "output 0");
  if (output != nullptr) {
    micro_context->DeallocateTempTfLiteTensor(output);
  }
  TF_LITE_ENSURE_STATUS(output_ok);

  for (int i = 1; i < num_inputs; ++i) {
    TF_LITE_ENSURE_STATUS(CheckConstant(context, node, options, i));
  }
  InputSource source = {context, node};
  char message[kMessageSize] = {0};
  const PatchExecStatus constants =
      PatchExecCheckConstants(options, &GetConstantInput, &source, message, sizeof(message));
  PATCH_EXEC_ENSURE(context, constants == kPatchExecOk, "invalid constant input (status %d): %s",
                    static_cast<int>(constants), message);

  const uint32_t scratch_bytes = PatchExecScratchBytes(options);
  data->scratch_index = -1;
  if (scratch_bytes > 0) {
    int index = -1;
    TF_LITE_ENSURE_STATUS(micro_context->RequestScratchBufferInArena(scratch_bytes, &index));
    data->scratch_index = index;
  }
  return kTfLiteOk;
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  const OpData* data = static_cast<const OpData*>(node->user_data);
  const TfLiteEvalTensor* input = micro::GetEvalInput(context, node, kStageInput);
  TfLiteEvalTensor* output = micro::GetEvalOutput(context, node, kStageOutput);
  int8_t* scratch =
      data->scratch_index < 0
          ? nullptr
          : static_cast<int8_t*>(GetMicroContext(context)->GetScratchBuffer(data->scratch_index));
  InputSource source = {context, node};
  const PatchExecStatus status =
      PatchExecRun(data->options, micro::GetTensorData<int8_t>(input), &GetConstantInput, &source,
                   micro::GetTensorData<int8_t>(output), scratch);
  PATCH_EXEC_ENSURE(context, status == kPatchExecOk, "the core failed (status %d)",
                    static_cast<int>(status));
  return kTfLiteOk;
}

}  // namespace

PatchExecRegistration* Register_PATCH_EXEC() {
  static PatchExecRegistration registration = micro::RegisterOp(Init, Prepare, Eval);
  return &registration;
}

}  // namespace tflite
