// Counter validation program (tests/test_m4_speed.py): CounterLoop (counter_loop.S)
// for a few iteration counts; prints the ticks the board counter moved and the
// instructions executed between its two reads, known exactly from the code.
#include <stdint.h>
#include <stdio.h>

#include "board_counter.h"

extern uint32_t CounterLoop(uint32_t n);

static const uint32_t kBody = 5;   // instructions per iteration
static const uint32_t kExtra = 1;  // the second load of VALUE
static const uint32_t kIterations[] = {1000u, 100000u, 1000000u};

int main(void) {
  BoardCounterStart();
  for (unsigned k = 0; k < sizeof(kIterations) / sizeof(kIterations[0]); ++k) {
    const uint32_t n = kIterations[k];
    const uint32_t ticks = CounterLoop(n);
    printf("counter: iterations %lu expected %lu ticks %lu\n", (unsigned long)n,
           (unsigned long)(kBody * n + kExtra), (unsigned long)ticks);
  }
  printf("counter: instructions_per_tick %u\n", M4_SPEED_INSTRUCTIONS_PER_TICK);
  printf("counter: done\n");
  return 0;
}
