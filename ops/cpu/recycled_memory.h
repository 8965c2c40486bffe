// Recycled memory for large CPU outputs that every call fills completely (the RoI Pool gradient,
// the RoI Align forward output).
//
// A fresh 55 MB tensor costs ~12 ms of kernel page zeroing and page faults on every call (more
// than the rest of RoI Pool's backward); the kernel zeroes it although the op overwrites it.
// `recycled_empty` returns an uninitialized tensor whose memory, once freed, is kept (one block,
// the most recently freed one of at least 8 MB) and handed out again to the next request of the
// same size. A training loop then reuses the previous iteration's gradient memory. The memory is
// NOT zeroed: callers must write every element.
#pragma once

#include <ATen/ATen.h>

namespace detector {

// An uninitialized contiguous CPU tensor of `sizes` and `dtype` (see above).
at::Tensor recycled_empty(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace detector
