// RoI Pool (Fast R-CNN, Girshick 2015): max pooling of each RoI's rounded window into a fixed
// grid of bins. The schema is declared once here; kernels live in cpu/ and cuda/.
//
// roi_pool returns (output, argmax): output (K, C, PH, PW) and argmax (K, C, PH, PW) int32, the
// flat index h * W + w of the chosen element in its (n, c) plane, or -1 for an empty bin.
// _roi_pool_backward routes each output gradient to its argmax element (sums where RoIs overlap).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width) -> (Tensor, Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, SymInt batch_size, "
      "SymInt channels, SymInt height, SymInt width) -> Tensor");
}
