// RoI Align on the CPU: the argument checks shared by the forward and backward entry points, fresh
// (huge page) tensors, and the registration of the four ops (see roi_align_common.h).
#include "cpu/roi_align_common.h"

#include <torch/library.h>

namespace detector {
namespace roi_align_cpu {

at::Tensor fresh_tensor(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format) {
  at::Tensor t = at::empty(sizes, options.memory_format(format));
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

void check_dtype(const char* op, const at::Tensor& input) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": CPU kernels support float16, bfloat16, float32 and float64 `input`, got ",
              input.scalar_type());
}

// RoIs in the compute type of features of dtype `type`, contiguous.
at::Tensor compute_rois(const at::Tensor& rois, at::ScalarType type) {
  return rois.to(at::toOpMathType(type)).contiguous();
}

// Checks `levels` (K,) int64 in [0, num_levels) and returns it contiguous.
at::Tensor checked_levels(const char* op, const at::Tensor& levels, int64_t num_rois,
                          int64_t num_levels) {
  TORCH_CHECK_VALUE(levels.dim() == 1 && levels.size(0) == num_rois, op,
                    ": `levels` must have shape (K,) with K = ", num_rois, " RoIs, got ",
                    levels.sizes());
  TORCH_CHECK_TYPE(levels.scalar_type() == at::kLong, op, ": `levels` must be int64, got ",
                   levels.scalar_type());
  if (num_rois > 0) {
    const int64_t lo = levels.min().item<int64_t>(), hi = levels.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < num_levels, op, ": `levels` must lie in [0, ", num_levels,
                      "), found values in [", lo, ", ", hi, "]");
  }
  return levels.contiguous();
}

}  // namespace roi_align_cpu

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("roi_align", &roi_align_cpu::roi_align_forward);
  m.impl("_roi_align_backward", &roi_align_cpu::roi_align_backward);
  m.impl("multi_scale_roi_align", &roi_align_cpu::multi_scale_forward);
  m.impl("_multi_scale_roi_align_backward", &roi_align_cpu::multi_scale_backward);
}

}  // namespace detector
