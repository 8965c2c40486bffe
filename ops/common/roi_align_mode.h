// The `mode` argument of the RoI Align operators, parsed once for the CPU and CUDA kernels.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

namespace detector {

enum class RoIAlignMode { kAvg, kMax };

// "avg" (the mean of a bin's sample points) or "max" (their maximum); anything else is a
// ValueError naming the op.
inline RoIAlignMode parse_roi_align_mode(const char* op, c10::string_view mode) {
  if (mode == "avg") {
    return RoIAlignMode::kAvg;
  }
  TORCH_CHECK_VALUE(mode == "max", op, ": `mode` must be \"avg\" or \"max\", got \"",
                    std::string(mode), "\"");
  return RoIAlignMode::kMax;
}

}  // namespace detector
