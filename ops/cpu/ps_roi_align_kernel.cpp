// Position-sensitive RoI Align on the CPU (torchvision.ops.ps_roi_align semantics).
//
// A RoI, shifted by -0.5 pixel (pixel centres at integer coordinates), is split into PH x PW bins;
// bin (i, j) of output channel c is the mean of input channel c * PH * PW + i * PW + j sampled
// bilinearly (bilinear_clamped, the RoI Align convention) on a grid of sampling_ratio^2 points, or
// ceil(bin size) points per side when sampling_ratio <= 0. Where that adaptive grid has no point
// (a zero-height or zero-width RoI), the output is 0; torchvision divides 0 by 0 there (NaN).
#include <torch/library.h>

#include "common/bilinear.h"
#include "cpu/ps_roi_common.h"

namespace detector {
namespace {

// Four bilinear terms per sample point of bin (i, j); the divisor is the number of points.
template <typename T>
struct AlignFootprint {
  T spatial_scale;
  int64_t pooled_height, pooled_width, sampling_ratio, height, width;

  // The RoI's corner (shifted by -0.5 pixel), bin size and sample grid.
  struct Roi {
    T start_h, start_w, bin_h, bin_w;
    int64_t grid_h, grid_w;  // no sample point when either is 0
  };

  Roi prepare(const T* roi) const {
    const T start_w = roi[1] * spatial_scale - T(0.5);
    const T start_h = roi[2] * spatial_scale - T(0.5);
    const T roi_w = roi[3] * spatial_scale - T(0.5) - start_w;
    const T roi_h = roi[4] * spatial_scale - T(0.5) - start_h;
    const T bin_h = roi_h / static_cast<T>(pooled_height);
    const T bin_w = roi_w / static_cast<T>(pooled_width);
    return {start_h, start_w, bin_h, bin_w, grid_size(bin_h), grid_size(bin_w)};
  }

  void operator()(const Roi& roi, int64_t i, int64_t j, ps_roi::Footprint<T>& fp) const {
    if (roi.grid_h <= 0 || roi.grid_w <= 0) {
      return;  // no sample point: output 0
    }
    const T y0 = static_cast<T>(i) * roi.bin_h + roi.start_h;
    const T x0 = static_cast<T>(j) * roi.bin_w + roi.start_w;
    for (int64_t iy = 0; iy < roi.grid_h; ++iy) {
      const T y = y0 + static_cast<T>(iy + 0.5) * roi.bin_h / static_cast<T>(roi.grid_h);
      for (int64_t ix = 0; ix < roi.grid_w; ++ix) {
        const T x = x0 + static_cast<T>(ix + 0.5) * roi.bin_w / static_cast<T>(roi.grid_w);
        const Bilinear<T> s = bilinear_clamped(y, x, height, width);
        if (s.weight[0] == T(0) && s.weight[1] == T(0) && s.weight[2] == T(0) &&
            s.weight[3] == T(0)) {
          continue;  // more than a pixel outside the map: contributes 0
        }
        for (int n = 0; n < 4; ++n) {
          fp.add(s.index[n], s.weight[n]);
        }
      }
    }
    fp.divisor = static_cast<T>(roi.grid_h * roi.grid_w);
  }

  // Sample points per bin side: sampling_ratio, or ceil(bin size) when it is <= 0.
  int64_t grid_size(T bin_size) const {
    if (sampling_ratio > 0) {
      return sampling_ratio;
    }
    const T points = std::ceil(bin_size);
    return points < T(1) ? 0 : static_cast<int64_t>(std::min(points, T(1 << 20)));
  }
};

// Builds the footprints of a call for compute type T (ps_roi::forward_op).
auto align_footprint(double spatial_scale, int64_t sampling_ratio) {
  return [=](auto zero, const ps_roi::Shape& shape) {
    using T = decltype(zero);
    return AlignFootprint<T>{static_cast<T>(spatial_scale),
                             shape.pooled_height,
                             shape.pooled_width,
                             sampling_ratio,
                             shape.height,
                             shape.width};
  };
}

at::Tensor ps_roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_height,
                                    int64_t pooled_width, int64_t sampling_ratio) {
  return ps_roi::forward_op("ps_roi_align", input, rois, pooled_height, pooled_width,
                            align_footprint(spatial_scale, sampling_ratio));
}

at::Tensor ps_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                     double spatial_scale, int64_t pooled_height,
                                     int64_t pooled_width, int64_t sampling_ratio,
                                     int64_t batch_size, int64_t channels, int64_t height,
                                     int64_t width) {
  return ps_roi::backward_op("ps_roi_align backward", grad, rois, pooled_height, pooled_width,
                             batch_size, channels, height, width,
                             align_footprint(spatial_scale, sampling_ratio));
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("ps_roi_align", &ps_roi_align_forward_cpu);
  m.impl("_ps_roi_align_backward", &ps_roi_align_backward_cpu);
}

}  // namespace detector
