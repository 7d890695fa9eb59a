// Bare-metal start-up for the PATCH_EXEC test program on QEMU's mps2-an386
// (Cortex-M4 with FPU): vector table, reset handler (FPU on, .data copied,
// .bss zeroed, constructors, semihosting handles), fault handler. Linked with
// -nostartfiles --specs=rdimon.specs (newlib's semihosting syscalls).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);

void Reset_Handler(void);
void Fault_Handler(void);

// -nostartfiles leaves out crti/crtn and crtbegin: newlib's __libc_init_array
// calls _init/_fini, C++ static objects with destructors register with
// __dso_handle.
void _init(void) {}
void _fini(void) {}
void* __dso_handle = 0;

#define CPACR (*(volatile uint32_t*)0xE000ED88u)

void Reset_Handler(void) {
  CPACR |= 0xFu << 20;  // CP10, CP11: full access (the FPU)
  __asm volatile("dsb\n\tisb" ::: "memory");
  const uint32_t* from = &_sidata;
  for (uint32_t* to = &_sdata; to < &_edata;) *to++ = *from++;
  for (uint32_t* to = &_sbss; to < &_ebss;) *to++ = 0;
  __libc_init_array();
  initialise_monitor_handles();
  exit(main());
}

void Fault_Handler(void) {
  printf("m4: error fault (HardFault/MemManage/BusFault/UsageFault)\n");
  exit(3);
}

// Initial stack pointer, then the handlers of the Cortex-M exceptions 1..15
// (NMI, HardFault, MemManage, BusFault, UsageFault, 4 reserved, SVCall,
// DebugMonitor, reserved, PendSV, SysTick).
#define FAULT ((uintptr_t)&Fault_Handler)
__attribute__((section(".isr_vector"), used))
const uintptr_t kVectorTable[16] = {(uintptr_t)&_estack,
                                    (uintptr_t)&Reset_Handler,
                                    FAULT,
                                    FAULT,
                                    FAULT,
                                    FAULT,
                                    FAULT,
                                    0,
                                    0,
                                    0,
                                    0,
                                    FAULT,
                                    FAULT,
                                    0,
                                    FAULT,
                                    FAULT};
