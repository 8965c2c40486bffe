// CPU kernels of `detector::nms` and `detector::batched_nms`.
//
// Algorithm (a blocked greedy sweep). The boxes are sorted once by decreasing score (the same
// `scores.sort(0, descending=true)` call as torchvision, so equal scores come out in the same
// order) and copied into contiguous x1, y1, x2, y2, area arrays. Greedy NMS keeps a box iff no
// earlier kept box overlaps it with IoU > threshold, so the candidates are visited in blocks of
// kBlock boxes:
//   1. every candidate of the block is compared with all boxes kept by earlier blocks, in parallel
//      over the candidates (at::parallel_for), vectorized over the kept boxes, with an early exit
//      per chunk of kChunk kept boxes as soon as one of them suppresses the candidate;
//   2. the survivors are then compared, in score order, with the boxes kept earlier in the same
//      block, and the kept ones are appended to the kept arrays.
// The work is about (number of candidates) x (kept boxes each is compared with until the first
// suppressor), which is small when few boxes survive (dense clusters) and half of the N^2/2 of a
// bitmask NMS when most survive, without its N^2/64 words of memory. The result does not depend on
// the thread count: each candidate's test is independent of how the block is split.
//
// Exactness: the IoU is computed with torchvision's expression and rounding,
//   inter / (area_kept + area_candidate - inter),
// with fused multiply-adds disabled, and compared with the threshold as torchvision does, a float
// IoU against a double threshold (see `threshold_for`).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu/cpu_utils.h"

// `w * h` must be rounded before it is subtracted, as in torchvision's scalar loop.
#pragma GCC optimize("fp-contract=off")

namespace detector {

void check_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                      const at::Tensor* idxs);

namespace nms_cpu {

// Kept boxes per early-exit test: the first test covers kFirstChunk boxes, each next one twice as
// many, up to kMaxChunk (a suppressor is often among the first kept boxes).
constexpr int64_t kFirstChunk = 16;
constexpr int64_t kMaxChunk = 128;
// A sweep block holds between kMinBlock and kMaxBlock candidates, sized so that its step 1 costs
// about kRegionWork IoUs; blocks with less work than that run on one thread. Few, large parallel
// regions keep the cost of waking and joining threads small, also on a loaded machine.
constexpr int64_t kMinBlock = 64;
constexpr int64_t kMaxBlock = 512;
constexpr int64_t kRegionWork = int64_t{1} << 20;

// Read-only view of boxes stored as separate contiguous arrays.
template <typename T>
struct BoxView {
  const T* x1;
  const T* y1;
  const T* x2;
  const T* y2;
  const T* area;

  BoxView offset(int64_t k) const { return {x1 + k, y1 + k, x2 + k, y2 + k, area + k}; }
};

// Owning structure-of-arrays storage of `n` boxes.
template <typename T>
struct BoxArrays {
  explicit BoxArrays(int64_t n) : x1(n), y1(n), x2(n), y2(n), area(n) {}

  // Stores box k; the area is (x2 - x1) * (y2 - y1), as torchvision computes it.
  void set(int64_t k, T bx1, T by1, T bx2, T by2) {
    x1[k] = bx1;
    y1[k] = by1;
    x2[k] = bx2;
    y2[k] = by2;
    area[k] = (bx2 - bx1) * (by2 - by1);
  }

  void copy_from(int64_t k, const BoxView<T>& src, int64_t s) {
    x1[k] = src.x1[s];
    y1[k] = src.y1[s];
    x2[k] = src.x2[s];
    y2[k] = src.y2[s];
    area[k] = src.area[s];
  }

  BoxView<T> view() const { return {x1.data(), y1.data(), x2.data(), y2.data(), area.data()}; }

  std::vector<T> x1, y1, x2, y2, area;
};

// The threshold `t` to compare a T-valued IoU with, such that `iou > t` in T equals torchvision's
// `iou > threshold` in double: for float, the largest float <= threshold.
template <typename T>
T threshold_for(double threshold);

template <>
float threshold_for<float>(double threshold) {
  float t = static_cast<float>(threshold);
  if (static_cast<double>(t) > threshold) {
    t = std::nextafter(t, -std::numeric_limits<float>::infinity());
  }
  return t;
}

template <>
double threshold_for<double>(double threshold) {
  return threshold;
}

// Whether box `c` of `cand` has an IoU > `thr` with any box in [begin, end) of `kept`.
template <typename T>
inline __attribute__((always_inline)) bool overlaps_any_impl(const BoxView<T>& kept, int64_t begin,
                                                             int64_t end, const BoxView<T>& cand,
                                                             int64_t c, T thr) {
  const T cx1 = cand.x1[c];
  const T cy1 = cand.y1[c];
  const T cx2 = cand.x2[c];
  const T cy2 = cand.y2[c];
  const T carea = cand.area[c];
  int64_t chunk = kFirstChunk;
  for (int64_t k0 = begin; k0 < end; k0 += chunk, chunk = std::min(2 * chunk, kMaxChunk)) {
    const int64_t k1 = std::min(end, k0 + chunk);
    int hit = 0;
    for (int64_t k = k0; k < k1; ++k) {
      const T xx1 = std::max(kept.x1[k], cx1);
      const T yy1 = std::max(kept.y1[k], cy1);
      const T xx2 = std::min(kept.x2[k], cx2);
      const T yy2 = std::min(kept.y2[k], cy2);
      const T w = std::max(static_cast<T>(0), xx2 - xx1);
      const T h = std::max(static_cast<T>(0), yy2 - yy1);
      const T inter = w * h;
      const T iou = inter / (kept.area[k] + carea - inter);
      hit |= static_cast<int>(iou > thr);
    }
    if (hit) {
      return true;
    }
  }
  return false;
}

// Hot loops, compiled for several instruction sets (one overload per dtype).
DETECTOR_SIMD_CLONES bool overlaps_any(const BoxView<float>& kept, int64_t begin, int64_t end,
                                       const BoxView<float>& cand, int64_t c, float thr) {
  return overlaps_any_impl(kept, begin, end, cand, c, thr);
}

DETECTOR_SIMD_CLONES bool overlaps_any(const BoxView<double>& kept, int64_t begin, int64_t end,
                                       const BoxView<double>& cand, int64_t c, double thr) {
  return overlaps_any_impl(kept, begin, end, cand, c, thr);
}

// suppressed[c - begin] = whether candidate c in [begin, end) overlaps one of kept[0, num_kept).
DETECTOR_SIMD_CLONES void test_candidates(const BoxView<float>& cand, int64_t begin, int64_t end,
                                          const BoxView<float>& kept, int64_t num_kept, float thr,
                                          uint8_t* suppressed) {
  for (int64_t c = begin; c < end; ++c) {
    suppressed[c - begin] = overlaps_any_impl(kept, 0, num_kept, cand, c, thr);
  }
}

DETECTOR_SIMD_CLONES void test_candidates(const BoxView<double>& cand, int64_t begin, int64_t end,
                                          const BoxView<double>& kept, int64_t num_kept, double thr,
                                          uint8_t* suppressed) {
  for (int64_t c = begin; c < end; ++c) {
    suppressed[c - begin] = overlaps_any_impl(kept, 0, num_kept, cand, c, thr);
  }
}

// Greedy NMS of `n` candidates already in decreasing score order: keep[c] = 1 if candidate c is
// kept. `kept` is scratch storage for at least n boxes.
template <typename T>
void sweep(const BoxView<T>& cand, int64_t n, T thr, BoxArrays<T>& kept, uint8_t* keep) {
  const BoxView<T> kept_view = kept.view();
  uint8_t suppressed[kMaxBlock];
  int64_t num_kept = 0;
  int64_t b1 = 0;
  for (int64_t b0 = 0; b0 < n; b0 = b1) {
    const int64_t block =
        std::clamp(kRegionWork / std::max<int64_t>(1, num_kept), kMinBlock, kMaxBlock);
    b1 = std::min(n, b0 + block);
    // 1. Against the boxes kept by earlier blocks, in parallel over the candidates.
    const int64_t grain = (b1 - b0) * num_kept >= kRegionWork ? 1 : block;
    at::parallel_for(b0, b1, grain, [&](int64_t begin, int64_t end) {
      test_candidates(cand, begin, end, kept_view, num_kept, thr, suppressed + (begin - b0));
    });
    // 2. In score order, against the boxes kept earlier in this block.
    const int64_t block_begin = num_kept;
    for (int64_t c = b0; c < b1; ++c) {
      const bool drop =
          suppressed[c - b0] || overlaps_any(kept_view, block_begin, num_kept, cand, c, thr);
      keep[c] = drop ? 0 : 1;
      if (!drop) {
        kept.copy_from(num_kept++, cand, c);
      }
    }
  }
}

// Keep flags by sorted position (order[k] = index of the k-th highest score). With `idxs`, the
// sorted positions are grouped by category (score order kept within a category) and each group is
// swept on its own, so boxes of different categories never suppress each other.
template <typename T>
std::vector<uint8_t> keep_flags(const at::Tensor& boxes, const int64_t* order,
                                const at::Tensor* idxs, double iou_threshold) {
  const int64_t n = boxes.size(0);
  const auto b = boxes.accessor<T, 2>();
  const T thr = threshold_for<T>(iou_threshold);
  // position[q] = sorted position of the q-th candidate swept.
  std::vector<int64_t> position(n);
  std::iota(position.begin(), position.end(), 0);
  std::vector<int64_t> category;
  if (idxs != nullptr) {
    const at::Tensor idxs_c = idxs->contiguous();
    const int64_t* cls = idxs_c.data_ptr<int64_t>();
    category.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      category[k] = cls[order[k]];
    }
    std::stable_sort(position.begin(), position.end(),
                     [&](int64_t p, int64_t q) { return category[p] < category[q]; });
  }
  BoxArrays<T> cand(n);
  for (int64_t q = 0; q < n; ++q) {
    const int64_t i = order[position[q]];
    cand.set(q, b[i][0], b[i][1], b[i][2], b[i][3]);
  }
  BoxArrays<T> kept(n);
  std::vector<uint8_t> swept(n);
  const BoxView<T> cand_view = cand.view();
  int64_t g0 = 0;
  while (g0 < n) {
    int64_t g1 = g0 + 1;
    if (idxs != nullptr) {
      while (g1 < n && category[position[g1]] == category[position[g0]]) {
        ++g1;
      }
    } else {
      g1 = n;
    }
    sweep(cand_view.offset(g0), g1 - g0, thr, kept, swept.data() + g0);
    g0 = g1;
  }
  std::vector<uint8_t> keep(n);
  for (int64_t q = 0; q < n; ++q) {
    keep[position[q]] = swept[q];
  }
  return keep;
}

at::Tensor nms_impl(const char* op, const at::Tensor& boxes_in, const at::Tensor& scores,
                    const at::Tensor* idxs, double iou_threshold) {
  check_nms_inputs(op, boxes_in, scores, idxs);
  TORCH_CHECK(at::isFloatingType(boxes_in.scalar_type()), op,
              ": `boxes` must be float16, bfloat16, float32 or float64 on the CPU, got ",
              boxes_in.scalar_type());
  // float16/bfloat16 boxes: IoUs in float32 from the same values (N x 4 values: a cheap cast).
  const at::Tensor boxes = boxes_in.to(at::toOpMathType(boxes_in.scalar_type()));
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const int64_t* order_ptr = order.data_ptr<int64_t>();
  std::vector<uint8_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms", [&] {
    keep = keep_flags<scalar_t>(boxes, order_ptr, idxs, iou_threshold);
  });
  const int64_t num_kept = std::count(keep.begin(), keep.end(), 1);
  at::Tensor result = at::empty({num_kept}, boxes.options().dtype(at::kLong));
  int64_t* out = result.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) {
    if (keep[k]) {
      *out++ = order_ptr[k];
    }
  }
  return result;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl("detector::nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  return nms_impl("detector::batched_nms", boxes, scores, &idxs, iou_threshold);
}

}  // namespace nms_cpu

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("nms", &nms_cpu::nms_cpu);
  m.impl("batched_nms", &nms_cpu::batched_nms_cpu);
}

}  // namespace detector
