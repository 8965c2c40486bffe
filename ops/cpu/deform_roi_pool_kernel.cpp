// CPU kernels of deform_roi_pool and deform_ps_roi_pool (schemas in ops/deform_roi_pool.cpp).
//
// Sampling follows RoI Align with the half-pixel ("aligned") convention, as mmcv's DeformRoIPool:
//   start = roi * spatial_scale - 0.5, size = end - start (not clamped), bin = size / pooled,
//   bin (i, j) is shifted by (gamma * offset[k, 0, i, j] * width,
//                             gamma * offset[k, 1, i, j] * height),
//   and averages grid_h x grid_w bilinear samples (grid = sampling_ratio, or ceil(bin) when <= 0),
//   then is multiplied by mask[k, 0, i, j] when a mask is given (DCN v2).
//
// Layout: the input is read channels-last. The plain form uses (N, H, W, C); the position-sensitive
// form uses (N, H, W, P, C_out) with P = pooled_height * pooled_width, so the C_out channels that
// bin b reads (input channel c * P + b) are contiguous. Either way a sample's bilinear weights are
// computed once and applied to a contiguous run of C_out channels.
//
// Determinism: forward and the offset/mask gradients are computed per RoI (each RoI owns its
// outputs). The input gradient is scattered by work units that own disjoint channel slices (plain
// form: channel blocks of an NHWC buffer; PS form: the channels c * P + b of one bin b, written
// in NCHW); each unit visits RoIs, bins and samples in one fixed order, so every element's sum is
// the same for any thread count.
//
// float16 and bfloat16: computed in float32 (the float kernels), with the conversions folded into
// the copies the kernels make anyway (the channels-last input, the transposed output gradient,
// the input gradient's final layout copy); the small tensors (RoIs, offsets, masks) are widened.
// No float32 copy of the input in its own layout is made.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/bilinear.h"
#include "cpu/cpu_utils.h"
#include "deform_roi_pool.h"
#include <ATen/OpMathType.h>

namespace detector {
namespace {

// Everything a kernel needs about one call: its sizes (DeformRoiPoolShape, whose `batch` the
// kernels do not read) and pointers to contiguous CPU tensors.
template <typename T>
struct PoolArgs : DeformRoiPoolShape {
  const T* input = nullptr;   // (N, H, W, C) or PS (N, H, W, P, C_out)
  const T* rois = nullptr;    // (K, 5)
  const T* offset = nullptr;  // (K, 2, P): x then y; null when absent
  const T* mask = nullptr;    // (K, 1, P); null when absent
  T spatial_scale = T(1), gamma = T(0.1);
  int64_t sampling_ratio = -1;

  // Channel where bin b's run of `channels_out` channels starts within a pixel.
  int64_t channel_base(int64_t b) const { return position_sensitive ? b * channels_out : 0; }
};

// Sampling geometry of one RoI in feature-map pixels (half-pixel convention).
template <typename T>
struct RoiGeometry {
  int64_t batch;
  T start_x, start_y;  // top-left corner
  T width, height;     // extent, negative for inverted RoIs (then no sample is taken)
  T bin_w, bin_h;
  int64_t grid_h, grid_w;  // samples per bin along y and x, >= 0
  T count;                 // max(grid_h * grid_w, 1)
};

template <typename T>
inline RoiGeometry<T> roi_geometry(const PoolArgs<T>& a, int64_t k) {
  const T* roi = a.rois + k * 5;
  RoiGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  g.start_x = roi[1] * a.spatial_scale - T(0.5);
  g.start_y = roi[2] * a.spatial_scale - T(0.5);
  g.width = (roi[3] * a.spatial_scale - T(0.5)) - g.start_x;
  g.height = (roi[4] * a.spatial_scale - T(0.5)) - g.start_y;
  g.bin_w = g.width / static_cast<T>(a.pooled_width);
  g.bin_h = g.height / static_cast<T>(a.pooled_height);
  const int64_t grid_h = a.sampling_ratio > 0
                             ? a.sampling_ratio
                             : static_cast<int64_t>(std::ceil(g.height / a.pooled_height));
  const int64_t grid_w = a.sampling_ratio > 0
                             ? a.sampling_ratio
                             : static_cast<int64_t>(std::ceil(g.width / a.pooled_width));
  g.grid_h = std::max<int64_t>(grid_h, 0);
  g.grid_w = std::max<int64_t>(grid_w, 0);
  g.count = static_cast<T>(std::max<int64_t>(g.grid_h * g.grid_w, 1));
  return g;
}

// Top-left corner of bin b of RoI k after its deformation, and the shift itself.
template <typename T>
struct BinOrigin {
  T y, x;
};

template <typename T>
inline BinOrigin<T> bin_origin(const PoolArgs<T>& a, const RoiGeometry<T>& g, int64_t k,
                               int64_t b) {
  const int64_t P = a.bins();
  const int64_t i = b / a.pooled_width, j = b % a.pooled_width;
  T y = g.start_y, x = g.start_x;
  if (a.offset != nullptr) {
    x += a.gamma * g.width * a.offset[(k * 2) * P + b];
    y += a.gamma * g.height * a.offset[(k * 2 + 1) * P + b];
  }
  return {y + static_cast<T>(i) * g.bin_h, x + static_cast<T>(j) * g.bin_w};
}

template <typename T>
inline T sample_y(const RoiGeometry<T>& g, const BinOrigin<T>& o, int64_t iy) {
  return o.y + (static_cast<T>(iy) + T(0.5)) * g.bin_h / static_cast<T>(g.grid_h);
}

template <typename T>
inline T sample_x(const RoiGeometry<T>& g, const BinOrigin<T>& o, int64_t ix) {
  return o.x + (static_cast<T>(ix) + T(0.5)) * g.bin_w / static_cast<T>(g.grid_w);
}

template <typename T>
inline bool outside(const PoolArgs<T>& a, T y, T x) {
  return y < T(-1) || y > T(a.height) || x < T(-1) || x > T(a.width);
}

template <typename T>
inline T bin_mask(const PoolArgs<T>& a, int64_t k, int64_t b) {
  return a.mask != nullptr ? a.mask[k * a.bins() + b] : T(1);
}

// ---------------------------------------------------------------------------------------------
// Forward: one RoI at a time. acc is (P, C_out) scratch, out is the RoI's (C_out, P) output.
template <typename T>
__attribute__((always_inline)) inline void forward_roi(const PoolArgs<T>& a, int64_t k, T* acc,
                                                       T* out) {
  const int64_t P = a.bins(), C = a.channels_out, stride = a.channels_total;
  const RoiGeometry<T> g = roi_geometry(a, k);
  const T* plane = a.input + g.batch * a.height * a.width * stride;
  std::fill(acc, acc + P * C, T(0));
  for (int64_t b = 0; b < P; ++b) {
    T* acc_b = acc + b * C;
    const T* base = plane + a.channel_base(b);
    const BinOrigin<T> o = bin_origin(a, g, k, b);
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const T y = sample_y(g, o, iy);
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const T x = sample_x(g, o, ix);
        if (outside(a, y, x)) continue;
        const Bilinear<T> w = bilinear_clamped(y, x, a.height, a.width);
        const T* p0 = base + w.index[0] * stride;
        const T* p1 = base + w.index[1] * stride;
        const T* p2 = base + w.index[2] * stride;
        const T* p3 = base + w.index[3] * stride;
        const T w0 = w.weight[0], w1 = w.weight[1], w2 = w.weight[2], w3 = w.weight[3];
        for (int64_t c = 0; c < C; ++c) {
          acc_b[c] += w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c];
        }
      }
    }
  }
  for (int64_t b = 0; b < P; ++b) {
    const T m = bin_mask(a, k, b);
    const T* acc_b = acc + b * C;
    for (int64_t c = 0; c < C; ++c) out[c * P + b] = acc_b[c] / g.count * m;
  }
}

template <typename T>
__attribute__((always_inline)) inline void forward_rois_impl(const PoolArgs<T>& a, int64_t k0,
                                                             int64_t k1, T* output) {
  std::vector<T> acc(a.bins() * a.channels_out);
  for (int64_t k = k0; k < k1; ++k) {
    forward_roi(a, k, acc.data(), output + k * a.channels_out * a.bins());
  }
}

DETECTOR_SIMD_CLONES void forward_rois_float(const PoolArgs<float>& a, int64_t k0, int64_t k1,
                                             float* output) {
  forward_rois_impl(a, k0, k1, output);
}

DETECTOR_SIMD_CLONES void forward_rois_double(const PoolArgs<double>& a, int64_t k0, int64_t k1,
                                              double* output) {
  forward_rois_impl(a, k0, k1, output);
}

inline void forward_rois(const PoolArgs<float>& a, int64_t k0, int64_t k1, float* out) {
  forward_rois_float(a, k0, k1, out);
}
inline void forward_rois(const PoolArgs<double>& a, int64_t k0, int64_t k1, double* out) {
  forward_rois_double(a, k0, k1, out);
}

// ---------------------------------------------------------------------------------------------
// Backward to the input. Samples of every (RoI, bin) are precomputed with their weights already
// scaled by mask / count; work units then scatter grad_output into disjoint channel slices.
template <typename T>
struct SampleTable {
  std::vector<Bilinear<T>> taps;  // all samples (order: see first())
  std::vector<int64_t> prefix;    // (K + 1): samples per bin summed over the RoIs before k
  std::vector<int64_t> per_bin;   // (K): samples per bin of each RoI (grid_h * grid_w)
  std::vector<int64_t> batch;     // (K): batch index of each RoI
  int64_t bins = 0;
  bool bin_major = false;  // PS form: a work unit reads one bin of every RoI, so store bin by bin

  // Index of the first sample of bin b of RoI k; the bin's per_bin[k] samples follow it.
  int64_t first(int64_t k, int64_t b) const {
    const int64_t num_rois = static_cast<int64_t>(per_bin.size());
    return bin_major ? b * prefix[num_rois] + prefix[k] : prefix[k] * bins + b * per_bin[k];
  }
};

template <typename T>
SampleTable<T> build_samples(const PoolArgs<T>& a, int64_t num_rois) {
  const int64_t P = a.bins();
  SampleTable<T> s;
  s.bins = P;
  s.bin_major = a.position_sensitive;
  s.prefix.assign(num_rois + 1, 0);
  s.per_bin.assign(num_rois, 0);
  s.batch.assign(num_rois, 0);
  for (int64_t k = 0; k < num_rois; ++k) {
    const RoiGeometry<T> g = roi_geometry(a, k);
    s.per_bin[k] = g.grid_h * g.grid_w;
    s.batch[k] = g.batch;
    s.prefix[k + 1] = s.prefix[k] + s.per_bin[k];
  }
  s.taps.resize(s.prefix[num_rois] * P);
  at::parallel_for(0, num_rois, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const RoiGeometry<T> g = roi_geometry(a, k);
      for (int64_t b = 0; b < P; ++b) {
        Bilinear<T>* tap = s.taps.data() + s.first(k, b);
        const BinOrigin<T> o = bin_origin(a, g, k, b);
        const T scale = bin_mask(a, k, b) / g.count;
        for (int64_t iy = 0; iy < g.grid_h; ++iy) {
          const T y = sample_y(g, o, iy);
          for (int64_t ix = 0; ix < g.grid_w; ++ix, ++tap) {
            const T x = sample_x(g, o, ix);
            *tap =
                outside(a, y, x) ? bilinear_zero<T>() : bilinear_clamped(y, x, a.height, a.width);
            for (int q = 0; q < 4; ++q) tap->weight[q] *= scale;
          }
        }
      }
    }
  });
  return s;
}

// Scatters the channels [c_lo, c_hi) of bins [b_lo, b_hi) of grad_t (K, P, C_out) into
// grad_input: (N, H, W, C) for the plain form (a bin's channels contiguous), and NCHW
// (N, C_out * P, H, W) for the PS form, where a bin's channels c * P + b lie P planes apart
// (scattering there directly avoids a zeroed channels-last buffer and a transposing copy).
template <typename T>
__attribute__((always_inline)) inline void scatter_unit_impl(const PoolArgs<T>& a,
                                                             const SampleTable<T>& s,
                                                             const T* grad_t, T* grad_input,
                                                             int64_t b_lo, int64_t b_hi,
                                                             int64_t c_lo, int64_t c_hi) {
  const int64_t P = a.bins(), C = a.channels_out, HW = a.height * a.width;
  const bool nchw = a.position_sensitive;
  const int64_t pixel_stride = nchw ? 1 : a.channels_total;
  const int64_t channel_stride = nchw ? P * HW : 1;
  const int64_t num_rois = static_cast<int64_t>(s.per_bin.size());
  const int64_t n_c = c_hi - c_lo;
  for (int64_t k = 0; k < num_rois; ++k) {
    const int64_t per_bin = s.per_bin[k];
    if (per_bin == 0) continue;
    T* image = grad_input + s.batch[k] * HW * a.channels_total;
    for (int64_t b = b_lo; b < b_hi; ++b) {
      const T* g = grad_t + (k * P + b) * C + c_lo;
      T* base = image + (nchw ? b * HW : 0) + c_lo * channel_stride;
      const Bilinear<T>* tap = s.taps.data() + s.first(k, b);
      for (int64_t t = 0; t < per_bin; ++t, ++tap) {
        for (int q = 0; q < 4; ++q) {
          const T w = tap->weight[q];
          if (w == T(0)) continue;
          T* dst = base + tap->index[q] * pixel_stride;
          if (nchw) {
            for (int64_t c = 0; c < n_c; ++c) dst[c * channel_stride] += w * g[c];
          } else {
            for (int64_t c = 0; c < n_c; ++c) dst[c] += w * g[c];
          }
        }
      }
    }
  }
}

DETECTOR_SIMD_CLONES void scatter_unit_float(const PoolArgs<float>& a, const SampleTable<float>& s,
                                             const float* grad_t, float* grad_input, int64_t b_lo,
                                             int64_t b_hi, int64_t c_lo, int64_t c_hi) {
  scatter_unit_impl(a, s, grad_t, grad_input, b_lo, b_hi, c_lo, c_hi);
}

DETECTOR_SIMD_CLONES void scatter_unit_double(const PoolArgs<double>& a,
                                              const SampleTable<double>& s, const double* grad_t,
                                              double* grad_input, int64_t b_lo, int64_t b_hi,
                                              int64_t c_lo, int64_t c_hi) {
  scatter_unit_impl(a, s, grad_t, grad_input, b_lo, b_hi, c_lo, c_hi);
}

inline void scatter_unit(const PoolArgs<float>& a, const SampleTable<float>& s, const float* g,
                         float* gi, int64_t b_lo, int64_t b_hi, int64_t c_lo, int64_t c_hi) {
  scatter_unit_float(a, s, g, gi, b_lo, b_hi, c_lo, c_hi);
}
inline void scatter_unit(const PoolArgs<double>& a, const SampleTable<double>& s, const double* g,
                         double* gi, int64_t b_lo, int64_t b_hi, int64_t c_lo, int64_t c_hi) {
  scatter_unit_double(a, s, g, gi, b_lo, b_hi, c_lo, c_hi);
}

// Splits the input gradient into work units owning disjoint channel slices and runs them.
template <typename T>
void backward_input(const PoolArgs<T>& a, int64_t num_rois, const T* grad_t, T* grad_input) {
  const SampleTable<T> samples = build_samples(a, num_rois);
  const int64_t C = a.channels_out;
  const int64_t groups = a.position_sensitive ? a.bins() : 1;  // bin groups with their own runs
  // Channel blocks: two units per thread where the channels allow, at least 32 channels each.
  // The block size does not change any element's summation order, only which thread does it.
  const int64_t threads = at::get_num_threads();
  const int64_t want_blocks = std::max<int64_t>(1, (2 * threads + groups - 1) / groups);
  const int64_t block = std::max<int64_t>(32, (C + want_blocks - 1) / want_blocks);
  const int64_t blocks = (C + block - 1) / block;
  at::parallel_for(0, groups * blocks, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t group = u / blocks, blk = u % blocks;
      const int64_t b_lo = a.position_sensitive ? group : 0;
      const int64_t b_hi = a.position_sensitive ? group + 1 : a.bins();
      const int64_t c_lo = blk * block, c_hi = std::min(C, c_lo + block);
      scatter_unit(a, samples, grad_t, grad_input, b_lo, b_hi, c_lo, c_hi);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward to offset and mask, per RoI: for each bin, the channel-summed products of grad_output
// with the samples' values (mask) and with their derivatives along x and y (offset).
// dots[q] = sum_c grad[c] * corner_q[c] for the four corners of a sample, in one pass. The
// vectorized reduction's order is fixed at compile time, so the result does not depend on threads.
template <typename T>
__attribute__((always_inline)) inline void corner_dots(const T* grad, const T* p0, const T* p1,
                                                       const T* p2, const T* p3, int64_t n,
                                                       T* dots) {
  T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t c = 0; c < n; ++c) {
    const T g = grad[c];
    s0 += g * p0[c];
    s1 += g * p1[c];
    s2 += g * p2[c];
    s3 += g * p3[c];
  }
  dots[0] = s0;
  dots[1] = s1;
  dots[2] = s2;
  dots[3] = s3;
}

template <typename T>
__attribute__((always_inline)) inline void offset_mask_grad_impl(const PoolArgs<T>& a,
                                                                 const T* grad_t, int64_t k0,
                                                                 int64_t k1, T* grad_offset,
                                                                 T* grad_mask) {
  const int64_t P = a.bins(), C = a.channels_out, stride = a.channels_total;
  for (int64_t k = k0; k < k1; ++k) {
    const RoiGeometry<T> g = roi_geometry(a, k);
    const T* plane = a.input + g.batch * a.height * a.width * stride;
    for (int64_t b = 0; b < P; ++b) {
      const T* grad_b = grad_t + (k * P + b) * C;
      const T* base = plane + a.channel_base(b);
      const BinOrigin<T> o = bin_origin(a, g, k, b);
      T sum_x = T(0), sum_y = T(0), sum_v = T(0);
      for (int64_t iy = 0; iy < g.grid_h; ++iy) {
        const T y = sample_y(g, o, iy);
        for (int64_t ix = 0; ix < g.grid_w; ++ix) {
          const T x = sample_x(g, o, ix);
          if (outside(a, y, x)) continue;
          const BilinearGrad<T> d = bilinear_clamped_grad(y, x, a.height, a.width);
          T dots[4];
          corner_dots(grad_b, base + d.sample.index[0] * stride, base + d.sample.index[1] * stride,
                      base + d.sample.index[2] * stride, base + d.sample.index[3] * stride, C,
                      dots);
          for (int q = 0; q < 4; ++q) {
            const T gv = dots[q];
            sum_x += d.dx[q] * gv;
            sum_y += d.dy[q] * gv;
            sum_v += d.sample.weight[q] * gv;
          }
        }
      }
      const T m = bin_mask(a, k, b);
      if (grad_offset != nullptr) {
        grad_offset[(k * 2) * P + b] = sum_x * a.gamma * g.width * m / g.count;
        grad_offset[(k * 2 + 1) * P + b] = sum_y * a.gamma * g.height * m / g.count;
      }
      if (grad_mask != nullptr) grad_mask[k * P + b] = sum_v / g.count;
    }
  }
}

DETECTOR_SIMD_CLONES void offset_mask_grad_float(const PoolArgs<float>& a, const float* grad_t,
                                                 int64_t k0, int64_t k1, float* grad_offset,
                                                 float* grad_mask) {
  offset_mask_grad_impl(a, grad_t, k0, k1, grad_offset, grad_mask);
}

DETECTOR_SIMD_CLONES void offset_mask_grad_double(const PoolArgs<double>& a, const double* grad_t,
                                                  int64_t k0, int64_t k1, double* grad_offset,
                                                  double* grad_mask) {
  offset_mask_grad_impl(a, grad_t, k0, k1, grad_offset, grad_mask);
}

inline void offset_mask_grad(const PoolArgs<float>& a, const float* g, int64_t k0, int64_t k1,
                             float* go, float* gm) {
  offset_mask_grad_float(a, g, k0, k1, go, gm);
}
inline void offset_mask_grad(const PoolArgs<double>& a, const double* g, int64_t k0, int64_t k1,
                             double* go, double* gm) {
  offset_mask_grad_double(a, g, k0, k1, go, gm);
}

// ---------------------------------------------------------------------------------------------
// Layout conversion shared by both forms.

// The dtype the kernels compute in: float32 for float16/bfloat16, else the input's.
at::ScalarType compute_type(const at::Tensor& input) {
  return at::toOpMathType(input.scalar_type());
}

// `view` copied into a new contiguous tensor of dtype `type` (one pass: layout and dtype at once).
at::Tensor dense_copy(const at::Tensor& view, at::ScalarType type) {
  return at::empty(view.sizes(), view.options().dtype(type)).copy_(view);
}

// (N, C, H, W) -> (N, H, W, C), or for the PS form (N, C_out * P, H, W) -> (N, H, W, P, C_out),
// in the compute dtype.
at::Tensor to_channels_last(const at::Tensor& input, int64_t bins, bool position_sensitive) {
  if (!position_sensitive) return dense_copy(input.permute({0, 2, 3, 1}), compute_type(input));
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  return dense_copy(input.reshape({N, C / bins, bins, H, W}).permute({0, 3, 4, 2, 1}),
                    compute_type(input));
}

template <typename T>
PoolArgs<T> make_args(const DeformRoiPoolShape& shape, const at::Tensor& input_cl,
                      const at::Tensor& rois, const at::Tensor& offset, const at::Tensor& mask,
                      double spatial_scale, int64_t sampling_ratio, double gamma) {
  PoolArgs<T> a;
  static_cast<DeformRoiPoolShape&>(a) = shape;
  a.input = input_cl.data_ptr<T>();
  a.rois = rois.data_ptr<T>();
  a.offset = offset.defined() ? offset.data_ptr<T>() : nullptr;
  a.mask = mask.defined() ? mask.data_ptr<T>() : nullptr;
  a.spatial_scale = static_cast<T>(spatial_scale);
  a.gamma = static_cast<T>(gamma);
  a.sampling_ratio = sampling_ratio;
  return a;
}

// `t` contiguous in the compute dtype `type`, or an undefined tensor when absent.
at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t, at::ScalarType type) {
  return t.has_value() ? t->to(type).contiguous() : at::Tensor();
}

at::Tensor forward_cpu(const char* op, const at::Tensor& input, const at::Tensor& rois,
                       const std::optional<at::Tensor>& offset,
                       const std::optional<at::Tensor>& mask, double spatial_scale,
                       int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                       double gamma, bool position_sensitive) {
  const DeformRoiPoolShape s = check_deform_roi_pool_args(
      op, input, rois, offset, mask, pooled_height, pooled_width, position_sensitive);
  const int64_t K = rois.size(0), P = s.bins(), C_out = s.channels_out;
  const at::ScalarType type = compute_type(input);
  at::Tensor output = at::zeros({K, C_out, pooled_height, pooled_width}, input.options());
  if (K == 0 || output.numel() == 0 || input.size(2) == 0 || input.size(3) == 0) return output;
  if (type != input.scalar_type()) output = at::empty(output.sizes(), output.options().dtype(type));
  const at::Tensor input_cl = to_channels_last(input, P, position_sensitive);
  const at::Tensor rois_c = rois.to(type).contiguous();
  const at::Tensor offset_c = contiguous_or_undefined(offset, type);
  const at::Tensor mask_c = contiguous_or_undefined(mask, type);
  AT_DISPATCH_FLOATING_TYPES(type, "deform_roi_pool_forward_cpu", [&] {
    const PoolArgs<scalar_t> a = make_args<scalar_t>(s, input_cl, rois_c, offset_c, mask_c,
                                                     spatial_scale, sampling_ratio, gamma);
    scalar_t* out = output.data_ptr<scalar_t>();
    at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) { forward_rois(a, k0, k1, out); });
  });
  return output.to(input.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const char* op, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const std::optional<at::Tensor>& offset, const std::optional<at::Tensor>& mask,
    double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
    double gamma, bool offset_grad, bool mask_grad, bool position_sensitive) {
  const DeformRoiPoolShape s = check_deform_roi_pool_args(
      op, input, rois, offset, mask, pooled_height, pooled_width, position_sensitive);
  const int64_t N = s.batch, H = s.height, W = s.width;
  const int64_t K = rois.size(0), P = s.bins(), C_out = s.channels_out;
  check_deform_roi_pool_grad(op, grad, K, s);
  offset_grad = offset_grad && offset.has_value();
  mask_grad = mask_grad && mask.has_value();
  const at::ScalarType type = compute_type(input);
  const at::TensorOptions compute = input.options().dtype(type);
  at::Tensor grad_input = at::empty_like(input);  // filled by the final copy (or zeroed below)
  at::Tensor grad_offset = offset_grad ? at::zeros({K, 2, pooled_height, pooled_width}, compute)
                                       : at::empty({0}, compute);
  at::Tensor grad_mask =
      mask_grad ? at::zeros({K, 1, pooled_height, pooled_width}, compute) : at::empty({0}, compute);
  // grad_offset and grad_mask in the input's dtype (computed in `type`)
  const auto stored = [&](const at::Tensor& t) { return t.to(input.scalar_type()); };
  if (K == 0 || grad.numel() == 0 || H == 0 || W == 0) {
    return {grad_input.zero_(), stored(grad_offset), stored(grad_mask)};
  }

  // The input's values are only read for the offset and mask gradients.
  const at::Tensor input_cl = offset_grad || mask_grad
                                  ? to_channels_last(input, P, position_sensitive)
                                  : at::empty({0}, compute);
  const at::Tensor rois_c = rois.to(type).contiguous();
  const at::Tensor offset_c = contiguous_or_undefined(offset, type);
  const at::Tensor mask_c = contiguous_or_undefined(mask, type);
  // (K, C_out, ph, pw) -> (K, P, C_out): one bin's channels contiguous
  const at::Tensor grad_t = dense_copy(grad.reshape({K, C_out, P}).transpose(1, 2), type);
  // plain: (N, H, W, C); PS: NCHW (N, C_out * P, H, W), see scatter_unit_impl
  at::Tensor grad_cl = position_sensitive ? at::zeros({N, input.size(1), H, W}, compute)
                                          : at::zeros({N, H, W, input.size(1)}, compute);
  AT_DISPATCH_FLOATING_TYPES(type, "deform_roi_pool_backward_cpu", [&] {
    const PoolArgs<scalar_t> a = make_args<scalar_t>(s, input_cl, rois_c, offset_c, mask_c,
                                                     spatial_scale, sampling_ratio, gamma);
    const scalar_t* g = grad_t.data_ptr<scalar_t>();
    backward_input(a, K, g, grad_cl.data_ptr<scalar_t>());
    if (offset_grad || mask_grad) {
      scalar_t* go = offset_grad ? grad_offset.data_ptr<scalar_t>() : nullptr;
      scalar_t* gm = mask_grad ? grad_mask.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, K, 1,
                       [&](int64_t k0, int64_t k1) { offset_mask_grad(a, g, k0, k1, go, gm); });
    }
  });
  if (position_sensitive) {
    if (grad_input.is_contiguous() && type == input.scalar_type()) {
      return {grad_cl, grad_offset, grad_mask};
    }
    grad_input.copy_(grad_cl);  // into input's own layout and dtype
  } else {
    grad_input.copy_(grad_cl.permute({0, 3, 1, 2}));  // (N, H, W, C) -> (N, C, H, W)
  }
  return {grad_input, stored(grad_offset), stored(grad_mask)};
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CPU, m) { register_deform_roi_pool<forward_cpu, backward_cpu>(m); }

}  // namespace detector
