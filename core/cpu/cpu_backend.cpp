#include "core/cpu/cpu_backend.h"

namespace flame {

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace flame
