// RoI Pool on CUDA: one thread per output element (k, c, ph, pw), torchvision's arithmetic.
// Backward scatters each output gradient to its arg-max element with atomics.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/Atomic.cuh>

#include <cfloat>

#include "cuda/cuda_utils.cuh"

namespace detector {
namespace {

template <typename T>
__global__ void roi_pool_forward_kernel(int64_t total, const T* input, const T* rois,
                                        T spatial_scale, int64_t batch_size, int64_t channels,
                                        int64_t height, int64_t width, int64_t pooled_height,
                                        int64_t pooled_width, T* output, int* argmax) {
  using acc_t = at::acc_type<T, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const RoiBinIndex o = roi_bin_index(index, channels, pooled_height, pooled_width);
    const int64_t pw = o.pw, ph = o.ph, c = o.c, k = o.k;
    const T* r = rois + k * 5;
    const int64_t batch = static_cast<int64_t>(r[0]);
    if (batch < 0 || batch >= batch_size) {  // invalid RoI: never read out of bounds
      output[index] = T(0);
      argmax[index] = -1;
      continue;
    }
    const int start_w = static_cast<int>(round(static_cast<double>(r[1] * spatial_scale)));
    const int start_h = static_cast<int>(round(static_cast<double>(r[2] * spatial_scale)));
    const int end_w = static_cast<int>(round(static_cast<double>(r[3] * spatial_scale)));
    const int end_h = static_cast<int>(round(static_cast<double>(r[4] * spatial_scale)));
    const int roi_w = max(end_w - start_w + 1, 1);
    const int roi_h = max(end_h - start_h + 1, 1);
    const T bin_h = static_cast<T>(roi_h) / static_cast<T>(pooled_height);
    const T bin_w = static_cast<T>(roi_w) / static_cast<T>(pooled_width);
    int hstart = static_cast<int>(floor(static_cast<double>(static_cast<T>(ph) * bin_h)));
    int wstart = static_cast<int>(floor(static_cast<double>(static_cast<T>(pw) * bin_w)));
    int hend = static_cast<int>(ceil(static_cast<double>(static_cast<T>(ph + 1) * bin_h)));
    int wend = static_cast<int>(ceil(static_cast<double>(static_cast<T>(pw + 1) * bin_w)));
    hstart = min(max(hstart + start_h, 0), static_cast<int>(height));
    hend = min(max(hend + start_h, 0), static_cast<int>(height));
    wstart = min(max(wstart + start_w, 0), static_cast<int>(width));
    wend = min(max(wend + start_w, 0), static_cast<int>(width));
    const bool empty = hend <= hstart || wend <= wstart;
    acc_t best = empty ? acc_t(0) : static_cast<acc_t>(-FLT_MAX);
    int best_index = -1;
    const T* plane = input + (batch * channels + c) * height * width;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        const int i = h * static_cast<int>(width) + w;
        const acc_t v = static_cast<acc_t>(plane[i]);
        if (v > best) {
          best = v;
          best_index = i;
        }
      }
    }
    output[index] = static_cast<T>(best);
    argmax[index] = best_index;
  }
}

template <typename T>
__global__ void roi_pool_backward_kernel(int64_t total, const T* grad, int64_t sk, int64_t sc,
                                         int64_t sh, int64_t sw, const T* rois, const int* argmax,
                                         int64_t batch_size, int64_t channels, int64_t plane,
                                         int64_t pooled_height, int64_t pooled_width,
                                         T* grad_input) {
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const RoiBinIndex o = roi_bin_index(index, channels, pooled_height, pooled_width);
    const int64_t pw = o.pw, ph = o.ph, c = o.c, k = o.k;
    const int64_t batch = static_cast<int64_t>(rois[k * 5]);
    const int i = argmax[index];
    if (batch < 0 || batch >= batch_size || i < 0 || i >= plane) {
      continue;
    }
    gpuAtomicAdd(grad_input + (batch * channels + c) * plane + i,
                 grad[k * sk + c * sc + ph * sh + pw * sw]);
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input,
                                                         const at::Tensor& rois,
                                                         double spatial_scale,
                                                         int64_t pooled_height,
                                                         int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, "roi_pool: expected `input` of shape (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5,
              "roi_pool: expected `rois` of shape (K, 5), got ", rois.sizes());
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(),
              "roi_pool: `rois` must have the dtype of `input`");
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, "roi_pool: `output_size` must be positive");
  at::cuda::CUDAGuard guard(input.device());
  check_rois("roi_pool", rois, input.size(0));
  const int64_t num_rois = rois.size(0);
  at::Tensor output =
      at::empty({num_rois, input.size(1), pooled_height, pooled_width}, input.options());
  at::Tensor argmax = at::empty_like(output, output.options().dtype(at::kInt));
  const int64_t total = output.numel();
  if (total == 0) {
    return {output, argmax};
  }
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool", [&] {
    roi_pool_forward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
        total, x.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
        static_cast<scalar_t>(spatial_scale), x.size(0), x.size(1), x.size(2), x.size(3),
        pooled_height, pooled_width, output.data_ptr<scalar_t>(), argmax.data_ptr<int>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {output, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                  const at::Tensor& argmax, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width) {
  TORCH_CHECK(grad.dim() == 4 && argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt,
              "_roi_pool_backward: `argmax` must be an int32 tensor of the shape of `grad`");
  TORCH_CHECK(grad.size(0) == rois.size(0) && grad.size(1) == channels,
              "_roi_pool_backward: `grad` does not match the RoIs and channels");
  at::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  const int64_t total = grad.numel();
  if (total == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor r = rois.contiguous();
  const at::Tensor a = argmax.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "_roi_pool_backward", [&] {
        roi_pool_backward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
            total, grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2),
            grad.stride(3), r.const_data_ptr<scalar_t>(), a.const_data_ptr<int>(), batch_size,
            channels, height * width, grad.size(2), grad.size(3), grad_input.data_ptr<scalar_t>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CUDA, m) {
  m.impl("roi_pool", &roi_pool_forward_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace detector
