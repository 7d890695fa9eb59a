// Copyright 2026 The tflm-patch Authors. Licensed under the Apache License, Version 2.0.
//
// PATCH_EXEC portable core (patch_exec_core.h): the options validator (the 10 rules of
// docs/patch_exec.md, versions 1 to 3, messages like tflm_patch/patch_format.py) and
// the patch-by-patch executor (like tflm_patch/patch_ref.run_patch_exec: a CACHE_COLS
// output is restored from its cache, computed over its computed columns only, then
// saved for the next column band; no heap, row copies with memcpy). One
// translation unit; the kernels are in patch_exec_kernels.h. No heap, no exceptions, no
// float, no mutable static state.
#include "patch_exec_core.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <initializer_list>

#include "patch_exec_blob.h"
#include "patch_exec_kernels.h"
#include "patch_exec_quant.h"

namespace patch_exec {
namespace {

// ------------------------------------------------------------------ messages

// One formatting argument: an integer or a string.
struct Arg {
  Arg(int64_t v) : is_int(true), i(v), s(nullptr) {}  // NOLINT: implicit on purpose
  Arg(const char* v) : is_int(false), i(0), s(v) {}   // NOLINT
  bool is_int;
  int64_t i;
  const char* s;
};

class MessageWriter {
 public:
  MessageWriter(char* buf, size_t cap) : buf_(buf), cap_(cap), len_(0) {
    if (buf_ != nullptr && cap_ > 0) buf_[0] = '\0';
  }
  void Str(const char* s) {
    while (*s != '\0') Put(*s++);
  }
  void Int(int64_t v) {
    char digits[24];
    int n = 0;
    uint64_t u = v < 0 ? 0u - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
    do {
      digits[n++] = static_cast<char>('0' + static_cast<int>(u % 10));
      u /= 10;
    } while (u != 0);
    if (v < 0) Put('-');
    while (n > 0) Put(digits[--n]);
  }
  // Lowercase hexadecimal of v >= 0, at least `width` digits (Python's "{:0<width>x}").
  void Hex(uint64_t v, int width) {
    char digits[16];
    int n = 0;
    do {
      const int d = static_cast<int>(v & 15u);
      digits[n++] = static_cast<char>(d < 10 ? '0' + d : 'a' + d - 10);
      v >>= 4;
    } while (v != 0 && n < 16);
    for (int pad = n; pad < width; ++pad) Put('0');
    while (n > 0) Put(digits[--n]);
  }
  // Writes `format` with every "{}" replaced by the next argument, and every "{:0Nx}"
  // (N one digit) by the next integer argument in hexadecimal, at least N digits.
  void Format(const char* format, const std::initializer_list<Arg>& args) {
    const Arg* next = args.begin();
    for (const char* f = format; *f != '\0'; ++f) {
      const bool hex = f[0] == '{' && f[1] == ':' && f[2] == '0' && f[3] >= '0' && f[3] <= '9' &&
                       f[4] == 'x' && f[5] == '}';
      if (next != args.end() && hex) {
        Hex(next->is_int ? static_cast<uint64_t>(next->i) : 0u, f[3] - '0');
        ++next;
        f += 5;
      } else if (next != args.end() && f[0] == '{' && f[1] == '}') {
        if (next->is_int) {
          Int(next->i);
        } else {
          Str(next->s);
        }
        ++next;
        ++f;
      } else {
        Put(*f);
      }
    }
  }

 private:
  void Put(char c) {
    if (buf_ == nullptr || len_ + 1 >= cap_) return;
    buf_[len_++] = c;
    buf_[len_] = '\0';
  }
  char* buf_;
  size_t cap_;
  size_t len_;
};

const char* KindName(uint8_t kind) {
  switch (kind) {
    case kConv:
      return "CONV_2D";
    case kDepthwise:
      return "DEPTHWISE_CONV_2D";
    case kAveragePool:
      return "AVERAGE_POOL_2D";
    case kMaxPool:
      return "MAX_POOL_2D";
    case kPad:
      return "PAD";
    case kAdd:
      return "ADD";
    case kLut:
      return "LUT";
    case kConcat:
      return "CONCATENATION";
    case kMul:
      return "MUL";
    default:
      return "unknown";
  }
}

bool IsConv(uint8_t kind) { return kind == kConv || kind == kDepthwise; }
bool IsPool(uint8_t kind) { return kind == kAveragePool || kind == kMaxPool; }
bool IsWindow(uint8_t kind) { return IsConv(kind) || IsPool(kind); }

// ------------------------------------------------------------------ window math

// sum_{x < n} floor((a x + b) / m) for m > 0 (the Euclid-like reduction: after
// a, b < m the lattice points under the line are counted with x and y swapped).
uint64_t FloorSum(uint64_t n, uint64_t m, uint64_t a, uint64_t b) {
  uint64_t total = 0;
  while (n > 0) {
    if (a >= m) {
      total += (n * (n - 1) / 2) * (a / m);
      a %= m;
    }
    if (b >= m) {
      total += n * (b / m);
      b %= m;
    }
    const uint64_t y_max = a * n + b;
    if (y_max < m) break;
    n = y_max / m;
    b = y_max % m;
    const uint64_t old_m = m;
    m = a;
    a = old_m;
  }
  return total;
}

// min_{0 <= x < count} (a x + b) mod m, for 0 <= a, b < m and count >= 1. Small
// counts directly; else a binary search on t with #{x: (a x + b) mod m <= t} =
// FloorSum(b) - FloorSum(b + m - t - 1) + count (O(log^2 m)).
int64_t MinMod(int64_t count, int64_t m, int64_t a, int64_t b) {
  if (count <= 64) {
    int64_t best = m;
    for (int64_t x = 0; x < count; ++x) {
      const int64_t v = (a * x + b) % m;
      best = v < best ? v : best;
    }
    return best;
  }
  const uint64_t n = static_cast<uint64_t>(count);
  const uint64_t um = static_cast<uint64_t>(m);
  const uint64_t ua = static_cast<uint64_t>(a);
  const uint64_t ub = static_cast<uint64_t>(b);
  const uint64_t base = FloorSum(n, um, ua, ub);
  int64_t lo = 0;
  int64_t hi = m - 1;
  while (lo < hi) {
    const int64_t t = lo + (hi - lo) / 2;
    const uint64_t below = FloorSum(n, um, ua, ub + um - static_cast<uint64_t>(t) - 1);
    if (base + n - below >= 1) {
      hi = t;
    } else {
      lo = t + 1;
    }
  }
  return lo;
}

int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

}  // namespace

// Output o reads input o * s + j * d - p through tap j. The lowest in-image read:
// taps whose read by o0 is >= 0 are best read by o0 (the first such tap wins); each
// earlier tap j (down to those still reaching 0 by o1 - 1) first enters the image at
// (j d - p) mod s. The highest is symmetric. Both are O(log) via MinMod.
bool WindowAxis(int64_t o0, int64_t o1, int64_t n, int64_t k, int64_t s, int64_t d, int64_t p,
                int64_t* lo, int64_t* hi) {
  if (o1 <= o0 || n <= 0 || k <= 0 || s <= 0 || d <= 0) return false;
  const int64_t first = o0 * s;
  const int64_t last = (o1 - 1) * s;
  int64_t low = -1;
  const int64_t ja = Max64(0, CeilDiv(p - first, d));
  if (ja < k && first + ja * d - p < n) low = first + ja * d - p;
  const int64_t jb = Max64(0, CeilDiv(p - last, d));
  const int64_t je = Min64(ja, k);
  if (jb < je) {
    const int64_t r = MinMod(je - jb, s, d % s, Mod(jb * d - p, s));
    if (r < n && (low < 0 || r < low)) low = r;
  }
  if (low < 0) return false;
  int64_t high = -1;
  const int64_t jc = Min64(k - 1, FloorDiv(n - 1 - last + p, d));
  if (jc >= 0 && last + jc * d - p >= 0) high = last + jc * d - p;
  const int64_t js = Max64(jc + 1, 0);
  const int64_t jf = Min64(k - 1, FloorDiv(n - 1 - first + p, d));
  if (js <= jf) {
    const int64_t r = MinMod(jf - js + 1, s, Mod(-d, s), Mod(n - 1 + p - js * d, s));
    if (n - 1 - r >= 0) high = Max64(high, n - 1 - r);
  }
  if (high < 0) return false;
  *lo = low;
  *hi = high + 1;
  return true;
}

namespace {

// In-image input positions [lo, hi) that output range `out` of layer `ly` reads
// along `axis` (patch_format.needed_range); false when none.
bool NeededRange(const LayerRec& ly, int axis, Range out, int64_t n_in, int64_t* lo, int64_t* hi) {
  if (out.hi <= out.lo) return false;
  const int64_t pad = axis == 0 ? ly.pad_top : ly.pad_left;
  if (IsWindow(ly.kind)) {
    const int64_t k = axis == 0 ? ly.kernel_h : ly.kernel_w;
    const int64_t s = axis == 0 ? ly.stride_h : ly.stride_w;
    const int64_t d = axis == 0 ? ly.dilation_h : ly.dilation_w;
    return WindowAxis(out.lo, out.hi, n_in, k, s, d, pad, lo, hi);
  }
  const int64_t shift = ly.kind == kPad ? pad : 0;
  *lo = Max64(out.lo - shift, 0);
  *hi = Min64(out.hi - shift, n_in);
  return *lo < *hi;
}

// The columns patch column j computes of tensor t: its range, less what the cache
// holds (CACHE_COLS, j > 0: from max(col_lo[j], col_hi[j - 1])).
Range ComputedCols(const Layout& L, uint32_t t, uint32_t j) {
  Range r = L.Col(t, j);
  if (j > 0 && L.cached(t)) {
    const int32_t prev_hi = L.Col(t, j - 1).hi;
    r.lo = r.lo > prev_hi ? r.lo : prev_hi;
  }
  return r;
}

// ------------------------------------------------------------------ validation

PatchExecStatus LayerConstant(const Layout& L, uint32_t k, uint32_t index, PatchExecConstType* type,
                              uint64_t* elements);

class Validator {
 public:
  Validator(const uint8_t* blob, size_t size, char* message, size_t message_size)
      : blob_(blob), size_(size), msg_(message, message_size), h_(), layout_(nullptr) {}

  PatchExecStatus Run();

 private:
  PatchExecStatus Fail(PatchExecStatus status, const char* format,
                       const std::initializer_list<Arg>& args) {
    msg_.Format(format, args);
    return status;
  }
  PatchExecStatus CheckHeader();
  PatchExecStatus CheckReserved();
  PatchExecStatus CheckTensor(uint32_t k);
  PatchExecStatus CheckTensorSlot(uint32_t k, const TensorRec& t);
  PatchExecStatus CheckCache(uint32_t k, const TensorRec& t);
  PatchExecStatus CheckCacheColumns(uint32_t k);
  PatchExecStatus CheckCacheOverlap();
  PatchExecStatus CheckTiling(bool rows);
  PatchExecStatus CheckLayer(uint32_t k);
  PatchExecStatus CheckIndices(uint32_t k, const LayerRec& ly);
  PatchExecStatus CheckStream(uint32_t k, const LayerRec& ly);
  PatchExecStatus CheckParams(uint32_t k, const LayerRec& ly);
  PatchExecStatus CheckAddParams(uint32_t k, const LayerRec& ly);
  PatchExecStatus CheckShapes(uint32_t k, const LayerRec& ly);
  PatchExecStatus CheckHalo(uint32_t k, const LayerRec& ly);
  PatchExecStatus CheckSlots();
  PatchExecStatus CheckScratchBytes();
  PatchExecStatus CheckConstantUses();
  int64_t SlotNeed(uint32_t k) const;
  int64_t CacheNeed(uint32_t k) const;

  const uint8_t* blob_;
  size_t size_;
  MessageWriter msg_;
  Header h_;
  const Layout* layout_;
};

PatchExecStatus Validator::CheckHeader() {
  if (size_ < kHeaderBytes) {
    return Fail(kPatchExecErrTruncated, "options are {} bytes, shorter than the {}-byte header",
                {static_cast<int64_t>(size_), kHeaderBytes});
  }
  if (blob_[0] != 'T' || blob_[1] != 'P' || blob_[2] != 'E' || blob_[3] != 'X') {
    return Fail(kPatchExecErrMagic,
                "bad magic {} {} {} {} (expected \"TPEX\"): not PATCH_EXEC "
                "options",
                {blob_[0], blob_[1], blob_[2], blob_[3]});
  }
  h_ = ReadHeader(blob_);
  if (h_.version < 1 || h_.version > 3) {
    return Fail(kPatchExecErrVersion,
                "options format version {} is not supported (this build "
                "reads versions 1, 2 and 3)",
                {h_.version});
  }
  if (h_.header_bytes != kHeaderBytes) {
    return Fail(kPatchExecErrVersion, "header_bytes {} != {}", {h_.header_bytes, kHeaderBytes});
  }
  if (h_.reserved != 0 || (h_.version == 1 && h_.flags != 0)) {
    return Fail(kPatchExecErrCounts, "header reserved fields not 0", {});
  }
  if ((h_.flags & ~(kFlagInputNchw | kFlagCaches | kFlagPacked)) != 0 ||
      ((h_.flags & kFlagPacked) != 0) != (h_.version == 3)) {
    return Fail(kPatchExecErrCounts,
                "unknown header flags 0x{:04x}, or PACKED without version 3 or version 3 "
                "without PACKED",
                {h_.flags});
  }
  if (h_.num_layers < 1 || h_.num_layers > kMaxLayers) {
    return Fail(kPatchExecErrCounts, "num_layers {} outside [1, {}]", {h_.num_layers, kMaxLayers});
  }
  if (h_.num_tensors != h_.num_layers + 1) {
    return Fail(kPatchExecErrCounts, "num_tensors {} != num_layers + 1 = {}",
                {h_.num_tensors, h_.num_layers + 1});
  }
  if (h_.grid_rows < 1 || h_.grid_rows > kMaxGrid || h_.grid_cols < 1 || h_.grid_cols > kMaxGrid) {
    return Fail(kPatchExecErrCounts, "grid {}x{} outside [1, {}]",
                {h_.grid_rows, h_.grid_cols, kMaxGrid});
  }
  const uint64_t expect =
      BlobSize(h_.num_layers, h_.grid_rows, h_.grid_cols, (h_.flags & kFlagCaches) != 0);
  if (h_.total_bytes != expect || size_ != expect) {
    const PatchExecStatus status =
        h_.total_bytes == expect && size_ < expect ? kPatchExecErrTruncated : kPatchExecErrCounts;
    return Fail(status,
                "total_bytes {}, blob length {}, expected {} for {} layers and a {}x{} "
                "grid",
                {h_.total_bytes, static_cast<int64_t>(size_), static_cast<int64_t>(expect),
                 h_.num_layers, h_.grid_rows, h_.grid_cols});
  }
  if (h_.num_inputs < 1) {
    return Fail(kPatchExecErrCounts, "num_inputs is 0 (input 0 is the stage input)", {});
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::CheckReserved() {
  const Layout& L = *layout_;
  for (uint32_t k = 0; k < L.num_tensors(); ++k) {
    const TensorRec t = L.Tensor(k);
    if (h_.version == 1 && t.flags != 0) {
      return Fail(kPatchExecErrTensor, "tensor {}: reserved field is {}", {k, t.flags});
    }
    if ((t.flags & ~kTensorCacheCols) != 0 || (t.flags != 0 && !L.caches())) {
      return Fail(kPatchExecErrTensor,
                  "tensor {}: flags 0x{:04x} unknown or CACHE_COLS without the header flag "
                  "CACHES",
                  {k, t.flags});
    }
  }
  for (uint32_t k = 0; k < L.num_layers(); ++k) {
    const LayerRec ly = L.Layer(k);
    if (h_.version == 1 && ly.flags != 0) {
      return Fail(kPatchExecErrLayer, "layer {}: reserved byte is {}", {k, ly.flags});
    }
    if ((ly.flags & ~kLayerStream) != 0) {
      return Fail(kPatchExecErrLayer, "layer {}: unknown flags 0x{:02x}", {k, ly.flags});
    }
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::CheckTensor(uint32_t k) {
  const Layout& L = *layout_;
  const TensorRec t = L.Tensor(k);
  if (t.height < 1 || t.width < 1 || t.channels < 1) {
    return Fail(kPatchExecErrTensor, "tensor {}: size {}x{}x{} has a zero",
                {k, t.height, t.width, t.channels});
  }
  const int64_t bytes = int64_t{t.height} * t.width * t.channels;  // < 2^48
  if (bytes > kMaxTensorBytes) {
    return Fail(kPatchExecErrTensor, "tensor {}: {}x{}x{} is {} bytes, more than 2^31 - 1",
                {k, t.height, t.width, t.channels, bytes});
  }
  for (int axis = 0; axis < 2; ++axis) {
    const uint32_t bands = axis == 0 ? L.grid_rows() : L.grid_cols();
    const int32_t size = axis == 0 ? t.height : t.width;
    for (uint32_t b = 0; b < bands; ++b) {
      const Range r = axis == 0 ? L.Row(k, b) : L.Col(k, b);
      if (r.lo > r.hi || r.hi > size) {
        return Fail(kPatchExecErrRange, "tensor {}: {} range {} [{}, {}) is outside [0, {})",
                    {k, axis == 0 ? "row" : "column", b, r.lo, r.hi, size});
      }
    }
  }
  const PatchExecStatus s = CheckCache(k, t);
  return s != kPatchExecOk ? s : CheckTensorSlot(k, t);
}

// Rule 9 for CACHE_COLS and the cache table record of tensor k. O(n + m).
PatchExecStatus Validator::CheckCache(uint32_t k, const TensorRec& t) {
  const Layout& L = *layout_;
  const CacheRec c = L.caches() ? L.Cache(k) : CacheRec{kExternal, 0};
  if ((t.flags & kTensorCacheCols) == 0) {
    if (c.offset != kExternal || c.bytes != 0) {
      return Fail(kPatchExecErrTensor, "tensor {}: has a cache but not the flag CACHE_COLS", {k});
    }
    return kPatchExecOk;
  }
  const bool streamed = k > 0 && k <= L.num_layers() && L.stream(k - 1);
  if (k == 0 || k + 1 >= L.num_tensors() || streamed) {
    return Fail(kPatchExecErrTensor,
                "tensor {}: CACHE_COLS only on an intermediate tensor that is not the output "
                "of a STREAM layer",
                {k});
  }
  PatchExecStatus s = CheckCacheColumns(k);
  if (s != kPatchExecOk) return s;
  if (c.offset == kExternal || static_cast<uint64_t>(c.offset) + c.bytes > h_.scratch_bytes) {
    return Fail(kPatchExecErrTensor, "tensor {}: cache [{}, +{}) is outside the {}-byte scratch",
                {k, c.offset, c.bytes, h_.scratch_bytes});
  }
  const int64_t need = CacheNeed(k);
  if (static_cast<int64_t>(c.bytes) < need) {
    return Fail(kPatchExecErrTensor, "tensor {}: cache of {} bytes < the widest overlap {}",
                {k, c.bytes, need});
  }
  return kPatchExecOk;
}

// CACHE_COLS: every column range of tensor k non-empty, lo and hi nondecreasing.
PatchExecStatus Validator::CheckCacheColumns(uint32_t k) {
  const Layout& L = *layout_;
  for (uint32_t j = 0; j < L.grid_cols(); ++j) {
    if (L.Col(k, j).empty()) {
      return Fail(kPatchExecErrTensor, "tensor {}: CACHE_COLS needs every column range non-empty",
                  {k});
    }
  }
  for (uint32_t j = 1; j < L.grid_cols(); ++j) {
    const Range prev = L.Col(k, j - 1);
    const Range cur = L.Col(k, j);
    if (cur.lo < prev.lo || cur.hi < prev.hi) {
      return Fail(kPatchExecErrTensor,
                  "tensor {}: CACHE_COLS needs column ranges moving right (band {} [{}, {}) "
                  "after [{}, {}))",
                  {k, j, cur.lo, cur.hi, prev.lo, prev.hi});
    }
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::CheckTensorSlot(uint32_t k, const TensorRec& t) {
  const Layout& L = *layout_;
  if (!L.has_slot(k)) {
    if (t.slot_offset != kExternal || t.slot_bytes != 0) {
      return Fail(kPatchExecErrTensor, "tensor {} is the stage {}: it has no scratch slot",
                  {k, k == 0 ? "input" : "output"});
    }
    return kPatchExecOk;
  }
  if (t.slot_offset == kExternal ||
      static_cast<uint64_t>(t.slot_offset) + t.slot_bytes > h_.scratch_bytes) {
    return Fail(kPatchExecErrTensor, "tensor {}: slot [{}, +{}) is outside the {}-byte scratch",
                {k, t.slot_offset, t.slot_bytes, h_.scratch_bytes});
  }
  const int64_t largest = SlotNeed(k);
  if (static_cast<int64_t>(t.slot_bytes) < largest) {
    return Fail(kPatchExecErrTensor, "tensor {}: slot of {} bytes < the largest patch {}",
                {k, t.slot_bytes, largest});
  }
  return kPatchExecOk;
}

// The bytes tensor k's slot must hold: its largest patch (rows x cols x channels), one
// channel of it for the output of a STREAM layer. < 2^48.
int64_t Validator::SlotNeed(uint32_t k) const {
  const Layout& L = *layout_;
  int64_t rows = 0;
  int64_t cols = 0;
  for (uint32_t i = 0; i < L.grid_rows(); ++i) rows = Max64(rows, L.Row(k, i).size());
  for (uint32_t j = 0; j < L.grid_cols(); ++j) cols = Max64(cols, L.Col(k, j).size());
  const bool streamed = k > 0 && L.stream(k - 1);
  return rows * cols * (streamed ? 1 : L.Tensor(k).channels);
}

// The bytes tensor k's cache must hold: the widest overlap, every row, every channel.
int64_t Validator::CacheNeed(uint32_t k) const {
  const Layout& L = *layout_;
  int64_t rows = 0;
  int64_t overlap = 0;
  for (uint32_t i = 0; i < L.grid_rows(); ++i) rows = Max64(rows, L.Row(k, i).size());
  for (uint32_t j = 1; j < L.grid_cols(); ++j) {
    overlap = Max64(overlap, L.Col(k, j - 1).hi - L.Col(k, j).lo);
  }
  return rows * overlap * L.Tensor(k).channels;
}

PatchExecStatus Validator::CheckTiling(bool rows) {
  const Layout& L = *layout_;
  const uint32_t out = L.num_tensors() - 1;
  const TensorRec t = L.Tensor(out);
  const uint32_t bands = rows ? L.grid_rows() : L.grid_cols();
  const char* what = rows ? "row" : "column";
  int32_t expect = 0;
  for (uint32_t b = 0; b < bands; ++b) {
    const Range r = rows ? L.Row(out, b) : L.Col(out, b);
    if (r.lo != expect || r.hi <= r.lo) {
      return Fail(kPatchExecErrRange,
                  "output {} band {} [{}, {}) does not continue the tiling "
                  "at {}",
                  {what, b, r.lo, r.hi, expect});
    }
    expect = r.hi;
  }
  const int32_t size = rows ? t.height : t.width;
  if (expect != size) {
    return Fail(kPatchExecErrRange, "output {} bands end at {}, not at {}", {what, expect, size});
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::CheckIndices(uint32_t k, const LayerRec& ly) {
  const char* name = KindName(ly.kind);
  if (ly.input0 >= k + 1) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): input0 {} is not produced before it",
                {k, name, ly.input0});
  }
  // ADD: input1 a stage tensor, or NONE with a runtime addend in weights (exactly one)
  if (ly.kind == kAdd && ((ly.input1 == kNone) == (ly.weights == kNone) ||
                          (ly.input1 != kNone && ly.input1 >= k + 1))) {
    return Fail(kPatchExecErrLayer,
                "layer {} ({}): input1 {} is not produced before it, or input1 and a runtime "
                "addend (weights) are not exactly one",
                {k, name, ly.input1});
  }
  if (ly.kind == kAdd && (ly.bias != kNone || ly.multipliers != kNone || ly.shifts != kNone)) {
    return Fail(kPatchExecErrLayer,
                "layer {} ({}): has constant inputs but is not a "
                "convolution",
                {k, name});
  }
  if (ly.kind == kConcat && ly.input1 >= k + 1) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): input1 {} is not produced before it",
                {k, name, ly.input1});
  }
  if (ly.kind != kAdd && ly.kind != kConcat && ly.input1 != kNone) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): input1 must be NONE", {k, name});
  }
  const uint16_t idx[4] = {ly.weights, ly.bias, ly.multipliers, ly.shifts};
  const char* names[4] = {"weights", "bias", "multipliers", "shifts"};
  for (int i = 0; i < 4; ++i) {
    if (idx[i] != kNone && (idx[i] == 0 || idx[i] >= h_.num_inputs)) {
      return Fail(kPatchExecErrLayer, "layer {} ({}): {} input {} outside [1, {})",
                  {k, name, names[i], idx[i], h_.num_inputs});
    }
  }
  if (IsConv(ly.kind) && (ly.weights == kNone || ly.multipliers == kNone || ly.shifts == kNone)) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): needs weights, multipliers and shifts",
                {k, name});
  }
  if (ly.kind == kLut &&
      (ly.weights == kNone || ly.bias != kNone || ly.multipliers != kNone || ly.shifts != kNone)) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): needs its table in weights and nothing else",
                {k, name});
  }
  if (ly.kind == kMul &&
      (ly.weights == kNone || ly.bias != kNone || ly.multipliers != kNone || ly.shifts != kNone)) {
    return Fail(kPatchExecErrLayer,
                "layer {} ({}): needs its side input in weights and nothing else", {k, name});
  }
  if (!IsConv(ly.kind) && ly.kind != kLut && ly.kind != kMul && ly.kind != kAdd &&
      (ly.weights != kNone || ly.bias != kNone || ly.multipliers != kNone || ly.shifts != kNone)) {
    return Fail(kPatchExecErrLayer,
                "layer {} ({}): has constant inputs but is not a "
                "convolution",
                {k, name});
  }
  if (ly.kernel_h < 1 || ly.kernel_w < 1 || ly.stride_h < 1 || ly.stride_w < 1 ||
      ly.dilation_h < 1 || ly.dilation_w < 1 || ly.depth_multiplier < 1) {
    return Fail(kPatchExecErrLayer,
                "layer {} ({}): kernel, stride, dilation and depth "
                "multiplier must be >= 1",
                {k, name});
  }
  if (ly.kind != kDepthwise && ly.depth_multiplier != 1) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): depth multiplier must be 1", {k, name});
  }
  if (!IsConv(ly.kind) && (ly.dilation_h != 1 || ly.dilation_w != 1)) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): dilation must be 1", {k, name});
  }
  if (!IsWindow(ly.kind) &&
      (ly.kernel_h != 1 || ly.kernel_w != 1 || ly.stride_h != 1 || ly.stride_w != 1)) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): kernel and stride must be 1", {k, name});
  }
  return kPatchExecOk;
}

bool InRange(int64_t v, int64_t lo, int64_t hi) { return lo <= v && v <= hi; }

PatchExecStatus Validator::CheckAddParams(uint32_t k, const LayerRec& ly) {
  const int32_t* p = ly.p;
  if (!InRange(p[4], -255, 255) || !InRange(p[5], 0, 30)) {
    return Fail(kPatchExecErrLayer,
                "layer {} (ADD): input2 offset {} or left shift {} out of "
                "range",
                {k, p[4], p[5]});
  }
  for (int i = 6; i < 12; i += 2) {
    if (p[i] < 0 || !InRange(p[i + 1], -31, 31)) {
      return Fail(kPatchExecErrLayer, "layer {} (ADD): multiplier {} / shift {} out of range",
                  {k, p[i], p[i + 1]});
    }
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::CheckParams(uint32_t k, const LayerRec& ly) {
  const int32_t* p = ly.p;
  const char* name = KindName(ly.kind);
  if (ly.kind != kPad && !(-128 <= p[2] && p[2] <= p[3] && p[3] <= 127)) {
    return Fail(kPatchExecErrLayer,
                "layer {} ({}): activation range [{}, {}] is not within "
                "int8",
                {k, name, p[2], p[3]});
  }
  if (ly.kind == kPad && !InRange(p[0], -128, 127)) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): pad value {} is not int8", {k, name, p[0]});
  }
  if ((IsConv(ly.kind) || ly.kind == kAdd || ly.kind == kMul) &&
      !(InRange(p[0], -255, 255) && InRange(p[1], -255, 255))) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): offsets {}, {} outside [-255, 255]",
                {k, name, p[0], p[1]});
  }
  if (ly.kind == kAdd) {
    const PatchExecStatus s = CheckAddParams(k, ly);
    if (s != kPatchExecOk) return s;
  }
  int used = ly.kind == kPad ? 1 : (ly.kind == kAdd ? 12 : 4);
  if (ly.kind == kConcat) used = 0;
  if (IsConv(ly.kind) && layout_->packed()) {
    used = 8;
    if (p[4] < 0 || p[5] < 0 || p[6] < 0 || p[7] < 0 || (ly.bias == kNone && p[5] != 0)) {
      return Fail(kPatchExecErrLayer,
                  "layer {} ({}): constant offsets [{}, {}, {}, {}] negative, or a bias offset "
                  "without a bias",
                  {k, name, p[4], p[5], p[6], p[7]});
    }
  }
  if (ly.kind == kMul) {
    used = 7;
    if (!InRange(p[4], -255, 255) || p[5] < 0 || !InRange(p[6], -31, 30)) {
      return Fail(kPatchExecErrLayer,
                  "layer {} ({}): input2 offset {}, multiplier {} or shift {} out of range",
                  {k, name, p[4], p[5], p[6]});
    }
  }
  if (ly.kind == kLut) {
    used = layout_->packed() ? 5 : 0;
    if (layout_->packed() && p[4] < 0) {
      return Fail(kPatchExecErrLayer, "layer {} ({}): table offset {} is negative",
                  {k, name, p[4]});
    }
    if (p[0] != 0 || p[1] != 0 || p[2] != 0 || p[3] != 0) {
      return Fail(kPatchExecErrLayer, "layer {} ({}): unused parameters are not 0", {k, name});
    }
  }
  bool unused_set = IsPool(ly.kind) && (p[0] != 0 || p[1] != 0);
  for (int i = used; i < kNumP; ++i) unused_set = unused_set || p[i] != 0;
  if (unused_set) {
    return Fail(kPatchExecErrLayer, "layer {} ({}): unused parameters are not 0", {k, name});
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::CheckShapes(uint32_t k, const LayerRec& ly) {
  const Layout& L = *layout_;
  const TensorRec src = L.Tensor(ly.input0);
  const TensorRec dst = L.Tensor(k + 1);
  const char* name = KindName(ly.kind);
  if (IsWindow(ly.kind)) {
    for (int axis = 0; axis < 2; ++axis) {
      const int64_t n_in = axis == 0 ? src.height : src.width;
      const int64_t n_out = axis == 0 ? dst.height : dst.width;
      const int64_t stride = axis == 0 ? ly.stride_h : ly.stride_w;
      const int64_t pad = axis == 0 ? ly.pad_top : ly.pad_left;
      if ((n_out - 1) * stride - pad >= n_in) {
        return Fail(kPatchExecErrShape,
                    "layer {} ({}): {} outputs along axis {} start past the "
                    "{} inputs",
                    {k, name, n_out, axis, n_in});
      }
    }
    const int64_t expect = ly.kind == kDepthwise ? int64_t{src.channels} * ly.depth_multiplier
                           : ly.kind == kConv    ? dst.channels
                                                 : src.channels;
    if (dst.channels != expect) {
      return Fail(kPatchExecErrShape, "layer {} ({}): {} output channels, expected {}",
                  {k, name, dst.channels, expect});
    }
  } else if (ly.kind == kPad) {
    if (dst.height - src.height - ly.pad_top < 0 || dst.width - src.width - ly.pad_left < 0 ||
        dst.channels != src.channels) {
      return Fail(
          kPatchExecErrShape, "layer {} ({}): output {}x{}x{} is not the padded {}x{}x{}",
          {k, name, dst.height, dst.width, dst.channels, src.height, src.width, src.channels});
    }
  } else if (ly.kind == kConcat) {
    const TensorRec other = L.Tensor(ly.input1);
    if (src.height != dst.height || src.width != dst.width || other.height != dst.height ||
        other.width != dst.width || int64_t{src.channels} + other.channels != dst.channels) {
      return Fail(kPatchExecErrShape,
                  "layer {} ({}): output {}x{}x{} is not the channels of {}x{}x{} and {}x{}x{} "
                  "joined",
                  {k, name, dst.height, dst.width, dst.channels, src.height, src.width,
                   src.channels, other.height, other.width, other.channels});
    }
  } else if (ly.kind == kLut || ly.kind == kMul) {
    if (src.height != dst.height || src.width != dst.width || src.channels != dst.channels) {
      return Fail(kPatchExecErrShape, "layer {} ({}): input and output shapes differ", {k, name});
    }
  } else {
    const TensorRec other = ly.input1 == kNone ? dst : L.Tensor(ly.input1);  // addend: dst's
    const bool same = src.height == other.height && src.width == other.width &&
                      src.channels == other.channels && src.height == dst.height &&
                      src.width == dst.width && src.channels == dst.channels;
    if (!same) {
      return Fail(kPatchExecErrShape,
                  "layer {} ({}): input and output shapes differ: {}x{}x{}, "
                  "{}x{}x{} -> {}x{}x{}",
                  {k, name, src.height, src.width, src.channels, other.height, other.width,
                   other.channels, dst.height, dst.width, dst.channels});
    }
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::CheckHalo(uint32_t k, const LayerRec& ly) {
  const Layout& L = *layout_;
  const uint16_t inputs[2] = {ly.input0, ly.input1};
  const int num = (ly.kind == kAdd && ly.input1 != kNone) || ly.kind == kConcat ? 2 : 1;
  for (int which = 0; which < num; ++which) {
    const uint32_t t = inputs[which];
    const TensorRec src = L.Tensor(t);
    for (int axis = 0; axis < 2; ++axis) {
      const uint32_t bands = axis == 0 ? L.grid_rows() : L.grid_cols();
      for (uint32_t b = 0; b < bands; ++b) {
        const Range out = axis == 0 ? L.Row(k + 1, b) : ComputedCols(L, k + 1, b);
        const Range kept = axis == 0 ? L.Row(t, b) : L.Col(t, b);
        int64_t lo = 0;
        int64_t hi = 0;
        if (!NeededRange(ly, axis, out, axis == 0 ? src.height : src.width, &lo, &hi)) continue;
        if (kept.lo <= lo && hi <= kept.hi) continue;
        return Fail(
            kPatchExecErrHalo,
            "layer {} ({}): {} band {} reads [{}, {}) of tensor {} "
            "but only [{}, {}) is kept (halo too small)",
            {k, KindName(ly.kind), axis == 0 ? "row" : "column", b, lo, hi, t, kept.lo, kept.hi});
      }
    }
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::CheckLayer(uint32_t k) {
  const LayerRec ly = layout_->Layer(k);
  if (ly.kind < kConv || (ly.kind > kLut && ly.kind != kMul && ly.kind != kConcat)) {
    return Fail(kPatchExecErrLayer, "layer {}: unknown kind {}", {k, ly.kind});
  }
  PatchExecStatus s = CheckIndices(k, ly);
  if (s == kPatchExecOk && (ly.flags & kLayerStream) != 0) s = CheckStream(k, ly);
  if (s == kPatchExecOk) s = CheckParams(k, ly);
  if (s == kPatchExecOk) s = CheckShapes(k, ly);
  if (s == kPatchExecOk) s = CheckHalo(k, ly);
  return s;
}

// Rule 9: a STREAM layer k is a CONV_2D whose output only the next layer reads, a
// DEPTHWISE_CONV_2D with depth multiplier 1. O(L).
PatchExecStatus Validator::CheckStream(uint32_t k, const LayerRec& ly) {
  const Layout& L = *layout_;
  bool paired = ly.kind == kConv && k + 1 < L.num_layers();
  if (paired) {
    const LayerRec next = L.Layer(k + 1);
    paired = next.kind == kDepthwise && next.depth_multiplier == 1 && next.input0 == k + 1;
  }
  if (!paired) {
    return Fail(kPatchExecErrLayer,
                "layer {} ({}): STREAM needs a CONV_2D followed by the "
                "DEPTHWISE_CONV_2D (depth multiplier 1) that reads its output",
                {k, KindName(ly.kind)});
  }
  for (uint32_t j = 0; j < L.num_layers(); ++j) {
    const LayerRec other = L.Layer(j);
    if (j != k + 1 && (other.input0 == k + 1 || other.input1 == k + 1)) {
      return Fail(kPatchExecErrLayer,
                  "layer {} ({}): STREAM output tensor {} is also read by layer {}",
                  {k, KindName(ly.kind), k + 1, j});
    }
  }
  return kPatchExecOk;
}

// Rule 8. Tensor t lives from layer t - 1 (tensor 0: before layer 0) to its last
// reader; a STREAM layer k reads its inputs until layer k + 1.
PatchExecStatus Validator::CheckSlots() {
  const Layout& L = *layout_;
  const uint32_t num_t = L.num_tensors();
  int16_t last_use[kMaxLayers + 1];  // life of tensor t: layers [t - 1, last_use[t]]
  for (uint32_t t = 0; t < num_t; ++t) last_use[t] = static_cast<int16_t>(t) - 1;
  for (uint32_t k = 0; k < L.num_layers(); ++k) {
    const LayerRec ly = L.Layer(k);
    const int16_t until = static_cast<int16_t>((ly.flags & kLayerStream) != 0 ? k + 1 : k);
    if (last_use[ly.input0] < until) last_use[ly.input0] = until;
    if (ly.input1 != kNone && last_use[ly.input1] < until) last_use[ly.input1] = until;
  }
  for (uint32_t a = L.has_slot(0) ? 0 : 1; a + 1 < num_t; ++a) {
    const TensorRec ta = L.Tensor(a);
    for (uint32_t b = a + 1; b + 1 < num_t; ++b) {
      if (last_use[a] < static_cast<int32_t>(b) - 1) continue;  // a dies before b is made
      const TensorRec tb = L.Tensor(b);
      const uint64_t a0 = ta.slot_offset, a1 = a0 + ta.slot_bytes;
      const uint64_t b0 = tb.slot_offset, b1 = b0 + tb.slot_bytes;
      if (a0 < b1 && b0 < a1) {
        return Fail(kPatchExecErrSlotOverlap,
                    "tensors {} and {} are live together but their "
                    "scratch slots overlap",
                    {a, b});
      }
    }
  }
  return kPatchExecOk;
}

// Rule 9: caches live for the whole run; a cache overlaps no slot and no other cache
// (zero-size regions overlap nothing). Reported like patch_format: per cached tensor,
// the slots first, then the caches, in tensor order. O(T^2).
PatchExecStatus Validator::CheckCacheOverlap() {
  const Layout& L = *layout_;
  const uint32_t num_t = L.num_tensors();
  for (uint32_t k = 0; k < num_t; ++k) {
    if (!L.cached(k)) continue;
    const CacheRec c = L.Cache(k);
    if (c.bytes == 0) continue;
    const uint64_t c0 = c.offset, c1 = c0 + c.bytes;
    for (uint32_t pass = 0; pass < 2; ++pass) {
      for (uint32_t o = 0; o < num_t; ++o) {
        const bool slot = pass == 0;
        if (slot ? !L.has_slot(o) : (o == k || !L.cached(o))) continue;
        const TensorRec t = L.Tensor(o);
        const uint64_t o0 = slot ? t.slot_offset : L.Cache(o).offset;
        const uint64_t o1 = o0 + (slot ? t.slot_bytes : L.Cache(o).bytes);
        if (o1 > o0 && o0 < c1 && c0 < o1) {
          return Fail(kPatchExecErrSlotOverlap,
                      "the cache of tensor {} overlaps the {} of tensor {}",
                      {k, slot ? "slot" : "cache", o});
        }
      }
    }
  }
  return kPatchExecOk;
}

PatchExecStatus Validator::Run() {
  PatchExecStatus s = CheckHeader();
  if (s != kPatchExecOk) return s;
  const Layout layout(blob_);
  layout_ = &layout;
  s = CheckReserved();
  if (s != kPatchExecOk) return s;
  const TensorRec out = layout.Tensor(layout.num_tensors() - 1);
  if (static_cast<int32_t>(h_.grid_rows) > out.height ||
      static_cast<int32_t>(h_.grid_cols) > out.width) {
    return Fail(kPatchExecErrCounts, "grid {}x{} is finer than the {}x{} output",
                {h_.grid_rows, h_.grid_cols, out.height, out.width});
  }
  for (uint32_t k = 0; k < layout.num_tensors() && s == kPatchExecOk; ++k) s = CheckTensor(k);
  if (s == kPatchExecOk) s = CheckTiling(true);
  if (s == kPatchExecOk) s = CheckTiling(false);
  for (uint32_t k = 0; k < layout.num_layers() && s == kPatchExecOk; ++k) s = CheckLayer(k);
  if (s == kPatchExecOk) s = CheckSlots();
  if (s == kPatchExecOk && layout.caches()) s = CheckCacheOverlap();
  if (s == kPatchExecOk) s = CheckScratchBytes();
  if (s == kPatchExecOk) s = CheckConstantUses();
  return s;
}

// Rule 10: scratch_bytes is no more than the slots and caches need laid end to end
// (kRegionSlack bytes of alignment each) and no more than kMaxScratchBytes, so that
// TFLM's 32-bit arithmetic on the request (alignment, offsets) cannot wrap. O(T (n + m)).
PatchExecStatus Validator::CheckScratchBytes() {
  const Layout& L = *layout_;
  if (h_.scratch_bytes > kMaxScratchBytes) {
    return Fail(kPatchExecErrTensor, "scratch_bytes {} is more than {} (2^31 - 16)",
                {h_.scratch_bytes, kMaxScratchBytes});
  }
  int64_t need = 0;  // at most 2 * 129 regions of < 2^48 bytes each
  int64_t regions = 0;
  for (uint32_t k = 0; k < L.num_tensors(); ++k) {
    if (L.has_slot(k)) {
      need += SlotNeed(k) + kRegionSlack;
      ++regions;
    }
    if (L.cached(k)) {
      need += CacheNeed(k) + kRegionSlack;
      ++regions;
    }
  }
  if (static_cast<int64_t>(h_.scratch_bytes) > need) {
    return Fail(kPatchExecErrTensor,
                "scratch_bytes {} is more than the {} bytes its {} slots and caches need laid "
                "end to end ({} bytes of alignment each)",
                {h_.scratch_bytes, need, regions, kRegionSlack});
  }
  return kPatchExecOk;
}

// Every operator input the layers reference is used with one type and (before version 3)
// one element count, each use ending within 2^31 - 1 bytes (PatchExecConstantSpec then
// always answers). O(L^2).
PatchExecStatus Validator::CheckConstantUses() {
  const Layout& L = *layout_;
  for (uint32_t k = 0; k < L.num_layers(); ++k) {
    const LayerRec ly = L.Layer(k);
    const uint16_t idx[4] = {ly.weights, ly.bias, ly.multipliers, ly.shifts};
    for (uint16_t index : idx) {
      if (index == kNone) continue;
      PatchExecConstType type;
      uint64_t count;
      bool ok = LayerConstant(L, k, index, &type, &count) == kPatchExecOk &&
                count * (type == kPatchExecConstInt32 ? 4 : 1) <= kMaxTensorBytes;
      for (uint32_t e = 0; ok && e < k; ++e) {
        PatchExecConstType t;
        uint64_t n;
        ok = LayerConstant(L, e, index, &t, &n) == kPatchExecOk &&
             (t == kPatchExecConstUnused || (t == type && (L.packed() || n == count)));
      }
      if (!ok) {
        return Fail(kPatchExecErrLayer,
                    "layer {} ({}): operator input {} is used with another type or size, or is "
                    "over 2^31 - 1 bytes",
                    {k, KindName(ly.kind), index});
      }
    }
  }
  return kPatchExecOk;
}

// ------------------------------------------------------------------ constants

// Element offset of constant `which` (0 weights, 1 bias, 2 multipliers, 3 shifts) of a
// conv layer in its operator input: p[4 + which] with PACKED (validated >= 0), else 0.
uint64_t ConstantOffset(const Layout& L, const LayerRec& ly, int which) {
  return L.packed() ? static_cast<uint64_t>(ly.p[4 + which]) : 0u;
}

// Type operator input `index` must have for one conv layer and the element count the
// layer reads of it up to (offset + count; with several uses, the largest), or
// kPatchExecConstUnused when the layer does not reference it. Below 2^50: no overflow.
PatchExecStatus LayerConstant(const Layout& L, uint32_t k, uint32_t index, PatchExecConstType* type,
                              uint64_t* elements) {
  const LayerRec ly = L.Layer(k);
  *type = kPatchExecConstUnused;
  *elements = 0;
  if (ly.kind == kMul && ly.weights == index) {  // the runtime per-channel operand
    *type = kPatchExecConstRuntimeInt8;
    *elements = static_cast<uint64_t>(L.Tensor(k + 1).channels);
  }
  if (ly.kind == kAdd && ly.weights == index) {  // a runtime addend of the output's shape
    const TensorRec t = L.Tensor(k + 1);
    *type = kPatchExecConstRuntimeInt8;
    *elements = static_cast<uint64_t>(t.height) * static_cast<uint64_t>(t.width) *
                static_cast<uint64_t>(t.channels);
  }
  if (ly.kind == kLut && ly.weights == index) {  // the table, at p[4] with PACKED
    *type = kPatchExecConstInt8;
    *elements = ConstantOffset(L, ly, 0) + kLutEntries;
  }
  if (!IsConv(ly.kind)) return kPatchExecOk;
  const uint64_t cout = static_cast<uint64_t>(L.Tensor(k + 1).channels);
  const uint64_t taps = static_cast<uint64_t>(ly.kernel_h) * static_cast<uint64_t>(ly.kernel_w);
  if (ly.weights == index) {
    *type = kPatchExecConstInt8;
    *elements =
        ConstantOffset(L, ly, 0) +
        (ly.kind == kConv ? cout * taps * static_cast<uint64_t>(L.Tensor(ly.input0).channels)
                          : taps * cout);
  }
  const uint16_t per_channel[3] = {ly.bias, ly.multipliers, ly.shifts};
  for (int i = 0; i < 3; ++i) {
    if (per_channel[i] != index) continue;
    if (*type == kPatchExecConstInt8) return kPatchExecErrConstant;  // the weights too
    if (*type == kPatchExecConstInt32 && !L.packed()) continue;      // same count
    const uint64_t end = ConstantOffset(L, ly, i + 1) + cout;
    *type = kPatchExecConstInt32;
    *elements = end > *elements ? end : *elements;
  }
  return kPatchExecOk;
}

// Data of constant `which` of conv layer `ly` (see ConstantOffset), `T` its element type;
// null when the input has no data. The one place the kernels resolve a constant.
template <typename T>
const T* ConstantAt(const Layout& L, PatchExecInputFn get_input, void* context, const LayerRec& ly,
                    int which) {
  const uint16_t index[4] = {ly.weights, ly.bias, ly.multipliers, ly.shifts};
  const T* data = static_cast<const T*>(get_input(context, index[which]));
  // p[4 + which] is the offset with PACKED and validated 0 without it ("unused parameters
  // are not 0"), so the run path adds it without reading the header flag
  static_cast<void>(L);
  return data == nullptr ? nullptr : data + ly.p[4 + which];
}

// ------------------------------------------------------------------ execution

struct Runner {
  const Layout* layout;
  const int8_t* input;
  int8_t* output;
  int8_t* scratch;
  PatchExecInputFn get_input;
  void* context;
};

InView MakeInView(const Runner& r, uint32_t t, uint32_t i, uint32_t j) {
  const TensorRec rec = r.layout->Tensor(t);
  InView v;
  v.height = rec.height;
  v.width = rec.width;
  v.channels = rec.channels;
  if (t == 0 && !r.layout->input_nchw()) {  // read in place from input 0
    v.data = r.input;
    v.r0 = 0;
    v.c0 = 0;
    v.row_stride = static_cast<ptrdiff_t>(rec.width) * rec.channels;
    return v;
  }
  const Range rows = r.layout->Row(t, i);
  const Range cols = r.layout->Col(t, j);
  v.data = r.scratch + rec.slot_offset;
  v.r0 = rows.lo;
  v.c0 = cols.lo;
  v.row_stride = static_cast<ptrdiff_t>(cols.size()) * rec.channels;
  return v;
}

OutView MakeOutView(const Runner& r, uint32_t t, uint32_t i, uint32_t j) {
  const TensorRec rec = r.layout->Tensor(t);
  OutView v;
  v.rows = r.layout->Row(t, i);
  v.cols = r.layout->Col(t, j);
  v.channels = rec.channels;
  v.pixel_stride = rec.channels;
  if (t + 1 == r.layout->num_tensors()) {  // written in place into output 0
    v.row_stride = static_cast<ptrdiff_t>(rec.width) * rec.channels;
    v.data = r.output + v.rows.lo * v.row_stride + static_cast<ptrdiff_t>(v.cols.lo) * rec.channels;
  } else {  // dense [rows][cols][C] in the slot
    v.row_stride = static_cast<ptrdiff_t>(v.cols.size()) * rec.channels;
    v.data = r.scratch + rec.slot_offset;
  }
  return v;
}

// A whole [1, H, W, C] tensor of `rec`'s size at `data` (read in place).
InView WholeView(const TensorRec& rec, const int8_t* data) {
  InView v;
  v.height = rec.height;
  v.width = rec.width;
  v.channels = rec.channels;
  v.data = data;
  v.r0 = 0;
  v.c0 = 0;
  v.row_stride = static_cast<ptrdiff_t>(rec.width) * rec.channels;
  return v;
}

// INPUT_NCHW: rows row[0][i] x columns col[0][j] of the [1, C, H, W] input into tensor
// 0's slot as dense [rows][cols][C], at the start of patch (i, j).
void GatherInput(const Runner& r, uint32_t i, uint32_t j) {
  const TensorRec rec = r.layout->Tensor(0);
  const Range rows = r.layout->Row(0, i);
  const Range cols = r.layout->Col(0, j);
  if (rows.empty() || cols.empty()) return;
  const size_t channels = static_cast<size_t>(rec.channels);
  const size_t width = static_cast<size_t>(cols.size());
  const size_t plane = static_cast<size_t>(rec.height) * static_cast<size_t>(rec.width);
  int8_t* dst = r.scratch + rec.slot_offset;
  for (int32_t y = rows.lo; y < rows.hi; ++y) {
    const int8_t* src = r.input + static_cast<size_t>(y) * static_cast<size_t>(rec.width) +
                        static_cast<size_t>(cols.lo);
    for (size_t c = 0; c < channels; ++c) {
      const int8_t* s = src + c * plane;
      int8_t* d = dst + c;
      for (size_t x = 0; x < width; ++x) d[x * channels] = s[x];
    }
    dst += width * channels;
  }
}

// The window, parameters and constants of a convolution layer (in and out unset).
PatchExecStatus MakeConvArgs(const Runner& r, const LayerRec& ly, ConvArgs* a) {
  a->g = MakeWindow(ly);
  a->input_offset = ly.p[0];
  a->os = MakeOutputStage(ly.p[1], ly.p[2], ly.p[3]);
  const Layout& L = *r.layout;
  a->weights = ConstantAt<int8_t>(L, r.get_input, r.context, ly, 0);
  a->bias = ly.bias == kNone ? nullptr : ConstantAt<int32_t>(L, r.get_input, r.context, ly, 1);
  a->multipliers = ConstantAt<int32_t>(L, r.get_input, r.context, ly, 2);
  a->shifts = ConstantAt<int32_t>(L, r.get_input, r.context, ly, 3);
  const bool missing = a->weights == nullptr || a->multipliers == nullptr || a->shifts == nullptr ||
                       (ly.bias != kNone && a->bias == nullptr);
  return missing ? kPatchExecErrConstant : kPatchExecOk;
}

PatchExecStatus RunConv(const Runner& r, const LayerRec& ly, const InView& in, const OutView& out) {
  ConvArgs a;
  const PatchExecStatus s = MakeConvArgs(r, ly, &a);
  if (s != kPatchExecOk) return s;
  a.tap_stride = static_cast<size_t>(out.channels);
  a.in = in;
  a.out = out;
  if (ly.kind == kConv) {
    ConvPerChannel(a);
  } else {
    DepthwiseConvPerChannel(a, ly.depth_multiplier);
  }
  return kPatchExecOk;
}

// ------------------------------------------------------------------ halo caches

// CACHE_COLS: copies `count` columns from column `at` of the slot view `slot` (dense
// [rows][cols][C]) to the cache (dense [rows][count][C]), or back with `restore`.
void CopyCacheColumns(const Runner& r, uint32_t t, const OutView& slot, int32_t at, int32_t count,
                      bool restore) {
  const size_t width = static_cast<size_t>(count) * static_cast<size_t>(slot.channels);
  int8_t* cache = r.scratch + r.layout->Cache(t).offset;
  int8_t* row = slot.data + static_cast<ptrdiff_t>(at - slot.cols.lo) * slot.pixel_stride;
  for (int32_t y = slot.rows.lo; y < slot.rows.hi; ++y) {
    if (restore) {
      memcpy(row, cache, width);
    } else {
      memcpy(cache, row, width);
    }
    row += slot.row_stride;
    cache += width;
  }
}

// Before tensor t of patch (i, j) is computed into `slot` (its whole range): restores
// the columns patch (i, j - 1) left in the cache and returns the view of the columns
// still to compute (empty when the cache held them all). Without CACHE_COLS: `slot`.
OutView RestoreCache(const Runner& r, uint32_t t, uint32_t j, const OutView& slot) {
  if (j == 0 || !r.layout->cached(t)) return slot;
  const int32_t prev_hi = r.layout->Col(t, j - 1).hi;  // validated: <= slot.cols.hi
  if (prev_hi <= slot.cols.lo) return slot;
  CopyCacheColumns(r, t, slot, slot.cols.lo, prev_hi - slot.cols.lo, true);
  OutView comp = slot;
  comp.data += static_cast<ptrdiff_t>(prev_hi - slot.cols.lo) * slot.pixel_stride;
  comp.cols.lo = prev_hi;
  return comp;
}

// After tensor t of patch (i, j) is in `slot`: saves the columns patch (i, j + 1)
// shares with it, [col_lo[t][j + 1], col_hi[t][j]), into the cache.
void SaveCache(const Runner& r, uint32_t t, uint32_t j, const OutView& slot) {
  if (j + 1 >= r.layout->grid_cols() || !r.layout->cached(t)) return;
  const int32_t next_lo = r.layout->Col(t, j + 1).lo;  // validated: >= slot.cols.lo
  if (next_lo >= slot.cols.hi) return;
  CopyCacheColumns(r, t, slot, next_lo, slot.cols.hi - next_lo, false);
}

// ------------------------------------------------------------------ layers

PatchExecStatus ComputeLayer(const Runner& r, uint32_t k, uint32_t i, uint32_t j,
                             const OutView& out);
PatchExecStatus ComputeStreamPair(const Runner& r, uint32_t k, uint32_t i, uint32_t j,
                                  const OutView& out);

// Layer k of patch (i, j), or with `stream` the STREAM pair of layers k and k + 1: its
// output tensor t (k + 1, or k + 2) over the patch's range; nothing when this patch does
// not need it; with CACHE_COLS on t, restore, compute the computed columns only (nothing
// when the cache held them all), save. (Direct calls, no function pointer: the static
// stack bound follows the call graph.)
PatchExecStatus RunLayer(const Runner& r, uint32_t k, uint32_t i, uint32_t j, bool stream) {
  const uint32_t t = k + (stream ? 2u : 1u);
  const OutView slot = MakeOutView(r, t, i, j);
  if (slot.rows.empty() || slot.cols.empty()) return kPatchExecOk;  // not needed by this patch
  const OutView out = RestoreCache(r, t, j, slot);
  PatchExecStatus s = kPatchExecOk;
  if (!out.cols.empty()) {
    s = stream ? ComputeStreamPair(r, k, i, j, out) : ComputeLayer(r, k, i, j, out);
  }
  if (s == kPatchExecOk) SaveCache(r, t, j, slot);
  return s;
}

// Layer k of patch (i, j) into `out` (its output range or the computed part of it).
PatchExecStatus ComputeLayer(const Runner& r, uint32_t k, uint32_t i, uint32_t j,
                             const OutView& out) {
  const LayerRec ly = r.layout->Layer(k);
  const InView in = MakeInView(r, ly.input0, i, j);
  switch (ly.kind) {
    case kConv:
    case kDepthwise:
      return RunConv(r, ly, in, out);
    case kAveragePool:
    case kMaxPool: {
      PoolArgs a;
      a.g = MakeWindow(ly);
      a.act_min = ly.p[2];
      a.act_max = ly.p[3];
      a.in = in;
      a.out = out;
      Pool(a, ly.kind == kAveragePool);
      return kPatchExecOk;
    }
    case kPad:
      Pad(in, out, ly.pad_top, ly.pad_left, static_cast<int8_t>(ly.p[0]));
      return kPatchExecOk;
    case kAdd:
      if (ly.input1 == kNone) {  // the runtime addend, read in place
        const int8_t* addend = static_cast<const int8_t*>(r.get_input(r.context, ly.weights));
        if (addend == nullptr) return kPatchExecErrConstant;
        Add(MakeAddParams(ly.p), in, WholeView(r.layout->Tensor(k + 1), addend), out);
        return kPatchExecOk;
      }
      Add(MakeAddParams(ly.p), in, MakeInView(r, ly.input1, i, j), out);
      return kPatchExecOk;
    case kLut: {
      const int8_t* table = ConstantAt<int8_t>(*r.layout, r.get_input, r.context, ly, 0);
      if (table == nullptr) return kPatchExecErrConstant;
      Lut(table, in, out);
      return kPatchExecOk;
    }
    case kConcat:
      Concat(in, MakeInView(r, ly.input1, i, j), out);
      return kPatchExecOk;
    case kMul: {
      const int8_t* s = static_cast<const int8_t*>(r.get_input(r.context, ly.weights));
      if (s == nullptr) return kPatchExecErrConstant;
      MulChannels(MakeMulParams(ly.p), in, s, out);
      return kPatchExecOk;
    }
    default:
      return kPatchExecErrLayer;  // unreachable for a validated blob
  }
}

// Channel c of a convolution alone: its filter (`filter` weights apart), bias,
// multiplier and shift; one output channel.
ConvArgs ChannelOf(ConvArgs a, int32_t c, size_t filter) {
  a.weights += static_cast<size_t>(c) * filter;
  if (a.bias != nullptr) a.bias += c;
  a.multipliers += c;
  a.shifts += c;
  a.out.channels = 1;
  return a;
}

// The STREAM pair of layers k (CONV_2D) and k + 1 (DEPTHWISE_CONV_2D, depth multiplier
// 1) of patch (i, j) into `out` (the range of tensor k + 2 or the computed part of it),
// channel by channel: channel c of tensor k + 1 into its slot, which holds one channel
// ([rows][cols]), then channel c of tensor k + 2 from it.
PatchExecStatus ComputeStreamPair(const Runner& r, uint32_t k, uint32_t i, uint32_t j,
                                  const OutView& out) {
  const LayerRec ly = r.layout->Layer(k);
  ConvArgs conv;
  ConvArgs dw;
  PatchExecStatus s = MakeConvArgs(r, ly, &conv);
  if (s == kPatchExecOk) s = MakeConvArgs(r, r.layout->Layer(k + 1), &dw);
  if (s != kPatchExecOk) return s;
  conv.in = MakeInView(r, ly.input0, i, j);
  conv.out = MakeOutView(r, k + 1, i, j);
  conv.out.row_stride = conv.out.cols.size();  // one channel
  conv.out.pixel_stride = 1;
  conv.tap_stride = 1;
  dw.in = MakeInView(r, k + 1, i, j);
  dw.in.row_stride = conv.out.row_stride;
  dw.in.channels = 1;
  dw.out = out;  // channel c: pixels stay out.channels apart
  dw.tap_stride = static_cast<size_t>(out.channels);
  // An empty range of tensor k + 1 with a non-empty one of k + 2 means that the
  // depthwise windows read only padding (validation rule 7): nothing to compute first.
  const bool mid = !conv.out.rows.empty() && !conv.out.cols.empty();
  const size_t filter = static_cast<size_t>(conv.g.kh) * static_cast<size_t>(conv.g.kw) *
                        static_cast<size_t>(conv.in.channels);
  const Range conv_interior = InteriorCols(conv.g, conv.in.width);  // once per patch
  const Range dw_interior = InteriorCols(dw.g, dw.in.width);
  for (int32_t c = 0; c < out.channels; ++c) {
    if (mid) ConvOneChannel(ChannelOf(conv, c, filter), conv_interior);
    ConvArgs d = ChannelOf(dw, c, 1);
    d.out.data += c;
    DepthwiseOneChannel(d, dw_interior);
  }
  return kPatchExecOk;
}

PatchExecStatus RunPatch(const Runner& r, uint32_t i, uint32_t j) {
  if (r.layout->input_nchw()) GatherInput(r, i, j);
  uint32_t k = 0;
  while (k < r.layout->num_layers()) {
    const bool stream = r.layout->stream(k);  // validated: layer k + 1 exists
    const PatchExecStatus s = RunLayer(r, k, i, j, stream);
    if (s != kPatchExecOk) return s;
    k += stream ? 2u : 1u;
  }
  return kPatchExecOk;
}

struct ArrayInputs {
  const void* const* inputs;
  uint32_t num_inputs;
};

const void* ArrayInput(void* context, uint32_t index) {
  const ArrayInputs* a = static_cast<const ArrayInputs*>(context);
  return index < a->num_inputs ? a->inputs[index] : nullptr;
}

}  // namespace
}  // namespace patch_exec

using patch_exec::Layout;

extern "C" {

PatchExecStatus PatchExecValidate(const uint8_t* blob, size_t size, char* message,
                                  size_t message_size) {
  if (message != nullptr && message_size > 0) message[0] = '\0';
  if (blob == nullptr && size > 0) {
    patch_exec::MessageWriter(message, message_size).Str("blob is a null pointer");
    return kPatchExecErrArgument;
  }
  patch_exec::Validator v(blob, size, message, message_size);  // reads nothing when size < 32
  return v.Run();
}

uint32_t PatchExecScratchBytes(const uint8_t* validated_blob) {
  return Layout(validated_blob).scratch_bytes();
}

uint32_t PatchExecNumInputs(const uint8_t* validated_blob) {
  return Layout(validated_blob).num_inputs();
}

void PatchExecIoShape(const uint8_t* validated_blob, int which, int32_t* h, int32_t* w,
                      int32_t* c) {
  const Layout layout(validated_blob);
  const patch_exec::TensorRec t = layout.Tensor(which == 0 ? 0 : layout.num_tensors() - 1);
  if (h != nullptr) *h = t.height;
  if (w != nullptr) *w = t.width;
  if (c != nullptr) *c = t.channels;
}

int PatchExecInputNchw(const uint8_t* validated_blob) {
  return Layout(validated_blob).input_nchw() ? 1 : 0;
}

int PatchExecConstantsPacked(const uint8_t* validated_blob) {
  return Layout(validated_blob).packed() ? 1 : 0;
}

PatchExecStatus PatchExecConstantSpec(const uint8_t* validated_blob, uint32_t index,
                                      PatchExecConstType* type, uint32_t* elements) {
  if (validated_blob == nullptr || type == nullptr || elements == nullptr) {
    return kPatchExecErrArgument;
  }
  const Layout layout(validated_blob);
  *type = kPatchExecConstUnused;
  *elements = 0;
  if (index == 0 || index >= layout.num_inputs()) return kPatchExecErrArgument;
  PatchExecConstType found = kPatchExecConstUnused;
  uint64_t count = 0;
  for (uint32_t k = 0; k < layout.num_layers(); ++k) {
    PatchExecConstType t;
    uint64_t n;
    if (patch_exec::LayerConstant(layout, k, index, &t, &n) != kPatchExecOk) {
      return kPatchExecErrConstant;
    }
    if (t == kPatchExecConstUnused) continue;
    if (found != kPatchExecConstUnused && (t != found || (n != count && !layout.packed()))) {
      return kPatchExecErrConstant;
    }
    found = t;
    count = n > count ? n : count;
  }
  if (count > 0xFFFFFFFFu) return kPatchExecErrConstant;
  *type = found;
  *elements = static_cast<uint32_t>(count);
  return kPatchExecOk;
}

PatchExecStatus PatchExecCheckConstants(const uint8_t* validated_blob, PatchExecInputFn get_input,
                                        void* context, char* message, size_t message_size) {
  patch_exec::MessageWriter msg(message, message_size);
  if (validated_blob == nullptr || get_input == nullptr) {
    msg.Str("null blob or input function");
    return kPatchExecErrArgument;
  }
  const Layout layout(validated_blob);
  for (uint32_t index = 1; index < layout.num_inputs(); ++index) {
    PatchExecConstType type;
    uint32_t elements;
    if (PatchExecConstantSpec(validated_blob, index, &type, &elements) != kPatchExecOk) {
      msg.Format("input {}: the layers need it as different constants (or it is too large)",
                 {index});
      return kPatchExecErrConstant;
    }
    // runtime inputs have no data before Eval: only constants are read here
    const bool constant = type != kPatchExecConstUnused && type != kPatchExecConstRuntimeInt8;
    const void* data = constant ? get_input(context, index) : nullptr;
    if (constant && data == nullptr) {
      msg.Format("input {}: no data", {index});
      return kPatchExecErrConstant;
    }
    // the kernels load int32 constants through int32_t pointers (TFLite's schema aligns
    // buffers to 16, so a well-formed model always passes)
    if (type == kPatchExecConstInt32 && reinterpret_cast<uintptr_t>(data) % sizeof(int32_t) != 0) {
      msg.Format("input {}: int32 data at an address that is not a multiple of 4", {index});
      return kPatchExecErrConstant;
    }
  }
  for (uint32_t k = 0; k < layout.num_layers(); ++k) {
    const patch_exec::LayerRec ly = layout.Layer(k);
    if (!patch_exec::IsConv(ly.kind)) continue;
    const int32_t cout = layout.Tensor(k + 1).channels;
    const int32_t* mult = patch_exec::ConstantAt<int32_t>(layout, get_input, context, ly, 2);
    const int32_t* shift = patch_exec::ConstantAt<int32_t>(layout, get_input, context, ly, 3);
    for (int32_t c = 0; c < cout; ++c) {
      if (mult[c] < 0 || shift[c] < -31 || shift[c] > 30) {
        msg.Format(
            "layer {} ({}): channel {}: multiplier {} / shift {} out of range "
            "([0, 2^31), [-31, 30])",
            {k, patch_exec::KindName(ly.kind), c, mult[c], shift[c]});
        return kPatchExecErrConstant;
      }
    }
  }
  return kPatchExecOk;
}

PatchExecStatus PatchExecRun(const uint8_t* validated_blob, const int8_t* input,
                             PatchExecInputFn get_input, void* context, int8_t* output,
                             int8_t* scratch) {
  if (validated_blob == nullptr || input == nullptr || output == nullptr || get_input == nullptr) {
    return kPatchExecErrArgument;
  }
  const Layout layout(validated_blob);
  if (scratch == nullptr && layout.scratch_bytes() > 0) return kPatchExecErrArgument;
  const patch_exec::Runner r = {&layout, input, output, scratch, get_input, context};
  for (uint32_t i = 0; i < layout.grid_rows(); ++i) {
    for (uint32_t j = 0; j < layout.grid_cols(); ++j) {
      const PatchExecStatus s = patch_exec::RunPatch(r, i, j);
      if (s != kPatchExecOk) return s;
    }
  }
  return kPatchExecOk;
}

PatchExecStatus PatchExecRunArray(const uint8_t* validated_blob, const int8_t* input,
                                  const void* const* inputs, uint32_t num_inputs, int8_t* output,
                                  int8_t* scratch) {
  if (validated_blob == nullptr || (inputs == nullptr && num_inputs > 0)) {
    return kPatchExecErrArgument;
  }
  if (num_inputs != PatchExecNumInputs(validated_blob)) return kPatchExecErrArgument;
  patch_exec::ArrayInputs array = {inputs, num_inputs};
  return PatchExecRun(validated_blob, input, patch_exec::ArrayInput, &array, output, scratch);
}

// For tests (ctypes): patch_format's window range along one axis; 1 with [*lo, *hi)
// when the outputs read some in-image input, else 0. Not part of the API.
int PatchExecWindowAxisForTest(int64_t o0, int64_t o1, int64_t n, int64_t k, int64_t s, int64_t d,
                               int64_t p, int64_t* lo, int64_t* hi) {
  return patch_exec::WindowAxis(o0, o1, n, k, s, d, p, lo, hi) ? 1 : 0;
}

}  // extern "C"
