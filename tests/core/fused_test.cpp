// Fused training ops on the CPU (core/fused.h): cross_entropy_rows (losses and gradients against
// float64 references, finite-difference gradients in float64, ignore_index, label smoothing,
// stability, NaN rows, errors) and adam_step_ (against the update rule written out in double,
// several tensors and dtypes in one call, both weight-decay modes, errors; with gradient slots:
// the mean bit for bit against a float reference, the update equal to the one that reads it,
// errors).
#include "core/fused.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>

#include "core/autograd.h"
#include "support/gradcheck.h"

namespace flame {
namespace {

using test::all_close;
using test::HostRng;
using test::Layout;
using test::raises_error;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// --- cross_entropy_rows -----------------------------------------------------------------------

struct CeCase {
  int64_t ignore_index;
  double smoothing;
};

const std::vector<CeCase>& ce_cases() {
  static const std::vector<CeCase> cases{{-100, 0.0}, {-100, 0.1}, {2, 0.0}, {2, 0.3}, {-100, 1.0}};
  return cases;
}

/// Per-row losses and d(sum_i g_i loss_i)/dx in double (Note [fused cross entropy]).
struct CeReference {
  std::vector<double> losses, grad;
};

CeReference ce_reference(const std::vector<double>& x, int64_t n, int64_t c, const std::vector<int64_t>& target,
                         const CeCase& o, const std::vector<double>& g) {
  CeReference ref{std::vector<double>(n, 0.0), std::vector<double>(n * c, 0.0)};
  for (int64_t i = 0; i < n; ++i) {
    if (target[i] == o.ignore_index) continue;
    const double* row = &x[static_cast<size_t>(i * c)];
    double m = -kInf;
    for (int64_t j = 0; j < c; ++j) m = std::max(m, row[j]);
    double s = 0.0, mean = 0.0;
    for (int64_t j = 0; j < c; ++j) {
      s += std::exp(row[j] - m);
      mean += row[j] / static_cast<double>(c);
    }
    const double lse = m + std::log(s);
    // Terms of weight 0 are left out (an infinite logit would make them 0 * inf).
    if (o.smoothing != 1.0) ref.losses[i] += (1.0 - o.smoothing) * (lse - row[target[i]]);
    if (o.smoothing != 0.0) ref.losses[i] += o.smoothing * (lse - mean);
    for (int64_t j = 0; j < c; ++j) {
      const double q = (j == target[i] ? 1.0 - o.smoothing : 0.0) + o.smoothing / static_cast<double>(c);
      ref.grad[i * c + j] = g[i] * (std::exp(row[j] - lse) - q);
    }
  }
  return ref;
}

/// Targets in [0, c) with row 1 ignored under the default ignore_index and row 3 set to class 2
/// (ignored when ignore_index is 2).
std::vector<int64_t> make_targets(HostRng& rng, int64_t n, int64_t c, const CeCase& o) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(rng.integer(0, c - 1));
  if (n > 3) {
    t[1] = o.ignore_index == -100 ? -100 : 0;
    t[3] = 2;
  }
  return t;
}

std::string ce_name(DType dtype, const CeCase& o, int64_t n, int64_t c) {
  return fmt::format("{} [{}, {}] ignore_index {} smoothing {}", dtype_name(dtype), n, c, o.ignore_index, o.smoothing);
}

TEST(CrossEntropyRows, LossesAndGradientsMatchFloat64Reference) {
  HostRng rng;
  for (DType dtype : test::floating_dtypes()) {
    for (const auto& [n, c] : std::vector<std::pair<int64_t, int64_t>>{{6, 5}, {9, 3}, {4, 17}}) {
      for (const CeCase& o : ce_cases()) {
        SCOPED_TRACE(ce_name(dtype, o, n, c));
        test::guarded([&] {
          const std::vector<int64_t> target = make_targets(rng, n, c, o);
          const auto x = test::round_to_dtype(rng.uniform(n * c, -4, 4), dtype);
          const auto g = test::round_to_dtype(rng.uniform(n, -2, 2), dtype);
          Tensor logits = test::make_tensor(x, {n, c}, dtype, kCPU, Layout::Transposed);
          logits.requires_grad_();
          const Tensor losses = cross_entropy_rows(logits, from_vector(target, {n}, kI64), o.ignore_index, o.smoothing);
          EXPECT_EQ(losses.dtype(), dtype);
          EXPECT_TRUE(losses.requires_grad());
          losses.backward(test::make_tensor(g, {n}, dtype));
          const CeReference ref = ce_reference(x, n, c, target, o, g);
          const test::Tolerance tol = test::tolerance_for(dtype).scaled(dtype == kF64 ? 10 : 2);
          EXPECT_TRUE(all_close(losses, {n}, ref.losses, tol));
          EXPECT_TRUE(all_close(logits.grad(), {n, c}, ref.grad, tol));
        });
      }
    }
  }
}

TEST(CrossEntropyRows, GradientsMatchFiniteDifferences) {
  HostRng rng;
  const int64_t n = 6, c = 4;
  for (const CeCase& o : ce_cases()) {
    SCOPED_TRACE(ce_name(kF64, o, n, c));
    const Tensor target = from_vector(make_targets(rng, n, c, o), {n}, kI64);
    EXPECT_TRUE(test::gradcheck(
        [o, target](const std::vector<Tensor>& in) {
          return cross_entropy_rows(in[0], target, o.ignore_index, o.smoothing);
        },
        {test::random_f64(rng, {n, c}, -3, 3, Layout::Strided)}, rng));
  }
}

TEST(CrossEntropyRows, LargeLogitsStayAccurate) {
  // The row statistics keep the maximum apart from log sum exp(x - max), so shifting every logit
  // by a large constant changes neither the losses nor the gradients.
  const std::vector<double> base{0.5, -1.25, 2.0, 0.0, 1.0, -3.0};
  const std::vector<int64_t> target{2, 0};
  const CeCase o{-100, 0.1};
  const std::vector<double> g{1.0, -0.5};
  const CeReference ref = ce_reference(base, 2, 3, target, o, g);
  for (DType dtype : {kF64, kF32}) {
    for (double shift : {0.0, 1000.0, -30000.0}) {
      SCOPED_TRACE(fmt::format("{} shift {}", dtype_name(dtype), shift));
      std::vector<double> x = base;
      for (double& v : x) v += shift;
      Tensor logits = test::make_tensor(x, {2, 3}, dtype);
      logits.requires_grad_();
      const Tensor losses = cross_entropy_rows(logits, from_vector(target, {2}, kI64), o.ignore_index, o.smoothing);
      losses.backward(test::make_tensor(g, {2}, dtype));
      const test::Tolerance tol = test::tolerance_for(dtype).scaled(10);
      EXPECT_TRUE(all_close(losses, {2}, ref.losses, tol));
      EXPECT_TRUE(all_close(logits.grad(), {2, 3}, ref.grad, tol));
    }
  }
}

TEST(CrossEntropyRows, NonFiniteLogitsStayInTheirRow) {
  // Row 0 holds NaN, row 1 +inf (both NaN, as log_softmax gives), row 2 a -inf logit that is not
  // the target (finite), row 3 is clean.
  const std::vector<double> x{0.0, kNaN, 1.0, 2.0, kInf, 0.0, -kInf, 1.0, 0.5, 0.25, -0.5, 1.5};
  const std::vector<int64_t> target{0, 1, 1, 2};
  Tensor logits = from_vector(x, {4, 3}, kF64);
  logits.requires_grad_();
  const Tensor losses = cross_entropy_rows(logits, from_vector(target, {4}, kI64));
  losses.backward(ones({4}, kF64));
  const std::vector<double> l = test::host_values(losses);
  EXPECT_TRUE(std::isnan(l[0]));
  EXPECT_TRUE(std::isnan(l[1]));
  const CeReference ref = ce_reference({-kInf, 1.0, 0.5, 0.25, -0.5, 1.5}, 2, 3, {1, 2}, {-100, 0.0}, {1.0, 1.0});
  EXPECT_NEAR(l[2], ref.losses[0], 1e-12);
  EXPECT_NEAR(l[3], ref.losses[1], 1e-12);
  const std::vector<double> grad = test::host_values(logits.grad());
  for (int j = 0; j < 6; ++j) EXPECT_TRUE(std::isnan(grad[j])) << j;
  for (int j = 0; j < 6; ++j) EXPECT_NEAR(grad[6 + j], ref.grad[j], 1e-12) << j;
}

TEST(CrossEntropyRows, IgnoredRowsGiveZeroAndEmptyBatchesWork) {
  Tensor logits = rand({3, 4}, kF64);
  logits.requires_grad_();
  const Tensor losses = cross_entropy_rows(logits, full({3}, 7, kI64), 7, 0.2);
  EXPECT_TRUE(all_close(losses, {3}, {0, 0, 0}, {}));
  losses.sum().backward();
  EXPECT_TRUE(all_close(logits.grad(), {3, 4}, std::vector<double>(12, 0.0), {}));
  EXPECT_TRUE(all_close(cross_entropy_rows(zeros({0, 4}), zeros({0}, kI64)), {0}, {}, {}));
  EXPECT_TRUE(all_close(cross_entropy_rows(zeros({0, 0}), zeros({0}, kI64)), {0}, {}, {}));
  Tensor empty_logits = zeros({0, 4}, kF64);
  empty_logits.requires_grad_();
  cross_entropy_rows(empty_logits, zeros({0}, kI64)).backward(zeros({0}, kF64));
  EXPECT_EQ(empty_logits.grad().shape(), Shape({0, 4}));
}

TEST(CrossEntropyRows, BadArgumentsRaise) {
  const Tensor logits = zeros({4, 3});
  const Tensor target = zeros({4}, kI64);
  EXPECT_TRUE(raises_error([&] { cross_entropy_rows(zeros({4}), target); }, {"cross_entropy_rows", "[4]", "2-D"}));
  EXPECT_TRUE(raises_error([&] { cross_entropy_rows(zeros({4, 3}, kI32), target); }, {"cross_entropy_rows", "i32"}));
  EXPECT_TRUE(raises_error([&] { cross_entropy_rows(logits, zeros({4}, kI32)); }, {"cross_entropy_rows", "i64"}));
  EXPECT_TRUE(raises_error([&] { cross_entropy_rows(logits, zeros({5}, kI64)); }, {"cross_entropy_rows", "[5]"}));
  EXPECT_TRUE(raises_error([&] { cross_entropy_rows(zeros({4, 0}), target); }, {"cross_entropy_rows", "[4, 0]"}));
  EXPECT_TRUE(raises_error([&] { cross_entropy_rows(logits, target, -100, -0.1); }, {"label_smoothing", "-0.1"}));
  EXPECT_TRUE(raises_error(
      [&] {
        cross_entropy_rows(logits, from_vector<int64_t>({0, 3, 1, 2}, {4}, kI64));
      },
      {"cross_entropy", "target[1] = 3", "[4, 3]", "< 3"}));
  EXPECT_TRUE(raises_error(
      [&] {
        cross_entropy_rows(logits, from_vector<int64_t>({0, 1, 1, -1}, {4}, kI64), 5);
      },
      {"target[3] = -1", "ignore_index 5"}));
}

// --- adam_step_ -----------------------------------------------------------------------------------

const std::vector<Shape> kAdamShapes{{3, 5}, {7}, {0}, {1}, {2, 2, 3}};

struct AdamState {
  std::vector<std::vector<double>> p, g, m, v;
};

/// The update rule of Note [fused adam] in double, on every entry.
void adam_reference(AdamState& s, const AdamStepArgs& a) {
  const bool l2 = a.weight_decay != 0.0 && a.decay == AdamWeightDecay::L2;
  const bool decoupled = a.weight_decay != 0.0 && a.decay == AdamWeightDecay::Decoupled;
  for (size_t i = 0; i < s.p.size(); ++i) {
    for (size_t k = 0; k < s.p[i].size(); ++k) {
      double g = s.g[i][k], p = s.p[i][k];
      if (l2) g += a.weight_decay * p;
      if (decoupled) p *= 1.0 - a.lr * a.weight_decay;
      s.m[i][k] = a.beta1 * s.m[i][k] + (1.0 - a.beta1) * g;
      s.v[i][k] = a.beta2 * s.v[i][k] + (1.0 - a.beta2) * g * g;
      const double m_hat = s.m[i][k] / a.bias_correction1, v_hat = s.v[i][k] / a.bias_correction2;
      s.p[i][k] = p - a.lr * m_hat / (std::sqrt(v_hat) + a.eps);
    }
  }
}

AdamStepArgs adam_args(AdamWeightDecay decay, double weight_decay, int step) {
  AdamStepArgs a;
  a.lr = 0.05;
  a.beta1 = 0.8;
  a.beta2 = 0.95;
  a.eps = 1e-6;
  a.weight_decay = weight_decay;
  a.decay = decay;
  a.bias_correction1 = 1.0 - std::pow(a.beta1, step);
  a.bias_correction2 = 1.0 - std::pow(a.beta2, step);
  return a;
}

std::vector<Tensor> to_tensors(const std::vector<std::vector<double>>& values, DType dtype,
                               Layout layout = Layout::Contiguous) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < values.size(); ++i)
    out.push_back(test::make_tensor(values[i], kAdamShapes[i], dtype, kCPU, layout));
  return out;
}

std::vector<double> random_rounded(HostRng& rng, int64_t n, double lo, double hi, DType dtype) {
  return test::round_to_dtype(rng.uniform(n, lo, hi), dtype);
}

TEST(AdamStep, ThreeStepsMatchTheUpdateRuleInDouble) {
  HostRng rng;
  for (DType dtype : test::floating_dtypes()) {
    for (const auto& [decay, wd] : std::vector<std::pair<AdamWeightDecay, double>>{
             {AdamWeightDecay::L2, 0.0}, {AdamWeightDecay::L2, 0.1}, {AdamWeightDecay::Decoupled, 0.1}}) {
      SCOPED_TRACE(fmt::format("{} {} weight_decay {}", dtype_name(dtype),
                               decay == AdamWeightDecay::L2 ? "L2" : "decoupled", wd));
      test::guarded([&] {
        AdamState s;
        for (const Shape& shape : kAdamShapes) {
          s.p.push_back(random_rounded(rng, test::numel_of(shape), -1, 1, dtype));
          s.m.emplace_back(s.p.back().size(), 0.0);
          s.v.emplace_back(s.p.back().size(), 0.0);
        }
        const std::vector<Tensor> params = to_tensors(s.p, dtype), m = to_tensors(s.m, dtype),
                                  v = to_tensors(s.v, dtype);
        for (int step = 1; step <= 3; ++step) {
          s.g.clear();
          for (const Shape& shape : kAdamShapes)
            s.g.push_back(random_rounded(rng, test::numel_of(shape), -1, 1, dtype));
          const AdamStepArgs args = adam_args(decay, wd, step);
          // Gradients in a strided layout: adam_step_ takes any layout for them.
          adam_step_(params, to_tensors(s.g, dtype, Layout::Strided), m, v, args);
          adam_reference(s, args);
          // f16/bf16 are rounded once per step, so the reference drifts from them by an ulp per step.
          const test::Tolerance tol = dtype == kF64   ? test::Tolerance{1e-12, 1e-13}
                                      : dtype == kF32 ? test::Tolerance{2e-6, 2e-7}
                                                      : test::tolerance_for(dtype).scaled(4);
          for (size_t i = 0; i < params.size(); ++i) {
            SCOPED_TRACE(fmt::format("step {} entry {}", step, i));
            EXPECT_TRUE(all_close(params[i], kAdamShapes[i], s.p[i], tol));
            EXPECT_TRUE(all_close(m[i], kAdamShapes[i], s.m[i], tol));
            EXPECT_TRUE(all_close(v[i], kAdamShapes[i], s.v[i], tol));
            // Round the reference's state to what the tensors hold, so later steps start alike.
            s.p[i] = test::host_values(params[i]);
            s.m[i] = test::host_values(m[i]);
            s.v[i] = test::host_values(v[i]);
          }
        }
      });
    }
  }
}

TEST(AdamStep, EntriesOfDifferentDtypesShareOneCall) {
  const Tensor p32 = from_vector<double>({1.0, -2.0}, {2}, kF32), p64 = from_vector<double>({0.5}, {1}, kF64);
  const Tensor g32 = from_vector<double>({0.5, 0.25}, {2}, kF32), g64 = from_vector<double>({-1.0}, {1}, kF64);
  const Tensor m32 = zeros({2}, kF32), v32 = zeros({2}, kF32), m64 = zeros({1}, kF64), v64 = zeros({1}, kF64);
  AdamStepArgs args = adam_args(AdamWeightDecay::L2, 0.0, 1);
  adam_step_({p32, p64}, {g32, g64}, {m32, m64}, {v32, v64}, args);
  // First step without weight decay: p -= lr * sign(g) (up to eps).
  EXPECT_TRUE(all_close(p32, {2}, {1.0 - args.lr, -2.0 - args.lr}, {1e-5, 1e-5}));
  EXPECT_TRUE(all_close(p64, {1}, {0.5 + args.lr}, {1e-5, 1e-6}));
}

TEST(AdamStep, BadArgumentsRaiseAndWriteNothing) {
  const Tensor p = ones({2, 3}), g = ones({2, 3}), m = zeros({2, 3}), v = zeros({2, 3});
  const AdamStepArgs args = adam_args(AdamWeightDecay::Decoupled, 0.1, 1);
  EXPECT_TRUE(raises_error([&] { adam_step_({p}, {g, g}, {m}, {v}, args); }, {"adam_step_", "one length"}));
  EXPECT_TRUE(raises_error([&] { adam_step_({p}, {ones({3})}, {m}, {v}, args); }, {"adam_step_", "entry 0", "shape"}));
  EXPECT_TRUE(raises_error([&] { adam_step_({p}, {ones({2, 3}, kF64)}, {m}, {v}, args); }, {"adam_step_", "f64"}));
  EXPECT_TRUE(raises_error([&] { adam_step_({ones({3, 2}).t()}, {g}, {m}, {v}, args); }, {"adam_step_", "contiguous"}));
  AdamStepArgs bad = args;
  bad.bias_correction1 = 0.0;
  EXPECT_TRUE(raises_error([&] { adam_step_({p}, {g}, {m}, {v}, bad); }, {"adam_step_", "bias correction"}));
  bad = args;
  bad.beta2 = 1.0;
  EXPECT_TRUE(raises_error([&] { adam_step_({p}, {g}, {m}, {v}, bad); }, {"adam_step_", "betas"}));
  Tensor leaf = ones({2, 3});
  leaf.requires_grad_();
  EXPECT_TRUE(raises_error([&] { adam_step_({leaf}, {g}, {m}, {v}, args); }, {"adam_step_", "NoGradGuard"}));
  EXPECT_TRUE(all_close(p, {2, 3}, std::vector<double>(6, 1.0), {}));
  EXPECT_TRUE(all_close(m, {2, 3}, std::vector<double>(6, 0.0), {}));
  {
    autograd::NoGradGuard no_grad;
    EXPECT_NO_THROW(adam_step_({leaf}, {g}, {m}, {v}, args));
  }
  EXPECT_LT(leaf.to_vector<double>()[0], 1.0);
}

// Entries are updated in parallel, so no byte one of them writes may be read or written through
// another tensor of the call: views of one buffer that do not overlap are fine.
TEST(AdamStep, EntriesThatShareWrittenMemoryAreRefusedAndNothingIsWritten) {
  const AdamStepArgs args = adam_args(AdamWeightDecay::Decoupled, 0.1, 1);
  const Tensor flat = ones({12});  // params of two entries as disjoint views of one buffer: fine
  const Tensor p0 = flat.narrow(0, 0, 6), p1 = flat.narrow(0, 6, 6);
  const Tensor grads = full({12}, 0.5);  // every grad a view of one buffer, as DDP's buckets: fine
  const Tensor g0 = grads.narrow(0, 0, 6), g1 = grads.narrow(0, 6, 6);
  EXPECT_NO_THROW(adam_step_({p0, p1}, {g0, g1}, {zeros({6}), zeros({6})}, {zeros({6}), zeros({6})}, args));
  EXPECT_NO_THROW(adam_step_({p0, p1}, {g0, g0}, {zeros({6}), zeros({6})}, {zeros({6}), zeros({6})}, args));

  const Tensor before = flat.clone();
  const Tensor m = zeros({6}), v = zeros({6});
  struct Case {
    const char* what;
    std::function<void()> call;
    std::vector<std::string> fragments;
  };
  const Tensor overlapping = flat.narrow(0, 3, 6);  // bytes of p0 and p1
  const std::vector<Case> cases = {
      {"one param twice",
       [&] {
         adam_step_({p0, p0}, {g0, g1}, {zeros({6}), zeros({6})}, {zeros({6}), zeros({6})}, args);
       },
       {"param of entry 0", "param of entry 1"}},
      {"params that overlap",
       [&] {
         adam_step_({p0, overlapping}, {g0, g1}, {zeros({6}), zeros({6})}, {zeros({6}), zeros({6})}, args);
       },
       {"entry 0", "entry 1", "share memory"}},
      {"one exp_avg for two entries",
       [&] {
         adam_step_({p0, p1}, {g0, g1}, {m, m}, {zeros({6}), v}, args);
       },
       {"exp_avg of entry 0", "exp_avg of entry 1"}},
      {"a grad that is another entry's param",
       [&] {
         adam_step_({p0, p1}, {g0, p0}, {zeros({6}), m}, {zeros({6}), v}, args);
       },
       {"param of entry 0", "grad of entry 1"}},
      {"exp_avg and exp_avg_sq of one entry alike",
       [&] { adam_step_({p0}, {g0}, {m}, {m}, args); },
       {"exp_avg", "exp_avg_sq", "entry 0"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<std::string> fragments = c.fragments;
    fragments.push_back("adam_step_");
    EXPECT_TRUE(raises_error(c.call, fragments));
  }
  EXPECT_EQ(m.to_vector<float>(), std::vector<float>(6, 0.0f));
  EXPECT_EQ(v.to_vector<float>(), std::vector<float>(6, 0.0f));
  EXPECT_EQ(flat.to_vector<float>(), before.to_vector<float>());
}

// --- adam_step_ with gradient slots --------------------------------------------------------------

/// `x` rounded to bf16 as the note says (nearest, ties to even; NaN quiet), written without
/// FLAME's conversion: nearbyint (ties to even) in units of x's last bf16 bit, in double.
float round_to_bf16(float x) {
  if (std::isnan(x)) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    bits = ((bits >> 16) | 0x40u) << 16;
    std::memcpy(&x, &bits, 4);
    return x;
  }
  if (x == 0.0f || std::isinf(x)) return x;
  const int exponent = std::max(std::ilogb(x), -126);  // bf16 keeps 8 significant bits, down to 2^-133
  const double unit = std::ldexp(1.0, exponent - 7);
  return static_cast<float>(std::nearbyint(static_cast<double>(x) / unit) * unit);  // 2^128 becomes inf
}

/// ((s_0 + s_1) + ... + s_{W-1}) * scale in float, then rounded to bf16, element by element.
std::vector<float> slot_mean_reference(const std::vector<std::vector<double>>& rows, float scale) {
  std::vector<float> mean(rows[0].size());
  for (size_t e = 0; e < mean.size(); ++e) {
    float sum = static_cast<float>(rows[0][e]);
    for (size_t w = 1; w < rows.size(); ++w) sum += static_cast<float>(rows[w][e]);
    mean[e] = round_to_bf16(sum * scale);
  }
  return mean;
}

std::vector<uint32_t> f32_bits(const Tensor& t) {
  const std::vector<float> values = t.to_vector<float>();
  std::vector<uint32_t> bits(values.size());
  if (!bits.empty()) std::memcpy(bits.data(), values.data(), 4 * bits.size());
  return bits;
}

std::vector<uint32_t> f32_bits(const std::vector<float>& values) {
  std::vector<uint32_t> bits(values.size());
  if (!bits.empty()) std::memcpy(bits.data(), values.data(), 4 * bits.size());
  return bits;
}

/// `rows` (each rounded to bf16 already) as slots [W, n]: columns 2..n+1 of a [W, n + 5] bf16
/// tensor whose other columns hold NaN, so stride(0) = n + 5 > n.
Tensor make_slots(const std::vector<std::vector<double>>& rows) {
  const int64_t w = static_cast<int64_t>(rows.size()), n = static_cast<int64_t>(rows[0].size()), wide = n + 5;
  std::vector<double> values(static_cast<size_t>(w * wide), kNaN);
  for (int64_t r = 0; r < w; ++r) std::copy(rows[r].begin(), rows[r].end(), values.begin() + r * wide + 2);
  return from_vector(values, {w, wide}, kBF16).narrow(1, 2, n);
}

TEST(AdamStepSlots, ReferenceRoundingOfTies) {
  // The test's own rounding: exact halves go to the even neighbour; both neighbours 2^-7 apart.
  EXPECT_EQ(round_to_bf16(1.0f + 0x1p-8f), 1.0f);                // tie, down to even
  EXPECT_EQ(round_to_bf16(1.0f + 3 * 0x1p-8f), 1.0f + 0x1p-6f);  // tie, up to even
  EXPECT_EQ(round_to_bf16(-(1.0f + 3 * 0x1p-8f)), -(1.0f + 0x1p-6f));
  EXPECT_EQ(round_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 1.0f + 0x1p-7f);  // past the tie
  EXPECT_EQ(round_to_bf16(0x1.ffp127f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(round_to_bf16(0x1p-130f), 0x1p-130f);  // bf16 subnormal
}

/// Per W, rows of slot values (already bf16) that exercise the note's arithmetic: ties of the
/// rounding (W = 2, 4, where scale 1/W is exact) and an f32 sum that cancels in rank order.
std::vector<std::vector<double>> special_rows(int w) {
  std::vector<std::vector<double>> rows(w);
  const auto column = [&](std::vector<double> values) {
    for (int r = 0; r < w; ++r) rows[r].push_back(values[r]);
  };
  if (w == 2) {
    column({1.0, 1.0 + 0x1p-7});           // mean 1 + 2^-8: tie, to 1
    column({1.0 + 0x1p-7, 1.0 + 0x1p-6});  // mean 1 + 3 * 2^-8: tie, to 1 + 2^-6
    column({-1.0, -1.0 - 0x1p-7});         // -(1 + 2^-8): to -1
  } else if (w == 4) {
    column({1.0 + 0x1p-6, 1.0, 1.0, 1.0});                    // mean 1 + 2^-8: tie, to 1
    column({1.0 + 0x1p-6, 1.0 + 0x1p-6, 1.0 + 0x1p-6, 1.0});  // 1 + 3 * 2^-8: tie, up
    column({0x1p25, 1.0, -0x1p25, 0.0});                      // 2^25 + 1 rounds to 2^25 in f32: 0
  } else if (w == 3) {
    column({0x1p25, 1.0, -0x1p25});  // 0 in f32 rank order (1/3 in exact arithmetic)
    column({0x1p25, -0x1p25, 1.0});  // 1/3 rounded
  } else {
    column({1.0 + 0x1p-7});
  }
  return rows;
}

TEST(AdamStepSlots, MeanMatchesTheFloatReferenceAndTheUpdateReadsIt) {
  HostRng rng;
  // Entries 0, 2 and 4 carry slots; 1 (f32) and 3 (f64) read their grads.
  const std::vector<Shape> shapes{{3, 5}, {7}, {2, 2, 3}, {4}, {0}};
  const std::vector<DType> dtypes{kF32, kF32, kF32, kF64, kF32};
  const std::vector<bool> has_slots{true, false, true, false, true};
  for (int w = 1; w <= 4; ++w) {
    for (const auto& [decay, wd] : std::vector<std::pair<AdamWeightDecay, double>>{{AdamWeightDecay::L2, 0.1},
                                                                                   {AdamWeightDecay::Decoupled, 0.1}}) {
      SCOPED_TRACE(fmt::format("W {} {}", w, decay == AdamWeightDecay::L2 ? "L2" : "decoupled"));
      const float scale = 1.0f / static_cast<float>(w);
      std::vector<Tensor> p, g, m, v, p_ref, g_ref, m_ref, v_ref;
      std::vector<GradientSlots> slots;
      std::vector<std::vector<float>> means;
      for (size_t i = 0; i < shapes.size(); ++i) {
        const int64_t n = test::numel_of(shapes[i]);
        const auto param = random_rounded(rng, n, -1, 1, dtypes[i]), avg = random_rounded(rng, n, -0.1, 0.1, dtypes[i]),
                   avg_sq = random_rounded(rng, n, 0, 0.01, dtypes[i]);
        std::vector<double> grad = random_rounded(rng, n, -1, 1, dtypes[i]);
        GradientSlots entry;
        if (has_slots[i]) {
          std::vector<std::vector<double>> rows;
          for (int r = 0; r < w; ++r) rows.push_back(random_rounded(rng, n, -2, 2, kBF16));
          if (i == 0) {  // the special columns first
            const auto special = special_rows(w);
            for (int r = 0; r < w; ++r) std::copy(special[r].begin(), special[r].end(), rows[r].begin());
          }
          entry = {make_slots(rows), scale};
          means.push_back(slot_mean_reference(rows, scale));
          grad.assign(static_cast<size_t>(n), 7.0);  // overwritten, never read
        } else {
          means.emplace_back();
        }
        slots.push_back(entry);
        p.push_back(test::make_tensor(param, shapes[i], dtypes[i]));
        g.push_back(test::make_tensor(grad, shapes[i], dtypes[i]));
        m.push_back(test::make_tensor(avg, shapes[i], dtypes[i]));
        v.push_back(test::make_tensor(avg_sq, shapes[i], dtypes[i]));
        p_ref.push_back(p.back().clone());
        m_ref.push_back(m.back().clone());
        v_ref.push_back(v.back().clone());
        g_ref.push_back(has_slots[i] ? test::make_tensor(std::vector<double>(means.back().begin(), means.back().end()),
                                                         shapes[i], kF32)
                                     : g.back().clone());
      }
      const AdamStepArgs args = adam_args(decay, wd, 2);
      adam_step_(p, g, m, v, args, slots);
      adam_step_(p_ref, g_ref, m_ref, v_ref, args);
      for (size_t i = 0; i < shapes.size(); ++i) {
        SCOPED_TRACE(fmt::format("entry {} {}", i, p[i].describe()));
        if (has_slots[i]) {
          EXPECT_EQ(f32_bits(g[i]), f32_bits(means[i]));
        } else {
          EXPECT_TRUE(test::tensors_identical(g[i], g_ref[i]));  // read only
        }
        EXPECT_TRUE(test::tensors_identical(p[i], p_ref[i]));
        EXPECT_TRUE(test::tensors_identical(m[i], m_ref[i]));
        EXPECT_TRUE(test::tensors_identical(v[i], v_ref[i]));
      }
      // The closed forms of the special columns.
      const std::vector<float> g0 = g[0].to_vector<float>();
      if (w == 2)
        EXPECT_EQ(std::vector<float>(g0.begin(), g0.begin() + 3), (std::vector<float>{1.0f, 1.0f + 0x1p-6f, -1.0f}));
      if (w == 4)
        EXPECT_EQ(std::vector<float>(g0.begin(), g0.begin() + 3), (std::vector<float>{1.0f, 1.0f + 0x1p-6f, 0.0f}));
      if (w == 3) {
        EXPECT_EQ(g0[0], 0.0f);
        EXPECT_EQ(g0[1], round_to_bf16(1.0f / 3.0f));
      }
    }
  }
}

TEST(AdamStepSlots, NonFiniteSlotsGiveNonFiniteMeans) {
  const Tensor p = zeros({3}), g = zeros({3}), m = zeros({3}), v = zeros({3});
  const GradientSlots slots{make_slots({{kNaN, kInf, 0x1p127}, {1.0, 1.0, 0x1p127}}), 0.5f};
  adam_step_({p}, {g}, {m}, {v}, adam_args(AdamWeightDecay::L2, 0.0, 1), {slots});
  const std::vector<float> mean = g.to_vector<float>();
  EXPECT_TRUE(std::isnan(mean[0]));
  EXPECT_EQ(f32_bits(g)[0] & 0x7fc0ffffu, 0x7fc00000u);  // a quiet NaN with bf16's bits only
  EXPECT_EQ(mean[1], std::numeric_limits<float>::infinity());
  EXPECT_EQ(mean[2], std::numeric_limits<float>::infinity());  // 2^128 overflows f32 before the scale
}

// GradientSlots::write_mean false: the same update from the mean, the grad left as it was.
TEST(AdamStepSlots, AnUnwrittenMeanUpdatesAsAWrittenOne) {
  const std::vector<std::vector<double>> rows{{0.5, -1.25, 3.0, 0x1p-9}, {0.25, 1.0, -2.0, 1.0 + 0x1p-7}};
  const auto fresh = [] { return std::vector<Tensor>{full({4}, 0.5), full({4}, 9.0), full({4}, 0.1), full({4}, 0.2)}; };
  std::vector<Tensor> written = fresh(), unwritten = fresh();
  const AdamStepArgs args = adam_args(AdamWeightDecay::Decoupled, 0.1, 2);
  adam_step_({written[0]}, {written[1]}, {written[2]}, {written[3]}, args, {{make_slots(rows), 0.5f}});
  adam_step_({unwritten[0]}, {unwritten[1]}, {unwritten[2]}, {unwritten[3]}, args, {{make_slots(rows), 0.5f, false}});
  EXPECT_EQ(f32_bits(written[1]), f32_bits(slot_mean_reference(rows, 0.5f)));
  EXPECT_EQ(unwritten[1].to_vector<float>(), std::vector<float>(4, 9.0f));
  for (size_t k : {size_t{0}, size_t{2}, size_t{3}}) EXPECT_EQ(f32_bits(unwritten[k]), f32_bits(written[k])) << k;
  EXPECT_NE(f32_bits(written[0]), f32_bits(fresh()[0])) << "the step changed nothing";
}

TEST(AdamStepSlots, BadArgumentsRaiseAndWriteNothing) {
  const AdamStepArgs args = adam_args(AdamWeightDecay::Decoupled, 0.1, 1);
  const Tensor p = ones({2, 3}), g = full({2, 3}, 0.5), m = zeros({2, 3}), v = zeros({2, 3});
  const Tensor good = from_vector<double>({1, 2, 3, 4, 5, 6}, {1, 6}, kBF16);
  const auto unchanged = [&] {
    return all_close(p, {2, 3}, std::vector<double>(6, 1.0), {}) &&
           all_close(g, {2, 3}, std::vector<double>(6, 0.5), {}) &&
           all_close(m, {2, 3}, std::vector<double>(6, 0.0), {});
  };
  const auto raises = [&](const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                          const std::vector<Tensor>& avg, const std::vector<Tensor>& avg_sq,
                          const std::vector<GradientSlots>& slots, const std::vector<std::string>& fragments) {
    return raises_error([&] { adam_step_(params, grads, avg, avg_sq, args, slots); }, fragments);
  };
  // A second, valid entry that is refused with the first.
  const Tensor p2 = ones({6}), g2 = ones({6}), m2 = zeros({6}), v2 = zeros({6});
  const std::vector<Tensor> ps{p2, p}, gs{g2, g}, ms{m2, m}, vs{v2, v};
  const auto with = [&](Tensor slots) { return std::vector<GradientSlots>{{good, 1.0f}, {std::move(slots), 1.0f}}; };

  EXPECT_TRUE(raises(ps, gs, ms, vs, {{good, 1.0f}}, {"adam_step_", "got 1 grad_slots for 2 params"}));
  for (DType dtype : {kBF16, kF64}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor pd = ones({6}, dtype), gd = ones({6}, dtype), md = zeros({6}, dtype), vd = zeros({6}, dtype);
    EXPECT_TRUE(raises({p2, pd}, {g2, gd}, {m2, md}, {v2, vd}, with(good),
                       {"adam_step_", "entry 1", "gradient slots need an f32 param"}));
    EXPECT_TRUE(all_close(pd, {6}, std::vector<double>(6, 1.0), {}));
  }
  EXPECT_TRUE(raises({p2, p}, {g2, full({3, 2}, 0.5).t()}, {m2, m}, {v2, v}, with(good.view({1, 6})),
                     {"adam_step_", "entry 1", "must be contiguous when the entry has gradient slots"}));
  EXPECT_TRUE(raises(ps, gs, ms, vs, with(zeros({2, 5}, kBF16)), {"adam_step_", "entry 1", "shape [W, 6]"}));
  EXPECT_TRUE(raises(ps, gs, ms, vs, with(zeros({6}, kBF16)), {"adam_step_", "entry 1", "shape [W, 6]"}));
  EXPECT_TRUE(raises(ps, gs, ms, vs, with(zeros({0, 6}, kBF16)), {"adam_step_", "entry 1", "W >= 1"}));
  EXPECT_TRUE(raises(ps, gs, ms, vs, with(zeros({2, 6}, kF32)), {"adam_step_", "entry 1", "must be bf16"}));
  EXPECT_TRUE(raises(ps, gs, ms, vs, with(zeros({6, 2}, kBF16).t()), {"adam_step_", "entry 1", "stride(1) == 1"}));
  Tensor tracked = full({2, 3}, 0.5);
  tracked.requires_grad_();
  EXPECT_TRUE(raises(ps, {g2, tracked}, ms, vs, with(good), {"adam_step_", "NoGradGuard"}));
  EXPECT_TRUE(unchanged());
  EXPECT_TRUE(all_close(p2, {6}, std::vector<double>(6, 1.0), {}));
  EXPECT_TRUE(all_close(g2, {6}, std::vector<double>(6, 1.0), {}));
}

// Across entries: DDP's layout (each entry's grad a view of one bucket, receiving its mean, and
// its slots columns of one [W, n] buffer) is accepted; a grad written over another entry's slot
// row is refused, naming both, and nothing is written.
TEST(AdamStepSlots, EntriesMayShareBucketsButNotWrittenBytes) {
  const AdamStepArgs args = adam_args(AdamWeightDecay::L2, 0.0, 1);
  const Tensor bucket = zeros({10});  // the grads of entries 0 (4 values) and 1 (6 values)
  const Tensor slots = full({2, 10}, 1.0, kBF16);
  const std::vector<Tensor> params{zeros({4}), zeros({6})};
  const std::vector<Tensor> grads{bucket.narrow(0, 0, 4), bucket.narrow(0, 4, 6)};
  adam_step_(params, grads, {zeros({4}), zeros({6})}, {zeros({4}), zeros({6})}, args,
             {{slots.narrow(1, 0, 4), 0.5f}, {slots.narrow(1, 4, 6), 0.5f}});
  EXPECT_EQ(bucket.to_vector<float>(), std::vector<float>(10, 1.0f));

  // Entry 0's grad (written) lies over row 0 of entry 1's slots: one f32 buffer seen as bf16.
  const auto storage = std::make_shared<Storage>(kCPU, 64);
  const Tensor shared_slots = Tensor::from_storage(storage, {2, 6}, {16, 1}, 0, kBF16);  // rows at bytes 0 and 32
  Tensor::from_storage(storage, {32}, {1}, 0, kBF16).fill_(1.0);
  const Tensor grad0 = Tensor::from_storage(storage, {2}, {1}, 1, kF32);  // bytes [4, 12): inside row 0
  const Tensor other_slots = full({2, 2}, 3.0, kBF16);
  const Tensor p0 = zeros({2}), p1 = zeros({6});
  EXPECT_TRUE(raises_error(
      [&] {
        adam_step_({p0, p1}, {grad0, zeros({6})}, {zeros({2}), zeros({6})}, {zeros({2}), zeros({6})}, args,
                   {{other_slots, 0.5f}, {shared_slots, 0.5f}});
      },
      {"adam_step_", "grad of entry 0", "gradient slots of entry 1", "share memory"}));
  EXPECT_EQ(Tensor::from_storage(storage, {32}, {1}, 0, kBF16).to_vector<float>(), std::vector<float>(32, 1.0f));
  EXPECT_EQ(p0.to_vector<float>(), std::vector<float>(2, 0.0f));
  // The same grad without its mean written is only read there: accepted.
  EXPECT_NO_THROW(adam_step_({p0, p1}, {grad0, zeros({6})}, {zeros({2}), zeros({6})}, {zeros({2}), zeros({6})}, args,
                             {{other_slots, 0.5f, /*write_mean=*/false}, {shared_slots, 0.5f}}));
}

TEST(AdamStepSlots, SlotsAndGradMayShareAStorageWithoutOverlapping) {
  // One 48-byte buffer: slot rows [2, 6] bf16 at bytes [0, 12) and [36, 48) (stride(0) 18), the
  // f32 grad [6] between them at [12, 36). A grad over a slot row is refused.
  const auto storage = std::make_shared<Storage>(kCPU, 48);
  const Tensor slots = Tensor::from_storage(storage, {2, 6}, {18, 1}, 0, kBF16);
  Tensor::from_storage(storage, {24}, {1}, 0, kBF16).fill_(1.0);
  Tensor grad = Tensor::from_storage(storage, {6}, {1}, 3, kF32);
  grad.fill_(5.0);
  const Tensor p = zeros({6}), m = zeros({6}), v = zeros({6});
  const AdamStepArgs args = adam_args(AdamWeightDecay::L2, 0.0, 1);
  adam_step_({p}, {grad}, {m}, {v}, args, {{slots, 0.5f}});
  EXPECT_TRUE(all_close(grad, {6}, std::vector<double>(6, 1.0), {}));
  const Tensor over = Tensor::from_storage(storage, {6}, {1}, 2, kF32);  // bytes [8, 32): row 0's end
  EXPECT_TRUE(raises_error(
      [&] {
        adam_step_({p}, {over}, {m}, {v}, args, {{slots, 0.5f}});
      },
      {"adam_step_", "entry 0", "overlap"}));
}

}  // namespace
}  // namespace flame
