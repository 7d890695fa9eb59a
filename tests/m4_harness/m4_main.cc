// Test program for PATCH_EXEC on a bare-metal Cortex-M4 (QEMU mps2-an386,
// semihosting): validates and runs every case of m4_data.cc with the core (its
// Arm DSP path) and prints, per case, the FNV-1a 32 checksum of the int8 output and the
// stack the core used (measured: the stack below the call is painted before and
// scanned after) and the instructions PatchExecRunArray executed: QEMU runs with
// `-icount shift=0` (virtual time advances 1 ns per instruction) and the board's
// CMSDK APB Timer0, a 32-bit down-counter at 25 MHz, is read around the call (one tick
// per 40 instructions; the count is ticks * 40). Output lines (parsed by tools/m4.py):
//   m4: calibration instructions I ticks T
//   m4: cases N
//   m4: op K bytes B fnv1a XXXXXXXX stack S ticks T
//   m4: done
// or "m4: error ..." and exit status 1.
#include <stdint.h>
#include <stdio.h>

#include "custom_ops/patch_exec/patch_exec_core.h"
#include "m4_cases.h"

namespace {

constexpr uint32_t kPaintBytes = 32 * 1024;  // stack painted below the call
constexpr uint32_t kPaint = 0xA5A5A5A5u;
constexpr size_t kMessageSize = 200;

// mps2-an386 CMSDK APB Timer0: CTRL (bit 0: enable), VALUE, RELOAD.
volatile uint32_t* const kTimer0 = reinterpret_cast<volatile uint32_t*>(0x40000000u);

void StartTimer() {
  kTimer0[0] = 0;  // stopped
  kTimer0[2] = 0xFFFFFFFFu;
  kTimer0[1] = 0xFFFFFFFFu;
  kTimer0[0] = 1;
}

uint32_t TimerValue() { return kTimer0[1]; }

// The counter checked on a loop of known length: kCalibrationLoops iterations of
// `subs; bne` (2 instructions each) between two reads.
constexpr uint32_t kCalibrationLoops = 1000000;

void Calibrate() {
  uint32_t n = kCalibrationLoops;
  const uint32_t start = TimerValue();
  __asm volatile(
      "1:\n\t"
      "subs %0, %0, #1\n\t"
      "bne 1b"
      : "+r"(n)
      :
      : "cc");
  const uint32_t ticks = start - TimerValue();
  printf("m4: calibration instructions %lu ticks %lu\n",
         static_cast<unsigned long>(2 * kCalibrationLoops), static_cast<unsigned long>(ticks));
}

uint32_t Fnv1a(const int8_t* data, uint32_t size) {
  uint32_t hash = 2166136261u;
  for (uint32_t i = 0; i < size; ++i) {
    hash ^= static_cast<uint8_t>(data[i]);
    hash *= 16777619u;
  }
  return hash;
}

const void* ArrayInput(void* context, uint32_t index) {
  return static_cast<const void* const*>(context)[index];
}

inline uint32_t* StackPointer() {
  uint32_t* sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  return sp;
}

int Fail(const M4Case& c, const char* what, const char* message) {
  printf("m4: error op %lu: %s%s%s\n", static_cast<unsigned long>(c.op_index), what,
         message[0] != '\0' ? ": " : "", message);
  return 1;
}

int RunCase(const M4Case& c, const int8_t* input, int8_t* output) {
  char message[kMessageSize] = "";
  if (PatchExecValidate(c.blob, c.blob_size, message, sizeof message) != kPatchExecOk) {
    return Fail(c, "invalid options", message);
  }
  if (PatchExecScratchBytes(c.blob) > kM4ScratchBytes || c.output_bytes > kM4OutputBytes ||
      input == nullptr) {
    return Fail(c, "the generated buffers do not fit the case", "");
  }
  void* context = const_cast<void*>(static_cast<const void*>(c.inputs));
  if (PatchExecCheckConstants(c.blob, ArrayInput, context, message, sizeof message) !=
      kPatchExecOk) {
    return Fail(c, "invalid constants", message);
  }
  // Paint the free stack below this frame (no call in between), run, find the
  // deepest word the call changed.
  volatile uint32_t* const top = StackPointer();
  volatile uint32_t* const bottom = top - kPaintBytes / 4;
  for (volatile uint32_t* p = bottom; p < top; ++p) *p = kPaint;
  const uint32_t start = TimerValue();
  const PatchExecStatus status =
      PatchExecRunArray(c.blob, input, c.inputs, c.num_inputs, output, g_m4_scratch);
  const uint32_t ticks = start - TimerValue();  // down-counter
  volatile uint32_t* deepest = top;
  for (volatile uint32_t* p = bottom; p < top; ++p) {
    if (*p != kPaint) {
      deepest = p;
      break;
    }
  }
  if (status != kPatchExecOk) return Fail(c, "PatchExecRunArray failed", "");
  const unsigned long stack = static_cast<unsigned long>(reinterpret_cast<uintptr_t>(top) -
                                                         reinterpret_cast<uintptr_t>(deepest));
  printf("m4: op %lu bytes %lu fnv1a %08lx stack %lu ticks %lu%s\n",
         static_cast<unsigned long>(c.op_index), static_cast<unsigned long>(c.output_bytes),
         static_cast<unsigned long>(Fnv1a(output, c.output_bytes)), stack,
         static_cast<unsigned long>(ticks), deepest == bottom ? " (painted area exhausted)" : "");
  return 0;
}

}  // namespace

int main() {
  StartTimer();
  Calibrate();
  printf("m4: cases %lu\n", static_cast<unsigned long>(kM4NumCases));
  const int8_t* previous = nullptr;
  for (uint32_t k = 0; k < kM4NumCases; ++k) {
    const M4Case& c = kM4Cases[k];
    int8_t* output = (k % 2 == 0) ? g_m4_output_a : g_m4_output_b;
    const int8_t* input = c.input != nullptr ? c.input : previous;
    if (RunCase(c, input, output) != 0) return 1;
    previous = output;
  }
  printf("m4: done\n");
  return 0;
}
