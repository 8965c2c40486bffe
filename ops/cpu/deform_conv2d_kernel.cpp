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
//
// float16 and bfloat16 (deform_conv2d_forward_reduced / deform_conv2d_backward_reduced): the
// columns, GEMMs, sums and gradient accumulators are float32 (the weight is converted once per
// call, it is small); each result is rounded once to the dtype when stored. bfloat16 input, offset
// and mask values are read in place (as their 16 bits: widening is a shift, which vectorizes) and
// converted while sampling; float16 ones are converted to float32 one image at a time (GCC 12
// does not vectorize float16 conversions). The GEMMs run in float32 (MKL): at::mm in bfloat16
// (oneDNN) measured 3-6x slower than MKL's float32 GEMM on the benchmark machine, an AVX-512 CPU
// without AVX512-BF16 or AMX (on one with them a bfloat16 GEMM may win: not measured). Chunks and
// GEMM column blocks have their own sizes (kReducedChunkElements, kReducedGemmColumns), fixed: the
// same bits for any thread count. The hot loops are inlined into their instruction-set clones
// (ReducedLoops), so they run AVX2/AVX-512 code.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/bilinear.h"
#include "cpu/cpu_utils.h"
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

// The float16/bfloat16 paths' chunks and (float32) GEMM column blocks: 1 MB of float32 columns
// (so that the columns, and in backward their gradients, stay in L2 between the sampling loops
// and the GEMMs) and blocks of 128 (fewer, larger GEMMs than 64; still a few blocks per chunk
// for the threads). Measured on 1x64x100x100, 3x3, 64 out channels: about 10% faster than 4 MB
// chunks and blocks of 64. The float32 and float64 paths keep kChunkElements and kGemmColumns,
// and so their results' bits.
constexpr int64_t kReducedChunkElements = int64_t{1} << 18;
constexpr int64_t kReducedGemmColumns = 128;

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

// out (M, N) = a (M, R) x b (R, N), or out += a x b with `accumulate`, in column blocks of
// `block_width`.
void gemm_in_column_blocks(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                           bool accumulate, int64_t block_width = kGemmColumns) {
  const int64_t n = out.size(1);
  const int64_t blocks = (n + block_width - 1) / block_width;
  at::parallel_for(0, blocks, 1, [&](int64_t first_block, int64_t last_block) {
    // Thread-local: the worker threads need the caller's "below autograd" dispatch too.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const OneBlasThread one_thread;
    for (int64_t k = first_block; k < last_block; ++k) {
      const int64_t first = k * block_width, width = std::min(block_width, n - first);
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

// How the sampling loops read input, offset and mask values (`In`): float and double as
// themselves, bfloat16 as its 16 bits (uint16_t), widened to float by a shift.
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
inline float widen(uint16_t bfloat16_bits) {
  const uint32_t bits = uint32_t{bfloat16_bits} << 16;
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// Everything the sampling loops of one image and one chunk of positions need. `In` is the type
// the input, offset and mask are read as (see widen), T the compute type (the columns, the
// gradients and the bilinear weights).
template <typename In, typename T>
struct ChunkArgs {
  const DeformConvGeometry* geo;
  const ChannelRun* runs;
  int64_t num_runs;
  const In* input;        // (H, W, C) one image, channels last
  const In* offset;       // (2 * G * taps, P) one image
  const In* mask;         // (G * taps, P) one image, or nullptr
  int64_t first;          // first output position of the chunk
  T* columns;             // (L, K) forward: written; backward: unused
  const T* grad_columns;  // (L, K) backward only
  T* grad_offset;         // (2 * G * taps, P) one image, backward only
  T* grad_mask;           // (G * taps, P) one image, backward only (nullptr without a mask)
  Bilinear<T>* points;    // (L, taps, G) backward only: masked bilinear weights for col2im
};

// Sampling point of output position `pos`, tap `tap`, offset group `og` (torchvision's order of
// operations, so the coordinates have the same bits).
template <typename In, typename T>
inline void sample_coords(const DeformConvGeometry& g, const In* offset, int64_t pos, int64_t tap,
                          int64_t og, T& y, T& x) {
  const int64_t positions = g.positions();
  const int64_t oy = pos / g.out_w, ox = pos % g.out_w;
  const int64_t i = tap / g.kernel_w, j = tap % g.kernel_w;
  const int64_t channel = 2 * (og * g.taps() + tap);
  y = static_cast<T>(oy * g.stride_h - g.pad_h + i * g.dilation_h) +
      widen(offset[channel * positions + pos]);
  x = static_cast<T>(ox * g.stride_w - g.pad_w + j * g.dilation_w) +
      widen(offset[(channel + 1) * positions + pos]);
}

template <typename T, typename In>
inline T mask_value(const DeformConvGeometry& g, const In* mask, int64_t pos, int64_t tap,
                    int64_t og) {
  return mask == nullptr ? T(1) : widen(mask[(og * g.taps() + tap) * g.positions() + pos]);
}

// Forward im2col of chunk rows [begin, end).
template <typename In, typename T>
inline void im2col_rows_impl(const ChunkArgs<In, T>& a, int64_t begin, int64_t end) {
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
        const T m = mask_value<T>(g, a.mask, pos, t, og);
        const T w0 = b.weight[0] * m, w1 = b.weight[1] * m;
        const T w2 = b.weight[2] * m, w3 = b.weight[3] * m;
        for (int64_t r = 0; r < a.num_runs; ++r) {
          const ChannelRun& run = a.runs[r];
          if (run.offset_group != og) continue;
          T* dst = row + run.column + t * cw;
          const In* s0 = a.input + b.index[0] * channels + run.begin;
          const In* s1 = a.input + b.index[1] * channels + run.begin;
          const In* s2 = a.input + b.index[2] * channels + run.begin;
          const In* s3 = a.input + b.index[3] * channels + run.begin;
          const int64_t n = run.end - run.begin;
          for (int64_t c = 0; c < n; ++c) {
            dst[c] = w0 * widen(s0[c]) + w1 * widen(s1[c]) + w2 * widen(s2[c]) + w3 * widen(s3[c]);
          }
        }
      }
    }
  }
}

// Backward: offset and mask gradients of chunk rows [begin, end), and the masked bilinear
// weights of every sample for col2im.
template <typename In, typename T>
inline void coordinate_grad_rows_impl(const ChunkArgs<In, T>& a, int64_t begin, int64_t end) {
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
        const T m = mask_value<T>(g, a.mask, pos, t, og);
        const T w0 = bg.sample.weight[0], w1 = bg.sample.weight[1];
        const T w2 = bg.sample.weight[2], w3 = bg.sample.weight[3];
        const T dy0 = bg.dy[0], dy1 = bg.dy[1], dy2 = bg.dy[2], dy3 = bg.dy[3];
        const T dx0 = bg.dx[0], dx1 = bg.dx[1], dx2 = bg.dx[2], dx3 = bg.dx[3];
        T sum_value = 0, sum_dy = 0, sum_dx = 0;
        for (int64_t r = 0; r < a.num_runs; ++r) {
          const ChannelRun& run = a.runs[r];
          if (run.offset_group != og) continue;
          const T* grad = grad_row + run.column + t * cw;
          const In* s0 = a.input + bg.sample.index[0] * channels + run.begin;
          const In* s1 = a.input + bg.sample.index[1] * channels + run.begin;
          const In* s2 = a.input + bg.sample.index[2] * channels + run.begin;
          const In* s3 = a.input + bg.sample.index[3] * channels + run.begin;
          const int64_t n = run.end - run.begin;
#pragma omp simd reduction(+ : sum_value, sum_dy, sum_dx)
          for (int64_t c = 0; c < n; ++c) {
            const T v0 = widen(s0[c]), v1 = widen(s1[c]), v2 = widen(s2[c]), v3 = widen(s3[c]);
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
template <typename In, typename T>
inline void col2im_channels_impl(const ChunkArgs<In, T>& a, int64_t rows, T* grad_input,
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

// The hot loops, compiled for several instruction sets (cpu_utils.h). The float and double
// clones call one out-of-line copy of im2col_rows_impl and coordinate_grad_rows_impl (GCC does
// not inline them into the clones), so they run baseline x86-64 code; inlining them now would
// change the float32 and float64 results' bits (wider simd sums, contracted multiply-adds), so
// they stay as they are.
#define DETECTOR_DEFORM_CONV_CLONES(T)                                                             \
  DETECTOR_SIMD_CLONES void im2col_rows(const ChunkArgs<T, T>& a, int64_t begin, int64_t end) {    \
    im2col_rows_impl(a, begin, end);                                                               \
  }                                                                                                \
  DETECTOR_SIMD_CLONES void coordinate_grad_rows(const ChunkArgs<T, T>& a, int64_t begin,          \
                                                 int64_t end) {                                    \
    coordinate_grad_rows_impl(a, begin, end);                                                      \
  }                                                                                                \
  DETECTOR_SIMD_CLONES void col2im_channels(const ChunkArgs<T, T>& a, int64_t rows, T* grad_input, \
                                            int64_t c_begin, int64_t c_end) {                      \
    col2im_channels_impl(a, rows, grad_input, c_begin, c_end);                                     \
  }

DETECTOR_DEFORM_CONV_CLONES(float)
DETECTOR_DEFORM_CONV_CLONES(double)
#undef DETECTOR_DEFORM_CONV_CLONES

// The float16/bfloat16 paths' hot loops (In = float for float16's converted images, uint16_t for
// bfloat16's bits): `flatten` inlines the loop bodies into each instruction set's clone, so that
// they run vectorized for AVX2 or AVX-512.
#if defined(__GNUC__)
#define DETECTOR_REDUCED_LOOP __attribute__((flatten)) DETECTOR_SIMD_CLONES
#else
#define DETECTOR_REDUCED_LOOP DETECTOR_SIMD_CLONES
#endif

template <typename In>
struct ReducedLoops {
  DETECTOR_REDUCED_LOOP static void im2col_rows(const ChunkArgs<In, float>& a, int64_t begin,
                                                int64_t end) {
    im2col_rows_impl(a, begin, end);
  }
  DETECTOR_REDUCED_LOOP static void coordinate_grad_rows(const ChunkArgs<In, float>& a,
                                                         int64_t begin, int64_t end) {
    coordinate_grad_rows_impl(a, begin, end);
  }
  DETECTOR_REDUCED_LOOP static void col2im_channels(const ChunkArgs<In, float>& a, int64_t rows,
                                                    float* grad_input, int64_t c_begin,
                                                    int64_t c_end) {
    col2im_channels_impl(a, rows, grad_input, c_begin, c_end);
  }
};

// sums[o] += the sum of rows[o * stride + i] over i < length, for o in [first_row, last_row):
// float32 sums, each in a fixed order.
DETECTOR_SIMD_CLONES void add_row_sums(const float* rows, int64_t stride, int64_t length,
                                       int64_t first_row, int64_t last_row, float* sums) {
  for (int64_t o = first_row; o < last_row; ++o) {
    const float* r = rows + o * stride;
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < length; ++i) s += r[i];
    sums[o] += s;
  }
}

// ChunkArgs with the fields that stay the same for a whole call: the geometry, the channel runs
// and the (L, K) column buffers; `grad_columns` and `points` only in backward. The caller sets the
// per-image and per-chunk pointers.
template <typename In, typename T>
ChunkArgs<In, T> make_chunk_args(const DeformConvGeometry& g, const std::vector<ChannelRun>& runs,
                                 T* columns, const T* grad_columns = nullptr,
                                 Bilinear<T>* points = nullptr) {
  ChunkArgs<In, T> args{};
  args.geo = &g;
  args.runs = runs.data();
  args.num_runs = static_cast<int64_t>(runs.size());
  args.columns = columns;
  args.grad_columns = grad_columns;
  args.points = points;
  return args;
}

// Positions per chunk: about `elements` column entries, at most one image.
int64_t chunk_positions(const DeformConvGeometry& g, int64_t elements = kChunkElements) {
  const int64_t row_size = std::max<int64_t>(1, g.taps() * g.channels);
  return std::clamp<int64_t>(elements / row_size, 64, std::max<int64_t>(1, g.positions()));
}

// Grain of the position loops: enough channel work per task to amortize the scheduling.
int64_t row_grain(const DeformConvGeometry& g) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, g.taps() * g.channels));
}

// weight (O, Cw, kh, kw) -> W' (O, kh * kw * Cw), the column order of the im2col rows.
at::Tensor weight_as_matrix(const at::Tensor& weight) {
  return weight.permute({0, 2, 3, 1}).reshape({weight.size(0), -1}).contiguous();
}

// ---------------------------------------------------------------------------------------------
// float16 and bfloat16 (see the top of this file).

// How the sampling loops of S read its values: bfloat16 as its bits, float16 as float32 copies.
template <typename S>
using ReducedIn = std::conditional_t<std::is_same_v<S, c10::BFloat16>, uint16_t, float>;

// One image's (or an image's offset or mask) values as the sampling loops of S read them: the
// tensor's own data for bfloat16, a float32 copy of the same strides in `copy` for float16.
template <typename S>
const ReducedIn<S>* reduced_values(const at::Tensor& t, at::Tensor& copy) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    return reinterpret_cast<const uint16_t*>(t.const_data_ptr<S>());
  } else {
    copy = at::empty_strided(t.sizes(), t.strides(), t.options().dtype(at::kFloat));
    copy.copy_(t);
    return copy.const_data_ptr<float>();
  }
}

template <typename S>
void deform_conv2d_forward_reduced(const DeformConvGeometry& g, const at::Tensor& input,
                                   const at::Tensor& offset, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& mask,
                                   const std::optional<at::Tensor>& bias, at::Tensor& output) {
  using In = ReducedIn<S>;
  using Loops = ReducedLoops<In>;
  const at::TensorOptions f32 = input.options().dtype(at::kFloat);
  const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor offset_c = offset.contiguous();
  const at::Tensor mask_c = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor w_matrix = weight_as_matrix(weight).to(at::kFloat);  // (O, taps * Cw)
  const at::Tensor bias_column =
      bias.has_value() ? bias->to(at::kFloat).reshape({g.out_channels, 1}) : at::Tensor();
  const std::vector<ChannelRun> runs = channel_runs(g);
  const int64_t positions = g.positions(), row_size = g.taps() * g.channels;
  const int64_t chunk = chunk_positions(g, kReducedChunkElements), grain = row_grain(g);
  const int64_t group_k = row_size / g.groups, group_o = g.out_channels / g.groups;
  at::Tensor columns = at::empty({chunk, row_size}, f32);
  at::Tensor output32 = at::empty({g.out_channels, chunk}, f32);  // one chunk's float32 sums
  at::Tensor output_flat = output.view({g.batch, g.out_channels, positions});
  ChunkArgs<In, float> args = make_chunk_args<In>(g, runs, columns.data_ptr<float>());
  at::Tensor input_copy, offset_copy, mask_copy;  // float16: this image's float32 values
  for (int64_t n = 0; n < g.batch; ++n) {
    args.input = reduced_values<S>(input_nhwc[n], input_copy);
    args.offset = reduced_values<S>(offset_c[n], offset_copy);
    args.mask = mask_c.defined() ? reduced_values<S>(mask_c[n], mask_copy) : nullptr;
    for (int64_t first = 0; first < positions; first += chunk) {
      const int64_t rows = std::min(chunk, positions - first);
      args.first = first;
      at::parallel_for(0, rows, grain,
                       [&](int64_t begin, int64_t end) { Loops::im2col_rows(args, begin, end); });
      const at::Tensor cols = columns.narrow(0, 0, rows);  // (L, K)
      at::Tensor sums = output32.narrow(1, 0, rows);       // (O, L)
      for (int64_t wg = 0; wg < g.groups; ++wg) {
        gemm_in_column_blocks(
            sums.narrow(0, wg * group_o, group_o), w_matrix.narrow(0, wg * group_o, group_o),
            cols.narrow(1, wg * group_k, group_k).t(), false, kReducedGemmColumns);
      }
      if (bias_column.defined()) {
        sums.add_(bias_column);
      }
      output_flat[n].narrow(1, first, rows).copy_(sums);  // rounded once
    }
  }
}

template <typename S>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deform_conv2d_backward_reduced(const DeformConvGeometry& g, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& offset,
                               const at::Tensor& weight, const std::optional<at::Tensor>& mask) {
  using In = ReducedIn<S>;
  using Loops = ReducedLoops<In>;
  const at::TensorOptions f32 = input.options().dtype(at::kFloat);
  const int64_t positions = g.positions(), row_size = g.taps() * g.channels;
  const int64_t group_k = row_size / g.groups, group_o = g.out_channels / g.groups;
  at::Tensor grad_input = at::zeros({g.batch, g.channels, g.height, g.width}, input.options());
  at::Tensor grad_offset = at::zeros(offset.sizes(), offset.options());
  at::Tensor grad_mask = mask.has_value() ? at::zeros(mask->sizes(), mask->options())
                                          : at::empty({0}, input.options());
  // float32 accumulators over all chunks and images, rounded once at the end
  at::Tensor grad_w_matrix = at::zeros({g.out_channels, group_k}, f32);
  at::Tensor grad_bias = at::zeros({g.out_channels}, f32);
  if (g.batch > 0 && g.out_channels > 0 && g.channels > 0 && positions > 0) {
    const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor offset_c = offset.contiguous();
    const at::Tensor mask_c = mask.has_value() ? mask->contiguous() : at::Tensor();
    const at::Tensor grad_out_flat =
        grad_output.contiguous().view({g.batch, g.out_channels, positions});
    const at::Tensor w_matrix = weight_as_matrix(weight).to(at::kFloat);  // (O, taps * Cw)
    const std::vector<ChannelRun> runs = channel_runs(g);
    const int64_t chunk = chunk_positions(g, kReducedChunkElements), grain = row_grain(g);
    at::Tensor columns = at::empty({chunk, row_size}, f32);
    at::Tensor grad_columns = at::empty({chunk, row_size}, f32);
    at::Tensor grad_out32 = at::empty({g.out_channels, chunk}, f32);
    // one image's float32 gradients: input (H, W, C), offset, mask
    at::Tensor grad_in32 = at::empty({g.height, g.width, g.channels}, f32);
    at::Tensor grad_in_nhwc = at::empty({g.height, g.width, g.channels}, input.options());
    at::Tensor grad_offset32 = at::empty(offset_c[0].sizes(), f32);
    at::Tensor grad_mask32 = mask_c.defined() ? at::empty(mask_c[0].sizes(), f32) : at::Tensor();
    std::vector<Bilinear<float>> points(chunk * g.taps() * g.offset_groups);
    ChunkArgs<In, float> args = make_chunk_args<In>(g, runs, columns.data_ptr<float>(),
                                                    grad_columns.data_ptr<float>(), points.data());
    args.grad_offset = grad_offset32.data_ptr<float>();
    args.grad_mask = grad_mask32.defined() ? grad_mask32.data_ptr<float>() : nullptr;
    float* grad_in = grad_in32.data_ptr<float>();
    float* bias_sums = grad_bias.data_ptr<float>();
    at::Tensor input_copy, offset_copy, mask_copy;  // float16: this image's float32 values
    for (int64_t n = 0; n < g.batch; ++n) {
      args.input = reduced_values<S>(input_nhwc[n], input_copy);
      args.offset = reduced_values<S>(offset_c[n], offset_copy);
      args.mask = mask_c.defined() ? reduced_values<S>(mask_c[n], mask_copy) : nullptr;
      grad_in32.zero_();
      for (int64_t first = 0; first < positions; first += chunk) {
        const int64_t rows = std::min(chunk, positions - first);
        args.first = first;
        at::parallel_for(0, rows, grain,
                         [&](int64_t begin, int64_t end) { Loops::im2col_rows(args, begin, end); });
        at::Tensor grad_out = grad_out32.narrow(1, 0, rows);  // (O, L)
        grad_out.copy_(grad_out_flat[n].narrow(1, first, rows));
        const float* grad_out_data = grad_out32.const_data_ptr<float>();
        at::parallel_for(0, g.out_channels, 1, [&](int64_t o_begin, int64_t o_end) {
          add_row_sums(grad_out_data, chunk, rows, o_begin, o_end, bias_sums);
        });
        const at::Tensor cols = columns.narrow(0, 0, rows);            // (L, K)
        const at::Tensor grad_cols = grad_columns.narrow(0, 0, rows);  // (L, K)
        for (int64_t wg = 0; wg < g.groups; ++wg) {
          const at::Tensor grad_out_group = grad_out.narrow(0, wg * group_o, group_o);
          at::Tensor grad_cols_group = grad_cols.narrow(1, wg * group_k, group_k);
          const at::Tensor w_group = w_matrix.narrow(0, wg * group_o, group_o);
          gemm_in_column_blocks(grad_cols_group.t(), w_group.t(), grad_out_group, false,
                                kReducedGemmColumns);
          gemm_in_column_blocks(grad_w_matrix.narrow(0, wg * group_o, group_o), grad_out_group,
                                cols.narrow(1, wg * group_k, group_k), true, kReducedGemmColumns);
        }
        at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
          Loops::coordinate_grad_rows(args, begin, end);
        });
        at::parallel_for(0, g.channels, 8, [&](int64_t c_begin, int64_t c_end) {
          Loops::col2im_channels(args, rows, grad_in, c_begin, c_end);
        });
      }
      // rounded once, then transposed (H, W, C) -> (C, H, W) in the dtype: ATen transposes a
      // 16-bit type several times faster than float32
      grad_in_nhwc.copy_(grad_in32);
      grad_input[n].copy_(grad_in_nhwc.permute({2, 0, 1}));
      grad_offset[n].copy_(grad_offset32);
      if (mask_c.defined()) {
        grad_mask[n].copy_(grad_mask32);
      }
    }
  }
  // (O, kh * kw * Cw) -> (O, Cw, kh, kw)
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  grad_weight.copy_(grad_w_matrix.view({g.out_channels, g.kernel_h, g.kernel_w, group_k / g.taps()})
                        .permute({0, 3, 1, 2}));
  return {grad_input, grad_offset, grad_weight, grad_mask, grad_bias.to(input.scalar_type())};
}

at::Tensor deform_conv2d_forward_cpu(const DeformConvGeometry& g, const at::Tensor& input,
                                     const at::Tensor& offset, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& mask,
                                     const std::optional<at::Tensor>& bias) {
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  if (input.scalar_type() == at::kBFloat16) {
    deform_conv2d_forward_reduced<c10::BFloat16>(g, input, offset, weight, mask, bias, output);
    return output;
  }
  if (input.scalar_type() == at::kHalf) {
    deform_conv2d_forward_reduced<c10::Half>(g, input, offset, weight, mask, bias, output);
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
    ChunkArgs<scalar_t, scalar_t> args =
        make_chunk_args<scalar_t>(g, runs, columns.data_ptr<scalar_t>());
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
    const DeformConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& offset, const at::Tensor& weight, const std::optional<at::Tensor>& mask) {
  if (input.scalar_type() == at::kBFloat16) {
    return deform_conv2d_backward_reduced<c10::BFloat16>(g, grad_output, input, offset, weight,
                                                         mask);
  }
  if (input.scalar_type() == at::kHalf) {
    return deform_conv2d_backward_reduced<c10::Half>(g, grad_output, input, offset, weight, mask);
  }
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
      ChunkArgs<scalar_t, scalar_t> args = make_chunk_args<scalar_t>(
          g, runs, columns.data_ptr<scalar_t>(), grad_columns.data_ptr<scalar_t>(), points.data());
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
  register_deform_conv2d<deform_conv2d_forward_cpu, deform_conv2d_backward_cpu>(m);
}

}  // namespace detector
