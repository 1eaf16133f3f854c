#include "core/cuda/context.h"

#include <array>
#include <memory>
#include <atomic>
#include <mutex>
#include <string>

#include "core/cuda/internal.h"
#include "core/cuda_device.h"

namespace flame::cuda {

namespace {

constexpr int kMaxDevices = 64;
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

struct ContextSlot {
  std::once_flag once;
  std::atomic<DeviceContext*> context{nullptr};
};

std::array<ContextSlot, kMaxDevices>& slots() {
  static auto* table = new std::array<ContextSlot, kMaxDevices>();  // never destroyed
  return *table;
}

std::string driver_hint(cudaError_t status) {
  if (status == cudaErrorNoDevice)
    return " (no CUDA device is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES)";
  if (status == cudaErrorInsufficientDriver)
    return " (the NVIDIA driver is missing or older than this CUDA runtime: install a newer driver)";
  return "";
}

DeviceContext* create_context(int device) {
  FLAME_CUDA_CHECK(cudaSetDevice(device));
  auto ctx = std::make_unique<DeviceContext>();
  ctx->device = device;
  FLAME_CUDA_CHECK(cudaGetDeviceProperties(&ctx->properties, device));
  ctx->arch = ctx->properties.major * 10 + ctx->properties.minor;
  FLAME_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));

  FLAME_CUDA_CHECK(cudaMalloc(&ctx->error_flag, sizeof(int)));
  FLAME_CUDA_CHECK(cudaMemsetAsync(ctx->error_flag, 0, sizeof(int), ctx->stream));

  FLAME_CUDA_CHECK(cudaMalloc(&ctx->cublas_workspace, kCublasWorkspaceBytes));
  ctx->cublas_workspace_bytes = kCublasWorkspaceBytes;
  FLAME_CUBLAS_CHECK(cublasCreate(&ctx->cublas));
  FLAME_CUBLAS_CHECK(cublasSetStream(ctx->cublas, ctx->stream));
  FLAME_CUBLAS_CHECK(cublasSetWorkspace(ctx->cublas, ctx->cublas_workspace, ctx->cublas_workspace_bytes));
  FLAME_CUBLAS_CHECK(cublasSetMathMode(ctx->cublas, CUBLAS_DEFAULT_MATH));  // no TF32
  FLAME_CUBLAS_CHECK(cublasLtCreate(&ctx->cublaslt));

  FLAME_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
  return ctx.release();  // lives for the process
}

}  // namespace

void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line) {
  // Clears the error for the next call when it is not sticky (a sticky one stays either way).
  (void)cudaGetLastError();
  detail::throw_error(expr, file, line,
                      fmt::format("CUDA error {}: {}{}", cudaGetErrorName(status),
                                  cudaGetErrorString(status), driver_hint(status)));
}

void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
  detail::throw_error(expr, file, line,
                      fmt::format("cuBLAS error {}: {}", cublasGetStatusName(status),
                                  cublasGetStatusString(status)));
}

DeviceContext& context(int device) {
  if (device >= 0 && device < kMaxDevices) {
    DeviceContext* ready = slots()[device].context.load(std::memory_order_acquire);
    if (ready != nullptr) {
      int current = -1;
      if (cudaGetDevice(&current) != cudaSuccess || current != device)
        FLAME_CUDA_CHECK(cudaSetDevice(device));
      return *ready;
    }
  }
  const int count = device_count();
  if (count == 0) {
    int ignored = 0;
    const cudaError_t status = cudaGetDeviceCount(&ignored);
    (void)cudaGetLastError();
    FLAME_FAIL("cuda:{} requested but no CUDA device is usable: cudaGetDeviceCount reports {} ({}){}",
               device, cudaGetErrorName(status), cudaGetErrorString(status),
               status == cudaSuccess ? " (CUDA_VISIBLE_DEVICES may hide every GPU)" : driver_hint(status));
  }
  FLAME_CHECK(device >= 0 && device < count,
              "cuda:{} requested but only {} CUDA device(s) are visible (valid: cuda:0 to cuda:{})",
              device, count, count - 1);
  FLAME_CHECK(device < kMaxDevices, "cuda:{}: FLAME supports at most {} devices per process", device,
              kMaxDevices);
  ContextSlot& slot = slots()[device];
  std::call_once(slot.once, [&] { slot.context.store(create_context(device), std::memory_order_release); });
  FLAME_CUDA_CHECK(cudaSetDevice(device));
  return *slot.context.load(std::memory_order_acquire);
}

cudaStream_t compute_stream(int device) { return context(device).stream; }

bool has_context(int device) {
  return device >= 0 && device < kMaxDevices &&
         slots()[device].context.load(std::memory_order_acquire) != nullptr;
}

void check_device_errors(int device) {
  DeviceContext& ctx = context(device);
  int code = 0;
  FLAME_CUDA_CHECK(cudaMemcpyAsync(&code, ctx.error_flag, sizeof(int), cudaMemcpyDeviceToHost, ctx.stream));
  FLAME_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  if (code == static_cast<int>(DeviceError::None)) return;
  FLAME_CUDA_CHECK(cudaMemsetAsync(ctx.error_flag, 0, sizeof(int), ctx.stream));
  FLAME_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  FLAME_CHECK(code != static_cast<int>(DeviceError::IndexOutOfRange),
              "index out of range in an indexing op (index_select/gather/scatter_add/cross_entropy) on cuda:{}: an "
              "index was negative or not below the indexed dimension's size (found at synchronisation; "
              "the op that wrote it was queued earlier)", device);
  FLAME_FAIL("unknown device error code {} reported on cuda:{}", code, device);
}

}  // namespace flame::cuda
