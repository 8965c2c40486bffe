// Argument checks and geometry of deform_conv2d, shared by the CPU and CUDA kernels.
//
// Shapes (torchvision.ops.deform_conv2d):
//   input  (N, C, H, W)
//   offset (N, 2 * G * kh * kw, H_out, W_out)  (dy, dx) pairs per offset group g and tap (i, j):
//          channel 2 * (g * kh * kw + i * kw + j) holds dy, the next one dx
//   mask   (N, G * kh * kw, H_out, W_out)      optional modulation (DCN v2)
//   weight (O, C / groups, kh, kw)
//   bias   (O,)                                optional
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace detector {

struct DeformConvGeometry {
  int64_t batch, channels, height, width;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups, offset_groups;
  int64_t out_h, out_w;

  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t positions() const { return out_h * out_w; }
};

// Checks every argument of deform_conv2d (messages name the op and the argument) and returns the
// geometry of the convolution.
inline DeformConvGeometry deform_conv2d_geometry(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t groups, int64_t offset_groups) {
  constexpr const char* op = "deform_conv2d";
  TORCH_CHECK(input.dim() == 4, op, ": expected `input` of shape (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(offset.dim() == 4, op, ": expected `offset` of shape (N, 2*offset_groups*kh*kw, ",
              "H_out, W_out), got ", offset.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": expected `weight` of shape (O, C/groups, kh, kw), got ",
              weight.sizes());
  TORCH_CHECK(
      input.scalar_type() == offset.scalar_type() && input.scalar_type() == weight.scalar_type(),
      op, ": `input`, `offset` and `weight` must have the same dtype, got ", input.scalar_type(),
      ", ", offset.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(offset.device() == input.device() && weight.device() == input.device() &&
                  (!mask.has_value() || mask->device() == input.device()) &&
                  (!bias.has_value() || bias->device() == input.device()),
              op, ": all tensors must be on the device of `input` (", input.device(), ")");
  TORCH_CHECK(stride_h > 0 && stride_w > 0, op, ": `stride` must be positive, got (", stride_h,
              ", ", stride_w, ")");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, op, ": `padding` must be non-negative, got (", pad_h, ", ",
              pad_w, ")");
  TORCH_CHECK(dilation_h > 0 && dilation_w > 0, op, ": `dilation` must be positive, got (",
              dilation_h, ", ", dilation_w, ")");
  DeformConvGeometry g;
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride_h;
  g.stride_w = stride_w;
  g.pad_h = pad_h;
  g.pad_w = pad_w;
  g.dilation_h = dilation_h;
  g.dilation_w = dilation_w;
  g.groups = groups;
  g.offset_groups = offset_groups;
  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0, op, ": `weight` must have a non-empty kernel, got ",
              weight.sizes());
  TORCH_CHECK(groups > 0 && weight.size(1) * groups == g.channels, op,
              ": `weight`.shape[1] = ", weight.size(1), " must divide the input channels ",
              g.channels, " (weight groups = C / weight.shape[1])");
  TORCH_CHECK(g.out_channels % groups == 0, op, ": `weight`.shape[0] = ", g.out_channels,
              " output channels must be divisible by the ", groups, " weight groups");
  TORCH_CHECK(offset_groups > 0 && g.channels % offset_groups == 0, op, ": the input channels ",
              g.channels, " must be divisible by the ", offset_groups, " offset groups");
  TORCH_CHECK(offset.size(0) == g.batch, op, ": `offset` has batch size ", offset.size(0),
              " but `input` has ", g.batch);
  TORCH_CHECK(offset.size(1) == 2 * offset_groups * g.taps(), op,
              ": `offset`.shape[1] = ", offset.size(1),
              " must be 2 * offset_groups * kh * kw = ", 2 * offset_groups * g.taps());
  g.out_h = (g.height + 2 * pad_h - (dilation_h * (g.kernel_h - 1) + 1)) / stride_h + 1;
  g.out_w = (g.width + 2 * pad_w - (dilation_w * (g.kernel_w - 1) + 1)) / stride_w + 1;
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, op, ": the output size (", g.out_h, ", ", g.out_w,
              ") is too small for `input` ", input.sizes(), " and kernel (", g.kernel_h, ", ",
              g.kernel_w, ")");
  TORCH_CHECK(offset.size(2) == g.out_h && offset.size(3) == g.out_w, op,
              ": `offset` must have the output's spatial size (", g.out_h, ", ", g.out_w,
              "), got (", offset.size(2), ", ", offset.size(3), ")");
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.scalar_type() == input.scalar_type(), op, ": `mask` must have dtype ",
                input.scalar_type(), ", got ", m.scalar_type());
    TORCH_CHECK(m.dim() == 4 && m.size(0) == g.batch && m.size(1) == offset_groups * g.taps() &&
                    m.size(2) == g.out_h && m.size(3) == g.out_w,
                op, ": expected `mask` of shape (", g.batch, ", ", offset_groups * g.taps(), ", ",
                g.out_h, ", ", g.out_w, ") = (N, offset_groups*kh*kw, H_out, W_out), got ",
                m.sizes());
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels, op,
                ": expected `bias` of shape (", g.out_channels, ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), op, ": `bias` must have dtype ",
                input.scalar_type(), ", got ", bias->scalar_type());
  }
  return g;
}

// Checks that `grad_output` has the forward output's shape (N, O, H_out, W_out) of `g`.
inline void check_grad_output(const DeformConvGeometry& g, const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch &&
                  grad_output.size(1) == g.out_channels && grad_output.size(2) == g.out_h &&
                  grad_output.size(3) == g.out_w,
              "deform_conv2d: expected `grad_output` of shape (", g.batch, ", ", g.out_channels,
              ", ", g.out_h, ", ", g.out_w, "), got ", grad_output.sizes());
}

namespace deform_conv2d_ops {

// The schema's entry points on one device: check the arguments, then call the device's
//   forward(g, input, offset, weight, mask, bias) -> output (N, O, H_out, W_out)
//   backward(g, grad_output, input, offset, weight, mask)
//       -> (grad_input, grad_offset, grad_weight, grad_mask, grad_bias)
template <auto forward>
at::Tensor forward_op(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                      const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                      int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                      int64_t dilation_h, int64_t dilation_w, int64_t groups,
                      int64_t offset_groups) {
  const DeformConvGeometry g =
      deform_conv2d_geometry(input, offset, weight, mask, bias, stride_h, stride_w, pad_h, pad_w,
                             dilation_h, dilation_w, groups, offset_groups);
  return forward(g, input, offset, weight, mask, bias);
}

template <auto backward>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_op(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t groups, int64_t offset_groups) {
  // The op has no autograd formula of its own: run the ATen calls below autograd.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const DeformConvGeometry g =
      deform_conv2d_geometry(input, offset, weight, mask, std::nullopt, stride_h, stride_w, pad_h,
                             pad_w, dilation_h, dilation_w, groups, offset_groups);
  check_grad_output(g, grad_output);
  return backward(g, grad_output, input, offset, weight, mask);
}

}  // namespace deform_conv2d_ops

// Registers a device's forward and backward (see deform_conv2d_ops) for the two ops.
template <auto forward, auto backward>
void register_deform_conv2d(torch::Library& m) {
  m.impl("deform_conv2d", &deform_conv2d_ops::forward_op<forward>);
  m.impl("_deform_conv2d_backward", &deform_conv2d_ops::backward_op<backward>);
}

}  // namespace detector
