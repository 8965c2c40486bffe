// Bilinear sampling shared by the CPU and CUDA kernels (RoI Align, PS RoI Align, deformable ops).
//
// A sample point (y, x) in feature-map pixels is reduced to its four neighbours and their weights,
// computed once and then applied to every channel:
//   value = sum_i weight[i] * plane[index[i]],   index = y_i * width + x_i (pixel index in an HxW
//   plane)
// Multiply an index by the channel count for channels-last (NHWC) data.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define DETECTOR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DETECTOR_HOST_DEVICE inline
#endif

namespace detector {

template <typename T>
struct Bilinear {
  int64_t index[4];  // top-left, top-right, bottom-left, bottom-right pixel indices
  T weight[4];       // zero for neighbours that contribute nothing (their index is 0)
};

template <typename T>
DETECTOR_HOST_DEVICE Bilinear<T> bilinear_zero() {
  Bilinear<T> b;
  for (int i = 0; i < 4; ++i) {
    b.index[i] = 0;
    b.weight[i] = T(0);
  }
  return b;
}

// One coordinate of a RoI Align sample point (see bilinear_clamped): its two neighbours along an
// axis of `size` pixels and their weights. A coordinate more than one pixel outside the map is not
// `inside` (neighbours 0, weights 0); otherwise it is clamped into [0, size - 1].
template <typename T>
struct ClampedAxis {
  bool inside;
  int64_t low, high;  // neighbour pixels along the axis (low <= high)
  T low_weight;       // 1 - frac, the weight of `low`  (hy, hx in torchvision)
  T high_weight;      // frac, the weight of `high`     (ly, lx)
};

template <typename T>
DETECTOR_HOST_DEVICE ClampedAxis<T> clamped_axis(T v, int64_t size) {
  ClampedAxis<T> a;
  a.inside = !(v < T(-1) || v > T(size));
  if (!a.inside) {
    a.low = a.high = 0;
    a.low_weight = a.high_weight = T(0);
    return a;
  }
  if (v <= T(0)) v = T(0);
  a.low = static_cast<int64_t>(v);
  if (a.low >= size - 1) {
    a.high = a.low = size - 1;
    v = static_cast<T>(a.low);
  } else {
    a.high = a.low + 1;
  }
  a.high_weight = v - static_cast<T>(a.low);
  a.low_weight = T(1) - a.high_weight;
  return a;
}

// RoI Align convention (Detectron, torchvision.ops.roi_align): a point more than one pixel
// outside the map contributes nothing; otherwise it is clamped into [0, size - 1]. The weights are
// products of the two axes' weights (clamped_axis), so a caller may also form them axis by axis.
template <typename T>
DETECTOR_HOST_DEVICE Bilinear<T> bilinear_clamped(T y, T x, int64_t height, int64_t width) {
  const ClampedAxis<T> ay = clamped_axis(y, height), ax = clamped_axis(x, width);
  if (!ay.inside || !ax.inside) {
    return bilinear_zero<T>();
  }
  Bilinear<T> b;
  b.index[0] = ay.low * width + ax.low;
  b.index[1] = ay.low * width + ax.high;
  b.index[2] = ay.high * width + ax.low;
  b.index[3] = ay.high * width + ax.high;
  b.weight[0] = ay.low_weight * ax.low_weight;
  b.weight[1] = ay.low_weight * ax.high_weight;
  b.weight[2] = ay.high_weight * ax.low_weight;
  b.weight[3] = ay.high_weight * ax.high_weight;
  return b;
}

// Deformable convolution convention (DCN, torchvision.ops.deform_conv2d): the map is padded with
// zeros, so neighbours outside it contribute nothing and a point at least one pixel outside is 0.
// The four neighbours of a point less than a pixel outside (shared by the sample and its
// derivatives): the top-left one, the fractional parts, and which neighbours lie inside the map
// (Bilinear's order: top-left, top-right, bottom-left, bottom-right).
template <typename T>
struct PaddedNeighbours {
  int64_t y_low, x_low;
  T ly, lx, hy, hx;  // ly = y - y_low, hy = 1 - ly (likewise for x)
  bool valid[4];
};

template <typename T>
DETECTOR_HOST_DEVICE PaddedNeighbours<T> padded_neighbours(T y, T x, int64_t height,
                                                           int64_t width) {
  PaddedNeighbours<T> n;
  n.y_low = static_cast<int64_t>(floor(y));
  n.x_low = static_cast<int64_t>(floor(x));
  n.ly = y - static_cast<T>(n.y_low);
  n.lx = x - static_cast<T>(n.x_low);
  n.hy = T(1) - n.ly;
  n.hx = T(1) - n.lx;
  const bool top = n.y_low >= 0, bottom = n.y_low + 1 <= height - 1;
  const bool left = n.x_low >= 0, right = n.x_low + 1 <= width - 1;
  n.valid[0] = top && left;
  n.valid[1] = top && right;
  n.valid[2] = bottom && left;
  n.valid[3] = bottom && right;
  return n;
}

template <typename T>
DETECTOR_HOST_DEVICE bool outside_padded(T y, T x, int64_t height, int64_t width) {
  return y <= T(-1) || T(height) <= y || x <= T(-1) || T(width) <= x;
}

template <typename T>
DETECTOR_HOST_DEVICE Bilinear<T> bilinear_zero_padded(T y, T x, int64_t height, int64_t width) {
  Bilinear<T> b = bilinear_zero<T>();
  if (outside_padded(y, x, height, width)) {
    return b;
  }
  const PaddedNeighbours<T> n = padded_neighbours(y, x, height, width);
  const int64_t y_high = n.y_low + 1, x_high = n.x_low + 1;
  const int64_t index[4] = {n.y_low * width + n.x_low, n.y_low * width + x_high,
                            y_high * width + n.x_low, y_high * width + x_high};
  const T weight[4] = {n.hy * n.hx, n.hy * n.lx, n.ly * n.hx, n.ly * n.lx};
  for (int i = 0; i < 4; ++i) {
    if (n.valid[i]) {
      b.index[i] = index[i];
      b.weight[i] = weight[i];
    }
  }
  return b;
}

// Derivatives of a bilinear sample with respect to its coordinates, for offset gradients:
//   d value / d y = sum_i dy[i] * plane[index[i]],   d value / d x = sum_i dx[i] * plane[index[i]].
// Where a coordinate was clamped (RoI Align convention) or the point lies outside, they are 0.
template <typename T>
struct BilinearGrad {
  Bilinear<T> sample;
  T dy[4];
  T dx[4];
};

// bilinear_zero_padded and its coordinate derivatives (a missing neighbour counts as 0).
template <typename T>
DETECTOR_HOST_DEVICE BilinearGrad<T> bilinear_zero_padded_grad(T y, T x, int64_t height,
                                                               int64_t width) {
  BilinearGrad<T> g;
  g.sample = bilinear_zero<T>();
  for (int i = 0; i < 4; ++i) g.dy[i] = g.dx[i] = T(0);
  if (outside_padded(y, x, height, width)) {
    return g;
  }
  g.sample = bilinear_zero_padded(y, x, height, width);
  const PaddedNeighbours<T> n = padded_neighbours(y, x, height, width);
  const T dys[4] = {-n.hx, -n.lx, n.hx, n.lx};
  const T dxs[4] = {-n.hy, n.hy, -n.ly, n.ly};
  for (int i = 0; i < 4; ++i) {
    g.dy[i] = n.valid[i] ? dys[i] : T(0);
    g.dx[i] = n.valid[i] ? dxs[i] : T(0);
  }
  return g;
}

// bilinear_clamped and its coordinate derivatives (0 along a clamped coordinate).
template <typename T>
DETECTOR_HOST_DEVICE BilinearGrad<T> bilinear_clamped_grad(T y, T x, int64_t height,
                                                           int64_t width) {
  BilinearGrad<T> g;
  g.sample = bilinear_clamped(y, x, height, width);
  for (int i = 0; i < 4; ++i) g.dy[i] = g.dx[i] = T(0);
  if (y < T(-1) || y > T(height) || x < T(-1) || x > T(width)) {
    return g;
  }
  const bool y_free = y > T(0) && static_cast<int64_t>(y) < height - 1;
  const bool x_free = x > T(0) && static_cast<int64_t>(x) < width - 1;
  const T yc = y <= T(0) ? T(0) : y, xc = x <= T(0) ? T(0) : x;
  const T ly = y_free ? yc - static_cast<T>(static_cast<int64_t>(yc)) : T(0);
  const T lx = x_free ? xc - static_cast<T>(static_cast<int64_t>(xc)) : T(0);
  const T hy = T(1) - ly, hx = T(1) - lx;
  const T dys[4] = {-hx, -lx, hx, lx};
  const T dxs[4] = {-hy, hy, -ly, ly};
  for (int i = 0; i < 4; ++i) {
    g.dy[i] = y_free ? dys[i] : T(0);
    g.dx[i] = x_free ? dxs[i] : T(0);
  }
  return g;
}

}  // namespace detector
