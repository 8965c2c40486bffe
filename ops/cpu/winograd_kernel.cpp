// CPU kernels of the Winograd F(2x2, 3x3) transforms (the math and shapes are in ops/winograd.cpp).
//
// Each kernel handles one (image, channel) plane at a time, in parallel over planes, one tile row
// at a time: the rows a tile row needs are split into their even and odd columns, so that every
// transform is a contiguous loop over the tw tiles of the row (vectorized by the compiler).
// Every output element is written by one thread in a fixed order, so the results do not depend on
// the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "cpu/recycled_memory.h"

namespace detector {
namespace winograd_cpu {

constexpr int64_t kPositions = 16;  // 4 x 4 transform positions xi = 4 * i + j

// Sizes of one transform: N images, C channels of H x W, th x tw tiles per image.
struct Tiling {
  int64_t batch, channels, height, width;
  int64_t th() const { return (height + 1) / 2; }
  int64_t tw() const { return (width + 1) / 2; }
  int64_t tiles() const { return batch * th() * tw(); }
  int64_t plane() const { return height * width; }
  // First tile of image n in the T dimension.
  int64_t tile_base(int64_t n) const { return n * th() * tw(); }
};

// Planes per parallel task: enough elements that a task outweighs its scheduling.
int64_t plane_grain(const Tiling& t) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(t.plane(), 1));
}

// even[m] = row[2m - 1], odd[m] = row[2m] for m in [0, tw]: the even and odd columns of the row
// padded by one zero column on the left (and zeros past `width`). row == nullptr: a zero row.
template <typename T>
void split_padded_row(const T* row, int64_t width, int64_t tw, T* even, T* odd) {
  for (int64_t m = 0; m <= tw; ++m) {
    even[m] = (row != nullptr && m > 0 && 2 * m - 1 < width) ? row[2 * m - 1] : T(0);
    odd[m] = (row != nullptr && 2 * m < width) ? row[2 * m] : T(0);
  }
}

// even[m] = row[2m], odd[m] = row[2m + 1] for m in [0, tw) (zeros past `width`; a zero row for
// row == nullptr): the two output columns of each tile.
template <typename T>
void split_tile_row(const T* row, int64_t width, int64_t tw, T* even, T* odd) {
  for (int64_t m = 0; m < tw; ++m) {
    even[m] = (row != nullptr && 2 * m < width) ? row[2 * m] : T(0);
    odd[m] = (row != nullptr && 2 * m + 1 < width) ? row[2 * m + 1] : T(0);
  }
}

// ---------------------------------------------------------------------------------------------
// Input transform: v[xi][c][t] = (B^T d B)[i][j] of tile t's 4x4 window d.
//   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]

// h[j][tx] = (d B)[j] of the 4 columns of tile tx in one padded row (even/odd split).
template <typename T>
void row_times_b(const T* even, const T* odd, int64_t tw, T* const h[4]) {
  for (int64_t x = 0; x < tw; ++x) {
    h[0][x] = even[x] - even[x + 1];
    h[1][x] = odd[x] + even[x + 1];
    h[2][x] = even[x + 1] - odd[x];
    h[3][x] = odd[x] - odd[x + 1];
  }
}

template <typename T>
void input_transform_plane(const T* x, const Tiling& t, T* v, int64_t c, int64_t n) {
  const int64_t th = t.th(), tw = t.tw(), tiles = t.tiles();
  std::vector<T> even(tw + 1), odd(tw + 1), rows(4 * 4 * tw);  // rows: [4 rows][4 j][tw]
  T* h[4][4];
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j < 4; ++j) h[i][j] = rows.data() + (4 * i + j) * tw;
  }
  for (int64_t ty = 0; ty < th; ++ty) {
    // Rows 2ty-1 .. 2ty+2; the first two are the last two of the previous tile row.
    if (ty > 0) {
      std::swap(h[0], h[2]);
      std::swap(h[1], h[3]);
    }
    for (int64_t i = ty > 0 ? 2 : 0; i < 4; ++i) {
      const int64_t r = 2 * ty - 1 + i;
      split_padded_row(r >= 0 && r < t.height ? x + r * t.width : nullptr, t.width, tw, even.data(),
                       odd.data());
      row_times_b(even.data(), odd.data(), tw, h[i]);
    }
    const int64_t base = t.tile_base(n) + ty * tw;
    for (int64_t j = 0; j < 4; ++j) {
      T* v0 = v + ((0 + j) * t.channels + c) * tiles + base;
      T* v1 = v + ((4 + j) * t.channels + c) * tiles + base;
      T* v2 = v + ((8 + j) * t.channels + c) * tiles + base;
      T* v3 = v + ((12 + j) * t.channels + c) * tiles + base;
      const T *h0 = h[0][j], *h1 = h[1][j], *h2 = h[2][j], *h3 = h[3][j];
      for (int64_t tx = 0; tx < tw; ++tx) {
        v0[tx] = h0[tx] - h2[tx];
        v1[tx] = h1[tx] + h2[tx];
        v2[tx] = h2[tx] - h1[tx];
        v3[tx] = h1[tx] - h3[tx];
      }
    }
  }
}

// Adjoint of the input transform: g (16, C, T) -> gx (N, C, H, W); overlapping windows add up.
template <typename T>
void input_transform_backward_plane(const T* g, const Tiling& t, T* gx, int64_t c, int64_t n) {
  const int64_t th = t.th(), tw = t.tw(), tiles = t.tiles();
  const int64_t pw = 2 * tw + 2;                // padded row length
  std::vector<T> acc((2 * th + 2) * pw, T(0));  // padded plane, row 0 / col 0 = index -1
  std::vector<T> gh(4 * 4 * tw), gd(4 * tw);    // gh: [4 rows i][4 j][tw]; gd: [4 cols][tw]
  for (int64_t ty = 0; ty < th; ++ty) {
    const int64_t base = t.tile_base(n) + ty * tw;
    for (int64_t j = 0; j < 4; ++j) {  // adjoint of the column transform (rows i of B^T)
      const T* g0 = g + ((0 + j) * t.channels + c) * tiles + base;
      const T* g1 = g + ((4 + j) * t.channels + c) * tiles + base;
      const T* g2 = g + ((8 + j) * t.channels + c) * tiles + base;
      const T* g3 = g + ((12 + j) * t.channels + c) * tiles + base;
      T *h0 = &gh[(0 + j) * tw], *h1 = &gh[(4 + j) * tw], *h2 = &gh[(8 + j) * tw],
        *h3 = &gh[(12 + j) * tw];
      for (int64_t tx = 0; tx < tw; ++tx) {
        h0[tx] = g0[tx];
        h1[tx] = g1[tx] - g2[tx] + g3[tx];
        h2[tx] = -g0[tx] + g1[tx] + g2[tx];
        h3[tx] = -g3[tx];
      }
    }
    for (int64_t i = 0; i < 4; ++i) {  // adjoint of the row transform, added into padded row
      const T *h0 = &gh[(4 * i + 0) * tw], *h1 = &gh[(4 * i + 1) * tw], *h2 = &gh[(4 * i + 2) * tw],
              *h3 = &gh[(4 * i + 3) * tw];
      T *d0 = &gd[0], *d1 = &gd[tw], *d2 = &gd[2 * tw], *d3 = &gd[3 * tw];
      for (int64_t tx = 0; tx < tw; ++tx) {
        d0[tx] = h0[tx];
        d1[tx] = h1[tx] - h2[tx] + h3[tx];
        d2[tx] = -h0[tx] + h1[tx] + h2[tx];
        d3[tx] = -h3[tx];
      }
      T* row = acc.data() + (2 * ty + i) * pw;
      for (int64_t tx = 0; tx < tw; ++tx) {  // tile tx covers padded columns 2tx .. 2tx+3
        row[2 * tx] += d0[tx];
        row[2 * tx + 1] += d1[tx];
      }
      for (int64_t tx = 0; tx < tw; ++tx) {
        row[2 * tx + 2] += d2[tx];
        row[2 * tx + 3] += d3[tx];
      }
    }
  }
  for (int64_t r = 0; r < t.height; ++r) {  // padded (r + 1, s + 1) is input (r, s)
    std::memcpy(gx + r * t.width, acc.data() + (r + 1) * pw + 1, t.width * sizeof(T));
  }
}

// ---------------------------------------------------------------------------------------------
// Output transform: y_tile = A^T m A (+ bias), A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].

template <typename T>
void output_transform_plane(const T* m, const T* bias, const Tiling& t, T* y, int64_t k,
                            int64_t n) {
  const int64_t th = t.th(), tw = t.tw(), tiles = t.tiles();
  const T b = bias != nullptr ? bias[k] : T(0);
  std::vector<T> top(2 * tw), bottom(2 * tw);  // output rows 2ty and 2ty+1, 2 tw columns
  for (int64_t ty = 0; ty < th; ++ty) {
    const int64_t base = t.tile_base(n) + ty * tw;
    const T* s[kPositions];
    for (int64_t xi = 0; xi < kPositions; ++xi) s[xi] = m + (xi * t.channels + k) * tiles + base;
    for (int64_t tx = 0; tx < tw; ++tx) {
      T a[4], c[4];  // rows of A^T m
      for (int64_t j = 0; j < 4; ++j) {
        a[j] = s[j][tx] + s[4 + j][tx] + s[8 + j][tx];
        c[j] = s[4 + j][tx] - s[8 + j][tx] - s[12 + j][tx];
      }
      top[2 * tx] = a[0] + a[1] + a[2] + b;
      top[2 * tx + 1] = a[1] - a[2] - a[3] + b;
      bottom[2 * tx] = c[0] + c[1] + c[2] + b;
      bottom[2 * tx + 1] = c[1] - c[2] - c[3] + b;
    }
    T* out = y + 2 * ty * t.width;
    std::memcpy(out, top.data(), t.width * sizeof(T));
    if (2 * ty + 1 < t.height) {
      std::memcpy(out + t.width, bottom.data(), t.width * sizeof(T));
    }
  }
}

// (d0, d1, d2, d3) = (a, a + c, a - c, -c), element-wise over n values.
template <typename T>
void butterfly(const T* __restrict__ a, const T* __restrict__ c, int64_t n, T* __restrict__ d0,
               T* __restrict__ d1, T* __restrict__ d2, T* __restrict__ d3) {
  for (int64_t x = 0; x < n; ++x) {
    d0[x] = a[x];
    d1[x] = a[x] + c[x];
    d2[x] = a[x] - c[x];
    d3[x] = -c[x];
  }
}

// Adjoint of the output transform (without the bias): gy (N, K, H, W) -> g (16, K, T).
template <typename T>
void output_transform_backward_plane(const T* gy, const Tiling& t, T* g, int64_t k, int64_t n) {
  const int64_t th = t.th(), tw = t.tw(), tiles = t.tiles();
  std::vector<T> split(4 * tw), rows(8 * tw);  // split: e0, o0, e1, o1; rows: a[4], c[4]
  T *e0 = &split[0], *o0 = &split[tw], *e1 = &split[2 * tw], *o1 = &split[3 * tw];
  for (int64_t ty = 0; ty < th; ++ty) {
    const T* top = gy + 2 * ty * t.width;
    split_tile_row(top, t.width, tw, e0, o0);
    split_tile_row(2 * ty + 1 < t.height ? top + t.width : nullptr, t.width, tw, e1, o1);
    // Adjoint of the row transform: the gradients of the rows a and c of A^T m, per column j.
    butterfly(e0, o0, tw, &rows[0], &rows[tw], &rows[2 * tw], &rows[3 * tw]);
    butterfly(e1, o1, tw, &rows[4 * tw], &rows[5 * tw], &rows[6 * tw], &rows[7 * tw]);
    const int64_t base = t.tile_base(n) + ty * tw;
    for (int64_t j = 0; j < 4; ++j) {  // adjoint of the column transform
      T* d[4];
      for (int64_t i = 0; i < 4; ++i) d[i] = g + ((4 * i + j) * t.channels + k) * tiles + base;
      butterfly(&rows[j * tw], &rows[(4 + j) * tw], tw, d[0], d[1], d[2], d[3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Drivers: parallel over (image, channel) planes.

// Calls fn(n, c) for every plane, in parallel, images fastest: the tiles of consecutive planes
// are then adjacent in the (16, C, T) tensors (T = image-major tiles), so that their rows are
// written and read in long runs even for small maps (a 14 x 14 map has 49 tiles).
template <typename Fn>
void for_each_plane(const Tiling& t, const Fn& fn) {
  at::parallel_for(0, t.batch * t.channels, plane_grain(t), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) fn(p % t.batch, p / t.batch);
  });
}

void check_float(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": `", name,
                   "` must be float32 or float64, got ", x.scalar_type());
}

// Checks `m` (16, K, T) against the tiling of (batch, height, width) and returns it.
Tiling checked_tiling(const char* op, const at::Tensor& m, int64_t batch, int64_t height,
                      int64_t width) {
  TORCH_CHECK_VALUE(batch >= 0 && height > 0 && width > 0, op,
                    ": `batch` must be >= 0 and `height`, `width` positive, got ", batch, ", ",
                    height, ", ", width);
  TORCH_CHECK_VALUE(m.dim() == 3 && m.size(0) == kPositions, op,
                    ": expected a (16, channels, tiles) tensor, got ", m.sizes());
  const Tiling t{batch, m.size(1), height, width};
  TORCH_CHECK_VALUE(m.size(2) == t.tiles(), op, ": ", m.size(2), " tiles do not match batch ",
                    batch, " of ", height, "x", width, " (", t.tiles(), " tiles of 2x2)");
  check_float(op, "m", m);
  return t;
}

// Runs plane_fn(plane, tiling, out, channel, image) over every plane of `maps` (N, C, H, W) into a
// fresh (16, C, T) tensor: the input transform and the adjoint of the output transform.
template <typename PlaneFn>
at::Tensor maps_to_tiles(const char* op, const char* name, const at::Tensor& maps,
                         const PlaneFn& plane_fn) {
  TORCH_CHECK_VALUE(maps.dim() == 4 && maps.size(2) > 0 && maps.size(3) > 0, op, ": `", name,
                    "` must be (N, C, H, W) with H, W > 0, got ", maps.sizes());
  check_float(op, name, maps);
  const at::Tensor x = maps.contiguous();
  const Tiling t{x.size(0), x.size(1), x.size(2), x.size(3)};
  at::Tensor tiles = recycled_empty({kPositions, t.channels, t.tiles()}, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_maps_to_tiles", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = tiles.mutable_data_ptr<scalar_t>();
    for_each_plane(t, [&](int64_t n, int64_t c) {
      plane_fn(src + (n * t.channels + c) * t.plane(), t, dst, c, n);
    });
  });
  return tiles;
}

at::Tensor input_transform(const at::Tensor& input) {
  return maps_to_tiles("winograd_input_transform", "input", input,
                       [](const auto* x, const Tiling& t, auto* v, int64_t c, int64_t n) {
                         input_transform_plane(x, t, v, c, n);
                       });
}

at::Tensor input_transform_backward(const at::Tensor& grad, int64_t batch, int64_t height,
                                    int64_t width) {
  constexpr const char* op = "_winograd_input_transform_backward";
  const Tiling t = checked_tiling(op, grad, batch, height, width);
  const at::Tensor g = grad.contiguous();
  at::Tensor gx = recycled_empty({batch, t.channels, height, width}, g.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), op, [&] {
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = gx.mutable_data_ptr<scalar_t>();
    for_each_plane(t, [&](int64_t n, int64_t c) {
      input_transform_backward_plane(src, t, dst + (n * t.channels + c) * t.plane(), c, n);
    });
  });
  return gx;
}

at::Tensor output_transform(const at::Tensor& m, const std::optional<at::Tensor>& bias,
                            int64_t batch, int64_t height, int64_t width) {
  constexpr const char* op = "winograd_output_transform";
  const Tiling t = checked_tiling(op, m, batch, height, width);
  const at::Tensor src = m.contiguous();
  at::Tensor b;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == t.channels, op,
                      ": `bias` must have shape (", t.channels, "), got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == m.scalar_type(), op,
                     ": `bias` must have the dtype of `m`");
    b = bias->contiguous();
  }
  at::Tensor y = recycled_empty({batch, t.channels, height, width}, src.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), op, [&] {
    const scalar_t* s = src.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    for_each_plane(t, [&](int64_t n, int64_t k) {
      output_transform_plane(s, bp, t, dst + (n * t.channels + k) * t.plane(), k, n);
    });
  });
  return y;
}

at::Tensor output_transform_backward(const at::Tensor& grad) {
  return maps_to_tiles("_winograd_output_transform_backward", "grad", grad,
                       [](const auto* gy, const Tiling& t, auto* g, int64_t k, int64_t n) {
                         output_transform_backward_plane(gy, t, g, k, n);
                       });
}

}  // namespace winograd_cpu

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("winograd_input_transform", &winograd_cpu::input_transform);
  m.impl("_winograd_input_transform_backward", &winograd_cpu::input_transform_backward);
  m.impl("winograd_output_transform", &winograd_cpu::output_transform);
  m.impl("_winograd_output_transform_backward", &winograd_cpu::output_transform_backward);
}

}  // namespace detector
