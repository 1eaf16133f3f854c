#include "core/cuda/caching_allocator.h"

#include <array>
#include <atomic>
#include <mutex>
#include <set>
#include <unordered_map>

#include "core/cuda/context.h"
#include "core/cuda_device.h"

namespace flame::cuda {

namespace {

constexpr size_t kSmallLimit = size_t{1} << 20;    // requests up to 1 MiB use the small pool
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t{2} << 20;
constexpr size_t kSmallSegment = size_t{2} << 20;  // small blocks are cut from 2 MiB segments
constexpr int kMaxDevices = 64;

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

std::string format_bytes(size_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  if (bytes < (size_t{1} << 20)) return fmt::format("{:.2f} KiB", bytes / 1024.0);
  if (bytes < (size_t{1} << 30)) return fmt::format("{:.2f} MiB", bytes / 1048576.0);
  if (bytes < (size_t{1} << 40)) return fmt::format("{:.2f} GiB", bytes / 1073741824.0);
  return fmt::format("{:.2f} TiB", bytes / 1099511627776.0);
}

/// A piece of a cudaMalloc'ed segment; prev/next link the pieces of one segment in address order.
struct Block {
  char* ptr;
  size_t size;
  bool small;
  bool allocated = false;
  Block* prev = nullptr;
  Block* next = nullptr;
};

struct BySizeThenAddress {
  bool operator()(const Block* a, const Block* b) const {
    return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
  }
};

class CachingAllocator final : public Allocator {
 public:
  explicit CachingAllocator(int device) : device_(device) {}

  void* allocate(size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    const bool small = nbytes <= kSmallLimit;
    const size_t size = round_up(nbytes, small ? kSmallRound : kLargeRound);
    std::lock_guard<std::mutex> lock(mutex_);
    Pool& pool = small ? small_ : large_;
    Block* block = take_best_fit(pool, size);
    if (block == nullptr) block = new_segment(small ? kSmallSegment : size, small, nbytes);
    const size_t rest = block->size - size;
    if (rest >= (small ? kSmallRound : kLargeRound)) {
      auto* tail = new Block{block->ptr + size, rest, small, false, block, block->next};
      if (block->next != nullptr) block->next->prev = tail;
      block->next = tail;
      block->size = size;
      pool.insert(tail);
      blocks_[tail->ptr] = tail;
    }
    block->allocated = true;
    stats_.allocated += block->size;
    if (stats_.allocated > stats_.peak_allocated) stats_.peak_allocated = stats_.allocated;
    return block->ptr;
  }

  void deallocate(void* ptr, size_t) override {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    const auto found = blocks_.find(ptr);
    FLAME_CHECK(found != blocks_.end() && found->second->allocated,
                "cuda:{}: freeing a pointer the caching allocator did not hand out, or freeing it twice",
                device_);
    Block* block = found->second;
    block->allocated = false;
    stats_.allocated -= block->size;
    Pool& pool = block->small ? small_ : large_;
    if (Block* next = block->next; next != nullptr && !next->allocated) {
      pool.erase(next);
      blocks_.erase(next->ptr);
      block->size += next->size;
      unlink(next);
    }
    if (Block* prev = block->prev; prev != nullptr && !prev->allocated) {
      pool.erase(prev);
      blocks_.erase(block->ptr);
      prev->size += block->size;
      unlink(block);
      block = prev;
    }
    pool.insert(block);
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_allocated = stats_.allocated;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_free_segments();
  }

 private:
  using Pool = std::set<Block*, BySizeThenAddress>;

  static Block* take_best_fit(Pool& pool, size_t size) {
    Block key{nullptr, size, false};
    const auto it = pool.lower_bound(&key);
    if (it == pool.end()) return nullptr;
    Block* block = *it;
    pool.erase(it);
    return block;
  }

  /// Removes `block` from its segment's list and deletes it (its bytes went to a neighbour).
  static void unlink(Block* block) {
    if (block->prev != nullptr) block->prev->next = block->next;
    if (block->next != nullptr) block->next->prev = block->prev;
    delete block;
  }

  /// A new free segment of `size` bytes (not in a pool). Called with mutex_ held.
  Block* new_segment(size_t size, bool small, size_t requested) {
    context(device_);  // makes device_ current
    void* ptr = nullptr;
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_free_segments();
      status = cudaMalloc(&ptr, size);
    }
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      FLAME_FAIL("CUDA out of memory on cuda:{}: tried to allocate {}; {} in use, {} reserved (cached "
                 "free blocks were already returned to the driver; reduce the batch or model size, or "
                 "free tensors you no longer need)",
                 device_, format_bytes(requested), format_bytes(stats_.allocated),
                 format_bytes(stats_.reserved));
    }
    if (status != cudaSuccess) throw_cuda_error(status, "cudaMalloc(&ptr, size)", __FILE__, __LINE__);
    stats_.reserved += size;
    ++stats_.malloc_count;
    auto* block = new Block{static_cast<char*>(ptr), size, small};
    blocks_[block->ptr] = block;
    return block;
  }

  /// cudaFree for every segment that is one free block. Called with mutex_ held.
  void release_free_segments() {
    bool synchronized = false;
    for (Pool* pool : {&small_, &large_}) {
      for (auto it = pool->begin(); it != pool->end();) {
        Block* block = *it;
        if (block->prev != nullptr || block->next != nullptr) {
          ++it;
          continue;
        }
        if (!synchronized) {
          // Kernels queued before the blocks were freed may still use them (Note [caching
          // allocator streams]).
          context(device_);
          FLAME_CUDA_CHECK(cudaDeviceSynchronize());
          synchronized = true;
        }
        FLAME_CUDA_CHECK(cudaFree(block->ptr));
        stats_.reserved -= block->size;
        blocks_.erase(block->ptr);
        it = pool->erase(it);
        delete block;
      }
    }
  }

  const int device_;
  std::mutex mutex_;
  Pool small_, large_;                         // free blocks
  std::unordered_map<void*, Block*> blocks_;  // every block (free or not) by address
  AllocatorStats stats_;
};

CachingAllocator& allocator_of(int device) {
  static auto* table = new std::array<std::atomic<CachingAllocator*>, kMaxDevices>();
  static std::mutex creation;
  if (device >= 0 && device < kMaxDevices) {
    if (CachingAllocator* ready = (*table)[device].load(std::memory_order_acquire)) return *ready;
  }
  const int count = device_count();
  if (device < 0 || device >= count) context(device);  // raises, explaining why
  FLAME_CHECK(device >= 0 && device < count && device < kMaxDevices,
              "cuda:{} requested but {} CUDA device(s) are visible", device, count);
  std::lock_guard<std::mutex> lock(creation);
  CachingAllocator* allocator = (*table)[device].load(std::memory_order_acquire);
  if (allocator == nullptr) {
    allocator = new CachingAllocator(device);  // lives for the process (see core/storage.h)
    (*table)[device].store(allocator, std::memory_order_release);
  }
  return *allocator;
}

}  // namespace

Allocator& caching_allocator(int device) { return allocator_of(device); }
AllocatorStats caching_allocator_stats(int device) { return allocator_of(device).stats(); }
void caching_allocator_reset_peak(int device) { allocator_of(device).reset_peak(); }
void caching_allocator_empty_cache(int device) { allocator_of(device).empty_cache(); }

}  // namespace flame::cuda
