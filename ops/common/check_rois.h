// The RoI argument check shared by the CPU and CUDA kernels of every RoI op.
#pragma once

#include <ATen/ATen.h>

namespace detector {

// Checks the common RoI argument `rois` (K, 5) = (batch_index, x1, y1, x2, y2) of an op: every
// coordinate finite and every batch index in [0, batch_size). The message names the op and the
// argument. Written with ATen ops, so it runs on the tensor's device (on CUDA it waits for the
// result: one synchronization per call).
inline void check_rois(const char* op, const at::Tensor& rois, int64_t batch_size) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": expected `rois` of shape (K, 5) = (batch_index, x1, y1, x2, y2), got ",
              rois.sizes());
  if (rois.numel() == 0) {
    return;
  }
  at::Tensor r = rois.to(at::kDouble);
  TORCH_CHECK(at::isfinite(r).all().item<bool>(), op, ": `rois` contains NaN or infinite values");
  at::Tensor idx = r.select(1, 0);
  double lo = idx.min().item<double>();
  double hi = idx.max().item<double>();
  TORCH_CHECK(lo >= 0 && hi < static_cast<double>(batch_size), op,
              ": batch index in `rois[:, 0]` out of range [0, ", batch_size, "): found values in [",
              lo, ", ", hi, "]");
}

// The CPU kernels' rule for the dtype of `rois`: any floating dtype, read in the compute dtype
// (float32 for float16/bfloat16 features, so float32 RoIs keep every pixel; else the features').
inline void check_rois_floating(const char* op, const at::Tensor& rois) {
  TORCH_CHECK(at::isFloatingType(rois.scalar_type()), op,
              ": `rois` must be a floating point tensor, got ", rois.scalar_type());
}

}  // namespace detector
