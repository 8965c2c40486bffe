// Memory recycling for large CPU outputs and workspaces (see recycled_memory.h).
#include "cpu/recycled_memory.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>

#include "cpu/aligned_memory.h"

namespace detector {
namespace {

constexpr size_t kMinRecycledBytes = size_t(8) << 20;  // smaller blocks: plain allocations
constexpr size_t kDefaultCacheMiB = 128;               // freed blocks kept, in all

// The most bytes of freed blocks kept: DETECTOR_RECYCLED_MEMORY_MB (MiB; 0 keeps none), read
// once, or 128 MiB.
size_t max_cached_bytes() {
  static const size_t bytes = [] {
    size_t mib = kDefaultCacheMiB;
    if (const char* value = std::getenv("DETECTOR_RECYCLED_MEMORY_MB")) {
      char* end = nullptr;
      const long long parsed = std::strtoll(value, &end, 10);
      TORCH_CHECK_VALUE(end != value && *end == '\0' && parsed >= 0,
                        "DETECTOR_RECYCLED_MEMORY_MB must be a whole number of MiB >= 0, got '",
                        value, "'");
      mib = static_cast<size_t>(parsed);
    }
    return mib << 20;
  }();
  return bytes;
}

// A block and its capacity (the DataPtr context).
struct Block {
  void* data;
  size_t capacity;
};

// The freed blocks kept for reuse, oldest first, and their total capacity.
struct Cache {
  std::mutex mutex;
  std::deque<Block*> blocks;
  size_t bytes = 0;

  // The smallest kept block that holds `bytes_wanted` (removed from the cache), or null. Any
  // larger block will do: a training step's transforms come in many sizes (one per FPN level
  // and channel count), and a block per size kept them all alive at the activations' peak.
  Block* take(size_t bytes_wanted) {
    std::lock_guard<std::mutex> lock(mutex);
    auto best = blocks.end();
    for (auto it = blocks.begin(); it != blocks.end(); ++it) {
      const size_t capacity = (*it)->capacity;
      const bool fits = capacity >= bytes_wanted;
      if (fits && (best == blocks.end() || capacity < (*best)->capacity)) {
        best = it;
      }
    }
    if (best == blocks.end()) {
      return nullptr;
    }
    Block* block = *best;
    blocks.erase(best);
    bytes -= block->capacity;
    return block;
  }

  // Keeps `block`; returns the oldest blocks that no longer fit in the cap, to be freed.
  std::deque<Block*> keep(Block* block) {
    std::lock_guard<std::mutex> lock(mutex);
    blocks.push_back(block);
    bytes += block->capacity;
    std::deque<Block*> evicted;
    while (bytes > max_cached_bytes()) {
      evicted.push_back(blocks.front());
      bytes -= blocks.front()->capacity;
      blocks.pop_front();
    }
    return evicted;
  }

  std::deque<Block*> take_all() {
    std::lock_guard<std::mutex> lock(mutex);
    std::deque<Block*> all;
    all.swap(blocks);
    bytes = 0;
    return all;
  }
};

// Never destroyed (tensors may be freed during static destruction).
Cache& cache() {
  static Cache* instance = new Cache();
  return *instance;
}

void free_blocks(const std::deque<Block*>& blocks) {
  for (Block* block : blocks) {
    std::free(block->data);
    delete block;
  }
}

class RecyclingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    max_cached_bytes();  // a bad DETECTOR_RECYCLED_MEMORY_MB fails here, not in a deleter
    Block* block = bytes >= kMinRecycledBytes ? cache().take(bytes) : nullptr;
    if (block == nullptr) {
      // Blocks that may be kept: whole huge pages; smaller ones: cache-line aligned.
      size_t capacity = 0;
      void* data = aligned_block(bytes, kMinRecycledBytes, &capacity);
      TORCH_CHECK(data != nullptr, "recycled_empty: out of memory allocating ", bytes, " bytes");
      block = new Block{data, capacity};
    }
    return {block->data, block, &RecyclingAllocator::release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  // Deleter: keeps a large block (evicting the oldest ones past the cap), frees anything else.
  static void release(void* context) {
    Block* block = static_cast<Block*>(context);
    if (block->capacity >= kMinRecycledBytes) {
      free_blocks(cache().keep(block));
    } else {
      free_blocks({block});
    }
  }
};

RecyclingAllocator& allocator() {
  static RecyclingAllocator* instance = new RecyclingAllocator();
  return *instance;
}

}  // namespace

at::Tensor recycled_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_generic(sizes, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, c10::MemoryFormat::Contiguous);
}

void release_recycled_memory() { free_blocks(cache().take_all()); }

namespace {

at::Tensor recycled_bmm(const at::Tensor& a, const at::Tensor& b) {
  const bool shapes_match =
      a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(1);
  TORCH_CHECK_VALUE(shapes_match, "_recycled_bmm: expected (B, n, k) and (B, k, m), got ",
                    a.sizes(), " and ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(),
                   "_recycled_bmm: dtypes differ: ", a.scalar_type(), " and ", b.scalar_type());
  at::Tensor out = recycled_empty({a.size(0), a.size(1), b.size(2)}, a.scalar_type());
  return at::bmm_out(out, a, b);
}

at::Tensor recycled_empty_like(const at::Tensor& like, at::IntArrayRef size) {
  return recycled_empty(size, like.scalar_type());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detector, m) {
  m.def("_recycled_bmm(Tensor a, Tensor b) -> Tensor");
  m.def("_recycled_empty(Tensor like, SymInt[] size) -> Tensor");
  m.def("_release_recycled_memory() -> ()", &release_recycled_memory);
}

TORCH_LIBRARY_IMPL(detector, CPU, m) {
  m.impl("_recycled_bmm", &recycled_bmm);
  m.impl("_recycled_empty", &recycled_empty_like);
}

}  // namespace detector
