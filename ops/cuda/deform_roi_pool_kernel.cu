// CUDA kernels of deform_roi_pool and deform_ps_roi_pool (schemas in ops/deform_roi_pool.cpp).
// A straightforward mirror of ops/cpu/deform_roi_pool_kernel.cpp on NCHW data: one thread per
// output element (RoI k, channel c, bin b). The backward scatters with atomics into float
// accumulators (grad_input, and grad_offset / grad_mask summed over channels), then casts.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/Atomic.cuh>
#include <torch/library.h>

#include "common/bilinear.h"
#include "cuda/cuda_utils.cuh"
#include "deform_roi_pool.h"

namespace detector {
namespace {

using Shape = DeformRoiPoolShape;

// Sampling geometry of RoI k and the deformed origin of its bin b (half-pixel convention).
template <typename T>
struct BinGeometry {
  int64_t batch;
  T origin_y, origin_x;  // top-left corner of the bin after its shift
  T width, height, bin_h, bin_w;
  int64_t grid_h, grid_w;
  T count;
  bool valid;  // false for a batch index outside [0, N): such RoIs produce 0
};

template <typename T>
__device__ __forceinline__ BinGeometry<T> bin_geometry(const T* roi, T offset_x, T offset_y,
                                                       int64_t b, const Shape& s, T spatial_scale,
                                                       int64_t sampling_ratio, T gamma) {
  BinGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  g.valid = g.batch >= 0 && g.batch < s.batch;
  const T start_x = roi[1] * spatial_scale - T(0.5);
  const T start_y = roi[2] * spatial_scale - T(0.5);
  g.width = (roi[3] * spatial_scale - T(0.5)) - start_x;
  g.height = (roi[4] * spatial_scale - T(0.5)) - start_y;
  g.bin_w = g.width / static_cast<T>(s.pooled_width);
  g.bin_h = g.height / static_cast<T>(s.pooled_height);
  const int64_t grid_h =
      sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(g.height / s.pooled_height));
  const int64_t grid_w =
      sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(g.width / s.pooled_width));
  g.grid_h = grid_h > 0 ? grid_h : 0;
  g.grid_w = grid_w > 0 ? grid_w : 0;
  g.count = static_cast<T>(g.grid_h * g.grid_w > 1 ? g.grid_h * g.grid_w : 1);
  const int64_t i = b / s.pooled_width, j = b % s.pooled_width;
  const T y = start_y + gamma * g.height * offset_y;
  const T x = start_x + gamma * g.width * offset_x;
  g.origin_y = y + static_cast<T>(i) * g.bin_h;
  g.origin_x = x + static_cast<T>(j) * g.bin_w;
  return g;
}

// What the thread of output element `index` = (k * C_out + c) * P + b works on: RoI k, output
// channel c, bin b, and the bin's geometry (the RoI and its offsets read in the accumulation type).
template <typename acc_t>
struct Target {
  int64_t k, c, b;
  BinGeometry<acc_t> g;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ Target<acc_t> target_of(int64_t index, const scalar_t* rois,
                                                   const scalar_t* offset, const Shape& s,
                                                   acc_t spatial_scale, int64_t sampling_ratio,
                                                   acc_t gamma) {
  const int64_t P = s.pooled_height * s.pooled_width;
  Target<acc_t> t;
  t.b = index % P;
  t.c = (index / P) % s.channels_out;
  t.k = index / P / s.channels_out;
  acc_t roi[5];
  for (int r = 0; r < 5; ++r) roi[r] = static_cast<acc_t>(rois[t.k * 5 + r]);
  acc_t offset_x = acc_t(0), offset_y = acc_t(0);
  if (offset != nullptr) {
    offset_x = static_cast<acc_t>(offset[(t.k * 2) * P + t.b]);
    offset_y = static_cast<acc_t>(offset[(t.k * 2 + 1) * P + t.b]);
  }
  t.g = bin_geometry<acc_t>(roi, offset_x, offset_y, t.b, s, spatial_scale, sampling_ratio, gamma);
  return t;
}

// Calls f(y, x) for each sample point of bin g, row by row, skipping the points more than a pixel
// outside the map.
template <typename T, typename F>
__device__ __forceinline__ void for_each_sample(const BinGeometry<T>& g, const Shape& s, F f) {
  for (int64_t iy = 0; iy < g.grid_h; ++iy) {
    const T y = g.origin_y + (static_cast<T>(iy) + T(0.5)) * g.bin_h / static_cast<T>(g.grid_h);
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      const T x = g.origin_x + (static_cast<T>(ix) + T(0.5)) * g.bin_w / static_cast<T>(g.grid_w);
      if (y < T(-1) || y > T(s.height) || x < T(-1) || x > T(s.width)) continue;
      f(y, x);
    }
  }
}

// Input plane of output channel c, bin b of a RoI of image n.
__device__ __forceinline__ int64_t plane_offset(int64_t n, int64_t c, int64_t b, const Shape& s) {
  const int64_t P = s.pooled_height * s.pooled_width;
  const int64_t channel = s.position_sensitive ? c * P + b : c;
  return (n * s.channels_total + channel) * s.height * s.width;
}

template <typename scalar_t>
__global__ void forward_kernel(int64_t total, const scalar_t* input, const scalar_t* rois,
                               const scalar_t* offset, const scalar_t* mask, scalar_t* output,
                               Shape s, at::acc_type<scalar_t, true> spatial_scale,
                               int64_t sampling_ratio, at::acc_type<scalar_t, true> gamma) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t P = s.pooled_height * s.pooled_width;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const Target<acc_t> t = target_of(index, rois, offset, s, spatial_scale, sampling_ratio, gamma);
    const BinGeometry<acc_t>& g = t.g;
    acc_t value = acc_t(0);
    if (g.valid) {
      const scalar_t* plane = input + plane_offset(g.batch, t.c, t.b, s);
      for_each_sample(g, s, [&](acc_t y, acc_t x) {
        const Bilinear<acc_t> w = bilinear_clamped(y, x, s.height, s.width);
        for (int q = 0; q < 4; ++q) {
          value += w.weight[q] * static_cast<acc_t>(plane[w.index[q]]);
        }
      });
      value /= g.count;
      if (mask != nullptr) value *= static_cast<acc_t>(mask[t.k * P + t.b]);
    }
    output[index] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(int64_t total, const scalar_t* grad, const scalar_t* input,
                                const scalar_t* rois, const scalar_t* offset, const scalar_t* mask,
                                at::acc_type<scalar_t, true>* grad_input,
                                at::acc_type<scalar_t, true>* grad_offset,
                                at::acc_type<scalar_t, true>* grad_mask, Shape s,
                                at::acc_type<scalar_t, true> spatial_scale, int64_t sampling_ratio,
                                at::acc_type<scalar_t, true> gamma) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t P = s.pooled_height * s.pooled_width;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const Target<acc_t> t = target_of(index, rois, offset, s, spatial_scale, sampling_ratio, gamma);
    const BinGeometry<acc_t>& g = t.g;
    const int64_t k = t.k, b = t.b;
    if (!g.valid) continue;
    const acc_t m = mask != nullptr ? static_cast<acc_t>(mask[k * P + b]) : acc_t(1);
    const acc_t g_out = static_cast<acc_t>(grad[index]);
    const acc_t g_in = g_out * m / g.count;
    const int64_t plane = plane_offset(g.batch, t.c, b, s);
    const scalar_t* in_plane = input + plane;
    acc_t* grad_plane = grad_input + plane;
    acc_t sum_x = acc_t(0), sum_y = acc_t(0), sum_v = acc_t(0);
    for_each_sample(g, s, [&](acc_t y, acc_t x) {
      const BilinearGrad<acc_t> d = bilinear_clamped_grad(y, x, s.height, s.width);
      for (int q = 0; q < 4; ++q) {
        const int64_t idx = d.sample.index[q];
        if (d.sample.weight[q] != acc_t(0)) {
          gpuAtomicAdd(grad_plane + idx, d.sample.weight[q] * g_in);
        }
        if (grad_offset != nullptr || grad_mask != nullptr) {
          const acc_t v = static_cast<acc_t>(in_plane[idx]);
          sum_x += d.dx[q] * v;
          sum_y += d.dy[q] * v;
          sum_v += d.sample.weight[q] * v;
        }
      }
    });
    if (grad_offset != nullptr) {
      gpuAtomicAdd(grad_offset + (k * 2) * P + b, g_out * sum_x * gamma * g.width * m / g.count);
      gpuAtomicAdd(grad_offset + (k * 2 + 1) * P + b,
                   g_out * sum_y * gamma * g.height * m / g.count);
    }
    if (grad_mask != nullptr) gpuAtomicAdd(grad_mask + k * P + b, g_out * sum_v / g.count);
  }
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

at::Tensor forward_cuda(const char* op, const at::Tensor& input, const at::Tensor& rois,
                        const std::optional<at::Tensor>& offset,
                        const std::optional<at::Tensor>& mask, double spatial_scale,
                        int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                        double gamma, bool position_sensitive) {
  const Shape s = check_deform_roi_pool_args(op, input, rois, offset, mask, pooled_height,
                                             pooled_width, position_sensitive);
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t K = rois.size(0);
  at::Tensor output = at::zeros({K, s.channels_out, pooled_height, pooled_width}, input.options());
  const int64_t total = output.numel();
  if (total == 0 || s.height == 0 || s.width == 0) return output;
  const at::Tensor input_c = input.contiguous(), rois_c = rois.contiguous();
  const at::Tensor offset_c = contiguous_or_undefined(offset);
  const at::Tensor mask_c = contiguous_or_undefined(mask);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "deform_roi_pool_forward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        forward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
            total, input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(),
            ptr_or_null<scalar_t>(offset_c), ptr_or_null<scalar_t>(mask_c),
            output.data_ptr<scalar_t>(), s, static_cast<acc_t>(spatial_scale), sampling_ratio,
            static_cast<acc_t>(gamma));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const char* op, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const std::optional<at::Tensor>& offset, const std::optional<at::Tensor>& mask,
    double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
    double gamma, bool offset_grad, bool mask_grad, bool position_sensitive) {
  const Shape s = check_deform_roi_pool_args(op, input, rois, offset, mask, pooled_height,
                                             pooled_width, position_sensitive);
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t K = rois.size(0);
  check_deform_roi_pool_grad(op, grad, K, s);
  offset_grad = offset_grad && offset.has_value();
  mask_grad = mask_grad && mask.has_value();
  const auto acc_dtype = at::toAccumulateType(input.scalar_type(), /*is_cuda=*/true);
  const auto acc_options = input.options().dtype(acc_dtype);
  at::Tensor grad_input = at::zeros(input.sizes(), acc_options);  // NCHW contiguous
  at::Tensor grad_offset =
      at::zeros({offset_grad ? K : 0, 2, pooled_height, pooled_width}, acc_options);
  at::Tensor grad_mask =
      at::zeros({mask_grad ? K : 0, 1, pooled_height, pooled_width}, acc_options);
  const int64_t total = grad.numel();
  if (total > 0 && s.height > 0 && s.width > 0) {
    const at::Tensor grad_c = grad.contiguous(), input_c = input.contiguous();
    const at::Tensor rois_c = rois.contiguous();
    const at::Tensor offset_c = contiguous_or_undefined(offset);
    const at::Tensor mask_c = contiguous_or_undefined(mask);
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "deform_roi_pool_backward_cuda", [&] {
          using acc_t = at::acc_type<scalar_t, true>;
          backward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
              total, grad_c.data_ptr<scalar_t>(), input_c.data_ptr<scalar_t>(),
              rois_c.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(offset_c),
              ptr_or_null<scalar_t>(mask_c), grad_input.data_ptr<acc_t>(),
              offset_grad ? grad_offset.data_ptr<acc_t>() : nullptr,
              mask_grad ? grad_mask.data_ptr<acc_t>() : nullptr, s,
              static_cast<acc_t>(spatial_scale), sampling_ratio, static_cast<acc_t>(gamma));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  at::Tensor grad_input_out = at::empty_like(input);
  grad_input_out.copy_(grad_input);
  at::Tensor grad_offset_out =
      offset_grad ? grad_offset.to(input.scalar_type()) : at::empty({0}, input.options());
  at::Tensor grad_mask_out =
      mask_grad ? grad_mask.to(input.scalar_type()) : at::empty({0}, input.options());
  return {grad_input_out, grad_offset_out, grad_mask_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CUDA, m) { register_deform_roi_pool<forward_cuda, backward_cuda>(m); }

}  // namespace detector
