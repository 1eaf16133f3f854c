#include "core/cuda_device.h"

#include "core/error.h"

#ifdef FLAME_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/context.h"
#endif

namespace flame::cuda {

#ifdef FLAME_WITH_CUDA

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // no driver or no device: report none
      return 0;
    }
    return n;
  }();
  return count;
}

bool is_available() { return device_count() > 0; }

void synchronize(int device) {
  const DeviceContext& ctx = context(device);
  FLAME_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  check_device_errors(device);
}

size_t memory_allocated(int device) { return caching_allocator_stats(device).allocated; }
size_t max_memory_allocated(int device) { return caching_allocator_stats(device).peak_allocated; }
void reset_peak_memory_stats(int device) { caching_allocator_reset_peak(device); }
size_t memory_reserved(int device) { return caching_allocator_stats(device).reserved; }
uint64_t malloc_count(int device) { return caching_allocator_stats(device).malloc_count; }
void empty_cache(int device) { caching_allocator_empty_cache(device); }

int multiprocessor_count(int device) { return context(device).properties.multiProcessorCount; }

void set_gemm_sm_target(int device, int sms) {
  DeviceContext& ctx = context(device);
  FLAME_CHECK(sms >= 0 && sms <= ctx.properties.multiProcessorCount,
              "set_gemm_sm_target(cuda:{}): {} SMs requested; the device has {} (0 restores all of them)", device, sms,
              ctx.properties.multiProcessorCount);
  ctx.gemm_sm_target = sms;
}

int gemm_sm_target(int device) { return context(device).gemm_sm_target; }

#else

namespace {
[[noreturn]] void no_cuda(const char* what, int device) {
  FLAME_FAIL(
      "{}(cuda:{}): FLAME was built without CUDA (reconfigure with -DFLAME_WITH_CUDA=ON on a "
      "machine with the CUDA toolkit)",
      what, device);
}
}  // namespace

bool is_available() { return false; }
int device_count() { return 0; }
void synchronize(int device) { no_cuda("synchronize", device); }
size_t memory_allocated(int device) { no_cuda("memory_allocated", device); }
size_t max_memory_allocated(int device) { no_cuda("max_memory_allocated", device); }
void reset_peak_memory_stats(int device) { no_cuda("reset_peak_memory_stats", device); }
size_t memory_reserved(int device) { no_cuda("memory_reserved", device); }
uint64_t malloc_count(int device) { no_cuda("malloc_count", device); }
void empty_cache(int device) { no_cuda("empty_cache", device); }
int multiprocessor_count(int device) { no_cuda("multiprocessor_count", device); }
void set_gemm_sm_target(int device, int) { no_cuda("set_gemm_sm_target", device); }
int gemm_sm_target(int device) { no_cuda("gemm_sm_target", device); }
void set_conv2d_api(Conv2dApi) { no_cuda("set_conv2d_api", 0); }
Conv2dApi conv2d_api() { no_cuda("conv2d_api", 0); }
Conv2dApiCalls conv2d_api_calls() { no_cuda("conv2d_api_calls", 0); }

#endif

}  // namespace flame::cuda
