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

/// How many multiprocessors (SMs) `device` has.
int multiprocessor_count(int device = 0);
/// Makes cuBLAS choose its GEMM kernels for `sms` multiprocessors on `device` from the next matmul
/// on (cublasSetSmCountTarget); 0 restores "all of them". For work that runs beside another
/// stream's kernels holding some SMs, as NCCL's during DDP's overlapped all-reduces
/// (Note [SM carve-out] in dist/nccl_communicator.cpp). Host-side only, takes effect in stream order
/// with the matmuls launched after it. Raises for sms < 0 or more than the device has.
void set_gemm_sm_target(int device, int sms);
/// The value set_gemm_sm_target last set on `device` (0: all SMs).
int gemm_sm_target(int device = 0);

/// Which cuDNN API runs conv2d's passes (forward, backward-data, backward-filter) on every device
/// (Note [cudnn conv plans] in core/cuda/conv2d.cpp): execution plans of cuDNN's graph API, the
/// default, which cost the host less per call, or cuDNN's legacy cudnnConvolution* calls. Both
/// compute the same convolution; cuDNN may pick different kernels for them. The environment
/// variable FLAME_CUDNN_CONV ("graph" or "legacy") sets the value a process starts with.
enum class Conv2dApi { Graph, Legacy };
/// Selects the API for the conv2d calls made from now on, in every thread (and makes a bad
/// FLAME_CUDNN_CONV value harmless).
void set_conv2d_api(Conv2dApi api);
/// The API conv2d calls use now; raises for a FLAME_CUDNN_CONV value other than "graph" or "legacy"
/// (any case) unless set_conv2d_api was called first.
Conv2dApi conv2d_api();
/// How many conv2d passes each API has run in this process. Under Conv2dApi::Graph a pass still
/// runs through the legacy API where the graph API offers no allowed engine for its geometry, dtype
/// and alignment (logged once per geometry).
struct Conv2dApiCalls {
  uint64_t graph = 0;
  uint64_t legacy = 0;
};
Conv2dApiCalls conv2d_api_calls();

}  // namespace flame::cuda
