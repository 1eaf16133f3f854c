// cuDNN helpers shared by the ops that call it: the status check, and an owner for the descriptors
// of cuDNN's graph (backend) API.
#pragma once

#include <cudnn.h>
#include <fmt/format.h>

#include <utility>

#include "core/error.h"

/// Raises flame::Error naming the cuDNN call and status when `expr` does not succeed.
#define FLAME_CUDNN_CHECK(expr)                                                                                       \
  do {                                                                                                                \
    const cudnnStatus_t flame_status_ = (expr);                                                                       \
    if (flame_status_ != CUDNN_STATUS_SUCCESS)                                                                        \
      ::flame::detail::throw_error(                                                                                   \
          #expr, __FILE__, __LINE__,                                                                                  \
          ::fmt::format("cuDNN error {} ({})", cudnnGetErrorString(flame_status_), static_cast<int>(flame_status_))); \
  } while (0)

namespace flame::cuda {

/// Owns one descriptor of cuDNN's graph API (cudnnBackendCreateDescriptor), destroyed with it.
/// set() and finalize() return cuDNN's status: planning treats a refusal as "no plan here".
class BackendDescriptor {
 public:
  explicit BackendDescriptor(cudnnBackendDescriptorType_t type) {
    FLAME_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &descriptor_));
  }
  ~BackendDescriptor() {
    if (descriptor_ != nullptr) cudnnBackendDestroyDescriptor(descriptor_);
  }
  BackendDescriptor(BackendDescriptor&& other) noexcept : descriptor_(std::exchange(other.descriptor_, nullptr)) {}
  BackendDescriptor& operator=(BackendDescriptor&& other) noexcept {
    if (this != &other) {
      if (descriptor_ != nullptr) cudnnBackendDestroyDescriptor(descriptor_);
      descriptor_ = std::exchange(other.descriptor_, nullptr);
    }
    return *this;
  }
  BackendDescriptor(const BackendDescriptor&) = delete;
  BackendDescriptor& operator=(const BackendDescriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return descriptor_; }
  /// Sets attribute `name` to `count` values of `type` read from `values`.
  cudnnStatus_t set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
                    const void* values) {
    return cudnnBackendSetAttribute(descriptor_, name, type, count, values);
  }
  cudnnStatus_t finalize() { return cudnnBackendFinalize(descriptor_); }

 private:
  cudnnBackendDescriptor_t descriptor_ = nullptr;
};

}  // namespace flame::cuda
