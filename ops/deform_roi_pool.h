// Argument checks, sizes and operator entry points of deform_roi_pool and deform_ps_roi_pool,
// shared by the CPU and CUDA kernels (schemas in ops/deform_roi_pool.cpp).
//
// Shapes (K RoIs, P = pooled_height * pooled_width bins):
//   input  (N, C, H, W); position-sensitive form: C = C_out * P
//   rois   (K, 5) = (batch_index, x1, y1, x2, y2)
//   offset (K, 2, pooled_height, pooled_width)  optional, channel 0 = x, 1 = y
//   mask   (K, 1, pooled_height, pooled_width)  optional
//   output and its gradient (K, C_out, pooled_height, pooled_width); C_out = C, or C / P (PS)
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/check_rois.h"

namespace detector {

// The sizes of one call.
struct DeformRoiPoolShape {
  int64_t batch = 0, height = 0, width = 0;
  int64_t channels_total = 0;  // channels of `input`
  int64_t channels_out = 0;    // channels of the output
  int64_t pooled_height = 0, pooled_width = 0;
  bool position_sensitive = false;

  constexpr int64_t bins() const { return pooled_height * pooled_width; }
};

// Checks the arguments of `op` (messages name the op and the argument) and returns the sizes.
inline DeformRoiPoolShape check_deform_roi_pool_args(const char* op, const at::Tensor& input,
                                                     const at::Tensor& rois,
                                                     const std::optional<at::Tensor>& offset,
                                                     const std::optional<at::Tensor>& mask,
                                                     int64_t pooled_height, int64_t pooled_width,
                                                     bool position_sensitive) {
  TORCH_CHECK(input.dim() == 4, op, ": expected `input` of shape (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": `input` must be a floating point tensor, got ", input.scalar_type());
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": `output_size` must be positive, got (",
              pooled_height, ", ", pooled_width, ")");
  if (input.is_cpu()) {
    check_rois_floating(op, rois);  // read in the compute dtype (deform_roi_pool_kernel.cpp)
  } else {
    TORCH_CHECK(rois.scalar_type() == input.scalar_type(), op, ": `rois` must have the dtype of ",
                "`input` (", input.scalar_type(), "), got ", rois.scalar_type());
  }
  TORCH_CHECK(rois.device() == input.device(), op, ": `rois` must be on the device of `input`");
  check_rois(op, rois, input.size(0));
  const int64_t K = rois.size(0);
  if (position_sensitive) {
    TORCH_CHECK(input.size(1) % (pooled_height * pooled_width) == 0, op, ": `input` channels (",
                input.size(1), ") must be divisible by pooled_height * ", "pooled_width (",
                pooled_height * pooled_width, ")");
  }
  // `offset` (K, 2, ph, pw) and `mask` (K, 1, ph, pw): `rows` is 2 or 1
  const auto check_optional = [&](const std::optional<at::Tensor>& t, const char* name,
                                  int64_t rows) {
    if (!t.has_value()) return;
    TORCH_CHECK(t->sizes() == at::IntArrayRef({K, rows, pooled_height, pooled_width}), op,
                ": expected `", name, "` of shape (K, ", rows, ", pooled_height, pooled_width) = (",
                K, ", ", rows, ", ", pooled_height, ", ", pooled_width, "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == input.scalar_type(), op, ": `", name,
                "` must have the dtype of `input`, got ", t->scalar_type());
    TORCH_CHECK(t->device() == input.device(), op, ": `", name,
                "` must be on the device of `input`");
  };
  check_optional(offset, "offset", 2);
  check_optional(mask, "mask", 1);
  DeformRoiPoolShape s{.batch = input.size(0),
                       .height = input.size(2),
                       .width = input.size(3),
                       .channels_total = input.size(1),
                       .pooled_height = pooled_height,
                       .pooled_width = pooled_width,
                       .position_sensitive = position_sensitive};
  s.channels_out = position_sensitive ? s.channels_total / s.bins() : s.channels_total;
  return s;
}

// Checks that `grad` has the output's shape (K, C_out, pooled_height, pooled_width).
inline void check_deform_roi_pool_grad(const char* op, const at::Tensor& grad, int64_t num_rois,
                                       const DeformRoiPoolShape& s) {
  TORCH_CHECK(
      grad.sizes() == at::IntArrayRef({num_rois, s.channels_out, s.pooled_height, s.pooled_width}),
      op, ": expected `grad` of shape (", num_rois, ", ", s.channels_out, ", ", s.pooled_height,
      ", ", s.pooled_width, "), got ", grad.sizes());
}

namespace deform_roi_pool_ops {

// The schema's entry points of one form (plain or position-sensitive, kPS) on one device, calling
// that device's forward / backward with the op's name and the form.
template <auto forward, bool kPS>
at::Tensor forward_op(const at::Tensor& input, const at::Tensor& rois,
                      const std::optional<at::Tensor>& offset,
                      const std::optional<at::Tensor>& mask, double spatial_scale,
                      int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                      double gamma) {
  return forward(kPS ? "deform_ps_roi_pool" : "deform_roi_pool", input, rois, offset, mask,
                 spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma, kPS);
}

template <auto backward, bool kPS>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
    const std::optional<at::Tensor>& offset, const std::optional<at::Tensor>& mask,
    double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
    double gamma, bool offset_grad, bool mask_grad) {
  return backward(kPS ? "deform_ps_roi_pool" : "deform_roi_pool", grad, input, rois, offset, mask,
                  spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma, offset_grad,
                  mask_grad, kPS);
}

}  // namespace deform_roi_pool_ops

// Registers a device's kernels for the four ops (both forms, forward and backward):
//   forward(op, input, rois, offset, mask, spatial_scale, pooled_height, pooled_width,
//           sampling_ratio, gamma, position_sensitive) -> output
//   backward(op, grad, input, rois, offset, mask, spatial_scale, pooled_height, pooled_width,
//            sampling_ratio, gamma, offset_grad, mask_grad, position_sensitive)
//       -> (grad_input, grad_offset, grad_mask)
template <auto forward, auto backward>
void register_deform_roi_pool(torch::Library& m) {
  m.impl("deform_roi_pool", &deform_roi_pool_ops::forward_op<forward, false>);
  m.impl("_deform_roi_pool_backward", &deform_roi_pool_ops::backward_op<backward, false>);
  m.impl("deform_ps_roi_pool", &deform_roi_pool_ops::forward_op<forward, true>);
  m.impl("_deform_ps_roi_pool_backward", &deform_roi_pool_ops::backward_op<backward, true>);
}

}  // namespace detector
