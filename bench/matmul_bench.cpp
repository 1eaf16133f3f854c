// Matmul throughput: flame::matmul against a raw cublasGemmEx on the same device buffers, bf16 and
// f32 (no TF32), square sizes. Both are checked against a float64 reference at sampled entries
// before they are timed; f32's bound (5e-5) is far under what TF32 gives (~3e-4).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "bench/bench_util.h"
#include "core/cuda/context.h"
#include "core/cuda_device.h"
#include "core/ops.h"

namespace {

using flame::DType;
using flame::Tensor;
namespace bench = flame::bench;

constexpr int kWarmup = 5;
constexpr int kRuns = 30;
constexpr int kSamples = 512;

cudaDataType_t cuda_data_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      FLAME_FAIL("matmul_bench: no cuBLAS type for {}", flame::dtype_name(dtype));
  }
}

// c[m, n] = a[m, k] @ b[k, n], all row-major and contiguous. cuBLAS is column-major, where these
// buffers read as a^T [k, m], b^T [n, k], c^T [n, m]: compute c^T = b^T @ a^T (operands swapped).
void raw_gemm(cublasHandle_t handle, DType dtype, int64_t m, int64_t n, int64_t k, const void* a,
              const void* b, void* c) {
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t type = cuda_data_type(dtype);
  FLAME_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                                  static_cast<int>(k), &alpha, b, type, static_cast<int>(n), a, type,
                                  static_cast<int>(k), &beta, c, type, static_cast<int>(n),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// The `count` elements at `ptr` (device, f32 or bf16) as host floats.
std::vector<float> to_host(const void* ptr, int64_t count, DType dtype, cudaStream_t stream) {
  std::vector<float> out(count);
  if (dtype == DType::F32) {
    FLAME_CUDA_CHECK(cudaMemcpyAsync(out.data(), ptr, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
    FLAME_CUDA_CHECK(cudaStreamSynchronize(stream));
    return out;
  }
  FLAME_CHECK(dtype == DType::BF16, "matmul_bench: to_host takes f32 or bf16, not {}",
              flame::dtype_name(dtype));
  std::vector<uint16_t> bits(count);
  FLAME_CUDA_CHECK(
      cudaMemcpyAsync(bits.data(), ptr, count * sizeof(uint16_t), cudaMemcpyDeviceToHost, stream));
  FLAME_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (int64_t i = 0; i < count; ++i) out[i] = flame::bf16_bits_to_float(bits[i]);
  return out;
}

// ||x - ref|| / ||ref||; infinite when x holds a NaN or an infinity.
template <class T>
double relative_l2(const std::vector<T>& x, const std::vector<T>& ref) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double xi = x[i], ri = ref[i];
    if (!std::isfinite(xi)) return INFINITY;
    diff += (xi - ri) * (xi - ri);
    norm += ri * ri;
  }
  return std::sqrt(diff / norm);
}

struct Check {
  double flame_vs_f64 = 0.0, cublas_vs_f64 = 0.0, flame_vs_cublas = 0.0;
  bool passed = false;
};

// Runs both once on poisoned outputs (all-ones bits: NaN) and compares: each against a float64
// reference at kSamples random entries, and flame against cuBLAS over every element.
Check check_once(const Tensor& a, const Tensor& b, const Tensor& raw_out, cudaStream_t stream,
                 cublasHandle_t handle) {
  const DType dtype = a.dtype();
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const size_t out_bytes = static_cast<size_t>(m * n) * a.element_size();

  FLAME_CUDA_CHECK(cudaMemsetAsync(raw_out.data_ptr(), 0xFF, out_bytes, stream));
  raw_gemm(handle, dtype, m, n, k, a.data_ptr(), b.data_ptr(), raw_out.data_ptr());
  FLAME_CUDA_LAUNCH_CHECK();
  {
    // The caching allocator hands this block back to the matmul below, so unwritten entries of
    // flame's output show up as NaN.
    Tensor poison = flame::empty({m, n}, flame::TensorOptions(dtype, a.device()));
    FLAME_CUDA_CHECK(cudaMemsetAsync(poison.data_ptr(), 0xFF, out_bytes, stream));
  }
  const Tensor out = flame::matmul(a, b);
  FLAME_CHECK(out.shape() == flame::Shape({m, n}) && out.dtype() == dtype && out.is_contiguous(),
              "matmul_bench: flame::matmul gave {}, expected a contiguous [{}, {}] {}", out.describe(), m, n,
              flame::dtype_name(dtype));
  flame::cuda::synchronize(0);

  const std::vector<float> ha = to_host(a.data_ptr(), m * k, dtype, stream);
  const std::vector<float> hb = to_host(b.data_ptr(), k * n, dtype, stream);
  const std::vector<float> hflame = to_host(out.data_ptr(), m * n, dtype, stream);
  const std::vector<float> hraw = to_host(raw_out.data_ptr(), m * n, dtype, stream);

  std::mt19937_64 rng(12345);
  std::uniform_int_distribution<int64_t> row(0, m - 1), col(0, n - 1);
  std::vector<double> ref(kSamples), flame_at(kSamples), raw_at(kSamples);
  for (int s = 0; s < kSamples; ++s) {
    const int64_t i = row(rng), j = col(rng);
    double dot = 0.0;
    for (int64_t t = 0; t < k; ++t) dot += static_cast<double>(ha[i * k + t]) * hb[t * n + j];
    ref[s] = dot;
    flame_at[s] = hflame[i * n + j];
    raw_at[s] = hraw[i * n + j];
  }
  Check check;
  check.flame_vs_f64 = relative_l2(flame_at, ref);
  check.cublas_vs_f64 = relative_l2(raw_at, ref);
  check.flame_vs_cublas = relative_l2(hflame, hraw);
  const double bound = dtype == DType::F32 ? 5e-5 : 8e-3;
  check.passed = check.flame_vs_f64 < bound && check.cublas_vs_f64 < bound && check.flame_vs_cublas < bound;
  if (!check.passed) {
    fmt::print(stderr,
               "matmul_bench: {} {}^3 is wrong: relative L2 error flame {:.3g}, cuBLAS {:.3g} "
               "(vs float64), flame vs cuBLAS {:.3g}; bound {:.3g}. Not timed.\n",
               flame::dtype_name(dtype), m, check.flame_vs_f64, check.cublas_vs_f64, check.flame_vs_cublas,
               bound);
  }
  return check;
}

// Times and reports one (dtype, size); false when the results were wrong.
bool run_case(DType dtype, int64_t size) {
  const int64_t m = size, n = size, k = size;
  const flame::TensorOptions options(dtype, flame::cuda_device(0));
  const std::string dtype_name(flame::dtype_name(dtype));
  const std::string size_name = fmt::format("{}^3", size);
  const cudaStream_t stream = flame::cuda::compute_stream(0);
  const cublasHandle_t handle = flame::cuda::context(0).cublas;

  // The raw call must run on the stream the events are recorded on, and with TF32 off.
  cudaStream_t handle_stream = nullptr;
  FLAME_CUBLAS_CHECK(cublasGetStream(handle, &handle_stream));
  FLAME_CHECK(handle_stream == stream,
              "matmul_bench: the context's cuBLAS handle is bound to another stream than "
              "compute_stream(0); the raw cuBLAS timing would be wrong");
  cublasMath_t saved_mode = CUBLAS_DEFAULT_MATH;
  FLAME_CUBLAS_CHECK(cublasGetMathMode(handle, &saved_mode));
  FLAME_CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));

  const Tensor a = flame::randn({m, k}, options);
  const Tensor b = flame::randn({k, n}, options);
  const Tensor raw_out = flame::empty({m, n}, options);

  const Check check = check_once(a, b, raw_out, stream, handle);
  bench::emit({"matmul_rel_err", "flame", dtype_name, size_name, check.flame_vs_f64, "rel_l2_vs_f64"});
  bench::emit({"matmul_rel_err", "cublas", dtype_name, size_name, check.cublas_vs_f64, "rel_l2_vs_f64"});
  if (!check.passed) {
    FLAME_CUBLAS_CHECK(cublasSetMathMode(handle, saved_mode));
    return false;
  }

  for (int i = 0; i < kWarmup; ++i) {
    const Tensor out = flame::matmul(a, b);
    raw_gemm(handle, dtype, m, n, k, a.data_ptr(), b.data_ptr(), raw_out.data_ptr());
  }
  flame::cuda::synchronize(0);

  // Interleaved, so both see the same clocks and temperature. Flame's region includes the
  // allocation of its output from the (warm) caching allocator.
  bench::EventTimes flame_times(kRuns), raw_times(kRuns);
  const uint64_t mallocs_before = flame::cuda::malloc_count(0);
  for (int i = 0; i < kRuns; ++i) {
    {
      flame_times.start(i, stream);
      const Tensor out = flame::matmul(a, b);
      flame_times.stop(i, stream);
    }
    raw_times.start(i, stream);
    raw_gemm(handle, dtype, m, n, k, a.data_ptr(), b.data_ptr(), raw_out.data_ptr());
    raw_times.stop(i, stream);
  }
  flame::cuda::synchronize(0);
  FLAME_CUBLAS_CHECK(cublasSetMathMode(handle, saved_mode));
  const uint64_t mallocs = flame::cuda::malloc_count(0) - mallocs_before;
  if (mallocs != 0) {
    fmt::print(stderr, "matmul_bench: note: {} cudaMalloc calls during the timed {} {} runs\n", mallocs,
               dtype_name, size_name);
  }

  const double flop = 2.0 * static_cast<double>(m) * n * k;
  const double flame_tflops = flop / (bench::median(flame_times.elapsed_ms()) * 1e-3) / 1e12;
  const double raw_tflops = flop / (bench::median(raw_times.elapsed_ms()) * 1e-3) / 1e12;
  bench::emit({"matmul", "flame", dtype_name, size_name, flame_tflops, "TFLOP/s"});
  bench::emit({"matmul", "cublas", dtype_name, size_name, raw_tflops, "TFLOP/s"});
  bench::emit({"matmul", "flame/cublas", dtype_name, size_name, flame_tflops / raw_tflops, "ratio"});
  return true;
}

}  // namespace

int main() {
  return bench::run_benchmark("matmul_bench", [] {
    bool all_right = true;
    for (const DType dtype : {DType::BF16, DType::F32}) {
      for (const int64_t size : {4096, 8192}) all_right = run_case(dtype, size) && all_right;
    }
    return all_right ? 0 : 1;
  });
}
