// Kernels generated as CUDA C++ source and compiled at run time with NVRTC, cached in memory and
// on disk (keyed by source, target architecture and NVRTC version), so a second start compiles
// nothing. Disk cache directory: $FLAME_KERNEL_CACHE, else $XDG_CACHE_HOME/flame/kernels, else
// ~/.cache/flame/kernels; a cache that cannot be written is skipped with a warning.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace flame::cuda {

/// Compiles `source` to a cubin for compute capability `arch` (e.g. 90), or reads it from the
/// disk cache. Needs no GPU. A compile failure raises flame::Error containing the NVRTC log and
/// the numbered source.
std::vector<char> compile_to_cubin(const std::string& source, int arch);

/// The kernel `name` (declared extern "C" in `source`) loaded on `device`, compiling it on first
/// use. Later calls with the same source and device return the cached handle.
cudaKernel_t runtime_kernel(const std::string& source, const char* name, int device);

/// Counters for tests: NVRTC compilations and disk-cache hits in this process.
struct NvrtcStats {
  uint64_t compiles = 0;
  uint64_t disk_hits = 0;
};
NvrtcStats nvrtc_stats();
/// Forgets the in-memory cache (loaded kernels stay valid); the next lookup goes to disk.
void clear_memory_kernel_cache();

}  // namespace flame::cuda
