// CPU kernel of paste_masks (schema and shapes in ops/paste_masks.cpp; the numerics in
// detector/modeling/roi_heads/mask_head/paste.py).
//
// One task per mask, in parallel over masks: the mask's output plane is written once, row by
// row, zeros outside the box and the bilinear resize of the padded mask inside it, so the
// (R, H, W) output costs one pass of stores and no zero-fill pass. The resize is separable and
// computed in the same order as the PyTorch form (columns first: each source row interpolated
// along x; then rows), every product and sum rounded in T, so both forms agree to rounding.
// float16/bfloat16 masks (S) are read into T = float32 and each pasted value is rounded once to
// S: the bits of the float32 kernel's result cast to S.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu/aligned_memory.h"

namespace detector {
namespace paste_masks_cpu {

// Bilinear source of one image pixel on one axis: padded-mask indices i0, i1 with weights.
template <typename T>
struct Sample {
  int64_t i0, i1;
  T w0, w1;
};

// The image pixels [first, first + samples.size()) that the integer box [start, end] (inclusive)
// covers on an axis of `length` pixels, and their sources in a padded mask of `size` pixels:
// pixel p samples s = (size / w) * (p - start + 0.5) - 0.5 clamped to [0, size - 1], as
// F.interpolate(align_corners=False) does, w = max(end - start + 1, 1).
template <typename T>
int64_t axis_samples(int64_t start, int64_t end, int64_t length, int64_t size,
                     std::vector<Sample<T>>& samples) {
  const int64_t first = std::max<int64_t>(start, 0);
  const int64_t last = std::min<int64_t>(end, length - 1);
  samples.clear();
  const T resized = T(std::max<int64_t>(end - start + 1, 1));
  const T scale = T(size) / resized;
  const T top = T(size - 1);
  for (int64_t p = first; p <= last; ++p) {
    T s = scale * (T(p - start) + T(0.5)) - T(0.5);
    s = std::min(std::max(s, T(0)), top);
    const int64_t i0 = static_cast<int64_t>(std::floor(s));
    const T w1 = s - T(i0);
    samples.push_back({i0, std::min<int64_t>(i0 + 1, size - 1), T(1) - w1, w1});
  }
  return first;
}

// Pastes one padded mask (size x size, elements of type S) into its plane (H x W), computing in
// T: O is S (probabilities) or bool (value > threshold).
template <typename S, typename T, typename O>
struct PlanePaster {
  int64_t size, height, width;
  T threshold;
  std::vector<Sample<T>> xs, ys;
  std::vector<T> columns;  // (S, visible width): each source row resized along x

  O convert(T value) const {
    if constexpr (std::is_same_v<O, bool>) {
      return value > threshold;
    } else {
      return static_cast<O>(value);
    }
  }

  void resize_columns(const S* mask) {
    const int64_t count = static_cast<int64_t>(xs.size());
    columns.resize(size * count);
    for (int64_t s = 0; s < size; ++s) {
      const S* source = mask + s * size;
      T* target = columns.data() + s * count;
      for (int64_t x = 0; x < count; ++x) {
        const Sample<T>& c = xs[x];
        T value = static_cast<T>(source[c.i0]) * c.w0;
        target[x] = value + static_cast<T>(source[c.i1]) * c.w1;
      }
    }
  }

  void paste(const S* mask, const int64_t* box, O* plane) {
    const int64_t x_first = axis_samples(box[0], box[2], width, size, xs);
    const int64_t y_first = axis_samples(box[1], box[3], height, size, ys);
    const int64_t count = static_cast<int64_t>(xs.size());
    if (xs.empty() || ys.empty()) {
      std::memset(plane, 0, sizeof(O) * height * width);
      return;
    }
    resize_columns(mask);
    const int64_t y_end = y_first + static_cast<int64_t>(ys.size());
    for (int64_t y = 0; y < height; ++y) {
      O* row = plane + y * width;
      if (y < y_first || y >= y_end) {
        std::memset(row, 0, sizeof(O) * width);
        continue;
      }
      const Sample<T>& r = ys[y - y_first];
      const T* upper = columns.data() + r.i0 * count;
      const T* lower = columns.data() + r.i1 * count;
      std::memset(row, 0, sizeof(O) * x_first);
      O* inside = row + x_first;
      for (int64_t x = 0; x < count; ++x) {
        T value = upper[x] * r.w0;
        inside[x] = convert(value + lower[x] * r.w1);
      }
      std::memset(inside + count, 0, sizeof(O) * (width - x_first - count));
    }
  }
};

template <typename S, typename O>
void paste_all(const at::Tensor& padded, const at::Tensor& boxes, double threshold,
               at::Tensor& out) {
  using T = at::opmath_type<S>;
  const int64_t masks = padded.size(0), size = padded.size(1);
  const int64_t height = out.size(1), width = out.size(2);
  const S* mask_data = padded.data_ptr<S>();
  const int64_t* box_data = boxes.data_ptr<int64_t>();
  O* out_data = out.data_ptr<O>();
  at::parallel_for(0, masks, 1, [&](int64_t begin, int64_t end) {
    PlanePaster<S, T, O> paster{size, height, width, static_cast<T>(threshold), {}, {}, {}};
    for (int64_t r = begin; r < end; ++r) {
      paster.paste(mask_data + r * size * size, box_data + 4 * r, out_data + r * height * width);
    }
  });
}

void check_arguments(const at::Tensor& padded, const at::Tensor& boxes, int64_t height,
                     int64_t width) {
  TORCH_CHECK_VALUE(padded.dim() == 3 && padded.size(1) == padded.size(2) && padded.size(1) > 0,
                    "paste_masks: `padded` must be (R, S, S) with S >= 1, got ", padded.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(padded.scalar_type()),
                   "paste_masks: `padded` must be a floating point tensor, got ",
                   padded.scalar_type());
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(0) == padded.size(0) && boxes.size(1) == 4,
                    "paste_masks: `boxes` must be (", padded.size(0), ", 4), got ", boxes.sizes());
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kLong, "paste_masks: `boxes` must be int64, got ",
                   boxes.scalar_type());
  TORCH_CHECK_VALUE(height >= 0 && width >= 0,
                    "paste_masks: `height` and `width` must be >= 0, got ", height, " and ", width);
}

at::Tensor paste_masks(const at::Tensor& padded_in, const at::Tensor& boxes_in, int64_t height,
                       int64_t width, std::optional<double> threshold) {
  check_arguments(padded_in, boxes_in, height, width);
  const at::Tensor padded = padded_in.contiguous();
  const at::Tensor boxes = boxes_in.contiguous();
  const auto dtype = threshold.has_value() ? at::kBool : padded.scalar_type();
  at::Tensor out = at::empty({padded.size(0), height, width}, padded.options().dtype(dtype));
  if (out.numel() == 0) {
    return out;
  }
  advise_huge_pages(out.data_ptr(), out.nbytes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, padded.scalar_type(), "paste_masks",
                                  [&] {
                                    if (threshold.has_value()) {
                                      paste_all<scalar_t, bool>(padded, boxes, *threshold, out);
                                    } else {
                                      paste_all<scalar_t, scalar_t>(padded, boxes, 0.0, out);
                                    }
                                  });
  return out;
}

}  // namespace paste_masks_cpu

TORCH_LIBRARY_IMPL(detector, CPU, m) { m.impl("paste_masks", &paste_masks_cpu::paste_masks); }

}  // namespace detector
