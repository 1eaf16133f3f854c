// Optimizers, clipping and optimizer state on CUDA against the same computation on the CPU.
#include <unistd.h>

#include <filesystem>

#include "core/autograd.h"
#include "nn/optim/adam.h"
#include "nn/optim/clip.h"
#include "nn/optim/sgd.h"
#include "nn/safetensors.h"
#include "support/test_support.h"

namespace flame::optim {
namespace {

const Device kGpu = cuda_device(0);
const std::vector<Shape> kShapes = {{16, 33}, {33}, {1}};
constexpr int kSteps = 5;

using MakeOptimizer = std::function<std::unique_ptr<Optimizer>(std::vector<Tensor>)>;

struct OptimizerCase {
  std::string name;
  MakeOptimizer make;
};

const std::vector<OptimizerCase>& optimizer_cases() {
  static const std::vector<OptimizerCase> cases = {
      {"sgd", [](auto p) { return std::make_unique<SGD>(std::move(p), SGDOptions{.lr = 0.1}); }},
      {"sgd_momentum_dampening",
       [](auto p) {
         return std::make_unique<SGD>(std::move(p), SGDOptions{.lr = 0.1, .momentum = 0.9, .dampening = 0.2});
       }},
      {"sgd_nesterov_weight_decay",
       [](auto p) {
         return std::make_unique<SGD>(
             std::move(p),
             SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .kind = MomentumKind::Nesterov});
       }},
      {"adam", [](auto p) { return std::make_unique<Adam>(std::move(p), AdamOptions{.lr = 0.01}); }},
      {"adam_l2",
       [](auto p) { return std::make_unique<Adam>(std::move(p), AdamOptions{.lr = 0.01, .weight_decay = 0.1}); }},
      {"adamw",
       [](auto p) { return std::make_unique<AdamW>(std::move(p), AdamWOptions{.lr = 0.01, .weight_decay = 0.1}); }},
  };
  return cases;
}

class CudaOptim : public ::testing::Test {
 protected:
  void SetUp() override { FLAME_SKIP_WITHOUT_CUDA(); }
};

/// The same parameters on the CPU and on the GPU.
struct Twin {
  std::vector<Tensor> cpu, gpu;
};

Twin make_twin(test::HostRng& rng, DType dtype) {
  Twin twin;
  for (const Shape& shape : kShapes) {
    const std::vector<double> values = rng.uniform(test::numel_of(shape), -1.0, 1.0);
    twin.cpu.push_back(test::make_tensor(values, shape, dtype, kCPU));
    twin.gpu.push_back(test::make_tensor(values, shape, dtype, kGpu));
    twin.cpu.back().requires_grad_(true);
    twin.gpu.back().requires_grad_(true);
  }
  return twin;
}

/// Gives both twins the same random gradients (the last parameter none on odd steps).
void set_grads(test::HostRng& rng, Twin& twin, DType dtype, int step) {
  for (size_t i = 0; i < kShapes.size(); ++i) {
    if (i + 1 == kShapes.size() && step % 2 == 1) {
      twin.cpu[i].set_grad(Tensor());
      twin.gpu[i].set_grad(Tensor());
      continue;
    }
    const std::vector<double> g = rng.uniform(test::numel_of(kShapes[i]), -1.0, 1.0);
    twin.cpu[i].set_grad(test::make_tensor(g, kShapes[i], dtype, kCPU));
    twin.gpu[i].set_grad(test::make_tensor(g, kShapes[i], dtype, kGpu));
  }
}

test::Tolerance tolerance(DType dtype) {
  return dtype == kF64 ? test::Tolerance{1e-11, 1e-13} : test::Tolerance{2e-5, 2e-6};
}

TEST_F(CudaOptim, EveryOptimizerMatchesTheCpuForFiveSteps) {
  for (const OptimizerCase& c : optimizer_cases()) {
    for (DType dtype : {kF32, kF64}) {
      SCOPED_TRACE(c.name + " " + std::string(dtype_name(dtype)));
      test::guarded([&] {
        test::HostRng rng;
        Twin twin = make_twin(rng, dtype);
        auto cpu = c.make(twin.cpu);
        auto gpu = c.make(twin.gpu);
        for (int step = 0; step < kSteps; ++step) {
          set_grads(rng, twin, dtype, step);
          cpu->step();
          gpu->step();
          for (size_t i = 0; i < kShapes.size(); ++i) {
            EXPECT_EQ(twin.gpu[i].device(), kGpu);
            EXPECT_TRUE(test::tensors_close(twin.gpu[i], twin.cpu[i], tolerance(dtype)))
                << "step " << step << " parameter " << i;
          }
        }
        const NamedTensors gpu_state = gpu->state_dict(), cpu_state = cpu->state_dict();
        ASSERT_EQ(gpu_state.size(), cpu_state.size());
        for (size_t i = 0; i < gpu_state.size(); ++i) {
          EXPECT_EQ(gpu_state[i].first, cpu_state[i].first);
          if (gpu_state[i].first.find(".step") == std::string::npos && gpu_state[i].first != "step") {
            EXPECT_EQ(gpu_state[i].second.device(), kGpu) << gpu_state[i].first;
          }
          EXPECT_TRUE(test::tensors_close(gpu_state[i].second, cpu_state[i].second, tolerance(dtype)))
              << gpu_state[i].first;
        }
      });
    }
  }
}

TEST_F(CudaOptim, ClipGradNormMatchesTheCpuOnTheDevice) {
  for (DType dtype : {kF32, kF64, kBF16}) {
    SCOPED_TRACE(std::string(dtype_name(dtype)));
    test::HostRng rng;
    Twin twin = make_twin(rng, dtype);
    set_grads(rng, twin, dtype, 0);
    const Tensor cpu_norm = clip_grad_norm_(twin.cpu, 0.5);
    const Tensor gpu_norm = clip_grad_norm_(twin.gpu, 0.5);
    EXPECT_EQ(gpu_norm.device(), kGpu);
    EXPECT_EQ(gpu_norm.dim(), 0);
    const test::Tolerance tol = dtype == kBF16 ? test::tolerance_for(kBF16) : tolerance(dtype);
    EXPECT_TRUE(test::tensors_close(gpu_norm, cpu_norm, tol));
    EXPECT_GT(cpu_norm.item(), 0.5) << "the random gradients are large enough to be clipped";
    for (size_t i = 0; i < kShapes.size(); ++i)
      EXPECT_TRUE(test::tensors_close(twin.gpu[i].grad(), twin.cpu[i].grad(), tol)) << "parameter " << i;
  }
}

TEST_F(CudaOptim, StateMovesBetweenDevicesThroughSafetensors) {
  // A GPU Adam's state saved to a file and loaded into a CPU Adam (and back): both continue alike.
  test::HostRng rng;
  Twin twin = make_twin(rng, kF32);
  Adam gpu(twin.gpu, AdamOptions{.lr = 0.01});
  Adam cpu(twin.cpu, AdamOptions{.lr = 0.01});
  set_grads(rng, twin, kF32, 0);
  gpu.step();
  const auto path =
      (std::filesystem::temp_directory_path() / fmt::format("flame_cuda_optim_{}.safetensors", getpid())).string();
  nn::save_safetensors(path, gpu.state_dict());
  cpu.load_state_dict(nn::load_safetensors(path));
  std::filesystem::remove(path);
  {
    autograd::NoGradGuard no_grad;
    for (size_t i = 0; i < kShapes.size(); ++i) twin.cpu[i].copy_(twin.gpu[i]);
  }
  for (const auto& [name, t] : cpu.state_dict()) EXPECT_TRUE(t.device().is_cpu()) << name;

  Adam gpu_again(twin.gpu, AdamOptions{.lr = 0.01});
  gpu_again.load_state_dict(cpu.state_dict());
  for (const auto& [name, t] : gpu_again.state_dict())
    if (name.find("exp_avg") != std::string::npos) EXPECT_EQ(t.device(), kGpu) << name;

  set_grads(rng, twin, kF32, 1);
  cpu.step();
  gpu_again.step();
  for (size_t i = 0; i < kShapes.size(); ++i)
    EXPECT_TRUE(test::tensors_close(twin.gpu[i], twin.cpu[i], tolerance(kF32))) << "parameter " << i;
}

}  // namespace
}  // namespace flame::optim
