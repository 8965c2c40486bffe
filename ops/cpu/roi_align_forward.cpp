// RoI Align on the CPU, forward (design: roi_align_common.h): the pooling hot loops (avg and max,
// SIMD clones for float32 and float64), the driver that pools every RoI from a thread's channel
// blocks (float32 and float64; float16 and bfloat16 loaded into float32 blocks), and the entry
// points roi_align and multi_scale_roi_align.
// The forward writes its output with non-temporal stores (it would evict the block buffer from L3)
// into recycled memory (recycled_memory.h).
#include "cpu/roi_align_common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/channel_block.h"
#include "cpu/recycled_memory.h"

namespace detector {
namespace roi_align_cpu {

// ---------------------------------------------------------------------------------------------
// Hot loops: pooling from a block buffer [pixels][B].

// mask ? a : b per lane, with bit operations (GCC lowers vector `?:` on vectors wider than the
// target's registers lane by lane).
template <typename V, typename M>
inline __attribute__((always_inline)) V select(const M& mask, const V& a, const V& b) {
  return (V)(((M)a & mask) | ((M)b & ~mask));
}

// Bilinear value of sample `s` for channels [o, o + lanes) of a block buffer: sum_i w_i * row_i.
template <typename T>
inline __attribute__((always_inline)) typename Narrow<T>::type sample_part(const T* base,
                                                                           const Sample<T>& s,
                                                                           int64_t o) {
  using V = typename Narrow<T>::type;
  return s.weight[0] * load_vec<V>(base + s.index[0] * kBlock + o) +
         s.weight[1] * load_vec<V>(base + s.index[1] * kBlock + o) +
         s.weight[2] * load_vec<V>(base + s.index[2] * kBlock + o) +
         s.weight[3] * load_vec<V>(base + s.index[3] * kBlock + o);
}

// out[p][c] = mean over bin p's sample points of their bilinear values, c < B. Accumulates in
// register-wide parts: GCC keeps a B-wide vector accumulator in memory.
template <typename T>
inline __attribute__((always_inline)) void pool_avg_impl(const T* base, const RoiSamples<T>& r,
                                                         T* out) {
  using V = typename Narrow<T>::type;
  constexpr int64_t kLanes = Narrow<T>::lanes, kParts = kBlock / kLanes;
  const T count = static_cast<T>(std::max<int64_t>(r.per_bin(), 1));
  for_each_bin<0>(base, r, [&](int64_t p, const Bin<T>& bin) __attribute__((always_inline)) {
    V acc[kParts] = {};
    for (int64_t iy = 0; iy < bin.grid_h; ++iy) {
      for (int64_t ix = 0; ix < bin.grid_w; ++ix) {
        const Sample<T> s = bin.at(iy, ix);
        for (int64_t h = 0; h < kParts; ++h) {
          acc[h] += sample_part(base, s, h * kLanes);
        }
      }
    }
    for (int64_t h = 0; h < kParts; ++h) {
      store_vec(out + p * kBlock + h * kLanes, acc[h] / count);
    }
  });
}

// out[p][c] = max over bin p's sample points (0 without any), arg[p][c] = its index in the bin
// (the first one on ties, -1 without any).
template <typename T>
inline __attribute__((always_inline)) void pool_max_impl(const T* base, const RoiSamples<T>& r,
                                                         T* out, int32_t* arg) {
  using V = typename Narrow<T>::type;
  using M = typename Narrow<T>::mask;
  using E = decltype(M{}[0] + 0);  // the mask's lane type
  constexpr int64_t kLanes = Narrow<T>::lanes, kParts = kBlock / kLanes;
  for_each_bin<0>(base, r, [&](int64_t p, const Bin<T>& bin) __attribute__((always_inline)) {
    V best[kParts];
    M index[kParts];
    for (int64_t h = 0; h < kParts; ++h) {
      best[h] = V{} - std::numeric_limits<T>::infinity();
      index[h] = M{} - 1;
    }
    for (int64_t iy = 0, j = 0; iy < bin.grid_h; ++iy) {
      for (int64_t ix = 0; ix < bin.grid_w; ++ix, ++j) {
        const Sample<T> s = bin.at(iy, ix);
        const M jj = M{} + static_cast<E>(j);
        for (int64_t h = 0; h < kParts; ++h) {
          // "+ 0" turns the -0 of a point outside the map (0 * a negative pixel) into +0.
          const V v = sample_part(base, s, h * kLanes) + V{};
          const M greater = v > best[h];
          best[h] = select(greater, v, best[h]);
          index[h] = (index[h] & ~greater) | (jj & greater);
        }
      }
    }
    for (int64_t h = 0; h < kParts; ++h) {
      store_vec(out + p * kBlock + h * kLanes, select(index[h] >= 0, best[h], V{}));
      store_vec(arg + p * kBlock + h * kLanes,
                __builtin_convertvector(index[h], typename Narrow<T>::index32));
    }
  });
}

DETECTOR_SIMD_CLONES void pool_avg_block(const float* base, const RoiSamples<float>& r,
                                         float* out) {
  pool_avg_impl<float>(base, r, out);
}
DETECTOR_SIMD_CLONES void pool_avg_block(const double* base, const RoiSamples<double>& r,
                                         double* out) {
  pool_avg_impl<double>(base, r, out);
}
DETECTOR_SIMD_CLONES void pool_max_block(const float* base, const RoiSamples<float>& r, float* out,
                                         int32_t* arg) {
  pool_max_impl<float>(base, r, out, arg);
}
DETECTOR_SIMD_CLONES void pool_max_block(const double* base, const RoiSamples<double>& r,
                                         double* out, int32_t* arg) {
  pool_max_impl<double>(base, r, out, arg);
}

// ---------------------------------------------------------------------------------------------
// Driver.

// Pools RoIs [table.first, table.last) from any-layout levels: parallel over channel blocks.
// Levels and output are of dtype S (T, or float16/bfloat16 computed in T = float).
template <typename T, typename S>
void forward_blocks(const RoiSet<T>& set, const SampleTable<T>& table,
                    const std::vector<at::Tensor>& levels, S* out, int32_t* argmax) {
  const int64_t channels = levels[0].size(1), bins = set.pool.bins();
  const int64_t num_blocks = (channels + kBlock - 1) / kBlock;
  int64_t pixels = 0;
  for (const Level& level : set.level_info) {
    pixels = std::max(pixels, level.pixel_base + levels[0].size(0) * level.height * level.width);
  }
  std::atomic<int64_t> next_block{0};
  at::parallel_for(0, block_workers(table, num_blocks), 1, [&](int64_t, int64_t) {
    AlignedArray<T> buf = block_buffer<T>(pixels);
    std::vector<T> local(bins * kBlock);    // [bins][B]
    std::vector<T> staging(bins * kBlock);  // [B][bins]
    std::vector<int32_t> local_arg(argmax ? bins * kBlock : 0);
    for (int64_t b = next_block++; b < num_blocks; b = next_block++) {
      const int64_t c0 = b * kBlock, cw = std::min(kBlock, channels - c0);
      for (size_t l = 0; l < levels.size(); ++l) {
        load_channel_block<T, S>(levels[l], c0, cw,
                                 buf.get() + set.level_info[l].pixel_base * kBlock);
      }
      for (const int64_t k : table.order) {
        const T* base = buf.get() + set.level_of(k).pixel_base * kBlock;
        if (argmax) {
          pool_max_block(base, table.roi(k, set.pool), local.data(), local_arg.data());
        } else {
          pool_avg_block(base, table.roi(k, set.pool), local.data());
        }
        // [bins][B] -> out[k, c0:c0+cw, bins], a contiguous run of cw * bins values; the 26 MB
        // output would otherwise push the block buffer out of L3.
        S* o = out + (k * channels + c0) * bins;
        if constexpr (std::is_same_v<T, float>) {
          if (cw == kBlock) {
            if constexpr (std::is_same_v<S, float>) {
              block_to_planes_streaming(local.data(), bins, staging.data(), o);
            } else {  // float16/bfloat16: transpose in float32, then one contiguous conversion
              block_to_planes(local.data(), bins, staging.data());
              if constexpr (std::is_same_v<S, c10::BFloat16>) {
                floats_to_bf16(staging.data(), kBlock * bins, reinterpret_cast<uint16_t*>(o));
              } else {
                for (int64_t i = 0; i < kBlock * bins; ++i) o[i] = S(staging[i]);
              }
            }
          }
        }
        if (!std::is_same_v<T, float> || cw != kBlock) {
          for (int64_t j = 0; j < cw; ++j) {
            for (int64_t p = 0; p < bins; ++p) o[j * bins + p] = S(local[p * kBlock + j]);
          }
        }
        if (argmax) {
          int32_t* a = argmax + (k * channels + c0) * bins;
          for (int64_t j = 0; j < cw; ++j) {
            for (int64_t p = 0; p < bins; ++p) a[j * bins + p] = local_arg[p * kBlock + j];
          }
        }
      }
    }
    store_fence();
  });
}

// Levels as the kernels read them: each NCHW- or NHWC-contiguous.
std::vector<at::Tensor> kernel_layout(const std::vector<at::Tensor>& features) {
  std::vector<at::Tensor> levels;
  for (const at::Tensor& f : features) {
    const bool ok = f.is_contiguous() || f.is_contiguous(at::MemoryFormat::ChannelsLast);
    levels.push_back(ok ? f : f.contiguous());
  }
  return levels;
}

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor> forward_impl(const std::vector<at::Tensor>& features,
                                                const at::Tensor& rois, const int64_t* roi_levels,
                                                at::ArrayRef<double> scales, const Pooling& pool) {
  const std::vector<at::Tensor> levels = kernel_layout(features);
  const int64_t num_rois = rois.size(0), channels = levels[0].size(1);
  // Every element is written below, so the output may reuse a freed output's memory (a training
  // loop's previous one): fresh memory costs ~5 ms of the kernel's page zeroing for 26 MB.
  at::Tensor output = recycled_empty({num_rois, channels, pool.pooled_height, pool.pooled_width},
                                     levels[0].scalar_type());
  at::Tensor argmax = pool.mode == Mode::kMax
                          ? fresh_tensor(output.sizes(), output.options().dtype(at::kInt))
                          : at::empty({0}, output.options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  std::vector<int64_t> heights, widths;
  for (const at::Tensor& level : levels) {
    heights.push_back(level.size(2));
    widths.push_back(level.size(3));
  }
  RoiSet<T> set{rois.const_data_ptr<T>(), roi_levels,
                level_info<T>(heights, widths, scales, levels[0].size(0)), pool, num_rois};
  S* out = output.mutable_data_ptr<S>();
  int32_t* arg = pool.mode == Mode::kMax ? argmax.mutable_data_ptr<int32_t>() : nullptr;
  const std::vector<int64_t> bounds = chunk_bounds(set);
  SampleTable<T> table;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    build_table(set, bounds[i], bounds[i + 1], table);
    forward_blocks(set, table, levels, out, arg);
  }
  return {output, argmax};
}

// ---------------------------------------------------------------------------------------------
// Operator entry points.

std::tuple<at::Tensor, at::Tensor> roi_align_forward(const at::Tensor& input,
                                                     const at::Tensor& rois, double spatial_scale,
                                                     int64_t pooled_height, int64_t pooled_width,
                                                     int64_t sampling_ratio, bool aligned,
                                                     c10::string_view mode) {
  constexpr const char* op = "roi_align";
  const Pooling pool{pooled_height, pooled_width, sampling_ratio, aligned,
                     parse_roi_align_mode(op, mode)};
  check_roi_align_input(op, input);
  check_dtype(op, input);
  check_roi_align_pooling(op, pooled_height, pooled_width);
  check_rois(op, rois, input.size(0));
  const at::Tensor r = compute_rois(rois, input.scalar_type());
  const double scales[] = {spatial_scale};
  return dispatch_storage(input.scalar_type(), [&](auto t, auto s) {
    return forward_impl<decltype(t), decltype(s)>({input}, r, nullptr, scales, pool);
  });
}

std::tuple<at::Tensor, at::Tensor> multi_scale_forward(
    at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
    int64_t sampling_ratio, bool aligned, c10::string_view mode) {
  constexpr const char* op = "multi_scale_roi_align";
  const Pooling pool{pooled_height, pooled_width, sampling_ratio, aligned,
                     parse_roi_align_mode(op, mode)};
  TORCH_CHECK_VALUE(!features.empty() && features.size() == spatial_scales.size(), op,
                    ": `features` and `spatial_scales` must be non-empty and of equal length, got ",
                    features.size(), " and ", spatial_scales.size());
  for (const at::Tensor& f : features) {
    TORCH_CHECK_VALUE(
        f.dim() == 4 && f.size(0) == features[0].size(0) && f.size(1) == features[0].size(1), op,
        ": every level of `features` must be (N, C, H_l, W_l) with the same N "
        "and C, got ",
        f.sizes(), " and ", features[0].sizes());
    TORCH_CHECK_TYPE(f.scalar_type() == features[0].scalar_type(), op,
                     ": every level of `features` must have the same dtype");
  }
  check_dtype(op, features[0]);
  check_roi_align_pooling(op, pooled_height, pooled_width);
  check_rois(op, rois, features[0].size(0));
  const at::Tensor lv = checked_levels(op, levels, rois.size(0), features.size());
  const at::Tensor r = compute_rois(rois, features[0].scalar_type());
  return dispatch_storage(features[0].scalar_type(), [&](auto t, auto s) {
    return forward_impl<decltype(t), decltype(s)>(features.vec(), r, lv.const_data_ptr<int64_t>(),
                                                  spatial_scales, pool);
  });
}

}  // namespace roi_align_cpu
}  // namespace detector
