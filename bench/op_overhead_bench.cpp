// Host overhead of small ops, as eager frameworks are compared:
// - flame::add of two 16-element f32 CUDA tensors, launch and output allocation included. A host
//   clock brackets a loop of kOps asynchronous adds and one final synchronize; the figure is the
//   median over kRepeats of (loop time / kOps).
// - each conv2d pass (forward, backward-data, backward-filter) through the backend, on preallocated
//   f32 tensors of a small geometry ([1, 8, 8, 8] input, 8 3x3 filters, padding 1: the GPU's time
//   per call is below the host's), through each of cuDNN's APIs (cuda::Conv2dApi, Note [cudnn conv
//   plans]). Each repeat times kConvOps calls of every pass with one API, then with the other (the
//   order alternates between repeats), so both see the same host; the figures are the medians over
//   kRepeats of the per-call times.
//
// Prints {"bench": "op_overhead", "impl": "flame", "dtype": "f32", "size": "16", "value": <us>,
// "unit": "us/op", ...} and {"bench": "conv2d_overhead", "impl": "flame", "dtype": "f32",
// "size": "<pass> <api>", "value": <us>, "unit": "us/op", ...}.
#include <chrono>
#include <cstdint>
#include <vector>

#include "bench/bench_util.h"
#include "core/backend.h"
#include "core/cuda_device.h"
#include "core/ops.h"

namespace {

using flame::Tensor;
namespace bench = flame::bench;

constexpr int64_t kElements = 16;
constexpr int kWarmup = 1000;
constexpr int kOps = 10000;
constexpr int kRepeats = 7;
constexpr int kConvOps = 2000;

/// Median microseconds per call of each conv2d pass through each cuDNN API (see the top).
void conv2d_overhead() {
  flame::Conv2dGeometry g;
  g.batch = 1;
  g.in_channels = g.out_channels = 8;
  g.in_h = g.in_w = g.out_h = g.out_w = 8;
  g.kernel_h = g.kernel_w = 3;
  g.pad_h = g.pad_w = 1;
  const flame::TensorOptions options(flame::kF32, flame::cuda_device(0));
  const Tensor x = flame::randn({1, 8, 8, 8}, options), w = flame::randn({8, 8, 3, 3}, options);
  const Tensor y = flame::randn({1, 8, 8, 8}, options);
  const Tensor out = flame::empty({1, 8, 8, 8}, options), grad_x = flame::empty({1, 8, 8, 8}, options);
  const Tensor grad_w = flame::empty({8, 8, 3, 3}, options);
  flame::Backend& backend = flame::backend_for(x.device());
  const char* const passes[] = {"forward", "backward-data", "backward-filter"};
  const auto call = [&](int pass) {
    if (pass == 0) backend.conv2d_forward(g, x, w, out);
    if (pass == 1) backend.conv2d_backward_input(g, y, w, grad_x);
    if (pass == 2) backend.conv2d_backward_weight(g, x, y, grad_w);
  };
  const flame::cuda::Conv2dApi apis[] = {flame::cuda::Conv2dApi::Graph, flame::cuda::Conv2dApi::Legacy};
  const flame::cuda::Conv2dApi starting = flame::cuda::conv2d_api();
  std::vector<double> us[2][3];
  for (int r = -1; r < kRepeats; ++r) {  // r = -1: warm-up (plans, kernels), not recorded
    for (int k = 0; k < 2; ++k) {
      const int a = (r % 2 == 0) ? k : 1 - k;  // alternate which API goes first
      flame::cuda::set_conv2d_api(apis[a]);
      for (int pass = 0; pass < 3; ++pass) {
        flame::cuda::synchronize(0);
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < kConvOps; ++i) call(pass);
        flame::cuda::synchronize(0);
        const std::chrono::duration<double, std::micro> elapsed = std::chrono::steady_clock::now() - start;
        if (r >= 0) us[a][pass].push_back(elapsed.count() / kConvOps);
      }
    }
  }
  flame::cuda::set_conv2d_api(starting);
  for (int a = 0; a < 2; ++a)
    for (int pass = 0; pass < 3; ++pass)
      bench::emit({"conv2d_overhead", "flame", "f32", fmt::format("{} {}", passes[pass], a == 0 ? "graph" : "legacy"),
                   bench::median(us[a][pass]), "us/op"});
}

int run() {
  const flame::TensorOptions options(flame::kF32, flame::cuda_device(0));
  const Tensor a = flame::randn({kElements}, options);
  const Tensor b = flame::randn({kElements}, options);

  const std::vector<float> ha = a.to_vector<float>(), hb = b.to_vector<float>();
  const std::vector<float> hsum = flame::add(a, b).to_vector<float>();
  for (int64_t i = 0; i < kElements; ++i) {
    FLAME_CHECK(hsum[i] == ha[i] + hb[i], "op_overhead_bench: flame::add is wrong at {}: {} + {} gave {}", i, ha[i],
                hb[i], hsum[i]);
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
  conv2d_overhead();
  return 0;
}

}  // namespace

int main() { return bench::run_benchmark("op_overhead_bench", run); }
