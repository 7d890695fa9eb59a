// Copyright 2026 The tflm-patch Authors. Licensed under the Apache License, Version 2.0.
//
// int8 kernels of PATCH_EXEC, computing one layer over one patch, bit-exact with
// TFLM's reference_integer_ops (ConvPerChannel, DepthwiseConvPerChannel, AveragePool,
// MaxPool, Add) and reference_ops::Pad, double rounding. Internal to the core.
//
// Speed: requantization parameters are hoisted per output channel (chunks of kChunk
// channels on the stack; a STREAM channel's once per channel and patch), inner loops
// run over contiguous channels, and the window taps of an output pixel are clipped to
// the image once (interior pixels have no per-tap test). Convolutions of interior pixels
// compute raw int8 dot products and fold the input offset into the bias (offset * sum
// of the channel's weights), two output pixels x two output channels at a time. A
// STREAM pair (version 2) runs one channel at a time: its kernels (ConvOneChannel,
// DepthwiseOneChannel) accumulate a run of pixels (a whole dense patch at once for a
// 1x1 convolution, else up to kChunk pixels of a row) and requantize them together.
// With the Arm DSP extension (patch_exec_dsp.h) the inner loops use dual 16-bit MACs,
// a 3x3 depthwise convolution keeps its accumulators in registers over the window
// (interior pixels of a channel chunk with the weights unpacked once per chunk; a
// STREAM channel's rows with the border pixels read from zero-point padded copies of
// three input rows), and requantization to the full int8 range saturates (QADD, SSAT).
// Sums wrap modulo 2^32 in uint32 exactly like TFLM's int32 accumulator (no signed
// overflow, hence no UB, for any blob that passed validation). Stack: about 1 KB at
// most per frame (ChunkQuant, accumulator arrays of kChunk channels or kFlatRun pixels,
// 288 bytes of unpacked 3x3 weights, 108 bytes of padded rows).
//
// Reads stay inside the range the options keep of each input (validation rule 7):
// a kernel only forms pointers to in-image taps, and in-image taps of the patch
// lie inside the kept range.
#ifndef TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_KERNELS_H_
#define TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_KERNELS_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "patch_exec_blob.h"

// The kernels and their inner loops are compiled with -O2 even in a build for size
// (-Os, the Arduino IDE's default for Cortex-M): there GCC keeps the accumulators of the
// DSP loops on the stack and calls the small helpers. (The rest of the core keeps the
// build's level.)
#if defined(__GNUC__) && !defined(__clang__) && !defined(PATCH_EXEC_KEEP_OPT_LEVEL)
#pragma GCC push_options
#pragma GCC optimize("O2")
#define PATCH_EXEC_KERNELS_O2 1
#endif

#include "patch_exec_quant.h"
#include "patch_exec_simd.h"

namespace patch_exec {

constexpr int32_t kRawRun = 65536;     // |x * w| <= 2^14: int32 partial sums of 2^16 terms
constexpr int32_t kOffsetRun = 32768;  // |(x + offset) * w| <= 383 * 128 < 2^16

// What one patch keeps of a stage tensor: element (y, x, 0) of the whole tensor is
// at At(y, x) for every (y, x) inside the kept range.
struct InView {
  const int8_t* data;  // element (r0, c0, 0)
  ptrdiff_t row_stride;
  int32_t r0;
  int32_t c0;
  int32_t height;  // of the whole tensor
  int32_t width;
  int32_t channels;
  PATCH_EXEC_ALWAYS_INLINE const int8_t* At(int32_t y, int32_t x) const {
    return data + (y - r0) * row_stride + static_cast<ptrdiff_t>(x - c0) * channels;
  }
};

// The patch of a layer's output tensor to compute: rows x cols x channels, pixels
// pixel_stride bytes apart (= channels, except for one channel of a wider tensor, which
// a STREAM pair writes; PAD and ADD write dense views only).
struct OutView {
  int8_t* data;  // element (rows.lo, cols.lo, 0)
  ptrdiff_t row_stride;
  ptrdiff_t pixel_stride;
  Range rows;
  Range cols;
  int32_t channels;
  PATCH_EXEC_ALWAYS_INLINE int8_t* Pixel(int32_t y, int32_t x) const {
    return data + (y - rows.lo) * row_stride + static_cast<ptrdiff_t>(x - cols.lo) * pixel_stride;
  }
};

struct Window {
  int32_t kh, kw, sh, sw, dh, dw, pad_top, pad_left;
};

inline Window MakeWindow(const LayerRec& ly) {
  Window w;
  w.kh = ly.kernel_h;
  w.kw = ly.kernel_w;
  w.sh = ly.stride_h;
  w.sw = ly.stride_w;
  w.dh = ly.dilation_h;
  w.dw = ly.dilation_w;
  w.pad_top = ly.pad_top;
  w.pad_left = ly.pad_left;
  return w;
}

inline TapRange RowTaps(const Window& g, int32_t oy, int32_t in_height) {
  return InImageTaps(oy * g.sh - g.pad_top, g.kh, g.dh, in_height);
}
inline TapRange ColTaps(const Window& g, int32_t ox, int32_t in_width) {
  return InImageTaps(ox * g.sw - g.pad_left, g.kw, g.dw, in_width);
}

struct ConvArgs {
  Window g;
  int32_t input_offset;
  OutputStage os;
  const int8_t* weights;
  size_t tap_stride;    // depthwise: weights between two taps of a channel (the layer's Cout)
  const int32_t* bias;  // may be null (no bias)
  const int32_t* multipliers;
  const int32_t* shifts;
  InView in;
  OutView out;
};

// memcpy of a few bytes (a row of a padded window) without a library
// call: words, then the last n % 4 bytes. (GCC would turn the loop back into a memcpy
// call; the attribute keeps it a loop.)
#if defined(PATCH_EXEC_KERNELS_O2)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
inline void CopySmall(int8_t* dst, const int8_t* src, size_t n) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    uint32_t v;
    memcpy(&v, src + i, 4);
    memcpy(dst + i, &v, 4);
  }
  for (; i < n; ++i) dst[i] = src[i];
}

// Sum of n int8 values (any n), modulo 2^32.
inline uint32_t SumInt8(const int8_t* w, size_t n) {
  uint32_t total = 0;
  while (n > 0) {
    const size_t len = n < static_cast<size_t>(kRawRun) ? n : static_cast<size_t>(kRawRun);
    size_t i = 0;
#if PATCH_EXEC_DSP
    i = static_cast<size_t>(dsp::SumRun(w, static_cast<int32_t>(len), &total));
#endif
    int32_t s = 0;
    for (; i < len; ++i) s += w[i];
    total += static_cast<uint32_t>(s);
    w += len;
    n -= len;
  }
  return total;
}

// The chunk's parameters; weight_sum(c) is the sum of channel oc0 + c's weights.
template <typename WeightSum>
inline void SetChunk(const ConvArgs& a, int32_t oc0, int32_t cn, WeightSum weight_sum,
                     ChunkQuant* q) {
  for (int32_t c = 0; c < cn; ++c) {
    const int32_t oc = oc0 + c;
    const uint32_t bias = a.bias != nullptr ? static_cast<uint32_t>(a.bias[oc]) : 0u;
    const uint32_t folded =
        a.input_offset != 0 ? static_cast<uint32_t>(a.input_offset) * weight_sum(oc) : 0u;
    SetChannelQuant(q, c, a.multipliers[oc], a.shifts[oc], bias, bias + folded);
  }
}

// ------------------------------------------------------------------ CONV_2D

// acc[2 * i + j] += dot(x_i, w_j) over n values (any n), for NX pixels and NW filters.
template <int NX, int NW>
inline void Dots(const int8_t* xa, const int8_t* xb, const int8_t* wa, const int8_t* wb, size_t n,
                 uint32_t* acc) {
  while (n > 0) {
    const int32_t len = n < static_cast<size_t>(kRawRun) ? static_cast<int32_t>(n) : kRawRun;
    DotRun<NX, NW>(xa, xb, wa, wb, len, acc);
    xa += len;
    xb += len;
    wa += len;
    wb += len;
    n -= static_cast<size_t>(len);
  }
}

// Raw dot products over the whole window of interior pixels (every tap in the
// image). xa/xb: the pixels' first taps; wa/wb: two filters [KH][KW][Cin].
template <int NX, int NW>
inline void WindowDots(const ConvArgs& a, const int8_t* xa, const int8_t* xb, const int8_t* wa,
                       const int8_t* wb, uint32_t* acc) {
  const Window& g = a.g;
  const size_t cin = static_cast<size_t>(a.in.channels);
  const ptrdiff_t tap_row = g.dh * a.in.row_stride;
  const size_t filter_row = static_cast<size_t>(g.kw) * cin;
  for (int32_t fy = 0; fy < g.kh; ++fy) {
    const int8_t* ra = xa + fy * tap_row;
    const int8_t* rb = xb + fy * tap_row;
    const int8_t* fa = wa + static_cast<size_t>(fy) * filter_row;
    const int8_t* fb = wb + static_cast<size_t>(fy) * filter_row;
    if (g.dw == 1) {  // the row's taps are contiguous: one run of KW * Cin
      Dots<NX, NW>(ra, rb, fa, fb, filter_row, acc);
      continue;
    }
    const ptrdiff_t tap_col = static_cast<ptrdiff_t>(g.dw) * a.in.channels;
    for (int32_t fx = 0; fx < g.kw; ++fx) {
      const size_t f = static_cast<size_t>(fx) * cin;
      Dots<NX, NW>(ra + fx * tap_col, rb + fx * tap_col, fa + f, fb + f, cin, acc);
    }
  }
}

// Interior pixels: NX (1 or 2) pixels starting at `ox` of row `oy`, every channel of
// the chunk, two channels at a time.
template <int NX>
inline void ConvInterior(const ConvArgs& a, int32_t oy, int32_t ox, int32_t oc0, int32_t cn,
                         const ChunkQuant& q) {
  const Window& g = a.g;
  const int8_t* xa = a.in.At(oy * g.sh - g.pad_top, ox * g.sw - g.pad_left);
  const int8_t* xb = NX == 2 ? xa + static_cast<ptrdiff_t>(g.sw) * a.in.channels : xa;
  const size_t fsize =
      static_cast<size_t>(g.kh) * static_cast<size_t>(g.kw) * static_cast<size_t>(a.in.channels);
  uint32_t acc_a[kChunk];
  uint32_t acc_b[kChunk];
  int32_t c = 0;
  for (; c + 1 < cn; c += 2) {
    const int8_t* wa = a.weights + static_cast<size_t>(oc0 + c) * fsize;
    uint32_t acc[4] = {q.bias_full[c], q.bias_full[c + 1], q.bias_full[c], q.bias_full[c + 1]};
    WindowDots<NX, 2>(a, xa, xb, wa, wa + fsize, acc);
    acc_a[c] = acc[0];
    acc_a[c + 1] = acc[1];
    acc_b[c] = acc[2];
    acc_b[c + 1] = acc[3];
  }
  if (c < cn) {
    const int8_t* wa = a.weights + static_cast<size_t>(oc0 + c) * fsize;
    uint32_t acc[4] = {q.bias_full[c], 0, q.bias_full[c], 0};
    WindowDots<NX, 1>(a, xa, xb, wa, wa, acc);
    acc_a[c] = acc[0];
    acc_b[c] = acc[2];
  }
  int8_t* da = a.out.Pixel(oy, ox) + oc0;
  RequantizeChannels(acc_a, q, cn, a.os, da);
  if (NX == 2) RequantizeChannels(acc_b, q, cn, a.os, da + a.out.pixel_stride);
}

// sum of w * (x + offset) over n values (any n), modulo 2^32.
inline uint32_t OffsetDot(const int8_t* x, const int8_t* w, size_t n, int32_t offset) {
  uint32_t total = 0;
  while (n > 0) {
    const size_t len = n < static_cast<size_t>(kOffsetRun) ? n : static_cast<size_t>(kOffsetRun);
    int32_t s = 0;
    for (size_t i = 0; i < len; ++i) s += w[i] * (x[i] + offset);
    total += static_cast<uint32_t>(s);
    x += len;
    w += len;
    n -= len;
  }
  return total;
}

// sum of w * (x + offset) over the in-image taps ty x tx of the window whose first tap
// is at (iy0, ix0), for one filter w [KH][KW][Cin], modulo 2^32.
inline uint32_t BorderSum(const ConvArgs& a, const int8_t* w, int32_t iy0, int32_t ix0,
                          const TapRange& ty, const TapRange& tx) {
  const Window& g = a.g;
  const size_t cin = static_cast<size_t>(a.in.channels);
  const bool contiguous = g.dw == 1;
  const size_t run = contiguous ? static_cast<size_t>(tx.end - tx.begin) * cin : cin;
  uint32_t sum = 0;
  for (int32_t fy = ty.begin; fy < ty.end; ++fy) {
    const int32_t iy = iy0 + fy * g.dh;
    for (int32_t fx = tx.begin; fx < tx.end; fx = contiguous ? tx.end : fx + 1) {
      const int8_t* x = a.in.At(iy, ix0 + fx * g.dw);
      const size_t tap =
          static_cast<size_t>(fy) * static_cast<size_t>(g.kw) + static_cast<size_t>(fx);
      sum += OffsetDot(x, w + tap * cin, run, a.input_offset);
    }
  }
  return sum;
}

// A pixel whose window is partly outside the image: only its in-image taps.
inline void ConvBorder(const ConvArgs& a, int32_t oy, int32_t ox, int32_t oc0, int32_t cn,
                       const ChunkQuant& q) {
  const Window& g = a.g;
  const int32_t iy0 = oy * g.sh - g.pad_top;
  const int32_t ix0 = ox * g.sw - g.pad_left;
  const TapRange ty = InImageTaps(iy0, g.kh, g.dh, a.in.height);
  const TapRange tx = InImageTaps(ix0, g.kw, g.dw, a.in.width);
  const size_t fsize =
      static_cast<size_t>(g.kh) * static_cast<size_t>(g.kw) * static_cast<size_t>(a.in.channels);
  uint32_t acc[kChunk];
  for (int32_t c = 0; c < cn; ++c) {
    const int8_t* w = a.weights + static_cast<size_t>(oc0 + c) * fsize;
    acc[c] = q.bias[c] + BorderSum(a, w, iy0, ix0, ty, tx);
  }
  RequantizeChannels(acc, q, cn, a.os, a.out.Pixel(oy, ox) + oc0);
}

PATCH_EXEC_ALWAYS_INLINE bool FullTaps(const TapRange& t, int32_t k) {
  return t.begin == 0 && t.end == k;
}

// 1x1 convolution without padding: every pixel is interior (validation rule 6 puts
// every output's single tap inside the input), a plain matrix product over Cin.
inline void ConvRowPointwise(const ConvArgs& a, int32_t oy, int32_t oc0, int32_t cn,
                             const ChunkQuant& q) {
  int32_t ox = a.out.cols.lo;
  for (; ox + 1 < a.out.cols.hi; ox += 2) ConvInterior<2>(a, oy, ox, oc0, cn, q);
  if (ox < a.out.cols.hi) ConvInterior<1>(a, oy, ox, oc0, cn, q);
}

inline void ConvRow(const ConvArgs& a, int32_t oy, int32_t oc0, int32_t cn, const ChunkQuant& q) {
  if (a.g.kh == 1 && a.g.kw == 1 && a.g.pad_top == 0 && a.g.pad_left == 0) {
    ConvRowPointwise(a, oy, oc0, cn, q);
    return;
  }
  const bool full_rows = FullTaps(RowTaps(a.g, oy, a.in.height), a.g.kh);
  int32_t ox = a.out.cols.lo;
  while (ox < a.out.cols.hi) {
    const bool full = full_rows && FullTaps(ColTaps(a.g, ox, a.in.width), a.g.kw);
    if (!full) {
      ConvBorder(a, oy, ox, oc0, cn, q);
      ox += 1;
    } else if (ox + 1 < a.out.cols.hi && FullTaps(ColTaps(a.g, ox + 1, a.in.width), a.g.kw)) {
      ConvInterior<2>(a, oy, ox, oc0, cn, q);
      ox += 2;
    } else {
      ConvInterior<1>(a, oy, ox, oc0, cn, q);
      ox += 1;
    }
  }
}

// reference_integer_ops::ConvPerChannel over the output patch (weights
// [Cout][KH][KW][Cin], Cin = the input's channels).
inline void ConvPerChannel(const ConvArgs& a) {
  const int32_t cout = a.out.channels;
  const size_t fsize = static_cast<size_t>(a.g.kh) * static_cast<size_t>(a.g.kw) *
                       static_cast<size_t>(a.in.channels);
  const auto weight_sum = [&a, fsize](int32_t oc) {
    return SumInt8(a.weights + static_cast<size_t>(oc) * fsize, fsize);
  };
  for (int32_t oc0 = 0; oc0 < cout; oc0 += kChunk) {
    const int32_t cn = cout - oc0 < kChunk ? cout - oc0 : kChunk;
    ChunkQuant q;
    SetChunk(a, oc0, cn, weight_sum, &q);
    for (int32_t oy = a.out.rows.lo; oy < a.out.rows.hi; ++oy) ConvRow(a, oy, oc0, cn, q);
  }
}

// ------------------------------------------------------------------ DEPTHWISE_CONV_2D

// acc[c] += w[c] * (x[input channel of c] + offset) for the chunk's channels
// (offset 0 for interior pixels, whose offset is folded into the bias). x: the
// pixel's first channel.
inline void DepthwiseTap(const int8_t* x, const int8_t* w, int32_t oc0, int32_t cn, int32_t dm,
                         int32_t offset, uint32_t* acc) {
  if (dm == 1) {
    if (offset == 0) {
      MacChannels(x + oc0, w, cn, acc);
    } else {
      MacChannelsOffset(x + oc0, w, cn, offset, acc);
    }
    return;
  }
  int32_t ic = oc0 / dm;  // runs of dm output channels share an input channel
  int32_t c = 0;
  int32_t run = dm - oc0 % dm;
  while (c < cn) {
    const int32_t n = run < cn - c ? run : cn - c;
    MacBroadcast(x[ic] + offset, w + c, n, acc + c);
    c += n;
    run = dm;
    ++ic;
  }
}

#if PATCH_EXEC_DSP
// The chunk's channels four at a time with the accumulators in registers (depth
// multiplier 1 with dilation 1, or a multiple of 4 on a chunk starting at a multiple of
// 4): returns the channels done; acc holds their start values. ty, tx: the pixel's
// in-image taps (not empty).
inline int32_t DepthwisePixelDsp(const ConvArgs& a, int32_t dm, int32_t iy0, int32_t ix0,
                                 const TapRange& ty, const TapRange& tx, int32_t oc0, int32_t cn,
                                 int32_t offset, uint32_t* acc) {
  const Window& g = a.g;
  dsp::TapGrid t;
  t.x = a.in.At(iy0 + ty.begin * g.dh, ix0 + tx.begin * g.dw);
  t.row_stride = g.dh * a.in.row_stride;
  t.step = static_cast<ptrdiff_t>(g.dw) * a.in.channels;
  t.w_step = static_cast<ptrdiff_t>(a.tap_stride);
  t.w_row = static_cast<ptrdiff_t>(g.kw) * t.w_step;
  t.w = a.weights + ty.begin * t.w_row + tx.begin * t.w_step + oc0;
  t.rows = ty.end - ty.begin;
  t.cols = tx.end - tx.begin;
  if (dm == 1 && g.dw == 1) {
    t.x += oc0;
    return offset != 0 ? dsp::DepthwiseChannels4<true>(t, offset, cn, acc)
                       : dsp::DepthwiseChannels4<false>(t, 0, cn, acc);
  }
  if (dm % 4 != 0 || oc0 % 4 != 0) return 0;
  return offset != 0 ? dsp::DepthwiseBroadcast4<true>(t, offset, oc0, dm, cn, acc)
                     : dsp::DepthwiseBroadcast4<false>(t, 0, oc0, dm, cn, acc);
}
#endif  // PATCH_EXEC_DSP

inline void DepthwisePixel(const ConvArgs& a, int32_t dm, int32_t oy, int32_t ox, int32_t oc0,
                           int32_t cn, const ChunkQuant& q) {
  const Window& g = a.g;
  const int32_t iy0 = oy * g.sh - g.pad_top;
  const int32_t ix0 = ox * g.sw - g.pad_left;
  const TapRange ty = InImageTaps(iy0, g.kh, g.dh, a.in.height);
  const TapRange tx = InImageTaps(ix0, g.kw, g.dw, a.in.width);
  const bool full = FullTaps(ty, g.kh) && FullTaps(tx, g.kw);
  const int32_t offset = full ? 0 : a.input_offset;
  uint32_t acc[kChunk];
  for (int32_t c = 0; c < cn; ++c) acc[c] = full ? q.bias_full[c] : q.bias[c];
  int32_t done = 0;
#if PATCH_EXEC_DSP
  if (ty.begin < ty.end && tx.begin < tx.end)
    done = DepthwisePixelDsp(a, dm, iy0, ix0, ty, tx, oc0, cn, offset, acc);
#endif
  const ptrdiff_t step = static_cast<ptrdiff_t>(g.dw) * a.in.channels;
  for (int32_t fy = ty.begin; fy < ty.end && done < cn; ++fy) {
    const int8_t* x = a.in.At(iy0 + fy * g.dh, ix0 + tx.begin * g.dw);
    const size_t row_taps = static_cast<size_t>(fy) * static_cast<size_t>(g.kw);
    for (int32_t fx = tx.begin; fx < tx.end; ++fx) {
      const int8_t* w = a.weights + (row_taps + static_cast<size_t>(fx)) * a.tap_stride + oc0;
      DepthwiseTap(x, w + done, oc0 + done, cn - done, dm, offset, acc + done);
      if (fx + 1 < tx.end) x += step;
    }
  }
  RequantizeChannels(acc, q, cn, a.os, a.out.Pixel(oy, ox) + oc0);
}

#if PATCH_EXEC_DSP
// DepthwisePixel of an interior pixel of a 3x3 depthwise convolution (multiplier 1 or a
// multiple of 4, dilation 1, cn a multiple of 4) with the chunk's unpacked weights f.
inline void DepthwisePixel3x3(const ConvArgs& a, const dsp::Chunk3x3& f, int32_t dm, int32_t oy,
                              int32_t ox, int32_t oc0, int32_t cn, const ChunkQuant& q) {
  uint32_t acc[kChunk];
  for (int32_t c = 0; c < cn; ++c) acc[c] = q.bias_full[c];
  const int8_t* x = a.in.At(oy * a.g.sh - a.g.pad_top, ox * a.g.sw - a.g.pad_left);
  if (dm == 1) {
    dsp::Depthwise3x3Interior(x + oc0, a.in.row_stride, a.in.channels, f, cn / 4, acc);
  } else {
    dsp::Depthwise3x3InteriorBroadcast(x, a.in.row_stride, a.in.channels, f, cn / 4, oc0, dm, acc);
  }
  RequantizeChannels(acc, q, cn, a.os, a.out.Pixel(oy, ox) + oc0);
}
#endif  // PATCH_EXEC_DSP

// reference_integer_ops::DepthwiseConvPerChannel over the output patch (weights
// [1][KH][KW][Cout], tap t of channel c at t * tap_stride + c; output channel c reads
// input channel c / depth_multiplier).
inline void DepthwiseConvPerChannel(const ConvArgs& a, int32_t dm) {
  const int32_t cout = a.out.channels;
  const size_t taps = static_cast<size_t>(a.g.kh) * static_cast<size_t>(a.g.kw);
  const auto weight_sum = [&a, taps](int32_t oc) {
    uint32_t sum = 0;
    for (size_t t = 0; t < taps; ++t) {
      sum += static_cast<uint32_t>(a.weights[t * a.tap_stride + static_cast<size_t>(oc)]);
    }
    return sum;
  };
#if PATCH_EXEC_DSP
  const Window& g = a.g;
  const bool is3x3 = (dm == 1 || dm % 4 == 0) && g.kh == 3 && g.kw == 3 && g.dh == 1 && g.dw == 1;
#endif
  for (int32_t oc0 = 0; oc0 < cout; oc0 += kChunk) {
    const int32_t cn = cout - oc0 < kChunk ? cout - oc0 : kChunk;
    ChunkQuant q;
    SetChunk(a, oc0, cn, weight_sum, &q);
#if PATCH_EXEC_DSP
    const bool fast = is3x3 && cn % 4 == 0;
    dsp::Chunk3x3 f;
    if (fast) dsp::Unpack3x3(a.weights + oc0, a.tap_stride, cn / 4, &f);
#endif
    for (int32_t oy = a.out.rows.lo; oy < a.out.rows.hi; ++oy) {
#if PATCH_EXEC_DSP
      const bool full_rows = FullTaps(RowTaps(g, oy, a.in.height), 3);
#endif
      for (int32_t ox = a.out.cols.lo; ox < a.out.cols.hi; ++ox) {
#if PATCH_EXEC_DSP
        if (fast && full_rows && FullTaps(ColTaps(g, ox, a.in.width), 3)) {
          DepthwisePixel3x3(a, f, dm, oy, ox, oc0, cn, q);
          continue;
        }
#endif
        DepthwisePixel(a, dm, oy, ox, oc0, cn, q);
      }
    }
  }
}

// ------------------------------------------------------------------ one channel (STREAM)

// A STREAM pair computes one output channel at a time (ConvArgs offset to the channel:
// weights, bias, multiplier and shift of channel 0 are the channel's). Up to kChunk
// pixels of a row are accumulated, then requantized with the channel's parameters
// (hoisted once per channel and patch) and stored out.pixel_stride bytes apart.

struct ChannelQuant {
  uint32_t bias;       // the bias (0 without one)
  uint32_t bias_full;  // bias + input_offset * (sum of the channel's weights)
  Requant r;
};

// The channel's parameters; weight_sum: the sum of its weights.
inline ChannelQuant MakeChannelQuant(const ConvArgs& a, uint32_t weight_sum) {
  ChannelQuant q;
  q.bias = a.bias != nullptr ? static_cast<uint32_t>(a.bias[0]) : 0u;
  q.bias_full = q.bias + static_cast<uint32_t>(a.input_offset) * weight_sum;
  q.r = MakeRequant(a.multipliers[0], a.shifts[0]);
  return q;
}

// Output columns [lo, hi) whose window lies inside the input's width (interior).
inline Range InteriorCols(const Window& g, int32_t in_width) {
  const int64_t lo = CeilDiv(g.pad_left, g.sw);
  const int64_t last =
      static_cast<int64_t>(in_width) - 1 - static_cast<int64_t>(g.kw - 1) * g.dw + g.pad_left;
  const int64_t hi = last < 0 ? lo : FloorDiv(last, g.sw) + 1;
  Range r;
  r.lo = static_cast<int32_t>(lo);
  r.hi = static_cast<int32_t>(hi > lo ? hi : lo);
  return r;
}

// The interior pixels [lo, hi) among pixels ox0 .. ox0 + n - 1 of row oy (none when
// the row's window is partly outside the input's height).
inline Range InteriorChunk(const ConvArgs& a, Range interior, int32_t oy, int32_t ox0, int32_t n) {
  Range r;
  r.lo = n;
  r.hi = n;
  if (!FullTaps(RowTaps(a.g, oy, a.in.height), a.g.kh)) return r;
  const int32_t lo = interior.lo - ox0;
  const int32_t hi = interior.hi - ox0;
  r.lo = lo < 0 ? 0 : (lo > n ? n : lo);
  r.hi = hi < r.lo ? r.lo : (hi > n ? n : hi);
  return r;
}

// Requantizes acc[0..n) (pixels ox0.. of row oy) into the output.
// dst[p * stride] = the int8 output of acc[p] for p < n (one channel's parameters).
PATCH_EXEC_NOINLINE inline void RequantizeRun(const uint32_t* acc, int32_t n, Requant r,
                                              OutputStage os, int8_t* dst, ptrdiff_t stride) {
  for (int32_t p = 0; p < n; ++p) {
    dst[p * stride] = Finish(MultiplyByQuantized(Wrap(acc[p]), r), os);
  }
}

// RequantizeRun into dst with the layer's output stage (pixels out.pixel_stride apart).
inline void Requantize(const ConvArgs& a, const uint32_t* acc, const ChannelQuant& q, int32_t n,
                       int8_t* dst) {
#if PATCH_EXEC_DSP
  if (FullRange(a.os)) {
    dsp::RequantizeRunFull(acc, n, q.r, a.os.offset, dst, a.out.pixel_stride);
    return;
  }
#endif
  RequantizeRun(acc, n, q.r, a.os, dst, a.out.pixel_stride);
}

inline void StoreRow(const ConvArgs& a, const uint32_t* acc, const ChannelQuant& q, int32_t n,
                     int32_t oy, int32_t ox0) {
  Requantize(a, acc, q, n, a.out.Pixel(oy, ox0));
}

// acc[i] = bias_full + the raw dot products of four interior pixels of a 1x1
// convolution with one output channel (pixel_step bytes apart), any Cin.
inline void PointwiseDots4(const ConvArgs& a, const int8_t* x, ptrdiff_t pixel_step,
                           uint32_t bias_full, uint32_t* acc) {
  for (int i = 0; i < 4; ++i) acc[i] = bias_full;
  const int8_t* w = a.weights;
  size_t n = static_cast<size_t>(a.in.channels);
  while (n > 0) {
    const int32_t len = n < static_cast<size_t>(kRawRun) ? static_cast<int32_t>(n) : kRawRun;
    DotRun4(x, pixel_step, w, len, acc);
    x += len;
    w += len;
    n -= static_cast<size_t>(len);
  }
}

// Accumulators of pixels ox0 .. ox0 + n - 1 (n <= kChunk) of row oy of a convolution
// with one output channel: interior pixels four (1x1) or two at a time (raw dot
// products, the offset folded into bias_full), the others over their in-image taps.
inline void ConvChannelRow(const ConvArgs& a, int32_t oy, int32_t ox0, int32_t n, Range inner,
                           const ChannelQuant& q, uint32_t* acc) {
  const Window& g = a.g;
  const ptrdiff_t pixel_step = static_cast<ptrdiff_t>(g.sw) * a.in.channels;
  const int32_t iy0 = oy * g.sh - g.pad_top;
  const bool pointwise = g.kh == 1 && g.kw == 1;
  int32_t p = 0;
  while (p < n) {
    const int32_t ix0 = (ox0 + p) * g.sw - g.pad_left;
#if PATCH_EXEC_DSP
    if (pointwise && p >= inner.lo && p < inner.hi && a.in.channels <= kRawRun) {
      dsp::PointwiseRow(a.in.At(iy0, ix0), pixel_step, a.weights, a.in.channels, q.bias_full,
                        inner.hi - p, acc + p);
      p = inner.hi;
      continue;
    }
#endif
    if (pointwise && p >= inner.lo && p + 4 <= inner.hi) {
      PointwiseDots4(a, a.in.At(iy0, ix0), pixel_step, q.bias_full, acc + p);
      p += 4;
    } else if (p < inner.lo || p >= inner.hi) {
      const TapRange ty = InImageTaps(iy0, g.kh, g.dh, a.in.height);
      const TapRange tx = InImageTaps(ix0, g.kw, g.dw, a.in.width);
      acc[p++] = q.bias + BorderSum(a, a.weights, iy0, ix0, ty, tx);
    } else if (p + 1 < inner.hi) {
      const int8_t* x = a.in.At(iy0, ix0);
      uint32_t d[4] = {q.bias_full, 0, q.bias_full, 0};
      WindowDots<2, 1>(a, x, x + pixel_step, a.weights, a.weights, d);
      acc[p] = d[0];
      acc[p + 1] = d[2];
      p += 2;
    } else {
      const int8_t* x = a.in.At(iy0, ix0);
      uint32_t d[4] = {q.bias_full, 0, 0, 0};
      WindowDots<1, 1>(a, x, x, a.weights, a.weights, d);
      acc[p++] = d[0];
    }
  }
}

// A 1x1 convolution with stride 1 and no padding whose input and output patches are
// dense over the same columns: its rows x cols pixels form one run (pixels Cin bytes
// apart in the input, out.pixel_stride in the output).
inline bool FlatPointwise(const ConvArgs& a) {
  const Window& g = a.g;
  const ptrdiff_t cols = a.out.cols.size();
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pad_top == 0 && g.pad_left == 0 &&
         a.in.row_stride == cols * a.in.channels && a.out.row_stride == cols * a.out.pixel_stride;
}

constexpr int32_t kFlatRun = 32;  // pixels of a flat run accumulated at once

// acc[p] = bias_full + dot(x + p * Cin, weights) for p < n (n <= kFlatRun).
inline void PointwiseRun(const ConvArgs& a, const int8_t* x, uint32_t bias_full, int32_t n,
                         uint32_t* acc) {
  const ptrdiff_t step = a.in.channels;
#if PATCH_EXEC_DSP
  if (a.in.channels <= kRawRun) {
    dsp::PointwiseRow(x, step, a.weights, a.in.channels, bias_full, n, acc);
    return;
  }
#endif
  int32_t p = 0;
  for (; p + 4 <= n; p += 4) PointwiseDots4(a, x + p * step, step, bias_full, acc + p);
  for (; p < n; ++p) {
    uint32_t d[4] = {bias_full, 0, 0, 0};
    WindowDots<1, 1>(a, x + p * step, x + p * step, a.weights, a.weights, d);
    acc[p] = d[0];
  }
}

// ConvOneChannel of a FlatPointwise convolution.
inline void ConvOneChannelFlat(const ConvArgs& a, const ChannelQuant& q) {
  const int32_t total = a.out.rows.size() * a.out.cols.size();
  const int8_t* x = a.in.At(a.out.rows.lo, a.out.cols.lo);
  int8_t* dst = a.out.Pixel(a.out.rows.lo, a.out.cols.lo);
  uint32_t acc[kFlatRun];
  for (int32_t p = 0; p < total; p += kFlatRun) {
    const int32_t n = total - p < kFlatRun ? total - p : kFlatRun;
    PointwiseRun(a, x + p * a.in.channels, q.bias_full, n, acc);
    Requantize(a, acc, q, n, dst + p * a.out.pixel_stride);
  }
}

// reference_integer_ops::ConvPerChannel for one output channel over the output patch;
// interior: InteriorCols of the layer.
inline void ConvOneChannel(const ConvArgs& a, Range interior) {
  const size_t fsize = static_cast<size_t>(a.g.kh) * static_cast<size_t>(a.g.kw) *
                       static_cast<size_t>(a.in.channels);
  const ChannelQuant q = MakeChannelQuant(a, a.input_offset != 0 ? SumInt8(a.weights, fsize) : 0u);
  if (FlatPointwise(a)) {
    ConvOneChannelFlat(a, q);
    return;
  }
  uint32_t acc[kChunk];
  for (int32_t oy = a.out.rows.lo; oy < a.out.rows.hi; ++oy) {
    for (int32_t ox = a.out.cols.lo; ox < a.out.cols.hi; ox += kChunk) {
      const int32_t n = a.out.cols.hi - ox < kChunk ? a.out.cols.hi - ox : kChunk;
      ConvChannelRow(a, oy, ox, n, InteriorChunk(a, interior, oy, ox, n), q, acc);
      StoreRow(a, acc, q, n, oy, ox);
    }
  }
}

// The accumulator of output pixel (oy, ox) of one channel of a depthwise convolution
// with multiplier 1 reading a one-channel input (tap t's weight at t * tap_stride),
// over its in-image taps.
inline uint32_t DepthwiseChannelPixel(const ConvArgs& a, int32_t oy, int32_t ox,
                                      const ChannelQuant& q) {
  const Window& g = a.g;
  const int32_t iy0 = oy * g.sh - g.pad_top;
  const int32_t ix0 = ox * g.sw - g.pad_left;
  const TapRange ty = InImageTaps(iy0, g.kh, g.dh, a.in.height);
  const TapRange tx = InImageTaps(ix0, g.kw, g.dw, a.in.width);
  const bool full = FullTaps(ty, g.kh) && FullTaps(tx, g.kw);
  const int32_t offset = full ? 0 : a.input_offset;
  uint32_t acc = full ? q.bias_full : q.bias;
  const size_t count = static_cast<size_t>(tx.end - tx.begin);
  const size_t x_step = static_cast<size_t>(g.dw);
  for (int32_t fy = ty.begin; fy < ty.end; ++fy) {
    const int8_t* x = a.in.At(iy0 + fy * g.dh, ix0 + tx.begin * g.dw);
    const int8_t* w = a.weights + (static_cast<size_t>(fy) * static_cast<size_t>(g.kw) +
                                   static_cast<size_t>(tx.begin)) *
                                      a.tap_stride;
    for (size_t t = 0; t < count; ++t) {
      acc += static_cast<uint32_t>(w[t * a.tap_stride] * (x[t * x_step] + offset));
    }
  }
  return acc;
}

// Accumulators of pixels ox0 .. ox0 + n - 1 (n <= kChunk) of row oy of one depthwise
// channel: the interior ones tap by tap over the run of pixels, the others one by one.
inline void DepthwiseChannelRow(const ConvArgs& a, int32_t oy, int32_t ox0, int32_t n, Range inner,
                                const ChannelQuant& q, uint32_t* acc) {
  const Window& g = a.g;
  for (int32_t p = 0; p < inner.lo; ++p) acc[p] = DepthwiseChannelPixel(a, oy, ox0 + p, q);
  for (int32_t p = inner.hi; p < n; ++p) acc[p] = DepthwiseChannelPixel(a, oy, ox0 + p, q);
  if (inner.empty()) return;
  for (int32_t p = inner.lo; p < inner.hi; ++p) acc[p] = q.bias_full;
  const int32_t iy0 = oy * g.sh - g.pad_top;
  const int32_t ix0 = (ox0 + inner.lo) * g.sw - g.pad_left;
  const size_t step = static_cast<size_t>(g.sw);
  for (int32_t fy = 0; fy < g.kh; ++fy) {
    const size_t row_taps = static_cast<size_t>(fy) * static_cast<size_t>(g.kw);
    for (int32_t fx = 0; fx < g.kw; ++fx) {
      const int32_t w = a.weights[(row_taps + static_cast<size_t>(fx)) * a.tap_stride];
      MacStrided(a.in.At(iy0 + fy * g.dh, ix0 + fx * g.dw), step, w, inner.size(), acc + inner.lo);
    }
  }
}

#if PATCH_EXEC_DSP
constexpr int32_t kPadWidth = 2 * kChunk + 4;  // >= (n - 1) * 2 + 3 columns, a multiple of 4

// The three input rows of pixels ox0 .. ox0 + n - 1 of row oy (3x3 window, dilation 1)
// copied into `rows`, the taps outside the image set to the input zero point: there
// x + input_offset = 0, so the padded window sum of every pixel is its interior one
// (bias_full + the raw dot product), exactly TFLM's sum over the in-image taps.
inline void PadRows3x3(const ConvArgs& a, int32_t oy, int32_t ox0, int32_t n,
                       int8_t (*rows)[kPadWidth]) {
  const Window& g = a.g;
  const uint32_t fill = (static_cast<uint32_t>(-a.input_offset) & 0xFFu) * 0x01010101u;
  const int32_t ix0 = ox0 * g.sw - g.pad_left;
  const int32_t width = (n - 1) * g.sw + 3;
  const int32_t lo = ix0 < 0 ? (-ix0 < width ? -ix0 : width) : 0;
  int32_t hi = a.in.width - ix0;
  hi = hi > width ? width : (hi < lo ? lo : hi);
  for (int32_t fy = 0; fy < 3; ++fy) {
    int8_t* row = rows[fy];
    // word stores (kPadWidth is a multiple of 4); small inline copies, no libc calls
    for (int32_t i = 0; i < width; i += 4) memcpy(row + i, &fill, 4);
    const int32_t iy = oy * g.sh - g.pad_top + fy;
    if (iy < 0 || iy >= a.in.height || lo >= hi) continue;
    CopySmall(row + lo, a.in.At(iy, ix0 + lo), static_cast<size_t>(hi - lo));
  }
}

// DepthwiseChannelRow for a 3x3 window with dilation 1 and stride 1 or 2 (f: the
// channel's filter): the pixels two (stride 1) or one at a time over the three kernel
// rows with the accumulators in registers; a chunk with pixels whose window leaves the
// image reads zero-point padded copies of its rows (PadRows3x3).
inline void DepthwiseChannelRow3x3(const ConvArgs& a, const dsp::Filter3x3& f, int32_t oy,
                                   int32_t ox0, int32_t n, Range inner, const ChannelQuant& q,
                                   uint32_t* acc) {
  const Window& g = a.g;
  const int8_t* x;
  ptrdiff_t row_stride;
  int8_t rows[3][kPadWidth];
  if (inner.lo == 0 && inner.hi == n) {
    x = a.in.At(oy * g.sh - g.pad_top, ox0 * g.sw - g.pad_left);
    row_stride = a.in.row_stride;
  } else {
    PadRows3x3(a, oy, ox0, n, rows);
    x = rows[0];
    row_stride = kPadWidth;
  }
  if (g.sw == 1) {
    dsp::DepthwiseRow3x3S1(x, row_stride, f, q.bias_full, n, acc);
  } else {
    dsp::DepthwiseRow3x3S2(x, row_stride, f, q.bias_full, n, acc);
  }
}
#endif  // PATCH_EXEC_DSP

// reference_integer_ops::DepthwiseConvPerChannel for one channel (multiplier 1) over
// the output patch, reading a one-channel input; interior: InteriorCols of the layer.
inline void DepthwiseOneChannel(const ConvArgs& a, Range interior) {
  const size_t taps = static_cast<size_t>(a.g.kh) * static_cast<size_t>(a.g.kw);
  uint32_t weight_sum = 0;
  for (size_t t = 0; t < taps; ++t) {
    weight_sum += static_cast<uint32_t>(a.weights[t * a.tap_stride]);
  }
  const ChannelQuant q = MakeChannelQuant(a, weight_sum);
#if PATCH_EXEC_DSP
  const Window& g = a.g;
  const bool fast = g.kh == 3 && g.kw == 3 && g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
  dsp::Filter3x3 f = {};
  if (fast) f = dsp::MakeFilter3x3(a.weights, a.tap_stride);
#endif
  uint32_t acc[kChunk];
  for (int32_t oy = a.out.rows.lo; oy < a.out.rows.hi; ++oy) {
    for (int32_t ox = a.out.cols.lo; ox < a.out.cols.hi; ox += kChunk) {
      const int32_t n = a.out.cols.hi - ox < kChunk ? a.out.cols.hi - ox : kChunk;
      const Range inner = InteriorChunk(a, interior, oy, ox, n);
#if PATCH_EXEC_DSP
      if (fast) {
        DepthwiseChannelRow3x3(a, f, oy, ox, n, inner, q, acc);
      } else {
        DepthwiseChannelRow(a, oy, ox, n, inner, q, acc);
      }
#else
      DepthwiseChannelRow(a, oy, ox, n, inner, q, acc);
#endif
      StoreRow(a, acc, q, n, oy, ox);
    }
  }
}

// ------------------------------------------------------------------ pools

struct PoolArgs {
  Window g;  // dilation as validated (1 in every real model)
  int32_t act_min;
  int32_t act_max;
  InView in;
  OutView out;
};

// reference_integer_ops::AveragePool: the mean over the in-image taps, rounded half
// away from zero by truncating division (a window with no in-image tap, where TFLM
// fails, gives clamp(0)). Sums in int64, exact for any window.
inline void AveragePixel(const PoolArgs& a, int32_t oy, int32_t ox, int32_t c0, int32_t cn) {
  const Window& g = a.g;
  const int32_t iy0 = oy * g.sh - g.pad_top;
  const int32_t ix0 = ox * g.sw - g.pad_left;
  const TapRange ty = InImageTaps(iy0, g.kh, g.dh, a.in.height);
  const TapRange tx = InImageTaps(ix0, g.kw, g.dw, a.in.width);
  int64_t acc[kChunk] = {};
  for (int32_t fy = ty.begin; fy < ty.end; ++fy) {
    for (int32_t fx = tx.begin; fx < tx.end; ++fx) {
      const int8_t* x = a.in.At(iy0 + fy * g.dh, ix0 + fx * g.dw) + c0;
      for (int32_t c = 0; c < cn; ++c) acc[c] += x[c];
    }
  }
  const int64_t count = static_cast<int64_t>(ty.end - ty.begin) * (tx.end - tx.begin);
  int8_t* dst = a.out.Pixel(oy, ox) + c0;
  for (int32_t c = 0; c < cn; ++c) {
    int64_t v = 0;
    if (count > 0) v = acc[c] > 0 ? (acc[c] + count / 2) / count : (acc[c] - count / 2) / count;
    v = v < a.act_min ? a.act_min : (v > a.act_max ? a.act_max : v);
    dst[c] = static_cast<int8_t>(v);
  }
}

// reference_integer_ops::MaxPool: the max over the in-image taps, starting at -128.
inline void MaxPixel(const PoolArgs& a, int32_t oy, int32_t ox, int32_t c0, int32_t cn) {
  const Window& g = a.g;
  const int32_t iy0 = oy * g.sh - g.pad_top;
  const int32_t ix0 = ox * g.sw - g.pad_left;
  const TapRange ty = InImageTaps(iy0, g.kh, g.dh, a.in.height);
  const TapRange tx = InImageTaps(ix0, g.kw, g.dw, a.in.width);
  int8_t best[kChunk];
  for (int32_t c = 0; c < cn; ++c) best[c] = -128;
  for (int32_t fy = ty.begin; fy < ty.end; ++fy) {
    for (int32_t fx = tx.begin; fx < tx.end; ++fx) {
      const int8_t* x = a.in.At(iy0 + fy * g.dh, ix0 + fx * g.dw) + c0;
      for (int32_t c = 0; c < cn; ++c) best[c] = x[c] > best[c] ? x[c] : best[c];
    }
  }
  int8_t* dst = a.out.Pixel(oy, ox) + c0;
  for (int32_t c = 0; c < cn; ++c) {
    const int32_t v = best[c];
    dst[c] = static_cast<int8_t>(v < a.act_min ? a.act_min : (v > a.act_max ? a.act_max : v));
  }
}

inline void Pool(const PoolArgs& a, bool average) {
  const int32_t channels = a.out.channels;
  for (int32_t oy = a.out.rows.lo; oy < a.out.rows.hi; ++oy) {
    for (int32_t ox = a.out.cols.lo; ox < a.out.cols.hi; ++ox) {
      for (int32_t c0 = 0; c0 < channels; c0 += kChunk) {
        const int32_t cn = channels - c0 < kChunk ? channels - c0 : kChunk;
        if (average) {
          AveragePixel(a, oy, ox, c0, cn);
        } else {
          MaxPixel(a, oy, ox, c0, cn);
        }
      }
    }
  }
}

// ------------------------------------------------------------------ PAD, ADD

// reference_ops::Pad (constant value) over the output patch: output (y, x) is input
// (y - pad_top, x - pad_left) inside the input, else the pad value.
inline void Pad(const InView& in, const OutView& out, int32_t pad_top, int32_t pad_left,
                int8_t value) {
  const size_t c = static_cast<size_t>(out.channels);
  const size_t width = static_cast<size_t>(out.cols.size()) * c;
  int32_t x_lo = out.cols.lo - pad_left;  // input columns of the patch, clipped
  int32_t x_hi = out.cols.hi - pad_left;
  x_lo = x_lo < 0 ? 0 : x_lo;
  x_hi = x_hi > in.width ? in.width : x_hi;
  for (int32_t y = out.rows.lo; y < out.rows.hi; ++y) {
    int8_t* dst = out.Pixel(y, out.cols.lo);
    const int32_t sy = y - pad_top;
    if (sy < 0 || sy >= in.height || x_lo >= x_hi) {
      memset(dst, value, width);
      continue;
    }
    const size_t before = static_cast<size_t>(x_lo + pad_left - out.cols.lo) * c;
    const size_t middle = static_cast<size_t>(x_hi - x_lo) * c;
    memset(dst, value, before);
    memcpy(dst + before, in.At(sy, x_lo), middle);
    memset(dst + before + middle, value, width - before - middle);
  }
}

struct AddParams {
  int32_t input1_offset;
  int32_t input2_offset;
  int32_t left_shift;
  Requant q1;
  Requant q2;
  Requant qout;
  OutputStage os;
};

inline AddParams MakeAddParams(const int32_t* p) {
  AddParams a;
  a.input1_offset = p[0];
  a.input2_offset = p[4];
  a.left_shift = p[5] < 0 ? 0 : (p[5] > 31 ? 31 : p[5]);
  a.q1 = MakeRequant(p[6], p[7]);
  a.q2 = MakeRequant(p[8], p[9]);
  a.qout = MakeRequant(p[10], p[11]);
  a.os = MakeOutputStage(p[1], p[2], p[3]);
  return a;
}

inline int8_t AddOne(const AddParams& p, int8_t x1, int8_t x2) {
  const int32_t v1 = ToInt32(static_cast<uint32_t>(x1 + p.input1_offset) << p.left_shift);
  const int32_t v2 = ToInt32(static_cast<uint32_t>(x2 + p.input2_offset) << p.left_shift);
  const uint32_t raw = static_cast<uint32_t>(MultiplyByQuantized(v1, p.q1)) +
                       static_cast<uint32_t>(MultiplyByQuantized(v2, p.q2));
  return Finish(MultiplyByQuantized(Wrap(raw), p.qout), p.os);
}

// reference_integer_ops::Add (same shapes) over the output patch.
inline void Add(const AddParams& p, const InView& in1, const InView& in2, const OutView& out) {
  const size_t width = static_cast<size_t>(out.cols.size()) * static_cast<size_t>(out.channels);
  for (int32_t y = out.rows.lo; y < out.rows.hi; ++y) {
    const int8_t* a = in1.At(y, out.cols.lo);
    const int8_t* b = in2.At(y, out.cols.lo);
    int8_t* dst = out.Pixel(y, out.cols.lo);
    for (size_t i = 0; i < width; ++i) dst[i] = AddOne(p, a[i], b[i]);
  }
}

struct MulParams {
  int32_t input1_offset;
  int32_t input2_offset;
  Requant q;
  OutputStage os;
};

inline MulParams MakeMulParams(const int32_t* p) {
  MulParams a;
  a.input1_offset = p[0];
  a.input2_offset = p[4];
  a.q = MakeRequant(p[5], p[6]);
  a.os = MakeOutputStage(p[1], p[2], p[3]);
  return a;
}

// reference_integer_ops::BroadcastMul of the patch by a per-channel tensor `s` (C int8
// values, broadcast over rows and columns): (x + off1) * (s + off2) (|.| < 2^18, no
// overflow) -> MultiplyByQuantizedMultiplier -> + output offset -> clamp.
inline void MulChannels(const MulParams& p, const InView& in, const int8_t* s, const OutView& out) {
  const int32_t channels = out.channels;
  for (int32_t y = out.rows.lo; y < out.rows.hi; ++y) {
    const int8_t* a = in.At(y, out.cols.lo);
    int8_t* dst = out.Pixel(y, out.cols.lo);
    for (int32_t x = 0; x < out.cols.size(); ++x) {
      for (int32_t c = 0; c < channels; ++c) {
        const int32_t v = (a[c] + p.input1_offset) * (s[c] + p.input2_offset);
        dst[c] = Finish(MultiplyByQuantized(v, p.q), p.os);
      }
      a += channels;
      dst += out.pixel_stride;
    }
  }
}

// CONCATENATION along channels over the output patch: each pixel's channels of in1, then
// those of in2 (out.channels = in1.channels + in2.channels).
inline void Concat(const InView& in1, const InView& in2, const OutView& out) {
  const size_t c1 = static_cast<size_t>(in1.channels);
  const size_t c2 = static_cast<size_t>(in2.channels);
  for (int32_t y = out.rows.lo; y < out.rows.hi; ++y) {
    const int8_t* a = in1.At(y, out.cols.lo);
    const int8_t* b = in2.At(y, out.cols.lo);
    int8_t* dst = out.Pixel(y, out.cols.lo);
    for (int32_t x = out.cols.lo; x < out.cols.hi; ++x, a += c1, b += c2) {
      memcpy(dst, a, c1);
      memcpy(dst + c1, b, c2);
      dst += out.pixel_stride;
    }
  }
}

// A unary int8 op as its 256-entry table (entry x + 128 is the op's output for x) over
// the output patch.
inline void Lut(const int8_t* table, const InView& in, const OutView& out) {
  const size_t width = static_cast<size_t>(out.cols.size()) * static_cast<size_t>(out.channels);
  for (int32_t y = out.rows.lo; y < out.rows.hi; ++y) {
    const int8_t* a = in.At(y, out.cols.lo);
    int8_t* dst = out.Pixel(y, out.cols.lo);
    for (size_t i = 0; i < width; ++i) dst[i] = table[static_cast<uint8_t>(a[i]) ^ 0x80u];
  }
}

}  // namespace patch_exec

#if defined(PATCH_EXEC_KERNELS_O2)
#pragma GCC pop_options
#endif

#endif  // TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_KERNELS_H_
