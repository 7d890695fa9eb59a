// tflm_patch for Arduino: the PATCH_EXEC custom operator of TensorFlow Lite
// Micro (patch-based inference, docs/patch_exec.md of the tflm-patch project).
//
// Include it after <TensorFlowLite.h> (Arduino_TensorFlowLite) and register the
// operator with the op resolver:
//   resolver.AddCustom("PATCH_EXEC", tflite::Register_PATCH_EXEC());
// (`tflm-patch export --arduino` writes model_ops.h, whose RegisterModelOps()
// does that and registers the model's builtin operators.)
//
// The sources under custom_ops/ are copies of the package's csrc/custom_ops/
// (tools/sync_arduino.py keeps them identical; .cc files become .cpp, which
// every Arduino IDE compiles).
#ifndef TFLM_PATCH_ARDUINO_TFLM_PATCH_H_
#define TFLM_PATCH_ARDUINO_TFLM_PATCH_H_

#include "custom_ops/patch_exec/tflm/patch_exec_op.h"

#endif  // TFLM_PATCH_ARDUINO_TFLM_PATCH_H_
