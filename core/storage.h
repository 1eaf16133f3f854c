// Ref-counted device buffers shared by Tensor views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/device.h"

namespace flame {

/// Hands out and takes back raw buffers for one device. Implementations live for the whole
/// process (they are never destroyed, so buffers freed during static destruction stay valid).
class Allocator {
 public:
  virtual ~Allocator() = default;
  /// A buffer of at least `nbytes` bytes (nullptr for 0 bytes); raises flame::Error when out of memory.
  virtual void* allocate(size_t nbytes) = 0;
  /// Returns a buffer from allocate(); `nbytes` is the size that was asked for.
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
};

/// The allocator of `device` (the CUDA caching allocator for CUDA devices).
Allocator& allocator_for(Device device);

/// One buffer; freed through its allocator when the last Tensor viewing it goes away.
class Storage {
 public:
  Storage(Device device, size_t nbytes);
  /// A Storage over `nbytes` at `data` that something else allocated and frees, such as a
  /// communicator's registered buffer: never freed here, so its owner must keep it alive as long as
  /// device work may read a tensor viewing it.
  static std::shared_ptr<Storage> borrow(Device device, void* data, size_t nbytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  /// Counts in-place writes, so autograd can tell a saved tensor was modified.
  uint64_t version() const { return version_; }
  void bump_version() { ++version_; }

 private:
  Storage(Device device, void* borrowed, size_t nbytes);

  Device device_;
  size_t nbytes_;
  Allocator* allocator_;  // null for borrowed memory
  void* data_;
  uint64_t version_ = 0;
};

}  // namespace flame
