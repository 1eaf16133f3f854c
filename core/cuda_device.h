// Public queries about CUDA devices; available in every build (without CUDA: no devices).
#pragma once

#include <cstddef>
#include <cstdint>

namespace flame::cuda {

/// True when FLAME was built with CUDA and at least one device is usable.
bool is_available();
/// Number of usable CUDA devices (0 without CUDA or a driver).
int device_count();
/// Waits for all work queued on `device`'s compute stream; raises flame::Error for a failure
/// found on the device (a CUDA error, or an out-of-range index seen by an indexing kernel).
void synchronize(int device = 0);

/// Bytes held by live tensors on `device`, and the peak since start or the last reset.
size_t memory_allocated(int device = 0);
size_t max_memory_allocated(int device = 0);
void reset_peak_memory_stats(int device = 0);
/// Bytes obtained from cudaMalloc and not yet returned (in use plus cached).
size_t memory_reserved(int device = 0);
/// How many times the caching allocator has called cudaMalloc on `device` (steady-state checks).
uint64_t malloc_count(int device = 0);
/// Returns cached, unused blocks to the driver.
void empty_cache(int device = 0);

}  // namespace flame::cuda
