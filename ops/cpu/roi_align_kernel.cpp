// RoI Align on the CPU (Mask R-CNN, He et al. 2017, Sec. 3): single- and multi-level, avg and max.
//
// Shapes: N images, C channels, L feature levels (H_l, W_l), K RoIs, P = ph * pw bins per RoI,
// S sample points per bin (sampling_ratio^2, or adaptive per RoI), B = kBlock channels per block.
//
// Algorithm (deterministic, no atomics):
// 1. Sample table: for every RoI, the neighbour rows / columns and weights of its sample points'
//    y and x coordinates (`clamped_axis`), computed once in parallel over RoIs and reused for
//    every channel; the hot loops form each point's 4 neighbours and weights from its two axes.
// 2. Forward: parallel over channel blocks. A thread copies its block of B channels of every
//    level (NCHW or NHWC) into a per-thread pixel-major buffer [pixels][B] (so the input is read
//    once, with no 55 MB NHWC copy, and the buffer stays in L3) and pools every RoI from it with
//    fixed-width vector loops over 4 neighbour rows per sample point.
// 3. Backward: parallel over channel blocks. A thread owns B channels: it zeroes a per-thread
//    buffer [pixels][B], scatter-adds every RoI's bins in a fixed order (RoI, bin, sample,
//    neighbour), then writes the block into the gradient in the input's memory format. Each
//    gradient element has one owner and one summation order, whatever the thread count.
// RoIs are visited in a spatial order (roi_order) so that consecutive RoIs reuse buffer rows in
// L2, and in chunks of a bounded number of sample points (adaptive grids of huge RoIs). The
// forward writes its output with non-temporal stores (it would evict the block buffer from L3)
// into recycled memory (recycled_memory.h); fresh gradients and the block buffers are backed by
// transparent huge pages (aligned_memory.h).
// Threads take channel blocks from a shared counter (so a thread slowed down by other processes
// does not hold up the others); what a block computes does not depend on the thread running it.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/bilinear.h"
#include "common/roi_align_mode.h"
#include "cpu/channel_block.h"
#include "cpu/cpu_utils.h"
#include "cpu/recycled_memory.h"
#include "cpu/aligned_memory.h"
#include "cpu/simd.h"

// GCC notes that vector arguments change the ABI between SIMD clones; they are all inlined.
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

// mask ? a : b per lane, with bit operations (GCC lowers vector `?:` on vectors wider than the
// target's registers lane by lane).
template <typename V, typename M>
inline __attribute__((always_inline)) V select(const M& mask, const V& a, const V& b) {
  return (V)(((M)a & mask) | ((M)b & ~mask));
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

// Bilinear value of sample `s` for channels [o, o + lanes) of a block buffer: sum_i w_i * row_i.
template <typename T>
inline __attribute__((always_inline)) typename Narrow<T>::type sample_part(const T* base,
                                                                           const Sample<T>& s,
                                                                           int64_t o) {
  using V = typename Narrow<T>::type;
  return s.weight[0] * load_vec<V>(base + s.index[0] * kBlock + o) +
         s.weight[1] * load_vec<V>(base + s.index[1] * kBlock + o) +
         s.weight[2] * load_vec<V>(base + s.index[2] * kBlock + o) +
         s.weight[3] * load_vec<V>(base + s.index[3] * kBlock + o);
}

// out[p][c] = mean over bin p's sample points of their bilinear values, c < B. Accumulates in
// register-wide parts: GCC keeps a B-wide vector accumulator in memory.
template <typename T>
inline __attribute__((always_inline)) void pool_avg_impl(const T* base, const RoiSamples<T>& r,
                                                         T* out) {
  using V = typename Narrow<T>::type;
  constexpr int64_t kLanes = Narrow<T>::lanes, kParts = kBlock / kLanes;
  const T count = static_cast<T>(std::max<int64_t>(r.per_bin(), 1));
  for_each_bin<0>(base, r, [&](int64_t p, const Bin<T>& bin) __attribute__((always_inline)) {
    V acc[kParts] = {};
    for (int64_t iy = 0; iy < bin.grid_h; ++iy) {
      for (int64_t ix = 0; ix < bin.grid_w; ++ix) {
        const Sample<T> s = bin.at(iy, ix);
        for (int64_t h = 0; h < kParts; ++h) {
          acc[h] += sample_part(base, s, h * kLanes);
        }
      }
    }
    for (int64_t h = 0; h < kParts; ++h) {
      store_vec(out + p * kBlock + h * kLanes, acc[h] / count);
    }
  });
}

// out[p][c] = max over bin p's sample points (0 without any), arg[p][c] = its index in the bin
// (the first one on ties, -1 without any).
template <typename T>
inline __attribute__((always_inline)) void pool_max_impl(const T* base, const RoiSamples<T>& r,
                                                         T* out, int32_t* arg) {
  using V = typename Narrow<T>::type;
  using M = typename Narrow<T>::mask;
  using E = decltype(M{}[0] + 0);  // the mask's lane type
  constexpr int64_t kLanes = Narrow<T>::lanes, kParts = kBlock / kLanes;
  for_each_bin<0>(base, r, [&](int64_t p, const Bin<T>& bin) __attribute__((always_inline)) {
    V best[kParts];
    M index[kParts];
    for (int64_t h = 0; h < kParts; ++h) {
      best[h] = V{} - std::numeric_limits<T>::infinity();
      index[h] = M{} - 1;
    }
    for (int64_t iy = 0, j = 0; iy < bin.grid_h; ++iy) {
      for (int64_t ix = 0; ix < bin.grid_w; ++ix, ++j) {
        const Sample<T> s = bin.at(iy, ix);
        const M jj = M{} + static_cast<E>(j);
        for (int64_t h = 0; h < kParts; ++h) {
          // "+ 0" turns the -0 of a point outside the map (0 * a negative pixel) into +0.
          const V v = sample_part(base, s, h * kLanes) + V{};
          const M greater = v > best[h];
          best[h] = select(greater, v, best[h]);
          index[h] = (index[h] & ~greater) | (jj & greater);
        }
      }
    }
    for (int64_t h = 0; h < kParts; ++h) {
      store_vec(out + p * kBlock + h * kLanes, select(index[h] >= 0, best[h], V{}));
      store_vec(arg + p * kBlock + h * kLanes,
                __builtin_convertvector(index[h], typename Narrow<T>::index32));
    }
  });
}

// Adds w_i * gv into the 4 neighbour rows of sample `s` in a block buffer [pixels][B].
template <typename T>
inline __attribute__((always_inline)) void add_sample(T* buf, const Sample<T>& s,
                                                      const typename Vec<T>::type& gv) {
  using V = typename Vec<T>::type;
  for (int i = 0; i < 4; ++i) {
    const T w = s.weight[i];
    if (w == T(0)) {  // outside the map: nothing to add (as torchvision, even for inf gradients)
      continue;
    }
    T* row = buf + s.index[i] * kBlock;
    store_vec(row, load_vec<V>(row) + w * gv);
  }
}

// Scatter-adds one RoI's bin gradients g [bins][B] into a block buffer [pixels][B] (avg mode:
// every sample point of a bin receives gradient / count).
template <typename T>
inline __attribute__((always_inline)) void scatter_avg_impl(T* buf, const RoiSamples<T>& r,
                                                            const T* g) {
  using V = typename Vec<T>::type;
  const T count = static_cast<T>(std::max<int64_t>(r.per_bin(), 1));
  for_each_bin<1>(buf, r, [&](int64_t p, const Bin<T>& bin) __attribute__((always_inline)) {
    const V gv = load_vec<V>(g + p * kBlock) / count;
    for (int64_t iy = 0; iy < bin.grid_h; ++iy) {
      for (int64_t ix = 0; ix < bin.grid_w; ++ix) {
        add_sample(buf, bin.at(iy, ix), gv);
      }
    }
  });
}

// Max mode: only the arg-max sample point of each channel (arg [bins][B]) receives its gradient.
template <typename T>
inline __attribute__((always_inline)) void scatter_max_impl(T* buf, const RoiSamples<T>& r,
                                                            const T* g, const int32_t* arg) {
  using V = typename Narrow<T>::type;
  using M = typename Narrow<T>::mask;
  using E = decltype(M{}[0] + 0);
  constexpr int64_t kLanes = Narrow<T>::lanes, kParts = kBlock / kLanes;
  T masked[kBlock];
  for_each_bin<1>(buf, r, [&](int64_t p, const Bin<T>& bin) __attribute__((always_inline)) {
    V gp[kParts];
    M ap[kParts];
    for (int64_t h = 0; h < kParts; ++h) {
      gp[h] = load_vec<V>(g + p * kBlock + h * kLanes);
      ap[h] = __builtin_convertvector(
          load_vec<typename Narrow<T>::index32>(arg + p * kBlock + h * kLanes), M);
    }
    for (int64_t iy = 0, j = 0; iy < bin.grid_h; ++iy) {
      for (int64_t ix = 0; ix < bin.grid_w; ++ix, ++j) {
        // Rarely does no channel of the block pick sample j, so add without testing for it.
        const M jj = M{} + static_cast<E>(j);
        for (int64_t h = 0; h < kParts; ++h) {
          store_vec(masked + h * kLanes, (V)((M)gp[h] & (ap[h] == jj)));
        }
        add_sample(buf, bin.at(iy, ix), load_vec<typename Vec<T>::type>(masked));
      }
    }
  });
}

DETECTOR_SIMD_CLONES void pool_avg_block(const float* base, const RoiSamples<float>& r,
                                         float* out) {
  pool_avg_impl<float>(base, r, out);
}
DETECTOR_SIMD_CLONES void pool_avg_block(const double* base, const RoiSamples<double>& r,
                                         double* out) {
  pool_avg_impl<double>(base, r, out);
}
DETECTOR_SIMD_CLONES void pool_max_block(const float* base, const RoiSamples<float>& r, float* out,
                                         int32_t* arg) {
  pool_max_impl<float>(base, r, out, arg);
}
DETECTOR_SIMD_CLONES void pool_max_block(const double* base, const RoiSamples<double>& r,
                                         double* out, int32_t* arg) {
  pool_max_impl<double>(base, r, out, arg);
}
DETECTOR_SIMD_CLONES void scatter_block(float* buf, const RoiSamples<float>& r, const float* g,
                                        const int32_t* arg) {
  if (arg) {
    scatter_max_impl<float>(buf, r, g, arg);
  } else {
    scatter_avg_impl<float>(buf, r, g);
  }
}
DETECTOR_SIMD_CLONES void scatter_block(double* buf, const RoiSamples<double>& r, const double* g,
                                        const int32_t* arg) {
  if (arg) {
    scatter_max_impl<double>(buf, r, g, arg);
  } else {
    scatter_avg_impl<double>(buf, r, g);
  }
}

// ---------------------------------------------------------------------------------------------
// Block copies between a level tensor (NCHW or NHWC contiguous) and a block buffer [pixels][B].

// grad[n, c0 + j, h, w] (=|+=) buf[pixel][j] for j < cw; `grad` is NCHW or NHWC contiguous.
// Adds (accumulate) or writes a computed value into a gradient of storage dtype S.
template <typename S, typename T>
inline void put(S& dst, T value, bool accumulate) {
  dst = static_cast<S>(accumulate ? static_cast<T>(dst) + value : value);
}

// dst[j * plane + hw] = bfloat16(src[hw][j]) for a whole block, 64 pixels at a time through a
// stack tile (a float32 transposition, then vectorized conversions).
void block_to_planes_bf16(const float* src, int64_t plane, c10::BFloat16* dst) {
  constexpr int64_t kTile = 64;
  float tile[kBlock * kTile];
  for (int64_t hw0 = 0; hw0 < plane; hw0 += kTile) {
    const int64_t count = std::min(kTile, plane - hw0);
    block_to_planes(src + hw0 * kBlock, count, tile);  // tile[j * count + t]
    for (int64_t j = 0; j < kBlock; ++j) {
      floats_to_bf16(tile + j * count, count, reinterpret_cast<uint16_t*>(dst + j * plane + hw0));
    }
  }
}

// Writes a block buffer of T into `grad` (dtype S: T, or float16/bfloat16 with T = float).
template <typename T, typename S>
void store_block(const T* buf, int64_t c0, int64_t cw, bool accumulate, at::Tensor& grad) {
  const int64_t batch = grad.size(0), channels = grad.size(1);
  const int64_t plane = grad.size(2) * grad.size(3);
  S* out = grad.mutable_data_ptr<S>();
  const bool nchw = grad.is_contiguous();
  constexpr int64_t kTile = 64;
  for (int64_t n = 0; n < batch; ++n) {
    const T* src = buf + n * plane * kBlock;
    if (nchw) {
      S* dst = out + (n * channels + c0) * plane;
      if constexpr (std::is_same_v<T, float>) {
        if (cw == kBlock && !accumulate) {
          if constexpr (std::is_same_v<S, float>) {
            block_to_planes(src, plane, dst);
            continue;
          } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
            block_to_planes_bf16(src, plane, dst);
            continue;
          }
        }
      }
      for (int64_t hw0 = 0; hw0 < plane; hw0 += kTile) {
        const int64_t hw1 = std::min(plane, hw0 + kTile);
        for (int64_t j = 0; j < cw; ++j) {
          S* d = dst + j * plane;
          for (int64_t hw = hw0; hw < hw1; ++hw) put(d[hw], src[hw * kBlock + j], accumulate);
        }
      }
    } else {
      S* dst = out + n * plane * channels + c0;
      for (int64_t hw = 0; hw < plane; ++hw) {
        S* d = dst + hw * channels;
        const T* s = src + hw * kBlock;
        for (int64_t j = 0; j < cw; ++j) put(d[j], s[j], accumulate);
      }
    }
  }
}

template <typename T>
AlignedArray<T> block_buffer(int64_t pixels) {
  return aligned_array<T>(pixels * kBlock);
}

at::Tensor fresh_tensor(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  at::Tensor t = at::empty(sizes, options.memory_format(format));
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

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

// Pools RoIs [table.first, table.last) from any-layout levels: parallel over channel blocks.
// Levels and output are of dtype S (T, or float16/bfloat16 computed in T = float).
template <typename T, typename S>
void forward_blocks(const RoiSet<T>& set, const SampleTable<T>& table,
                    const std::vector<at::Tensor>& levels, S* out, int32_t* argmax) {
  const int64_t channels = levels[0].size(1), bins = set.pool.bins();
  const int64_t num_blocks = (channels + kBlock - 1) / kBlock;
  int64_t pixels = 0;
  for (const Level& level : set.level_info) {
    pixels = std::max(pixels, level.pixel_base + levels[0].size(0) * level.height * level.width);
  }
  std::atomic<int64_t> next_block{0};
  at::parallel_for(0, block_workers(table, num_blocks), 1, [&](int64_t, int64_t) {
    AlignedArray<T> buf = block_buffer<T>(pixels);
    std::vector<T> local(bins * kBlock);    // [bins][B]
    std::vector<T> staging(bins * kBlock);  // [B][bins]
    std::vector<int32_t> local_arg(argmax ? bins * kBlock : 0);
    for (int64_t b = next_block++; b < num_blocks; b = next_block++) {
      const int64_t c0 = b * kBlock, cw = std::min(kBlock, channels - c0);
      for (size_t l = 0; l < levels.size(); ++l) {
        load_channel_block<T, S>(levels[l], c0, cw,
                                 buf.get() + set.level_info[l].pixel_base * kBlock);
      }
      for (const int64_t k : table.order) {
        const T* base = buf.get() + set.level_of(k).pixel_base * kBlock;
        if (argmax) {
          pool_max_block(base, table.roi(k, set.pool), local.data(), local_arg.data());
        } else {
          pool_avg_block(base, table.roi(k, set.pool), local.data());
        }
        // [bins][B] -> out[k, c0:c0+cw, bins], a contiguous run of cw * bins values; the 26 MB
        // output would otherwise push the block buffer out of L3.
        S* o = out + (k * channels + c0) * bins;
        if constexpr (std::is_same_v<T, float>) {
          if (cw == kBlock) {
            if constexpr (std::is_same_v<S, float>) {
              block_to_planes_streaming(local.data(), bins, staging.data(), o);
            } else {  // float16/bfloat16: transpose in float32, then one contiguous conversion
              block_to_planes(local.data(), bins, staging.data());
              if constexpr (std::is_same_v<S, c10::BFloat16>) {
                floats_to_bf16(staging.data(), kBlock * bins, reinterpret_cast<uint16_t*>(o));
              } else {
                for (int64_t i = 0; i < kBlock * bins; ++i) o[i] = S(staging[i]);
              }
            }
          }
        }
        if (!std::is_same_v<T, float> || cw != kBlock) {
          for (int64_t j = 0; j < cw; ++j) {
            for (int64_t p = 0; p < bins; ++p) o[j * bins + p] = S(local[p * kBlock + j]);
          }
        }
        if (argmax) {
          int32_t* a = argmax + (k * channels + c0) * bins;
          for (int64_t j = 0; j < cw; ++j) {
            for (int64_t p = 0; p < bins; ++p) a[j * bins + p] = local_arg[p * kBlock + j];
          }
        }
      }
    }
    store_fence();
  });
}

// Levels as the kernels read them: each NCHW- or NHWC-contiguous.
std::vector<at::Tensor> kernel_layout(const std::vector<at::Tensor>& features) {
  std::vector<at::Tensor> levels;
  for (const at::Tensor& f : features) {
    const bool ok = f.is_contiguous() || f.is_contiguous(at::MemoryFormat::ChannelsLast);
    levels.push_back(ok ? f : f.contiguous());
  }
  return levels;
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

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor> forward_impl(const std::vector<at::Tensor>& features,
                                                const at::Tensor& rois, const int64_t* roi_levels,
                                                at::ArrayRef<double> scales, const Pooling& pool) {
  const std::vector<at::Tensor> levels = kernel_layout(features);
  const int64_t num_rois = rois.size(0), channels = levels[0].size(1);
  // Every element is written below, so the output may reuse a freed output's memory (a training
  // loop's previous one): fresh memory costs ~5 ms of the kernel's page zeroing for 26 MB.
  at::Tensor output = recycled_empty({num_rois, channels, pool.pooled_height, pool.pooled_width},
                                     levels[0].scalar_type());
  at::Tensor argmax = pool.mode == Mode::kMax
                          ? fresh_tensor(output.sizes(), output.options().dtype(at::kInt))
                          : at::empty({0}, output.options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  std::vector<int64_t> heights, widths;
  for (const at::Tensor& level : levels) {
    heights.push_back(level.size(2));
    widths.push_back(level.size(3));
  }
  RoiSet<T> set{rois.const_data_ptr<T>(), roi_levels,
                level_info<T>(heights, widths, scales, levels[0].size(0)), pool, num_rois};
  S* out = output.mutable_data_ptr<S>();
  int32_t* arg = pool.mode == Mode::kMax ? argmax.mutable_data_ptr<int32_t>() : nullptr;
  const std::vector<int64_t> bounds = chunk_bounds(set);
  SampleTable<T> table;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    build_table(set, bounds[i], bounds[i + 1], table);
    forward_blocks(set, table, levels, out, arg);
  }
  return {output, argmax};
}

// Gradients of the levels (batch, channels, heights[l], widths[l]) in their memory formats.
template <typename T, typename S>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& rois,
                                      const int64_t* roi_levels, const at::Tensor& argmax,
                                      at::ArrayRef<double> scales, const Pooling& pool,
                                      int64_t batch, int64_t channels,
                                      const std::vector<int64_t>& heights,
                                      const std::vector<int64_t>& widths,
                                      const std::vector<bool>& channels_last) {
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    grads.push_back(fresh_tensor(
        {batch, channels, heights[l], widths[l]}, grad.options(),
        channels_last[l] ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  }
  const int64_t num_rois = rois.size(0), bins = pool.bins();
  if (num_rois == 0 || channels == 0 || bins == 0) {
    for (at::Tensor& g : grads) g.zero_();
    return grads;
  }
  RoiSet<T> set{rois.const_data_ptr<T>(), roi_levels, level_info<T>(heights, widths, scales, batch),
                pool, num_rois};
  int64_t pixels = 0;
  for (const Level& level : set.level_info) {
    pixels = std::max(pixels, level.pixel_base + batch * level.height * level.width);
  }
  const std::vector<int64_t> bounds = chunk_bounds(set);
  const bool accumulate = bounds.size() > 2;  // several chunks add into zeroed gradients
  if (accumulate) {
    for (at::Tensor& g : grads) g.zero_();
  }
  const S* g = grad.const_data_ptr<S>();
  const int32_t* arg = pool.mode == Mode::kMax ? argmax.const_data_ptr<int32_t>() : nullptr;
  const int64_t num_blocks = (channels + kBlock - 1) / kBlock;
  SampleTable<T> table;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    build_table(set, bounds[i], bounds[i + 1], table);
    std::atomic<int64_t> next_block{0};
    at::parallel_for(0, block_workers(table, num_blocks), 1, [&](int64_t, int64_t) {
      AlignedArray<T> buf = block_buffer<T>(pixels);
      std::vector<T> local(bins * kBlock);  // [bins][B]
      std::vector<int32_t> local_arg(arg ? bins * kBlock : 0);
      for (int64_t b = next_block++; b < num_blocks; b = next_block++) {
        const int64_t c0 = b * kBlock, cw = std::min(kBlock, channels - c0);
        std::fill(buf.get(), buf.get() + pixels * kBlock, T(0));
        for (const int64_t k : table.order) {
          // grad[k, c0:c0+cw, bins] -> [bins][B]
          const S* gk = g + (k * channels + c0) * bins;
          constexpr bool kBlockCopy =
              std::is_same_v<T, float> &&
              (std::is_same_v<S, float> || std::is_same_v<S, c10::BFloat16>);
          if constexpr (kBlockCopy) {
            if (cw == kBlock) {
              planes_to_block_converted(gk, bins, local.data());
            }
          }
          if (!kBlockCopy || cw != kBlock) {
            std::fill(local.begin(), local.end(), T(0));
            for (int64_t j = 0; j < cw; ++j) {
              for (int64_t p = 0; p < bins; ++p) local[p * kBlock + j] = T(gk[j * bins + p]);
            }
          }
          if (arg) {
            const int32_t* ak = arg + (k * channels + c0) * bins;
            std::fill(local_arg.begin(), local_arg.end(), -1);
            for (int64_t j = 0; j < cw; ++j) {
              for (int64_t p = 0; p < bins; ++p) local_arg[p * kBlock + j] = ak[j * bins + p];
            }
          }
          scatter_block(buf.get() + set.level_of(k).pixel_base * kBlock, table.roi(k, pool),
                        local.data(), arg ? local_arg.data() : nullptr);
        }
        for (size_t l = 0; l < grads.size(); ++l) {
          store_block<T, S>(buf.get() + set.level_info[l].pixel_base * kBlock, c0, cw, accumulate,
                            grads[l]);
        }
      }
    });
  }
  return grads;
}

// ---------------------------------------------------------------------------------------------
// Operator entry points.

void check_dtype(const char* op, const at::Tensor& input) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": CPU kernels support float16, bfloat16, float32 and float64 `input`, got ",
              input.scalar_type());
}

// Calls f(T{}, S{}) for storage dtype `type` (S) and its compute type T: float for float16 and
// bfloat16 (loaded into float32 blocks, accumulated in float32), else S itself.
template <typename F>
auto dispatch_storage(at::ScalarType type, F&& f) {
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "roi_align_cpu", [&] {
    return f(at::opmath_type<scalar_t>{}, scalar_t{});
  });
}

// RoIs in the compute type of features of dtype `type`, contiguous.
at::Tensor compute_rois(const at::Tensor& rois, at::ScalarType type) {
  return rois.to(at::toOpMathType(type)).contiguous();
}

void check_pooling(const char* op, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK_VALUE(pooled_height > 0 && pooled_width > 0, op,
                    ": `output_size` must be positive, got (", pooled_height, ", ", pooled_width,
                    ")");
}

std::tuple<at::Tensor, at::Tensor> roi_align_forward(const at::Tensor& input,
                                                     const at::Tensor& rois, double spatial_scale,
                                                     int64_t pooled_height, int64_t pooled_width,
                                                     int64_t sampling_ratio, bool aligned,
                                                     c10::string_view mode) {
  constexpr const char* op = "roi_align";
  const Pooling pool{pooled_height, pooled_width, sampling_ratio, aligned,
                     parse_roi_align_mode(op, mode)};
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": `input` must be 4-D (N, C, H, W), got ",
                    input.sizes());
  check_dtype(op, input);
  check_pooling(op, pooled_height, pooled_width);
  check_rois(op, rois, input.size(0));
  const at::Tensor r = compute_rois(rois, input.scalar_type());
  const double scales[] = {spatial_scale};
  return dispatch_storage(input.scalar_type(), [&](auto t, auto s) {
    return forward_impl<decltype(t), decltype(s)>({input}, r, nullptr, scales, pool);
  });
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                              const at::Tensor& argmax, double spatial_scale, int64_t pooled_height,
                              int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                              c10::string_view mode, bool channels_last) {
  constexpr const char* op = "_roi_align_backward";
  const Pooling pool{pooled_height, pooled_width, sampling_ratio, aligned,
                     parse_roi_align_mode(op, mode)};
  check_dtype(op, grad);
  check_rois(op, rois, batch_size);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": `grad` must have shape (K, C, ph, pw), got ", grad.sizes());
  TORCH_CHECK(pool.mode == Mode::kAvg || argmax.sizes() == grad.sizes(), op,
              ": `argmax` must have the shape of `grad` for mode \"max\"");
  const at::Tensor r = compute_rois(rois, grad.scalar_type());
  const double scales[] = {spatial_scale};
  return dispatch_storage(grad.scalar_type(), [&](auto t, auto s) {
    return backward_impl<decltype(t), decltype(s)>(grad.contiguous(), r, nullptr,
                                                   argmax.contiguous(), scales, pool, batch_size,
                                                   channels, {height}, {width}, {channels_last})[0];
  });
}

// Checks `levels` (K,) int64 in [0, num_levels) and returns it contiguous.
at::Tensor checked_levels(const char* op, const at::Tensor& levels, int64_t num_rois,
                          int64_t num_levels) {
  TORCH_CHECK_VALUE(levels.dim() == 1 && levels.size(0) == num_rois, op,
                    ": `levels` must have shape (K,) with K = ", num_rois, " RoIs, got ",
                    levels.sizes());
  TORCH_CHECK_TYPE(levels.scalar_type() == at::kLong, op, ": `levels` must be int64, got ",
                   levels.scalar_type());
  if (num_rois > 0) {
    const int64_t lo = levels.min().item<int64_t>(), hi = levels.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < num_levels, op, ": `levels` must lie in [0, ", num_levels,
                      "), found values in [", lo, ", ", hi, "]");
  }
  return levels.contiguous();
}

std::tuple<at::Tensor, at::Tensor> multi_scale_forward(
    at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
    int64_t sampling_ratio, bool aligned, c10::string_view mode) {
  constexpr const char* op = "multi_scale_roi_align";
  const Pooling pool{pooled_height, pooled_width, sampling_ratio, aligned,
                     parse_roi_align_mode(op, mode)};
  TORCH_CHECK_VALUE(!features.empty() && features.size() == spatial_scales.size(), op,
                    ": `features` and `spatial_scales` must be non-empty and of equal length, got ",
                    features.size(), " and ", spatial_scales.size());
  for (const at::Tensor& f : features) {
    TORCH_CHECK_VALUE(
        f.dim() == 4 && f.size(0) == features[0].size(0) && f.size(1) == features[0].size(1), op,
        ": every level of `features` must be (N, C, H_l, W_l) with the same N "
        "and C, got ",
        f.sizes(), " and ", features[0].sizes());
    TORCH_CHECK_TYPE(f.scalar_type() == features[0].scalar_type(), op,
                     ": every level of `features` must have the same dtype");
  }
  check_dtype(op, features[0]);
  check_pooling(op, pooled_height, pooled_width);
  check_rois(op, rois, features[0].size(0));
  const at::Tensor lv = checked_levels(op, levels, rois.size(0), features.size());
  const at::Tensor r = compute_rois(rois, features[0].scalar_type());
  return dispatch_storage(features[0].scalar_type(), [&](auto t, auto s) {
    return forward_impl<decltype(t), decltype(s)>(features.vec(), r, lv.const_data_ptr<int64_t>(),
                                                  spatial_scales, pool);
  });
}

std::vector<at::Tensor> multi_scale_backward(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    const at::Tensor& argmax, at::ArrayRef<double> spatial_scales, int64_t pooled_height,
    int64_t pooled_width, at::IntArrayRef level_shapes, const c10::List<bool>& channels_last,
    int64_t sampling_ratio, bool aligned, c10::string_view mode) {
  constexpr const char* op = "_multi_scale_roi_align_backward";
  const Pooling pool{pooled_height, pooled_width, sampling_ratio, aligned,
                     parse_roi_align_mode(op, mode)};
  const size_t num_levels = spatial_scales.size();
  TORCH_CHECK(
      num_levels > 0 && level_shapes.size() == 4 * num_levels && channels_last.size() == num_levels,
      op, ": expected 4 sizes and a memory format per level");
  check_dtype(op, grad);
  const int64_t batch = level_shapes[0], channels = level_shapes[1];
  check_rois(op, rois, batch);
  const at::Tensor lv = checked_levels(op, levels, rois.size(0), num_levels);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": `grad` must have shape (K, C, ph, pw), got ", grad.sizes());
  std::vector<int64_t> heights, widths;
  for (size_t l = 0; l < num_levels; ++l) {
    heights.push_back(level_shapes[4 * l + 2]);
    widths.push_back(level_shapes[4 * l + 3]);
  }
  std::vector<bool> formats;
  for (const bool cl : channels_last) {
    formats.push_back(cl);
  }
  const at::Tensor r = compute_rois(rois, grad.scalar_type());
  return dispatch_storage(grad.scalar_type(), [&](auto t, auto s) {
    return backward_impl<decltype(t), decltype(s)>(
        grad.contiguous(), r, lv.const_data_ptr<int64_t>(), argmax.contiguous(), spatial_scales,
        pool, batch, channels, heights, widths, formats);
  });
}

}  // namespace roi_align_cpu

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("roi_align", &roi_align_cpu::roi_align_forward);
  m.impl("_roi_align_backward", &roi_align_cpu::roi_align_backward);
  m.impl("multi_scale_roi_align", &roi_align_cpu::multi_scale_forward);
  m.impl("_multi_scale_roi_align_backward", &roi_align_cpu::multi_scale_backward);
}

}  // namespace detector
