// Position-sensitive RoI Align on CUDA: one thread per output value in forward, one per output
// gradient value (scattered with atomics) in backward. Mirrors ops/cpu/ps_roi_align_kernel.cpp:
// -0.5 pixel shift, bilinear_clamped samples, adaptive grid ceil(bin size); no sample point -> 0.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <torch/library.h>

#include "common/bilinear.h"
#include "cuda/cuda_utils.cuh"

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

template <typename scalar_t>
__global__ void ps_roi_align_forward_kernel(int64_t total, const scalar_t* input,
                                            const scalar_t* rois, double spatial_scale,
                                            int64_t batch, int64_t channels, int64_t height,
                                            int64_t width, int64_t pooled_height,
                                            int64_t pooled_width, int64_t sampling_ratio,
                                            int64_t channels_out, scalar_t* output) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    // index = ((k * C_out + c) * PH + i) * PW + j
    const int64_t j = index % pooled_width;
    const int64_t i = (index / pooled_width) % pooled_height;
    const int64_t c = (index / pooled_width / pooled_height) % channels_out;
    const int64_t k = index / pooled_width / pooled_height / channels_out;
    acc_t roi[5];
    for (int r = 0; r < 5; ++r) roi[r] = static_cast<acc_t>(rois[k * 5 + r]);
    const int64_t n = static_cast<int64_t>(roi[0]);
    const AlignBin<acc_t> b = align_bin<acc_t>(roi, static_cast<acc_t>(spatial_scale), i, j,
                                               pooled_height, pooled_width, sampling_ratio);
    if (n < 0 || n >= batch || b.grid_h <= 0 || b.grid_w <= 0) {
      output[index] = scalar_t(0);
      continue;
    }
    const int64_t c_in = (c * pooled_height + i) * pooled_width + j;
    const scalar_t* plane = input + (n * channels + c_in) * height * width;
    acc_t sum = acc_t(0);
    for (int64_t iy = 0; iy < b.grid_h; ++iy) {
      const acc_t y = b.y0 + static_cast<acc_t>(iy + 0.5) * b.bin_h / static_cast<acc_t>(b.grid_h);
      for (int64_t ix = 0; ix < b.grid_w; ++ix) {
        const acc_t x =
            b.x0 + static_cast<acc_t>(ix + 0.5) * b.bin_w / static_cast<acc_t>(b.grid_w);
        const Bilinear<acc_t> s = bilinear_clamped(y, x, height, width);
        if (s.weight[0] == acc_t(0) && s.weight[1] == acc_t(0) && s.weight[2] == acc_t(0) &&
            s.weight[3] == acc_t(0)) {
          continue;  // more than a pixel outside the map: contributes 0
        }
        for (int t = 0; t < 4; ++t) {
          sum += s.weight[t] * static_cast<acc_t>(plane[s.index[t]]);
        }
      }
    }
    output[index] = static_cast<scalar_t>(sum / static_cast<acc_t>(b.grid_h * b.grid_w));
  }
}

template <typename scalar_t>
__global__ void ps_roi_align_backward_kernel(int64_t total, const scalar_t* grad,
                                             const scalar_t* rois, double spatial_scale,
                                             int64_t batch, int64_t channels, int64_t height,
                                             int64_t width, int64_t pooled_height,
                                             int64_t pooled_width, int64_t sampling_ratio,
                                             int64_t channels_out, scalar_t* grad_input) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const int64_t j = index % pooled_width;
    const int64_t i = (index / pooled_width) % pooled_height;
    const int64_t c = (index / pooled_width / pooled_height) % channels_out;
    const int64_t k = index / pooled_width / pooled_height / channels_out;
    acc_t roi[5];
    for (int r = 0; r < 5; ++r) roi[r] = static_cast<acc_t>(rois[k * 5 + r]);
    const int64_t n = static_cast<int64_t>(roi[0]);
    const AlignBin<acc_t> b = align_bin<acc_t>(roi, static_cast<acc_t>(spatial_scale), i, j,
                                               pooled_height, pooled_width, sampling_ratio);
    if (n < 0 || n >= batch || b.grid_h <= 0 || b.grid_w <= 0) {
      continue;
    }
    const int64_t c_in = (c * pooled_height + i) * pooled_width + j;
    scalar_t* plane = grad_input + (n * channels + c_in) * height * width;
    const acc_t g = static_cast<acc_t>(grad[index]) / static_cast<acc_t>(b.grid_h * b.grid_w);
    for (int64_t iy = 0; iy < b.grid_h; ++iy) {
      const acc_t y = b.y0 + static_cast<acc_t>(iy + 0.5) * b.bin_h / static_cast<acc_t>(b.grid_h);
      for (int64_t ix = 0; ix < b.grid_w; ++ix) {
        const acc_t x =
            b.x0 + static_cast<acc_t>(ix + 0.5) * b.bin_w / static_cast<acc_t>(b.grid_w);
        const Bilinear<acc_t> s = bilinear_clamped(y, x, height, width);
        for (int t = 0; t < 4; ++t) {
          if (s.weight[t] != acc_t(0)) {
            gpuAtomicAdd(plane + s.index[t], static_cast<scalar_t>(s.weight[t] * g));
          }
        }
      }
    }
  }
}

void check_args(const char* op, const at::Tensor& features, const at::Tensor& rois,
                int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(features.is_cuda() && rois.is_cuda(), op, ": expected CUDA tensors");
  TORCH_CHECK(features.device() == rois.device(), op,
              ": `rois` and the features must be on the same device");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": expected `rois` of shape (K, 5), got ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == features.scalar_type(), op,
              ": `rois` must have the features' dtype");
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": `output_size` must be positive");
}

at::Tensor ps_roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                     double spatial_scale, int64_t pooled_height,
                                     int64_t pooled_width, int64_t sampling_ratio) {
  check_args("ps_roi_align", input, rois, pooled_height, pooled_width);
  TORCH_CHECK(input.dim() == 4, "ps_roi_align: expected `input` of shape (N, C, H, W)");
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(input.size(1) % bins == 0, "ps_roi_align: `input` channels (", input.size(1),
              ") must be a multiple of output_size[0] * output_size[1] = ", bins);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t channels_out = input.size(1) / bins;
  at::Tensor output =
      at::empty({rois.size(0), channels_out, pooled_height, pooled_width}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous(), rois_c = rois.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "ps_roi_align_forward_cuda", [&] {
    ps_roi_align_forward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
        total, input_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
        spatial_scale, input.size(0), input.size(1), input.size(2), input.size(3), pooled_height,
        pooled_width, sampling_ratio, channels_out, output.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

at::Tensor ps_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                      double spatial_scale, int64_t pooled_height,
                                      int64_t pooled_width, int64_t sampling_ratio,
                                      int64_t batch_size, int64_t channels, int64_t height,
                                      int64_t width) {
  check_args("ps_roi_align backward", grad, rois, pooled_height, pooled_width);
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(channels % bins == 0, "ps_roi_align backward: `channels` must be a multiple of ",
              bins);
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  const int64_t total = grad.numel();
  if (total == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor grad_c = grad.contiguous(), rois_c = rois.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "ps_roi_align_backward_cuda", [&] {
    ps_roi_align_backward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
        total, grad_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
        spatial_scale, batch_size, channels, height, width, pooled_height, pooled_width,
        sampling_ratio, channels / bins, grad_input.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CUDA, m) {
  m.impl("ps_roi_align", &ps_roi_align_forward_cuda);
  m.impl("_ps_roi_align_backward", &ps_roi_align_backward_cuda);
}

}  // namespace detector
