// The instruction counter of the speed programs on QEMU's mps2-an386: Timer0,
// a CMSDK APB timer (32-bit down-counter clocked by the 25 MHz peripheral
// clock). Run with `-icount shift=0`, QEMU's virtual time advances 1 ns per
// executed instruction, so one tick of this timer is 40 instructions. With
// RELOAD = 0xFFFFFFFF it wraps after 2^32 ticks (171.8 s of virtual time,
// 1.7e11 instructions); differences taken modulo 2^32 are exact below that.
#ifndef TFLM_PATCH_TOOLS_M4_SPEED_BOARD_COUNTER_H_
#define TFLM_PATCH_TOOLS_M4_SPEED_BOARD_COUNTER_H_

#include <stdint.h>

#define M4_SPEED_TIMER0_BASE 0x40000000u
#define M4_SPEED_TIMER_CTRL (*(volatile uint32_t*)(M4_SPEED_TIMER0_BASE + 0x0u))
#define M4_SPEED_TIMER_VALUE (*(volatile uint32_t*)(M4_SPEED_TIMER0_BASE + 0x4u))
#define M4_SPEED_TIMER_RELOAD (*(volatile uint32_t*)(M4_SPEED_TIMER0_BASE + 0x8u))

// The timer's clock (mps2.c: SYSCLK_FRQ) and the instructions per tick at
// -icount shift=0 (1e9 ns per second / 25e6 ticks per second).
#define M4_SPEED_TICKS_PER_SECOND 25000000u
#define M4_SPEED_INSTRUCTIONS_PER_TICK 40u

// Starts Timer0 counting down from 0xFFFFFFFF, no interrupt.
static inline void BoardCounterStart(void) {
  M4_SPEED_TIMER_CTRL = 0u;
  M4_SPEED_TIMER_RELOAD = 0xFFFFFFFFu;  // also loads VALUE
  M4_SPEED_TIMER_CTRL = 1u;             // EN
}

// Ticks since BoardCounterStart, counting up.
static inline uint32_t BoardCounterTicks(void) { return 0xFFFFFFFFu - M4_SPEED_TIMER_VALUE; }

#endif  // TFLM_PATCH_TOOLS_M4_SPEED_BOARD_COUNTER_H_
