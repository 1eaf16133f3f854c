#include "core/backend.h"
#include "core/cpu/cpu_backend.h"

namespace flame {

#ifdef FLAME_WITH_CUDA
Backend& cuda_backend();
#endif

Backend& backend_for(Device device) {
  if (device.is_cpu()) return cpu_backend();
#ifdef FLAME_WITH_CUDA
  return cuda_backend();
#else
  FLAME_FAIL("{} requested but FLAME was built without CUDA (no toolkit found at configure time)", device.str());
#endif
}

#ifndef FLAME_WITH_CUDA
void copy_across_devices(const Tensor& src, const Tensor& dst) {
  FLAME_FAIL("copy from {} to {}: FLAME was built without CUDA", src.device().str(), dst.device().str());
}
#endif

}  // namespace flame
