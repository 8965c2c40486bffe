// Shared helpers for the CUDA kernels. Include only ATen headers in .cu files (DESIGN.md).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/check_rois.h"

namespace detector {

constexpr int kThreadsPerBlock = 256;

inline int64_t blocks_for(int64_t n, int64_t threads = kThreadsPerBlock) {
  int64_t blocks = (n + threads - 1) / threads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, 65535LL * 64));
}

// Grid-stride loop over [0, n).
#define DETECTOR_CUDA_KERNEL_LOOP(i, n)                                     \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
       i += (int64_t)blockDim.x * gridDim.x)

}  // namespace detector
