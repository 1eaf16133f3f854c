#include "core/storage.h"

#include <cstdlib>
#include <new>

#include "core/error.h"

namespace flame {

#ifdef FLAME_WITH_CUDA
namespace cuda {
Allocator& caching_allocator(int device);
}
#endif

namespace {

/// Host buffers, 64-byte aligned (room for any SIMD load the BLAS makes).
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    const size_t rounded = (nbytes + 63) / 64 * 64;
    void* ptr = std::aligned_alloc(64, rounded);
    FLAME_CHECK(ptr != nullptr, "host allocation of {} bytes failed: out of memory", nbytes);
    return ptr;
  }
  void deallocate(void* ptr, size_t) override { std::free(ptr); }
};

}  // namespace

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) {
    static auto* cpu = new CpuAllocator();
    return *cpu;
  }
#ifdef FLAME_WITH_CUDA
  return cuda::caching_allocator(device.index);
#else
  FLAME_FAIL("device {} requested but FLAME was built without CUDA", device.str());
#endif
}

Storage::Storage(Device device, size_t nbytes)
    : device_(device), nbytes_(nbytes), allocator_(&allocator_for(device)),
      data_(allocator_->allocate(nbytes)) {}

Storage::Storage(Device device, void* borrowed, size_t nbytes)
    : device_(device), nbytes_(nbytes), allocator_(nullptr), data_(borrowed) {}

std::shared_ptr<Storage> Storage::borrow(Device device, void* data, size_t nbytes) {
  return std::shared_ptr<Storage>(new Storage(device, data, nbytes));
}

Storage::~Storage() {
  if (data_ && allocator_) allocator_->deallocate(data_, nbytes_);
}

}  // namespace flame
