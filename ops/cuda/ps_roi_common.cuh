// Position-sensitive RoI pooling (R-FCN) on CUDA: the parts shared by ps_roi_pool and
// ps_roi_align (argument checks, output allocation, launch plumbing, thread -> output mapping).
//
// Channel layout (as in ops/cpu/ps_roi_common.h): the input has C = C_out * PH * PW channels and
// output channel c of bin (i, j) reads input channel (c * PH + i) * PW + j. Forward runs one thread
// per output value, backward one per output gradient value.
#pragma once

#include <ATen/ATen.h>

#include "cuda/cuda_utils.cuh"

namespace detector {
namespace ps_roi_cuda {

// Sizes of an op call: features (N, C, H, W) with C = C_out * PH * PW, output (K, C_out, PH, PW).
struct Shape {
  int64_t batch, channels, height, width;
  int64_t pooled_height, pooled_width, channels_out;
};

// What a thread of flat output index ((k * C_out + c) * PH + i) * PW + j works on: bin (i, j) of
// RoI k (its 5 values in acc_t), image n = roi[0] and the offset of input plane (n, c_in).
template <typename acc_t>
struct Target {
  acc_t roi[5];
  int64_t i, j, n;
  int64_t plane;  // (n * C + c_in) * H * W when `valid_batch`, else 0
  bool valid_batch;
};

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ Target<acc_t> target_of(int64_t index, const scalar_t* rois,
                                                   const Shape& s) {
  const RoiBinIndex o = roi_bin_index(index, s.channels_out, s.pooled_height, s.pooled_width);
  const int64_t c = o.c, k = o.k;
  Target<acc_t> t;
  t.i = o.ph;
  t.j = o.pw;
  for (int r = 0; r < 5; ++r) t.roi[r] = static_cast<acc_t>(rois[k * 5 + r]);
  t.n = static_cast<int64_t>(t.roi[0]);
  t.valid_batch = t.n >= 0 && t.n < s.batch;
  const int64_t c_in = (c * s.pooled_height + t.i) * s.pooled_width + t.j;
  t.plane = t.valid_batch ? (t.n * s.channels + c_in) * s.height * s.width : 0;
  return t;
}

// What an op's launch callback gets: contiguous features (input in forward, grad in backward) and
// rois, the (zero-filled in backward) result to write, sizes, element count and stream.
struct Launch {
  at::Tensor features, rois, result;
  Shape shape;
  int64_t total;
  cudaStream_t stream;
};

inline void check_args(const char* op, const at::Tensor& features, const at::Tensor& rois,
                       int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(features.is_cuda() && rois.is_cuda(), op, ": expected CUDA tensors");
  TORCH_CHECK(features.device() == rois.device(), op,
              ": `rois` and the features must be on the same device");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": expected `rois` of shape (K, 5), got ",
              rois.sizes());
  TORCH_CHECK(rois.scalar_type() == features.scalar_type(), op,
              ": `rois` must have the features' dtype");
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": `output_size` must be positive");
}

// Checks the arguments, allocates the output (K, C_out, PH, PW) and calls `launch(const Launch&)`
// (which dispatches on the dtype and starts the kernel) unless the output is empty.
template <typename LaunchFn>
at::Tensor forward(const char* op, const at::Tensor& input, const at::Tensor& rois,
                   int64_t pooled_height, int64_t pooled_width, const LaunchFn& launch) {
  check_args(op, input, rois, pooled_height, pooled_width);
  TORCH_CHECK(input.dim() == 4, op, ": expected `input` of shape (N, C, H, W)");
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(input.size(1) % bins == 0, op, ": `input` channels (", input.size(1),
              ") must be a multiple of output_size[0] * output_size[1] = ", bins);
  const c10::cuda::CUDAGuard guard(input.device());
  check_rois(op, rois, input.size(0));
  const int64_t channels_out = input.size(1) / bins;
  at::Tensor output =
      at::empty({rois.size(0), channels_out, pooled_height, pooled_width}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const Shape shape{input.size(0), input.size(1), input.size(2), input.size(3),
                    pooled_height, pooled_width,  channels_out};
  launch(Launch{input.contiguous(), rois.contiguous(), output, shape, total,
                at::cuda::getCurrentCUDAStream()});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

// Checks the arguments, allocates the zero gradient of the input (N, C, H, W) and calls
// `launch(const Launch&)` (which dispatches on the dtype and starts the kernel) unless there is
// nothing to scatter.
template <typename LaunchFn>
at::Tensor backward(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                    int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                    int64_t channels, int64_t height, int64_t width, const LaunchFn& launch) {
  check_args(op, grad, rois, pooled_height, pooled_width);
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(channels % bins == 0, op, ": `channels` must be a multiple of ", bins);
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  const int64_t total = grad.numel();
  if (total == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const Shape shape{batch_size,    channels,     height,         width,
                    pooled_height, pooled_width, channels / bins};
  launch(Launch{grad.contiguous(), rois.contiguous(), grad_input, shape, total,
                at::cuda::getCurrentCUDAStream()});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_input;
}

}  // namespace ps_roi_cuda
}  // namespace detector
