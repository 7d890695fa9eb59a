// The op resolver of the speed program: room for every operator kind a model
// uses; RegisterSpeedOps (speed_ops.cc, generated per set of operator kinds by
// tools/m4_speed.py from `tflm-patch export`'s model_ops.h) registers them.
#ifndef TFLM_PATCH_TOOLS_M4_SPEED_SPEED_OPS_H_
#define TFLM_PATCH_TOOLS_M4_SPEED_SPEED_OPS_H_

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

constexpr unsigned int kSpeedMaxOps = 64;
using SpeedOpResolver = tflite::MicroMutableOpResolver<kSpeedMaxOps>;

TfLiteStatus RegisterSpeedOps(SpeedOpResolver& resolver);

#endif  // TFLM_PATCH_TOOLS_M4_SPEED_SPEED_OPS_H_
