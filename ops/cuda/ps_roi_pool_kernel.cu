// Position-sensitive RoI pooling on CUDA: one thread per output value in forward, one per output
// gradient value (scattered with atomics) in backward. Mirrors ops/cpu/ps_roi_pool_kernel.cpp:
// rounded box, bins clipped to [0, H - 1] x [0, W - 1] as in torchvision, empty bins give 0.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"

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

template <typename scalar_t>
__global__ void ps_roi_pool_forward_kernel(int64_t total, const scalar_t* input,
                                           const scalar_t* rois, double spatial_scale,
                                           int64_t batch, int64_t channels, int64_t height,
                                           int64_t width, int64_t pooled_height,
                                           int64_t pooled_width, int64_t channels_out,
                                           scalar_t* output) {
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
    const PoolBin b = pool_bin<acc_t>(roi, static_cast<acc_t>(spatial_scale), i, j,
                                      pooled_height, pooled_width, height, width);
    if (n < 0 || n >= batch || b.h1 <= b.h0 || b.w1 <= b.w0) {
      output[index] = scalar_t(0);
      continue;
    }
    const int64_t c_in = (c * pooled_height + i) * pooled_width + j;
    const scalar_t* plane = input + (n * channels + c_in) * height * width;
    acc_t sum = acc_t(0);
    for (int64_t h = b.h0; h < b.h1; ++h) {
      for (int64_t w = b.w0; w < b.w1; ++w) {
        sum += static_cast<acc_t>(plane[h * width + w]);
      }
    }
    output[index] = static_cast<scalar_t>(sum / static_cast<acc_t>((b.h1 - b.h0) * (b.w1 - b.w0)));
  }
}

template <typename scalar_t>
__global__ void ps_roi_pool_backward_kernel(int64_t total, const scalar_t* grad,
                                            const scalar_t* rois, double spatial_scale,
                                            int64_t batch, int64_t channels, int64_t height,
                                            int64_t width, int64_t pooled_height,
                                            int64_t pooled_width, int64_t channels_out,
                                            scalar_t* grad_input) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const int64_t j = index % pooled_width;
    const int64_t i = (index / pooled_width) % pooled_height;
    const int64_t c = (index / pooled_width / pooled_height) % channels_out;
    const int64_t k = index / pooled_width / pooled_height / channels_out;
    acc_t roi[5];
    for (int r = 0; r < 5; ++r) roi[r] = static_cast<acc_t>(rois[k * 5 + r]);
    const int64_t n = static_cast<int64_t>(roi[0]);
    const PoolBin b = pool_bin<acc_t>(roi, static_cast<acc_t>(spatial_scale), i, j,
                                      pooled_height, pooled_width, height, width);
    if (n < 0 || n >= batch || b.h1 <= b.h0 || b.w1 <= b.w0) {
      continue;
    }
    const int64_t c_in = (c * pooled_height + i) * pooled_width + j;
    scalar_t* plane = grad_input + (n * channels + c_in) * height * width;
    const scalar_t g = static_cast<scalar_t>(
        static_cast<acc_t>(grad[index]) / static_cast<acc_t>((b.h1 - b.h0) * (b.w1 - b.w0)));
    for (int64_t h = b.h0; h < b.h1; ++h) {
      for (int64_t w = b.w0; w < b.w1; ++w) {
        gpuAtomicAdd(plane + h * width + w, g);
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

at::Tensor ps_roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_height,
                                    int64_t pooled_width) {
  check_args("ps_roi_pool", input, rois, pooled_height, pooled_width);
  TORCH_CHECK(input.dim() == 4, "ps_roi_pool: expected `input` of shape (N, C, H, W)");
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(input.size(1) % bins == 0, "ps_roi_pool: `input` channels (", input.size(1),
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
                                  "ps_roi_pool_forward_cuda", [&] {
    ps_roi_pool_forward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
        total, input_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
        spatial_scale, input.size(0), input.size(1), input.size(2), input.size(3), pooled_height,
        pooled_width, channels_out, output.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

at::Tensor ps_roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                     double spatial_scale, int64_t pooled_height,
                                     int64_t pooled_width, int64_t batch_size, int64_t channels,
                                     int64_t height, int64_t width) {
  check_args("ps_roi_pool backward", grad, rois, pooled_height, pooled_width);
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(channels % bins == 0, "ps_roi_pool backward: `channels` must be a multiple of ",
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
                                  "ps_roi_pool_backward_cuda", [&] {
    ps_roi_pool_backward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
        total, grad_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
        spatial_scale, batch_size, channels, height, width, pooled_height, pooled_width,
        channels / bins, grad_input.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CUDA, m) {
  m.impl("ps_roi_pool", &ps_roi_pool_forward_cuda);
  m.impl("_ps_roi_pool_backward", &ps_roi_pool_backward_cuda);
}

}  // namespace detector
