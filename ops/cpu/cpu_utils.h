// Shared helpers for the CPU kernels (and check_rois, shared with CUDA).
#pragma once

#include <ATen/ATen.h>

#include "common/check_rois.h"

// Compile the hot loop of a kernel for several instruction sets and pick one at load time
// (GCC's function multi-versioning, target_clones; other compilers, Clang included, build the
// default version only). Channel loops are written as plain contiguous loops
// and the compiler vectorizes them for AVX2/FMA or AVX-512 where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DETECTOR_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DETECTOR_SIMD_CLONES
#endif
