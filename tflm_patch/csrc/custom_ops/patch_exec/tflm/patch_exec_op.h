// TFLM kernel of the PATCH_EXEC custom operator (docs/patch_exec.md): the glue
// between the TFLM interpreter and the portable core (patch_exec_core.h).
//
// Register it with
//   resolver.AddCustom("PATCH_EXEC", tflite::Register_PATCH_EXEC());
//
// Builds against TFLM from February 2023 (Arduino_TensorFlowLite) and against
// current TFLM. Compile with -std=c++17 and the defines of the TFLM it links
// with: TF_LITE_STATIC_MEMORY, and USE_TFLM_COMPRESSION when that TFLM was
// built with compression support (it changes the layout of MicroContext).
#ifndef TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_TFLM_PATCH_EXEC_OP_H_
#define TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_TFLM_PATCH_EXEC_OP_H_

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"

namespace tflite {

// The registration struct of this TFLM: TfLiteRegistration until May 2023,
// TFLMRegistration (micro_common.h) since. Whatever micro::RegisterOp returns
// is what MicroMutableOpResolver::AddCustom takes, in every version.
using PatchExecRegistration = decltype(micro::RegisterOp(nullptr, nullptr, nullptr));

// The PATCH_EXEC kernel (init, prepare, invoke). The pointee lives for the
// whole program.
PatchExecRegistration* Register_PATCH_EXEC();

}  // namespace tflite

#endif  // TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_TFLM_PATCH_EXEC_OP_H_
