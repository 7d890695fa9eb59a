// Test stand-in for Arduino_TensorFlowLite's TensorFlowLite.h, which is empty
// but for making the Arduino IDE build that library. With TFLM's own tree the
// TFLM headers are found through the include path instead.
#ifndef TFLM_PATCH_TESTS_ARDUINO_STUBS_TENSORFLOWLITE_H_
#define TFLM_PATCH_TESTS_ARDUINO_STUBS_TENSORFLOWLITE_H_

#include "Arduino.h"

#endif  // TFLM_PATCH_TESTS_ARDUINO_STUBS_TENSORFLOWLITE_H_
