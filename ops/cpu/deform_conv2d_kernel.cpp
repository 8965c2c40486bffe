// CPU kernels of deform_conv2d (DCN v1 / v2), torchvision.ops.deform_conv2d's semantics.
//
// Forward, per image and per chunk of output positions:
//   columns (L, K) = bilinear samples of the NHWC input, one row per output position; a row holds,
//                    for each weight group wg, tap t and channel c of the group, at column
//                    wg * taps * Cw + t * Cw + c. The bilinear weights of a (position, tap, offset
//                    group) are computed once and applied to the group's channels (contiguous).
//   output[n][:, chunk] = W' (O, taps * Cw) x columns^T, one GEMM per weight group, where
//                    W' = weight permuted to (O, kh, kw, Cw).
// Backward, per image and chunk:
//   grad_columns (L, K) = grad_output^T x W'           (GEMM)
//   grad_W'            += grad_output x columns         (GEMM)
//   grad_offset, grad_mask per (position, tap, offset group) from the coordinate derivatives of
//                    the bilinear sample (each written by one thread, no conflicts)
//   grad_input (NHWC)  += col2im(grad_columns): each thread owns a channel range and scatters all
//                    positions and taps in a fixed order, so the result has the same bits for any
//                    thread count and no atomics are needed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/bilinear.h"
#include "cpu/cpu_utils.h"
#include "cpu/float32_compute.h"
#include "deform_conv2d.h"

namespace detector {
namespace {

// Target number of column elements per chunk (positions x K): a few MB, so the sampled columns
// are still in cache when the GEMM reads them, and the GEMM is still large.
constexpr int64_t kChunkElements = int64_t{1} << 20;

// MKL splits a GEMM's reduction over its threads when the other dimensions are small (a few
// output channels per group), so the bits of a product would depend on the thread count. The
// GEMMs here split their output into column blocks of a fixed width instead, each computed by one
// thread with MKL held to that thread: every output element is reduced in the same order
// whatever the thread count.
constexpr int64_t kGemmColumns = 64;

}  // namespace
}  // namespace detector

// MKL's per-thread thread count, C interface (exported by PyTorch's MKL builds; the lower-case
// `mkl_set_num_threads_local` symbol is the Fortran one, taking a pointer). Weak, so that builds
// of PyTorch without MKL load this library too (their BLAS is then left as it is).
extern "C" int MKL_Set_Num_Threads_Local(int num_threads) __attribute__((weak));

namespace detector {
namespace {

// Within its scope, MKL calls of this thread use one thread.
class OneBlasThread {
 public:
  OneBlasThread() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~OneBlasThread() {
    if (MKL_Set_Num_Threads_Local) {
      MKL_Set_Num_Threads_Local(previous_);  // 0 restores the global setting
    }
  }
  OneBlasThread(const OneBlasThread&) = delete;
  OneBlasThread& operator=(const OneBlasThread&) = delete;

 private:
  int previous_;
};

// out (M, N) = a (M, R) x b (R, N), or out += a x b with `accumulate`.
void gemm_in_column_blocks(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                           bool accumulate) {
  const int64_t n = out.size(1);
  const int64_t blocks = (n + kGemmColumns - 1) / kGemmColumns;
  at::parallel_for(0, blocks, 1, [&](int64_t first_block, int64_t last_block) {
    // Thread-local: the worker threads need the caller's "below autograd" dispatch too.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const OneBlasThread one_thread;
    for (int64_t k = first_block; k < last_block; ++k) {
      const int64_t first = k * kGemmColumns, width = std::min(kGemmColumns, n - first);
      at::Tensor block = out.narrow(1, first, width);
      if (accumulate) {
        block.addmm_(a, b.narrow(1, first, width));
      } else {
        at::mm_out(block, a, b.narrow(1, first, width));
      }
    }
  });
}

// Channels [begin, end) that share one offset group and one weight group: their column entries
// are contiguous. A channel c of the run sits at column `column + tap * Cw + (c - begin)`.
struct ChannelRun {
  int64_t begin, end;
  int64_t offset_group;
  int64_t column;
};

std::vector<ChannelRun> channel_runs(const DeformConvGeometry& g) {
  const int64_t cw = g.channels / g.groups, cg = g.channels / g.offset_groups;
  std::vector<ChannelRun> runs;
  for (int64_t c = 0; c < g.channels;) {
    const int64_t wg = c / cw, og = c / cg;
    const int64_t end = std::min((wg + 1) * cw, (og + 1) * cg);
    runs.push_back({c, end, og, wg * g.taps() * cw + (c - wg * cw)});
    c = end;
  }
  return runs;
}

// Everything the sampling loops of one image and one chunk of positions need.
template <typename T>
struct ChunkArgs {
  const DeformConvGeometry* geo;
  const ChannelRun* runs;
  int64_t num_runs;
  const T* input;         // (H, W, C) one image, channels last
  const T* offset;        // (2 * G * taps, P) one image
  const T* mask;          // (G * taps, P) one image, or nullptr
  int64_t first;          // first output position of the chunk
  T* columns;             // (L, K) forward: written; backward: unused
  const T* grad_columns;  // (L, K) backward only
  T* grad_offset;         // (2 * G * taps, P) one image, backward only
  T* grad_mask;           // (G * taps, P) one image, backward only (nullptr without a mask)
  Bilinear<T>* points;    // (L, taps, G) backward only: masked bilinear weights for col2im
};

// Sampling point of output position `pos`, tap `tap`, offset group `og` (torchvision's order of
// operations, so the coordinates have the same bits).
template <typename T>
inline void sample_coords(const DeformConvGeometry& g, const T* offset, int64_t pos, int64_t tap,
                          int64_t og, T& y, T& x) {
  const int64_t positions = g.positions();
  const int64_t oy = pos / g.out_w, ox = pos % g.out_w;
  const int64_t i = tap / g.kernel_w, j = tap % g.kernel_w;
  const int64_t channel = 2 * (og * g.taps() + tap);
  y = static_cast<T>(oy * g.stride_h - g.pad_h + i * g.dilation_h) +
      offset[channel * positions + pos];
  x = static_cast<T>(ox * g.stride_w - g.pad_w + j * g.dilation_w) +
      offset[(channel + 1) * positions + pos];
}

template <typename T>
inline T mask_value(const DeformConvGeometry& g, const T* mask, int64_t pos, int64_t tap,
                    int64_t og) {
  return mask == nullptr ? T(1) : mask[(og * g.taps() + tap) * g.positions() + pos];
}

// Forward im2col of chunk rows [begin, end).
template <typename T>
inline void im2col_rows_impl(const ChunkArgs<T>& a, int64_t begin, int64_t end) {
  const DeformConvGeometry& g = *a.geo;
  const int64_t taps = g.taps(), channels = g.channels, cw = g.channels / g.groups;
  const int64_t row_size = taps * channels;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t pos = a.first + p;
    T* row = a.columns + p * row_size;
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t og = 0; og < g.offset_groups; ++og) {
        T y, x;
        sample_coords(g, a.offset, pos, t, og, y, x);
        const Bilinear<T> b = bilinear_zero_padded(y, x, g.height, g.width);
        const T m = mask_value(g, a.mask, pos, t, og);
        const T w0 = b.weight[0] * m, w1 = b.weight[1] * m;
        const T w2 = b.weight[2] * m, w3 = b.weight[3] * m;
        for (int64_t r = 0; r < a.num_runs; ++r) {
          const ChannelRun& run = a.runs[r];
          if (run.offset_group != og) continue;
          T* dst = row + run.column + t * cw;
          const T* s0 = a.input + b.index[0] * channels + run.begin;
          const T* s1 = a.input + b.index[1] * channels + run.begin;
          const T* s2 = a.input + b.index[2] * channels + run.begin;
          const T* s3 = a.input + b.index[3] * channels + run.begin;
          const int64_t n = run.end - run.begin;
          for (int64_t c = 0; c < n; ++c) {
            dst[c] = w0 * s0[c] + w1 * s1[c] + w2 * s2[c] + w3 * s3[c];
          }
        }
      }
    }
  }
}

// Backward: offset and mask gradients of chunk rows [begin, end), and the masked bilinear
// weights of every sample for col2im.
template <typename T>
inline void coordinate_grad_rows_impl(const ChunkArgs<T>& a, int64_t begin, int64_t end) {
  const DeformConvGeometry& g = *a.geo;
  const int64_t taps = g.taps(), channels = g.channels, cw = g.channels / g.groups;
  const int64_t row_size = taps * channels, positions = g.positions();
  for (int64_t p = begin; p < end; ++p) {
    const int64_t pos = a.first + p;
    const T* grad_row = a.grad_columns + p * row_size;
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t og = 0; og < g.offset_groups; ++og) {
        T y, x;
        sample_coords(g, a.offset, pos, t, og, y, x);
        const BilinearGrad<T> bg = bilinear_zero_padded_grad(y, x, g.height, g.width);
        const T m = mask_value(g, a.mask, pos, t, og);
        const T w0 = bg.sample.weight[0], w1 = bg.sample.weight[1];
        const T w2 = bg.sample.weight[2], w3 = bg.sample.weight[3];
        const T dy0 = bg.dy[0], dy1 = bg.dy[1], dy2 = bg.dy[2], dy3 = bg.dy[3];
        const T dx0 = bg.dx[0], dx1 = bg.dx[1], dx2 = bg.dx[2], dx3 = bg.dx[3];
        T sum_value = 0, sum_dy = 0, sum_dx = 0;
        for (int64_t r = 0; r < a.num_runs; ++r) {
          const ChannelRun& run = a.runs[r];
          if (run.offset_group != og) continue;
          const T* grad = grad_row + run.column + t * cw;
          const T* s0 = a.input + bg.sample.index[0] * channels + run.begin;
          const T* s1 = a.input + bg.sample.index[1] * channels + run.begin;
          const T* s2 = a.input + bg.sample.index[2] * channels + run.begin;
          const T* s3 = a.input + bg.sample.index[3] * channels + run.begin;
          const int64_t n = run.end - run.begin;
#pragma omp simd reduction(+ : sum_value, sum_dy, sum_dx)
          for (int64_t c = 0; c < n; ++c) {
            const T v0 = s0[c], v1 = s1[c], v2 = s2[c], v3 = s3[c];
            sum_value += grad[c] * (w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3);
            sum_dy += grad[c] * (dy0 * v0 + dy1 * v1 + dy2 * v2 + dy3 * v3);
            sum_dx += grad[c] * (dx0 * v0 + dx1 * v1 + dx2 * v2 + dx3 * v3);
          }
        }
        const int64_t channel = 2 * (og * taps + t);
        a.grad_offset[channel * positions + pos] = m * sum_dy;
        a.grad_offset[(channel + 1) * positions + pos] = m * sum_dx;
        if (a.grad_mask != nullptr) {
          a.grad_mask[(og * taps + t) * positions + pos] = sum_value;
        }
        Bilinear<T>& point = a.points[(p * taps + t) * g.offset_groups + og];
        point = bg.sample;
        for (int i = 0; i < 4; ++i) point.weight[i] *= m;
      }
    }
  }
}

// Backward col2im of all `rows` chunk rows into the channels [c_begin, c_end) of one NHWC image
// of grad_input. The additions into an element happen in (row, tap, offset group, neighbour)
// order whatever the channel range, so the bits do not depend on the thread count.
template <typename T>
inline void col2im_channels_impl(const ChunkArgs<T>& a, int64_t rows, T* grad_input,
                                 int64_t c_begin, int64_t c_end) {
  const DeformConvGeometry& g = *a.geo;
  const int64_t taps = g.taps(), channels = g.channels, cw = g.channels / g.groups;
  const int64_t row_size = taps * channels;
  for (int64_t p = 0; p < rows; ++p) {
    const T* grad_row = a.grad_columns + p * row_size;
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t r = 0; r < a.num_runs; ++r) {
        const ChannelRun& run = a.runs[r];
        const int64_t lo = std::max(run.begin, c_begin), hi = std::min(run.end, c_end);
        if (lo >= hi) continue;
        const Bilinear<T>& point = a.points[(p * taps + t) * g.offset_groups + run.offset_group];
        const T* grad = grad_row + run.column + t * cw + (lo - run.begin);
        const int64_t n = hi - lo;
        for (int i = 0; i < 4; ++i) {
          const T w = point.weight[i];
          if (w == T(0)) continue;
          T* dst = grad_input + point.index[i] * channels + lo;
          for (int64_t c = 0; c < n; ++c) {
            dst[c] += w * grad[c];
          }
        }
      }
    }
  }
}

// The hot loops, compiled for several instruction sets (cpu_utils.h).
DETECTOR_SIMD_CLONES void im2col_rows(const ChunkArgs<float>& a, int64_t begin, int64_t end) {
  im2col_rows_impl(a, begin, end);
}
DETECTOR_SIMD_CLONES void im2col_rows(const ChunkArgs<double>& a, int64_t begin, int64_t end) {
  im2col_rows_impl(a, begin, end);
}
DETECTOR_SIMD_CLONES void coordinate_grad_rows(const ChunkArgs<float>& a, int64_t begin,
                                               int64_t end) {
  coordinate_grad_rows_impl(a, begin, end);
}
DETECTOR_SIMD_CLONES void coordinate_grad_rows(const ChunkArgs<double>& a, int64_t begin,
                                               int64_t end) {
  coordinate_grad_rows_impl(a, begin, end);
}
DETECTOR_SIMD_CLONES void col2im_channels(const ChunkArgs<float>& a, int64_t rows,
                                          float* grad_input, int64_t c_begin, int64_t c_end) {
  col2im_channels_impl(a, rows, grad_input, c_begin, c_end);
}
DETECTOR_SIMD_CLONES void col2im_channels(const ChunkArgs<double>& a, int64_t rows,
                                          double* grad_input, int64_t c_begin, int64_t c_end) {
  col2im_channels_impl(a, rows, grad_input, c_begin, c_end);
}

// Positions per chunk: about kChunkElements column entries, at most one image.
int64_t chunk_positions(const DeformConvGeometry& g) {
  const int64_t row_size = std::max<int64_t>(1, g.taps() * g.channels);
  return std::clamp<int64_t>(kChunkElements / row_size, 64, std::max<int64_t>(1, g.positions()));
}

// Grain of the position loops: enough channel work per task to amortize the scheduling.
int64_t row_grain(const DeformConvGeometry& g) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, g.taps() * g.channels));
}

// weight (O, Cw, kh, kw) -> W' (O, kh * kw * Cw), the column order of the im2col rows.
at::Tensor weight_as_matrix(const at::Tensor& weight) {
  return weight.permute({0, 2, 3, 1}).reshape({weight.size(0), -1}).contiguous();
}

at::Tensor deform_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& offset,
                                     const at::Tensor& weight,
                                     const std::optional<at::Tensor>& mask,
                                     const std::optional<at::Tensor>& bias, int64_t stride_h,
                                     int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                     int64_t dilation_h, int64_t dilation_w, int64_t groups,
                                     int64_t offset_groups) {
  const DeformConvGeometry g =
      deform_conv2d_geometry(input, offset, weight, mask, bias, stride_h, stride_w, pad_h, pad_w,
                             dilation_h, dilation_w, groups, offset_groups);
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  // (N, C, H, W) in NHWC memory order: a sample's channels are contiguous.
  const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor offset_c = offset.contiguous();
  const at::Tensor mask_c = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor w_matrix = weight_as_matrix(weight);  // (O, taps * Cw)
  const std::vector<ChannelRun> runs = channel_runs(g);
  const int64_t positions = g.positions(), row_size = g.taps() * g.channels;
  const int64_t chunk = chunk_positions(g), grain = row_grain(g);
  const int64_t group_k = row_size / g.groups, group_o = g.out_channels / g.groups;
  at::Tensor columns = at::empty({chunk, row_size}, input.options());
  // (N, O, H_out, W_out) -> (N, O, P)
  at::Tensor output_flat = output.view({g.batch, g.out_channels, positions});

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_forward_cpu", [&] {
    ChunkArgs<scalar_t> args{};
    args.geo = &g;
    args.runs = runs.data();
    args.num_runs = static_cast<int64_t>(runs.size());
    args.columns = columns.data_ptr<scalar_t>();
    for (int64_t n = 0; n < g.batch; ++n) {
      args.input = input_nhwc.data_ptr<scalar_t>() + n * g.channels * g.height * g.width;
      args.offset = offset_c.data_ptr<scalar_t>() + n * offset_c.stride(0);
      args.mask = mask_c.defined() ? mask_c.data_ptr<scalar_t>() + n * mask_c.stride(0) : nullptr;
      for (int64_t first = 0; first < positions; first += chunk) {
        const int64_t rows = std::min(chunk, positions - first);
        args.first = first;
        at::parallel_for(0, rows, grain,
                         [&](int64_t begin, int64_t end) { im2col_rows(args, begin, end); });
        const at::Tensor cols = columns.narrow(0, 0, rows);  // (L, K)
        for (int64_t wg = 0; wg < g.groups; ++wg) {
          // (O/groups, L) slice of this image's output
          at::Tensor out = output_flat[n].narrow(0, wg * group_o, group_o).narrow(1, first, rows);
          gemm_in_column_blocks(out, w_matrix.narrow(0, wg * group_o, group_o),
                                cols.narrow(1, wg * group_k, group_k).t(), false);
        }
      }
    }
  });
  if (bias.has_value()) {
    output.add_(bias->view({1, g.out_channels, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t groups, int64_t offset_groups) {
  // The op has no autograd formula of its own: run the ATen calls below autograd.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const DeformConvGeometry g =
      deform_conv2d_geometry(input, offset, weight, mask, std::nullopt, stride_h, stride_w, pad_h,
                             pad_w, dilation_h, dilation_w, groups, offset_groups);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch &&
                  grad_output.size(1) == g.out_channels && grad_output.size(2) == g.out_h &&
                  grad_output.size(3) == g.out_w,
              "deform_conv2d: expected `grad_output` of shape (", g.batch, ", ", g.out_channels,
              ", ", g.out_h, ", ", g.out_w, "), got ", grad_output.sizes());
  const int64_t positions = g.positions(), row_size = g.taps() * g.channels;
  const int64_t group_k = row_size / g.groups, group_o = g.out_channels / g.groups;
  // channels-last accumulator: (N, H, W, C)
  at::Tensor grad_input_nhwc = at::zeros({g.batch, g.height, g.width, g.channels}, input.options());
  at::Tensor grad_offset = at::empty(offset.sizes(), offset.options());
  at::Tensor grad_mask = mask.has_value() ? at::empty(mask->sizes(), mask->options())
                                          : at::empty({0}, input.options());
  at::Tensor grad_w_matrix = at::zeros({g.out_channels, group_k}, weight.options());
  at::Tensor grad_bias = grad_output.sum({0, 2, 3});
  if (g.batch > 0 && g.out_channels > 0 && g.channels > 0) {
    const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor offset_c = offset.contiguous();
    const at::Tensor mask_c = mask.has_value() ? mask->contiguous() : at::Tensor();
    // (N, O, H_out, W_out) -> (N, O, P)
    const at::Tensor grad_out_flat =
        grad_output.contiguous().view({g.batch, g.out_channels, positions});
    const at::Tensor w_matrix = weight_as_matrix(weight);  // (O, taps * Cw)
    const std::vector<ChannelRun> runs = channel_runs(g);
    const int64_t chunk = chunk_positions(g), grain = row_grain(g);
    at::Tensor columns = at::empty({chunk, row_size}, input.options());
    at::Tensor grad_columns = at::empty({chunk, row_size}, input.options());

    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
      std::vector<Bilinear<scalar_t>> points(chunk * g.taps() * g.offset_groups);
      ChunkArgs<scalar_t> args{};
      args.geo = &g;
      args.runs = runs.data();
      args.num_runs = static_cast<int64_t>(runs.size());
      args.columns = columns.data_ptr<scalar_t>();
      args.grad_columns = grad_columns.data_ptr<scalar_t>();
      args.points = points.data();
      const int64_t image = g.channels * g.height * g.width;
      for (int64_t n = 0; n < g.batch; ++n) {
        args.input = input_nhwc.data_ptr<scalar_t>() + n * image;
        args.offset = offset_c.data_ptr<scalar_t>() + n * offset_c.stride(0);
        args.mask = mask_c.defined() ? mask_c.data_ptr<scalar_t>() + n * mask_c.stride(0) : nullptr;
        args.grad_offset = grad_offset.data_ptr<scalar_t>() + n * grad_offset.stride(0);
        args.grad_mask =
            mask_c.defined() ? grad_mask.data_ptr<scalar_t>() + n * grad_mask.stride(0) : nullptr;
        scalar_t* grad_in = grad_input_nhwc.data_ptr<scalar_t>() + n * image;
        for (int64_t first = 0; first < positions; first += chunk) {
          const int64_t rows = std::min(chunk, positions - first);
          args.first = first;
          at::parallel_for(0, rows, grain,
                           [&](int64_t begin, int64_t end) { im2col_rows(args, begin, end); });
          const at::Tensor cols = columns.narrow(0, 0, rows);            // (L, K)
          const at::Tensor grad_cols = grad_columns.narrow(0, 0, rows);  // (L, K)
          for (int64_t wg = 0; wg < g.groups; ++wg) {
            // (O/groups, L) slice of this image's grad_output
            const at::Tensor grad_out =
                grad_out_flat[n].narrow(0, wg * group_o, group_o).narrow(1, first, rows);
            at::Tensor grad_cols_group = grad_cols.narrow(1, wg * group_k, group_k);
            const at::Tensor w_group = w_matrix.narrow(0, wg * group_o, group_o);
            // grad_cols_group (L, K/g) = grad_out^T x w_group, computed as its transpose
            gemm_in_column_blocks(grad_cols_group.t(), w_group.t(), grad_out, false);
            gemm_in_column_blocks(grad_w_matrix.narrow(0, wg * group_o, group_o), grad_out,
                                  cols.narrow(1, wg * group_k, group_k), true);
          }
          at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
            coordinate_grad_rows(args, begin, end);
          });
          at::parallel_for(0, g.channels, 8, [&](int64_t c_begin, int64_t c_end) {
            col2im_channels(args, rows, grad_in, c_begin, c_end);
          });
        }
      }
    });
  }
  at::Tensor grad_input = grad_input_nhwc.permute({0, 3, 1, 2}).contiguous();
  // (O, kh * kw * Cw) -> (O, Cw, kh, kw)
  at::Tensor grad_weight =
      grad_w_matrix.view({g.out_channels, g.kernel_h, g.kernel_w, group_k / g.taps()})
          .permute({0, 3, 1, 2})
          .contiguous();
  return {grad_input, grad_offset, grad_weight, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("deform_conv2d", &ComputeInFloat32<&deform_conv2d_forward_cpu>::run);
  m.impl("_deform_conv2d_backward", &ComputeInFloat32<&deform_conv2d_backward_cpu>::run);
}

}  // namespace detector
