// Non-maximum suppression: the schemas of `detector::nms` and `detector::batched_nms`, and the
// argument checks shared by their CPU and CUDA kernels.
//
//   nms(boxes[N, 4] xyxy, scores[N], iou_threshold) -> int64[K]
//   batched_nms(boxes[N, 4] xyxy, scores[N], idxs[N] int64, iou_threshold) -> int64[K]
//
// Both return the indices of the kept boxes in decreasing score order (the order of
// `scores.sort(0, descending=true)`, exactly as torchvision.ops.nms). A box is suppressed by a kept
// box of higher score (of the same category for batched_nms) when their IoU, computed without "+1",
// is greater than `iou_threshold`. The outputs have a data-dependent length; the fake kernels in
// detector/ops/boxes.py give it an unbacked (dynamic) size.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace detector {

// Checks the arguments of an NMS op; `idxs` is null for plain nms. Errors name `op` and the
// argument.
void check_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                      const at::Tensor* idxs) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op,
              ": expected `boxes` of shape (N, 4) = (x1, y1, x2, y2), got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1, op, ": expected `scores` of shape (N,), got ", scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0), op, ": `boxes` has ", boxes.size(0),
              " boxes but `scores` has ", scores.size(0), " elements");
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op,
              ": `boxes` must be a floating point tensor, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.scalar_type() == scores.scalar_type(), op,
              ": `boxes` and `scores` must have the same dtype, got ", boxes.scalar_type(), " and ",
              scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), op, ": `boxes` is on ", boxes.device(),
              " but `scores` is on ", scores.device());
  if (idxs != nullptr) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), op,
                ": expected `idxs` of shape (N,) with N = ", boxes.size(0), ", got ",
                idxs->sizes());
    TORCH_CHECK(idxs->scalar_type() == at::kLong, op, ": `idxs` must be an int64 tensor, got ",
                idxs->scalar_type());
    TORCH_CHECK(idxs->device() == boxes.device(), op, ": `idxs` is on ", idxs->device(),
                " but `boxes` is on ", boxes.device());
  }
}

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}

}  // namespace detector
