// RoI Align on the CPU, backward (design: roi_align_common.h): the scatter-add hot loops (avg and
// max, SIMD clones for float32 and float64), the copies of a block buffer into the gradient (NCHW
// or NHWC, float32/float64, float16/bfloat16 rounded from float32), the driver, and the entry
// points _roi_align_backward and _multi_scale_roi_align_backward.
// Fresh gradients are backed by transparent huge pages (aligned_memory.h).
#include "cpu/roi_align_common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/channel_block.h"

namespace detector {
namespace roi_align_cpu {

// ---------------------------------------------------------------------------------------------
// Hot loops: scatter-adds into a block buffer [pixels][B].

// Adds w_i * gv into the 4 neighbour rows of sample `s` in a block buffer [pixels][B].
template <typename T>
inline __attribute__((always_inline)) void add_sample(T* buf, const Sample<T>& s,
                                                      const typename Vec<T>::type& gv) {
  using V = typename Vec<T>::type;
  for (int i = 0; i < 4; ++i) {
    const T w = s.weight[i];
    if (w == T(0)) {  // outside the map: nothing to add (as torchvision, even for inf gradients)
      continue;
    }
    T* row = buf + s.index[i] * kBlock;
    store_vec(row, load_vec<V>(row) + w * gv);
  }
}

// Scatter-adds one RoI's bin gradients g [bins][B] into a block buffer [pixels][B] (avg mode:
// every sample point of a bin receives gradient / count).
template <typename T>
inline __attribute__((always_inline)) void scatter_avg_impl(T* buf, const RoiSamples<T>& r,
                                                            const T* g) {
  using V = typename Vec<T>::type;
  const T count = static_cast<T>(std::max<int64_t>(r.per_bin(), 1));
  for_each_bin<1>(buf, r, [&](int64_t p, const Bin<T>& bin) __attribute__((always_inline)) {
    const V gv = load_vec<V>(g + p * kBlock) / count;
    for (int64_t iy = 0; iy < bin.grid_h; ++iy) {
      for (int64_t ix = 0; ix < bin.grid_w; ++ix) {
        add_sample(buf, bin.at(iy, ix), gv);
      }
    }
  });
}

// Max mode: only the arg-max sample point of each channel (arg [bins][B]) receives its gradient.
template <typename T>
inline __attribute__((always_inline)) void scatter_max_impl(T* buf, const RoiSamples<T>& r,
                                                            const T* g, const int32_t* arg) {
  using V = typename Narrow<T>::type;
  using M = typename Narrow<T>::mask;
  using E = decltype(M{}[0] + 0);
  constexpr int64_t kLanes = Narrow<T>::lanes, kParts = kBlock / kLanes;
  T masked[kBlock];
  for_each_bin<1>(buf, r, [&](int64_t p, const Bin<T>& bin) __attribute__((always_inline)) {
    V gp[kParts];
    M ap[kParts];
    for (int64_t h = 0; h < kParts; ++h) {
      gp[h] = load_vec<V>(g + p * kBlock + h * kLanes);
      ap[h] = __builtin_convertvector(
          load_vec<typename Narrow<T>::index32>(arg + p * kBlock + h * kLanes), M);
    }
    for (int64_t iy = 0, j = 0; iy < bin.grid_h; ++iy) {
      for (int64_t ix = 0; ix < bin.grid_w; ++ix, ++j) {
        // Rarely does no channel of the block pick sample j, so add without testing for it.
        const M jj = M{} + static_cast<E>(j);
        for (int64_t h = 0; h < kParts; ++h) {
          store_vec(masked + h * kLanes, (V)((M)gp[h] & (ap[h] == jj)));
        }
        add_sample(buf, bin.at(iy, ix), load_vec<typename Vec<T>::type>(masked));
      }
    }
  });
}

DETECTOR_SIMD_CLONES void scatter_block(float* buf, const RoiSamples<float>& r, const float* g,
                                        const int32_t* arg) {
  if (arg) {
    scatter_max_impl<float>(buf, r, g, arg);
  } else {
    scatter_avg_impl<float>(buf, r, g);
  }
}
DETECTOR_SIMD_CLONES void scatter_block(double* buf, const RoiSamples<double>& r, const double* g,
                                        const int32_t* arg) {
  if (arg) {
    scatter_max_impl<double>(buf, r, g, arg);
  } else {
    scatter_avg_impl<double>(buf, r, g);
  }
}

// ---------------------------------------------------------------------------------------------
// Block copies between a level tensor (NCHW or NHWC contiguous) and a block buffer [pixels][B].

// grad[n, c0 + j, h, w] (=|+=) buf[pixel][j] for j < cw; `grad` is NCHW or NHWC contiguous.
// Adds (accumulate) or writes a computed value into a gradient of storage dtype S.
template <typename S, typename T>
inline void put(S& dst, T value, bool accumulate) {
  dst = static_cast<S>(accumulate ? static_cast<T>(dst) + value : value);
}

// dst[j * plane + hw] = bfloat16(src[hw][j]) for a whole block, 64 pixels at a time through a
// stack tile (a float32 transposition, then vectorized conversions).
void block_to_planes_bf16(const float* src, int64_t plane, c10::BFloat16* dst) {
  constexpr int64_t kTile = 64;
  float tile[kBlock * kTile];
  for (int64_t hw0 = 0; hw0 < plane; hw0 += kTile) {
    const int64_t count = std::min(kTile, plane - hw0);
    block_to_planes(src + hw0 * kBlock, count, tile);  // tile[j * count + t]
    for (int64_t j = 0; j < kBlock; ++j) {
      floats_to_bf16(tile + j * count, count, reinterpret_cast<uint16_t*>(dst + j * plane + hw0));
    }
  }
}

// Writes a block buffer of T into `grad` (dtype S: T, or float16/bfloat16 with T = float).
template <typename T, typename S>
void store_block(const T* buf, int64_t c0, int64_t cw, bool accumulate, at::Tensor& grad) {
  const int64_t batch = grad.size(0), channels = grad.size(1);
  const int64_t plane = grad.size(2) * grad.size(3);
  S* out = grad.mutable_data_ptr<S>();
  const bool nchw = grad.is_contiguous();
  constexpr int64_t kTile = 64;
  for (int64_t n = 0; n < batch; ++n) {
    const T* src = buf + n * plane * kBlock;
    if (nchw) {
      S* dst = out + (n * channels + c0) * plane;
      if constexpr (std::is_same_v<T, float>) {
        if (cw == kBlock && !accumulate) {
          if constexpr (std::is_same_v<S, float>) {
            block_to_planes(src, plane, dst);
            continue;
          } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
            block_to_planes_bf16(src, plane, dst);
            continue;
          }
        }
      }
      for (int64_t hw0 = 0; hw0 < plane; hw0 += kTile) {
        const int64_t hw1 = std::min(plane, hw0 + kTile);
        for (int64_t j = 0; j < cw; ++j) {
          S* d = dst + j * plane;
          for (int64_t hw = hw0; hw < hw1; ++hw) put(d[hw], src[hw * kBlock + j], accumulate);
        }
      }
    } else {
      S* dst = out + n * plane * channels + c0;
      for (int64_t hw = 0; hw < plane; ++hw) {
        S* d = dst + hw * channels;
        const T* s = src + hw * kBlock;
        for (int64_t j = 0; j < cw; ++j) put(d[j], s[j], accumulate);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Driver.

// Gradients of the levels (batch, channels, heights[l], widths[l]) in their memory formats.
template <typename T, typename S>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& rois,
                                      const int64_t* roi_levels, const at::Tensor& argmax,
                                      at::ArrayRef<double> scales, const Pooling& pool,
                                      int64_t batch, int64_t channels,
                                      const std::vector<int64_t>& heights,
                                      const std::vector<int64_t>& widths,
                                      const std::vector<bool>& channels_last) {
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    grads.push_back(fresh_tensor(
        {batch, channels, heights[l], widths[l]}, grad.options(),
        channels_last[l] ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  }
  const int64_t num_rois = rois.size(0), bins = pool.bins();
  if (num_rois == 0 || channels == 0 || bins == 0) {
    for (at::Tensor& g : grads) g.zero_();
    return grads;
  }
  RoiSet<T> set{rois.const_data_ptr<T>(), roi_levels, level_info<T>(heights, widths, scales, batch),
                pool, num_rois};
  int64_t pixels = 0;
  for (const Level& level : set.level_info) {
    pixels = std::max(pixels, level.pixel_base + batch * level.height * level.width);
  }
  const std::vector<int64_t> bounds = chunk_bounds(set);
  const bool accumulate = bounds.size() > 2;  // several chunks add into zeroed gradients
  if (accumulate) {
    for (at::Tensor& g : grads) g.zero_();
  }
  const S* g = grad.const_data_ptr<S>();
  const int32_t* arg = pool.mode == Mode::kMax ? argmax.const_data_ptr<int32_t>() : nullptr;
  const int64_t num_blocks = (channels + kBlock - 1) / kBlock;
  SampleTable<T> table;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    build_table(set, bounds[i], bounds[i + 1], table);
    std::atomic<int64_t> next_block{0};
    at::parallel_for(0, block_workers(table, num_blocks), 1, [&](int64_t, int64_t) {
      AlignedArray<T> buf = block_buffer<T>(pixels);
      std::vector<T> local(bins * kBlock);  // [bins][B]
      std::vector<int32_t> local_arg(arg ? bins * kBlock : 0);
      for (int64_t b = next_block++; b < num_blocks; b = next_block++) {
        const int64_t c0 = b * kBlock, cw = std::min(kBlock, channels - c0);
        std::fill(buf.get(), buf.get() + pixels * kBlock, T(0));
        for (const int64_t k : table.order) {
          // grad[k, c0:c0+cw, bins] -> [bins][B]
          const S* gk = g + (k * channels + c0) * bins;
          constexpr bool kBlockCopy =
              std::is_same_v<T, float> &&
              (std::is_same_v<S, float> || std::is_same_v<S, c10::BFloat16>);
          if constexpr (kBlockCopy) {
            if (cw == kBlock) {
              planes_to_block_converted(gk, bins, local.data());
            }
          }
          if (!kBlockCopy || cw != kBlock) {
            std::fill(local.begin(), local.end(), T(0));
            for (int64_t j = 0; j < cw; ++j) {
              for (int64_t p = 0; p < bins; ++p) local[p * kBlock + j] = T(gk[j * bins + p]);
            }
          }
          if (arg) {
            const int32_t* ak = arg + (k * channels + c0) * bins;
            std::fill(local_arg.begin(), local_arg.end(), -1);
            for (int64_t j = 0; j < cw; ++j) {
              for (int64_t p = 0; p < bins; ++p) local_arg[p * kBlock + j] = ak[j * bins + p];
            }
          }
          scatter_block(buf.get() + set.level_of(k).pixel_base * kBlock, table.roi(k, pool),
                        local.data(), arg ? local_arg.data() : nullptr);
        }
        for (size_t l = 0; l < grads.size(); ++l) {
          store_block<T, S>(buf.get() + set.level_info[l].pixel_base * kBlock, c0, cw, accumulate,
                            grads[l]);
        }
      }
    });
  }
  return grads;
}

// ---------------------------------------------------------------------------------------------
// Operator entry points.

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                              const at::Tensor& argmax, double spatial_scale, int64_t pooled_height,
                              int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                              c10::string_view mode, bool channels_last) {
  constexpr const char* op = "_roi_align_backward";
  const Pooling pool{pooled_height, pooled_width, sampling_ratio, aligned,
                     parse_roi_align_mode(op, mode)};
  check_dtype(op, grad);
  check_rois(op, rois, batch_size);
  check_roi_align_grad(op, grad, rois.size(0), channels, pooled_height, pooled_width);
  TORCH_CHECK(pool.mode == Mode::kAvg || argmax.sizes() == grad.sizes(), op,
              ": `argmax` must have the shape of `grad` for mode \"max\"");
  const at::Tensor r = compute_rois(rois, grad.scalar_type());
  const double scales[] = {spatial_scale};
  return dispatch_storage(grad.scalar_type(), [&](auto t, auto s) {
    return backward_impl<decltype(t), decltype(s)>(grad.contiguous(), r, nullptr,
                                                   argmax.contiguous(), scales, pool, batch_size,
                                                   channels, {height}, {width}, {channels_last})[0];
  });
}

std::vector<at::Tensor> multi_scale_backward(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    const at::Tensor& argmax, at::ArrayRef<double> spatial_scales, int64_t pooled_height,
    int64_t pooled_width, at::IntArrayRef level_shapes, const c10::List<bool>& channels_last,
    int64_t sampling_ratio, bool aligned, c10::string_view mode) {
  constexpr const char* op = "_multi_scale_roi_align_backward";
  const Pooling pool{pooled_height, pooled_width, sampling_ratio, aligned,
                     parse_roi_align_mode(op, mode)};
  const size_t num_levels = spatial_scales.size();
  TORCH_CHECK(
      num_levels > 0 && level_shapes.size() == 4 * num_levels && channels_last.size() == num_levels,
      op, ": expected 4 sizes and a memory format per level");
  check_dtype(op, grad);
  const int64_t batch = level_shapes[0], channels = level_shapes[1];
  check_rois(op, rois, batch);
  const at::Tensor lv = checked_levels(op, levels, rois.size(0), num_levels);
  check_roi_align_grad(op, grad, rois.size(0), channels, pooled_height, pooled_width);
  std::vector<int64_t> heights, widths;
  for (size_t l = 0; l < num_levels; ++l) {
    heights.push_back(level_shapes[4 * l + 2]);
    widths.push_back(level_shapes[4 * l + 3]);
  }
  std::vector<bool> formats;
  for (const bool cl : channels_last) {
    formats.push_back(cl);
  }
  const at::Tensor r = compute_rois(rois, grad.scalar_type());
  return dispatch_storage(grad.scalar_type(), [&](auto t, auto s) {
    return backward_impl<decltype(t), decltype(s)>(
        grad.contiguous(), r, lv.const_data_ptr<int64_t>(), argmax.contiguous(), spatial_scales,
        pool, batch, channels, heights, widths, formats);
  });
}

}  // namespace roi_align_cpu
}  // namespace detector
