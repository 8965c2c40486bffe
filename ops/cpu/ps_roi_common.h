// Position-sensitive RoI pooling (R-FCN) on the CPU: the parts shared by ps_roi_pool and
// ps_roi_align.
//
// Channel layout (R-FCN, torchvision.ops): the input has C = C_out * B channels, B = PH * PW bins,
// and output channel c of bin b = i * PW + j reads input channel c * B + b. So every output channel
// of a bin reads the same spatial footprint, each from its own input plane {c * B + b}.
//
// An op describes the footprint of one (RoI, bin) pair as a list of terms (pixel, weight) and a
// divisor:
//   output[k, c, i, j] = (sum_t weight[t] * input[n_k, c * B + b, pixel[t]]) / divisor
// (ps_roi_pool: the bin's pixels with weight 1, divisor = bin area; ps_roi_align: four bilinear
// neighbours per sample point, divisor = sample count). The footprint is computed once per
// (RoI, bin) and applied to all C_out channels.
//
// Work is split into items (image n, bin b, block of output channels). An item packs its input
// planes {c * B + b} pixel-major (the C_out values a footprint term touches become contiguous, so
// the channel loops vectorize, and the planes of a bin stay in cache), then runs over the image's
// RoIs in order. In forward it writes output[k, c, b] of its channels; in backward it accumulates
// the RoIs' gradients into its packed planes and writes them out. Items own disjoint outputs, so
// there are no atomics and no races, and each element sums its terms in a fixed order: the same
// bits for any thread count.
//
// float16 and bfloat16: the values are converted to float32 as they are packed or read (and the
// gradient as it is read), footprints, sums and packed planes are float32, and each result is
// rounded once to the input's dtype when stored: the float32 kernel's results, rounded, with no
// float32 copy of the input.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/channel_block.h"
#include "cpu/cpu_utils.h"

namespace detector {
namespace ps_roi {

// Sizes of an op call: input (N, C, H, W) with C = C_out * PH * PW, output (K, C_out, PH, PW).
struct Shape {
  int64_t batch, channels, height, width;
  int64_t pooled_height, pooled_width, bins, channels_out;
};

// Checks the forward arguments of `op` and returns the sizes. Messages name the op and argument.
inline Shape check_forward_args(const char* op, const at::Tensor& input, const at::Tensor& rois,
                                int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, op, ": expected `input` of shape (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": `input` must be a floating point tensor, got ", input.scalar_type());
  check_rois_floating(op, rois);
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": `output_size` must be positive, got (",
              pooled_height, ", ", pooled_width, ")");
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(input.size(1) % bins == 0, op, ": `input` has ", input.size(1),
              " channels, which is not a multiple of output_size[0] * output_size[1] = ", bins,
              " (position-sensitive pooling needs C_out * PH * PW input channels)");
  check_rois(op, rois, input.size(0));
  return {input.size(0), input.size(1), input.size(2), input.size(3),
          pooled_height, pooled_width,  bins,          input.size(1) / bins};
}

// Checks the backward arguments of `op` and returns the sizes of the input gradient.
inline Shape check_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                 int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": `output_size` must be positive, got (",
              pooled_height, ", ", pooled_width, ")");
  const int64_t bins = pooled_height * pooled_width;
  TORCH_CHECK(batch_size >= 0 && height >= 0 && width >= 0 && channels >= 0 && channels % bins == 0,
              op, ": invalid input size (", batch_size, ", ", channels, ", ", height, ", ", width,
              ") for output_size (", pooled_height, ", ", pooled_width, ")");
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), op,
              ": `grad` must be a floating point tensor, got ", grad.scalar_type());
  check_rois_floating(op, rois);
  check_rois(op, rois, batch_size);
  const int64_t channels_out = channels / bins;
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels_out &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": expected `grad` of shape (", rois.size(0), ", ", channels_out, ", ",
              pooled_height, ", ", pooled_width, "), got ", grad.sizes());
  return {batch_size, channels, height, width, pooled_height, pooled_width, bins, channels_out};
}

// Element strides of a feature map whose (h, w) pixels are addressed as (h * W + w) * pixel.
struct Strides {
  int64_t batch, channel, pixel;
};

// Returns `input` as NCHW- or NHWC-contiguous (copying only other layouts) and its strides.
inline at::Tensor dense_input(const at::Tensor& input, Strides& strides) {
  at::Tensor dense = input;
  if (!input.is_contiguous() && !input.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    dense = input.contiguous();
  }
  // A tensor dense in both formats (C == 1 or H == W == 1) is read as NCHW: the layouts coincide.
  const bool channels_last = !dense.is_contiguous();
  strides.batch = dense.size(1) * dense.size(2) * dense.size(3);
  strides.channel = channels_last ? 1 : dense.size(2) * dense.size(3);
  strides.pixel = channels_last ? dense.size(1) : 1;
  return dense;
}

// The spatial footprint of one (RoI, bin) pair (see the top of this file).
template <typename T>
struct Footprint {
  std::vector<int64_t> pixel;  // h * W + w
  std::vector<T> weight;
  T divisor = T(1);

  void clear() {
    pixel.clear();
    weight.clear();
    divisor = T(1);
  }
  void add(int64_t p, T w) {
    pixel.push_back(p);
    weight.push_back(w);
  }
  int64_t size() const { return static_cast<int64_t>(pixel.size()); }
};

// ---------------------------------------------------------------------------------------------
// Hot loops. A work item handles one image n, one bin b and a block of `cb` output channels c0..;
// it packs their planes {(c0 + c) * B + b} into a pixel-major scratch buffer
//   packed[p * cb + c]  (p = h * W + w)
// so that the terms of a footprint read or update `cb` contiguous values (vectorized). Sums run
// over the footprint's terms in order, so results do not depend on how the work is split.

// Pixels per tile of the unpacking loop: a tile of the packed buffer (kTile * cb values) stays in
// L1 while each plane's kTile values are written contiguously.
constexpr int64_t kTile = 16;

// Output channels per work item (the packed block width).
constexpr int64_t kChannelBlock = 32;

// S is the tensors' element type, T the compute type (float for float16/bfloat16, else S).

// How a value of S is stored: bfloat16 as its 16 bits (plain integer stores vectorize), other
// types as themselves.
template <typename S>
using Stored = std::conditional_t<std::is_same_v<S, c10::BFloat16>, uint16_t, S>;

// v rounded to S, as stored. bfloat16: to nearest even, NaN to a quiet NaN (c10::BFloat16's
// rounding), without a branch, so that the loops storing it vectorize.
template <typename S, typename T>
inline Stored<S> round_to(T v) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return v != v ? uint16_t(0x7fc0) : uint16_t(rounded);
  } else {
    return static_cast<S>(v);
  }
}

// p viewed as its stored type (see Stored).
template <typename S>
inline Stored<S>* stored(S* p) {
  return reinterpret_cast<Stored<S>*>(p);
}

// packed[p * cb + c] = src[c * channel_step + p * pixel_stride]
template <typename S, typename T>
inline void pack_planes_impl(const S* __restrict__ src, int64_t channel_step, int64_t pixel_stride,
                             int64_t pixels, int64_t cb, T* __restrict__ packed) {
  for (int64_t p = 0; p < pixels; ++p) {
    const S* s = src + p * pixel_stride;
    T* d = packed + p * cb;
    for (int64_t c = 0; c < cb; ++c) d[c] = static_cast<T>(s[c * channel_step]);
  }
}

// Pixels per chunk of the bfloat16 unpacking loop: a float32 staging buffer of
// kChannelBlock x kRow values (16 KB) stays in L1.
constexpr int64_t kRow = 128;

// unpack_planes_impl for bfloat16. Rounding element by element inside the transposition stays
// scalar: transpose a chunk of pixels into float32 rows, then round each row in one vectorized
// pass. (Called out of line from the instruction-set clones, as GCC has always compiled it.)
template <typename T>
inline void unpack_planes_bf16(const T* __restrict__ packed, int64_t pixels, int64_t cb,
                               c10::BFloat16* __restrict__ dst, int64_t channel_step) {
  float staging[kChannelBlock * kRow];
  for (int64_t p0 = 0; p0 < pixels; p0 += kRow) {
    const int64_t n = std::min(kRow, pixels - p0);
    for (int64_t q0 = 0; q0 < n; q0 += kTile) {
      const int64_t m = std::min(kTile, n - q0);
      const T* s = packed + (p0 + q0) * cb;
      for (int64_t c = 0; c < cb; ++c) {
        for (int64_t q = 0; q < m; ++q) staging[c * kRow + q0 + q] = s[q * cb + c];
      }
    }
    for (int64_t c = 0; c < cb; ++c) {
      floats_to_bf16(staging + c * kRow, n,
                     reinterpret_cast<uint16_t*>(dst + c * channel_step + p0));
    }
  }
}

// dst[c * channel_step + p] = packed[p * cb + c]. Always inlined, so that each instruction-set
// clone (unpack_planes) vectorizes it for its own ISA (GCC's own choice was borderline for
// float16).
template <typename S, typename T>
__attribute__((always_inline)) inline void unpack_planes_impl(const T* __restrict__ packed,
                                                              int64_t pixels, int64_t cb,
                                                              S* __restrict__ dst,
                                                              int64_t channel_step) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    unpack_planes_bf16(packed, pixels, cb, dst, channel_step);
    return;
  }
  int64_t p0 = 0;
  for (; p0 + kTile <= pixels; p0 += kTile) {
    const T* s = packed + p0 * cb;
    for (int64_t c = 0; c < cb; ++c) {
      S* d = dst + c * channel_step + p0;
      for (int64_t q = 0; q < kTile; ++q) d[q] = static_cast<S>(s[q * cb + c]);
    }
  }
  for (int64_t p = p0; p < pixels; ++p) {
    for (int64_t c = 0; c < cb; ++c) {
      dst[c * channel_step + p] = static_cast<S>(packed[p * cb + c]);
    }
  }
}

// out[c * out_stride] = sum_t weight[t] * packed[pixel[t] * cb + c] / divisor, c < cb <= kMaxBlock
template <typename S, typename T, int64_t kMaxBlock>
inline void gather_packed_impl(const T* __restrict__ packed, int64_t cb,
                               const int64_t* __restrict__ pixel, const T* __restrict__ weight,
                               int64_t terms, T divisor, S* __restrict__ out, int64_t out_stride) {
  T sum[kMaxBlock];
  for (int64_t c = 0; c < cb; ++c) sum[c] = T(0);
  for (int64_t t = 0; t < terms; ++t) {
    const T* s = packed + pixel[t] * cb;
    const T w = weight[t];
    for (int64_t c = 0; c < cb; ++c) {
      sum[c] += w * s[c];
    }
  }
  for (int64_t c = 0; c < cb; ++c) stored(out)[c * out_stride] = round_to<S>(sum[c] / divisor);
}

// packed[pixel[t] * cb + c] += weight[t] * (grad[c * grad_stride] / divisor), for every term t
// in order and c < cb <= kMaxBlock
template <typename S, typename T, int64_t kMaxBlock>
inline void scatter_packed_impl(T* __restrict__ packed, int64_t cb,
                                const int64_t* __restrict__ pixel, const T* __restrict__ weight,
                                int64_t terms, const S* __restrict__ grad, int64_t grad_stride,
                                T divisor) {
  T g[kMaxBlock];
  for (int64_t c = 0; c < cb; ++c) g[c] = static_cast<T>(grad[c * grad_stride]);
  for (int64_t c = 0; c < cb; ++c) g[c] /= divisor;  // contiguous: vectorized
  for (int64_t t = 0; t < terms; ++t) {
    T* s = packed + pixel[t] * cb;
    const T w = weight[t];
    for (int64_t c = 0; c < cb; ++c) {
      s[c] += w * g[c];
    }
  }
}

// Direct forward for few RoIs (packing would cost more than it saves):
// out[c * out_stride] = sum_t weight[t] * src[c * channel_step + pixel[t] * pixel_stride] / divisor
template <typename S, typename T>
inline void gather_direct_impl(const S* src, int64_t channel_step, int64_t pixel_stride,
                               int64_t channels, const int64_t* pixel, const T* weight,
                               int64_t terms, T divisor, S* out, int64_t out_stride) {
  for (int64_t c = 0; c < channels; ++c) {
    const S* plane = src + c * channel_step;
    T sum = T(0);
    for (int64_t t = 0; t < terms; ++t) {
      sum += weight[t] * static_cast<T>(plane[pixel[t] * pixel_stride]);
    }
    stored(out)[c * out_stride] = round_to<S>(sum / divisor);
  }
}

namespace {

// Instruction-set clones of the loops above, for each element type S and its compute type T.
#define DETECTOR_PS_ROI_HOT_LOOPS(S, T)                                                           \
  DETECTOR_SIMD_CLONES void pack_planes(const S* src, int64_t channel_step, int64_t pixel_stride, \
                                        int64_t pixels, int64_t cb, T* packed) {                  \
    pack_planes_impl(src, channel_step, pixel_stride, pixels, cb, packed);                        \
  }                                                                                               \
  DETECTOR_SIMD_CLONES void unpack_planes(const T* packed, int64_t pixels, int64_t cb, S* dst,    \
                                          int64_t channel_step) {                                 \
    unpack_planes_impl(packed, pixels, cb, dst, channel_step);                                    \
  }                                                                                               \
  DETECTOR_SIMD_CLONES void gather_packed(const T* packed, int64_t cb, const int64_t* pixel,      \
                                          const T* weight, int64_t terms, T divisor, S* out,      \
                                          int64_t out_stride) {                                   \
    gather_packed_impl<S, T, kChannelBlock>(packed, cb, pixel, weight, terms, divisor, out,       \
                                            out_stride);                                          \
  }                                                                                               \
  DETECTOR_SIMD_CLONES void scatter_packed(T* packed, int64_t cb, const int64_t* pixel,           \
                                           const T* weight, int64_t terms, const S* grad,         \
                                           int64_t grad_stride, T divisor) {                      \
    scatter_packed_impl<S, T, kChannelBlock>(packed, cb, pixel, weight, terms, grad, grad_stride, \
                                             divisor);                                            \
  }                                                                                               \
  DETECTOR_SIMD_CLONES void gather_direct(const S* src, int64_t channel_step,                     \
                                          int64_t pixel_stride, int64_t channels,                 \
                                          const int64_t* pixel, const T* weight, int64_t terms,   \
                                          T divisor, S* out, int64_t out_stride) {                \
    gather_direct_impl(src, channel_step, pixel_stride, channels, pixel, weight, terms, divisor,  \
                       out, out_stride);                                                          \
  }

DETECTOR_PS_ROI_HOT_LOOPS(float, float)
DETECTOR_PS_ROI_HOT_LOOPS(double, double)
DETECTOR_PS_ROI_HOT_LOOPS(c10::Half, float)
DETECTOR_PS_ROI_HOT_LOOPS(c10::BFloat16, float)
#undef DETECTOR_PS_ROI_HOT_LOOPS

}  // namespace

// ---------------------------------------------------------------------------------------------
// Drivers.

// RoI indices grouped by image, in increasing order: image n owns order[start[n] .. start[n+1]).
struct RoisByImage {
  std::vector<int64_t> start, order;
};

template <typename T>
RoisByImage group_rois(const T* rois, int64_t num_rois, int64_t batch) {
  RoisByImage g;
  g.start.assign(batch + 1, 0);
  for (int64_t k = 0; k < num_rois; ++k) ++g.start[static_cast<int64_t>(rois[k * 5]) + 1];
  for (int64_t n = 0; n < batch; ++n) g.start[n + 1] += g.start[n];
  g.order.resize(num_rois);
  std::vector<int64_t> next(g.start.begin(), g.start.end() - 1);
  for (int64_t k = 0; k < num_rois; ++k) g.order[next[static_cast<int64_t>(rois[k * 5])]++] = k;
  return g;
}

// Work items (image n, bin b, channel block) and the grain that gives each thread enough work.
struct Items {
  int64_t blocks, count, grain, max_block;

  Items(const Shape& shape, int64_t num_rois, bool packed) {
    max_block = std::min(kChannelBlock, shape.channels_out);
    blocks = (shape.channels_out + kChannelBlock - 1) / kChannelBlock;
    count = shape.batch * shape.bins * blocks;
    // An item costs its channels times (a plane to pack, if packed, plus about 16 terms per RoI
    // of its image). Below ~32k of that per thread, starting threads costs more than it saves.
    const int64_t rois_per_image = num_rois / std::max<int64_t>(shape.batch, 1);
    const int64_t pack = packed ? shape.height * shape.width : 0;
    const int64_t cost = max_block * (pack + 16 * rois_per_image);
    grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(cost, 1));
  }

  // Item `item`: image n, bin b = i * PW + j, and its cb output channels from c0.
  struct Item {
    int64_t n, b, c0, cb, i, j;
  };

  Item at(int64_t item, const Shape& shape) const {
    Item it;
    it.n = item / (shape.bins * blocks);
    it.b = (item / blocks) % shape.bins;
    it.c0 = (item % blocks) * kChannelBlock;
    it.cb = std::min(kChannelBlock, shape.channels_out - it.c0);
    it.i = it.b / shape.pooled_width;
    it.j = it.b % shape.pooled_width;
    return it;
  }
};

// Runs items [0, count) on at::parallel_for's threads, handing them out in chunks of `grain` from
// a shared counter, so that a thread that starts late (on a busy machine) leaves its share to the
// others instead of holding everyone at the end. Each thread makes its state once and calls
// run(state, begin, end) per chunk. Items own disjoint outputs, so which thread runs an item never
// changes a result.
template <typename MakeState, typename Run>
void parallel_items(int64_t count, int64_t grain, const MakeState& make_state, const Run& run) {
  const int64_t chunks = (count + grain - 1) / grain;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), chunks);
  if (threads <= 1 || at::in_parallel_region()) {
    auto state = make_state();
    run(state, 0, count);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t begin; (begin = next.fetch_add(grain)) < count;) {
      run(state, begin, std::min(begin + grain, count));
    }
  });
}

// Per-thread buffers of the drivers.
template <typename T>
struct ThreadState {
  Footprint<T> fp;
  std::vector<T> scratch;
};

// The RoIs of a call as the drivers read them: (K, 5) in the compute type T (exact: float16 and
// bfloat16 widen to float), grouped by image, and the per-RoI part of `op`'s footprints (box in
// map coordinates, bin size, ...), computed once: `Op::prepare(roi)` takes the RoI's 5 values;
// `op(prepared[k], i, j, footprint)` then fills the footprint of bin (i, j) of RoI k.
template <typename T, typename Op>
struct PreparedRois {
  at::Tensor values;  // (K, 5) contiguous, dtype T
  RoisByImage by_image;
  std::vector<typename Op::Roi> prepared;

  PreparedRois(const at::Tensor& rois, const Shape& shape, const Op& op)
      : values(rois.to(c10::CppTypeToScalarType<T>::value).contiguous()) {
    const int64_t num_rois = rois.size(0);
    const T* data = values.const_data_ptr<T>();
    by_image = group_rois(data, num_rois, shape.batch);
    prepared.resize(num_rois);
    for (int64_t k = 0; k < num_rois; ++k) prepared[k] = op.prepare(data + k * 5);
  }

  // Calls f(k) for each RoI k of image n, in order, with `fp` holding the footprint of its bin
  // (i, j).
  template <typename F>
  void for_each_footprint(const Op& op, int64_t n, int64_t i, int64_t j, Footprint<T>& fp,
                          const F& f) const {
    for (int64_t q = by_image.start[n]; q < by_image.start[n + 1]; ++q) {
      const int64_t k = by_image.order[q];
      fp.clear();
      op(prepared[k], i, j, fp);
      f(k);
    }
  }
};

// Forward driver for the footprints of `op` (see PreparedRois), for tensors of element type S.
// Returns (K, C_out, PH, PW).
template <typename S, typename Op>
at::Tensor forward(const at::Tensor& input, const Strides& strides, const at::Tensor& rois,
                   const Shape& shape, const Op& op) {
  using T = at::opmath_type<S>;
  const int64_t num_rois = rois.size(0);
  at::Tensor output = at::empty(
      {num_rois, shape.channels_out, shape.pooled_height, shape.pooled_width}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const S* in = input.const_data_ptr<S>();
  S* out = output.mutable_data_ptr<S>();
  const int64_t bins = shape.bins, channels_out = shape.channels_out;
  const int64_t pixels = shape.height * shape.width;
  const PreparedRois<T, Op> roi_set(rois, shape, op);
  // Packing reads the whole input once; with few RoIs per image, reading only their footprints
  // directly is cheaper (measured break-even: about one RoI per 35 pixels of the map).
  const bool packed = 32 * num_rois >= shape.batch * pixels;
  const Items items(shape, num_rois, packed);
  const auto make_state = [&] {
    return ThreadState<T>{{}, std::vector<T>(packed ? pixels * items.max_block : 0)};
  };
  parallel_items(items.count, items.grain, make_state,
                 [&](ThreadState<T>& state, int64_t begin, int64_t end) {
                   Footprint<T>& fp = state.fp;
                   T* scratch = state.scratch.data();
                   for (int64_t item = begin; item < end; ++item) {
                     const auto [n, b, c0, cb, i, j] = items.at(item, shape);
                     // planes (c0 + c) * B + b of image n, c < cb
                     const S* src = in + n * strides.batch + (c0 * bins + b) * strides.channel;
                     const int64_t channel_step = bins * strides.channel;
                     if (packed) {
                       pack_planes(src, channel_step, strides.pixel, pixels, cb, scratch);
                     }
                     roi_set.for_each_footprint(op, n, i, j, fp, [&](int64_t k) {
                       S* dst = out + (k * channels_out + c0) * bins + b;
                       if (packed) {
                         gather_packed(scratch, cb, fp.pixel.data(), fp.weight.data(), fp.size(),
                                       fp.divisor, dst, bins);
                       } else {
                         gather_direct(src, channel_step, strides.pixel, cb, fp.pixel.data(),
                                       fp.weight.data(), fp.size(), fp.divisor, dst, bins);
                       }
                     });
                   }
                 });
  return output;
}

// Backward driver: the input gradient (N, C, H, W), NCHW-contiguous, for the footprints of `op`.
// Each item accumulates its RoIs into a zeroed packed buffer, in RoI order, then writes its
// planes: every element of the gradient is written by exactly one item.
template <typename S, typename Op>
at::Tensor backward(const at::Tensor& grad, const at::Tensor& rois, const Shape& shape,
                    const Op& op) {
  using T = at::opmath_type<S>;
  const int64_t num_rois = rois.size(0);
  if (num_rois == 0) {
    return at::zeros({shape.batch, shape.channels, shape.height, shape.width}, grad.options());
  }
  at::Tensor grad_input =
      at::empty({shape.batch, shape.channels, shape.height, shape.width}, grad.options());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor grad_c = grad.contiguous();
  const S* grad_data = grad_c.const_data_ptr<S>();
  S* gin = grad_input.mutable_data_ptr<S>();
  const int64_t bins = shape.bins, channels_out = shape.channels_out;
  const int64_t pixels = shape.height * shape.width;
  const PreparedRois<T, Op> roi_set(rois, shape, op);
  const Items items(shape, num_rois, /*packed=*/true);
  const auto make_state = [&] {
    return ThreadState<T>{{}, std::vector<T>(pixels * items.max_block)};
  };
  parallel_items(
      items.count, items.grain, make_state, [&](ThreadState<T>& state, int64_t begin, int64_t end) {
        Footprint<T>& fp = state.fp;
        T* scratch = state.scratch.data();
        for (int64_t item = begin; item < end; ++item) {
          const auto [n, b, c0, cb, i, j] = items.at(item, shape);
          std::fill(scratch, scratch + pixels * cb, T(0));
          roi_set.for_each_footprint(op, n, i, j, fp, [&](int64_t k) {
            if (fp.size() == 0) {
              return;
            }
            scatter_packed(scratch, cb, fp.pixel.data(), fp.weight.data(), fp.size(),
                           grad_data + (k * channels_out + c0) * bins + b, bins, fp.divisor);
          });
          // planes (c0 + c) * B + b of image n, c < cb
          unpack_planes(scratch, pixels, cb, gin + (n * shape.channels + c0 * bins + b) * pixels,
                        bins * pixels);
        }
      });
  return grad_input;
}

// ---------------------------------------------------------------------------------------------
// Operator entry points: check the arguments, then run the driver with the op's footprints, which
// make_op(T{}, shape) builds for the compute type T and the call's sizes.

template <typename MakeOp>
at::Tensor forward_op(const char* op, const at::Tensor& input, const at::Tensor& rois,
                      int64_t pooled_height, int64_t pooled_width, const MakeOp& make_op) {
  const Shape shape = check_forward_args(op, input, rois, pooled_height, pooled_width);
  Strides strides;
  const at::Tensor dense = dense_input(input, strides);
  at::Tensor output;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_forward_cpu", [&] {
        const auto footprint = make_op(at::opmath_type<scalar_t>{}, shape);
        output = forward<scalar_t>(dense, strides, rois, shape, footprint);
      });
  return output;
}

template <typename MakeOp>
at::Tensor backward_op(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                       int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                       int64_t channels, int64_t height, int64_t width, const MakeOp& make_op) {
  const Shape shape = check_backward_args(op, grad, rois, pooled_height, pooled_width, batch_size,
                                          channels, height, width);
  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "ps_roi_backward_cpu", [&] {
        const auto footprint = make_op(at::opmath_type<scalar_t>{}, shape);
        grad_input = backward<scalar_t>(grad, rois, shape, footprint);
      });
  return grad_input;
}

}  // namespace ps_roi
}  // namespace detector
