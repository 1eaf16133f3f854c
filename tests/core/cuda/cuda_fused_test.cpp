// Fused training ops on CUDA against the CPU reference backend (core/fused.h): cross_entropy_rows
// losses and gradients in every floating dtype, for warp-per-row and block-per-row class counts,
// ignore_index and label smoothing, non-finite rows; a bad target reported at synchronisation;
// adam_step_ over many tensors (several launches, chunks spanning tensors, mixed dtypes), with
// gradient slots (the mean bit for bit as on the CPU, the update bit for bit the one that reads
// the mean) and nn::cross_entropy's device-side mean. Skips without a CUDA device.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/autograd.h"
#include "core/cuda_device.h"
#include "core/fused.h"
#include "nn/loss.h"
#include "support/test_support.h"

namespace flame {
namespace {

using test::HostRng;
using test::Tolerance;

const Device kGpu = cuda_device(0);
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

class CudaFused : public ::testing::Test {
 protected:
  void SetUp() override { FLAME_SKIP_WITHOUT_CUDA(); }
};

/// CUDA computes f32/f16/bf16 in float, the CPU in double; both round once to the dtype.
Tolerance tolerance(DType dtype) {
  switch (dtype) {
    case DType::F64:
      return {1e-11, 1e-12};
    case DType::F32:
      return {2e-5, 2e-6};
    default:
      return test::tolerance_for(dtype).scaled(2);
  }
}

struct CeRun {
  Tensor losses, grad;
};

/// Losses and the gradient of sum(g * losses) for logits `x` on `device`.
CeRun run_cross_entropy(const std::vector<double>& x, const Shape& shape, const std::vector<int64_t>& target,
                        const std::vector<double>& g, DType dtype, Device device, int64_t ignore_index,
                        double smoothing) {
  Tensor logits = test::make_tensor(x, shape, dtype, device);
  logits.requires_grad_();
  Tensor losses = cross_entropy_rows(
      logits, test::make_tensor(std::vector<double>(target.begin(), target.end()), {shape[0]}, kI64, device),
      ignore_index, smoothing);
  losses.backward(test::make_tensor(g, {shape[0]}, dtype, device));
  return {losses, logits.grad()};
}

TEST_F(CudaFused, CrossEntropyMatchesTheCpu) {
  HostRng rng;
  // Class counts on both sides of the warp-per-row limit (1024) and of a warp's width.
  const std::vector<std::pair<int64_t, int64_t>> shapes{{256, 10}, {7, 1},    {33, 31},  {5, 1024},
                                                        {3, 1025}, {4, 5000}, {1000, 3}, {0, 10}};
  for (DType dtype : test::floating_dtypes()) {
    for (const auto& [n, c] : shapes) {
      for (const auto& [ignore, eps] : std::vector<std::pair<int64_t, double>>{{-100, 0.0}, {1, 0.1}, {-100, 1.0}}) {
        SCOPED_TRACE(fmt::format("{} [{}, {}] ignore_index {} smoothing {}", dtype_name(dtype), n, c, ignore, eps));
        test::guarded([&] {
          std::vector<int64_t> target;
          for (int64_t i = 0; i < n; ++i) target.push_back(i % 5 == 2 ? ignore : rng.integer(0, c - 1));
          if (ignore >= c) std::replace(target.begin(), target.end(), ignore, int64_t{0});
          const auto x = test::round_to_dtype(rng.uniform(n * c, -6, 6), dtype);
          const auto g = test::round_to_dtype(rng.uniform(n, -1, 1), dtype);
          const CeRun gpu = run_cross_entropy(x, {n, c}, target, g, dtype, kGpu, ignore, eps);
          const CeRun cpu = run_cross_entropy(x, {n, c}, target, g, dtype, kCPU, ignore, eps);
          EXPECT_EQ(gpu.losses.device(), kGpu);
          EXPECT_TRUE(test::tensors_close(gpu.losses, cpu.losses, tolerance(dtype)));
          EXPECT_TRUE(test::tensors_close(gpu.grad, cpu.grad, tolerance(dtype)));
        });
      }
    }
  }
}

TEST_F(CudaFused, CrossEntropyNonFiniteRowsMatchTheCpu) {
  // NaN, +inf, a -inf that is not the target, a row of only -inf, and a clean row; one warp row
  // length and one block row length.
  for (int64_t c : {int64_t{4}, int64_t{2000}}) {
    SCOPED_TRACE(fmt::format("{} classes", c));
    std::vector<double> x(5 * c, 0.25);
    x[0 * c + 1] = kNaN;
    x[1 * c + c - 1] = kInf;
    x[2 * c + 0] = -kInf;
    for (int64_t j = 0; j < c; ++j) x[3 * c + j] = -kInf;
    x[4 * c + 2] = 3.0;
    const std::vector<int64_t> target{0, 0, 1, 2, 2};
    const std::vector<double> g(5, 1.0);
    for (double eps : {0.0, 0.2}) {
      SCOPED_TRACE(fmt::format("smoothing {}", eps));
      const CeRun gpu = run_cross_entropy(x, {5, c}, target, g, kF32, kGpu, -100, eps);
      const CeRun cpu = run_cross_entropy(x, {5, c}, target, g, kF32, kCPU, -100, eps);
      EXPECT_TRUE(test::tensors_close(gpu.losses, cpu.losses, tolerance(kF32)));
      EXPECT_TRUE(test::tensors_close(gpu.grad, cpu.grad, tolerance(kF32)));
      const std::vector<double> l = test::host_values(gpu.losses);
      // Row 2's -inf logit makes the smoothing term (the mean of -log p) infinite, as in PyTorch.
      EXPECT_TRUE(std::isnan(l[0]) && std::isnan(l[1]) && std::isnan(l[3]) && std::isfinite(l[4]));
      EXPECT_TRUE(eps == 0.0 ? std::isfinite(l[2]) : l[2] == kInf) << l[2];
    }
  }
}

TEST_F(CudaFused, BadTargetIsReportedAtSynchronizeAndTheDeviceRecovers) {
  const Tensor logits = test::make_tensor(std::vector<double>(12, 0.5), {3, 4}, kF32, kGpu);
  for (int64_t bad : {int64_t{4}, int64_t{-1}, int64_t{1} << 40}) {
    SCOPED_TRACE(fmt::format("target {}", bad));
    const Tensor target = test::make_tensor({0, static_cast<double>(bad), 3}, {3}, kI64, kGpu);
    EXPECT_TRUE(test::raises_error(
        [&] {
          (void)cross_entropy_rows(logits, target);
          cuda::synchronize();
        },
        {"index"}));
  }
  // The flag was reset: later work is clean.
  EXPECT_NO_THROW(cuda::synchronize());
  const Tensor ok = cross_entropy_rows(logits, test::make_tensor({0, 1, -100}, {3}, kI64, kGpu));
  EXPECT_TRUE(test::all_close(ok, {3}, {std::log(4.0), std::log(4.0), 0.0}, tolerance(kF32)));
  EXPECT_NO_THROW(cuda::synchronize());
}

TEST_F(CudaFused, NnCrossEntropyMeanCountsOnTheDevice) {
  HostRng rng;
  const int64_t n = 64, c = 10;
  const auto x = test::round_to_dtype(rng.uniform(n * c, -3, 3), kF32);
  std::vector<double> target;
  for (int64_t i = 0; i < n; ++i) target.push_back(i % 3 == 0 ? -100 : static_cast<double>(rng.integer(0, c - 1)));
  for (const nn::Reduction r : {nn::Reduction::Mean, nn::Reduction::Sum, nn::Reduction::None}) {
    for (double eps : {0.0, 0.1}) {
      SCOPED_TRACE(fmt::format("reduction {} smoothing {}", static_cast<int>(r), eps));
      Tensor results[2], grads[2];
      for (int k = 0; k < 2; ++k) {
        const Device device = k == 0 ? kGpu : kCPU;
        Tensor logits = test::make_tensor(x, {n, c}, kF32, device);
        logits.requires_grad_();
        results[k] = nn::cross_entropy(logits, test::make_tensor(target, {n}, kI64, device), {-100, eps, r});
        results[k].sum().backward();
        grads[k] = logits.grad();
      }
      EXPECT_TRUE(test::tensors_close(results[0], results[1], tolerance(kF32)));
      EXPECT_TRUE(test::tensors_close(grads[0], grads[1], tolerance(kF32)));
    }
  }
}

// --- adam_step_ -----------------------------------------------------------------------------------

struct AdamLists {
  std::vector<Tensor> p, g, m, v;
};

AdamLists make_lists(const std::vector<std::vector<double>>& values, const std::vector<Shape>& shapes,
                     const std::vector<DType>& dtypes, Device device) {
  AdamLists l;
  for (size_t i = 0; i < shapes.size(); ++i) {
    for (int k = 0; k < 4; ++k) {
      std::vector<Tensor>& list = k == 0 ? l.p : k == 1 ? l.g : k == 2 ? l.m : l.v;
      list.push_back(test::make_tensor(values[4 * i + k], shapes[i], dtypes[i], device));
    }
  }
  return l;
}

TEST_F(CudaFused, AdamStepMatchesTheCpuOverManyTensors) {
  HostRng rng;
  // 150 tensors (three launches of at most 64 per dtype), sizes around the 2048-element chunk,
  // empty ones, and dtypes mixed within the call.
  std::vector<Shape> shapes;
  std::vector<DType> dtypes;
  const std::vector<int64_t> sizes{1, 2047, 2048, 2049, 0, 5000, 7, 300, 4096, 33};
  for (int i = 0; i < 150; ++i) {
    shapes.push_back({sizes[i % sizes.size()]});
    dtypes.push_back(i % 7 == 3 ? kF64 : i % 11 == 5 ? kBF16 : i % 13 == 4 ? kF16 : kF32);
  }
  std::vector<std::vector<double>> values;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const int64_t n = test::numel_of(shapes[i]);
    values.push_back(rng.uniform(n, -1, 1));      // param
    values.push_back(rng.uniform(n, -1, 1));      // grad
    values.push_back(rng.uniform(n, -0.1, 0.1));  // exp_avg
    values.push_back(rng.uniform(n, 0, 0.01));    // exp_avg_sq
  }
  for (const auto& [decay, wd] : std::vector<std::pair<AdamWeightDecay, double>>{
           {AdamWeightDecay::L2, 0.0}, {AdamWeightDecay::L2, 0.05}, {AdamWeightDecay::Decoupled, 0.1}}) {
    SCOPED_TRACE(fmt::format("{} weight_decay {}", decay == AdamWeightDecay::L2 ? "L2" : "decoupled", wd));
    const AdamLists gpu = make_lists(values, shapes, dtypes, kGpu);
    const AdamLists cpu = make_lists(values, shapes, dtypes, kCPU);
    for (int step = 1; step <= 2; ++step) {
      AdamStepArgs args;
      args.lr = 0.01;
      args.weight_decay = wd;
      args.decay = decay;
      args.bias_correction1 = 1.0 - std::pow(args.beta1, step + 3);
      args.bias_correction2 = 1.0 - std::pow(args.beta2, step + 3);
      adam_step_(gpu.p, gpu.g, gpu.m, gpu.v, args);
      adam_step_(cpu.p, cpu.g, cpu.m, cpu.v, args);
      for (size_t i = 0; i < shapes.size(); ++i) {
        SCOPED_TRACE(fmt::format("step {} entry {} {}", step, i, gpu.p[i].describe()));
        EXPECT_TRUE(test::tensors_close(gpu.p[i], cpu.p[i], tolerance(dtypes[i])));
        EXPECT_TRUE(test::tensors_close(gpu.m[i], cpu.m[i], tolerance(dtypes[i])));
        EXPECT_TRUE(test::tensors_close(gpu.v[i], cpu.v[i], tolerance(dtypes[i])));
      }
    }
  }
}

/// `rows` (rounded to bf16 on the host) as slots [W, n] on `device`: columns 3..n+2 of a
/// [W, n + 7] bf16 tensor, so stride(0) > n.
Tensor make_slots(const std::vector<std::vector<double>>& rows, Device device) {
  const int64_t w = static_cast<int64_t>(rows.size()), n = static_cast<int64_t>(rows[0].size()), wide = n + 7;
  std::vector<double> values(static_cast<size_t>(w * wide), kNaN);
  for (int64_t r = 0; r < w; ++r) std::copy(rows[r].begin(), rows[r].end(), values.begin() + r * wide + 3);
  return test::make_tensor(values, {w, wide}, kBF16).to(device).narrow(1, 3, n);
}

/// Equal f32 bit patterns, except that a NaN matches any NaN: CUDA's arithmetic gives the
/// canonical NaN where the CPU's keeps an operand's payload.
::testing::AssertionResult same_f32_bits(const Tensor& actual, const Tensor& expected) {
  const std::vector<float> a = actual.to_vector<float>(), e = expected.to_vector<float>();
  if (a.size() != e.size()) return ::testing::AssertionFailure() << a.size() << " vs " << e.size() << " elements";
  for (size_t k = 0; k < a.size(); ++k) {
    uint32_t a_bits, e_bits;
    std::memcpy(&a_bits, &a[k], 4);
    std::memcpy(&e_bits, &e[k], 4);
    if (a_bits != e_bits && !(std::isnan(a[k]) && std::isnan(e[k])))
      return ::testing::AssertionFailure()
             << fmt::format("element {}: {:#010x} ({}) vs {:#010x} ({})", k, a_bits, a[k], e_bits, e[k]);
  }
  return ::testing::AssertionSuccess();
}

TEST_F(CudaFused, AdamStepSlotsMatchTheCpuAndThePlainStepOnTheMean) {
  HostRng rng;
  // 140 tensors (three launches), sizes around the 2048-element chunk; every third reads its grad
  // (some in f64), the others carry W = 1..4 slots, one of them with a NaN and an inf.
  const std::vector<int64_t> sizes{1, 2047, 2048, 2049, 0, 5000, 7, 300, 4096, 33};
  const int count = 140;
  std::vector<Shape> shapes;
  std::vector<DType> dtypes;
  std::vector<std::vector<double>> values;
  std::vector<std::vector<std::vector<double>>> slot_rows(count);
  for (int i = 0; i < count; ++i) {
    const int64_t n = sizes[i % sizes.size()];
    shapes.push_back({n});
    dtypes.push_back(i % 9 == 6 ? kF64 : kF32);
    values.push_back(rng.uniform(n, -1, 1));      // param
    values.push_back(rng.uniform(n, -1, 1));      // grad
    values.push_back(rng.uniform(n, -0.1, 0.1));  // exp_avg
    values.push_back(rng.uniform(n, 0, 0.01));    // exp_avg_sq
    if (i % 3 == 0 || dtypes[i] != kF32) continue;
    for (int r = 0; r <= i % 4; ++r) slot_rows[i].push_back(rng.uniform(n, -2, 2));
  }
  slot_rows[5][1][3] = kNaN;  // 5000 elements, W = 2
  slot_rows[5][0][4000] = kInf;
  // Sums that f32 rounds in rank order: 2^25 + 1 is 2^25, so these means are 0, not 1/W.
  slot_rows[2][0][10] = 0x1p25;  // W = 3
  slot_rows[2][1][10] = 1.0;
  slot_rows[2][2][10] = -0x1p25;
  for (int r = 0; r < 4; ++r) slot_rows[7][r][10] = std::vector<double>{0x1p25, 1.0, -0x1p25, 0.0}[r];  // W = 4
  for (const auto& [decay, wd] : std::vector<std::pair<AdamWeightDecay, double>>{{AdamWeightDecay::L2, 0.05},
                                                                                 {AdamWeightDecay::Decoupled, 0.1}}) {
    SCOPED_TRACE(fmt::format("{} weight_decay {}", decay == AdamWeightDecay::L2 ? "L2" : "decoupled", wd));
    AdamLists gpu = make_lists(values, shapes, dtypes, kGpu);
    const AdamLists cpu = make_lists(values, shapes, dtypes, kCPU);
    std::vector<GradientSlots> gpu_slots(count), cpu_slots(count);
    for (int i = 0; i < count; ++i) {
      if (slot_rows[i].empty()) continue;
      const float scale = 1.0f / static_cast<float>(slot_rows[i].size());
      gpu_slots[i] = {make_slots(slot_rows[i], kGpu), scale};
      cpu_slots[i] = {make_slots(slot_rows[i], kCPU), scale};
    }
    // The state before the step, for the plain step on the mean.
    AdamLists plain;
    for (int i = 0; i < count; ++i) {
      plain.p.push_back(gpu.p[i].clone());
      plain.m.push_back(gpu.m[i].clone());
      plain.v.push_back(gpu.v[i].clone());
    }
    AdamStepArgs args;
    args.lr = 0.01;
    args.weight_decay = wd;
    args.decay = decay;
    args.bias_correction1 = 1.0 - std::pow(args.beta1, 3);
    args.bias_correction2 = 1.0 - std::pow(args.beta2, 3);
    // The same slots with write_mean false: the same update, and the grads left as they were.
    AdamLists unwritten = make_lists(values, shapes, dtypes, kGpu);
    const AdamLists original = make_lists(values, shapes, dtypes, kGpu);
    std::vector<GradientSlots> unwritten_slots = gpu_slots;
    for (GradientSlots& slots : unwritten_slots) slots.write_mean = false;
    adam_step_(unwritten.p, unwritten.g, unwritten.m, unwritten.v, args, unwritten_slots);
    adam_step_(gpu.p, gpu.g, gpu.m, gpu.v, args, gpu_slots);
    adam_step_(cpu.p, cpu.g, cpu.m, cpu.v, args, cpu_slots);
    for (int i = 0; i < count; ++i) plain.g.push_back(gpu.g[i].clone());
    adam_step_(plain.p, plain.g, plain.m, plain.v, args);
    for (int i = 0; i < count; ++i) {
      SCOPED_TRACE(fmt::format("entry {} {} W {}", i, gpu.p[i].describe(), slot_rows[i].size()));
      EXPECT_TRUE(same_f32_bits(gpu.g[i], cpu.g[i]));
      EXPECT_TRUE(test::tensors_close(gpu.p[i], cpu.p[i], tolerance(dtypes[i])));
      EXPECT_TRUE(test::tensors_close(gpu.m[i], cpu.m[i], tolerance(dtypes[i])));
      EXPECT_TRUE(test::tensors_close(gpu.v[i], cpu.v[i], tolerance(dtypes[i])));
      EXPECT_TRUE(test::tensors_identical(gpu.p[i], plain.p[i]));
      EXPECT_TRUE(test::tensors_identical(gpu.m[i], plain.m[i]));
      EXPECT_TRUE(test::tensors_identical(gpu.v[i], plain.v[i]));
      EXPECT_TRUE(test::tensors_identical(unwritten.p[i], gpu.p[i]));
      EXPECT_TRUE(test::tensors_identical(unwritten.m[i], gpu.m[i]));
      EXPECT_TRUE(test::tensors_identical(unwritten.v[i], gpu.v[i]));
      EXPECT_TRUE(test::tensors_identical(unwritten.g[i], original.g[i]));
    }
    const std::vector<double> g5 = test::host_values(gpu.g[5]);
    EXPECT_TRUE(std::isnan(g5[3]));
    EXPECT_EQ(g5[4000], kInf);
    EXPECT_EQ(test::host_values(gpu.g[2])[10], 0.0);
    EXPECT_EQ(test::host_values(gpu.g[7])[10], 0.0);
  }
}

TEST_F(CudaFused, AdamStepSlotsRefuseAnotherDevice) {
  const Tensor p = test::make_tensor({1, 2}, {2}, kF32, kGpu);
  const Tensor g = zeros({2}, TensorOptions(kF32, kGpu)), m = zeros({2}, TensorOptions(kF32, kGpu)),
               v = zeros({2}, TensorOptions(kF32, kGpu));
  EXPECT_TRUE(test::raises_error(
      [&] {
        adam_step_({p}, {g}, {m}, {v}, AdamStepArgs{}, {{zeros({1, 2}, kBF16), 1.0f}});
      },
      {"adam_step_"}));
  EXPECT_TRUE(test::all_close(p, {2}, {1, 2}, {}));
}

TEST_F(CudaFused, AdamStepRefusesMixedDevices) {
  const Tensor p = test::make_tensor({1, 2}, {2}, kF32, kGpu);
  const Tensor m = zeros({2}, TensorOptions(kF32, kGpu)), v = zeros({2}, TensorOptions(kF32, kGpu));
  EXPECT_TRUE(test::raises_error([&] { adam_step_({p}, {ones({2})}, {m}, {v}, AdamStepArgs{}); }, {"adam_step_"}));
}

}  // namespace
}  // namespace flame
