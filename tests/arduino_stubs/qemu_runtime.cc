// The few Arduino and TFLM target functions the example sketch needs, over
// semihosting, so that the sketch runs unchanged on QEMU's mps2-an386
// (tests/test_arduino.py, when the Arduino_TensorFlowLite sources are given):
// Serial prints with printf, time stands still, and a sketch that halts
// (Halt() waits 5 s between its messages) ends the emulation with status 1.
#include <stdio.h>
#include <stdlib.h>

#include "Arduino.h"

StubSerial Serial;

void StubSerial::begin(unsigned long) {}
StubSerial::operator bool() const { return true; }
size_t StubSerial::print(const char* text) { return printf("%s", text); }
size_t StubSerial::print(char c) { return printf("%c", c); }
size_t StubSerial::print(unsigned char value, int) { return printf("%u", value); }
size_t StubSerial::print(int value, int) { return printf("%d", value); }
size_t StubSerial::print(unsigned int value, int) { return printf("%u", value); }
size_t StubSerial::print(long value, int) { return printf("%ld", value); }
size_t StubSerial::print(unsigned long value, int) { return printf("%lu", value); }
size_t StubSerial::print(double value, int digits) { return printf("%.*f", digits, value); }
size_t StubSerial::println(const char* text) { return printf("%s\n", text); }
size_t StubSerial::println(int value, int) { return printf("%d\n", value); }
size_t StubSerial::println(unsigned long value, int) { return printf("%lu\n", value); }
size_t StubSerial::println() { return printf("\n"); }

unsigned long millis() { return 0; }
unsigned long micros() { return 0; }
void delay(unsigned long ms) {
  if (ms >= 5000) {
    printf("m4: sketch halted\n");
    exit(1);
  }
}

// TFLM's target hooks (Arduino_TensorFlowLite defines them for the Nano only).
extern "C" void DebugLog(const char* s) { printf("%s", s); }
namespace tflite {
void InitializeTarget() {}
}  // namespace tflite

void setup();
void loop();

// Arduino's main: setup() once, then loop() (here: kLoops times).
int main() {
  constexpr int kLoops = 2;
  setup();
  for (int i = 0; i < kLoops; ++i) loop();
  printf("m4: done\n");
  return 0;
}
