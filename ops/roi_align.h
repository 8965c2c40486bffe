// Argument checks of the RoI Align entry points, shared by the CPU kernels
// (ops/cpu/roi_align_*.cpp, single- and multi-level) and the CUDA kernel
// (ops/cuda/roi_align_kernel.cu). Messages name the op and the argument.
#pragma once

#include <ATen/ATen.h>

namespace detector {

// `input` (N, C, H, W).
inline void check_roi_align_input(const char* op, const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": `input` must be 4-D (N, C, H, W), got ",
                    input.sizes());
}

// `output_size` = (pooled_height, pooled_width), both positive.
inline void check_roi_align_pooling(const char* op, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK_VALUE(pooled_height > 0 && pooled_width > 0, op,
                    ": `output_size` must be positive, got (", pooled_height, ", ", pooled_width,
                    ")");
}

// `grad`, the gradient of the output (K, C, pooled_height, pooled_width).
inline void check_roi_align_grad(const char* op, const at::Tensor& grad, int64_t num_rois,
                                 int64_t channels, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == num_rois && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": `grad` must have shape (K, C, ph, pw), got ", grad.sizes());
}

}  // namespace detector
