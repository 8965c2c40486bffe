// Shared helpers for the CPU kernels.
#pragma once

#include <ATen/ATen.h>

// Compile the hot loop of a kernel for several instruction sets and pick one at load time
// (GCC/Clang function multi-versioning). Channel loops are written as plain contiguous loops
// and the compiler vectorizes them for AVX2/FMA or AVX-512 where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DETECTOR_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DETECTOR_SIMD_CLONES
#endif

namespace detector {

// Checks the common RoI argument `rois` (K, 5) = (batch_index, x1, y1, x2, y2) of an op and that
// every batch index lies in [0, batch_size) and every coordinate is finite. The message names the
// op and the argument.
inline void check_rois_cpu(const char* op, const at::Tensor& rois, int64_t batch_size) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": expected `rois` of shape (K, 5) = (batch_index, x1, y1, x2, y2), got ",
              rois.sizes());
  if (rois.numel() == 0) {
    return;
  }
  at::Tensor r = rois.to(at::kDouble);
  TORCH_CHECK(at::isfinite(r).all().item<bool>(), op,
              ": `rois` contains NaN or infinite values");
  at::Tensor idx = r.select(1, 0);
  double lo = idx.min().item<double>();
  double hi = idx.max().item<double>();
  TORCH_CHECK(lo >= 0 && hi < static_cast<double>(batch_size), op,
              ": batch index in `rois[:, 0]` out of range [0, ", batch_size, "): found values in [",
              lo, ", ", hi, "]");
}

}  // namespace detector
