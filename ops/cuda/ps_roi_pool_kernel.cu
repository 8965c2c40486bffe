// Position-sensitive RoI pooling on CUDA: one thread per output value in forward, one per output
// gradient value (scattered with atomics) in backward. Mirrors ops/cpu/ps_roi_pool_kernel.cpp:
// rounded box, bins clipped to [0, H - 1] x [0, W - 1] as in torchvision, empty bins give 0.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "cuda/ps_roi_common.cuh"

namespace detector {
namespace {

struct PoolBin {
  int64_t h0, h1, w0, w1;  // [h0, h1) x [w0, w1), empty when h1 <= h0 or w1 <= w0
};

// Rows and columns of bin (i, j) of a RoI (torchvision's ps_roi_pool rules).
template <typename T>
__device__ PoolBin pool_bin(const T* roi, T spatial_scale, int64_t i, int64_t j,
                            int64_t pooled_height, int64_t pooled_width, int64_t height,
                            int64_t width) {
  const T bound = T(1 << 30);
  auto rounded = [&](T v) {
    return static_cast<int64_t>(::round(::min(::max(v * spatial_scale, -bound), bound)));
  };
  const int64_t start_w = rounded(roi[1]), start_h = rounded(roi[2]);
  const int64_t end_w = rounded(roi[3]), end_h = rounded(roi[4]);
  // RoIs smaller than a pixel count as 1 x 1.
  const T bin_h = static_cast<T>(end_h - start_h > 1 ? end_h - start_h : 1) / pooled_height;
  const T bin_w = static_cast<T>(end_w - start_w > 1 ? end_w - start_w : 1) / pooled_width;
  auto clip = [](int64_t v, int64_t size) -> int64_t {
    return v < 0 ? 0 : (v > size - 1 ? size - 1 : v);
  };
  PoolBin b;
  b.h0 = clip(start_h + static_cast<int64_t>(::floor(i * bin_h)), height);
  b.h1 = clip(start_h + static_cast<int64_t>(::ceil((i + 1) * bin_h)), height);
  b.w0 = clip(start_w + static_cast<int64_t>(::floor(j * bin_w)), width);
  b.w1 = clip(start_w + static_cast<int64_t>(::ceil((j + 1) * bin_w)), width);
  return b;
}

// The input plane of output element `index` (ps_roi_common.cuh) and its bin's pixels; `empty`
// when the RoI's batch index is invalid or the bin has no pixel (the output is then 0).
struct PoolTarget {
  int64_t plane;
  PoolBin b;
  bool empty;
};

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ PoolTarget pool_target(int64_t index, const scalar_t* rois,
                                                  double spatial_scale,
                                                  const ps_roi_cuda::Shape& shape) {
  const auto t = ps_roi_cuda::target_of<acc_t>(index, rois, shape);
  PoolTarget p;
  p.plane = t.plane;
  p.b = pool_bin<acc_t>(t.roi, static_cast<acc_t>(spatial_scale), t.i, t.j, shape.pooled_height,
                        shape.pooled_width, shape.height, shape.width);
  p.empty = !t.valid_batch || p.b.h1 <= p.b.h0 || p.b.w1 <= p.b.w0;
  return p;
}

// Calls f(p) with the offset p = h * width + w of each pixel of bin b, row by row.
template <typename F>
__device__ void for_each_pixel(const PoolBin& b, int64_t width, F f) {
  for (int64_t h = b.h0; h < b.h1; ++h) {
    for (int64_t w = b.w0; w < b.w1; ++w) {
      f(h * width + w);
    }
  }
}

template <typename scalar_t>
__global__ void ps_roi_pool_forward_kernel(int64_t total, const scalar_t* input,
                                           const scalar_t* rois, double spatial_scale,
                                           ps_roi_cuda::Shape shape, scalar_t* output) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const PoolTarget pt = pool_target<acc_t>(index, rois, spatial_scale, shape);
    const PoolBin& b = pt.b;
    if (pt.empty) {
      output[index] = scalar_t(0);
      continue;
    }
    const scalar_t* plane = input + pt.plane;
    acc_t sum = acc_t(0);
    for_each_pixel(b, shape.width, [&](int64_t p) { sum += static_cast<acc_t>(plane[p]); });
    output[index] = static_cast<scalar_t>(sum / static_cast<acc_t>((b.h1 - b.h0) * (b.w1 - b.w0)));
  }
}

template <typename scalar_t>
__global__ void ps_roi_pool_backward_kernel(int64_t total, const scalar_t* grad,
                                            const scalar_t* rois, double spatial_scale,
                                            ps_roi_cuda::Shape shape, scalar_t* grad_input) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const PoolTarget pt = pool_target<acc_t>(index, rois, spatial_scale, shape);
    const PoolBin& b = pt.b;
    if (pt.empty) {
      continue;
    }
    scalar_t* plane = grad_input + pt.plane;
    const scalar_t g = static_cast<scalar_t>(static_cast<acc_t>(grad[index]) /
                                             static_cast<acc_t>((b.h1 - b.h0) * (b.w1 - b.w0)));
    for_each_pixel(b, shape.width, [&](int64_t p) { gpuAtomicAdd(plane + p, g); });
  }
}

at::Tensor ps_roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_height,
                                    int64_t pooled_width) {
  return ps_roi_cuda::forward(
      "ps_roi_pool", input, rois, pooled_height, pooled_width, [&](const ps_roi_cuda::Launch& l) {
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, l.features.scalar_type(), "ps_roi_pool_forward_cuda", [&] {
              ps_roi_pool_forward_kernel<scalar_t>
                  <<<blocks_for(l.total), kThreadsPerBlock, 0, l.stream>>>(
                      l.total, l.features.const_data_ptr<scalar_t>(),
                      l.rois.const_data_ptr<scalar_t>(), spatial_scale, l.shape,
                      l.result.mutable_data_ptr<scalar_t>());
            });
      });
}

at::Tensor ps_roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                     double spatial_scale, int64_t pooled_height,
                                     int64_t pooled_width, int64_t batch_size, int64_t channels,
                                     int64_t height, int64_t width) {
  return ps_roi_cuda::backward(
      "ps_roi_pool backward", grad, rois, pooled_height, pooled_width, batch_size, channels, height,
      width, [&](const ps_roi_cuda::Launch& l) {
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, l.features.scalar_type(), "ps_roi_pool_backward_cuda", [&] {
              ps_roi_pool_backward_kernel<scalar_t>
                  <<<blocks_for(l.total), kThreadsPerBlock, 0, l.stream>>>(
                      l.total, l.features.const_data_ptr<scalar_t>(),
                      l.rois.const_data_ptr<scalar_t>(), spatial_scale, l.shape,
                      l.result.mutable_data_ptr<scalar_t>());
            });
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CUDA, m) {
  m.impl("ps_roi_pool", &ps_roi_pool_forward_cuda);
  m.impl("_ps_roi_pool_backward", &ps_roi_pool_backward_cuda);
}

}  // namespace detector
