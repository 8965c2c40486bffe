// Schema of position-sensitive RoI pooling (R-FCN; torchvision.ops.ps_roi_pool).
//
//   ps_roi_pool(input (N, C_out * PH * PW, H, W), rois (K, 5), spatial_scale, PH, PW)
//     -> output (K, C_out, PH, PW)
//   _ps_roi_pool_backward(grad (K, C_out, PH, PW), rois, spatial_scale, PH, PW, N, C, H, W)
//     -> grad_input (N, C, H, W)
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def(
      "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width) -> Tensor");
  m.def(
      "_ps_roi_pool_backward(Tensor grad, Tensor rois, float spatial_scale, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
      "SymInt height, SymInt width) -> Tensor");
}
