// The GCC vector types of the CPU kernels (GCC vector extensions), defined once.
//
// Arithmetic, comparisons and `?:` on these act lane by lane; each SIMD clone of a kernel
// (DETECTOR_SIMD_CLONES, cpu_utils.h) lowers them to its widest registers. 32-byte types are one
// AVX2 register; the channel-block types hold the kChannelBlock channels of a block buffer row.
#pragma once

#include <cstdint>

#include "cpu/channel_block.h"

namespace detector {

// 32 bytes (16 for the narrow integer lanes): native to AVX2.
typedef float VecF8 __attribute__((vector_size(32)));
typedef double VecD4 __attribute__((vector_size(32)));
typedef int32_t VecI32x8 __attribute__((vector_size(32)));
typedef int32_t VecI32x4 __attribute__((vector_size(16)));
typedef int64_t VecI64x4 __attribute__((vector_size(32)));
typedef uint16_t VecU16x8 __attribute__((vector_size(16)));

// One row of a channel block (kChannelBlock lanes).
typedef float VecF __attribute__((vector_size(kChannelBlock * sizeof(float))));
typedef double VecD __attribute__((vector_size(kChannelBlock * sizeof(double))));
typedef int32_t VecI32 __attribute__((vector_size(kChannelBlock * sizeof(int32_t))));
typedef int64_t VecI64 __attribute__((vector_size(kChannelBlock * sizeof(int64_t))));

}  // namespace detector
