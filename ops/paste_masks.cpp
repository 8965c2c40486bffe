// Pasting Mask R-CNN's M x M mask probabilities into the image (inference post-processing), the
// compiled form of detector/modeling/roi_heads/mask_head/paste.py (which has the numerics, step
// by step, and the vectorized PyTorch form used on other devices). The schema is declared here;
// the CPU kernel lives in cpu/paste_masks_kernel.cpp.
//
// Shapes: R masks, S x S padded probabilities each (the M x M masks with their zero border),
// (H, W) the image.
//
//   paste_masks(padded (R, S, S), boxes (R, 4) int64, height, width, threshold?) -> (R, H, W)
//     boxes: the integer boxes (x0, y0, x1, y1), inclusive, already scaled by S / M;
//     threshold None: the pasted probabilities (padded's dtype); a float: bool, value > threshold.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def(
      "paste_masks(Tensor padded, Tensor boxes, SymInt height, SymInt width, float? threshold) "
      "-> Tensor");
}
