// One-block memory recycling for large CPU outputs (see recycled_memory.h).
#include "cpu/recycled_memory.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include "cpu/roi_align_memory.h"

namespace detector {
namespace {

constexpr size_t kMinRecycledBytes = size_t(8) << 20;  // smaller blocks: plain allocations
constexpr size_t kAlignment = size_t(2) << 20;         // huge-page aligned

// A block and its size (the DataPtr context).
struct Block {
  void* data;
  size_t bytes;
};

class RecyclingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    Block* block = take(bytes);
    if (block == nullptr) {
      void* data = nullptr;
      const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
      if (bytes > 0 && posix_memalign(&data, kAlignment, rounded) != 0) {
        TORCH_CHECK(false, "recycled_empty: out of memory allocating ", bytes, " bytes");
      }
      advise_huge_pages(data, rounded);
      block = new Block{data, bytes};
    }
    return {block->data, block, &RecyclingAllocator::release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  // The kept block if it has exactly `bytes` bytes (it is removed from the cache), else null.
  static Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex());
    Block*& kept = cached();
    if (kept == nullptr || kept->bytes != bytes) {
      return nullptr;
    }
    Block* block = kept;
    kept = nullptr;
    return block;
  }

  // Deleter: keeps a large block (freeing the one kept before), frees anything else.
  static void release(void* context) {
    Block* block = static_cast<Block*>(context);
    if (block->bytes >= kMinRecycledBytes) {
      std::lock_guard<std::mutex> lock(mutex());
      std::swap(block, cached());
    }
    if (block != nullptr) {
      std::free(block->data);
      delete block;
    }
  }

  // Never destroyed (tensors may be freed during static destruction).
  static std::mutex& mutex() {
    static std::mutex* m = new std::mutex();
    return *m;
  }
  static Block*& cached() {
    static Block* block = nullptr;
    return block;
  }
};

}  // namespace

at::Tensor recycled_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  static RecyclingAllocator* allocator = new RecyclingAllocator();
  return at::detail::empty_generic(sizes, allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, c10::MemoryFormat::Contiguous);
}

}  // namespace detector
