// RoI Pool on the CPU, with exactly torchvision.ops.roi_pool's arithmetic (rounded RoI corners,
// floor/ceil bin edges in the input's dtype, clipped to the map, empty bins give 0).
//
// Forward, float: vectorized over channels. Blocks of 16 channels are copied into [pixels][16]
// buffers (channel_block.h, from NCHW or NHWC); each bin then walks its pixels in row-major order
// with a strict `>` running max and index per channel (torchvision's order, so the FIRST max),
// with no per-bin horizontal reduction. (The former NCHW two-pass scheme below spent as much time
// reducing along x within a bin as in the max itself: 2.3x slower on the benchmark case.)
// float16 and bfloat16 take the same path (features converted into the float32 blocks; bin
// edges computed in the input's dtype, as torchvision). Forward, float64: NCHW planes, one channel
// plane at a time (it stays in L2 while every RoI reads it), in two passes per row of bins:
//   1. vertical: for each column w of the RoI, the max over the bin row's rows, vectorized along
//      the contiguous w (the running max and its flat index h * W + w per column);
//   2. horizontal: for each bin, the max over its columns of pass 1. Ties between columns keep the
//      smaller flat index, so the result is the FIRST max in row-major order, as in torchvision.
// Backward: threads own disjoint blocks of channels. For its block, a thread zeroes planes of its
// own, walks every RoI in a fixed order and adds its gradients at the arg-max indices while the
// planes are in L2, then copies them into the gradient with non-temporal stores (its memory is a
// freed gradient's, recycled_memory.h, or fresh huge pages: it is written once and never read,
// and first-touch faults are spread over the threads). No atomics, no races, and the summation
// order of every element does not depend on the thread count. A contiguous `grad` is read in runs
// of block * PH * PW elements per RoI (prefetched); any other strides are read in place.
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <memory>
#include <vector>

#include "cpu/channel_block.h"
#include "cpu/cpu_utils.h"
#include "cpu/recycled_memory.h"
#include "cpu/aligned_memory.h"
#include "cpu/simd.h"

namespace detector {
namespace {

// Clipped bin edges of every RoI, in image-plane coordinates. For RoI k, row k of `edges` holds
// [hstart(PH), hend(PH), wstart(PW), wend(PW)]; `batch[k]` is its image index.
struct RoIBins {
  std::vector<int> edges;
  std::vector<int64_t> batch;
  int64_t stride = 0;  // 2 * PH + 2 * PW
};

// Mirrors torchvision's CPU kernel: all arithmetic in scalar_t, `round` for the corners, a RoI at
// least 1x1, floor/ceil for the bin edges, then clipping to [0, H] x [0, W].
template <typename T>
RoIBins compute_bins(const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                     int64_t pooled_width, int64_t height, int64_t width) {
  const int64_t num_rois = rois.size(0);
  const int ph_count = static_cast<int>(pooled_height);
  const int pw_count = static_cast<int>(pooled_width);
  const int h_max = static_cast<int>(height);
  const int w_max = static_cast<int>(width);
  RoIBins bins;
  bins.stride = 2 * pooled_height + 2 * pooled_width;
  bins.edges.resize(num_rois * bins.stride);
  bins.batch.resize(num_rois);
  const T* r = rois.data_ptr<T>();
  const T scale = static_cast<T>(spatial_scale);
  for (int64_t k = 0; k < num_rois; ++k, r += 5) {
    bins.batch[k] = static_cast<int64_t>(r[0]);
    const int start_w = static_cast<int>(std::round(static_cast<double>(r[1] * scale)));
    const int start_h = static_cast<int>(std::round(static_cast<double>(r[2] * scale)));
    const int end_w = static_cast<int>(std::round(static_cast<double>(r[3] * scale)));
    const int end_h = static_cast<int>(std::round(static_cast<double>(r[4] * scale)));
    const int roi_w = std::max(end_w - start_w + 1, 1);
    const int roi_h = std::max(end_h - start_h + 1, 1);
    const T bin_h = static_cast<T>(roi_h) / static_cast<T>(ph_count);
    const T bin_w = static_cast<T>(roi_w) / static_cast<T>(pw_count);
    int* e = bins.edges.data() + k * bins.stride;
    for (int ph = 0; ph < ph_count; ++ph) {
      const int hs = static_cast<int>(std::floor(static_cast<double>(static_cast<T>(ph) * bin_h)));
      const int he =
          static_cast<int>(std::ceil(static_cast<double>(static_cast<T>(ph + 1) * bin_h)));
      e[ph] = std::min(std::max(hs + start_h, 0), h_max);
      e[ph_count + ph] = std::min(std::max(he + start_h, 0), h_max);
    }
    for (int pw = 0; pw < pw_count; ++pw) {
      const int ws = static_cast<int>(std::floor(static_cast<double>(static_cast<T>(pw) * bin_w)));
      const int we =
          static_cast<int>(std::ceil(static_cast<double>(static_cast<T>(pw + 1) * bin_w)));
      e[2 * ph_count + pw] = std::min(std::max(ws + start_w, 0), w_max);
      e[2 * ph_count + pw_count + pw] = std::min(std::max(we + start_w, 0), w_max);
    }
  }
  return bins;
}

// Pass 1 for one row of bins: the running max over rows [h0, h1) of columns [w0, w0 + n) of
// `plane` (row stride `width`), with the flat index of the first (smallest h) max per column.
// Used for double, half and bfloat16 (float uses channel blocks).
template <typename T, typename A>
void column_max(const T* plane, int64_t width, int h0, int h1, int w0, int n,
                A* __restrict__ col_value, int* __restrict__ col_index) {
  for (int j = 0; j < n; ++j) {
    A best = static_cast<A>(-FLT_MAX);
    int best_index = -1;
    for (int h = h0; h < h1; ++h) {
      const A v = static_cast<A>(plane[h * width + w0 + j]);
      if (v > best) {
        best = v;
        best_index = static_cast<int>(h * width) + w0 + j;
      }
    }
    col_value[j] = best;
    col_index[j] = best_index;
  }
}

// Pass 2 for one row of bins: bin pw takes the max of pass-1 columns [wstart - w0, wend - w0);
// among equal maxima the smaller flat index wins (the first max in row-major order).
template <typename T, typename A>
void bin_max(const A* col_value, const int* col_index, const int* wstart, const int* wend, int w0,
             int pw_count, T* out, int* arg) {
  for (int pw = 0; pw < pw_count; ++pw) {
    A best = wend[pw] <= wstart[pw] ? A(0) : static_cast<A>(-FLT_MAX);
    int best_index = -1;
    for (int j = wstart[pw] - w0; j < wend[pw] - w0; ++j) {
      const A v = col_value[j];
      const int i = col_index[j];
      const bool take = (v > best) | ((v == best) & (i < best_index));
      best = take ? v : best;
      best_index = take ? i : best_index;
    }
    out[pw] = static_cast<T>(best);
    arg[pw] = best_index;
  }
}

// float: channel blocks. 8 floats / 8 ints in one 32-byte vector (VecF8 / VecI32x8, simd.h: AVX2
// in the x86-64-v3 clone, two SSE registers in the default one); a block of 16 channels is two.
constexpr int kLanes = 8;
static_assert(kChannelBlock == 2 * kLanes, "a channel block is two 8-lane vectors");

// Pools one RoI for the 16 channels of a block: `image` is the RoI's image in a block buffer
// [H * W][16]; bin b's max goes to out[b][16], the flat index h * W + w of its first max in
// row-major order to arg[b][16] (as torchvision: strict `>` from -FLT_MAX, so -1 where no element
// exceeds -FLT_MAX; an empty bin gives 0 and -1). `e` is the RoI's row of RoIBins::edges.
DETECTOR_SIMD_CLONES void pool_roi_block(const float* image, int64_t width, const int* e,
                                         int ph_count, int pw_count, float* out, int* arg) {
  const int* hstart = e;
  const int* hend = e + ph_count;
  const int* wstart = e + 2 * ph_count;
  const int* wend = wstart + pw_count;
  for (int ph = 0; ph < ph_count; ++ph) {
    for (int pw = 0; pw < pw_count; ++pw) {
      const bool empty = hend[ph] <= hstart[ph] || wend[pw] <= wstart[pw];
      VecF8 best0 = VecF8{} + (empty ? 0.0f : -FLT_MAX), best1 = best0;
      VecI32x8 index0 = VecI32x8{} - 1, index1 = index0;
      for (int h = hstart[ph]; h < hend[ph]; ++h) {
        const int row = static_cast<int>(h * width);
        for (int w = wstart[pw]; w < wend[pw]; ++w) {
          const float* pixel = image + static_cast<int64_t>(row + w) * kChannelBlock;
          VecF8 v0, v1;
          __builtin_memcpy(&v0, pixel, sizeof(v0));
          __builtin_memcpy(&v1, pixel + kLanes, sizeof(v1));
          const VecI32x8 at = VecI32x8{} + (row + w);
          const VecI32x8 greater0 = v0 > best0;
          const VecI32x8 greater1 = v1 > best1;
          best0 = greater0 ? v0 : best0;
          best1 = greater1 ? v1 : best1;
          index0 = greater0 ? at : index0;
          index1 = greater1 ? at : index1;
        }
      }
      float* o = out + (ph * pw_count + pw) * kChannelBlock;
      int* a = arg + (ph * pw_count + pw) * kChannelBlock;
      __builtin_memcpy(o, &best0, sizeof(best0));
      __builtin_memcpy(o + kLanes, &best1, sizeof(best1));
      __builtin_memcpy(a, &index0, sizeof(index0));
      __builtin_memcpy(a + kLanes, &index1, sizeof(index1));
    }
  }
}

// float forward, parallel over blocks of 16 channels: a thread copies its block of every image
// from `x` (NCHW or NHWC contiguous) into a per-thread buffer [N * H * W][16] (3.5 MB for one
// 200 x 272 map: it stays in L3 while every RoI reads it) and pools every RoI from it; each
// RoI's [bins][16] result is transposed into output[k, c0:c0 + 16]. Threads take blocks from a
// shared counter; a block's result does not depend on the thread.
// S: float32, float16 or bfloat16 features, pooled from float32 channel blocks (exact: the max
// of a bin is one of its values).
template <typename S>
void forward_float_blocks(const at::Tensor& x, const RoIBins& bins, int ph_count, int pw_count,
                          S* out, int* arg) {
  const int64_t batch = x.size(0), channels = x.size(1), width = x.size(3);
  const int64_t plane = x.size(2) * width;
  const int64_t num_rois = static_cast<int64_t>(bins.batch.size());
  const int64_t bin_count = ph_count * pw_count;
  const int64_t num_blocks = (channels + kChannelBlock - 1) / kChannelBlock;
  const int64_t workers = std::min<int64_t>(num_blocks, at::get_num_threads());
  std::atomic<int64_t> next_block{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    std::unique_ptr<float[]> buf(new float[batch * plane * kChannelBlock]);
    advise_huge_pages(buf.get(), batch * plane * kChannelBlock * sizeof(float));
    std::vector<float> local(bin_count * kChannelBlock);  // [bins][16]
    std::vector<int> local_arg(bin_count * kChannelBlock);
    for (int64_t block = next_block++; block < num_blocks; block = next_block++) {
      const int64_t c0 = block * kChannelBlock;
      const int64_t cw = std::min(kChannelBlock, channels - c0);
      load_channel_block<float, S>(x, c0, cw, buf.get());
      for (int64_t k = 0; k < num_rois; ++k) {
        pool_roi_block(buf.get() + bins.batch[k] * plane * kChannelBlock, width,
                       bins.edges.data() + k * bins.stride, ph_count, pw_count, local.data(),
                       local_arg.data());
        // [bins][16] -> output[k, c0:c0 + cw, bins]
        S* o = out + (k * channels + c0) * bin_count;
        int* a = arg + (k * channels + c0) * bin_count;
        if (cw == kChannelBlock) {
          if constexpr (std::is_same_v<S, float>) {
            block_to_planes(local.data(), bin_count, o);
            block_to_planes(local_arg.data(), bin_count, a);
            continue;
          }
        }
        for (int64_t j = 0; j < cw; ++j) {
          for (int64_t b = 0; b < bin_count; ++b) {
            o[j * bin_count + b] = static_cast<S>(local[b * kChannelBlock + j]);  // exact
            a[j * bin_count + b] = local_arg[b * kChannelBlock + j];
          }
        }
      }
    }
  });
}

// Forward of channel `c` for every RoI. `input_c` points at (image 0, channel c); the output and
// argmax of RoI k and this channel start at k * roi_stride. `col_value`/`col_index` hold W
// values.
template <typename T, typename A>
void pool_channel(const T* input_c, int64_t image_stride, int64_t width, const RoIBins& bins,
                  int ph_count, int pw_count, T* out_c, int* argmax_c, int64_t roi_stride,
                  A* col_value, int* col_index) {
  const int64_t num_rois = static_cast<int64_t>(bins.batch.size());
  for (int64_t k = 0; k < num_rois; ++k) {
    const int* e = bins.edges.data() + k * bins.stride;
    const int* hstart = e;
    const int* hend = e + ph_count;
    const int* wstart = e + 2 * ph_count;
    const int* wend = wstart + pw_count;
    const int w0 = wstart[0];
    const int n = wend[pw_count - 1] - w0;
    const T* plane = input_c + bins.batch[k] * image_stride;
    T* out = out_c + k * roi_stride;
    int* arg = argmax_c + k * roi_stride;
    for (int ph = 0; ph < ph_count; ++ph, out += pw_count, arg += pw_count) {
      if (hend[ph] <= hstart[ph] || n <= 0) {
        std::fill(out, out + pw_count, T(0));
        std::fill(arg, arg + pw_count, -1);
        continue;
      }
      column_max<T, A>(plane, width, hstart[ph], hend[ph], w0, n, col_value, col_index);
      bin_max<T, A>(col_value, col_index, wstart, wend, w0, pw_count, out, arg);
    }
  }
}

void check_pool_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                     int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, "roi_pool: expected `input` of shape (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(at::isFloatingType(rois.scalar_type()),
              "roi_pool: `rois` must be a floating point tensor, got ", rois.scalar_type());
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0,
              "roi_pool: `output_size` must be positive, got (", pooled_height, ", ", pooled_width,
              ")");
  TORCH_CHECK(input.size(2) * input.size(3) <= INT32_MAX,
              "roi_pool: a feature plane of more than 2^31 elements is not supported");
  check_rois("roi_pool", rois, input.size(0));
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input,
                                                        const at::Tensor& rois,
                                                        double spatial_scale, int64_t pooled_height,
                                                        int64_t pooled_width) {
  check_pool_args(input, rois, pooled_height, pooled_width);
  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1);
  const int64_t height = input.size(2);
  const int64_t width = input.size(3);
  at::Tensor output = at::empty({num_rois, channels, pooled_height, pooled_width}, input.options());
  at::Tensor argmax =
      at::empty({num_rois, channels, pooled_height, pooled_width}, input.options().dtype(at::kInt));
  // Fresh memory: huge pages cut the first-touch page faults (aligned_memory.h).
  advise_huge_pages(output.data_ptr(), output.nbytes());
  advise_huge_pages(argmax.data_ptr(), argmax.nbytes());
  if (output.numel() == 0) {
    return {output, argmax};
  }
  // The bins in the RoIs' own dtype: RoIs of the features' dtype give torchvision's bins (its
  // arithmetic in that dtype), float32 RoIs with float16/bfloat16 features (what autocast and
  // the pooler pass) the bins of the float32 computation.
  RoIBins bins;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rois.scalar_type(), "roi_pool", [&] {
    bins = compute_bins<scalar_t>(rois.contiguous(), spatial_scale, pooled_height, pooled_width,
                                  height, width);
  });
  const int ph_count = static_cast<int>(pooled_height);
  const int pw_count = static_cast<int>(pooled_width);
  if (input.scalar_type() != at::kDouble) {
    // Channel blocks read NCHW or NHWC directly (no layout copy), float16/bfloat16 converted.
    const bool direct =
        input.is_contiguous() || input.is_contiguous(at::MemoryFormat::ChannelsLast);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) {
        forward_float_blocks(direct ? input : input.contiguous(), bins, ph_count, pw_count,
                             output.data_ptr<scalar_t>(), argmax.data_ptr<int>());
      }
    });
    return {output, argmax};
  }
  // float64: NCHW planes, one (n, c) plane is what the kernel reads per RoI.
  const at::Tensor x = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    int* arg = argmax.data_ptr<int>();
    const int64_t plane = height * width;
    const int64_t bins_per_roi = pooled_height * pooled_width;
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> col_value(width);
      std::vector<int> col_index(width);
      for (int64_t c = begin; c < end; ++c) {
        pool_channel<scalar_t, acc_t>(in + c * plane, channels * plane, width, bins, ph_count,
                                      pw_count, out + c * bins_per_roi, arg + c * bins_per_roi,
                                      channels * bins_per_roi, col_value.data(), col_index.data());
      }
    });
  });
  return {output, argmax};
}

// Backward of RoIs' gradients for channels [c0, c1) into zeroed planes `gi`: (N, c1 - c0, H, W)
// with images `image_stride` elements apart: for RoI k = 0..K-1 (a fixed order), channel c and
// bin b, gi[batch[k], c - c0, argmax] += grad[k, c, b]. `grad` and `argmax` are contiguous
// (K, C, bins), so a RoI's run for the block is (c1 - c0) * bins contiguous elements of each.
// `grad` of dtype S is summed in T (float32 for float16/bfloat16 gradients).
template <typename S, typename T>
DETECTOR_SIMD_CLONES void scatter_channels(const S* __restrict__ g, const int* __restrict__ arg,
                                           const int64_t* batch, int64_t num_rois, int64_t channels,
                                           int64_t bins, int64_t plane, int64_t c0, int64_t c1,
                                           int64_t image_stride, T* __restrict__ gi) {
  const int64_t run = (c1 - c0) * bins;
  const int64_t roi_stride = channels * bins;
  constexpr int64_t kAhead = 2;  // RoIs between a prefetch and its use (~DRAM latency)
  const uint32_t limit = static_cast<uint32_t>(plane);
  for (int64_t k = 0; k < num_rois; ++k) {
    const int64_t first = k * roi_stride + c0 * bins;
    if (k + kAhead < num_rois) {
      const char* next_g = reinterpret_cast<const char*>(g + first + kAhead * roi_stride);
      const char* next_a = reinterpret_cast<const char*>(arg + first + kAhead * roi_stride);
      for (int64_t byte = 0; byte < run * 4; byte += 64) {
        if (byte < run * static_cast<int64_t>(sizeof(S))) __builtin_prefetch(next_g + byte, 0, 0);
        __builtin_prefetch(next_a + byte, 0, 0);
      }
    }
    const S* gk = g + first;
    const int* ak = arg + first;
    T* p = gi + batch[k] * image_stride;
    for (int64_t c = 0; c < c1 - c0; ++c, p += plane, gk += bins, ak += bins) {
      for (int64_t b = 0; b < bins; ++b) {
        const int index = ak[b];
        // -1 (an empty bin) and anything outside the plane wrap to >= limit: skipped.
        if (static_cast<uint32_t>(index) < limit) {
          p[index] += static_cast<T>(gk[b]);
        }
      }
    }
  }
}

// As scatter_channels, for a `grad` of any strides (e.g. expanded from a sum): read in place.
template <typename S, typename T>
void scatter_channels_strided(const S* g, at::IntArrayRef strides, const int* __restrict__ arg,
                              const int64_t* batch, int64_t num_rois, int64_t channels,
                              int64_t ph_count, int64_t pw_count, int64_t plane, int64_t c0,
                              int64_t c1, int64_t image_stride, T* __restrict__ gi) {
  const uint32_t limit = static_cast<uint32_t>(plane);
  for (int64_t k = 0; k < num_rois; ++k) {
    for (int64_t c = c0; c < c1; ++c) {
      T* p = gi + batch[k] * image_stride + (c - c0) * plane;
      const int* ak = arg + (k * channels + c) * ph_count * pw_count;
      for (int64_t ph = 0; ph < ph_count; ++ph, ak += pw_count) {
        const S* gh = g + k * strides[0] + c * strides[1] + ph * strides[2];
        for (int64_t pw = 0; pw < pw_count; ++pw) {
          const int index = ak[pw];
          if (static_cast<uint32_t>(index) < limit) {
            p[index] += static_cast<T>(gh[pw * strides[3]]);
          }
        }
      }
    }
  }
}

// dst[i] = src[i], i < count, rounded to S once; float32/float64 with non-temporal stores
// (copy_streaming), bfloat16 through the vectorized floats_to_bf16.
template <typename S, typename T>
void store_planes(const T* src, int64_t count, S* dst) {
  if constexpr (std::is_same_v<S, T>) {
    copy_streaming(src, count * sizeof(T), dst);
  } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
    floats_to_bf16(src, count, reinterpret_cast<uint16_t*>(dst));
  } else {
    for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<S>(src[i]);
  }
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                 const at::Tensor& argmax, int64_t batch_size, int64_t channels,
                                 int64_t height, int64_t width) {
  TORCH_CHECK(grad.dim() == 4, "_roi_pool_backward: expected `grad` of shape (K, C, PH, PW), got ",
              grad.sizes());
  TORCH_CHECK(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt,
              "_roi_pool_backward: `argmax` must be an int32 tensor of the shape of `grad` (",
              grad.sizes(), "), got ", argmax.scalar_type(), " ", argmax.sizes());
  TORCH_CHECK(grad.size(0) == rois.size(0) && grad.size(1) == channels,
              "_roi_pool_backward: `grad` of shape ", grad.sizes(), " does not match ",
              rois.size(0), " RoIs and ", channels, " channels");
  check_rois("_roi_pool_backward", rois, batch_size);
  // Every element is written below (zeroed by its owner thread, then scattered into), so the
  // memory need not be zero: a freed gradient's memory is reused (recycled_memory.h), which saves
  // the kernel's page zeroing of fresh memory (huge pages where it is fresh).
  at::Tensor grad_input = recycled_empty({batch_size, channels, height, width}, grad.scalar_type());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t num_rois = rois.size(0);
  const int64_t bins = grad.size(2) * grad.size(3);
  const int64_t plane = height * width;
  std::vector<int64_t> batch(num_rois);
  {
    const at::Tensor r = rois.to(at::kDouble).select(1, 0).contiguous();
    const double* rb = r.const_data_ptr<double>();
    for (int64_t k = 0; k < num_rois; ++k) batch[k] = static_cast<int64_t>(rb[k]);
  }
  const at::Tensor a = argmax.contiguous();  // made by the forward: contiguous
  const bool dense = grad.is_contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "_roi_pool_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;  // float32 sums for float16/bfloat16
        const scalar_t* gp = grad.const_data_ptr<scalar_t>();
        const int* ap = a.const_data_ptr<int>();
        scalar_t* gi = grad_input.data_ptr<scalar_t>();
        // A block of kBlock channels has one owner thread: it scatters into zeroed planes of its
        // own (N, kBlock, H, W), which stay in L2, then copies them into the gradient with
        // non-temporal stores (the gradient's lines are then written once, never read).
        constexpr int64_t kBlock = 2;
        const int64_t num_blocks = (channels + kBlock - 1) / kBlock;
        // Threads take blocks from a shared counter (a thread slowed down by other processes does
        // not hold up the others); what a block computes does not depend on the thread running it.
        const int64_t workers = std::min<int64_t>(num_blocks, at::get_num_threads());
        std::atomic<int64_t> next_block{0};
        at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
          AlignedArray<acc_t> planes = aligned_array<acc_t>(batch_size * kBlock * plane);
          for (int64_t block = next_block++; block < num_blocks; block = next_block++) {
            const int64_t c0 = block * kBlock;
            const int64_t c1 = std::min(c0 + kBlock, channels);
            const int64_t image_stride = (c1 - c0) * plane;  // planes: (N, c1 - c0, H, W)
            std::fill(planes.get(), planes.get() + batch_size * image_stride, acc_t(0));
            if (dense) {
              scatter_channels(gp, ap, batch.data(), num_rois, channels, bins, plane, c0, c1,
                               image_stride, planes.get());
            } else {
              scatter_channels_strided(gp, grad.strides(), ap, batch.data(), num_rois, channels,
                                       grad.size(2), grad.size(3), plane, c0, c1, image_stride,
                                       planes.get());
            }
            for (int64_t n = 0; n < batch_size; ++n) {
              store_planes(planes.get() + n * image_stride, image_stride,
                           gi + (n * channels + c0) * plane);
            }
          }
          store_fence();
        });
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("roi_pool", &roi_pool_forward_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace detector
