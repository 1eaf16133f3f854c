// Shared pieces of the DDP equivalence suites (tests/dist/ddp_test.cpp on the CPU with MPI,
// tests/dist/cuda/ddp_nccl_test.cpp on CUDA with NCCL): the small MLP, its single-process
// reference copy, the global batch every rank slices, and the comparisons.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "dist/ddp.h"
#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/module.h"
#include "nn/optim/adam.h"
#include "nn/optim/sgd.h"

namespace flame::dist::ddp_testing {

inline constexpr int64_t kIn = 6, kHidden = 16, kOut = 3;

/// Linear(6,16) - Tanh - Linear(16,16) - Tanh - Linear(16,3), initialised from `seed` (on the CPU,
/// then moved to `device`).
inline std::shared_ptr<nn::Sequential> make_mlp(uint64_t seed, int64_t hidden = kHidden, Device device = kCPU) {
  manual_seed(seed);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(kIn, hidden), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(hidden, kHidden), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(kHidden, kOut)});
  if (!device.is_cpu()) model->to(device);
  return model;
}

/// A copy of `source`'s architecture and values on `device` (the single-process reference).
inline std::shared_ptr<nn::Sequential> clone_mlp(const nn::Module& source, Device device = kCPU) {
  auto copy = make_mlp(999, kHidden, device);
  nn::NamedTensors values;
  for (const auto& [name, t] : source.state_dict()) values.emplace_back(name, t.clone());
  copy->load_state_dict(values);
  return copy;
}

/// The global batch, identical on every rank: x [n, 6], y [n, 3].
struct Batch {
  Tensor x, y;
  Batch slice(int64_t start, int64_t length) const {
    return {x.narrow(0, start, length).contiguous(), y.narrow(0, start, length).contiguous()};
  }
};
/// Drawn on the CPU from `seed` (so every device gets the same values), then moved to `device`.
inline Batch global_batch(int64_t n, uint64_t seed, Device device = kCPU) {
  Generator gen(seed);
  Tensor x = randn({n, kIn}, {}, &gen);
  Tensor y = randn({n, kOut}, {}, &gen);
  if (!device.is_cpu()) return {x.to(device), y.to(device)};
  return {x, y};
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> va = a.to(DType::F64).to_vector<double>();
  const std::vector<double> vb = b.to(DType::F64).to_vector<double>();
  EXPECT_EQ(va.size(), vb.size());
  double worst = 0;
  for (size_t i = 0; i < va.size(); ++i) worst = std::max(worst, std::abs(va[i] - vb[i]));
  return worst;
}

inline void expect_same_parameters(const nn::Module& got, const nn::Module& want, double tolerance,
                                   const std::string& at) {
  const int rank = ProcessGroup::init().rank;
  const nn::NamedTensors g = got.named_parameters(), w = want.named_parameters();
  ASSERT_EQ(g.size(), w.size());
  for (size_t i = 0; i < g.size(); ++i)
    EXPECT_LE(max_abs_diff(g[i].second, w[i].second), tolerance) << g[i].first << " " << at << " rank " << rank;
}

inline void expect_same_grads(const nn::Module& got, const nn::Module& want, double tolerance, const std::string& at) {
  const int rank = ProcessGroup::init().rank;
  const nn::NamedTensors g = got.named_parameters(), w = want.named_parameters();
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_TRUE(g[i].second.grad().defined()) << g[i].first;
    EXPECT_LE(max_abs_diff(g[i].second.grad(), w[i].second.grad()), tolerance)
        << "grad of " << g[i].first << " " << at << " rank " << rank;
  }
}

/// Expects every gradient of `got` to be exactly representable in bf16 (it was all-reduced in
/// bf16) and within bf16 rounding of `want`'s, the float32 mean on the global batch: each rank's
/// gradient and the sum are rounded to 8 significant bits, so per tensor the error stays below
/// 2^-5 of its largest magnitude.
inline void expect_bf16_reduced_grads(const nn::Module& got, const nn::Module& want, const std::string& at) {
  const int rank = ProcessGroup::init().rank;
  const nn::NamedTensors g = got.named_parameters(), w = want.named_parameters();
  ASSERT_EQ(g.size(), w.size());
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_TRUE(g[i].second.grad().defined()) << g[i].first;
    const Tensor grad = g[i].second.grad();
    EXPECT_EQ(grad.to_vector<float>(), grad.to(DType::BF16).to_vector<float>())
        << "grad of " << g[i].first << " " << at << " rank " << rank << " is not a bf16 value";
    const std::vector<float> reference = w[i].second.grad().to_vector<float>();
    double largest = 0;
    for (float v : reference) largest = std::max(largest, static_cast<double>(std::abs(v)));
    EXPECT_LE(max_abs_diff(grad, w[i].second.grad()), largest / 32)
        << "grad of " << g[i].first << " " << at << " rank " << rank;
  }
}

/// Adds 1e-3 to `module`'s parameter number `index` (registration order) outside autograd: this
/// replica then differs from the others, as the desynchronisation checks must notice.
inline void perturb_parameter(const nn::Module& module, size_t index) {
  autograd::NoGradGuard no_grad;
  Tensor parameter = module.named_parameters()[index].second;
  parameter.add_(1e-3);
}

/// The flame::Error message `fn` raises, or "" when it raises nothing.
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline DdpOptions small_buckets(std::optional<DType> reduce_dtype = std::nullopt) {
  DdpOptions options;
  options.reduce_dtype = reduce_dtype;
  options.first_bucket_bytes = 64;  // the last layer's bias and part of its weight
  options.bucket_cap_bytes = 512;
  return options;
}

/// DdpOptions::step_mean InUpdateNoGrad against InUpdate (Note [deferred mean]) on
/// `communicator`, bf16 reduction, 3 AdamW steps through ddp.step: the same parameters bit for bit,
/// each bucket's mean deferred where `deferred` says, and after every step (the first too, whose
/// unused-parameter check writes the means) no parameter of the no-grad replica has a .grad, where
/// the other holds the mean; a step accumulated over two micro-steps (the first in no_sync()) right
/// after such a step, without zero_grad(), matches the twin's after zero_grad(). Then one SGD step
/// (it takes no slots: the means are written) leaves no .grad either, and a gradient read between
/// backward and synchronize_gradients()' end is the mean.
inline void expect_no_grad_step_matches_in_update(Communicator& communicator, bool deferred) {
  const int rank = ProcessGroup::init().rank, world = ProcessGroup::init().world_size;
  const Device device = communicator.device();
  constexpr int64_t kLocal = 4;
  auto written_model = make_mlp(1280 + rank, kHidden, device);  // each rank different: DDP broadcasts
  auto no_grad_model = make_mlp(1280 + rank, kHidden, device);
  DdpOptions written_options = small_buckets(DType::BF16), no_grad_options = small_buckets(DType::BF16);
  written_options.step_mean = StepMean::InUpdate;
  no_grad_options.step_mean = StepMean::InUpdateNoGrad;
  DistributedDataParallel written(written_model, communicator, written_options);
  DistributedDataParallel no_grad(no_grad_model, communicator, no_grad_options);
  for (const Bucket& bucket : no_grad.reducer().buckets()) EXPECT_EQ(bucket.mean_deferred, deferred) << bucket.label;
  optim::AdamW written_opt(written.parameters(), {.lr = 1e-2});
  optim::AdamW no_grad_opt(no_grad.parameters(), {.lr = 1e-2});
  auto backward = [&](DistributedDataParallel& ddp, int step) {
    const Batch mine = global_batch(kLocal * world, 128 + step, device).slice(rank * kLocal, kLocal);
    ddp.zero_grad();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
  };
  for (int step = 0; step < 3; ++step) {
    const std::string at = "step " + std::to_string(step);
    backward(written, step);
    written.step(written_opt);
    backward(no_grad, step);
    no_grad.step(no_grad_opt);
    expect_same_parameters(*no_grad_model, *written_model, 0.0, at);
    for (const auto& [name, p] : no_grad_model->named_parameters())
      EXPECT_FALSE(p.grad().defined()) << "grad of " << name << " after " << at << " rank " << rank;
    for (const auto& [name, p] : written_model->named_parameters())
      EXPECT_TRUE(p.grad().defined()) << "grad of " << name << " after " << at << " rank " << rank;
  }
  no_grad.check_parameters_in_sync("after the no-grad steps");
  // Straight after a step that cleared the gradients, without zero_grad(): two micro-steps, the first
  // inside no_sync(), accumulate from nothing, as the twin's after its zero_grad().
  auto micro_steps = [&](DistributedDataParallel& ddp) {
    auto micro = [&](int index) {
      const Batch mine = global_batch(kLocal * world, 140 + index, device).slice(rank * kLocal, kLocal);
      nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    };
    {
      auto guard = ddp.no_sync();
      micro(0);
    }
    micro(1);
  };
  written.zero_grad();
  micro_steps(written);
  written.step(written_opt);
  micro_steps(no_grad);
  no_grad.step(no_grad_opt);
  expect_same_parameters(*no_grad_model, *written_model, 0.0, "accumulating after a cleared step");
  // Gradients read before the update are the means, as under InUpdate.
  backward(written, 3);
  written.synchronize_gradients();
  backward(no_grad, 3);
  no_grad.synchronize_gradients();
  const nn::NamedTensors n = no_grad_model->named_parameters(), w = written_model->named_parameters();
  for (size_t i = 0; i < n.size(); ++i)
    EXPECT_EQ(n[i].second.grad().to_vector<float>(), w[i].second.grad().to_vector<float>())
        << "grad of " << n[i].first << " after synchronize_gradients() rank " << rank;
  written_opt.step();
  no_grad_opt.step();
  // An optimizer that takes no slots: the means are written first, and the gradients still go.
  optim::SGD sgd(no_grad.parameters(), {.lr = 1e-2});
  backward(no_grad, 4);
  no_grad.step(sgd);
  for (const auto& [name, p] : no_grad_model->named_parameters())
    EXPECT_FALSE(p.grad().defined()) << "grad of " << name << " after an SGD step, rank " << rank;
  no_grad.check_parameters_in_sync("after the SGD step");
}

}  // namespace flame::dist::ddp_testing
