// Test stand-in for the Arduino_OV767X library's header: the declarations the
// example sketch uses (the library's API: begin(resolution, format, fps,
// camera) returns 0 on failure; GRAYSCALE gives one byte per pixel).
#ifndef TFLM_PATCH_TESTS_ARDUINO_STUBS_ARDUINO_OV767X_H_
#define TFLM_PATCH_TESTS_ARDUINO_STUBS_ARDUINO_OV767X_H_

#include "Arduino.h"

enum { YUV422 = 0, RGB444 = 1, RGB565 = 2, GRAYSCALE = 4 };
enum { OV7670 = 0, OV7675 = 1 };
enum { VGA = 0, CIF = 1, QVGA = 2, QCIF = 3, QQVGA = 4 };

class OV767X {
 public:
  int begin(int resolution, int format, int fps, int camera_name = OV7670);
  int width() const;
  int height() const;
  void readFrame(void* buffer);
};

extern OV767X Camera;

#endif  // TFLM_PATCH_TESTS_ARDUINO_STUBS_ARDUINO_OV767X_H_
