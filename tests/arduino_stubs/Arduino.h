// Test stand-in for the Arduino core's Arduino.h: declarations of only what the
// example sketch uses, written for the compile checks of tests/test_arduino.py
// (never linked). Print's overloads mirror the Arduino API's (print(char)
// prints a character, the integer overloads take a base).
#ifndef TFLM_PATCH_TESTS_ARDUINO_STUBS_ARDUINO_H_
#define TFLM_PATCH_TESTS_ARDUINO_STUBS_ARDUINO_H_

#include <stddef.h>
#include <stdint.h>

class StubSerial {
 public:
  void begin(unsigned long baud);
  explicit operator bool() const;
  size_t print(const char* text);
  size_t print(char c);
  size_t print(unsigned char value, int base = 10);
  size_t print(int value, int base = 10);
  size_t print(unsigned int value, int base = 10);
  size_t print(long value, int base = 10);
  size_t print(unsigned long value, int base = 10);
  size_t print(double value, int digits = 2);
  size_t println(const char* text);
  size_t println(int value, int base = 10);
  size_t println(unsigned long value, int base = 10);
  size_t println();
};

extern StubSerial Serial;

unsigned long millis();
unsigned long micros();
void delay(unsigned long ms);

#endif  // TFLM_PATCH_TESTS_ARDUINO_STUBS_ARDUINO_H_
