// Memory helpers of the RoI Align CPU kernels.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace detector {

// Asks the kernel to back the 2 MiB-aligned interior of a fresh allocation with transparent huge
// pages. Call it before the memory is first written: a 55 MB gradient then costs ~30 page faults
// instead of ~13,000 (measured: 26 ms -> 11 ms to allocate and fill it on a 2-core machine). It is
// only advice: errors are ignored and nothing changes where THP is disabled.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(1) << 21;
  if (data == nullptr || bytes < 4 * kHugePage) {
    return;
  }
  const uintptr_t address = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (address + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (address + bytes) & ~(kHugePage - 1);
  if (end > begin) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace detector
