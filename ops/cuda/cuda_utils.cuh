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

// Indices of element `index` of a RoI op's (K, C, PH, PW) output: RoI k, channel c, bin (ph, pw).
struct RoiBinIndex {
  int64_t k, c, ph, pw;
};

__device__ __forceinline__ RoiBinIndex roi_bin_index(int64_t index, int64_t channels,
                                                     int64_t pooled_height, int64_t pooled_width) {
  RoiBinIndex r;
  r.pw = index % pooled_width;
  r.ph = (index / pooled_width) % pooled_height;
  r.c = (index / pooled_width / pooled_height) % channels;
  r.k = index / pooled_width / pooled_height / channels;
  return r;
}

}  // namespace detector
