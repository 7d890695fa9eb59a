// Copyright 2026 The tflm-patch Authors. Licensed under the Apache License, Version 2.0.
//
// Inner loops of the PATCH_EXEC kernels: int8 dot products (two pixels x two filters)
// and the depthwise per-channel multiply-accumulate. The one place that selects the
// path: the Arm DSP extension (patch_exec_dsp.h) where __ARM_FEATURE_DSP is defined or
// PATCH_EXEC_EMULATE_DSP asks for it on any host, else SSE2 (baseline on x86-64) when
// available, else portable C++; define PATCH_EXEC_PORTABLE to force the portable code
// (the tests run all three). Integer results are identical on every path: products are
// exact in 16 bits (|x * w| <= 2^14) and 32-bit sums wrap like the uint32 sums of the
// portable code. Internal to the core.
#ifndef TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_SIMD_H_
#define TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_SIMD_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "patch_exec_dsp.h"
#include "patch_exec_quant.h"

#if defined(__SSE2__) && !defined(PATCH_EXEC_PORTABLE) && !PATCH_EXEC_DSP
#define PATCH_EXEC_SSE2 1
#include <emmintrin.h>
#else
#define PATCH_EXEC_SSE2 0
#endif

namespace patch_exec {

// acc[2 * i + j] += dot(x_i, w_j) over n values (n <= 2^16 so that no int32 partial
// sum overflows), for NX pixels and NW filters (1 or 2 each; unused pointers are
// ignored).
template <int NX, int NW>
inline void DotRunPortable(const int8_t* xa, const int8_t* xb, const int8_t* wa, const int8_t* wb,
                           int32_t n, uint32_t* acc) {
  int32_t s00 = 0, s01 = 0, s10 = 0, s11 = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t x0 = xa[i];
    const int32_t w0 = wa[i];
    s00 += x0 * w0;
    if (NW == 2) s01 += x0 * wb[i];
    if (NX == 2) {
      const int32_t x1 = xb[i];
      s10 += x1 * w0;
      if (NW == 2) s11 += x1 * wb[i];
    }
  }
  acc[0] += static_cast<uint32_t>(s00);
  acc[1] += static_cast<uint32_t>(s01);
  acc[2] += static_cast<uint32_t>(s10);
  acc[3] += static_cast<uint32_t>(s11);
}

// acc[i] += dot(x + i * step, w) over n values (n <= 2^16), for four pixels i < 4
// `step` bytes apart and one filter (a 1x1 convolution with one output channel).
inline void DotRun4Portable(const int8_t* x, ptrdiff_t step, const int8_t* w, int32_t n,
                            uint32_t* acc) {
  int32_t s[4] = {0, 0, 0, 0};
  for (int32_t i = 0; i < n; ++i) {
    const int32_t wi = w[i];
    for (int q = 0; q < 4; ++q) s[q] += x[q * step + i] * wi;
  }
  for (int q = 0; q < 4; ++q) acc[q] += static_cast<uint32_t>(s[q]);
}

// acc[c] += w[c] * x[c] for c < n (no input offset: interior depthwise pixels).
inline void MacChannelsPortable(const int8_t* x, const int8_t* w, int32_t n, uint32_t* acc) {
  for (int32_t c = 0; c < n; ++c) acc[c] += static_cast<uint32_t>(w[c] * x[c]);
}

// acc[c] += w[c] * (x[c] + offset) for c < n (|offset| <= 255).
inline void MacChannelsOffsetPortable(const int8_t* x, const int8_t* w, int32_t n, int32_t offset,
                                      uint32_t* acc) {
  for (int32_t c = 0; c < n; ++c) acc[c] += static_cast<uint32_t>(w[c] * (x[c] + offset));
}

// acc[c] += w[c] * v for c < n (|v| <= 383: an input value plus its offset).
inline void MacBroadcastPortable(int32_t v, const int8_t* w, int32_t n, uint32_t* acc) {
  for (int32_t c = 0; c < n; ++c) acc[c] += static_cast<uint32_t>(w[c] * v);
}

// acc[p] += w * x[p * step] for p < n (|w * x| <= 2^14: a depthwise tap of interior
// pixels of one channel).
inline void MacStridedPortable(const int8_t* x, size_t step, int32_t w, int32_t n, uint32_t* acc) {
  for (int32_t p = 0; p < n; ++p) {
    acc[p] += static_cast<uint32_t>(w * x[static_cast<size_t>(p) * step]);
  }
}

// dst[c] = the int8 output of accumulator acc[c] (c < n): requantized with channel
// c's parameters, offset, clamped.
inline void RequantizeChannelsPortable(const uint32_t* acc, const ChunkQuant& q, int32_t c0,
                                       int32_t n, const OutputStage& os, int8_t* dst) {
  for (int32_t c = c0; c < n; ++c) dst[c] = Finish(RequantOne(Wrap(acc[c]), q, c), os);
}

#if PATCH_EXEC_SSE2

inline __m128i Load16(const int8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
inline __m128i Load8(const int8_t* p) {
  return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
}
// Sign-extended int16 halves of 16 int8 values.
inline __m128i Low16(__m128i v) { return _mm_srai_epi16(_mm_unpacklo_epi8(v, v), 8); }
inline __m128i High16(__m128i v) { return _mm_srai_epi16(_mm_unpackhi_epi8(v, v), 8); }
// Sign-extended int32 quarters of 8 int16 values.
inline __m128i Low32(__m128i v) { return _mm_srai_epi32(_mm_unpacklo_epi16(v, v), 16); }
inline __m128i High32(__m128i v) { return _mm_srai_epi32(_mm_unpackhi_epi16(v, v), 16); }

// {sum(a), sum(b), sum(c), sum(d)} of four vectors of four int32.
inline __m128i HorizontalSums(__m128i a, __m128i b, __m128i c, __m128i d) {
  const __m128i ab = _mm_add_epi32(_mm_unpacklo_epi32(a, b), _mm_unpackhi_epi32(a, b));
  const __m128i cd = _mm_add_epi32(_mm_unpacklo_epi32(c, d), _mm_unpackhi_epi32(c, d));
  return _mm_add_epi32(_mm_unpacklo_epi64(ab, cd), _mm_unpackhi_epi64(ab, cd));
}

template <int NX, int NW>
inline void DotRun(const int8_t* xa, const int8_t* xb, const int8_t* wa, const int8_t* wb,
                   int32_t n, uint32_t* acc) {
  __m128i s00 = _mm_setzero_si128(), s01 = s00, s10 = s00, s11 = s00;
  int32_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i a = Load16(xa + i), u = Load16(wa + i);
    const __m128i a_lo = Low16(a), a_hi = High16(a), u_lo = Low16(u), u_hi = High16(u);
    s00 = _mm_add_epi32(s00, _mm_add_epi32(_mm_madd_epi16(a_lo, u_lo), _mm_madd_epi16(a_hi, u_hi)));
    __m128i v_lo = u_lo, v_hi = u_hi;
    if (NW == 2) {
      const __m128i v = Load16(wb + i);
      v_lo = Low16(v);
      v_hi = High16(v);
      s01 =
          _mm_add_epi32(s01, _mm_add_epi32(_mm_madd_epi16(a_lo, v_lo), _mm_madd_epi16(a_hi, v_hi)));
    }
    if (NX == 2) {
      const __m128i b = Load16(xb + i);
      const __m128i b_lo = Low16(b), b_hi = High16(b);
      s10 =
          _mm_add_epi32(s10, _mm_add_epi32(_mm_madd_epi16(b_lo, u_lo), _mm_madd_epi16(b_hi, u_hi)));
      if (NW == 2) {
        s11 = _mm_add_epi32(s11,
                            _mm_add_epi32(_mm_madd_epi16(b_lo, v_lo), _mm_madd_epi16(b_hi, v_hi)));
      }
    }
  }
  if (i + 8 <= n) {
    const __m128i a = Low16(Load8(xa + i)), u = Low16(Load8(wa + i));
    s00 = _mm_add_epi32(s00, _mm_madd_epi16(a, u));
    const __m128i v = NW == 2 ? Low16(Load8(wb + i)) : u;
    if (NW == 2) s01 = _mm_add_epi32(s01, _mm_madd_epi16(a, v));
    if (NX == 2) {
      const __m128i b = Low16(Load8(xb + i));
      s10 = _mm_add_epi32(s10, _mm_madd_epi16(b, u));
      if (NW == 2) s11 = _mm_add_epi32(s11, _mm_madd_epi16(b, v));
    }
    i += 8;
  }
  uint32_t sums[4];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), HorizontalSums(s00, s01, s10, s11));
  for (int q = 0; q < 4; ++q) acc[q] += sums[q];
  if (i < n) {
    DotRunPortable<NX, NW>(xa + i, xb + i, wa + i, wb + i, n - i, acc);
  }
}

inline void DotRun4(const int8_t* x, ptrdiff_t step, const int8_t* w, int32_t n, uint32_t* acc) {
  __m128i s[4] = {_mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128(),
                  _mm_setzero_si128()};
  int32_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i u = Load16(w + i);
    const __m128i u_lo = Low16(u), u_hi = High16(u);
    for (int q = 0; q < 4; ++q) {
      const __m128i a = Load16(x + q * step + i);
      s[q] = _mm_add_epi32(
          s[q], _mm_add_epi32(_mm_madd_epi16(Low16(a), u_lo), _mm_madd_epi16(High16(a), u_hi)));
    }
  }
  if (i + 8 <= n) {
    const __m128i u = Low16(Load8(w + i));
    for (int q = 0; q < 4; ++q) {
      s[q] = _mm_add_epi32(s[q], _mm_madd_epi16(Low16(Load8(x + q * step + i)), u));
    }
    i += 8;
  }
  uint32_t sums[4];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), HorizontalSums(s[0], s[1], s[2], s[3]));
  for (int q = 0; q < 4; ++q) acc[q] += sums[q];
  if (i < n) DotRun4Portable(x + i, step, w + i, n - i, acc);
}

inline void MacChannels(const int8_t* x, const int8_t* w, int32_t n, uint32_t* acc) {
  int32_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m128i a = Load16(x + c), u = Load16(w + c);
    const __m128i lo = _mm_mullo_epi16(Low16(a), Low16(u));  // exact: |x * w| <= 2^14
    const __m128i hi = _mm_mullo_epi16(High16(a), High16(u));
    __m128i* out = reinterpret_cast<__m128i*>(acc + c);
    _mm_storeu_si128(out, _mm_add_epi32(_mm_loadu_si128(out), Low32(lo)));
    _mm_storeu_si128(out + 1, _mm_add_epi32(_mm_loadu_si128(out + 1), High32(lo)));
    _mm_storeu_si128(out + 2, _mm_add_epi32(_mm_loadu_si128(out + 2), Low32(hi)));
    _mm_storeu_si128(out + 3, _mm_add_epi32(_mm_loadu_si128(out + 3), High32(hi)));
  }
  if (c + 8 <= n) {
    const __m128i p = _mm_mullo_epi16(Low16(Load8(x + c)), Low16(Load8(w + c)));
    __m128i* out = reinterpret_cast<__m128i*>(acc + c);
    _mm_storeu_si128(out, _mm_add_epi32(_mm_loadu_si128(out), Low32(p)));
    _mm_storeu_si128(out + 1, _mm_add_epi32(_mm_loadu_si128(out + 1), High32(p)));
    c += 8;
  }
  if (c < n) MacChannelsPortable(x + c, w + c, n - c, acc + c);
}

// Step 1 loads exactly the 8 values it uses (never past x[n - 1]); products are exact
// in int16.
inline void MacStrided(const int8_t* x, size_t step, int32_t w, int32_t n, uint32_t* acc) {
  int32_t p = 0;
  if (step == 1) {
    const __m128i weight = _mm_set1_epi16(static_cast<int16_t>(w));
    for (; p + 8 <= n; p += 8) {
      const __m128i prod = _mm_mullo_epi16(Low16(Load8(x + p)), weight);
      __m128i* out = reinterpret_cast<__m128i*>(acc + p);
      _mm_storeu_si128(out, _mm_add_epi32(_mm_loadu_si128(out), Low32(prod)));
      _mm_storeu_si128(out + 1, _mm_add_epi32(_mm_loadu_si128(out + 1), High32(prod)));
    }
  }
  if (p < n) MacStridedPortable(x + static_cast<size_t>(p) * step, step, w, n - p, acc + p);
}

inline void AddTo(uint32_t* acc, __m128i v) {
  __m128i* p = reinterpret_cast<__m128i*>(acc);
  _mm_storeu_si128(p, _mm_add_epi32(_mm_loadu_si128(p), v));
}

// (x + offset) * w as pairs {x, offset} . {w, w} in pmaddwd: exact, since every value
// and |offset * w| <= 255 * 128 fit in int16.
inline void MacChannelsOffset(const int8_t* x, const int8_t* w, int32_t n, int32_t offset,
                              uint32_t* acc) {
  const __m128i off = _mm_set1_epi16(static_cast<int16_t>(offset));
  int32_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m128i a = Low16(Load8(x + c)), u = Low16(Load8(w + c));
    AddTo(acc + c, _mm_madd_epi16(_mm_unpacklo_epi16(a, off), _mm_unpacklo_epi16(u, u)));
    AddTo(acc + c + 4, _mm_madd_epi16(_mm_unpackhi_epi16(a, off), _mm_unpackhi_epi16(u, u)));
  }
  if (c < n) MacChannelsOffsetPortable(x + c, w + c, n - c, offset, acc + c);
}

// w * v as pairs {w, 0} . {v, 0} in pmaddwd (|v| <= 383 fits in int16).
inline void MacBroadcast(int32_t v, const int8_t* w, int32_t n, uint32_t* acc) {
  const __m128i value = _mm_set1_epi32(v & 0xFFFF);
  const __m128i zero = _mm_setzero_si128();
  int32_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m128i u = Low16(Load8(w + c));
    AddTo(acc + c, _mm_madd_epi16(_mm_unpacklo_epi16(u, zero), value));
    AddTo(acc + c + 4, _mm_madd_epi16(_mm_unpackhi_epi16(u, zero), value));
  }
  if (c < n) MacBroadcastPortable(v, w + c, n - c, acc + c);
}

inline __m128i LoadLanes(const void* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

// Lanes {d0 of a, d0 of b, d2 of a, d2 of b} (low words of 64-bit products).
inline __m128i LowWords(__m128i even, __m128i odd) {
  return _mm_unpacklo_epi32(_mm_shuffle_epi32(even, _MM_SHUFFLE(3, 1, 2, 0)),
                            _mm_shuffle_epi32(odd, _MM_SHUFFLE(3, 1, 2, 0)));
}

// a * b modulo 2^32 per lane (SSE2 has no pmulld).
inline __m128i MulLow32(__m128i a, __m128i b) {
  return LowWords(_mm_mul_epu32(a, b), _mm_mul_epu32(_mm_srli_epi64(a, 32), _mm_srli_epi64(b, 32)));
}

// SatRoundDoublingHighMul per lane: bits 31..62 of a * b + 2^30 (signed product from
// pmuludq with the high words corrected by - [a < 0] b - [b < 0] a).
inline __m128i RoundingHighMul(__m128i a, __m128i b) {
  const __m128i corr = _mm_add_epi32(_mm_and_si128(_mm_srai_epi32(a, 31), b),
                                     _mm_and_si128(_mm_srai_epi32(b, 31), a));
  const __m128i round = _mm_set_epi32(0, 1 << 30, 0, 1 << 30);
  const __m128i odd_words = _mm_set_epi32(-1, 0, -1, 0);
  __m128i even = _mm_mul_epu32(a, b);
  __m128i odd = _mm_mul_epu32(_mm_srli_epi64(a, 32), _mm_srli_epi64(b, 32));
  even = _mm_sub_epi64(even, _mm_slli_epi64(corr, 32));
  odd = _mm_sub_epi64(odd, _mm_and_si128(corr, odd_words));
  even = _mm_srli_epi64(_mm_add_epi64(even, round), 31);
  odd = _mm_srli_epi64(_mm_add_epi64(odd, round), 31);
  return LowWords(even, odd);
}

// RoundingDivideByPOT per lane: floor(x / 2^right) as the high word of the signed
// product x * 2^(32 - right), plus the round-half-away-from-zero correction.
inline __m128i RoundingDivide(__m128i x, const ChunkQuant& q, int32_t c) {
  const __m128i m = LoadLanes(q.right_mul + c);
  const __m128i neg = _mm_srai_epi32(x, 31);
  const __m128i even = _mm_mul_epu32(x, m);
  const __m128i odd = _mm_mul_epu32(_mm_srli_epi64(x, 32), _mm_srli_epi64(m, 32));
  __m128i high = _mm_unpacklo_epi32(_mm_shuffle_epi32(even, _MM_SHUFFLE(3, 1, 3, 1)),
                                    _mm_shuffle_epi32(odd, _MM_SHUFFLE(3, 1, 3, 1)));
  high = _mm_sub_epi32(high, _mm_and_si128(neg, m));
  const __m128i zero = LoadLanes(q.right_zero + c);
  const __m128i floor = _mm_or_si128(_mm_and_si128(zero, x), _mm_andnot_si128(zero, high));
  const __m128i remainder = _mm_and_si128(x, LoadLanes(q.mask + c));
  const __m128i threshold = _mm_sub_epi32(LoadLanes(q.half + c), neg);
  return _mm_sub_epi32(floor, _mm_cmpgt_epi32(remainder, threshold));
}

inline __m128i Select(__m128i mask, __m128i a, __m128i b) {
  return _mm_or_si128(_mm_and_si128(mask, a), _mm_andnot_si128(mask, b));
}

inline void RequantizeChannels(const uint32_t* acc, const ChunkQuant& q, int32_t n,
                               const OutputStage& os, int8_t* dst) {
  const __m128i lo = _mm_set1_epi32(os.lo), hi = _mm_set1_epi32(os.hi);
  const __m128i offset = _mm_set1_epi32(os.offset);
  int32_t c = 0;
  for (; c + 4 <= n; c += 4) {
    __m128i x = LoadLanes(acc + c);
    if (q.any_left) x = MulLow32(x, LoadLanes(q.left_pow + c));
    x = RoundingDivide(RoundingHighMul(x, LoadLanes(q.multiplier + c)), q, c);
    x = Select(_mm_cmpgt_epi32(lo, x), lo, x);
    x = Select(_mm_cmpgt_epi32(x, hi), hi, x);
    x = _mm_add_epi32(x, offset);
    const __m128i bytes = _mm_packs_epi16(_mm_packs_epi32(x, x), x);  // in range: exact
    const int32_t four = _mm_cvtsi128_si32(bytes);
    memcpy(dst + c, &four, 4);
  }
  RequantizeChannelsPortable(acc, q, c, n, os, dst);
}

#else  // DSP or portable

#if PATCH_EXEC_DSP

template <int NX, int NW>
inline void DotRun(const int8_t* xa, const int8_t* xb, const int8_t* wa, const int8_t* wb,
                   int32_t n, uint32_t* acc) {
  const int32_t i = dsp::DotRun<NX, NW>(xa, xb, wa, wb, n, acc);
  if (i < n) DotRunPortable<NX, NW>(xa + i, xb + i, wa + i, wb + i, n - i, acc);
}

inline void DotRun4(const int8_t* x, ptrdiff_t step, const int8_t* w, int32_t n, uint32_t* acc) {
  const int32_t i = dsp::DotRun4(x, step, w, n, acc);
  if (i < n) DotRun4Portable(x + i, step, w + i, n - i, acc);
}

#else

template <int NX, int NW>
inline void DotRun(const int8_t* xa, const int8_t* xb, const int8_t* wa, const int8_t* wb,
                   int32_t n, uint32_t* acc) {
  DotRunPortable<NX, NW>(xa, xb, wa, wb, n, acc);
}

inline void DotRun4(const int8_t* x, ptrdiff_t step, const int8_t* w, int32_t n, uint32_t* acc) {
  DotRun4Portable(x, step, w, n, acc);
}

#endif  // PATCH_EXEC_DSP

inline void RequantizeChannels(const uint32_t* acc, const ChunkQuant& q, int32_t n,
                               const OutputStage& os, int8_t* dst) {
#if PATCH_EXEC_DSP
  if (FullRange(os)) {
    dsp::RequantizeChannelsFull(acc, q, n, os.offset, dst);
    return;
  }
#endif
  RequantizeChannelsPortable(acc, q, 0, n, os, dst);
}

inline void MacChannelsOffset(const int8_t* x, const int8_t* w, int32_t n, int32_t offset,
                              uint32_t* acc) {
  MacChannelsOffsetPortable(x, w, n, offset, acc);
}

inline void MacBroadcast(int32_t v, const int8_t* w, int32_t n, uint32_t* acc) {
  MacBroadcastPortable(v, w, n, acc);
}

inline void MacChannels(const int8_t* x, const int8_t* w, int32_t n, uint32_t* acc) {
  MacChannelsPortable(x, w, n, acc);
}

inline void MacStrided(const int8_t* x, size_t step, int32_t w, int32_t n, uint32_t* acc) {
  MacStridedPortable(x, step, w, n, acc);
}

#endif  // PATCH_EXEC_SSE2

}  // namespace patch_exec

#endif  // TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_SIMD_H_
