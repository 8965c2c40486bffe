// Recycled memory for large CPU outputs that every call fills completely (the RoI Pool gradient,
// the RoI Align forward output, the Winograd transforms and their matrix products).
//
// A fresh 55 MB tensor costs ~12 ms of kernel page zeroing and page faults on every call (more
// than the rest of RoI Pool's backward; an 80 MB Winograd transform of the mask head's features
// ~30 ms, as much as the transform itself); the kernel zeroes the pages although the op
// overwrites them. `recycled_empty` returns an uninitialized tensor whose memory, once freed, is
// kept and handed out again to a later request that it fits (the smallest such block): the
// next iteration of a training or inference loop then reuses the previous one's memory. Freed
// blocks of at least 8 MB are kept, up to 128 MiB in all (the oldest are freed first; the
// environment variable DETECTOR_RECYCLED_MEMORY_MB sets another cap in MiB, 0 keeps none).
// Measured (docs/benchmarks.md, Memory trade-offs): a 1 GiB cap and blocks kept per size held
// ~300 MB more at a training step's peak than torchvision needs in all, for no speed gained
// over 128 MiB. `release_recycled_memory` (op `detector::_release_recycled_memory`) frees them all.
// The memory is NOT zeroed: callers must write every element.
//
// Ops: `detector::_recycled_bmm(a, b)`, torch.bmm(a, b) into recycled memory;
// `detector::_recycled_empty(like, size)`, an uninitialized tensor of `like`'s dtype (CPU).
#pragma once

#include <ATen/ATen.h>

namespace detector {

// An uninitialized contiguous CPU tensor of `sizes` and `dtype` (see above).
at::Tensor recycled_empty(at::IntArrayRef sizes, at::ScalarType dtype);

// Frees every kept block.
void release_recycled_memory();

}  // namespace detector
