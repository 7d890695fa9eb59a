// Instructions per Invoke() of one model on QEMU's mps2-an386 (Cortex-M4) with
// Arduino_TensorFlowLite (TFLM of February 2023, CMSIS-NN kernels), read from
// the board counter (board_counter.h) when QEMU runs with -icount shift=0.
//
// The build (tools/m4_speed.py) links it with speed_data.S (the model and one
// input per model input, as g_model / g_inputs) and speed_ops.cc (RegisterSpeedOps:
// every operator kind the model uses, from `tflm-patch export`'s model_ops.h).
//
// Runs: (1) Invoke twice on the input without a profiler, printing the ticks of
// each, the outputs after each and arena_used_bytes(); (2) a second interpreter
// on the same arena with TFLM's MicroProfiler, Invoke once, its per-operator
// events (MicroProfiler::Log) and its total. Lines start with "speed: " (the
// profiler's lines are TFLM's own); the last is "speed: done".
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <new>

#include "board_counter.h"
#include "speed_ops.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_profiler.h"
#include "tensorflow/lite/micro/micro_time.h"
#include "tensorflow/lite/schema/schema_generated.h"

// speed_data.S
extern "C" const unsigned char g_model[];
extern "C" const unsigned char* const g_inputs[];
extern "C" const uint32_t g_input_bytes[];
extern "C" const uint32_t g_num_inputs;

namespace {

constexpr size_t kArenaSize = M4_SPEED_ARENA_BYTES;  // -D by the build
alignas(16) uint8_t tensor_arena[kArenaSize];
alignas(tflite::MicroInterpreter) uint8_t interpreter_storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroProfiler profiler;

int Fail(const char* message) {
  printf("speed: error %s\n", message);
  return 1;
}

bool SetInputs(tflite::MicroInterpreter& interpreter) {
  if (interpreter.inputs_size() != g_num_inputs) return false;
  for (uint32_t i = 0; i < g_num_inputs; ++i) {
    TfLiteTensor* input = interpreter.input(i);
    if (input == nullptr || input->bytes != g_input_bytes[i]) return false;
    memcpy(input->data.raw, g_inputs[i], g_input_bytes[i]);
  }
  return true;
}

// Invoke() between two reads of the board counter; false when it fails.
bool TimedInvoke(tflite::MicroInterpreter& interpreter, uint32_t* ticks) {
  const uint32_t start = BoardCounterTicks();
  const TfLiteStatus status = interpreter.Invoke();
  *ticks = BoardCounterTicks() - start;
  return status == kTfLiteOk;
}

void PrintOutputs(tflite::MicroInterpreter& interpreter, int run) {
  for (size_t k = 0; k < interpreter.outputs_size(); ++k) {
    const TfLiteTensor* output = interpreter.output(k);
    printf("speed: run %d output %u type %d bytes %u hex ", run, static_cast<unsigned>(k),
           static_cast<int>(output->type), static_cast<unsigned>(output->bytes));
    const uint8_t* data = reinterpret_cast<const uint8_t*>(output->data.raw);
    for (size_t i = 0; i < output->bytes; ++i) printf("%02x", data[i]);
    printf("\n");
  }
}

tflite::MicroInterpreter* NewInterpreter(const tflite::Model* model,
                                         const tflite::MicroOpResolver& resolver,
                                         tflite::MicroProfilerInterface* with_profiler) {
  return new (interpreter_storage)
      tflite::MicroInterpreter(model, resolver, tensor_arena, kArenaSize, nullptr, with_profiler);
}

// Run 1 and 2: no profiler.
int PlainRuns(const tflite::Model* model, const tflite::MicroOpResolver& resolver) {
  tflite::MicroInterpreter* interpreter = NewInterpreter(model, resolver, nullptr);
  if (interpreter->AllocateTensors() != kTfLiteOk) return Fail("AllocateTensors() failed");
  for (int run = 1; run <= 2; ++run) {
    if (!SetInputs(*interpreter)) return Fail("the inputs do not match the model's");
    uint32_t ticks = 0;
    if (!TimedInvoke(*interpreter, &ticks)) return Fail("Invoke() failed");
    printf("speed: run %d ticks %lu\n", run, static_cast<unsigned long>(ticks));
    PrintOutputs(*interpreter, run);
  }
  printf("speed: arena_used_bytes %u\n", static_cast<unsigned>(interpreter->arena_used_bytes()));
  interpreter->~MicroInterpreter();
  return 0;
}

// Run 3: with TFLM's MicroProfiler (one event per operator).
int ProfiledRun(const tflite::Model* model, const tflite::MicroOpResolver& resolver) {
  tflite::MicroInterpreter* interpreter = NewInterpreter(model, resolver, &profiler);
  if (interpreter->AllocateTensors() != kTfLiteOk) return Fail("AllocateTensors() failed");
  if (!SetInputs(*interpreter)) return Fail("the inputs do not match the model's");
  profiler.ClearEvents();
  uint32_t ticks = 0;
  if (!TimedInvoke(*interpreter, &ticks)) return Fail("Invoke() failed");
  printf("speed: run 3 ticks %lu profiler_total_ticks %lu\n", static_cast<unsigned long>(ticks),
         static_cast<unsigned long>(profiler.GetTotalTicks()));
  PrintOutputs(*interpreter, 3);
  printf("speed: profiler log begin\n");
  profiler.Log();
  printf("speed: profiler log end\n");
  interpreter->~MicroInterpreter();
  return 0;
}

}  // namespace

// TFLM's target hooks: the log goes to semihosting stdout, the profiler's time
// is the board counter.
extern "C" void DebugLog(const char* s) { fputs(s, stdout); }
namespace tflite {
uint32_t ticks_per_second() { return M4_SPEED_TICKS_PER_SECOND; }
uint32_t GetCurrentTimeTicks() { return BoardCounterTicks(); }
}  // namespace tflite

int main() {
  BoardCounterStart();
  printf("speed: instructions_per_tick %u\n", M4_SPEED_INSTRUCTIONS_PER_TICK);
  const tflite::Model* model = tflite::GetModel(g_model);
  if (model->version() != TFLITE_SCHEMA_VERSION) return Fail("schema version");
  static SpeedOpResolver resolver;
  if (RegisterSpeedOps(resolver) != kTfLiteOk) return Fail("RegisterSpeedOps() failed");
  int status = PlainRuns(model, resolver);
  if (status == 0) status = ProfiledRun(model, resolver);
  if (status == 0) printf("speed: done\n");
  return status;
}
