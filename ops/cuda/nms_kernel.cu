// CUDA kernels of `detector::nms` and `detector::batched_nms`: the bitmask NMS.
//
// The boxes are sorted by decreasing score (stable, as on the CPU) and gathered. One CUDA block of
// 64 threads compares the 64 boxes of a row block with the 64 boxes of a column block and writes,
// for each row box, a 64-bit mask of the later column boxes it suppresses (IoU > threshold, same
// category for batched_nms). A single-block sweep kernel then visits the boxes in score order,
// keeps those not yet removed and ORs their mask rows into the `removed` bitmap (threads split the
// words of a row). The IoU is computed with round-to-nearest intrinsics (no fused multiply-add) and
// the same threshold rule as the CPU kernel, so float and double results equal the CPU's.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cuda/cuda_utils.cuh"

namespace detector {

void check_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                      const at::Tensor* idxs);

namespace nms_cuda {

constexpr int kBoxesPerBlock = 64;  // bits of a mask word
constexpr int kSweepThreads = 256;

// IEEE round-to-nearest arithmetic that the compiler may not fuse into multiply-adds.
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// IoU of boxes a and b (x1, y1, x2, y2, area), torchvision's expression and rounding.
template <typename acc_t>
__device__ __forceinline__ acc_t iou(const acc_t* a, const acc_t* b) {
  const acc_t w = fmax(acc_t(0), sub_rn(fmin(a[2], b[2]), fmax(a[0], b[0])));
  const acc_t h = fmax(acc_t(0), sub_rn(fmin(a[3], b[3]), fmax(a[1], b[1])));
  const acc_t inter = mul_rn(w, h);
  return div_rn(inter, sub_rn(add_rn(a[4], b[4]), inter));
}

// Loads sorted box k as (x1, y1, x2, y2, area) in acc_t.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_box(const scalar_t* boxes, int64_t k, acc_t* out) {
  out[0] = static_cast<acc_t>(boxes[k * 4 + 0]);
  out[1] = static_cast<acc_t>(boxes[k * 4 + 1]);
  out[2] = static_cast<acc_t>(boxes[k * 4 + 2]);
  out[3] = static_cast<acc_t>(boxes[k * 4 + 3]);
  out[4] = mul_rn(sub_rn(out[2], out[0]), sub_rn(out[3], out[1]));
}

// mask[row * col_blocks + blockIdx.x] bit c = whether sorted box `row` (a row of block blockIdx.y)
// suppresses the later sorted box blockIdx.x * 64 + c. `category` is null for plain nms.
template <typename scalar_t, typename acc_t>
__global__ void nms_mask_kernel(int64_t n, acc_t threshold, const scalar_t* __restrict__ boxes,
                                const int64_t* __restrict__ category,
                                unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (row_block > col_block) {
    return;
  }
  const int64_t col_blocks = (n + kBoxesPerBlock - 1) / kBoxesPerBlock;
  const int64_t rows_left = n - row_block * kBoxesPerBlock;
  const int64_t cols_left = n - col_block * kBoxesPerBlock;
  const int rows = rows_left < kBoxesPerBlock ? static_cast<int>(rows_left) : kBoxesPerBlock;
  const int cols = cols_left < kBoxesPerBlock ? static_cast<int>(cols_left) : kBoxesPerBlock;

  __shared__ acc_t col_boxes[kBoxesPerBlock * 5];
  __shared__ int64_t col_category[kBoxesPerBlock];
  const int t = threadIdx.x;
  if (t < cols) {
    const int64_t k = col_block * kBoxesPerBlock + t;
    load_box(boxes, k, col_boxes + t * 5);
    col_category[t] = category != nullptr ? category[k] : 0;
  }
  __syncthreads();
  if (t >= rows) {
    return;
  }
  const int64_t row = row_block * kBoxesPerBlock + t;
  acc_t row_box[5];
  load_box(boxes, row, row_box);
  const int64_t row_category = category != nullptr ? category[row] : 0;
  unsigned long long bits = 0;
  const int first = row_block == col_block ? t + 1 : 0;
  for (int c = first; c < cols; ++c) {
    if (col_category[c] == row_category && iou(row_box, col_boxes + c * 5) > threshold) {
      bits |= 1ULL << c;
    }
  }
  mask[row * col_blocks + col_block] = bits;
}

// One block: visits the sorted boxes in order; keep[i] = 1 when box i is not removed by a kept box.
// `removed` (col_blocks words) must be zero on entry.
__global__ void nms_sweep_kernel(int64_t n, const unsigned long long* __restrict__ mask,
                                 unsigned long long* __restrict__ removed,
                                 bool* __restrict__ keep) {
  const int64_t col_blocks = (n + kBoxesPerBlock - 1) / kBoxesPerBlock;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t word = i / kBoxesPerBlock;
    const bool is_removed = (removed[word] >> (i % kBoxesPerBlock)) & 1ULL;
    __syncthreads();  // every thread has read removed[word] before it is updated
    if (!is_removed) {
      // Only words from the box's own block on hold bits of later boxes.
      for (int64_t j = word + threadIdx.x; j < col_blocks; j += blockDim.x) {
        removed[j] |= mask[i * col_blocks + j];
      }
    }
    if (threadIdx.x == 0) {
      keep[i] = !is_removed;
    }
    __syncthreads();
  }
}

// The threshold to compare an acc_t IoU with so that `iou > t` equals `double(iou) > threshold`.
template <typename acc_t>
acc_t threshold_for(double threshold) {
  acc_t t = static_cast<acc_t>(threshold);
  if (static_cast<double>(t) > threshold) {
    t = std::nextafter(t, -std::numeric_limits<acc_t>::infinity());
  }
  return t;
}

at::Tensor nms_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                    const at::Tensor* idxs, double iou_threshold) {
  check_nms_inputs(op, boxes, scores, idxs);
  TORCH_CHECK(boxes.is_cuda(), op, ": `boxes` must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();  // (n, 4)
  at::Tensor sorted_category;
  if (idxs != nullptr) {
    sorted_category = idxs->index_select(0, order).contiguous();  // (n,)
  }
  const int64_t col_blocks = (n + kBoxesPerBlock - 1) / kBoxesPerBlock;
  TORCH_CHECK(col_blocks <= 65535, op, ": too many boxes for the CUDA kernel (", n, ")");
  at::Tensor mask = at::empty({n, col_blocks}, boxes.options().dtype(at::kLong));
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  const int64_t* category_ptr = idxs != nullptr ? sorted_category.data_ptr<int64_t>() : nullptr;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(col_blocks, col_blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    nms_mask_kernel<scalar_t, acc_t><<<grid, kBoxesPerBlock, 0, stream>>>(
        n, threshold_for<acc_t>(iou_threshold), sorted_boxes.data_ptr<scalar_t>(), category_ptr,
        mask_ptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor removed = at::zeros({col_blocks}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kBool));
  nms_sweep_kernel<<<1, kSweepThreads, 0, stream>>>(
      n, mask_ptr, reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()),
      keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order.masked_select(keep);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl("detector::nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  return nms_impl("detector::batched_nms", boxes, scores, &idxs, iou_threshold);
}

}  // namespace nms_cuda

TORCH_LIBRARY_IMPL(detector, CUDA, m) {
  m.impl("nms", &nms_cuda::nms_cuda);
  m.impl("batched_nms", &nms_cuda::batched_nms_cuda);
}

}  // namespace detector
