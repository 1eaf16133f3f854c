// One training step of a small CNN on one GPU, as PyTorch's figure in bench/torch_reference.py:
// Conv(1,4,3,p1) - ReLU - MaxPool2 - Conv(4,8,3,p1) - ReLU - MaxPool2 - Flatten - Linear(392,10)
// on a fixed random batch of 256 1x28x28 inputs with random labels; a step is forward,
// nn::cross_entropy, backward, AdamW step() and zero_grad(). Each of kRuns steps (after kWarmup
// warm-up steps) is bracketed by CUDA events on the compute stream; the median is reported, in f32
// and in bf16 (model and inputs converted with to(kBF16): convolutions and matmuls in bf16).
// Sanity check: the batch's loss, read outside the timed steps, must be finite and fall.
//
// Prints {"bench": "cnn_step", "impl": "flame", "dtype": "f32"|"bf16", "size": "b256",
// "value": <ms>, "unit": "ms/step", ...}.
#include <cmath>
#include <memory>

#include "bench/bench_util.h"
#include "core/cuda/context.h"
#include "core/cuda_device.h"
#include "core/ops.h"
#include "nn/activation.h"
#include "nn/conv2d.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/optim/adam.h"
#include "nn/pool2d.h"

namespace {

using flame::DType;
using flame::Tensor;
namespace bench = flame::bench;
namespace nn = flame::nn;

constexpr int64_t kBatch = 256;
constexpr int64_t kSide = 28;
constexpr int64_t kClasses = 10;
constexpr int kWarmup = 10;
constexpr int kRuns = 100;

std::shared_ptr<nn::Sequential> make_model() {
  flame::Conv2dOptions same;
  same.padding = {1, 1};
  flame::Pool2dOptions pool;
  pool.kernel = {2, 2};
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 4, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
      std::make_shared<nn::Conv2d>(4, 8, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
      std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(8 * (kSide / 4) * (kSide / 4), kClasses)});
}

// Times one dtype; false when the loss did not behave.
bool run_case(DType dtype) {
  const flame::Device gpu = flame::cuda_device(0);
  const cudaStream_t stream = flame::cuda::compute_stream(0);
  const std::string dtype_name(flame::dtype_name(dtype));
  flame::manual_seed(0);
  const std::shared_ptr<nn::Sequential> model = make_model();
  model->to(gpu);
  model->to(dtype);
  const Tensor x = flame::randn({kBatch, 1, kSide, kSide}, flame::TensorOptions(flame::kF32, gpu)).to(dtype);
  const Tensor y = flame::randint(0, kClasses, {kBatch}, flame::TensorOptions(flame::kI64, gpu));
  flame::optim::AdamW optimizer(model->parameters(), flame::optim::AdamWOptions{.lr = 1e-3});

  const auto step = [&] {
    Tensor loss = nn::cross_entropy(model->forward(x), y);
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    return loss;
  };
  const double first_loss = step().item();
  for (int i = 1; i < kWarmup; ++i) step();
  flame::cuda::synchronize(0);

  bench::EventTimes times(kRuns);
  Tensor last_loss;
  const uint64_t mallocs_before = flame::cuda::malloc_count(0);
  for (int i = 0; i < kRuns; ++i) {
    times.start(i, stream);
    last_loss = step();
    times.stop(i, stream);
  }
  flame::cuda::synchronize(0);
  const double median_ms = bench::median(times.elapsed_ms());
  const uint64_t mallocs = flame::cuda::malloc_count(0) - mallocs_before;
  if (mallocs != 0)
    fmt::print(stderr, "cnn_step_bench: note: {} cudaMalloc calls during the timed {} steps\n", mallocs, dtype_name);

  const double final_loss = last_loss.item();
  fmt::print(stderr, "cnn_step_bench: {} loss {:.4f} after the first step, {:.4f} after {} steps\n", dtype_name,
             first_loss, final_loss, kWarmup + kRuns);
  bench::emit({"cnn_step", "flame", dtype_name, fmt::format("b{}", kBatch), median_ms, "ms/step"});
  if (!std::isfinite(final_loss) || !(final_loss < first_loss)) {
    fmt::print(stderr, "cnn_step_bench: {}: the loss did not fall ({} -> {}); the step is wrong\n", dtype_name,
               first_loss, final_loss);
    return false;
  }
  return true;
}

}  // namespace

int main() {
  return bench::run_benchmark("cnn_step_bench", [] {
    bool all_right = run_case(flame::kF32);
    all_right = run_case(flame::kBF16) && all_right;
    return all_right ? 0 : 1;
  });
}
