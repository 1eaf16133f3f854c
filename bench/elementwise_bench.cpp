// Elementwise bandwidth: flame::add of two 256 MiB f32 tensors (3 x 256 MiB moved) against a
// device-to-device cudaMemcpyAsync of 256 MiB (2 x 256 MiB moved), the copy being the ceiling a
// memory-bound op can reach. Both are checked element by element before they are timed.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bench/bench_util.h"
#include "core/cuda/context.h"
#include "core/cuda_device.h"
#include "core/ops.h"

namespace {

using flame::Tensor;
namespace bench = flame::bench;

constexpr int64_t kElements = int64_t{64} << 20;  // 64 Mi f32 = 256 MiB per tensor
constexpr int kWarmup = 5;
constexpr int kRuns = 50;

std::vector<float> to_host(const Tensor& t, cudaStream_t stream) {
  std::vector<float> out(t.numel());
  FLAME_CUDA_CHECK(cudaMemcpyAsync(out.data(), t.data_ptr(), t.nbytes(), cudaMemcpyDeviceToHost, stream));
  FLAME_CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

// flame::add on a poisoned output block against the host sum, and the copy against its source.
bool check_once(const Tensor& a, const Tensor& b, const Tensor& copy_dst, cudaStream_t stream) {
  {
    // The caching allocator hands this block back to the add below: unwritten elements stay NaN.
    Tensor poison = flame::empty({kElements}, flame::TensorOptions(flame::kF32, a.device()));
    FLAME_CUDA_CHECK(cudaMemsetAsync(poison.data_ptr(), 0xFF, poison.nbytes(), stream));
  }
  const Tensor sum = flame::add(a, b);
  FLAME_CHECK(sum.shape() == a.shape() && sum.dtype() == flame::kF32 && sum.is_contiguous(),
              "elementwise_bench: flame::add gave {}, expected a contiguous [{}] f32", sum.describe(),
              kElements);
  FLAME_CUDA_CHECK(cudaMemsetAsync(copy_dst.data_ptr(), 0xFF, copy_dst.nbytes(), stream));
  FLAME_CUDA_CHECK(
      cudaMemcpyAsync(copy_dst.data_ptr(), a.data_ptr(), a.nbytes(), cudaMemcpyDeviceToDevice, stream));
  flame::cuda::synchronize(0);

  const std::vector<float> ha = to_host(a, stream), hb = to_host(b, stream);
  const std::vector<float> hsum = to_host(sum, stream), hcopy = to_host(copy_dst, stream);
  int64_t wrong = 0, first_wrong = -1;
  for (int64_t i = 0; i < kElements; ++i) {
    const float expected = ha[i] + hb[i];
    // f32 addition is correctly rounded on both sides; the slack only covers flushed subnormals.
    if (!(std::fabs(hsum[i] - expected) <= 1e-6f * std::fabs(expected) + 1e-30f)) {
      if (first_wrong < 0) first_wrong = i;
      ++wrong;
    }
  }
  if (wrong != 0) {
    fmt::print(stderr,
               "elementwise_bench: flame::add is wrong at {} of {} elements (first: {}: {} + {} gave {}). "
               "Not timed.\n",
               wrong, kElements, first_wrong, ha[first_wrong], hb[first_wrong], hsum[first_wrong]);
    return false;
  }
  if (std::memcmp(ha.data(), hcopy.data(), a.nbytes()) != 0) {
    fmt::print(stderr,
               "elementwise_bench: the device-to-device copy does not match its source. Not timed.\n");
    return false;
  }
  return true;
}

int run() {
  const flame::TensorOptions options(flame::kF32, flame::cuda_device(0));
  const cudaStream_t stream = flame::cuda::compute_stream(0);
  const Tensor a = flame::randn({kElements}, options);
  const Tensor b = flame::randn({kElements}, options);
  const Tensor copy_dst = flame::empty({kElements}, options);
  if (!check_once(a, b, copy_dst, stream)) return 1;

  const size_t bytes = a.nbytes();
  for (int i = 0; i < kWarmup; ++i) {
    const Tensor sum = flame::add(a, b);
    FLAME_CUDA_CHECK(
        cudaMemcpyAsync(copy_dst.data_ptr(), a.data_ptr(), bytes, cudaMemcpyDeviceToDevice, stream));
  }
  flame::cuda::synchronize(0);

  // Interleaved runs; flame's region includes the allocation of its output (warm cache).
  bench::EventTimes add_times(kRuns), copy_times(kRuns);
  const uint64_t mallocs_before = flame::cuda::malloc_count(0);
  for (int i = 0; i < kRuns; ++i) {
    {
      add_times.start(i, stream);
      const Tensor sum = flame::add(a, b);
      add_times.stop(i, stream);
    }
    copy_times.start(i, stream);
    FLAME_CUDA_CHECK(
        cudaMemcpyAsync(copy_dst.data_ptr(), a.data_ptr(), bytes, cudaMemcpyDeviceToDevice, stream));
    copy_times.stop(i, stream);
  }
  flame::cuda::synchronize(0);
  const uint64_t mallocs = flame::cuda::malloc_count(0) - mallocs_before;
  if (mallocs != 0)
    fmt::print(stderr, "elementwise_bench: note: {} cudaMalloc calls during the timed runs\n", mallocs);

  const double add_gbs = 3.0 * bytes / (bench::median(add_times.elapsed_ms()) * 1e-3) / 1e9;
  const double copy_gbs = 2.0 * bytes / (bench::median(copy_times.elapsed_ms()) * 1e-3) / 1e9;
  bench::emit({"add", "flame", "f32", "256MiB", add_gbs, "GB/s"});
  bench::emit({"copy", "cuda_memcpy", "f32", "256MiB", copy_gbs, "GB/s"});
  bench::emit({"add", "flame/cuda_memcpy", "f32", "256MiB", add_gbs / copy_gbs, "ratio"});
  return 0;
}

}  // namespace

int main() { return bench::run_benchmark("elementwise_bench", run); }
