// RoI Align on CUDA: one thread per output element (k, c, ph, pw), a mirror of the CPU kernels'
// arithmetic. Forward for mode "avg" and "max" (with the arg-max sample index); backward
// scatter-adds with atomics into an NCHW gradient, returned in the input's memory format.
// Inputs of any floating dtype; sampling arithmetic and sums in at::acc_type (float for half).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include "common/bilinear.h"
#include "common/roi_align_mode.h"
#include "cuda/cuda_utils.cuh"
#include "roi_align.h"

namespace detector {
namespace roi_align_cuda {

// The bin grid of one RoI (same arithmetic as the CPU kernels and torchvision).
template <typename T>
struct Grid {
  int64_t batch;
  T start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;
};

template <typename T, typename R>
__device__ __forceinline__ Grid<T> roi_grid(const R* roi, T spatial_scale, int pooled_height,
                                            int pooled_width, int sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  Grid<T> g;
  g.batch = static_cast<int64_t>(static_cast<T>(roi[0]));
  g.start_w = static_cast<T>(roi[1]) * spatial_scale - offset;
  g.start_h = static_cast<T>(roi[2]) * spatial_scale - offset;
  T roi_w = static_cast<T>(roi[3]) * spatial_scale - offset - g.start_w;
  T roi_h = static_cast<T>(roi[4]) * spatial_scale - offset - g.start_h;
  if (!aligned) {
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  g.bin_h = roi_h / static_cast<T>(pooled_height);
  g.bin_w = roi_w / static_cast<T>(pooled_width);
  if (sampling_ratio > 0) {
    g.grid_h = g.grid_w = sampling_ratio;
  } else {
    g.grid_h = max(static_cast<int>(ceil(roi_h / pooled_height)), 0);
    g.grid_w = max(static_cast<int>(ceil(roi_w / pooled_width)), 0);
  }
  return g;
}

template <typename T>
__device__ __forceinline__ Bilinear<T> sample_at(const Grid<T>& g, int ph, int pw, int iy, int ix,
                                                 int64_t height, int64_t width) {
  const T y = g.start_h + static_cast<T>(ph) * g.bin_h +
              static_cast<T>(iy + .5f) * g.bin_h / static_cast<T>(g.grid_h);
  const T x = g.start_w + static_cast<T>(pw) * g.bin_w +
              static_cast<T>(ix + .5f) * g.bin_w / static_cast<T>(g.grid_w);
  return bilinear_clamped(y, x, height, width);
}

// What the thread of output element i = ((k * C + c) * PH + ph) * PW + pw works on: channel c,
// bin (ph, pw) and the bin grid of RoI k.
template <typename T>
struct Target {
  int64_t c;
  int ph, pw;
  Grid<T> g;
};

template <typename T, typename R>
__device__ __forceinline__ Target<T> target_of(int64_t i, const R* rois, int64_t channels,
                                               T spatial_scale, int pooled_height, int pooled_width,
                                               int sampling_ratio, bool aligned) {
  const RoiBinIndex o = roi_bin_index(i, channels, pooled_height, pooled_width);
  Target<T> t;
  t.c = o.c;
  t.ph = static_cast<int>(o.ph);
  t.pw = static_cast<int>(o.pw);
  t.g = roi_grid<T>(rois + 5 * o.k, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                    aligned);
  return t;
}

template <typename scalar_t>
__global__ void forward_kernel(int64_t total, const scalar_t* input, const scalar_t* rois,
                               int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                               int pooled_height, int pooled_width, int sampling_ratio,
                               bool aligned, bool use_max,
                               at::acc_type<scalar_t, true> spatial_scale, scalar_t* output,
                               int32_t* argmax) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(i, total) {
    const Target<acc_t> t = target_of<acc_t>(i, rois, channels, spatial_scale, pooled_height,
                                             pooled_width, sampling_ratio, aligned);
    const Grid<acc_t>& g = t.g;
    acc_t result = acc_t(0);
    int32_t best_index = -1;
    if (g.batch >= 0 && g.batch < batch_size) {  // skip RoIs with a bad batch index
      const scalar_t* plane = input + (g.batch * channels + t.c) * height * width;
      acc_t best = acc_t(0);
      int32_t j = 0;
      for (int iy = 0; iy < g.grid_h; ++iy) {
        for (int ix = 0; ix < g.grid_w; ++ix, ++j) {
          const Bilinear<acc_t> b = sample_at(g, t.ph, t.pw, iy, ix, height, width);
          acc_t v = acc_t(0);
          for (int n = 0; n < 4; ++n) {
            v += b.weight[n] * static_cast<acc_t>(plane[b.index[n]]);
          }
          if (use_max) {
            if (best_index < 0 || v > best) {
              best = v;
              best_index = j;
            }
          } else {
            result += v;
          }
        }
      }
      if (use_max) {
        result = best_index < 0 ? acc_t(0) : best;
      } else {
        const int count = max(g.grid_h * g.grid_w, 1);
        result /= static_cast<acc_t>(count);
      }
    }
    output[i] = static_cast<scalar_t>(result);
    if (use_max) {
      argmax[i] = best_index;
    }
  }
}

template <typename scalar_t>
__global__ void backward_kernel(int64_t total, const scalar_t* grad, const scalar_t* rois,
                                const int32_t* argmax, int64_t batch_size, int64_t channels,
                                int64_t height, int64_t width, int pooled_height, int pooled_width,
                                int sampling_ratio, bool aligned, bool use_max,
                                at::acc_type<scalar_t, true> spatial_scale, scalar_t* grad_input) {
  using acc_t = at::acc_type<scalar_t, true>;
  DETECTOR_CUDA_KERNEL_LOOP(i, total) {
    const Target<acc_t> t = target_of<acc_t>(i, rois, channels, spatial_scale, pooled_height,
                                             pooled_width, sampling_ratio, aligned);
    const Grid<acc_t>& g = t.g;
    if (g.batch < 0 || g.batch >= batch_size) {
      continue;
    }
    scalar_t* plane = grad_input + (g.batch * channels + t.c) * height * width;
    const acc_t count = static_cast<acc_t>(max(g.grid_h * g.grid_w, 1));
    const acc_t grad_bin = static_cast<acc_t>(grad[i]);
    const int32_t chosen = use_max ? argmax[i] : -1;
    if (use_max && chosen < 0) {
      continue;
    }
    int32_t j = 0;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      for (int ix = 0; ix < g.grid_w; ++ix, ++j) {
        if (use_max && j != chosen) {
          continue;
        }
        const Bilinear<acc_t> b = sample_at(g, t.ph, t.pw, iy, ix, height, width);
        const acc_t scale = use_max ? grad_bin : grad_bin / count;
        for (int n = 0; n < 4; ++n) {
          if (b.weight[n] != acc_t(0)) {
            gpuAtomicAdd(plane + b.index[n], static_cast<scalar_t>(b.weight[n] * scale));
          }
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> roi_align_forward(const at::Tensor& input,
                                                     const at::Tensor& rois, double spatial_scale,
                                                     int64_t pooled_height, int64_t pooled_width,
                                                     int64_t sampling_ratio, bool aligned,
                                                     c10::string_view mode) {
  constexpr const char* op = "roi_align";
  const bool use_max = parse_roi_align_mode(op, mode) == RoIAlignMode::kMax;
  check_roi_align_input(op, input);
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op,
                    ": `rois` must have shape (K, 5), got ", rois.sizes());
  check_roi_align_pooling(op, pooled_height, pooled_width);
  TORCH_CHECK(rois.device() == input.device(), op, ": `rois` and `input` must share a device");
  c10::cuda::CUDAGuard guard(input.device());
  check_rois(op, rois, input.size(0));
  const at::Tensor in = input.contiguous();
  const at::Tensor r = rois.to(input.scalar_type()).contiguous();
  const int64_t num_rois = rois.size(0), channels = input.size(1);
  at::Tensor output = at::empty({num_rois, channels, pooled_height, pooled_width}, in.options());
  at::Tensor argmax =
      at::empty(use_max ? output.sizes() : at::IntArrayRef{0}, in.options().dtype(at::kInt));
  const int64_t total = output.numel();
  if (total == 0) {
    return {output, argmax};
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.scalar_type(), "roi_align_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        forward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
            total, in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), in.size(0),
            channels, in.size(2), in.size(3), static_cast<int>(pooled_height),
            static_cast<int>(pooled_width), static_cast<int>(sampling_ratio), aligned, use_max,
            static_cast<acc_t>(spatial_scale), output.mutable_data_ptr<scalar_t>(),
            use_max ? argmax.mutable_data_ptr<int32_t>() : nullptr);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {output, argmax};
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                              const at::Tensor& argmax, double spatial_scale, int64_t pooled_height,
                              int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                              c10::string_view mode, bool channels_last) {
  constexpr const char* op = "_roi_align_backward";
  const bool use_max = parse_roi_align_mode(op, mode) == RoIAlignMode::kMax;
  check_roi_align_grad(op, grad, rois.size(0), channels, pooled_height, pooled_width);
  c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor r = rois.to(grad.scalar_type()).contiguous();
  const at::Tensor a = argmax.contiguous();
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, g.options());
  const int64_t total = g.numel();
  if (total > 0) {
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, g.scalar_type(), "roi_align_backward_cuda", [&] {
          using acc_t = at::acc_type<scalar_t, true>;
          backward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
              total, g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
              use_max ? a.const_data_ptr<int32_t>() : nullptr, batch_size, channels, height, width,
              static_cast<int>(pooled_height), static_cast<int>(pooled_width),
              static_cast<int>(sampling_ratio), aligned, use_max, static_cast<acc_t>(spatial_scale),
              grad_input.mutable_data_ptr<scalar_t>());
        });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return channels_last ? grad_input.contiguous(at::MemoryFormat::ChannelsLast) : grad_input;
}

}  // namespace roi_align_cuda

TORCH_LIBRARY_IMPL(detector, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda::roi_align_forward);
  m.impl("_roi_align_backward", &roi_align_cuda::roi_align_backward);
}

}  // namespace detector
