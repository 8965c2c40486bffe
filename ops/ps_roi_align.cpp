// Schema of position-sensitive RoI Align (R-FCN with RoI Align sampling;
// torchvision.ops.ps_roi_align).
//
//   ps_roi_align(input (N, C_out * PH * PW, H, W), rois (K, 5), spatial_scale, PH, PW,
//                sampling_ratio) -> output (K, C_out, PH, PW)
//   _ps_roi_align_backward(grad (K, C_out, PH, PW), rois, spatial_scale, PH, PW, sampling_ratio,
//                          N, C, H, W) -> grad_input (N, C, H, W)
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def(
      "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio) -> Tensor");
  m.def(
      "_ps_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, "
      "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, "
      "SymInt channels, SymInt height, SymInt width) -> Tensor");
}
