// RoI Align on the CPU (Mask R-CNN, He et al. 2017, Sec. 3): single- and multi-level, avg and max.
// This header holds what the forward (roi_align_forward.cpp) and the backward
// (roi_align_backward.cpp) share: the per-RoI sample table, the prefetching and vector types of the
// hot loops over block buffers, the block buffers, the drivers' common helpers, and the argument
// checks (defined in roi_align_common.cpp, which also registers the four ops).
//
// Shapes: N images, C channels, L feature levels (H_l, W_l), K RoIs, P = ph * pw bins per RoI,
// S sample points per bin (sampling_ratio^2, or adaptive per RoI), B = kBlock channels per block.
//
// Algorithm (deterministic, no atomics):
// 1. Sample table (this header): for every RoI, the neighbour rows / columns and weights of its
//    sample points' y and x coordinates (`clamped_axis`), computed once in parallel over RoIs and
//    reused for every channel; the hot loops form each point's 4 neighbours and weights from its
//    two axes.
// 2. Forward (roi_align_forward.cpp): parallel over channel blocks. A thread copies its block of B
//    channels of every level (NCHW or NHWC) into a per-thread pixel-major buffer [pixels][B] (so
//    the input is read once, with no 55 MB NHWC copy, and the buffer stays in L3) and pools every
//    RoI from it with fixed-width vector loops over 4 neighbour rows per sample point.
// 3. Backward (roi_align_backward.cpp): parallel over channel blocks. A thread owns B channels: it
//    zeroes a per-thread buffer [pixels][B], scatter-adds every RoI's bins in a fixed order (RoI,
//    bin, sample, neighbour), then writes the block into the gradient in the input's memory
//    format. Each gradient element has one owner and one summation order, whatever the thread
//    count.
// RoIs are visited in a spatial order (roi_order) so that consecutive RoIs reuse buffer rows in
// L2, and in chunks of a bounded number of sample points (adaptive grids of huge RoIs). The block
// buffers are backed by transparent huge pages (aligned_memory.h).
// Threads take channel blocks from a shared counter (so a thread slowed down by other processes
// does not hold up the others); what a block computes does not depend on the thread running it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "common/bilinear.h"
#include "common/roi_align_mode.h"
#include "cpu/channel_block.h"
#include "cpu/cpu_utils.h"
#include "cpu/aligned_memory.h"
#include "cpu/simd.h"
#include "roi_align.h"

// GCC notes that vector arguments change the ABI between SIMD clones; they are all inlined
// (this header's helpers and the kernels of the files that include it).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace detector {
namespace roi_align_cpu {

constexpr int64_t kBlock = kChannelBlock;               // channels per block (B)
constexpr int64_t kMaxChunkSamples = int64_t(1) << 19;  // sample points per table chunk

using Mode = RoIAlignMode;

// One feature level: its plane size, scale, and first pixel in the concatenated block buffer.
struct Level {
  int64_t height;
  int64_t width;
  double spatial_scale;
  int64_t pixel_base;
};

struct Pooling {
  int64_t pooled_height;
  int64_t pooled_width;
  int64_t sampling_ratio;
  bool aligned;
  Mode mode;
  int64_t bins() const { return pooled_height * pooled_width; }
};

// The bin grid of one RoI on its level (torchvision's arithmetic, in the input's precision).
template <typename T>
struct RoiGrid {
  int64_t batch;
  T start_h, start_w, bin_h, bin_w;
  int64_t grid_h, grid_w;  // sample points per bin along y and x (>= 0)
  int64_t per_bin() const { return grid_h * grid_w; }
};

template <typename T>
RoiGrid<T> roi_grid(const T* roi, const Level& level, const Pooling& pool) {
  const T offset = pool.aligned ? T(0.5) : T(0);
  const T scale = static_cast<T>(level.spatial_scale);
  RoiGrid<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  g.start_w = roi[1] * scale - offset;
  g.start_h = roi[2] * scale - offset;
  T roi_w = roi[3] * scale - offset - g.start_w;
  T roi_h = roi[4] * scale - offset - g.start_h;
  if (!pool.aligned) {  // legacy RoIs are at least one pixel wide and tall
    roi_w = std::max(roi_w, T(1));
    roi_h = std::max(roi_h, T(1));
  }
  g.bin_h = roi_h / static_cast<T>(pool.pooled_height);
  g.bin_w = roi_w / static_cast<T>(pool.pooled_width);
  if (pool.sampling_ratio > 0) {
    g.grid_h = g.grid_w = pool.sampling_ratio;
  } else {  // adaptive: ceil(roi_size / output_size) points per bin, none for inverted RoIs
    g.grid_h = std::max<int64_t>(static_cast<int64_t>(std::ceil(roi_h / pool.pooled_height)), 0);
    g.grid_w = std::max<int64_t>(static_cast<int64_t>(std::ceil(roi_w / pool.pooled_width)), 0);
  }
  return g;
}

// One axis of a RoI's sample points as the hot loops read it (`clamped_axis`; 16 bytes for float):
// for y, the first pixels of the two neighbour rows (low * W and high * W, the image's offset
// included); for x, the two neighbour columns. A coordinate more than one pixel outside the map
// has offsets 0 and weights 0, so all 4 weights of its sample points are 0, as `bilinear_clamped`
// gives them. 32-bit offsets: a smaller table leaves more of the caches to the block buffers.
template <typename T>
struct AxisSample {
  int32_t offset[2];  // low, high
  T weight[2];        // 1 - frac (for low), frac (for high)
};

// A sample point: its 4 neighbour pixels (top-left, top-right, bottom-left, bottom-right) and
// bilinear weights.
template <typename T>
struct Sample {
  int64_t index[4];
  T weight[4];
};

// The point (y, x) formed from its two axes exactly as `bilinear_clamped` forms it (the same
// products, so the same bits as a table of points).
template <typename T>
inline __attribute__((always_inline)) Sample<T> sample_at(const AxisSample<T>& y,
                                                          const AxisSample<T>& x) {
  Sample<T> s;
  for (int i = 0; i < 4; ++i) {
    s.index[i] = int64_t(y.offset[i / 2]) + x.offset[i % 2];
    s.weight[i] = y.weight[i / 2] * x.weight[i % 2];
  }
  return s;
}

// The sample points of one bin: y[iy] x x[ix] for iy < grid_h, ix < grid_w, visited in the
// order (iy, ix). (The hot loops spell out the two loops: a lambda per point would keep their
// vector accumulators in memory.)
template <typename T>
struct Bin {
  const AxisSample<T>* y;
  const AxisSample<T>* x;
  int64_t grid_h, grid_w;

  Sample<T> at(int64_t iy, int64_t ix) const { return sample_at(y[iy], x[ix]); }
};

// The sample points of one RoI. RoI Align's grid is separable: point (iy, ix) of bin (bh, bw) is
// y[bh * grid_h + iy] x x[bw * grid_w + ix], so ph * grid_h + pw * grid_w axis entries describe
// all ph * pw * grid_h * grid_w points (7x7 bins of 2x2 points: 28 entries, 448 bytes for float,
// where a table of points takes 6.3 KB; 512 RoIs then fit in L2).
template <typename T>
struct RoiSamples {
  const AxisSample<T>* y;  // [ph * grid_h]
  const AxisSample<T>* x;  // [pw * grid_w]
  int64_t grid_h, grid_w;
  int64_t pooled_height, pooled_width;

  int64_t per_bin() const { return grid_h * grid_w; }
  Bin<T> bin(int64_t bh, int64_t bw) const {
    return Bin<T>{y + bh * grid_h, x + bw * grid_w, grid_h, grid_w};
  }
};

// The axis entries of RoIs [first, last): RoI k owns y[y_offset[k - first], ...) and
// x[x_offset[k - first], ...); offsets are pixels of the RoI's level, batch offset included.
template <typename T>
struct SampleTable {
  int64_t first = 0;
  int64_t last = 0;
  std::vector<int64_t> y_offset, x_offset;
  std::vector<int64_t> grid_h, grid_w;
  std::vector<AxisSample<T>> y, x;
  std::vector<int64_t> order;  // the RoIs in processing order (see roi_order)
  int64_t num_samples = 0;     // sample points of all its RoIs

  RoiSamples<T> roi(int64_t k, const Pooling& pool) const {
    const int64_t i = k - first;
    return RoiSamples<T>{y.data() + y_offset[i], x.data() + x_offset[i], grid_h[i], grid_w[i],
                         pool.pooled_height,     pool.pooled_width};
  }
};

// The RoIs' levels and geometry, shared by the forward and backward drivers.
template <typename T>
struct RoiSet {
  const T* rois;          // (K, 5), contiguous
  const int64_t* levels;  // (K,) level of each RoI, or nullptr for a single level
  std::vector<Level> level_info;
  Pooling pool;
  int64_t num_rois;

  const Level& level_of(int64_t k) const { return level_info[levels ? levels[k] : 0]; }
  RoiGrid<T> grid(int64_t k) const { return roi_grid(rois + 5 * k, level_of(k), pool); }
};

// Splits [0, K) into ranges of at most kMaxChunkSamples sample points (at least one RoI each).
// Depends on the RoIs only, so the summation order is the same for any thread count.
template <typename T>
std::vector<int64_t> chunk_bounds(const RoiSet<T>& set) {
  std::vector<int64_t> bounds{0};
  int64_t samples = 0;
  for (int64_t k = 0; k < set.num_rois; ++k) {
    const int64_t n = set.grid(k).per_bin() * set.pool.bins();
    if (samples > 0 && samples + n > kMaxChunkSamples) {
      bounds.push_back(k);
      samples = 0;
    }
    samples += n;
  }
  bounds.push_back(set.num_rois);
  return bounds;
}

// RoIs [first, last) sorted by (level, image, 16-pixel band of the centre's y, centre x in snake
// order): consecutive RoIs then overlap and find their rows of the block buffer still in L2.
// The order depends on the RoIs only, so backward sums stay independent of the thread count.
template <typename T>
std::vector<int64_t> roi_order(const RoiSet<T>& set, int64_t first, int64_t last) {
  using Key = std::tuple<int64_t, int64_t, int64_t, double, int64_t>;
  std::vector<Key> keys;
  for (int64_t k = first; k < last; ++k) {
    const RoiGrid<T> g = set.grid(k);
    const double cy = g.start_h + 0.5 * g.bin_h * set.pool.pooled_height;
    const double cx = g.start_w + 0.5 * g.bin_w * set.pool.pooled_width;
    const int64_t band = static_cast<int64_t>(std::floor(cy / 16.0));
    const int64_t level = set.levels ? set.levels[k] : 0;
    keys.emplace_back(level, g.batch, band, band % 2 ? -cx : cx, k);
  }
  std::sort(keys.begin(), keys.end());
  std::vector<int64_t> order;
  for (const Key& key : keys) {
    order.push_back(std::get<4>(key));
  }
  return order;
}

// Coordinate of sample point i (of `grid` per bin) of bin b along one axis (torchvision's
// arithmetic, in the input's precision).
template <typename T>
T sample_coord(T start, T bin_size, int64_t b, int64_t i, int64_t grid) {
  return start + static_cast<T>(b) * bin_size +
         static_cast<T>(i + .5f) * bin_size / static_cast<T>(grid);
}

// Axis entries of `bins` bins of `grid` points each along an axis of `size` pixels; `scale` is the
// pixel stride of the axis (W for y, 1 for x) and `base` the first pixel of the image.
template <typename T>
void fill_axis(T start, T bin_size, int64_t bins, int64_t grid, int64_t size, int64_t scale,
               int64_t base, bool empty_map, AxisSample<T>* out) {
  for (int64_t b = 0; b < bins; ++b) {
    for (int64_t i = 0; i < grid; ++i, ++out) {
      // On an empty level every point is outside.
      const ClampedAxis<T> a = empty_map
                                   ? ClampedAxis<T>{false, 0, 0, T(0), T(0)}
                                   : clamped_axis(sample_coord(start, bin_size, b, i, grid), size);
      out->offset[0] = static_cast<int32_t>(a.low * scale + base);
      out->offset[1] = static_cast<int32_t>(a.high * scale + base);
      out->weight[0] = a.low_weight;
      out->weight[1] = a.high_weight;
    }
  }
}

template <typename T>
void build_table(const RoiSet<T>& set, int64_t first, int64_t last, SampleTable<T>& table) {
  const Pooling& pool = set.pool;
  table.first = first;
  table.last = last;
  table.y_offset.assign(1, 0);
  table.x_offset.assign(1, 0);
  table.grid_h.clear();
  table.grid_w.clear();
  table.num_samples = 0;
  for (int64_t k = first; k < last; ++k) {
    const RoiGrid<T> g = set.grid(k);
    table.grid_h.push_back(g.grid_h);
    table.grid_w.push_back(g.grid_w);
    table.y_offset.push_back(table.y_offset.back() + pool.pooled_height * g.grid_h);
    table.x_offset.push_back(table.x_offset.back() + pool.pooled_width * g.grid_w);
    table.num_samples += g.per_bin() * pool.bins();
  }
  table.y.resize(table.y_offset.back());
  table.x.resize(table.x_offset.back());
  table.order = roi_order(set, first, last);
  at::parallel_for(first, last, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const RoiGrid<T> g = set.grid(k);
      const Level& level = set.level_of(k);
      const int64_t plane = level.height * level.width, i = k - first;
      fill_axis(g.start_h, g.bin_h, pool.pooled_height, g.grid_h, level.height, level.width,
                g.batch * plane, plane == 0, table.y.data() + table.y_offset[i]);
      fill_axis(g.start_w, g.bin_w, pool.pooled_width, g.grid_w, level.width, 1, 0, plane == 0,
                table.x.data() + table.x_offset[i]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Hot loops over a block buffer [pixels][B]: every sample point reads or updates 4 rows of B
// contiguous channels. The rows are scattered over a buffer larger than L2, so before each bin the
// loops prefetch the rows of the next bin's first kPrefetchPoints points (the table gives them
// without a search: the bins are visited in order).

constexpr int64_t kPrefetchBins = 2;
constexpr int64_t kPrefetchPoints = 8;

template <int RW, typename T>
inline __attribute__((always_inline)) void prefetch_bin(const T* buf, const Bin<T>& bin) {
  int64_t points = 0;
  for (int64_t iy = 0; iy < bin.grid_h && points < kPrefetchPoints; ++iy) {
    for (int64_t ix = 0; ix < bin.grid_w && points < kPrefetchPoints; ++ix, ++points) {
      const Sample<T> s = bin.at(iy, ix);
      for (int i = 0; i < 4; ++i) {
        const T* row = buf + s.index[i] * kBlock;
        __builtin_prefetch(row, RW, 3);
        if (kBlock * sizeof(T) > 64) {
          __builtin_prefetch(row + 64 / sizeof(T), RW, 3);
        }
      }
    }
  }
}

// Calls f(p, bin) for the bins p = bh * pw + bw of RoI `r` in order, each after prefetching the
// rows of the next bin of the RoI in the block buffer `buf`.
template <int RW, typename T, typename F>
inline __attribute__((always_inline)) void for_each_bin(const T* buf, const RoiSamples<T>& r,
                                                        F&& f) {
  const int64_t ph = r.pooled_height, pw = r.pooled_width;
  int64_t ah = kPrefetchBins / pw, aw = kPrefetchBins % pw;  // the bin kPrefetchBins ahead
  for (int64_t bh = 0; bh < ph; ++bh) {
    for (int64_t bw = 0; bw < pw; ++bw) {
      if (ah < ph) {
        prefetch_bin<RW>(buf, r.bin(ah, aw));
      }
      if (++aw == pw) {
        aw = 0;
        ++ah;
      }
      f(bh * pw + bw, r.bin(bh, bw));
    }
  }
}

// A row of B channels as one GCC vector (VecF, ..., simd.h): each SIMD clone lowers it to its
// widest registers (1 zmm, 2 ymm or 4 xmm for floats). Loads and stores go through memcpy
// (unaligned).

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using type = VecF;
  using mask = VecI32;  // what a comparison of two VecF gives
};
template <>
struct Vec<double> {
  using type = VecD;
  using mask = VecI64;
};

template <typename V, typename T>
inline __attribute__((always_inline)) V load_vec(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline __attribute__((always_inline)) void store_vec(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// 32-byte vectors (native to AVX2, simd.h) for comparisons and selects, which GCC would
// otherwise lower lane by lane on 64-byte vectors.

template <typename T>
struct Narrow;
template <>
struct Narrow<float> {
  using type = VecF8;
  using mask = VecI32x8;
  using index32 = VecI32x8;
  static constexpr int64_t lanes = 8;
};
template <>
struct Narrow<double> {
  using type = VecD4;
  using mask = VecI64x4;
  using index32 = VecI32x4;
  static constexpr int64_t lanes = 4;
};

// ---------------------------------------------------------------------------------------------
// Block buffers and outputs.

template <typename T>
AlignedArray<T> block_buffer(int64_t pixels) {
  return aligned_array<T>(pixels * kBlock);
}

// An empty tensor whose memory is backed by transparent huge pages (aligned_memory.h).
at::Tensor fresh_tensor(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous);

// ---------------------------------------------------------------------------------------------
// Drivers.

// Threads for a pass over `num_blocks` channel blocks: one for small work (a fork-join costs more
// than it saves there), else up to one per block.
template <typename T>
int64_t block_workers(const SampleTable<T>& table, int64_t num_blocks) {
  constexpr int64_t kMinParallelSamples = int64_t(1) << 15;
  if (table.num_samples * num_blocks < kMinParallelSamples) {
    return 1;
  }
  return std::min<int64_t>(num_blocks, at::get_num_threads());
}

template <typename T>
std::vector<Level> level_info(const std::vector<int64_t>& heights,
                              const std::vector<int64_t>& widths, at::ArrayRef<double> scales,
                              int64_t batch) {
  std::vector<Level> info;
  int64_t base = 0;
  for (size_t l = 0; l < heights.size(); ++l) {
    info.push_back(Level{heights[l], widths[l], scales[l], base});
    base += batch * heights[l] * widths[l];
  }
  TORCH_CHECK(base <= std::numeric_limits<int32_t>::max(),
              "roi_align: at most 2^31 feature pixels (N * H * W over all levels) are supported");
  return info;
}

// ---------------------------------------------------------------------------------------------
// Operator entry points: argument checks (roi_align_common.cpp and ops/roi_align.h), dispatch, and
// the ops (roi_align_forward.cpp, roi_align_backward.cpp; registered in roi_align_common.cpp).

void check_dtype(const char* op, const at::Tensor& input);

// Calls f(T{}, S{}) for storage dtype `type` (S) and its compute type T: float for float16 and
// bfloat16 (loaded into float32 blocks, accumulated in float32), else S itself.
template <typename F>
auto dispatch_storage(at::ScalarType type, F&& f) {
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "roi_align_cpu", [&] {
    return f(at::opmath_type<scalar_t>{}, scalar_t{});
  });
}

// RoIs in the compute type of features of dtype `type`, contiguous.
at::Tensor compute_rois(const at::Tensor& rois, at::ScalarType type);

// Checks `levels` (K,) int64 in [0, num_levels) and returns it contiguous.
at::Tensor checked_levels(const char* op, const at::Tensor& levels, int64_t num_rois,
                          int64_t num_levels);

std::tuple<at::Tensor, at::Tensor> roi_align_forward(const at::Tensor& input,
                                                     const at::Tensor& rois, double spatial_scale,
                                                     int64_t pooled_height, int64_t pooled_width,
                                                     int64_t sampling_ratio, bool aligned,
                                                     c10::string_view mode);

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                              const at::Tensor& argmax, double spatial_scale, int64_t pooled_height,
                              int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                              c10::string_view mode, bool channels_last);

std::tuple<at::Tensor, at::Tensor> multi_scale_forward(
    at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
    int64_t sampling_ratio, bool aligned, c10::string_view mode);

std::vector<at::Tensor> multi_scale_backward(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    const at::Tensor& argmax, at::ArrayRef<double> spatial_scales, int64_t pooled_height,
    int64_t pooled_width, at::IntArrayRef level_shapes, const c10::List<bool>& channels_last,
    int64_t sampling_ratio, bool aligned, c10::string_view mode);

}  // namespace roi_align_cpu
}  // namespace detector
