// Conversions between NCHW planes and [pixels][16] channel blocks (see channel_block.h).
#include "cpu/channel_block.h"

#include <cstring>

#include "cpu/cpu_utils.h"
#include "cpu/simd.h"

#if defined(__x86_64__) || defined(__SSE__)
#include <immintrin.h>
#define DETECTOR_STREAMING_STORES 1
#endif

// GCC notes that vector arguments change the ABI between SIMD clones; they are all inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace detector {
namespace {

inline __attribute__((always_inline)) VecF8 load8(const float* p) {
  VecF8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline __attribute__((always_inline)) void store8(float* p, const VecF8& v) {
  std::memcpy(p, &v, sizeof(v));
}

// c = the transpose of the 8x8 matrix r (unpack, shuffle, lane permute).
inline __attribute__((always_inline)) void transpose8x8(const VecF8 (&r)[8], VecF8 (&c)[8]) {
  const VecI32x8 lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const VecI32x8 lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const VecI32x8 lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  VecF8 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], lo);
    t[2 * i + 1] = __builtin_shuffle(r[2 * i], r[2 * i + 1], hi);
  }
  for (int i = 0; i < 2; ++i) {  // rows 4i..4i+3
    u[4 * i + 0] = __builtin_shuffle(t[4 * i], t[4 * i + 2], lo2);
    u[4 * i + 1] = __builtin_shuffle(t[4 * i], t[4 * i + 2], hi2);
    u[4 * i + 2] = __builtin_shuffle(t[4 * i + 1], t[4 * i + 3], lo2);
    u[4 * i + 3] = __builtin_shuffle(t[4 * i + 1], t[4 * i + 3], hi2);
  }
  for (int i = 0; i < 4; ++i) {
    c[i] = __builtin_shuffle(u[i], u[4 + i], lo4);
    c[4 + i] = __builtin_shuffle(u[i], u[4 + i], hi4);
  }
}

}  // namespace

static_assert(kChannelBlock == 16, "the block copies transpose 2 x 8 channels");

// A float of float32 or bfloat16 storage (bfloat16: the high 16 bits of a float32).
inline __attribute__((always_inline)) float to_float(float value) { return value; }

inline __attribute__((always_inline)) float to_float(uint16_t bf16_bits) {
  const uint32_t bits = uint32_t(bf16_bits) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline __attribute__((always_inline)) VecF8 load8_float(const float* p) { return load8(p); }

inline __attribute__((always_inline)) VecF8 load8_float(const uint16_t* bf16_bits) {
  VecU16x8 h;
  std::memcpy(&h, bf16_bits, sizeof(h));
  const VecI32x8 bits = __builtin_convertvector(h, VecI32x8) << 16;
  VecF8 value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// dst[hw][j] = float(src[j * plane + hw]) for float32 or bfloat16 (bits) planes.
template <typename S>
inline __attribute__((always_inline)) void planes_to_block_impl(const S* src, int64_t plane,
                                                                float* dst) {
  constexpr int64_t kBlock = kChannelBlock;
  int64_t hw = 0;
  for (; hw + 8 <= plane; hw += 8) {
    for (int64_t half = 0; half < 2; ++half) {
      VecF8 r[8], c[8];
      for (int i = 0; i < 8; ++i) r[i] = load8_float(src + (8 * half + i) * plane + hw);
      transpose8x8(r, c);
      for (int i = 0; i < 8; ++i) store8(dst + (hw + i) * kBlock + 8 * half, c[i]);
    }
  }
  for (; hw < plane; ++hw) {
    for (int64_t j = 0; j < kBlock; ++j) dst[hw * kBlock + j] = to_float(src[j * plane + hw]);
  }
}

DETECTOR_SIMD_CLONES void planes_to_block(const float* src, int64_t plane, float* dst) {
  planes_to_block_impl(src, plane, dst);
}

DETECTOR_SIMD_CLONES void planes_to_block_bf16(const uint16_t* src, int64_t plane, float* dst) {
  planes_to_block_impl(src, plane, dst);
}

// Round to nearest even, NaN to a quiet NaN: c10::BFloat16's rounding, in a loop GCC vectorizes.
DETECTOR_SIMD_CLONES void floats_to_bf16(const float* src, int64_t count, uint16_t* dst) {
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, src + i, sizeof(bits));
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    dst[i] = src[i] != src[i] ? uint16_t(0x7fc0) : uint16_t(rounded);
  }
}

// dst[j * plane + hw] = src[hw][j] for 32-bit T: the vector part moves bits through float
// vectors (memcpy in and out), so integers are copied exactly.
template <typename T>
inline __attribute__((always_inline)) void block_to_planes_impl(const T* src, int64_t plane,
                                                                T* dst) {
  static_assert(sizeof(T) == sizeof(float), "32-bit lanes");
  constexpr int64_t kBlock = kChannelBlock;
  int64_t hw = 0;
  for (; hw + 8 <= plane; hw += 8) {
    for (int64_t half = 0; half < 2; ++half) {
      VecF8 r[8], c[8];
      for (int i = 0; i < 8; ++i) std::memcpy(&r[i], src + (hw + i) * kBlock + 8 * half, 32);
      transpose8x8(r, c);
      for (int i = 0; i < 8; ++i) std::memcpy(dst + (8 * half + i) * plane + hw, &c[i], 32);
    }
  }
  for (; hw < plane; ++hw) {
    for (int64_t j = 0; j < kBlock; ++j) dst[j * plane + hw] = src[hw * kBlock + j];
  }
}

DETECTOR_SIMD_CLONES void block_to_planes(const float* src, int64_t plane, float* dst) {
  block_to_planes_impl(src, plane, dst);
}

DETECTOR_SIMD_CLONES void block_to_planes(const int32_t* src, int64_t plane, int32_t* dst) {
  block_to_planes_impl(src, plane, dst);
}

void copy_streaming(const void* src, size_t bytes, void* dst) {
#ifdef DETECTOR_STREAMING_STORES
  if (reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    size_t i = 0;
    for (; i + 16 <= bytes; i += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), v);
    }
    std::memcpy(d + i, s + i, bytes - i);
    return;
  }
#endif
  std::memcpy(dst, src, bytes);
}

void block_to_planes_streaming(const float* src, int64_t plane, float* staging, float* dst) {
  block_to_planes(src, plane, staging);
  copy_streaming(staging, kChannelBlock * plane * sizeof(float), dst);
}

void store_fence() {
#ifdef DETECTOR_STREAMING_STORES
  _mm_sfence();
#endif
}

}  // namespace detector
