// nn on CUDA against the CPU reference: an MLP's forward, loss and every gradient, each layer's
// forward, Dropout's mask (same seed, same mask on both devices), cross_entropy and accuracy, and
// the device-side report of an out-of-range target. Skips without a GPU.
#include <fmt/format.h>

#include <memory>

#include "nn/activation.h"
#include "nn/dropout.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "support/test_support.h"

namespace flame {
namespace {

using test::HostRng;

/// f32 on both devices: the BLAS and cuBLAS sum in different orders.
constexpr test::Tolerance kF32Tol{1e-4, 1e-5};

/// Flatten - Linear(12, 16) - GELU(tanh) - Linear(16, 16) - SiLU - Linear(16, 5), seeded.
std::shared_ptr<nn::Sequential> mlp(uint64_t seed) {
  manual_seed(seed);
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(12, 16),
      std::make_shared<nn::GELU>(GeluApproximation::Tanh), std::make_shared<nn::Linear>(16, 16),
      std::make_shared<nn::SiLU>(), std::make_shared<nn::Linear>(16, 5)});
}

TEST(CudaNn, MlpForwardAndGradientsMatchTheCpu) {
  FLAME_SKIP_WITHOUT_CUDA();
  const Device gpu = cuda_device(0);
  HostRng rng;
  const uint64_t seed = test::test_seed();
  auto cpu_model = mlp(seed);
  auto gpu_model = mlp(seed);
  gpu_model->to(gpu);
  for (const auto& [name, p] : gpu_model->named_parameters()) EXPECT_EQ(p.device(), gpu) << name;

  const int64_t n = 8;
  const Tensor x_cpu = test::make_tensor(rng.uniform(n * 12, -2, 2), {n, 3, 4}, kF32);
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < n; ++i) labels.push_back(rng.integer(0, 4));
  labels[2] = -100;
  const Tensor y_cpu = from_vector(labels, {n}, kI64);
  Tensor x_gpu = x_cpu.to(gpu);
  Tensor x_cpu_leaf = x_cpu.clone();
  x_cpu_leaf.requires_grad_();
  x_gpu.requires_grad_();

  const nn::CrossEntropyOptions options{-100, 0.1, nn::Reduction::Mean};
  const Tensor logits_cpu = (*cpu_model)(x_cpu_leaf);
  const Tensor logits_gpu = (*gpu_model)(x_gpu);
  EXPECT_EQ(logits_gpu.device(), gpu);
  EXPECT_TRUE(test::tensors_close(logits_gpu, logits_cpu, kF32Tol));
  const Tensor loss_cpu = nn::cross_entropy(logits_cpu, y_cpu, options);
  const Tensor loss_gpu = nn::cross_entropy(logits_gpu, y_cpu.to(gpu), options);
  EXPECT_TRUE(test::tensors_close(loss_gpu, loss_cpu, kF32Tol));
  EXPECT_DOUBLE_EQ(nn::accuracy(logits_gpu, y_cpu.to(gpu)), nn::accuracy(logits_cpu, y_cpu));

  loss_cpu.backward();
  loss_gpu.backward();
  const auto cpu_params = cpu_model->named_parameters();
  const auto gpu_params = gpu_model->named_parameters();
  ASSERT_EQ(cpu_params.size(), gpu_params.size());
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    SCOPED_TRACE(cpu_params[i].first);
    ASSERT_TRUE(gpu_params[i].second.grad().defined());
    EXPECT_EQ(gpu_params[i].second.grad().device(), gpu);
    EXPECT_TRUE(test::tensors_close(gpu_params[i].second.grad(), cpu_params[i].second.grad(), kF32Tol));
  }
  EXPECT_TRUE(test::tensors_close(x_gpu.grad(), x_cpu_leaf.grad(), kF32Tol));
}

TEST(CudaNn, LayersAndLossesMatchTheCpu) {
  FLAME_SKIP_WITHOUT_CUDA();
  const Device gpu = cuda_device(0);
  HostRng rng;
  const Tensor x = test::make_tensor(rng.uniform(2 * 3 * 4, -3, 3), {2, 3, 4}, kF32);
  std::vector<std::shared_ptr<nn::Module>> layers{std::make_shared<nn::ReLU>(),    std::make_shared<nn::GELU>(),
                                                  std::make_shared<nn::SiLU>(),    std::make_shared<nn::Tanh>(),
                                                  std::make_shared<nn::Sigmoid>(), std::make_shared<nn::Flatten>(0, 1)};
  for (const auto& layer : layers) {
    SCOPED_TRACE(layer->type_name());
    EXPECT_TRUE(test::tensors_close((*layer)(x.to(gpu)), (*layer)(x), kF32Tol));
  }
  manual_seed(9);
  nn::Linear linear(4, 6);
  const Tensor expected = linear(x);
  linear.to(gpu);
  EXPECT_TRUE(test::tensors_close(linear(x.to(gpu)), expected, kF32Tol));

  const Tensor a = test::make_tensor(rng.uniform(12, -1, 1), {3, 4}, kF32);
  const Tensor b = test::make_tensor(rng.uniform(12, -1, 1), {3, 4}, kF32);
  for (nn::Reduction r : {nn::Reduction::Mean, nn::Reduction::Sum, nn::Reduction::None})
    EXPECT_TRUE(test::tensors_close(nn::mse_loss(a.to(gpu), b.to(gpu), r), nn::mse_loss(a, b, r), kF32Tol));
  const Tensor target = from_vector<int64_t>({1, 3, 3}, {3}, kI64);
  const nn::CrossEntropyOptions options{3, 0.2, nn::Reduction::None};
  EXPECT_TRUE(test::tensors_close(nn::cross_entropy(a.to(gpu), target.to(gpu), options),
                                  nn::cross_entropy(a, target, options), kF32Tol));
}

TEST(CudaNn, DropoutDrawsTheSameMaskOnBothDevices) {
  FLAME_SKIP_WITHOUT_CUDA();
  const Device gpu = cuda_device(0);
  const Tensor x = ones({64, 33});
  nn::Dropout dropout(0.25);
  const uint64_t seed = test::test_seed();
  manual_seed(seed);
  const Tensor on_cpu = dropout(x);
  manual_seed(seed);
  const Tensor on_gpu = dropout(x.to(gpu));
  EXPECT_EQ(on_gpu.device(), gpu);
  EXPECT_TRUE(test::tensors_identical(eq(on_gpu, 0.0), eq(on_cpu, 0.0)));
  EXPECT_TRUE(test::tensors_close(on_gpu, on_cpu, test::tolerance_for(kF32)));
}

TEST(CudaNn, OutOfRangeTargetIsReportedAtTheNextSync) {
  FLAME_SKIP_WITHOUT_CUDA();
  const Device gpu = cuda_device(0);
  const Tensor logits = zeros({3, 5}, gpu);
  const Tensor target = from_vector<int64_t>({0, 7, 1}, {3}, TensorOptions(kI64, gpu));
  Tensor loss;
  EXPECT_NO_THROW(loss = nn::cross_entropy(logits, target));  // no host sync on the way
  EXPECT_TRUE(test::raises_error([] { cuda::synchronize(0); }, {"index out of range"}));
  EXPECT_NO_THROW(cuda::synchronize(0));  // the report was consumed; the device is usable again
  EXPECT_NEAR(nn::cross_entropy(logits, from_vector<int64_t>({0, 4, -100}, {3}, TensorOptions(kI64, gpu))).item(),
              std::log(5.0), 1e-6);
}

}  // namespace
}  // namespace flame
