// Position-sensitive RoI pooling on the CPU (R-FCN; torchvision.ops.ps_roi_pool semantics).
//
// A RoI is rounded to whole feature pixels and split into PH x PW bins of
// floor(i * h / PH) .. ceil((i + 1) * h / PH) rows (likewise for columns); bin (i, j) of output
// channel c is the mean of input channel c * PH * PW + i * PW + j over the bin's pixels. As in
// torchvision, bin edges are clipped to [0, H - 1] x [0, W - 1] (so the last row and column are
// never pooled), and an empty bin gives 0. The gradient is the exact gradient of this forward
// (torchvision's backward clips to H and W instead, and disagrees with its forward at the border).
#include <torch/library.h>

#include "cpu/ps_roi_common.h"

namespace detector {
namespace {

// Rounds half away from zero (std::round), bounded so that absurd boxes cannot overflow int64.
template <typename T>
int64_t round_coordinate(T value) {
  const T bound = T(1 << 30);
  return static_cast<int64_t>(std::round(std::min(std::max(value, -bound), bound)));
}

// The pixels of bin (i, j) of a RoI, each with weight 1; the divisor is their count.
template <typename T>
struct PoolFootprint {
  T spatial_scale;
  int64_t pooled_height, pooled_width, height, width;

  // The RoI rounded to whole pixels, and its bin size.
  struct Roi {
    int64_t start_h, start_w;
    T bin_h, bin_w;
  };

  Roi prepare(const T* roi) const {
    const int64_t start_w = round_coordinate(roi[1] * spatial_scale);
    const int64_t start_h = round_coordinate(roi[2] * spatial_scale);
    const int64_t end_w = round_coordinate(roi[3] * spatial_scale);
    const int64_t end_h = round_coordinate(roi[4] * spatial_scale);
    // RoIs smaller than a pixel count as 1 x 1.
    return {start_h, start_w, static_cast<T>(std::max<int64_t>(end_h - start_h, 1)) / pooled_height,
            static_cast<T>(std::max<int64_t>(end_w - start_w, 1)) / pooled_width};
  }

  void operator()(const Roi& roi, int64_t i, int64_t j, ps_roi::Footprint<T>& fp) const {
    const int64_t h0 = clip(roi.start_h + static_cast<int64_t>(std::floor(i * roi.bin_h)), height);
    const int64_t h1 =
        clip(roi.start_h + static_cast<int64_t>(std::ceil((i + 1) * roi.bin_h)), height);
    const int64_t w0 = clip(roi.start_w + static_cast<int64_t>(std::floor(j * roi.bin_w)), width);
    const int64_t w1 =
        clip(roi.start_w + static_cast<int64_t>(std::ceil((j + 1) * roi.bin_w)), width);
    if (h1 <= h0 || w1 <= w0) {
      return;  // empty bin: output 0
    }
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t w = w0; w < w1; ++w) {
        fp.add(h * width + w, T(1));
      }
    }
    fp.divisor = static_cast<T>((h1 - h0) * (w1 - w0));
  }

  // torchvision's clipping of a bin edge: into [0, size - 1].
  static int64_t clip(int64_t v, int64_t size) {
    return std::min(std::max<int64_t>(v, 0), size - 1);
  }
};

// Builds the footprints of a call for compute type T (ps_roi::forward_op).
auto pool_footprint(double spatial_scale) {
  return [=](auto zero, const ps_roi::Shape& shape) {
    using T = decltype(zero);
    return PoolFootprint<T>{static_cast<T>(spatial_scale), shape.pooled_height, shape.pooled_width,
                            shape.height, shape.width};
  };
}

at::Tensor ps_roi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width) {
  return ps_roi::forward_op("ps_roi_pool", input, rois, pooled_height, pooled_width,
                            pool_footprint(spatial_scale));
}

at::Tensor ps_roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_height,
                                    int64_t pooled_width, int64_t batch_size, int64_t channels,
                                    int64_t height, int64_t width) {
  return ps_roi::backward_op("ps_roi_pool backward", grad, rois, pooled_height, pooled_width,
                             batch_size, channels, height, width, pool_footprint(spatial_scale));
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("ps_roi_pool", &ps_roi_pool_forward_cpu);
  m.impl("_ps_roi_pool_backward", &ps_roi_pool_backward_cpu);
}

}  // namespace detector
