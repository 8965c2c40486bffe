// Flush-to-zero and denormals-are-zero on every thread that runs CPU kernels.
//
// Training from scratch produces denormal floats (|x| < 1.2e-38) in the gradients: a confident
// classifier's softmax and sigmoid gradients underflow to ~e^-90, and the backward pass carries
// them through the box head, the pooler and the trunk. On x86 every arithmetic instruction that
// reads or writes one takes a microcode assist (~100x slower), so the GEMMs of a whole backward
// pass can run 5-8x slower (benchmarks/accuracy.py on the WBC crops: 15 s per iteration instead
// of 1.7 s). Setting FTZ (results that would be denormal become 0) and DAZ (denormal inputs are
// read as 0) avoids it; no quantity a detector learns is that small.
//
// `torch.set_flush_denormal` sets the calling thread's flags only, and the OpenMP workers that
// run the intra-op parallel regions (ATen, oneDNN, MKL and our kernels) keep theirs. Here the
// flags are set on the caller and on every thread of the OpenMP team.
//
// Ops: `detector::_set_flush_denormal(bool on) -> bool` (False where the CPU has no such flags),
// `detector::_flush_denormal_enabled() -> bool` (the calling thread's state).
#include <ATen/Context.h>
#include <torch/library.h>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace detector {
namespace {

bool set_flush_denormal(bool on) {
  const bool supported = at::globalContext().setFlushDenormal(on);
  if (supported) {
#pragma omp parallel
    at::globalContext().setFlushDenormal(on);
  }
  return supported;
}

bool flush_denormal_enabled() {
#if defined(__SSE__) || defined(__x86_64__)
  constexpr unsigned kFtzDaz = 0x8040;  // MXCSR bits 15 (FTZ) and 6 (DAZ)
  return (_mm_getcsr() & kFtzDaz) == kFtzDaz;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def("_set_flush_denormal(bool on) -> bool", &set_flush_denormal);
  m.def("_flush_denormal_enabled() -> bool", &flush_denormal_enabled);
}

}  // namespace detector
