// CUDA kernels of deform_conv2d (DCN v1 / v2), a mirror of the CPU algorithm in NCHW:
//   forward, per image: columns (C * taps, P) = bilinear samples (im2col kernel), row c * taps + t,
//            then output[n] = weight (O, Cw * taps) x columns, one GEMM per weight group.
//   backward, per image: grad_columns = weight^T x grad_output (GEMM), grad_weight += grad_output x
//            columns^T (GEMM), col2im into grad_input with atomics, and offset / mask gradients
//            per (offset group, tap, position) from the coordinate derivatives (no conflicts).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/Atomic.cuh>
#include <torch/library.h>

#include "common/bilinear.h"
#include "cuda/cuda_utils.cuh"
#include "deform_conv2d.h"

namespace detector {
namespace {

// Sampling geometry passed to the kernels by value.
struct Geometry {
  int64_t channels, height, width, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t offset_groups, out_w, positions;
};

Geometry kernel_geometry(const DeformConvGeometry& g) {
  return {g.channels,   g.height,        g.width, g.kernel_h,   g.kernel_w,
          g.stride_h,   g.stride_w,      g.pad_h, g.pad_w,      g.dilation_h,
          g.dilation_w, g.offset_groups, g.out_w, g.positions()};
}

// Sampling point of position `pos`, tap `t`, offset group `og` (torchvision's order of operations).
template <typename T, typename A>
__device__ __forceinline__ void sample_coords(const Geometry& g, const T* offset, int64_t pos,
                                              int64_t t, int64_t og, A& y, A& x) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t oy = pos / g.out_w, ox = pos % g.out_w;
  const int64_t i = t / g.kernel_w, j = t % g.kernel_w;
  const int64_t channel = 2 * (og * taps + t);
  y = static_cast<A>(oy * g.stride_h - g.pad_h + i * g.dilation_h) +
      static_cast<A>(offset[channel * g.positions + pos]);
  x = static_cast<A>(ox * g.stride_w - g.pad_w + j * g.dilation_w) +
      static_cast<A>(offset[(channel + 1) * g.positions + pos]);
}

// What the thread of column element `index` = (c * taps + t) * P + pos works on: input channel c,
// the mask element of its (offset group, tap, position), and the bilinear sample of its point.
template <typename A>
struct ColumnPoint {
  int64_t c, mask_index;
  Bilinear<A> b;
};

template <typename T, typename A>
__device__ __forceinline__ ColumnPoint<A> column_point(const Geometry& g, const T* offset,
                                                       int64_t index) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t pos = index % g.positions;
  const int64_t t = (index / g.positions) % taps;
  ColumnPoint<A> p;
  p.c = index / (g.positions * taps);
  const int64_t og = p.c / (g.channels / g.offset_groups);
  p.mask_index = (og * taps + t) * g.positions + pos;
  A y, x;
  sample_coords<T, A>(g, offset, pos, t, og, y, x);
  p.b = bilinear_zero_padded<A>(y, x, g.height, g.width);
  return p;
}

// columns[(c * taps + t) * P + pos] = mask * bilinear sample of channel c (one image).
template <typename T>
__global__ void im2col_kernel(int64_t total, Geometry g, const T* input, const T* offset,
                              const T* mask, T* columns) {
  using A = at::acc_type<T, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const ColumnPoint<A> p = column_point<T, A>(g, offset, index);
    const T* plane = input + p.c * g.height * g.width;
    A value = 0;
    for (int i = 0; i < 4; ++i) {
      if (p.b.weight[i] != A(0)) value += p.b.weight[i] * static_cast<A>(plane[p.b.index[i]]);
    }
    if (mask != nullptr) value *= static_cast<A>(mask[p.mask_index]);
    columns[index] = static_cast<T>(value);
  }
}

// grad_input[c] += mask * bilinear weight * grad_columns (atomics: samples overlap).
template <typename T>
__global__ void col2im_kernel(int64_t total, Geometry g, const T* offset, const T* mask,
                              const T* grad_columns, T* grad_input) {
  using A = at::acc_type<T, true>;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const ColumnPoint<A> p = column_point<T, A>(g, offset, index);
    A grad = static_cast<A>(grad_columns[index]);
    if (mask != nullptr) grad *= static_cast<A>(mask[p.mask_index]);
    T* plane = grad_input + p.c * g.height * g.width;
    for (int i = 0; i < 4; ++i) {
      if (p.b.weight[i] != A(0)) {
        gpuAtomicAdd(plane + p.b.index[i], static_cast<T>(p.b.weight[i] * grad));
      }
    }
  }
}

// Offset and mask gradients of one (offset group, tap, position): sums over the group's channels.
template <typename T>
__global__ void coordinate_grad_kernel(int64_t total, Geometry g, const T* input, const T* offset,
                                       const T* mask, const T* grad_columns, T* grad_offset,
                                       T* grad_mask) {
  using A = at::acc_type<T, true>;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t group_channels = g.channels / g.offset_groups;
  DETECTOR_CUDA_KERNEL_LOOP(index, total) {
    const int64_t pos = index % g.positions;
    const int64_t t = (index / g.positions) % taps;
    const int64_t og = index / (g.positions * taps);
    A y, x;
    sample_coords<T, A>(g, offset, pos, t, og, y, x);
    const BilinearGrad<A> bg = bilinear_zero_padded_grad<A>(y, x, g.height, g.width);
    A sum_value = 0, sum_dy = 0, sum_dx = 0;
    for (int64_t c = og * group_channels; c < (og + 1) * group_channels; ++c) {
      const T* plane = input + c * g.height * g.width;
      const A grad = static_cast<A>(grad_columns[(c * taps + t) * g.positions + pos]);
      A value = 0, dy = 0, dx = 0;
      for (int i = 0; i < 4; ++i) {
        const A v = static_cast<A>(plane[bg.sample.index[i]]);
        value += bg.sample.weight[i] * v;
        dy += bg.dy[i] * v;
        dx += bg.dx[i] * v;
      }
      sum_value += grad * value;
      sum_dy += grad * dy;
      sum_dx += grad * dx;
    }
    const int64_t mask_index = (og * taps + t) * g.positions + pos;
    const A m = mask != nullptr ? static_cast<A>(mask[mask_index]) : A(1);
    const int64_t channel = 2 * (og * taps + t);
    grad_offset[channel * g.positions + pos] = static_cast<T>(m * sum_dy);
    grad_offset[(channel + 1) * g.positions + pos] = static_cast<T>(m * sum_dx);
    if (grad_mask != nullptr) grad_mask[mask_index] = static_cast<T>(sum_value);
  }
}

// columns (C * taps, P) of image n from its input (N, C, H, W), offset and mask (undefined when
// absent): im2col_kernel, one thread per column element.
void im2col(const Geometry& kg, const at::Tensor& input_c, const at::Tensor& offset_c,
            const at::Tensor& mask_c, int64_t n, at::Tensor& columns, cudaStream_t stream) {
  const int64_t total = columns.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input_c.scalar_type(), "deform_conv2d_im2col_cuda", [&] {
        im2col_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
            total, kg, input_c[n].const_data_ptr<scalar_t>(),
            offset_c[n].const_data_ptr<scalar_t>(),
            mask_c.defined() ? mask_c[n].const_data_ptr<scalar_t>() : nullptr,
            columns.data_ptr<scalar_t>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor deform_conv2d_forward_cuda(const DeformConvGeometry& g, const at::Tensor& input,
                                      const at::Tensor& offset, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& mask,
                                      const std::optional<at::Tensor>& bias) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t positions = g.positions(), rows = g.channels * g.taps();
  const int64_t group_k = rows / g.groups, group_o = g.out_channels / g.groups;
  at::Tensor output = at::empty({g.batch, g.out_channels, positions}, input.options());
  if (output.numel() > 0) {
    const at::Tensor input_c = input.contiguous(), offset_c = offset.contiguous();
    const at::Tensor mask_c = mask.has_value() ? mask->contiguous() : at::Tensor();
    const at::Tensor w_matrix = weight.contiguous().view({g.out_channels, group_k});
    at::Tensor columns = at::empty({rows, positions}, input.options());
    const Geometry kg = kernel_geometry(g);
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    for (int64_t n = 0; n < g.batch; ++n) {
      im2col(kg, input_c, offset_c, mask_c, n, columns, stream);
      for (int64_t wg = 0; wg < g.groups; ++wg) {
        at::Tensor out = output[n].narrow(0, wg * group_o, group_o);  // (O/groups, P)
        at::mm_out(out, w_matrix.narrow(0, wg * group_o, group_o),
                   columns.narrow(0, wg * group_k, group_k));
      }
    }
    if (bias.has_value()) output.add_(bias->view({1, g.out_channels, 1}));
  }
  return output.view({g.batch, g.out_channels, g.out_h, g.out_w});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const DeformConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& offset, const at::Tensor& weight, const std::optional<at::Tensor>& mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t positions = g.positions(), rows = g.channels * g.taps();
  const int64_t group_k = rows / g.groups, group_o = g.out_channels / g.groups;
  at::Tensor grad_input = at::zeros(input.sizes(), input.options());
  at::Tensor grad_offset = at::zeros(offset.sizes(), offset.options());
  at::Tensor grad_mask = mask.has_value() ? at::zeros(mask->sizes(), mask->options())
                                          : at::empty({0}, input.options());
  at::Tensor grad_w_matrix = at::zeros({g.out_channels, group_k}, weight.options());
  at::Tensor grad_bias = grad_output.sum({0, 2, 3});
  if (g.batch > 0 && g.out_channels > 0 && g.channels > 0) {
    const at::Tensor input_c = input.contiguous(), offset_c = offset.contiguous();
    const at::Tensor mask_c = mask.has_value() ? mask->contiguous() : at::Tensor();
    // (N, O, H_out, W_out) -> (N, O, P)
    const at::Tensor grad_out = grad_output.contiguous().view({g.batch, g.out_channels, positions});
    const at::Tensor w_matrix = weight.contiguous().view({g.out_channels, group_k});
    at::Tensor columns = at::empty({rows, positions}, input.options());
    at::Tensor grad_columns = at::empty({rows, positions}, input.options());
    const Geometry kg = kernel_geometry(g);
    const int64_t total = rows * positions;
    const int64_t coord_total = g.offset_groups * g.taps() * positions;
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    for (int64_t n = 0; n < g.batch; ++n) {
      im2col(kg, input_c, offset_c, mask_c, n, columns, stream);
      for (int64_t wg = 0; wg < g.groups; ++wg) {
        const at::Tensor grad_out_group = grad_out[n].narrow(0, wg * group_o, group_o);
        at::Tensor grad_cols_group = grad_columns.narrow(0, wg * group_k, group_k);
        at::mm_out(grad_cols_group, w_matrix.narrow(0, wg * group_o, group_o).t(), grad_out_group);
        grad_w_matrix.narrow(0, wg * group_o, group_o)
            .addmm_(grad_out_group, columns.narrow(0, wg * group_k, group_k).t());
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(
          at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
            const scalar_t* mask_ptr =
                mask_c.defined() ? mask_c[n].const_data_ptr<scalar_t>() : nullptr;
            col2im_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
                total, kg, offset_c[n].const_data_ptr<scalar_t>(), mask_ptr,
                grad_columns.const_data_ptr<scalar_t>(), grad_input[n].data_ptr<scalar_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            coordinate_grad_kernel<scalar_t>
                <<<blocks_for(coord_total), kThreadsPerBlock, 0, stream>>>(
                    coord_total, kg, input_c[n].const_data_ptr<scalar_t>(),
                    offset_c[n].const_data_ptr<scalar_t>(), mask_ptr,
                    grad_columns.const_data_ptr<scalar_t>(), grad_offset[n].data_ptr<scalar_t>(),
                    mask_c.defined() ? grad_mask[n].data_ptr<scalar_t>() : nullptr);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
    }
  }
  // (O, Cw * kh * kw) -> (O, Cw, kh, kw)
  at::Tensor grad_weight = grad_w_matrix.view(weight.sizes());
  return {grad_input, grad_offset, grad_weight, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CUDA, m) {
  register_deform_conv2d<deform_conv2d_forward_cuda, deform_conv2d_backward_cuda>(m);
}

}  // namespace detector
