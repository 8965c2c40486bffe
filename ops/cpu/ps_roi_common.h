// Position-sensitive RoI pooling (R-FCN) on the CPU: the parts shared by ps_roi_pool and
// ps_roi_align.
//
// Channel layout (R-FCN, torchvision.ops): the input has C = C_out * B channels, B = PH * PW bins,
// and output channel c of bin b = i * PW + j reads input channel c * B + b. So every output channel
// of a bin reads the same spatial footprint, each from its own input plane {c * B + b}.
//
// An op describes the footprint of one (RoI, bin) pair as a list of terms (pixel, weight) and a
// divisor:
//   output[k, c, i, j] = (sum_t weight[t] * input[n_k, c * B + b, pixel[t]]) / divisor
// (ps_roi_pool: the bin's pixels with weight 1, divisor = bin area; ps_roi_align: four bilinear
// neighbours per sample point, divisor = sample count). The footprint is computed once per
// (RoI, bin) and applied to all C_out channels by the drivers below:
//   forward:  parallel over RoIs. A thread loops bins outer and its RoIs inner, so the C_out planes
//             of one bin stay in cache while its RoIs sweep over them.
//   backward: parallel over (bin, block of output channels) work items. An item owns the gradient
//             planes {c * B + b} of its channels, so no two threads write the same element, and it
//             adds the RoIs in order 0..K-1: the same bits for any thread count, without atomics.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_utils.h"

namespace detector {
namespace ps_roi {

// Sizes of an op call: input (N, C, H, W) with C = C_out * PH * PW, output (K, C_out, PH, PW).
struct Shape {
  int64_t batch, channels, height, width;
  int64_t pooled_height, pooled_width, bins, channels_out;
};

// Checks the forward arguments of `op` and returns the sizes. Messages name the op and argument.
inline Shape check_forward_args(const char* op, const at::Tensor& input, const at::Tensor& rois,
                                int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, op, ": expected `input` of shape (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": `input` must be float32 or float64 on the CPU, got ", input.scalar_type());
  TORCH_CHECK(rois.scalar_type() == input.scalar_type(), op, ": `rois` (", rois.scalar_type(),
              ") must have the dtype of `input` (", input.scalar_type(), ")");
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op,
              ": `output_size` must be positive, got (", pooled_height, ", ", pooled_width, ")");
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(input.size(1) % bins == 0, op, ": `input` has ", input.size(1),
              " channels, which is not a multiple of output_size[0] * output_size[1] = ", bins,
              " (position-sensitive pooling needs C_out * PH * PW input channels)");
  check_rois_cpu(op, rois, input.size(0));
  return {input.size(0), input.size(1),  input.size(2), input.size(3),
          pooled_height, pooled_width,   bins,          input.size(1) / bins};
}

// Checks the backward arguments of `op` and returns the sizes of the input gradient.
inline Shape check_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                 int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op,
              ": `output_size` must be positive, got (", pooled_height, ", ", pooled_width, ")");
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(batch_size >= 0 && height >= 0 && width >= 0 && channels >= 0 &&
                  channels % bins == 0,
              op, ": invalid input size (", batch_size, ", ", channels, ", ", height, ", ", width,
              ") for output_size (", pooled_height, ", ", pooled_width, ")");
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble, op,
              ": `grad` must be float32 or float64 on the CPU, got ", grad.scalar_type());
  TORCH_CHECK(rois.scalar_type() == grad.scalar_type(), op, ": `rois` (", rois.scalar_type(),
              ") must have the dtype of `grad` (", grad.scalar_type(), ")");
  check_rois_cpu(op, rois, batch_size);
  const int64_t channels_out = channels / bins;
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels_out &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": expected `grad` of shape (", rois.size(0), ", ", channels_out, ", ",
              pooled_height, ", ", pooled_width, "), got ", grad.sizes());
  return {batch_size, channels, height, width, pooled_height, pooled_width, bins, channels_out};
}

// Element strides of a feature map whose (h, w) pixels are addressed as (h * W + w) * pixel.
struct Strides {
  int64_t batch, channel, pixel;
};

// Returns `input` as NCHW- or NHWC-contiguous (copying only other layouts) and its strides.
inline at::Tensor dense_input(const at::Tensor& input, Strides& strides) {
  at::Tensor dense = input;
  if (!input.is_contiguous() && !input.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    dense = input.contiguous();
  }
  // A size-1 dimension may carry any stride; the pixel stride is W's unless W == 1.
  const bool channels_last = !dense.is_contiguous();
  strides.batch = dense.size(1) * dense.size(2) * dense.size(3);
  strides.channel = channels_last ? 1 : dense.size(2) * dense.size(3);
  strides.pixel = channels_last ? dense.size(1) : 1;
  return dense;
}

// The spatial footprint of one (RoI, bin) pair (see the top of this file).
template <typename T>
struct Footprint {
  std::vector<int64_t> pixel;  // pixel offset (h * W + w) * pixel stride
  std::vector<T> weight;
  T divisor = T(1);

  void clear() {
    pixel.clear();
    weight.clear();
    divisor = T(1);
  }
  void add(int64_t p, T w) {
    pixel.push_back(p);
    weight.push_back(w);
  }
};

// Hot loops, compiled for several instruction sets. For c < channels:
//   gather:  out[c * out_stride] = sum_t weight[t] * base[c * step + pixel[t]] / divisor
//   scatter: base[c * step + pixel[t]] += weight[t] * (grad[c * grad_stride] / divisor), all t
// Sums run over t in order, so results do not depend on how the work is split.
template <typename T>
inline void gather_bin_impl(const T* base, int64_t step, int64_t channels, const int64_t* pixel,
                            const T* weight, int64_t terms, T divisor, T* out,
                            int64_t out_stride) {
  for (int64_t c = 0; c < channels; ++c) {
    const T* plane = base + c * step;
    T sum = T(0);
    for (int64_t t = 0; t < terms; ++t) {
      sum += weight[t] * plane[pixel[t]];
    }
    out[c * out_stride] = sum / divisor;
  }
}

template <typename T>
inline void scatter_bin_impl(T* base, int64_t step, int64_t channels, const int64_t* pixel,
                             const T* weight, int64_t terms, const T* grad, int64_t grad_stride,
                             T divisor) {
  for (int64_t c = 0; c < channels; ++c) {
    T* plane = base + c * step;
    const T g = grad[c * grad_stride] / divisor;
    for (int64_t t = 0; t < terms; ++t) {
      plane[pixel[t]] += weight[t] * g;
    }
  }
}

namespace {

DETECTOR_SIMD_CLONES void gather_bin(const float* base, int64_t step, int64_t channels,
                                     const int64_t* pixel, const float* weight, int64_t terms,
                                     float divisor, float* out, int64_t out_stride) {
  gather_bin_impl(base, step, channels, pixel, weight, terms, divisor, out, out_stride);
}

DETECTOR_SIMD_CLONES void gather_bin(const double* base, int64_t step, int64_t channels,
                                     const int64_t* pixel, const double* weight, int64_t terms,
                                     double divisor, double* out, int64_t out_stride) {
  gather_bin_impl(base, step, channels, pixel, weight, terms, divisor, out, out_stride);
}

DETECTOR_SIMD_CLONES void scatter_bin(float* base, int64_t step, int64_t channels,
                                      const int64_t* pixel, const float* weight, int64_t terms,
                                      const float* grad, int64_t grad_stride, float divisor) {
  scatter_bin_impl(base, step, channels, pixel, weight, terms, grad, grad_stride, divisor);
}

DETECTOR_SIMD_CLONES void scatter_bin(double* base, int64_t step, int64_t channels,
                                      const int64_t* pixel, const double* weight, int64_t terms,
                                      const double* grad, int64_t grad_stride, double divisor) {
  scatter_bin_impl(base, step, channels, pixel, weight, terms, grad, grad_stride, divisor);
}

}  // namespace

// Output channels per backward work item: enough work per item, and items for every thread.
constexpr int64_t kChannelBlock = 32;

// Output values (times RoIs, in backward) a thread should get at least: below that, starting
// threads costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 15;

// Grain of at::parallel_for over items that each cost `work_per_item` output values.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(work_per_item, 1));
}

// Forward driver. `make_footprint(roi, i, j, footprint)` fills the footprint of bin (i, j) of the
// RoI `roi` (5 values) with pixel offsets already scaled by `strides.pixel`.
// Returns the output (K, C_out, PH, PW).
template <typename T, typename MakeFootprint>
at::Tensor forward(const at::Tensor& input, const Strides& strides, const at::Tensor& rois,
                   const Shape& shape, const MakeFootprint& make_footprint) {
  const int64_t num_rois = rois.size(0);
  at::Tensor output = at::empty(
      {num_rois, shape.channels_out, shape.pooled_height, shape.pooled_width}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor rois_c = rois.contiguous();
  const T* in = input.const_data_ptr<T>();
  const T* roi_data = rois_c.const_data_ptr<T>();
  T* out = output.mutable_data_ptr<T>();
  const int64_t bins = shape.bins, channels_out = shape.channels_out;
  const int64_t step = bins * strides.channel;  // from channel c * B + b to (c + 1) * B + b
  at::parallel_for(0, num_rois, grain_for(bins * channels_out), [&](int64_t begin, int64_t end) {
    Footprint<T> fp;
    for (int64_t b = 0; b < bins; ++b) {
      const int64_t i = b / shape.pooled_width, j = b % shape.pooled_width;
      for (int64_t k = begin; k < end; ++k) {
        const T* roi = roi_data + k * 5;
        const int64_t n = static_cast<int64_t>(roi[0]);
        fp.clear();
        make_footprint(roi, i, j, fp);
        gather_bin(in + n * strides.batch + b * strides.channel, step, channels_out,
                   fp.pixel.data(), fp.weight.data(), static_cast<int64_t>(fp.pixel.size()),
                   fp.divisor, out + k * channels_out * bins + b, bins);
      }
    }
  });
  return output;
}

// Backward driver: the input gradient (N, C, H, W), NCHW-contiguous. `make_footprint` as in
// `forward`, for a pixel stride of 1.
template <typename T, typename MakeFootprint>
at::Tensor backward(const at::Tensor& grad, const at::Tensor& rois, const Shape& shape,
                    const MakeFootprint& make_footprint) {
  at::Tensor grad_input =
      at::zeros({shape.batch, shape.channels, shape.height, shape.width}, grad.options());
  const int64_t num_rois = rois.size(0);
  if (num_rois == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const T* grad_data = grad_c.const_data_ptr<T>();
  const T* roi_data = rois_c.const_data_ptr<T>();
  T* gin = grad_input.mutable_data_ptr<T>();
  const int64_t bins = shape.bins, channels_out = shape.channels_out;
  const int64_t plane = shape.height * shape.width;
  const int64_t blocks = (channels_out + kChannelBlock - 1) / kChannelBlock;
  const int64_t grain = grain_for(num_rois * std::min(kChannelBlock, channels_out));
  at::parallel_for(0, bins * blocks, grain, [&](int64_t begin, int64_t end) {
    Footprint<T> fp;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / blocks;
      const int64_t c0 = (item % blocks) * kChannelBlock;
      const int64_t channels = std::min(kChannelBlock, channels_out - c0);
      const int64_t i = b / shape.pooled_width, j = b % shape.pooled_width;
      for (int64_t k = 0; k < num_rois; ++k) {
        const T* roi = roi_data + k * 5;
        const int64_t n = static_cast<int64_t>(roi[0]);
        fp.clear();
        make_footprint(roi, i, j, fp);
        if (fp.pixel.empty()) {
          continue;
        }
        scatter_bin(gin + (n * shape.channels + c0 * bins + b) * plane, bins * plane, channels,
                    fp.pixel.data(), fp.weight.data(), static_cast<int64_t>(fp.pixel.size()),
                    grad_data + (k * channels_out + c0) * bins + b, bins, fp.divisor);
      }
    }
  });
  return grad_input;
}

}  // namespace ps_roi
}  // namespace detector
