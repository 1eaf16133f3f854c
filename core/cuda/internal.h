// Hooks between the files of core/cuda/ that the shared headers do not declare. Internal.
#pragma once

#include <cstdint>

namespace flame::cuda {

/// True once context(device) has created the context of `device` (no CUDA call is made).
bool has_context(int device);

/// Increases each time clear_memory_kernel_cache() runs; caches of kernel handles kept outside
/// nvrtc.cpp (the elementwise launchers') drop their entries when it changes.
uint64_t kernel_cache_generation();

}  // namespace flame::cuda
