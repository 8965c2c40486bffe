// Position-sensitive RoI Align on CUDA: one thread per output value in forward, one per output
// gradient value (scattered with atomics) in backward. Mirrors ops/cpu/ps_roi_align_kernel.cpp:
// -0.5 pixel shift, bilinear_clamped samples, adaptive grid ceil(bin size); no sample point -> 0.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <torch/library.h>

#include "common/bilinear.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/ps_roi_common.cuh"

namespace detector {
namespace {

// The sample grid of bin (i, j) of a RoI: point (iy, ix) lies at
// (y0 + (iy + 0.5) * bin_h / grid_h, x0 + (ix + 0.5) * bin_w / grid_w).
template <typename T>
struct AlignBin {
  T y0, x0, bin_h, bin_w;
  int64_t grid_h, grid_w;  // no sample point when either is <= 0
};

template <typename T>
__device__ AlignBin<T> align_bin(const T* roi, T spatial_scale, int64_t i, int64_t j,
                                 int64_t pooled_height, int64_t pooled_width,
                                 int64_t sampling_ratio) {
  const T start_w = roi[1] * spatial_scale - T(0.5);
  const T start_h = roi[2] * spatial_scale - T(0.5);
  const T roi_w = roi[3] * spatial_scale - T(0.5) - start_w;
  const T roi_h = roi[4] * spatial_scale - T(0.5) - start_h;
  AlignBin<T> b;
  b.bin_h = roi_h / static_cast<T>(pooled_height);
  b.bin_w = roi_w / static_cast<T>(pooled_width);
  auto grid = [&](T bin_size) -> int64_t {
    if (sampling_ratio > 0) return sampling_ratio;
    const T points = ::ceil(bin_size);
    return points < T(1) ? 0 : static_cast<int64_t>(::min(points, T(1 << 20)));
  };
  b.grid_h = grid(b.bin_h);
  b.grid_w = grid(b.bin_w);
  b.y0 = static_cast<T>(i) * b.bin_h + start_h;
  b.x0 = static_cast<T>(j) * b.bin_w + start_w;
  return b;
}

// The target of output element `index` (ps_roi_common.cuh) and its bin's sample grid; `empty`
// when the RoI's batch index is invalid or the grid has no point (the output is then 0).
template <typename T>
struct AlignTarget {
  ps_roi_cuda::Target<T> t;
  AlignBin<T> b;
  bool empty;
};

template <typename T, typename scalar_t>
__device__ __forceinline__ AlignTarget<T> align_target(int64_t index, const scalar_t* rois,
                                                       double spatial_scale,
                                                       const ps_roi_cuda::Shape& shape,
                                                       int64_t sampling_ratio) {
  AlignTarget<T> a;
  a.t = ps_roi_cuda::target_of<T>(index, rois, shape);
  a.b = align_bin<T>(a.t.roi, static_cast<T>(spatial_scale), a.t.i, a.t.j, shape.pooled_height,
                     shape.pooled_width, sampling_ratio);
  a.empty = !a.t.valid_batch || a.b.grid_h <= 0 || a.b.grid_w <= 0;
  return a;
}

// Calls f(s) with the bilinear sample s of each point of bin b's grid, row by row.
template <typename T, typename F>
__device__ void for_each_sample(const AlignBin<T>& b, int64_t height, int64_t width, F f) {
  for (int64_t iy = 0; iy < b.grid_h; ++iy) {
    const T y = b.y0 + static_cast<T>(iy + 0.5) * b.bin_h / static_cast<T>(b.grid_h);
    for (int64_t ix = 0; ix < b.grid_w; ++ix) {
      const T x = b.x0 + static_cast<T>(ix + 0.5) * b.bin_w / static_cast<T>(b.grid_w);
      f(bilinear_clamped(y, x, height, width));
    }
  }
}

template <typename scalar_t>
__global__ void ps_roi_align_forward_kernel(int64_t total, const scalar_t* input,
                                            const scalar_t* rois, double spatial_scale,
                                            ps_roi_cuda::Shape shape, int64_t sampling_ratio,
                                            scalar_t* output) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const AlignTarget<acc_t> a =
        align_target<acc_t>(index, rois, spatial_scale, shape, sampling_ratio);
    const AlignBin<acc_t>& b = a.b;
    if (a.empty) {
      output[index] = scalar_t(0);
      continue;
    }
    const scalar_t* plane = input + a.t.plane;
    acc_t sum = acc_t(0);
    for_each_sample(b, shape.height, shape.width, [&](const Bilinear<acc_t>& s) {
      if (s.weight[0] == acc_t(0) && s.weight[1] == acc_t(0) && s.weight[2] == acc_t(0) &&
          s.weight[3] == acc_t(0)) {
        return;  // more than a pixel outside the map: contributes 0
      }
      for (int k = 0; k < 4; ++k) {
        sum += s.weight[k] * static_cast<acc_t>(plane[s.index[k]]);
      }
    });
    output[index] = static_cast<scalar_t>(sum / static_cast<acc_t>(b.grid_h * b.grid_w));
  }
}

template <typename scalar_t>
__global__ void ps_roi_align_backward_kernel(int64_t total, const scalar_t* grad,
                                             const scalar_t* rois, double spatial_scale,
                                             ps_roi_cuda::Shape shape, int64_t sampling_ratio,
                                             scalar_t* grad_input) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const AlignTarget<acc_t> a =
        align_target<acc_t>(index, rois, spatial_scale, shape, sampling_ratio);
    const AlignBin<acc_t>& b = a.b;
    if (a.empty) {
      continue;
    }
    scalar_t* plane = grad_input + a.t.plane;
    const acc_t g = static_cast<acc_t>(grad[index]) / static_cast<acc_t>(b.grid_h * b.grid_w);
    for_each_sample(b, shape.height, shape.width, [&](const Bilinear<acc_t>& s) {
      for (int k = 0; k < 4; ++k) {
        if (s.weight[k] != acc_t(0)) {
          gpuAtomicAdd(plane + s.index[k], static_cast<scalar_t>(s.weight[k] * g));
        }
      }
    });
  }
}

at::Tensor ps_roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                     double spatial_scale, int64_t pooled_height,
                                     int64_t pooled_width, int64_t sampling_ratio) {
  return ps_roi_cuda::forward(
      "ps_roi_align", input, rois, pooled_height, pooled_width, [&](const ps_roi_cuda::Launch& l) {
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, l.features.scalar_type(), "ps_roi_align_forward_cuda", [&] {
              ps_roi_align_forward_kernel<scalar_t>
                  <<<blocks_for(l.total), kThreadsPerBlock, 0, l.stream>>>(
                      l.total, l.features.const_data_ptr<scalar_t>(),
                      l.rois.const_data_ptr<scalar_t>(), spatial_scale, l.shape, sampling_ratio,
                      l.result.mutable_data_ptr<scalar_t>());
            });
      });
}

at::Tensor ps_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                      double spatial_scale, int64_t pooled_height,
                                      int64_t pooled_width, int64_t sampling_ratio,
                                      int64_t batch_size, int64_t channels, int64_t height,
                                      int64_t width) {
  return ps_roi_cuda::backward(
      "ps_roi_align backward", grad, rois, pooled_height, pooled_width, batch_size, channels,
      height, width, [&](const ps_roi_cuda::Launch& l) {
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, l.features.scalar_type(), "ps_roi_align_backward_cuda", [&] {
              ps_roi_align_backward_kernel<scalar_t>
                  <<<blocks_for(l.total), kThreadsPerBlock, 0, l.stream>>>(
                      l.total, l.features.const_data_ptr<scalar_t>(),
                      l.rois.const_data_ptr<scalar_t>(), spatial_scale, l.shape, sampling_ratio,
                      l.result.mutable_data_ptr<scalar_t>());
            });
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CUDA, m) {
  m.impl("ps_roi_align", &ps_roi_align_forward_cuda);
  m.impl("_ps_roi_align_backward", &ps_roi_align_backward_cuda);
}

}  // namespace detector
