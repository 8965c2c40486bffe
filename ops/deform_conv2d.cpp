// Schema of the deformable convolution ops (DCN v1 without a mask, DCN v2 with one).
// Kernels: ops/cpu/deform_conv2d_kernel.cpp, ops/cuda/deform_conv2d_kernel.cu.
// Autograd and fake kernels: detector/ops/deform_conv.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def(
      "deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? mask, Tensor? bias, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, "
      "int groups, int offset_groups) -> Tensor");
  // Returns (grad_input, grad_offset, grad_weight, grad_mask, grad_bias); grad_mask is empty
  // (shape (0,)) without a mask, grad_bias is grad_output summed over (N, H_out, W_out).
  m.def(
      "_deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, "
      "Tensor? mask, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, "
      "int dilation_w, int groups, int offset_groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
