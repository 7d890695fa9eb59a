// Copyright 2026 The tflm-patch Authors. Licensed under the Apache License, Version 2.0.
//
// PATCH_EXEC options blob, versions 1 to 3 (docs/patch_exec.md): layout constants,
// little-endian field reads (byte loads only, no unaligned casts), the record accessors
// (header, tensors, ranges, layers and, with the header flag CACHES, the cache table
// after the layer records) and the window geometry shared by the validator and the
// kernels. Internal to the core.
#ifndef TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_BLOB_H_
#define TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_BLOB_H_

#include <stddef.h>
#include <stdint.h>

namespace patch_exec {

constexpr uint32_t kHeaderBytes = 32;
constexpr uint32_t kTensorBytes = 16;
constexpr uint32_t kRangeBytes = 4;
constexpr uint32_t kLayerBytes = 80;
constexpr uint32_t kCacheBytes = 8;  // one cache table record (header flag CACHES)
constexpr uint16_t kNone = 0xFFFF;
constexpr uint32_t kExternal = 0xFFFFFFFFu;
constexpr uint32_t kMaxLayers = 128;
constexpr uint32_t kMaxGrid = 256;
constexpr int kNumP = 12;
constexpr uint64_t kLutEntries = 256;  // a LUT layer's table: int8, entry x + 128 for x
// Rule 10 and the size rules: every stage tensor and constant is under 2^31 bytes (so
// 32-bit targets index them with int32_t), the scratch at most 2^31 - 16 bytes (TFLM
// aligns its requests to 16 in 32-bit arithmetic), and at most the slots and caches
// laid end to end with kRegionSlack bytes of alignment each.
constexpr int64_t kMaxTensorBytes = 0x7FFFFFFF;
constexpr uint32_t kMaxScratchBytes = 0x7FFFFFF0u;
constexpr int64_t kRegionSlack = 8;
constexpr uint16_t kFlagInputNchw = 1;    // header flags (version 2): input 0 is [1, C, H, W]
constexpr uint16_t kFlagCaches = 2;       // a cache table follows the layer records
constexpr uint16_t kFlagPacked = 4;       // version 3: constants are (input, offset p[4..7])
constexpr uint16_t kTensorCacheCols = 1;  // tensor flags (version 2): halo reuse between
                                          // horizontally adjacent patches
constexpr uint8_t kLayerStream = 1;       // layer flags (version 2): run with the next layer
                                          // channel by channel

enum Kind : uint8_t {
  kConv = 1,
  kDepthwise = 2,
  kAveragePool = 3,
  kMaxPool = 4,
  kPad = 5,
  kAdd = 6,
  kLut = 7,     // a unary int8 op as a 256-entry int8 table (the weights input)
  kMul = 8,     // by a runtime per-channel int8 tensor (the weights input), broadcast over H, W
  kConcat = 9,  // CONCATENATION of input0 and input1 along channels (a copy)
};

inline uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

inline uint32_t LoadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

// Two's complement reinterpretation without implementation-defined conversions.
inline int32_t ToInt32(uint32_t v) {
  return v <= 0x7FFFFFFFu ? static_cast<int32_t>(v) : -static_cast<int32_t>(~v) - 1;
}

inline int32_t LoadI32(const uint8_t* p) { return ToInt32(LoadU32(p)); }

// Size of a blob with this many layers and grid, with or without the cache table
// (64-bit: cannot overflow).
inline uint64_t BlobSize(uint64_t num_layers, uint64_t n, uint64_t m, bool caches) {
  const uint64_t t = num_layers + 1;
  return kHeaderBytes + kTensorBytes * t + kRangeBytes * t * (n + m) + kLayerBytes * num_layers +
         (caches ? kCacheBytes * t : 0);
}

struct Header {
  uint16_t version;
  uint16_t header_bytes;
  uint32_t total_bytes;
  uint16_t num_tensors;
  uint16_t num_layers;
  uint16_t grid_rows;
  uint16_t grid_cols;
  uint32_t scratch_bytes;
  uint16_t num_inputs;
  uint16_t flags;  // version 1: reserved (0)
  uint32_t reserved;
};

// Reads the 32-byte header; the caller guarantees 32 readable bytes.
inline Header ReadHeader(const uint8_t* b) {
  Header h;
  h.version = LoadU16(b + 4);
  h.header_bytes = LoadU16(b + 6);
  h.total_bytes = LoadU32(b + 8);
  h.num_tensors = LoadU16(b + 12);
  h.num_layers = LoadU16(b + 14);
  h.grid_rows = LoadU16(b + 16);
  h.grid_cols = LoadU16(b + 18);
  h.scratch_bytes = LoadU32(b + 20);
  h.num_inputs = LoadU16(b + 24);
  h.flags = LoadU16(b + 26);
  h.reserved = LoadU32(b + 28);
  return h;
}

struct TensorRec {
  int32_t height;
  int32_t width;
  int32_t channels;
  uint16_t flags;  // version 1: reserved (0); version 2: kTensorCacheCols
  uint32_t slot_offset;
  uint32_t slot_bytes;
};

// A cache table record: where tensor t's cache lives in the scratch (kExternal and 0
// without CACHE_COLS).
struct CacheRec {
  uint32_t offset;
  uint32_t bytes;
};

// [lo, hi) along one axis.
struct Range {
  int32_t lo;
  int32_t hi;
  int32_t size() const { return hi - lo; }
  bool empty() const { return hi <= lo; }
};

struct LayerRec {
  uint8_t kind;
  uint8_t flags;  // version 1: reserved (0)
  uint16_t input0;
  uint16_t input1;
  int32_t kernel_h;
  int32_t kernel_w;
  int32_t stride_h;
  int32_t stride_w;
  int32_t dilation_h;
  int32_t dilation_w;
  int32_t pad_top;
  int32_t pad_left;
  int32_t depth_multiplier;
  uint16_t weights;
  uint16_t bias;
  uint16_t multipliers;
  uint16_t shifts;
  int32_t p[kNumP];
};

// Field offsets of a blob whose header passed the length checks (rule 1): every
// record it returns lies inside [blob, blob + total_bytes).
class Layout {
 public:
  explicit Layout(const uint8_t* blob)
      : blob_(blob),
        num_tensors_(LoadU16(blob + 12)),
        num_layers_(LoadU16(blob + 14)),
        grid_rows_(LoadU16(blob + 16)),
        grid_cols_(LoadU16(blob + 18)) {}

  uint32_t num_tensors() const { return num_tensors_; }
  uint32_t num_layers() const { return num_layers_; }
  uint32_t grid_rows() const { return grid_rows_; }
  uint32_t grid_cols() const { return grid_cols_; }
  uint32_t scratch_bytes() const { return LoadU32(blob_ + 20); }
  uint32_t num_inputs() const { return LoadU16(blob_ + 24); }
  bool input_nchw() const { return (LoadU16(blob_ + 26) & kFlagInputNchw) != 0; }
  // Whether the blob has a cache table (header flag CACHES).
  bool caches() const { return (LoadU16(blob_ + 26) & kFlagCaches) != 0; }
  // Whether a conv layer's constants start at element offsets p[4..7] of their inputs
  // (header flag PACKED, version 3); else at offset 0.
  bool packed() const { return (LoadU16(blob_ + 26) & kFlagPacked) != 0; }
  // Whether tensor t has CACHE_COLS (validated blobs: only with the cache table).
  bool cached(uint32_t t) const {
    return (LoadU16(blob_ + kHeaderBytes + kTensorBytes * static_cast<size_t>(t) + 6) &
            kTensorCacheCols) != 0;
  }
  // Whether layer k runs with layer k + 1 channel by channel (its STREAM flag).
  bool stream(uint32_t k) const { return (LayerAt(k)[1] & kLayerStream) != 0; }
  // Whether stage tensor t lives in the scratch (tensor 0 only with INPUT_NCHW).
  bool has_slot(uint32_t t) const {
    return (t > 0 && t + 1 < num_tensors_) || (t == 0 && input_nchw());
  }

  TensorRec Tensor(uint32_t t) const {
    const uint8_t* p = blob_ + kHeaderBytes + kTensorBytes * static_cast<size_t>(t);
    TensorRec r;
    r.height = LoadU16(p);
    r.width = LoadU16(p + 2);
    r.channels = LoadU16(p + 4);
    r.flags = LoadU16(p + 6);
    r.slot_offset = LoadU32(p + 8);
    r.slot_bytes = LoadU32(p + 12);
    return r;
  }

  // Row band i (0..n-1) of tensor t.
  Range Row(uint32_t t, uint32_t i) const { return RangeAt(t, i); }
  // Column band j (0..m-1) of tensor t.
  Range Col(uint32_t t, uint32_t j) const { return RangeAt(t, grid_rows_ + j); }

  LayerRec Layer(uint32_t k) const;

  // Tensor t's cache table record; only when caches() (the table follows the layers).
  CacheRec Cache(uint32_t t) const {
    const uint8_t* p = LayerAt(num_layers_) + kCacheBytes * static_cast<size_t>(t);
    CacheRec c;
    c.offset = LoadU32(p);
    c.bytes = LoadU32(p + 4);
    return c;
  }

 private:
  const uint8_t* LayerAt(uint32_t k) const {
    const size_t bands = static_cast<size_t>(grid_rows_) + grid_cols_;
    return blob_ + kHeaderBytes +
           (kTensorBytes + kRangeBytes * bands) * static_cast<size_t>(num_tensors_) +
           kLayerBytes * static_cast<size_t>(k);
  }
  Range RangeAt(uint32_t t, uint32_t band) const {
    const size_t bands = static_cast<size_t>(grid_rows_) + grid_cols_;
    const uint8_t* p = blob_ + kHeaderBytes + kTensorBytes * static_cast<size_t>(num_tensors_) +
                       kRangeBytes * (static_cast<size_t>(t) * bands + band);
    Range r;
    r.lo = LoadU16(p);
    r.hi = LoadU16(p + 2);
    return r;
  }

  const uint8_t* blob_;
  uint32_t num_tensors_;
  uint32_t num_layers_;
  uint32_t grid_rows_;
  uint32_t grid_cols_;
};

inline LayerRec Layout::Layer(uint32_t k) const {
  const uint8_t* p = LayerAt(k);
  LayerRec r;
  r.kind = p[0];
  r.flags = p[1];
  r.input0 = LoadU16(p + 2);
  r.input1 = LoadU16(p + 4);
  r.kernel_h = LoadU16(p + 6);
  r.kernel_w = LoadU16(p + 8);
  r.stride_h = LoadU16(p + 10);
  r.stride_w = LoadU16(p + 12);
  r.dilation_h = LoadU16(p + 14);
  r.dilation_w = LoadU16(p + 16);
  r.pad_top = LoadU16(p + 18);
  r.pad_left = LoadU16(p + 20);
  r.depth_multiplier = LoadU16(p + 22);
  r.weights = LoadU16(p + 24);
  r.bias = LoadU16(p + 26);
  r.multipliers = LoadU16(p + 28);
  r.shifts = LoadU16(p + 30);
  for (int i = 0; i < kNumP; ++i) r.p[i] = LoadI32(p + 32 + 4 * i);
  return r;
}

// ------------------------------------------------------------------ window geometry

// Floor and ceiling division for any signs (d > 0).
inline int64_t FloorDiv(int64_t a, int64_t d) {
  const int64_t q = a / d;
  return (a % d != 0 && a < 0) ? q - 1 : q;
}
inline int64_t CeilDiv(int64_t a, int64_t d) { return -FloorDiv(-a, d); }
inline int64_t Mod(int64_t a, int64_t d) { return a - d * FloorDiv(a, d); }

// In-image positions [lo, hi) of an axis of n inputs that the outputs [o0, o1)
// read through a window of k taps (stride s, dilation d, padding p before the
// first input). False when they read none. Exact (equals patch_format's
// needed_range for window layers) in O(log^2) time whatever the kernel size (see
// patch_exec_core.cc).
bool WindowAxis(int64_t o0, int64_t o1, int64_t n, int64_t k, int64_t s, int64_t d, int64_t p,
                int64_t* lo, int64_t* hi);

// Taps [begin, end) of a window whose first tap is at `origin` that land in
// [0, n) (dilation d >= 1). Arguments of a validated blob fit in 32 bits.
struct TapRange {
  int32_t begin;
  int32_t end;
};

inline TapRange InImageTaps(int32_t origin, int32_t k, int32_t d, int32_t n) {
  TapRange r;
  if (d == 1) {
    r.begin = origin < 0 ? -origin : 0;
    const int32_t end = n - origin;
    r.end = end < k ? end : k;
  } else {
    r.begin = origin < 0 ? static_cast<int32_t>(CeilDiv(-static_cast<int64_t>(origin), d)) : 0;
    const int64_t last = FloorDiv(static_cast<int64_t>(n) - 1 - origin, d) + 1;
    r.end = last < k ? static_cast<int32_t>(last) : k;
  }
  if (r.end < r.begin) r.end = r.begin;
  return r;
}

}  // namespace patch_exec

#endif  // TFLM_PATCH_CUSTOM_OPS_PATCH_EXEC_PATCH_EXEC_BLOB_H_
