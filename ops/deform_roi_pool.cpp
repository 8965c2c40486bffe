// Schemas of deformable RoI pooling (Dai et al. 2017, "Deformable Convolutional Networks",
// Sec. 2.2)
// and its position-sensitive form (R-FCN with deformable PS RoI pooling), both optionally modulated
// (DCN v2, Zhu et al. 2019). Kernels: ops/cpu/deform_roi_pool_kernel.cpp and
// ops/cuda/deform_roi_pool_kernel.cu. Autograd and fake kernels: detector/ops/deform_roi_pool.py.
//
// Shapes: input (N, C, H, W) [PS form: C = C_out * pooled_height * pooled_width], rois (K, 5),
// offset (K, 2, pooled_height, pooled_width) with channel 0 = x and 1 = y (mmcv's order),
// mask (K, 1, pooled_height, pooled_width), output (K, C_out, pooled_height, pooled_width).
// The backward ops return (grad_input, grad_offset, grad_mask); a gradient that was not asked for
// (or whose tensor is absent) is returned as an empty tensor of shape (0,).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def(
      "deform_roi_pool(Tensor input, Tensor rois, Tensor? offset, Tensor? mask, "
      "float spatial_scale, int pooled_height, int pooled_width, int sampling_ratio, "
      "float gamma) -> Tensor");
  m.def(
      "_deform_roi_pool_backward(Tensor grad, Tensor input, Tensor rois, Tensor? offset, "
      "Tensor? mask, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, float gamma, bool offset_grad, bool mask_grad) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "deform_ps_roi_pool(Tensor input, Tensor rois, Tensor? offset, Tensor? mask, "
      "float spatial_scale, int pooled_height, int pooled_width, int sampling_ratio, "
      "float gamma) -> Tensor");
  m.def(
      "_deform_ps_roi_pool_backward(Tensor grad, Tensor input, Tensor rois, Tensor? offset, "
      "Tensor? mask, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, float gamma, bool offset_grad, bool mask_grad) "
      "-> (Tensor, Tensor, Tensor)");
}
