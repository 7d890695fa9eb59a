// Registerer for the tflite-micro Python wheel: its Interpreter looks this
// function up by name (dlsym) when created with
//   custom_op_registerers=["PatchExecRegisterer"]
// after the library holding it was loaded with RTLD_GLOBAL.
#include "custom_ops/patch_exec/tflm/patch_exec_op.h"
#include "python/tflite_micro/python_ops_resolver.h"

extern "C" bool PatchExecRegisterer(tflite::PythonOpsResolver* resolver) {
  return resolver != nullptr &&
         resolver->AddCustom("PATCH_EXEC", tflite::Register_PATCH_EXEC()) == kTfLiteOk;
}
