// Copyright 2026 The tflm-patch Authors. Licensed under the Apache License, Version 2.0.
//
// Fixed-point requantization with TFLM's default double rounding (built without
// TFLITE_SINGLE_ROUNDING): SaturatingRoundingDoublingHighMul, RoundingDivideByPOT and
// MultiplyByQuantizedMultiplier, written without undefined behaviour (the left shift
// wraps like tflm_patch/ref_ops.py; shifts are clamped to [0, 31] so that unchecked
// constants cannot cause an invalid shift). Internal to the core.
#ifndef TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_QUANT_H_
#define TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_QUANT_H_

#include <stdint.h>

#include "patch_exec_blob.h"

// Small arithmetic helpers of the hot loops: inlined even at -Os, where a call (and the
// argument shuffling around it) costs more than the arithmetic.
// The DSP kernels, in turn, are never inlined: inside a large caller the compiler keeps
// their accumulators on the stack.
#if defined(__GNUC__)
#define PATCH_EXEC_ALWAYS_INLINE inline __attribute__((always_inline))
#define PATCH_EXEC_NOINLINE __attribute__((noinline))
#else
#define PATCH_EXEC_ALWAYS_INLINE inline
#define PATCH_EXEC_NOINLINE
#endif

namespace patch_exec {

constexpr int32_t kInt32Min = -2147483647 - 1;
constexpr int32_t kInt32Max = 2147483647;

// gemmlowp's SaturatingRoundingDoublingHighMul. Its nudge (2^30 or 1 - 2^30 by the
// sign of a * b) followed by a division truncating toward zero equals, for either
// sign, floor((a * b + 2^30) / 2^31): one add and one arithmetic shift.
// (Saturation, for a == b == INT32_MIN, cannot happen: multipliers are >= 0, checked
// by validation for ADD and by PatchExecCheckConstants for convolutions; a negative
// one gives an unspecified value, never undefined behaviour.)
PATCH_EXEC_ALWAYS_INLINE int32_t SatRoundDoublingHighMul(int32_t a, int32_t b) {
  const int64_t ab = static_cast<int64_t>(a) * b;
  return static_cast<int32_t>((ab + (int64_t{1} << 30)) >> 31);
}

// A per-channel (or per-tensor) quantized multiplier, hoisted out of the loops, with
// the masks of gemmlowp's RoundingDivideByPOT precomputed.
struct Requant {
  int32_t multiplier;
  int32_t left;   // max(shift, 0), at most 31
  int32_t right;  // max(-shift, 0), at most 31
  int32_t mask;   // 2^right - 1
  int32_t half;   // mask >> 1
};

inline Requant MakeRequant(int32_t multiplier, int32_t shift) {
  Requant q;
  q.multiplier = multiplier;
  q.left = shift > 0 ? (shift > 31 ? 31 : shift) : 0;
  q.right = shift < 0 ? (shift < -31 ? 31 : -shift) : 0;
  q.mask = static_cast<int32_t>((int64_t{1} << q.right) - 1);
  q.half = q.mask >> 1;
  return q;
}

// gemmlowp's RoundingDivideByPOT: x / 2^right rounded half away from zero.
PATCH_EXEC_ALWAYS_INLINE int32_t RoundingDivideByPot(int32_t x, const Requant& q) {
  const int32_t remainder = x & q.mask;
  const int32_t threshold = q.half + (x < 0 ? 1 : 0);
  return (x >> q.right) + (remainder > threshold ? 1 : 0);
}

// TFLM's MultiplyByQuantizedMultiplier (double rounding).
PATCH_EXEC_ALWAYS_INLINE int32_t MultiplyByQuantized(int32_t x, const Requant& q) {
  const int32_t shifted = ToInt32(static_cast<uint32_t>(x) << q.left);
  return RoundingDivideByPot(SatRoundDoublingHighMul(shifted, q.multiplier), q);
}

// Adds the output offset and clamps to the activation range, without int32
// overflow: clamp(v + offset, min, max) == clamp(v, min - offset, max - offset) + offset.
struct OutputStage {
  int32_t offset;
  int32_t lo;  // act_min - offset
  int32_t hi;  // act_max - offset
};

inline OutputStage MakeOutputStage(int32_t offset, int32_t act_min, int32_t act_max) {
  OutputStage o;
  o.offset = offset;
  o.lo = act_min - offset;
  o.hi = act_max - offset;
  return o;
}

// True when the activation range is all of int8 (no fused ReLU): clamping to it is a
// saturation to 8 bits.
inline bool FullRange(const OutputStage& o) {
  return o.lo == -128 - o.offset && o.hi == 127 - o.offset;
}

PATCH_EXEC_ALWAYS_INLINE int8_t Finish(int32_t v, const OutputStage& o) {
  const int32_t c = v < o.lo ? o.lo : (v > o.hi ? o.hi : v);
  return static_cast<int8_t>(c + o.offset);
}

constexpr int32_t kChunk = 16;  // output channels whose parameters are hoisted at once

// Requantization parameters of up to kChunk consecutive output channels, one array
// per field so that SIMD code loads four channels at a time (~600 bytes of stack).
struct ChunkQuant {
  uint32_t bias[kChunk];       // the bias (0 without one)
  uint32_t bias_full[kChunk];  // bias + input_offset * (sum of all the channel's weights)
  int32_t multiplier[kChunk];
  uint32_t left_pow[kChunk];  // 2^left: the left shift as a (wrapping) multiplication
  int32_t right[kChunk];
  int32_t mask[kChunk];        // 2^right - 1
  int32_t half[kChunk];        // mask >> 1
  uint32_t right_mul[kChunk];  // 2^(32 - right): floor(x / 2^right) = high word of x * it
  int32_t right_zero[kChunk];  // -1 where right == 0 (right_mul would be 2^32)
  bool any_left;
};

inline void SetChannelQuant(ChunkQuant* q, int32_t c, int32_t multiplier, int32_t shift,
                            uint32_t bias, uint32_t bias_full) {
  const Requant r = MakeRequant(multiplier, shift);
  q->bias[c] = bias;
  q->bias_full[c] = bias_full;
  q->multiplier[c] = multiplier;
  q->left_pow[c] = uint32_t{1} << r.left;
  q->right[c] = r.right;
  q->mask[c] = r.mask;
  q->half[c] = r.half;
  q->right_mul[c] = r.right == 0 ? 0u : static_cast<uint32_t>(uint64_t{1} << (32 - r.right));
  q->right_zero[c] = r.right == 0 ? -1 : 0;
  if (c == 0) q->any_left = false;
  q->any_left = q->any_left || r.left > 0;
}

// MultiplyByQuantizedMultiplier with channel c's parameters.
PATCH_EXEC_ALWAYS_INLINE int32_t RequantOne(int32_t x, const ChunkQuant& q, int32_t c) {
  const int32_t shifted = ToInt32(static_cast<uint32_t>(x) * q.left_pow[c]);
  const int32_t high = SatRoundDoublingHighMul(shifted, q.multiplier[c]);
  const int32_t threshold = q.half[c] + (high < 0 ? 1 : 0);
  return (high >> q.right[c]) + ((high & q.mask[c]) > threshold ? 1 : 0);
}

// The int32 accumulator TFLM keeps (sums wrap modulo 2^32), back from uint32.
PATCH_EXEC_ALWAYS_INLINE int32_t Wrap(uint32_t acc) { return ToInt32(acc); }

}  // namespace patch_exec

#endif  // TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_QUANT_H_
