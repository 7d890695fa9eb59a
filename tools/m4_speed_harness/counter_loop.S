@ Counter validation: a loop of known instruction count between two reads of
@ the board counter (Timer0 VALUE of mps2-an386, board_counter.h).
@
@ uint32_t CounterLoop(uint32_t n): n > 0 iterations of a 5-instruction body
@ (3 adds, subs, bne) between two loads of VALUE; returns how far the
@ down-counter moved. Instructions executed after the first load up to and
@ including the second: 5 * n + 1 (counter_main.c, kBody and kExtra).
        .syntax unified
        .thumb
        .text
        .global CounterLoop
        .type CounterLoop, %function
        .thumb_func
CounterLoop:
        push    {r4, r5}
        ldr     r2, =0x40000004         @ Timer0 VALUE
        mov     r4, #0
        ldr     r3, [r2]                @ first read
1:      adds    r4, r4, #1
        adds    r4, r4, #2
        adds    r4, r4, #3
        subs    r0, r0, #1
        bne     1b
        ldr     r1, [r2]                @ second read
        subs    r0, r3, r1              @ down-counter: first - second
        pop     {r4, r5}
        bx      lr
        .size CounterLoop, . - CounterLoop
        .ltorg
