// Per-device CUDA context (stream, library handles, device error flag) and the CUDA error idiom.
// Internal to core/ and the CUDA code of higher layers.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "core/error.h"

namespace flame::cuda {

/// Raise flame::Error for a failed CUDA runtime / cuBLAS call, naming the call and the error.
[[noreturn]] void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line);

}  // namespace flame::cuda

#define FLAME_CUDA_CHECK(expr)                                                              \
  do {                                                                                      \
    const cudaError_t flame_status_ = (expr);                                               \
    if (flame_status_ != cudaSuccess)                                                       \
      ::flame::cuda::throw_cuda_error(flame_status_, #expr, __FILE__, __LINE__);            \
  } while (0)

#define FLAME_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                      \
    const cublasStatus_t flame_status_ = (expr);                                            \
    if (flame_status_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::flame::cuda::throw_cublas_error(flame_status_, #expr, __FILE__, __LINE__);          \
  } while (0)

/// Ends every kernel launcher: raises for a failed launch (bad configuration, missing image).
#define FLAME_CUDA_LAUNCH_CHECK() FLAME_CUDA_CHECK(cudaGetLastError())

namespace flame::cuda {

/// Codes a kernel writes to DeviceContext::error_flag; read and raised by check_device_errors().
enum class DeviceError : int { None = 0, IndexOutOfRange = 1 };

/// Everything FLAME keeps per CUDA device. Created on first use, lives for the process.
struct DeviceContext {
  int device = 0;
  cudaStream_t stream = nullptr;     // compute stream (non-blocking)
  cublasHandle_t cublas = nullptr;   // bound to `stream`
  cublasLtHandle_t cublaslt = nullptr;
  void* cublas_workspace = nullptr;  // [cublas_workspace_bytes] for cuBLAS / cuBLASLt
  size_t cublas_workspace_bytes = 0;
  int* error_flag = nullptr;         // [1] device memory, DeviceError code, 0 when clean
  int gemm_sm_target = 0;            // SMs cuBLAS should plan GEMMs for (0: all); set_gemm_sm_target()
  int gemm_sm_applied = 0;           // the value last given to cublasSetSmCountTarget
  cudaDeviceProp properties{};
  int arch = 0;                      // compute capability as major*10+minor, e.g. 90
};

/// The context of `device`; makes it the calling thread's current device. Raises flame::Error
/// when the device does not exist.
DeviceContext& context(int device);
/// Shorthand for context(device).stream.
cudaStream_t compute_stream(int device);
/// Reads the device error flag (a synchronising read), resets it and raises flame::Error naming
/// the error when it was set.
void check_device_errors(int device);

}  // namespace flame::cuda
