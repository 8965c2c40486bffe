// Channel blocks of float feature maps: 16 channels of a pixel side by side ([pixels][16]), the
// layout in which the RoI Align and RoI Pool CPU kernels vectorize over channels. Conversions
// from and to NCHW planes use 8x8 register transposes (compiled per instruction set).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace detector {

constexpr int64_t kChannelBlock = 16;  // channels per block

// dst[hw][j] = src[j * plane + hw] for 16 channel planes (j < 16) of `plane` floats.
void planes_to_block(const float* src, int64_t plane, float* dst);

// planes_to_block for bfloat16 planes given as their 16-bit patterns (converted to float).
void planes_to_block_bf16(const uint16_t* src, int64_t plane, float* dst);

// dst[i] = bfloat16 bits of src[i] (round to nearest even, as c10::BFloat16), i < count.
void floats_to_bf16(const float* src, int64_t count, uint16_t* dst);

// dst[j * plane + hw] = src[hw][j], the inverse of planes_to_block.
void block_to_planes(const float* src, int64_t plane, float* dst);

// As block_to_planes for 32-bit integers (indices), copied exactly.
void block_to_planes(const int32_t* src, int64_t plane, int32_t* dst);

// As block_to_planes(src, plane, dst), for a dst that is not read again soon (an op's output):
// transposes into `staging` (16 * plane floats, small enough for L1), then copies it to dst with
// non-temporal stores where dst is 16-byte aligned. They bypass the caches, which keep the data
// being read, and skip reading dst's lines before writing them. Call store_fence() before other
// threads read dst.
void block_to_planes_streaming(const float* src, int64_t plane, float* staging, float* dst);

// memcpy(dst, src, bytes) with non-temporal stores where dst is 16-byte aligned (see
// block_to_planes_streaming); call store_fence() before other threads read dst.
void copy_streaming(const void* src, size_t bytes, void* dst);

// Orders this thread's non-temporal stores before its later stores (and the join of a parallel
// region), so that other threads see them.
void store_fence();

// dst[hw][j] = src[j * channel_stride + hw * pixel_stride] for j < cw, 0 for cw <= j < 16: the
// general (any dtype, partial block) copy of `plane` pixels into a channel block.
// A source of another dtype S (float16/bfloat16 features) is converted to T on the way.
template <typename S, typename T>
void copy_to_block(const S* src, int64_t channel_stride, int64_t pixel_stride, int64_t plane,
                   int64_t cw, T* dst) {
  for (int64_t hw = 0; hw < plane; ++hw) {
    T* d = dst + hw * kChannelBlock;
    for (int64_t j = 0; j < cw; ++j) {
      d[j] = static_cast<T>(src[j * channel_stride + hw * pixel_stride]);
    }
    for (int64_t j = cw; j < kChannelBlock; ++j) {
      d[j] = T(0);
    }
  }
}

// planes_to_block for a source of any dtype S (float32, float16, bfloat16): dst[hw][j] =
// float(src[j * plane + hw]) for a whole block of 16 channels, converted 64 pixels at a time
// through a stack tile (contiguous conversions, then a transposition the compiler vectorizes);
// bfloat16 through the vectorized planes_to_block_bf16.
template <typename S>
void planes_to_block_converted(const S* src, int64_t plane, float* dst) {
  if constexpr (std::is_same_v<S, float>) {
    planes_to_block(src, plane, dst);
    return;
  } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
    planes_to_block_bf16(reinterpret_cast<const uint16_t*>(src), plane, dst);
    return;
  }
  constexpr int64_t kTile = 64;
  float tile[kChannelBlock][kTile];
  for (int64_t hw0 = 0; hw0 < plane; hw0 += kTile) {
    const int64_t count = std::min(kTile, plane - hw0);
    for (int64_t j = 0; j < kChannelBlock; ++j) {
      const S* s = src + j * plane + hw0;
      for (int64_t t = 0; t < count; ++t) tile[j][t] = static_cast<float>(s[t]);
    }
    for (int64_t t = 0; t < count; ++t) {
      float* d = dst + (hw0 + t) * kChannelBlock;
      for (int64_t j = 0; j < kChannelBlock; ++j) d[j] = tile[j][t];
    }
  }
}

// buf[n * H * W + pixel][j] = input[n, c0 + j, h, w] for j < cw, 0 for cw <= j < 16, from an
// NCHW- or NHWC-contiguous `input` (N, C, H, W) of dtype S (converted to T: float16 and bfloat16
// features are pooled from a float32 block).
template <typename T, typename S = T>
void load_channel_block(const at::Tensor& input, int64_t c0, int64_t cw, T* buf) {
  constexpr int64_t kBlock = kChannelBlock;
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t plane = input.size(2) * input.size(3);
  const S* in = input.const_data_ptr<S>();
  const bool nchw = input.is_contiguous();
  for (int64_t n = 0; n < batch; ++n) {
    T* dst = buf + n * plane * kBlock;
    if (nchw) {
      const S* src = in + (n * channels + c0) * plane;
      if constexpr (std::is_same_v<T, float>) {
        if (cw == kBlock) {
          if constexpr (std::is_same_v<S, float>) {
            planes_to_block(src, plane, dst);
          } else {
            planes_to_block_converted(src, plane, dst);
          }
          continue;
        }
      }
      copy_to_block(src, plane, 1, plane, cw, dst);
    } else {
      const S* src = in + n * plane * channels + c0;
      if (std::is_same_v<S, T> && cw == kBlock) {  // whole rows of B channels: one vector copy
        for (int64_t hw = 0; hw < plane; ++hw) {
          __builtin_prefetch(src + (hw + 16) * channels, 0, 0);
          std::memcpy(dst + hw * kBlock, src + hw * channels, kBlock * sizeof(T));
        }
        continue;
      }
      copy_to_block(src, 1, channels, plane, cw, dst);
    }
  }
}

}  // namespace detector
