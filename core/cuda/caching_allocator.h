// The CUDA caching allocator: per-device, stream-ordered on the device's compute stream.
// Internal to core/; users see its counters through core/cuda_device.h.
//
// Note [caching allocator streams]
// Every CUDA buffer is handed out for use on its device's compute stream. When a Storage frees a
// buffer, kernels queued on that stream may still be reading or writing it; the block goes back to
// the cache at once, and the next allocation may hand it out again without any synchronisation.
// That is safe because everything that touches the new owner's memory is queued on the same stream
// after the earlier kernels, so it runs after them. Work queued on ANY OTHER stream (the NCCL
// communication stream, a loader's copy stream) that uses a buffer must be made to finish before
// the compute stream moves on past the point where the buffer is freed: record an event on that
// stream and make the compute stream wait on it (cudaStreamWaitEvent) before the last Tensor
// referring to the buffer goes away.
//
// Sizes are rounded up to 512 bytes below 1 MiB (served from 2 MiB segments shared by small
// blocks) and to 2 MiB above; the best-fitting free block is taken and split when the remainder is
// big enough; freed blocks merge with free neighbours of their segment. In steady state (the same
// sizes again) no cudaMalloc or cudaFree is made. cudaMalloc failing empties the cache once and
// retries before raising an out-of-memory flame::Error.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/storage.h"

namespace flame::cuda {

struct AllocatorStats {
  size_t allocated = 0;       // bytes in live blocks (rounded sizes)
  size_t peak_allocated = 0;  // max of `allocated` since start or reset_peak
  size_t reserved = 0;        // bytes obtained from cudaMalloc and not returned
  uint64_t malloc_count = 0;  // cudaMalloc calls made
};

/// The caching allocator of `device` (raises flame::Error for a device that does not exist).
Allocator& caching_allocator(int device);
AllocatorStats caching_allocator_stats(int device);
/// Sets the peak to the current allocated bytes.
void caching_allocator_reset_peak(int device);
/// Returns every segment with no live block to the driver (cudaFree synchronises the device).
void caching_allocator_empty_cache(int device);

}  // namespace flame::cuda
