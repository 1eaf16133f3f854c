// Host overhead of one small op: flame::add of two 16-element f32 CUDA tensors, launch and output
// allocation included. A host clock brackets a loop of kOps asynchronous adds and one final
// synchronize; the figure is the median over kRepeats of (loop time / kOps), as eager frameworks
// are compared.
#include <chrono>
#include <cstdint>
#include <vector>

#include "bench/bench_util.h"
#include "core/cuda_device.h"
#include "core/ops.h"

namespace {

using flame::Tensor;
namespace bench = flame::bench;

constexpr int64_t kElements = 16;
constexpr int kWarmup = 1000;
constexpr int kOps = 10000;
constexpr int kRepeats = 7;

int run() {
  const flame::TensorOptions options(flame::kF32, flame::cuda_device(0));
  const Tensor a = flame::randn({kElements}, options);
  const Tensor b = flame::randn({kElements}, options);

  const std::vector<float> ha = a.to_vector<float>(), hb = b.to_vector<float>();
  const std::vector<float> hsum = flame::add(a, b).to_vector<float>();
  for (int64_t i = 0; i < kElements; ++i) {
    FLAME_CHECK(hsum[i] == ha[i] + hb[i], "op_overhead_bench: flame::add is wrong at {}: {} + {} gave {}", i,
                ha[i], hb[i], hsum[i]);
  }

  for (int i = 0; i < kWarmup; ++i) {
    const Tensor sum = flame::add(a, b);
  }
  flame::cuda::synchronize(0);

  std::vector<double> us_per_op;
  const uint64_t mallocs_before = flame::cuda::malloc_count(0);
  for (int r = 0; r < kRepeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kOps; ++i) {
      const Tensor sum = flame::add(a, b);
    }
    flame::cuda::synchronize(0);
    const std::chrono::duration<double, std::micro> elapsed = std::chrono::steady_clock::now() - start;
    us_per_op.push_back(elapsed.count() / kOps);
  }
  const uint64_t mallocs = flame::cuda::malloc_count(0) - mallocs_before;
  if (mallocs != 0)
    fmt::print(stderr, "op_overhead_bench: note: {} cudaMalloc calls during the timed loops\n", mallocs);

  bench::emit({"op_overhead", "flame", "f32", "16", bench::median(us_per_op), "us/op"});
  return 0;
}

}  // namespace

int main() { return bench::run_benchmark("op_overhead_bench", run); }
