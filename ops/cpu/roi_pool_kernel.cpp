// RoI Pool on the CPU, with exactly torchvision.ops.roi_pool's arithmetic (rounded RoI corners,
// floor/ceil bin edges in the input's dtype, clipped to the map, empty bins give 0).
//
// Forward works on NCHW planes, one channel plane at a time (it stays in L2 while every RoI reads
// it), in two passes per row of bins:
//   1. vertical: for each column w of the RoI, the max over the bin row's rows, vectorized along
//      the contiguous w (the running max and its flat index h * W + w per column);
//   2. horizontal: for each bin, the max over its columns of pass 1. Ties between columns keep the
//      smaller flat index, so the result is the FIRST max in row-major order, as in torchvision.
// Backward: threads own disjoint blocks of channels. For its block, a thread zeroes the planes
// (fresh huge-page memory: no separate zero fill of the 55 MB gradient, and the page faults are
// spread over the threads), then walks every RoI in a fixed order and adds its gradients at the
// arg-max indices while the planes are in L2. No atomics, no races, and the summation order of
// every element does not depend on the thread count. A contiguous `grad` is read in runs of
// block * PH * PW elements per RoI (prefetched); any other strides are read in place.
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <vector>

#include "cpu/cpu_utils.h"
#include "cpu/roi_align_memory.h"

namespace detector {
namespace {

// Clipped bin edges of every RoI, in image-plane coordinates. For RoI k, row k of `edges` holds
// [hstart(PH), hend(PH), wstart(PW), wend(PW)]; `batch[k]` is its image index.
struct RoIBins {
  std::vector<int> edges;
  std::vector<int64_t> batch;
  int64_t stride = 0;  // 2 * PH + 2 * PW
};

// Mirrors torchvision's CPU kernel: all arithmetic in scalar_t, `round` for the corners, a RoI at
// least 1x1, floor/ceil for the bin edges, then clipping to [0, H] x [0, W].
template <typename T>
RoIBins compute_bins(const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                     int64_t pooled_width, int64_t height, int64_t width) {
  const int64_t num_rois = rois.size(0);
  const int ph_count = static_cast<int>(pooled_height);
  const int pw_count = static_cast<int>(pooled_width);
  const int h_max = static_cast<int>(height);
  const int w_max = static_cast<int>(width);
  RoIBins bins;
  bins.stride = 2 * pooled_height + 2 * pooled_width;
  bins.edges.resize(num_rois * bins.stride);
  bins.batch.resize(num_rois);
  const T* r = rois.data_ptr<T>();
  const T scale = static_cast<T>(spatial_scale);
  for (int64_t k = 0; k < num_rois; ++k, r += 5) {
    bins.batch[k] = static_cast<int64_t>(r[0]);
    const int start_w = static_cast<int>(std::round(static_cast<double>(r[1] * scale)));
    const int start_h = static_cast<int>(std::round(static_cast<double>(r[2] * scale)));
    const int end_w = static_cast<int>(std::round(static_cast<double>(r[3] * scale)));
    const int end_h = static_cast<int>(std::round(static_cast<double>(r[4] * scale)));
    const int roi_w = std::max(end_w - start_w + 1, 1);
    const int roi_h = std::max(end_h - start_h + 1, 1);
    const T bin_h = static_cast<T>(roi_h) / static_cast<T>(ph_count);
    const T bin_w = static_cast<T>(roi_w) / static_cast<T>(pw_count);
    int* e = bins.edges.data() + k * bins.stride;
    for (int ph = 0; ph < ph_count; ++ph) {
      const int hs = static_cast<int>(std::floor(static_cast<double>(static_cast<T>(ph) * bin_h)));
      const int he =
          static_cast<int>(std::ceil(static_cast<double>(static_cast<T>(ph + 1) * bin_h)));
      e[ph] = std::min(std::max(hs + start_h, 0), h_max);
      e[ph_count + ph] = std::min(std::max(he + start_h, 0), h_max);
    }
    for (int pw = 0; pw < pw_count; ++pw) {
      const int ws = static_cast<int>(std::floor(static_cast<double>(static_cast<T>(pw) * bin_w)));
      const int we =
          static_cast<int>(std::ceil(static_cast<double>(static_cast<T>(pw + 1) * bin_w)));
      e[2 * ph_count + pw] = std::min(std::max(ws + start_w, 0), w_max);
      e[2 * ph_count + pw_count + pw] = std::min(std::max(we + start_w, 0), w_max);
    }
  }
  return bins;
}

// Pass 1 for one row of bins: the running max over rows [h0, h1) of columns [w0, w0 + n) of
// `plane` (row stride `width`), with the flat index of the first (smallest h) max per column.
// Generic version (double, half, bfloat16); float has a vectorized specialization below.
template <typename T, typename A>
void column_max(const T* plane, int64_t width, int h0, int h1, int w0, int n,
                A* __restrict__ col_value, int* __restrict__ col_index) {
  for (int j = 0; j < n; ++j) {
    A best = static_cast<A>(-FLT_MAX);
    int best_index = -1;
    for (int h = h0; h < h1; ++h) {
      const A v = static_cast<A>(plane[h * width + w0 + j]);
      if (v > best) {
        best = v;
        best_index = static_cast<int>(h * width) + w0 + j;
      }
    }
    col_value[j] = best;
    col_index[j] = best_index;
  }
}

// 8 floats / 8 ints in one 32-byte vector (GCC/Clang vector extensions: AVX2 in the x86-64-v3
// clone, two SSE registers in the default one).
typedef float Float8 __attribute__((vector_size(32)));
typedef int Int8 __attribute__((vector_size(32)));
constexpr int kLanes = 8;

// Columns [j0, j0 + 16) of pass 1, kept in registers over all rows.
inline __attribute__((always_inline)) void column_max_block16(const float* plane, int64_t width,
                                                              int h0, int h1, int w0, int j0,
                                                              float* col_value, int* col_index) {
  const Int8 iota = {0, 1, 2, 3, 4, 5, 6, 7};
  Float8 best0 = Float8{} - FLT_MAX, best1 = best0;
  Int8 index0 = Int8{} - 1, index1 = index0;
  for (int h = h0; h < h1; ++h) {
    const float* row = plane + h * width + w0 + j0;
    Float8 v0, v1;
    __builtin_memcpy(&v0, row, sizeof(v0));
    __builtin_memcpy(&v1, row + kLanes, sizeof(v1));
    const Int8 at0 = iota + static_cast<int>(h * width + w0 + j0);
    const Int8 at1 = at0 + kLanes;
    const Int8 greater0 = v0 > best0;
    const Int8 greater1 = v1 > best1;
    best0 = greater0 ? v0 : best0;
    best1 = greater1 ? v1 : best1;
    index0 = greater0 ? at0 : index0;
    index1 = greater1 ? at1 : index1;
  }
  __builtin_memcpy(col_value + j0, &best0, sizeof(best0));
  __builtin_memcpy(col_value + j0 + kLanes, &best1, sizeof(best1));
  __builtin_memcpy(col_index + j0, &index0, sizeof(index0));
  __builtin_memcpy(col_index + j0 + kLanes, &index1, sizeof(index1));
}

// float: blocks of 16 columns; the last block is shifted left to end at n (it recomputes a few
// columns, with the same result), so nothing is read outside the RoI's columns.
template <>
DETECTOR_SIMD_CLONES void column_max<float, float>(const float* plane, int64_t width, int h0,
                                                   int h1, int w0, int n,
                                                   float* __restrict__ col_value,
                                                   int* __restrict__ col_index) {
  constexpr int kBlock = 2 * kLanes;
  if (n < kBlock) {
    for (int j = 0; j < n; ++j) {
      float best = -FLT_MAX;
      int best_index = -1;
      for (int h = h0; h < h1; ++h) {
        const float v = plane[h * width + w0 + j];
        best_index = v > best ? static_cast<int>(h * width) + w0 + j : best_index;
        best = v > best ? v : best;
      }
      col_value[j] = best;
      col_index[j] = best_index;
    }
    return;
  }
  for (int j0 = 0; j0 < n; j0 += kBlock) {
    column_max_block16(plane, width, h0, h1, w0, std::min(j0, n - kBlock), col_value, col_index);
  }
}

// Pass 2 for one row of bins: bin pw takes the max of pass-1 columns [wstart - w0, wend - w0);
// among equal maxima the smaller flat index wins (the first max in row-major order).
template <typename T, typename A>
void bin_max(const A* col_value, const int* col_index, const int* wstart, const int* wend, int w0,
             int pw_count, T* out, int* arg) {
  for (int pw = 0; pw < pw_count; ++pw) {
    A best = wend[pw] <= wstart[pw] ? A(0) : static_cast<A>(-FLT_MAX);
    int best_index = -1;
    for (int j = wstart[pw] - w0; j < wend[pw] - w0; ++j) {
      const A v = col_value[j];
      const int i = col_index[j];
      const bool take = (v > best) | ((v == best) & (i < best_index));
      best = take ? v : best;
      best_index = take ? i : best_index;
    }
    out[pw] = static_cast<T>(best);
    arg[pw] = best_index;
  }
}

// float: a vector max over the bin's columns, then the smallest flat index among the columns
// equal to it. Reads up to 7 values past the bin (the column buffers carry that padding); they
// are masked out.
template <>
DETECTOR_SIMD_CLONES void bin_max<float, float>(const float* col_value, const int* col_index,
                                                const int* wstart, const int* wend, int w0,
                                                int pw_count, float* out, int* arg) {
  const Int8 iota = {0, 1, 2, 3, 4, 5, 6, 7};
  const Float8 lowest = Float8{} - FLT_MAX;
  for (int pw = 0; pw < pw_count; ++pw) {
    const int begin = wstart[pw] - w0;
    const int end = wend[pw] - w0;
    if (end <= begin) {
      out[pw] = 0.0f;
      arg[pw] = -1;
      continue;
    }
    Float8 m = lowest;
    for (int j = begin; j < end; j += kLanes) {
      Float8 v;
      __builtin_memcpy(&v, col_value + j, sizeof(v));
      const Int8 valid = (iota + j) < end;
      v = valid ? v : lowest;
      m = m > v ? m : v;
    }
    float best = m[0];
    for (int l = 1; l < kLanes; ++l) {
      best = m[l] > best ? m[l] : best;
    }
    const Float8 best8 = Float8{} + best;
    Int8 first = Int8{} + INT32_MAX;
    for (int j = begin; j < end; j += kLanes) {
      Float8 v;
      Int8 index;
      __builtin_memcpy(&v, col_value + j, sizeof(v));
      __builtin_memcpy(&index, col_index + j, sizeof(index));
      const Int8 take = ((iota + j) < end) & (v == best8) & (index < first);
      first = take ? index : first;
    }
    int best_index = first[0];
    for (int l = 1; l < kLanes; ++l) {
      best_index = first[l] < best_index ? first[l] : best_index;
    }
    out[pw] = best;
    arg[pw] = best_index;
  }
}

// Forward of channel `c` for every RoI. `input_c` points at (image 0, channel c); the output and
// argmax of RoI k and this channel start at k * roi_stride. `col_value`/`col_index` hold
// W + kLanes values.
template <typename T, typename A>
void pool_channel(const T* input_c, int64_t image_stride, int64_t width, const RoIBins& bins,
                  int ph_count, int pw_count, T* out_c, int* argmax_c, int64_t roi_stride,
                  A* col_value, int* col_index) {
  const int64_t num_rois = static_cast<int64_t>(bins.batch.size());
  for (int64_t k = 0; k < num_rois; ++k) {
    const int* e = bins.edges.data() + k * bins.stride;
    const int* hstart = e;
    const int* hend = e + ph_count;
    const int* wstart = e + 2 * ph_count;
    const int* wend = wstart + pw_count;
    const int w0 = wstart[0];
    const int n = wend[pw_count - 1] - w0;
    const T* plane = input_c + bins.batch[k] * image_stride;
    T* out = out_c + k * roi_stride;
    int* arg = argmax_c + k * roi_stride;
    for (int ph = 0; ph < ph_count; ++ph, out += pw_count, arg += pw_count) {
      if (hend[ph] <= hstart[ph] || n <= 0) {
        std::fill(out, out + pw_count, T(0));
        std::fill(arg, arg + pw_count, -1);
        continue;
      }
      column_max<T, A>(plane, width, hstart[ph], hend[ph], w0, n, col_value, col_index);
      bin_max<T, A>(col_value, col_index, wstart, wend, w0, pw_count, out, arg);
    }
  }
}

void check_pool_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                     int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, "roi_pool: expected `input` of shape (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(),
              "roi_pool: `rois` must have the dtype of `input` (", input.scalar_type(), "), got ",
              rois.scalar_type());
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0,
              "roi_pool: `output_size` must be positive, got (", pooled_height, ", ",
              pooled_width, ")");
  TORCH_CHECK(input.size(2) * input.size(3) <= INT32_MAX,
              "roi_pool: a feature plane of more than 2^31 elements is not supported");
  check_rois("roi_pool", rois, input.size(0));
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input,
                                                        const at::Tensor& rois,
                                                        double spatial_scale,
                                                        int64_t pooled_height,
                                                        int64_t pooled_width) {
  check_pool_args(input, rois, pooled_height, pooled_width);
  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1);
  const int64_t height = input.size(2);
  const int64_t width = input.size(3);
  at::Tensor output =
      at::empty({num_rois, channels, pooled_height, pooled_width}, input.options());
  at::Tensor argmax = at::empty({num_rois, channels, pooled_height, pooled_width},
                                input.options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  // NCHW planes: one (n, c) plane is what the kernel reads per RoI.
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const RoIBins bins =
        compute_bins<scalar_t>(r, spatial_scale, pooled_height, pooled_width, height, width);
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    int* arg = argmax.data_ptr<int>();
    const int64_t plane = height * width;
    const int64_t bins_per_roi = pooled_height * pooled_width;
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      // + kLanes: bin_max<float> reads up to 7 values past a bin.
      std::vector<acc_t> col_value(width + kLanes);
      std::vector<int> col_index(width + kLanes);
      for (int64_t c = begin; c < end; ++c) {
        pool_channel<scalar_t, acc_t>(in + c * plane, channels * plane, width, bins,
                                      static_cast<int>(pooled_height),
                                      static_cast<int>(pooled_width), out + c * bins_per_roi,
                                      arg + c * bins_per_roi, channels * bins_per_roi,
                                      col_value.data(), col_index.data());
      }
    });
  });
  return {output, argmax};
}

// Backward of RoIs' gradients for channels [c0, c1) into `gi` (N, C, H, W) contiguous, whose
// planes of these channels were zeroed: for RoI k = 0..K-1 (a fixed order), channel c and bin b,
// gi[batch[k], c, argmax] += grad[k, c, b]. `grad` and `argmax` are contiguous (K, C, bins), so
// a RoI's run for the block is (c1 - c0) * bins contiguous elements of each.
template <typename T>
DETECTOR_SIMD_CLONES void scatter_channels(const T* __restrict__ g, const int* __restrict__ arg,
                                           const int64_t* batch, int64_t num_rois,
                                           int64_t channels, int64_t bins, int64_t plane,
                                           int64_t c0, int64_t c1, T* __restrict__ gi) {
  const int64_t run = (c1 - c0) * bins;
  const int64_t roi_stride = channels * bins;
  constexpr int64_t kAhead = 2;  // RoIs between a prefetch and its use (~DRAM latency)
  const uint32_t limit = static_cast<uint32_t>(plane);
  for (int64_t k = 0; k < num_rois; ++k) {
    const int64_t first = k * roi_stride + c0 * bins;
    if (k + kAhead < num_rois) {
      const char* next_g = reinterpret_cast<const char*>(g + first + kAhead * roi_stride);
      const char* next_a = reinterpret_cast<const char*>(arg + first + kAhead * roi_stride);
      for (int64_t byte = 0; byte < run * 4; byte += 64) {
        __builtin_prefetch(next_g + byte, 0, 0);
        __builtin_prefetch(next_a + byte, 0, 0);
      }
    }
    const T* gk = g + first;
    const int* ak = arg + first;
    T* p = gi + (batch[k] * channels + c0) * plane;
    for (int64_t c = 0; c < c1 - c0; ++c, p += plane, gk += bins, ak += bins) {
      for (int64_t b = 0; b < bins; ++b) {
        const int index = ak[b];
        // -1 (an empty bin) and anything outside the plane wrap to >= limit: skipped.
        if (static_cast<uint32_t>(index) < limit) {
          p[index] += gk[b];
        }
      }
    }
  }
}

// As scatter_channels, for a `grad` of any strides (e.g. expanded from a sum): read in place.
template <typename T>
void scatter_channels_strided(const T* g, at::IntArrayRef strides, const int* __restrict__ arg,
                              const int64_t* batch, int64_t num_rois, int64_t channels,
                              int64_t ph_count, int64_t pw_count, int64_t plane, int64_t c0,
                              int64_t c1, T* __restrict__ gi) {
  const uint32_t limit = static_cast<uint32_t>(plane);
  for (int64_t k = 0; k < num_rois; ++k) {
    for (int64_t c = c0; c < c1; ++c) {
      T* p = gi + (batch[k] * channels + c) * plane;
      const int* ak = arg + (k * channels + c) * ph_count * pw_count;
      for (int64_t ph = 0; ph < ph_count; ++ph, ak += pw_count) {
        const T* gh = g + k * strides[0] + c * strides[1] + ph * strides[2];
        for (int64_t pw = 0; pw < pw_count; ++pw) {
          const int index = ak[pw];
          if (static_cast<uint32_t>(index) < limit) {
            p[index] += gh[pw * strides[3]];
          }
        }
      }
    }
  }
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                 const at::Tensor& argmax, int64_t batch_size, int64_t channels,
                                 int64_t height, int64_t width) {
  TORCH_CHECK(grad.dim() == 4, "_roi_pool_backward: expected `grad` of shape (K, C, PH, PW), got ",
              grad.sizes());
  TORCH_CHECK(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt,
              "_roi_pool_backward: `argmax` must be an int32 tensor of the shape of `grad` (",
              grad.sizes(), "), got ", argmax.scalar_type(), " ", argmax.sizes());
  TORCH_CHECK(grad.size(0) == rois.size(0) && grad.size(1) == channels,
              "_roi_pool_backward: `grad` of shape ", grad.sizes(), " does not match ",
              rois.size(0), " RoIs and ", channels, " channels");
  check_rois("_roi_pool_backward", rois, batch_size);
  // Every element is written below (zeroed by its owner thread, then scattered into), so the
  // memory is not zero-filled here; huge pages cut the first-touch page faults ~500x.
  at::Tensor grad_input = at::empty({batch_size, channels, height, width}, grad.options());
  advise_huge_pages(grad_input.data_ptr(), grad_input.nbytes());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t num_rois = rois.size(0);
  const int64_t bins = grad.size(2) * grad.size(3);
  const int64_t plane = height * width;
  std::vector<int64_t> batch(num_rois);
  {
    const at::Tensor r = rois.to(at::kDouble).select(1, 0).contiguous();
    const double* rb = r.const_data_ptr<double>();
    for (int64_t k = 0; k < num_rois; ++k) batch[k] = static_cast<int64_t>(rb[k]);
  }
  const at::Tensor a = argmax.contiguous();  // made by the forward: contiguous
  const bool dense = grad.is_contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "_roi_pool_backward", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const int* ap = a.const_data_ptr<int>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    // A block of kBlock channels has one owner thread: it zeroes the block's planes (for every
    // image) and scatters into them while they are in L2.
    constexpr int64_t kBlock = 2;
    const int64_t num_blocks = (channels + kBlock - 1) / kBlock;
    // Threads take blocks from a shared counter (a thread slowed down by other processes does
    // not hold up the others); what a block computes does not depend on the thread running it.
    const int64_t workers = std::min<int64_t>(num_blocks, at::get_num_threads());
    std::atomic<int64_t> next_block{0};
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      for (int64_t block = next_block++; block < num_blocks; block = next_block++) {
        const int64_t c0 = block * kBlock;
        const int64_t c1 = std::min(c0 + kBlock, channels);
        for (int64_t n = 0; n < batch_size; ++n) {
          scalar_t* p = gi + (n * channels + c0) * plane;
          std::fill(p, p + (c1 - c0) * plane, scalar_t(0));
        }
        if (dense) {
          scatter_channels<scalar_t>(gp, ap, batch.data(), num_rois, channels, bins, plane, c0,
                                     c1, gi);
        } else {
          scatter_channels_strided<scalar_t>(gp, grad.strides(), ap, batch.data(), num_rois,
                                             channels, grad.size(2), grad.size(3), plane, c0, c1,
                                             gi);
        }
      }
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("roi_pool", &roi_pool_forward_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace detector
