// Schemas of the RoI Align operators (Mask R-CNN, He et al. 2017, Sec. 3), declared once.
//
//   roi_align(input (N, C, H, W), rois (K, 5)) -> (output (K, C, ph, pw), argmax)
//   multi_scale_roi_align(features [L x (N, C, H_l, W_l)], rois (K, 5), levels (K,))
//       -> (output (K, C, ph, pw), argmax)
//
// `mode` is "avg" (torchvision.ops.roi_align) or "max" (the maximum over a bin's sample points).
// `argmax` is an int32 (K, C, ph, pw) tensor of the chosen sample point within each bin for
// mode="max" (-1 for a bin without sample points), and an empty tensor for mode="avg".
// The backward ops take the forward's geometry and return the input gradient(s) in the memory
// format of the input(s) (`channels_last`).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned, str mode) -> (Tensor, Tensor)");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
      "SymInt height, SymInt width, int sampling_ratio, bool aligned, str mode, "
      "bool channels_last) -> Tensor");
  m.def(
      "multi_scale_roi_align(Tensor[] features, Tensor rois, Tensor levels, "
      "float[] spatial_scales, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
      "bool aligned, str mode) -> (Tensor, Tensor)");
  m.def(
      "_multi_scale_roi_align_backward(Tensor grad, Tensor rois, Tensor levels, Tensor argmax, "
      "float[] spatial_scales, SymInt pooled_height, SymInt pooled_width, SymInt[] level_shapes, "
      "bool[] channels_last, int sampling_ratio, bool aligned, str mode) -> Tensor[]");
}
