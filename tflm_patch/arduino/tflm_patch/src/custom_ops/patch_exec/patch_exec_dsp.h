// Copyright 2026 The tflm-patch Authors. Licensed under the Apache License, Version 2.0.
//
// The Arm DSP-extension path of the PATCH_EXEC inner loops (Cortex-M4/M7/M33...):
// dual 16-bit multiply-accumulates (SMLAD) on int8 values sign-extended in pairs
// (SXTB16, SXTAB16 with the input offset added in the same instruction) from 4-byte
// loads (memcpy: a single LDR on the M4, which allows unaligned words). Selected in
// patch_exec_simd.h where __ARM_FEATURE_DSP is defined; with PATCH_EXEC_EMULATE_DSP the
// same code runs on any host through portable definitions of the instructions (the x86
// tests build it that way), which are exact: every product and pair sum here fits the
// instructions' 16 x 16 -> 32-bit arithmetic, and accumulators wrap modulo 2^32 like the
// portable code's uint32 sums. Internal to the core.
//
// Naming of packed words: a word holds two int16 halves, "bottom" (bits 0..15) and
// "top" (bits 16..31). Even(v) = {byte 0, byte 2} of v, Odd(v) = {byte 1, byte 3}.
#ifndef TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_DSP_H_
#define TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_DSP_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "patch_exec_quant.h"  // PATCH_EXEC_ALWAYS_INLINE

#if defined(__ARM_FEATURE_DSP) && !defined(PATCH_EXEC_PORTABLE)
#define PATCH_EXEC_DSP 1
#define PATCH_EXEC_DSP_NATIVE 1
#elif defined(PATCH_EXEC_EMULATE_DSP)
#define PATCH_EXEC_DSP 1
#define PATCH_EXEC_DSP_NATIVE 0
#else
#define PATCH_EXEC_DSP 0
#define PATCH_EXEC_DSP_NATIVE 0
#endif

#if PATCH_EXEC_DSP

namespace patch_exec {
namespace dsp {

// Four int8 values as one word (little-endian: x[0] in bits 0..7).
PATCH_EXEC_ALWAYS_INLINE uint32_t Load4(const int8_t* x) {
  uint32_t v;
  memcpy(&v, x, 4);
  return v;
}

#if PATCH_EXEC_DSP_NATIVE

// {sext(v.byte0), sext(v.byte2)}
PATCH_EXEC_ALWAYS_INLINE uint32_t Even(uint32_t v) {
  uint32_t r;
  __asm("sxtb16 %0, %1" : "=r"(r) : "r"(v));
  return r;
}
// {sext(v.byte1), sext(v.byte3)}
PATCH_EXEC_ALWAYS_INLINE uint32_t Odd(uint32_t v) {
  uint32_t r;
  __asm("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}
// {a.bottom + sext(v.byte0), a.top + sext(v.byte2)}
PATCH_EXEC_ALWAYS_INLINE uint32_t EvenPlus(uint32_t a, uint32_t v) {
  uint32_t r;
  __asm("sxtab16 %0, %1, %2" : "=r"(r) : "r"(a), "r"(v));
  return r;
}
// {a.bottom + sext(v.byte1), a.top + sext(v.byte3)}
PATCH_EXEC_ALWAYS_INLINE uint32_t OddPlus(uint32_t a, uint32_t v) {
  uint32_t r;
  __asm("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(v));
  return r;
}
// acc + x.bottom * y.bottom + x.top * y.top
PATCH_EXEC_ALWAYS_INLINE uint32_t Smlad(uint32_t x, uint32_t y, uint32_t acc) {
  uint32_t r;
  __asm("smlad %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(y), "r"(acc));
  return r;
}
// acc + x.bottom * y.bottom
PATCH_EXEC_ALWAYS_INLINE uint32_t Smlabb(uint32_t x, uint32_t y, uint32_t acc) {
  uint32_t r;
  __asm("smlabb %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(y), "r"(acc));
  return r;
}
// acc + x.top * y.bottom
PATCH_EXEC_ALWAYS_INLINE uint32_t Smlatb(uint32_t x, uint32_t y, uint32_t acc) {
  uint32_t r;
  __asm("smlatb %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(y), "r"(acc));
  return r;
}
// acc + x.top * y.top
PATCH_EXEC_ALWAYS_INLINE uint32_t Smlatt(uint32_t x, uint32_t y, uint32_t acc) {
  uint32_t r;
  __asm("smlatt %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(y), "r"(acc));
  return r;
}

#else  // emulated: the same results from portable C++

PATCH_EXEC_ALWAYS_INLINE int32_t Bottom(uint32_t v) { return static_cast<int16_t>(v & 0xFFFFu); }
PATCH_EXEC_ALWAYS_INLINE int32_t Top(uint32_t v) { return static_cast<int16_t>(v >> 16); }
PATCH_EXEC_ALWAYS_INLINE int32_t Byte(uint32_t v, int k) {
  return static_cast<int8_t>((v >> (8 * k)) & 0xFFu);
}
PATCH_EXEC_ALWAYS_INLINE uint32_t Pack(int32_t bottom, int32_t top) {
  return (static_cast<uint32_t>(bottom) & 0xFFFFu) | (static_cast<uint32_t>(top) << 16);
}
PATCH_EXEC_ALWAYS_INLINE uint32_t Even(uint32_t v) { return Pack(Byte(v, 0), Byte(v, 2)); }
PATCH_EXEC_ALWAYS_INLINE uint32_t Odd(uint32_t v) { return Pack(Byte(v, 1), Byte(v, 3)); }
PATCH_EXEC_ALWAYS_INLINE uint32_t EvenPlus(uint32_t a, uint32_t v) {
  return Pack(Bottom(a) + Byte(v, 0), Top(a) + Byte(v, 2));
}
PATCH_EXEC_ALWAYS_INLINE uint32_t OddPlus(uint32_t a, uint32_t v) {
  return Pack(Bottom(a) + Byte(v, 1), Top(a) + Byte(v, 3));
}
PATCH_EXEC_ALWAYS_INLINE uint32_t Smlad(uint32_t x, uint32_t y, uint32_t acc) {
  return acc + static_cast<uint32_t>(Bottom(x) * Bottom(y)) +
         static_cast<uint32_t>(Top(x) * Top(y));
}
PATCH_EXEC_ALWAYS_INLINE uint32_t Smlabb(uint32_t x, uint32_t y, uint32_t acc) {
  return acc + static_cast<uint32_t>(Bottom(x) * Bottom(y));
}
PATCH_EXEC_ALWAYS_INLINE uint32_t Smlatb(uint32_t x, uint32_t y, uint32_t acc) {
  return acc + static_cast<uint32_t>(Top(x) * Bottom(y));
}
PATCH_EXEC_ALWAYS_INLINE uint32_t Smlatt(uint32_t x, uint32_t y, uint32_t acc) {
  return acc + static_cast<uint32_t>(Top(x) * Top(y));
}

#endif  // PATCH_EXEC_DSP_NATIVE

#if PATCH_EXEC_DSP_NATIVE
// clamp(v + offset, -128, 127) without int32 overflow: QADD saturates, SSAT clamps.
PATCH_EXEC_ALWAYS_INLINE int32_t AddSat8(int32_t v, int32_t offset) {
  int32_t r;
  __asm("qadd %0, %1, %2\n\tssat %0, #8, %0" : "=&r"(r) : "r"(v), "r"(offset));
  return r;
}
#else
PATCH_EXEC_ALWAYS_INLINE int32_t AddSat8(int32_t v, int32_t offset) {
  const int64_t s = static_cast<int64_t>(v) + offset;
  return static_cast<int32_t>(s < -128 ? -128 : (s > 127 ? 127 : s));
}
#endif

// {v, v} (|v| < 2^15)
PATCH_EXEC_ALWAYS_INLINE uint32_t Twice(int32_t v) {
  return (static_cast<uint32_t>(v) & 0xFFFFu) * 0x10001u;
}

// The two filter words of 4 int8 weights: Even and Odd.
struct Pair {
  uint32_t even;
  uint32_t odd;
};
PATCH_EXEC_ALWAYS_INLINE Pair Split(const int8_t* p) {
  const uint32_t v = Load4(p);
  Pair r;
  r.even = Even(v);
  r.odd = Odd(v);
  return r;
}

// acc + dot(x[0..3], w) for w = Split(w[0..3]).
PATCH_EXEC_ALWAYS_INLINE uint32_t Dot4(const int8_t* x, const Pair& w, uint32_t acc) {
  const uint32_t v = Load4(x);
  return Smlad(Odd(v), w.odd, Smlad(Even(v), w.even, acc));
}

// Sum of n int8 values (n <= 2^16; the caller adds the rest), four per step: returns the
// values done.
PATCH_EXEC_NOINLINE inline int32_t SumRun(const int8_t* w, int32_t n, uint32_t* sum) {
  const uint32_t ones = 0x00010001u;
  uint32_t s = 0;
  int32_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint32_t v = Load4(w + i);
    s = Smlad(Odd(v), ones, Smlad(Even(v), ones, s));
  }
  *sum += s;
  return i;
}

// acc[2 * i + j] += dot(x_i, w_j) over n values (n <= 2^16), NX pixels, NW filters;
// the tail (n % 4) in portable code by the caller.
template <int NX, int NW>
PATCH_EXEC_NOINLINE inline int32_t DotRun(const int8_t* xa, const int8_t* xb, const int8_t* wa,
                                          const int8_t* wb, int32_t n, uint32_t* acc) {
  uint32_t s00 = acc[0], s01 = acc[1], s10 = acc[2], s11 = acc[3];
  int32_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const Pair u = Split(wa + i);
    s00 = Dot4(xa + i, u, s00);
    if (NX == 2) s10 = Dot4(xb + i, u, s10);
    if (NW == 2) {
      const Pair v = Split(wb + i);
      s01 = Dot4(xa + i, v, s01);
      if (NX == 2) s11 = Dot4(xb + i, v, s11);
    }
  }
  acc[0] = s00;
  acc[1] = s01;
  acc[2] = s10;
  acc[3] = s11;
  return i;
}

// acc[q] += dot(x + q * step, w) over n values (n <= 2^16) for four pixels; returns the
// values done (a multiple of 4), the caller does the tail.
PATCH_EXEC_NOINLINE inline int32_t DotRun4(const int8_t* x, ptrdiff_t step, const int8_t* w,
                                           int32_t n, uint32_t* acc) {
  uint32_t s0 = acc[0], s1 = acc[1], s2 = acc[2], s3 = acc[3];
  const int8_t* x1 = x + step;
  const int8_t* x2 = x1 + step;
  const int8_t* x3 = x2 + step;
  int32_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const Pair u = Split(w + i);
    s0 = Dot4(x + i, u, s0);
    s1 = Dot4(x1 + i, u, s1);
    s2 = Dot4(x2 + i, u, s2);
    s3 = Dot4(x3 + i, u, s3);
  }
  acc[0] = s0;
  acc[1] = s1;
  acc[2] = s2;
  acc[3] = s3;
  return i;
}

// acc[q] = bias + dot(x + q * step, w) over c4 values (a multiple of 4) for q < NP
// pixels (1, 2 or 4) sharing the weight words (the index runs from -c4 up to 0).
template <int NP>
PATCH_EXEC_ALWAYS_INLINE void PointwisePixels(const int8_t* x, ptrdiff_t step, const int8_t* w,
                                              int32_t c4, uint32_t bias, uint32_t* acc) {
  const int8_t* x0 = x + c4;
  const int8_t* x1 = x0 + step;
  const int8_t* x2 = x1 + step;
  const int8_t* x3 = x2 + step;
  const int8_t* wc = w + c4;
  uint32_t s0 = bias, s1 = bias, s2 = bias, s3 = bias;
  for (int32_t i = -c4; i != 0; i += 4) {
    const Pair u = Split(wc + i);
    s0 = Dot4(x0 + i, u, s0);
    if (NP >= 2) s1 = Dot4(x1 + i, u, s1);
    if (NP == 4) {
      s2 = Dot4(x2 + i, u, s2);
      s3 = Dot4(x3 + i, u, s3);
    }
  }
  acc[0] = s0;
  if (NP >= 2) acc[1] = s1;
  if (NP == 4) {
    acc[2] = s2;
    acc[3] = s3;
  }
}

#if PATCH_EXEC_DSP_NATIVE
// PointwisePixels<4> in assembly: GCC runs out of registers for the 14 values the loop
// keeps (four sums, five pointers, the index, four unpacked words) and spills; this is
// 24 instructions per 16 MACs.
template <>
PATCH_EXEC_ALWAYS_INLINE void PointwisePixels<4>(const int8_t* x, ptrdiff_t step, const int8_t* w,
                                                 int32_t c4, uint32_t bias, uint32_t* acc) {
  const int8_t* x0 = x + c4;
  const int8_t* x1 = x0 + step;
  const int8_t* x2 = x1 + step;
  const int8_t* x3 = x2 + step;
  const int8_t* wc = w + c4;
  uint32_t s0 = bias, s1 = bias, s2 = bias, s3 = bias;
  int32_t i = -c4;
  uint32_t we, wo, xv, t;
  if (i != 0) {
    __asm volatile(
        "1:\n\t"
        "ldr %[wo], [%[w], %[i]]\n\t"
        "ldr %[xv], [%[x0], %[i]]\n\t"
        "sxtb16 %[we], %[wo]\n\t"
        "sxtb16 %[wo], %[wo], ror #8\n\t"
        "sxtb16 %[t], %[xv]\n\t"
        "sxtb16 %[xv], %[xv], ror #8\n\t"
        "smlad %[s0], %[t], %[we], %[s0]\n\t"
        "smlad %[s0], %[xv], %[wo], %[s0]\n\t"
        "ldr %[xv], [%[x1], %[i]]\n\t"
        "sxtb16 %[t], %[xv]\n\t"
        "sxtb16 %[xv], %[xv], ror #8\n\t"
        "smlad %[s1], %[t], %[we], %[s1]\n\t"
        "smlad %[s1], %[xv], %[wo], %[s1]\n\t"
        "ldr %[xv], [%[x2], %[i]]\n\t"
        "sxtb16 %[t], %[xv]\n\t"
        "sxtb16 %[xv], %[xv], ror #8\n\t"
        "smlad %[s2], %[t], %[we], %[s2]\n\t"
        "smlad %[s2], %[xv], %[wo], %[s2]\n\t"
        "ldr %[xv], [%[x3], %[i]]\n\t"
        "sxtb16 %[t], %[xv]\n\t"
        "sxtb16 %[xv], %[xv], ror #8\n\t"
        "smlad %[s3], %[t], %[we], %[s3]\n\t"
        "smlad %[s3], %[xv], %[wo], %[s3]\n\t"
        "adds %[i], %[i], #4\n\t"
        "bne 1b"
        : [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3), [i] "+r"(i), [we] "=&r"(we),
          [wo] "=&r"(wo), [xv] "=&r"(xv), [t] "=&r"(t)
        : [x0] "r"(x0), [x1] "r"(x1), [x2] "r"(x2), [x3] "r"(x3), [w] "r"(wc)
        : "cc", "memory");
  }
  acc[0] = s0;
  acc[1] = s1;
  acc[2] = s2;
  acc[3] = s3;
}
#endif  // PATCH_EXEC_DSP_NATIVE

// A 1x1 convolution with one output channel over a run of n pixels: acc[p] = bias +
// dot(x + p * step, w) over cin values (cin <= 2^16), four pixels at a time.
PATCH_EXEC_NOINLINE inline void PointwiseRow(const int8_t* x, ptrdiff_t step, const int8_t* w,
                                             int32_t cin, uint32_t bias, int32_t n, uint32_t* acc) {
  const int32_t c4 = cin & ~3;
  int32_t p = 0;
  for (; p + 4 <= n; p += 4) PointwisePixels<4>(x + p * step, step, w, c4, bias, acc + p);
  if (p + 2 <= n) {
    PointwisePixels<2>(x + p * step, step, w, c4, bias, acc + p);
    p += 2;
  }
  if (p < n) PointwisePixels<1>(x + p * step, step, w, c4, bias, acc + p);
  for (int32_t i = c4; i < cin; ++i) {  // the last cin % 4 values of every pixel
    const int32_t wi = w[i];
    for (int32_t q = 0; q < n; ++q) acc[q] += static_cast<uint32_t>(wi * x[q * step + i]);
  }
}

// The weights of a 3x3 depthwise filter of one channel, per kernel row fy:
// side[fy] = {w[fy][0], w[fy][2]}, mid[fy] = {w[fy][1], 0}.
struct Filter3x3 {
  uint32_t side[3];
  uint32_t mid[3];
};

// taps: tap t of the channel at w[t * tap_stride].
inline Filter3x3 MakeFilter3x3(const int8_t* w, size_t tap_stride) {
  Filter3x3 f;
  for (int fy = 0; fy < 3; ++fy) {
    const size_t t = static_cast<size_t>(fy) * 3;
    f.side[fy] = (static_cast<uint32_t>(w[t * tap_stride]) & 0xFFFFu) |
                 (static_cast<uint32_t>(w[(t + 2) * tap_stride]) << 16);
    f.mid[fy] = static_cast<uint32_t>(w[(t + 1) * tap_stride]) & 0xFFFFu;
  }
  return f;
}

// One channel plane, 3x3 window, dilation 1, stride 1: acc[p] = bias + the window sums
// of pixels p < n, whose taps start at x + p (rows row_stride apart). Two pixels per
// step read x[p .. p + 3] of each row: Even = {x0, x2}, Odd = {x1, x3}; pixel p is
// Even . side + x1 * mid, pixel p + 1 is Odd . side + x2 * mid.
PATCH_EXEC_NOINLINE inline void DepthwiseRow3x3S1(const int8_t* x, ptrdiff_t row_stride,
                                                  const Filter3x3& f, uint32_t bias, int32_t n,
                                                  uint32_t* acc) {
  int32_t p = 0;
  for (; p + 2 <= n; p += 2) {
    uint32_t a0 = bias, a1 = bias;
    const int8_t* r = x + p;
    for (int fy = 0; fy < 3; ++fy) {
      const uint32_t v = Load4(r);
      const uint32_t e = Even(v), o = Odd(v);
      a0 = Smlabb(o, f.mid[fy], Smlad(e, f.side[fy], a0));
      a1 = Smlatb(e, f.mid[fy], Smlad(o, f.side[fy], a1));
      r += row_stride;
    }
    acc[p] = a0;
    acc[p + 1] = a1;
  }
  if (p < n) {  // the last pixel: x[p .. p + 2] only (x[p + 3] may be past the range)
    uint32_t a0 = bias;
    const int8_t* r = x + p;
    for (int fy = 0; fy < 3; ++fy) {
      const uint32_t e =
          (static_cast<uint32_t>(r[0]) & 0xFFFFu) | (static_cast<uint32_t>(r[2]) << 16);
      a0 = Smlabb(static_cast<uint32_t>(r[1]), f.mid[fy], Smlad(e, f.side[fy], a0));
      r += row_stride;
    }
    acc[p] = a0;
  }
}

// As DepthwiseRow3x3S1 with stride 2: pixel p reads x[2p .. 2p + 2] of each row
// (x[2p + 3] is the next pixel's second tap, inside the range except for the last
// pixel).
PATCH_EXEC_NOINLINE inline void DepthwiseRow3x3S2(const int8_t* x, ptrdiff_t row_stride,
                                                  const Filter3x3& f, uint32_t bias, int32_t n,
                                                  uint32_t* acc) {
  for (int32_t p = 0; p < n; ++p) {
    uint32_t a = bias;
    const int8_t* r = x + 2 * p;
    for (int fy = 0; fy < 3; ++fy) {
      uint32_t e;
      uint32_t o;
      if (p + 1 < n) {
        const uint32_t v = Load4(r);
        e = Even(v);
        o = Odd(v);
      } else {
        e = (static_cast<uint32_t>(r[0]) & 0xFFFFu) | (static_cast<uint32_t>(r[2]) << 16);
        o = static_cast<uint32_t>(r[1]) & 0xFFFFu;
      }
      a = Smlabb(o, f.mid[fy], Smlad(e, f.side[fy], a));
      r += row_stride;
    }
    acc[p] = a;
  }
}

// The taps of one depthwise output pixel: `rows` x `cols` of them, the first input at x
// (the pixel's channel 0 for the chunk), rows `row_stride` bytes apart, columns `step`
// bytes apart; weights from w (the chunk's first channel), rows `w_row` and columns
// `w_step` bytes apart.
struct TapGrid {
  const int8_t* x;
  ptrdiff_t row_stride;
  ptrdiff_t step;
  const int8_t* w;
  ptrdiff_t w_row;
  ptrdiff_t w_step;
  int32_t rows;
  int32_t cols;
};

// Depth multiplier 1, four channels c .. c + 3 (c < cn, cn - c >= 4 each): acc[c] +=
// sum over the taps of w[c] * (x[c] + offset) (without kOffset, offset 0: interior
// pixels). Needs step == w_step (dilation 1: both are the channel count) so that one
// register advances both pointers. Returns the channels done, a multiple of 4.
template <bool kOffset>
PATCH_EXEC_NOINLINE inline int32_t DepthwiseChannels4(const TapGrid& t, int32_t offset, int32_t cn,
                                                      uint32_t* acc) {
  const uint32_t off = Twice(offset);
  const ptrdiff_t step = t.step;
  int32_t c = 0;
  for (; c + 4 <= cn; c += 4) {
    uint32_t a0 = acc[c], a1 = acc[c + 1], a2 = acc[c + 2], a3 = acc[c + 3];
    const int8_t* xr = t.x + c;
    const int8_t* wr = t.w + c;
    for (int32_t fy = 0; fy < t.rows; ++fy) {
      const int8_t* x = xr;
      const int8_t* w = wr;
      for (int32_t fx = t.cols; fx > 0; --fx) {
        const uint32_t xv = Load4(x), wv = Load4(w);
        const uint32_t xe = kOffset ? EvenPlus(off, xv) : Even(xv);
        const uint32_t we = Even(wv);
        a0 = Smlabb(xe, we, a0);
        a2 = Smlatt(xe, we, a2);
        const uint32_t xo = kOffset ? OddPlus(off, xv) : Odd(xv);
        const uint32_t wo = Odd(wv);
        a1 = Smlabb(xo, wo, a1);
        a3 = Smlatt(xo, wo, a3);
        x += step;
        w += step;
      }
      xr += t.row_stride;
      wr += t.w_row;
    }
    acc[c] = a0;
    acc[c + 1] = a1;
    acc[c + 2] = a2;
    acc[c + 3] = a3;
  }
  return c;
}

// A depth multiplier that is a multiple of 4, four output channels c .. c + 3 sharing
// input channel ic0 + c / dm (the chunk starts at a multiple of 4): acc[c] += sum over
// the taps of w[c] * (x[ic] + offset). Returns the channels done, a multiple of 4.
template <bool kOffset>
PATCH_EXEC_NOINLINE inline int32_t DepthwiseBroadcast4(const TapGrid& t, int32_t offset,
                                                       int32_t oc0, int32_t dm, int32_t cn,
                                                       uint32_t* acc) {
  int32_t c = 0;
  for (; c + 4 <= cn; c += 4) {
    uint32_t a0 = acc[c], a1 = acc[c + 1], a2 = acc[c + 2], a3 = acc[c + 3];
    const int8_t* xr = t.x + (oc0 + c) / dm;
    const int8_t* wr = t.w + c;
    for (int32_t fy = 0; fy < t.rows; ++fy) {
      const int8_t* x = xr;
      const int8_t* w = wr;
      for (int32_t fx = t.cols; fx > 0; --fx) {
        const uint32_t v = static_cast<uint32_t>(kOffset ? *x + offset : *x);  // |v| <= 383
        const uint32_t wv = Load4(w);
        const uint32_t we = Even(wv);
        a0 = Smlabb(we, v, a0);
        a2 = Smlatb(we, v, a2);
        const uint32_t wo = Odd(wv);
        a1 = Smlabb(wo, v, a1);
        a3 = Smlatb(wo, v, a3);
        x += t.step;
        w += t.w_step;
      }
      xr += t.row_stride;
      wr += t.w_row;
    }
    acc[c] = a0;
    acc[c + 1] = a1;
    acc[c + 2] = a2;
    acc[c + 3] = a3;
  }
  return c;
}

// The weights of up to 16 channels of a 3x3 depthwise filter (multiplier 1), unpacked
// once per channel chunk: group g (channels 4g .. 4g + 3), tap t = 3 * fy + fx:
// w[g][2t] = Even, w[g][2t + 1] = Odd of the tap's four weights (288 bytes).
struct Chunk3x3 {
  uint32_t w[4][18];
};

// w: tap 0 of the chunk's first channel; tap t at t * tap_stride; n4: groups (<= 4).
inline void Unpack3x3(const int8_t* w, size_t tap_stride, int32_t n4, Chunk3x3* out) {
  for (int32_t g = 0; g < n4; ++g) {
    for (int t = 0; t < 9; ++t) {
      const uint32_t v = Load4(w + static_cast<size_t>(t) * tap_stride + 4 * g);
      out->w[g][2 * t] = Even(v);
      out->w[g][2 * t + 1] = Odd(v);
    }
  }
}

// One tap of four channels: a_k += x_k * w_k.
PATCH_EXEC_ALWAYS_INLINE void Tap4(const int8_t* x, const uint32_t* w, uint32_t& a0, uint32_t& a1,
                                   uint32_t& a2, uint32_t& a3) {
  const uint32_t v = Load4(x);
  const uint32_t xe = Even(v), xo = Odd(v);
  a0 = Smlabb(xe, w[0], a0);
  a2 = Smlatt(xe, w[0], a2);
  a1 = Smlabb(xo, w[1], a1);
  a3 = Smlatt(xo, w[1], a3);
}

// An interior pixel of a 3x3 depthwise convolution (multiplier 1, dilation 1), groups of
// four channels g < n4: acc[4g + k] += the raw window sum. x: the first tap of the
// chunk's first channel; taps `step` bytes apart in a row, rows `row_stride` apart.
PATCH_EXEC_NOINLINE inline void Depthwise3x3Interior(const int8_t* x, ptrdiff_t row_stride,
                                                     ptrdiff_t step, const Chunk3x3& f, int32_t n4,
                                                     uint32_t* acc) {
  for (int32_t g = 0; g < n4; ++g) {
    uint32_t* a = acc + 4 * g;
    uint32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    const uint32_t* w = f.w[g];
    const int8_t* r = x + 4 * g;
    for (int fy = 0; fy < 3; ++fy) {
      Tap4(r, w, a0, a1, a2, a3);
      Tap4(r + step, w + 2, a0, a1, a2, a3);
      Tap4(r + 2 * step, w + 4, a0, a1, a2, a3);
      r += row_stride;
      w += 6;
    }
    a[0] = a0;
    a[1] = a1;
    a[2] = a2;
    a[3] = a3;
  }
}

// One tap of four output channels reading one input value v (a depth multiplier that is
// a multiple of 4): a_k += v * w_k.
PATCH_EXEC_ALWAYS_INLINE void TapBroadcast4(int32_t v, const uint32_t* w, uint32_t& a0,
                                            uint32_t& a1, uint32_t& a2, uint32_t& a3) {
  const uint32_t u = static_cast<uint32_t>(v);
  a0 = Smlabb(w[0], u, a0);
  a2 = Smlatb(w[0], u, a2);
  a1 = Smlabb(w[1], u, a1);
  a3 = Smlatb(w[1], u, a3);
}

// Depthwise3x3Interior for a depth multiplier dm that is a multiple of 4 (the chunk
// starts at output channel oc0, a multiple of 4): group g reads input channel
// (oc0 + 4g) / dm; x: the first tap's channel 0.
PATCH_EXEC_NOINLINE inline void Depthwise3x3InteriorBroadcast(const int8_t* x, ptrdiff_t row_stride,
                                                              ptrdiff_t step, const Chunk3x3& f,
                                                              int32_t n4, int32_t oc0, int32_t dm,
                                                              uint32_t* acc) {
  for (int32_t g = 0; g < n4; ++g) {
    uint32_t* a = acc + 4 * g;
    uint32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    const uint32_t* w = f.w[g];
    const int8_t* r = x + (oc0 + 4 * g) / dm;
    for (int fy = 0; fy < 3; ++fy) {
      TapBroadcast4(r[0], w, a0, a1, a2, a3);
      TapBroadcast4(r[step], w + 2, a0, a1, a2, a3);
      TapBroadcast4(r[2 * step], w + 4, a0, a1, a2, a3);
      r += row_stride;
      w += 6;
    }
    a[0] = a0;
    a[1] = a1;
    a[2] = a2;
    a[3] = a3;
  }
}

// Requantization when the activation range is all of int8 (FullRange): Finish is
// AddSat8. One channel's parameters for a run of n accumulators (stored `stride` bytes
// apart), or channel c's for acc[c], c < n.
PATCH_EXEC_NOINLINE inline void RequantizeRunFull(const uint32_t* acc, int32_t n, Requant r,
                                                  int32_t offset, int8_t* dst, ptrdiff_t stride) {
  for (int32_t p = 0; p < n; ++p) {
    dst[p * stride] = static_cast<int8_t>(AddSat8(MultiplyByQuantized(Wrap(acc[p]), r), offset));
  }
}

PATCH_EXEC_NOINLINE inline void RequantizeChannelsFull(const uint32_t* acc, const ChunkQuant& q,
                                                       int32_t n, int32_t offset, int8_t* dst) {
  for (int32_t c = 0; c < n; ++c) {
    dst[c] = static_cast<int8_t>(AddSat8(RequantOne(Wrap(acc[c]), q, c), offset));
  }
}

}  // namespace dsp
}  // namespace patch_exec

#endif  // PATCH_EXEC_DSP

#endif  // TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_DSP_H_
