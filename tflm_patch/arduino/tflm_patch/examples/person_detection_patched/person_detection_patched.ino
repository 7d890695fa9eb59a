// person_detection_patched: TFLM's person detection model (MobileNetV1 0.25,
// 96x96 grayscale) with its memory-heavy first stage rewritten into the
// PATCH_EXEC operator by `tflm-patch convert`, on an Arduino Nano 33 BLE Sense
// (FQBN arduino:mbed_nano:nano33ble).
//
// Input: a frame of the OV7675 camera of the Tiny Machine Learning Kit
// (Arduino_OV767X library) when the camera answers; otherwise the bundled test
// image (test_image.h; its origin is printed at start). Build without the
// camera library: define TFLM_PATCH_USE_CAMERA 0 below.
//
// Serial Monitor (115200 baud), once per inference:
//   person 113 (0.94)  no person -113 (0.06)  arena used 24016 of 27696 B
//   latency 123456 us
// (person.bmp gives person 113, no person -113, as TFLM's own test.)
//
// The model files (model_data.*, model_settings.h, model_ops.h, test_image.*)
// are generated into this folder by `tflm-patch export --arduino` (README of
// the tflm-patch repository, section "Arduino").
#if !__has_include("model_data.h")
#error "Generate the model files first: tflm-patch export --arduino (README)"
#endif

#include <TensorFlowLite.h>
#include <stdint.h>
#include <string.h>
#include <tflm_patch.h>

#ifndef TFLM_PATCH_USE_CAMERA
#define TFLM_PATCH_USE_CAMERA 1
#endif
#if TFLM_PATCH_USE_CAMERA
#include <Arduino_OV767X.h>
#endif

#include "model_data.h"
#include "model_ops.h"
#include "model_settings.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/system_setup.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "test_image.h"

namespace {

// person_detect's output: [no person, person].
constexpr int kNoPersonIndex = 0;
constexpr int kPersonIndex = 1;
constexpr unsigned long kSerialWaitMs = 5000;
constexpr unsigned long kTestImagePauseMs = 1000;

alignas(16) uint8_t tensor_arena[kTensorArenaSize];
tflite::MicroInterpreter* interpreter = nullptr;
bool use_camera = false;

#if TFLM_PATCH_USE_CAMERA
// QQVGA grayscale: one byte per pixel; the model input is its center crop.
constexpr int kFrameWidth = 160;
constexpr int kFrameHeight = 120;
uint8_t frame[kFrameWidth * kFrameHeight];

// Center crop of the frame into the int8 input, quantized as TFLM's person
// detection example does: q = round(pixel / 255 / scale) + zero_point (every
// channel gets the gray value).
bool FrameToInput(TfLiteTensor* input) {
  const int height = input->dims->data[1];
  const int width = input->dims->data[2];
  const int channels = input->dims->data[3];
  if (height > kFrameHeight || width > kFrameWidth) return false;
  const int top = (kFrameHeight - height) / 2;
  const int left = (kFrameWidth - width) / 2;
  const float scale = input->params.scale;
  const int32_t zero_point = input->params.zero_point;
  int8_t* out = input->data.int8;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const float gray = frame[(top + y) * kFrameWidth + left + x] / 255.0f;
      int32_t q = static_cast<int32_t>(gray / scale + 0.5f) + zero_point;
      q = q < -128 ? -128 : (q > 127 ? 127 : q);
      for (int c = 0; c < channels; ++c) *out++ = static_cast<int8_t>(q);
    }
  }
  return true;
}
#endif  // TFLM_PATCH_USE_CAMERA

void Halt(const char* message) {
  while (true) {
    Serial.print("error: ");
    Serial.println(message);
    delay(5000);
  }
}

// Dequantized score of an int8 output value.
float Probability(const TfLiteTensor* output, int index) {
  return (output->data.int8[index] - output->params.zero_point) * output->params.scale;
}

void PrintScore(const char* label, const TfLiteTensor* output, int index) {
  Serial.print(label);
  Serial.print(static_cast<int>(output->data.int8[index]));  // not a char
  Serial.print(" (");
  Serial.print(Probability(output, index), 2);
  Serial.print(")  ");
}

}  // namespace

void setup() {
  tflite::InitializeTarget();
  Serial.begin(115200);
  const unsigned long start = millis();
  while (!Serial && millis() - start < kSerialWaitMs) {
  }

  const tflite::Model* model = tflite::GetModel(g_model);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    Halt("the model's schema version is not the one this TFLM reads");
  }
  static ModelOpResolver resolver;
  if (RegisterModelOps(resolver) != kTfLiteOk) {
    Halt("registering the model's operators failed");
  }
  static tflite::MicroInterpreter static_interpreter(model, resolver, tensor_arena,
                                                     kTensorArenaSize);
  interpreter = &static_interpreter;
  if (interpreter->AllocateTensors() != kTfLiteOk) {
    Halt("AllocateTensors() failed (arena too small?)");
  }
  TfLiteTensor* input = interpreter->input(0);
  if (input->type != kTfLiteInt8 || input->bytes != kTestImageBytes) {
    Halt("the model input is not the int8 tensor test_image.h was made for");
  }

#if TFLM_PATCH_USE_CAMERA
  use_camera = input->dims->size == 4 && Camera.begin(QQVGA, GRAYSCALE, 1, OV7675) != 0;
#endif
  Serial.print("tflm_patch person detection, arena ");
  Serial.print(kTensorArenaSize);
  Serial.print(" B (predicted ");
  Serial.print(kTensorArenaPredicted);
  Serial.println(" B + margin)");
  Serial.print("input: ");
  Serial.println(use_camera ? "OV7675 camera, 160x120 grayscale, center crop"
                            : "no camera: the bundled test image");
  if (!use_camera) {
    Serial.print("test image: ");
    Serial.println(g_test_image_origin);
  }
}

void loop() {
  TfLiteTensor* input = interpreter->input(0);
  bool have_input = false;
#if TFLM_PATCH_USE_CAMERA
  if (use_camera) {
    Camera.readFrame(frame);
    have_input = FrameToInput(input);
  }
#endif
  if (!have_input) memcpy(input->data.int8, g_test_image, kTestImageBytes);

  const unsigned long start = micros();
  const TfLiteStatus status = interpreter->Invoke();
  const unsigned long latency = micros() - start;
  if (status != kTfLiteOk) Halt("Invoke() failed");

  const TfLiteTensor* output = interpreter->output(0);
  if (output->bytes == 2) {
    PrintScore("person ", output, kPersonIndex);
    PrintScore("no person ", output, kNoPersonIndex);
  } else {
    for (size_t i = 0; i < output->bytes; ++i) {
      PrintScore("score ", output, static_cast<int>(i));
    }
  }
  Serial.print("arena used ");
  Serial.print(static_cast<unsigned long>(interpreter->arena_used_bytes()));
  Serial.print(" of ");
  Serial.print(kTensorArenaSize);
  Serial.print(" B  latency ");
  Serial.print(latency);
  Serial.println(" us");
  if (!use_camera) delay(kTestImagePauseMs);
}
