// Winograd F(2x2, 3x3) convolution transforms (Lavin & Gray, "Fast Algorithms for Convolutional
// Neural Networks", 2016): a 3x3, stride-1, padding-1 convolution computed as
//   y_tile = A^T [ (G w G^T) (.) (B^T d_tile B) ] A
// for every 2x2 output tile, with the 16 element-wise products batched into 16 matrix products
// over channels (done in Python with torch.bmm). 2.25x fewer multiplications than the direct
// convolution. The schemas are declared here; the CPU kernels live in cpu/winograd_kernel.cpp.
//
// Shapes: N images, C input and K output channels, H x W maps, th = ceil(H / 2), tw = ceil(W / 2)
// tiles per column and row, T = N * th * tw tiles, xi = 4 * i + j the 16 transform positions.
//
//   winograd_input_transform(input (N, C, H, W)) -> (16, C, T)   B^T d B of each 4x4 input tile
//     (rows 2ty-1 .. 2ty+2, columns 2tx-1 .. 2tx+2; zero outside the map)
//   winograd_output_transform(m (16, K, T), bias (K,)?, N, H, W) -> (N, K, H, W)
//     A^T m A of each tile (+ bias), cropped to H x W
//   _winograd_*_backward: the adjoint (transposed) linear maps, for autograd.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def("winograd_input_transform(Tensor input) -> Tensor");
  m.def(
      "_winograd_input_transform_backward(Tensor grad, SymInt batch, SymInt height, "
      "SymInt width) -> Tensor");
  m.def(
      "winograd_output_transform(Tensor m, Tensor? bias, SymInt batch, SymInt height, "
      "SymInt width) -> Tensor");
  m.def("_winograd_output_transform_backward(Tensor grad) -> Tensor");
}
