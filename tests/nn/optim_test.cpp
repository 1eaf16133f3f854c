// Optimizers (SGD, Adam, AdamW) against their update rules written out in double on the host for
// three steps, optimizer state save / restore, gradient clipping and lr schedules in closed form.
#include <cmath>
#include <memory>
#include <numbers>

#include "core/autograd.h"
#include "nn/linear.h"
#include "nn/optim/adam.h"
#include "nn/optim/clip.h"
#include "nn/optim/schedule.h"
#include "nn/optim/sgd.h"
#include "support/test_support.h"

namespace flame::optim {
namespace {

using test::host_values;
using test::raises_error;
using test::Tolerance;
using test::values_close;

const std::vector<Shape> kShapes = {{2, 3}, {4}};
constexpr int kSteps = 3;

// --- host references (plain double arithmetic) -------------------------------------------------

using Values = std::vector<double>;

struct SgdReference {
  SGDOptions o;
  std::vector<Values> buffers;
  void step(int t, std::vector<Values>& params, const std::vector<Values>& grads) {
    buffers.resize(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      Values& p = params[i];
      Values& b = buffers[i];
      b.resize(p.size());
      for (size_t k = 0; k < p.size(); ++k) {
        double g = grads[i][k] + o.weight_decay * p[k];
        if (o.momentum != 0.0) {
          b[k] = t == 1 ? g : o.momentum * b[k] + (1.0 - o.dampening) * g;
          g = o.kind == MomentumKind::Nesterov ? g + o.momentum * b[k] : b[k];
        }
        p[k] -= o.lr * g;
      }
    }
  }
};

struct AdamReference {
  AdamOptions o;
  WeightDecayMode mode = WeightDecayMode::L2;
  std::vector<Values> m, v;
  void step(int t, std::vector<Values>& params, const std::vector<Values>& grads) {
    m.resize(params.size());
    v.resize(params.size());
    const auto [b1, b2] = o.betas;
    for (size_t i = 0; i < params.size(); ++i) {
      Values& p = params[i];
      m[i].resize(p.size(), 0.0);
      v[i].resize(p.size(), 0.0);
      for (size_t k = 0; k < p.size(); ++k) {
        double g = grads[i][k];
        if (mode == WeightDecayMode::L2) g += o.weight_decay * p[k];
        if (mode == WeightDecayMode::Decoupled) p[k] *= 1.0 - o.lr * o.weight_decay;
        m[i][k] = b1 * m[i][k] + (1.0 - b1) * g;
        v[i][k] = b2 * v[i][k] + (1.0 - b2) * g * g;
        const double m_hat = m[i][k] / (1.0 - std::pow(b1, t));
        const double v_hat = v[i][k] / (1.0 - std::pow(b2, t));
        p[k] -= o.lr * m_hat / (std::sqrt(v_hat) + o.eps);
      }
    }
  }
};

// --- harness ------------------------------------------------------------------------------------

/// Fresh parameters holding `values` (rounded to dtype), requiring grad.
std::vector<Tensor> make_params(const std::vector<Values>& values, DType dtype, Device device = kCPU) {
  std::vector<Tensor> params;
  for (size_t i = 0; i < values.size(); ++i) {
    Tensor p = test::make_tensor(values[i], kShapes[i], dtype, device);
    p.requires_grad_(true);
    params.push_back(p);
  }
  return params;
}

std::vector<Values> random_values(test::HostRng& rng, DType dtype) {
  std::vector<Values> out;
  for (const Shape& shape : kShapes)
    out.push_back(test::round_to_dtype(rng.uniform(test::numel_of(shape), -1.0, 1.0), dtype));
  return out;
}

/// Runs `optimizer` for kSteps steps with random gradients and compares each step's parameters
/// with `reference` run on the same values in double.
template <class Reference>
void check_against_reference(const std::function<std::unique_ptr<Optimizer>(std::vector<Tensor>)>& make,
                             Reference reference, DType dtype, Tolerance tol) {
  SCOPED_TRACE(std::string(dtype_name(dtype)));
  test::HostRng rng;
  std::vector<Values> expected = random_values(rng, dtype);
  std::vector<Tensor> params = make_params(expected, dtype);
  std::unique_ptr<Optimizer> optimizer = make(params);
  for (int t = 1; t <= kSteps; ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    const std::vector<Values> grads = random_values(rng, dtype);
    for (size_t i = 0; i < params.size(); ++i) params[i].set_grad(test::make_tensor(grads[i], kShapes[i], dtype));
    optimizer->step();
    reference.step(t, expected, grads);
    for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(values_close(host_values(params[i]), expected[i], tol));
  }
  EXPECT_EQ(optimizer->step_count(), kSteps);
}

const Tolerance kF64Tol{1e-12, 1e-14};
const Tolerance kF32Tol{1e-5, 1e-6};

template <class Options>
void check_sgd(Options options) {
  auto make = [&](std::vector<Tensor> params) { return std::make_unique<SGD>(std::move(params), options); };
  check_against_reference(make, SgdReference{options}, kF64, kF64Tol);
  check_against_reference(make, SgdReference{options}, kF32, kF32Tol);
}

TEST(SGD, PlainMatchesReference) { check_sgd(SGDOptions{.lr = 0.1}); }

TEST(SGD, MomentumMatchesReference) {
  check_sgd(SGDOptions{.lr = 0.1, .momentum = 0.9});
  check_sgd(SGDOptions{.lr = 0.05, .momentum = 0.8, .dampening = 0.3});
}

TEST(SGD, NesterovMatchesReference) {
  check_sgd(SGDOptions{.lr = 0.1, .momentum = 0.9, .kind = MomentumKind::Nesterov});
}

TEST(SGD, WeightDecayMatchesReference) {
  check_sgd(SGDOptions{.lr = 0.1, .weight_decay = 0.01});
  check_sgd(SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.05, .kind = MomentumKind::Nesterov});
}

TEST(SGD, ConstantGradientClosedForm) {
  // Plain SGD: p_3 = p_0 - 3 lr g. With momentum 0.5: buffers g, 1.5 g, 1.75 g -> p_0 - 4.25 lr g.
  for (const double momentum : {0.0, 0.5}) {
    Tensor p = from_vector<double>({1.0, -2.0}, {2}, kF64);
    p.requires_grad_(true);
    SGD sgd({p}, SGDOptions{.lr = 0.1, .momentum = momentum});
    for (int t = 0; t < 3; ++t) {
      p.set_grad(from_vector<double>({0.5, 4.0}, {2}, kF64));
      sgd.step();
    }
    const double total = momentum == 0.0 ? 3.0 : 4.25;
    EXPECT_TRUE(values_close(host_values(p), {1.0 - total * 0.1 * 0.5, -2.0 - total * 0.1 * 4.0}, kF64Tol));
  }
}

void check_adam(AdamOptions options, WeightDecayMode mode) {
  auto make = [&](std::vector<Tensor> params) -> std::unique_ptr<Optimizer> {
    if (mode == WeightDecayMode::L2) return std::make_unique<Adam>(std::move(params), options);
    return std::make_unique<AdamW>(std::move(params),
                                   AdamWOptions{options.lr, options.betas, options.eps, options.weight_decay});
  };
  check_against_reference(make, AdamReference{options, mode}, kF64, kF64Tol);
  check_against_reference(make, AdamReference{options, mode}, kF32, kF32Tol);
}

TEST(Adam, MatchesReference) {
  check_adam(AdamOptions{}, WeightDecayMode::L2);
  check_adam(AdamOptions{.lr = 0.01, .betas = {0.8, 0.99}, .eps = 1e-6}, WeightDecayMode::L2);
}

TEST(Adam, L2WeightDecayMatchesReference) {
  check_adam(AdamOptions{.lr = 0.01, .weight_decay = 0.1}, WeightDecayMode::L2);
}

TEST(AdamW, MatchesReference) {
  check_adam(AdamOptions{.lr = 0.01, .weight_decay = 1e-2}, WeightDecayMode::Decoupled);
  check_adam(AdamOptions{.lr = 0.02, .betas = {0.9, 0.95}, .weight_decay = 0.1}, WeightDecayMode::Decoupled);
}

TEST(AdamW, DefaultsAreTorchs) {
  Tensor p = zeros({1}, kF32);
  p.requires_grad_(true);
  AdamW adamw({p});
  EXPECT_EQ(adamw.options().weight_decay, 1e-2);
  EXPECT_EQ(adamw.options().lr, 1e-3);
  EXPECT_EQ(adamw.weight_decay_mode(), WeightDecayMode::Decoupled);
  EXPECT_EQ(adamw.type_name(), "AdamW");
  Adam adam({p});
  EXPECT_EQ(adam.options().weight_decay, 0.0);
  EXPECT_EQ(adam.weight_decay_mode(), WeightDecayMode::L2);
}

TEST(Adam, FirstStepClosedForm) {
  // After one step m_hat = g and v_hat = g^2, so p_1 = p_0 - lr g / (|g| + eps).
  Tensor p = from_vector<double>({1.0, 2.0, -3.0}, {3}, kF64);
  p.requires_grad_(true);
  Adam adam({p}, AdamOptions{.lr = 0.1, .eps = 1e-8});
  const Values g = {0.25, -2.0, 1e-3};
  p.set_grad(from_vector<double>(g, {3}, kF64));
  adam.step();
  Values expected = {1.0, 2.0, -3.0};
  for (size_t k = 0; k < g.size(); ++k) expected[k] -= 0.1 * g[k] / (std::abs(g[k]) + 1e-8);
  EXPECT_TRUE(values_close(host_values(p), expected, Tolerance{1e-10, 1e-12}));
}

TEST(Optimizer, StepsWithGradientsFromBackward) {
  // loss = sum(p * p) gives grad 2 p; one SGD step gives p (1 - 2 lr).
  Tensor p = from_vector<double>({1.0, -2.0, 3.0}, {3}, kF64);
  p.requires_grad_(true);
  SGD sgd({p}, SGDOptions{.lr = 0.1});
  sum(mul(p, p)).backward();
  sgd.step();
  EXPECT_TRUE(values_close(host_values(p), {0.8, -1.6, 2.4}, kF64Tol));
  EXPECT_TRUE(p.requires_grad());
  EXPECT_TRUE(p.is_leaf());
  sgd.zero_grad();
  EXPECT_FALSE(p.grad().defined());
}

TEST(Optimizer, SkipsParametersWithoutGradient) {
  // p1 gets a gradient only in step 2, so its Adam bias correction uses t = 1 there.
  Tensor p0 = from_vector<double>({1.0}, {1}, kF64);
  Tensor p1 = from_vector<double>({5.0}, {1}, kF64);
  p0.requires_grad_(true);
  p1.requires_grad_(true);
  Adam adam({p0, p1}, AdamOptions{.lr = 0.1});
  p0.set_grad(from_vector<double>({1.0}, {1}, kF64));
  adam.step();
  EXPECT_TRUE(values_close(host_values(p1), {5.0}, kF64Tol));
  NamedTensors state = adam.state_dict();
  std::vector<std::string> names;
  for (const auto& [name, t] : state) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"step", "state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq"}));

  p0.set_grad(Tensor());
  p1.set_grad(from_vector<double>({-3.0}, {1}, kF64));
  adam.step();
  EXPECT_TRUE(values_close(host_values(p1), {5.0 + 0.1 * 3.0 / (3.0 + 1e-8)}, kF64Tol));
  EXPECT_TRUE(values_close(host_values(p0), {1.0 - 0.1 / (1.0 + 1e-8)}, kF64Tol));
  EXPECT_EQ(adam.step_count(), 2);
  for (const auto& [name, t] : adam.state_dict()) {
    if (name == "step") EXPECT_EQ(t.item(), 2.0);
    if (name == "state.0.step" || name == "state.1.step") EXPECT_EQ(t.item(), 1.0) << name;
  }
}

TEST(Optimizer, SetLrTakesEffect) {
  Tensor p = from_vector<double>({1.0}, {1}, kF64);
  p.requires_grad_(true);
  SGD sgd({p}, SGDOptions{.lr = 0.1});
  p.set_grad(from_vector<double>({1.0}, {1}, kF64));
  sgd.step();
  sgd.set_lr(0.5);
  EXPECT_EQ(sgd.lr(), 0.5);
  sgd.step();
  EXPECT_TRUE(values_close(host_values(p), {1.0 - 0.1 - 0.5}, kF64Tol));
  EXPECT_TRUE(raises_error([&] { sgd.set_lr(-1.0); }, {"SGD", "lr"}));
  EXPECT_TRUE(raises_error([&] { sgd.set_lr(NAN); }, {"SGD", "lr"}));
}

TEST(Optimizer, RejectsBadParametersAndOptions) {
  Tensor p = zeros({2}, kF32);
  p.requires_grad_(true);
  EXPECT_TRUE(raises_error([] { SGD({}, SGDOptions{}); }, {"SGD", "empty parameter list"}));
  EXPECT_TRUE(raises_error([&] { SGD({p, p}, SGDOptions{}); }, {"parameters 0 and 1 are the same tensor"}));
  EXPECT_TRUE(raises_error([] { SGD({zeros({2}, kI64)}, SGDOptions{}); }, {"parameter 0", "floating-point"}));
  EXPECT_TRUE(raises_error([&] { SGD({mul(p, 2.0)}, SGDOptions{}); }, {"not a leaf"}));
  EXPECT_TRUE(raises_error([] { SGD({Tensor()}, SGDOptions{}); }, {"parameter 0 is undefined"}));
  EXPECT_TRUE(raises_error([&] { SGD({p}, SGDOptions{.lr = -0.1}); }, {"SGD", "lr"}));
  EXPECT_TRUE(raises_error([&] { SGD({p}, SGDOptions{.momentum = -1}); }, {"momentum"}));
  EXPECT_TRUE(raises_error([&] { SGD({p}, SGDOptions{.kind = MomentumKind::Nesterov}); }, {"Nesterov"}));
  EXPECT_TRUE(
      raises_error([&] { SGD({p}, SGDOptions{.momentum = 0.9, .dampening = 0.1, .kind = MomentumKind::Nesterov}); },
                   {"Nesterov", "dampening"}));
  EXPECT_TRUE(raises_error([&] { Adam({p}, AdamOptions{.betas = {1.0, 0.999}}); }, {"Adam", "betas"}));
  EXPECT_TRUE(raises_error([&] { AdamW({p}, AdamWOptions{.betas = {0.9, -0.1}}); }, {"AdamW", "betas"}));
  EXPECT_TRUE(raises_error([&] { Adam({p}, AdamOptions{.eps = -1}); }, {"eps"}));
  EXPECT_TRUE(raises_error([&] { AdamW({p}, AdamWOptions{.weight_decay = -1}); }, {"weight_decay"}));
}

// --- state_dict / load_state_dict -----------------------------------------------------------------

/// Two optimizers over copies of the same parameters: `a` runs 2 steps, its state goes to `b`,
/// then both run one more step on the same gradients and must agree exactly.
template <class Make>
void check_state_round_trip(Make make) {
  test::HostRng rng;
  const std::vector<Values> initial = random_values(rng, kF64);
  std::vector<Tensor> pa = make_params(initial, kF64);
  std::unique_ptr<Optimizer> a = make(pa);
  std::vector<std::vector<Values>> grads;
  for (int t = 0; t < 3; ++t) grads.push_back(random_values(rng, kF64));
  for (int t = 0; t < 2; ++t) {
    for (size_t i = 0; i < pa.size(); ++i) pa[i].set_grad(test::make_tensor(grads[t][i], kShapes[i], kF64));
    a->step();
  }
  std::vector<Values> after_two;
  for (const Tensor& p : pa) after_two.push_back(host_values(p));
  std::vector<Tensor> pb = make_params(after_two, kF64);
  std::unique_ptr<Optimizer> b = make(pb);
  b->load_state_dict(a->state_dict());
  EXPECT_EQ(b->step_count(), 2);
  for (size_t i = 0; i < pa.size(); ++i) {
    pa[i].set_grad(test::make_tensor(grads[2][i], kShapes[i], kF64));
    pb[i].set_grad(test::make_tensor(grads[2][i], kShapes[i], kF64));
  }
  a->step();
  b->step();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(test::tensors_identical(pb[i], pa[i]));
}

TEST(OptimizerState, RoundTripResumesExactly) {
  check_state_round_trip([](std::vector<Tensor> p) -> std::unique_ptr<Optimizer> {
    return std::make_unique<SGD>(std::move(p), SGDOptions{.lr = 0.1, .momentum = 0.9});
  });
  check_state_round_trip([](std::vector<Tensor> p) -> std::unique_ptr<Optimizer> {
    return std::make_unique<Adam>(std::move(p), AdamOptions{.lr = 0.01});
  });
  check_state_round_trip([](std::vector<Tensor> p) -> std::unique_ptr<Optimizer> {
    return std::make_unique<AdamW>(std::move(p), AdamWOptions{.lr = 0.01});
  });
}

TEST(OptimizerState, NamesAndLoadedCopiesAreIndependent) {
  Tensor p = from_vector<double>({1.0, 2.0}, {2}, kF64);
  p.requires_grad_(true);
  SGD sgd({p}, SGDOptions{.lr = 0.1, .momentum = 0.9});
  p.set_grad(from_vector<double>({1.0, -1.0}, {2}, kF64));
  sgd.step();
  const NamedTensors state = sgd.state_dict();
  ASSERT_EQ(state.size(), 3u);
  EXPECT_EQ(state[0].first, "step");
  EXPECT_EQ(state[1].first, "state.0.step");
  EXPECT_EQ(state[2].first, "state.0.momentum_buffer");
  EXPECT_EQ(state[0].second.dtype(), kI64);
  EXPECT_EQ(state[0].second.dim(), 0);
  EXPECT_TRUE(values_close(host_values(state[2].second), {1.0, -1.0}, kF64Tol));

  NamedTensors given = {{"step", from_vector<int64_t>({7}, {}, kI64)},
                        {"state.0.step", from_vector<int64_t>({7}, {}, kI64)},
                        {"state.0.momentum_buffer", from_vector<double>({0.5, 0.25}, {2}, kF64)}};
  sgd.load_state_dict(given);
  given[2].second.fill_(100.0);  // the optimizer holds a copy
  EXPECT_EQ(sgd.step_count(), 7);
  p.set_grad(from_vector<double>({0.0, 0.0}, {2}, kF64));
  sgd.step();  // buffer 0.9 * [0.5, 0.25]
  const double p0 = 1.0 - 0.1 * 1.0, p1 = 2.0 + 0.1 * 1.0;
  EXPECT_TRUE(values_close(host_values(p), {p0 - 0.1 * 0.45, p1 - 0.1 * 0.225}, kF64Tol));
}

TEST(OptimizerState, LoadRejectsMismatchesAndChangesNothing) {
  Tensor p = from_vector<double>({1.0, 2.0}, {2}, kF64);
  p.requires_grad_(true);
  Adam adam({p});
  p.set_grad(from_vector<double>({1.0, 1.0}, {2}, kF64));
  adam.step();
  const NamedTensors good = adam.state_dict();
  auto with = [&](const std::string& name, Tensor t) {
    NamedTensors out;
    for (const auto& [n, v] : good) out.emplace_back(n, n == name ? t : v.clone());
    if (name.rfind("+", 0) == 0) out.emplace_back(name.substr(1), t);
    return out;
  };
  auto without = [&](const std::string& name) {
    NamedTensors out;
    for (const auto& [n, v] : good)
      if (n != name) out.emplace_back(n, v);
    return out;
  };
  const Tensor vec2 = zeros({2}, kF64);
  EXPECT_TRUE(raises_error([&] { adam.load_state_dict(without("step")); }, {"Adam", "no 'step' entry"}));
  EXPECT_TRUE(
      raises_error([&] { adam.load_state_dict(without("state.0.exp_avg_sq")); }, {"'state.0.exp_avg_sq' is missing"}));
  EXPECT_TRUE(raises_error([&] { adam.load_state_dict(without("state.0.step")); }, {"'state.0.step' is missing"}));
  EXPECT_TRUE(raises_error([&] { adam.load_state_dict(with("+state.0.momentum_buffer", vec2)); },
                           {"unexpected entry 'state.0.momentum_buffer'", "'exp_avg'"}));
  EXPECT_TRUE(raises_error([&] { adam.load_state_dict(with("+state.3.exp_avg", vec2)); },
                           {"'state.3.exp_avg'", "parameter 3", "1 parameters"}));
  EXPECT_TRUE(raises_error([&] { adam.load_state_dict(with("+lr", vec2)); }, {"unexpected entry 'lr'"}));
  EXPECT_TRUE(raises_error([&] { adam.load_state_dict(with("state.0.exp_avg", zeros({3}, kF64))); },
                           {"'state.0.exp_avg'", "shape [3]", "[2]"}));
  EXPECT_TRUE(raises_error([&] { adam.load_state_dict(with("state.0.exp_avg", zeros({2}, kF32))); },
                           {"'state.0.exp_avg'", "f32", "f64"}));
  EXPECT_TRUE(raises_error([&] { adam.load_state_dict(with("step", zeros({}, kF64))); }, {"'step'", "integer"}));
  // Nothing changed: the next step matches an untouched twin.
  Tensor q = from_vector<double>({1.0, 2.0}, {2}, kF64);
  q.requires_grad_(true);
  Adam twin({q});
  q.set_grad(from_vector<double>({1.0, 1.0}, {2}, kF64));
  twin.step();
  twin.step();
  adam.step();
  EXPECT_EQ(adam.step_count(), 2);
  EXPECT_TRUE(test::tensors_identical(p, q));
}

// --- step_in_groups ------------------------------------------------------------------------------

const std::vector<Shape> kGroupShapes = {{2, 3}, {4}, {3, 2}, {5}};

/// Fresh f32 parameters from manual_seed(seed): the same values on every call with the same seed.
std::vector<Tensor> seeded_params(uint64_t seed) {
  manual_seed(seed);
  std::vector<Tensor> params;
  for (const Shape& shape : kGroupShapes) {
    Tensor p = randn(shape, TensorOptions(kF32));
    p.requires_grad_(true);
    params.push_back(p);
  }
  return params;
}

/// Bitwise equality of two tensors' values (compared as f32 vectors, and bit for bit).
void expect_bitwise_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  EXPECT_EQ(got.to_vector<float>(), want.to_vector<float>()) << what;
  EXPECT_TRUE(test::tensors_identical(got, want)) << what;
}

void expect_same_state(const Optimizer& got, const Optimizer& want) {
  const NamedTensors g = got.state_dict(), w = want.state_dict();
  ASSERT_EQ(g.size(), w.size());
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_EQ(g[i].first, w[i].first);
    if (is_integral(w[i].second.dtype())) {
      EXPECT_EQ(g[i].second.item(), w[i].second.item()) << g[i].first;
    } else {
      expect_bitwise_equal(g[i].second, w[i].second, g[i].first);
    }
  }
}

/// Runs `make`'s optimizer over two identical parameter sets for kSteps steps on identical random
/// gradients, one with step() and one with step_in_groups(groups_of(params)); parameter 3 has no
/// gradient in step 2. Returns the before_group calls of every step.
std::vector<std::vector<size_t>> check_grouped_matches_step(
    const std::function<std::unique_ptr<Optimizer>(std::vector<Tensor>)>& make,
    const std::function<std::vector<std::vector<Tensor>>(const std::vector<Tensor>&)>& groups_of) {
  std::vector<Tensor> plain = seeded_params(11), grouped = seeded_params(11);
  std::unique_ptr<Optimizer> plain_opt = make(plain), grouped_opt = make(grouped);
  const std::vector<std::vector<Tensor>> groups = groups_of(grouped);
  std::vector<std::vector<size_t>> calls;
  Generator gen(12);
  for (int t = 1; t <= kSteps; ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    for (size_t i = 0; i < plain.size(); ++i) {
      const Tensor g = i == 3 && t == 2 ? Tensor() : randn(kGroupShapes[i], TensorOptions(kF32), &gen);
      plain[i].set_grad(g.defined() ? g.clone() : Tensor());
      grouped[i].set_grad(g.defined() ? g.clone() : Tensor());
    }
    plain_opt->step();
    std::vector<size_t>& called = calls.emplace_back();
    grouped_opt->step_in_groups(groups, [&](size_t g) { called.push_back(g); });
    for (size_t i = 0; i < plain.size(); ++i)
      expect_bitwise_equal(grouped[i], plain[i], "parameter " + std::to_string(i));
  }
  EXPECT_EQ(grouped_opt->step_count(), kSteps);
  EXPECT_EQ(grouped_opt->step_count(), plain_opt->step_count());
  expect_same_state(*grouped_opt, *plain_opt);
  return calls;
}

TEST(OptimizerStepInGroups, AdamWMatchesStepBitForBit) {
  const auto calls = check_grouped_matches_step(
      [](std::vector<Tensor> p) -> std::unique_ptr<Optimizer> {
        return std::make_unique<AdamW>(std::move(p), AdamWOptions{.lr = 0.01, .weight_decay = 0.1});
      },
      [](const std::vector<Tensor>& p) {
        return std::vector<std::vector<Tensor>>{{p[2]}, {p[0]}};
      });
  // p1 and p3 are in no group: they form group 2, updated last.
  for (const std::vector<size_t>& called : calls) EXPECT_EQ(called, (std::vector<size_t>{0, 1, 2}));
}

TEST(OptimizerStepInGroups, SgdWithMomentumMatchesStepBitForBit) {
  const auto calls = check_grouped_matches_step(
      [](std::vector<Tensor> p) -> std::unique_ptr<Optimizer> {
        return std::make_unique<SGD>(std::move(p), SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01});
      },
      [](const std::vector<Tensor>& p) {
        return std::vector<std::vector<Tensor>>{{p[1]}, {p[3], p[0]}, {p[2]}};
      });
  // Every parameter is in a group: no call for a last group.
  for (const std::vector<size_t>& called : calls) EXPECT_EQ(called, (std::vector<size_t>{0, 1, 2}));
}

TEST(OptimizerStepInGroups, NoGroupsIsOneLastGroup) {
  const auto calls = check_grouped_matches_step(
      [](std::vector<Tensor> p) -> std::unique_ptr<Optimizer> {
        return std::make_unique<Adam>(std::move(p), AdamOptions{.lr = 0.01});
      },
      [](const std::vector<Tensor>&) { return std::vector<std::vector<Tensor>>{}; });
  for (const std::vector<size_t>& called : calls) EXPECT_EQ(called, (std::vector<size_t>{0}));
}

TEST(OptimizerStepInGroups, RejectsForeignAndRepeatedMembersAndChangesNothing) {
  std::vector<Tensor> params = seeded_params(21);
  AdamW adamw(params, AdamWOptions{.lr = 0.01});
  for (const Tensor& p : params) p.set_grad(ones(p.shape(), TensorOptions(kF32)));
  adamw.step();
  ASSERT_EQ(adamw.step_count(), 1);
  std::vector<std::vector<float>> before;
  for (const Tensor& p : params) before.push_back(p.to_vector<float>());
  const NamedTensors state_before = [&] {
    NamedTensors out;
    for (const auto& [name, t] : adamw.state_dict()) out.emplace_back(name, t.clone());
    return out;
  }();

  Tensor stranger = zeros({4}, kF32);  // same shape as params[1], but not one of them
  stranger.requires_grad_(true);
  bool called = false;
  const auto note = [&](size_t) { called = true; };
  EXPECT_TRUE(raises_error(
      [&] {
        adamw.step_in_groups({{params[0]}, {stranger}}, note);
      },
      {"AdamW", "step_in_groups", "group 1", "not one of its parameters"}));
  EXPECT_TRUE(raises_error([&] { adamw.step_in_groups({{params[1].detach()}}, note); }, {"not one of its parameters"}));
  EXPECT_TRUE(raises_error(
      [&] {
        adamw.step_in_groups({{params[2]}, {params[0], params[2]}}, note);
      },
      {"AdamW", "parameter 2", "groups 0 and 1"}));
  EXPECT_TRUE(raises_error(
      [&] {
        adamw.step_in_groups({{params[3], params[3]}}, note);
      },
      {"parameter 3", "groups 0 and 0"}));
  EXPECT_THROW(adamw.step_in_groups({{stranger}}, note), Error);

  EXPECT_FALSE(called) << "before_group ran for a rejected call";
  EXPECT_EQ(adamw.step_count(), 1);
  for (size_t i = 0; i < params.size(); ++i) EXPECT_EQ(params[i].to_vector<float>(), before[i]) << i;
  const NamedTensors state_after = adamw.state_dict();
  ASSERT_EQ(state_after.size(), state_before.size());
  for (size_t i = 0; i < state_after.size(); ++i)
    EXPECT_TRUE(test::tensors_identical(state_after[i].second, state_before[i].second)) << state_after[i].first;
}

// step_in_groups with gradient slots (Note [gradient slots], DDP's fuse_mean_into_step): AdamW
// writes each slotted member's mean into its .grad and applies it, as a plain step on that mean;
// members without slots, and members outside any group, read their .grad as usual.
TEST(OptimizerStepInGroups, AdamWTakesGradientSlotsAsTheirMean) {
  std::vector<Tensor> plain = seeded_params(31), slotted = seeded_params(31);
  AdamW plain_opt(plain, AdamWOptions{.lr = 0.01, .weight_decay = 0.1});
  AdamW slotted_opt(slotted, AdamWOptions{.lr = 0.01, .weight_decay = 0.1});
  EXPECT_TRUE(slotted_opt.takes_gradient_slots());
  Generator gen(32);
  const std::vector<std::vector<Tensor>> groups = {{slotted[2], slotted[0]}, {slotted[1]}};  // p3 in none
  for (int t = 1; t <= kSteps; ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    // Two ranks' values for p2 and p0, stored as [2, numel] bf16 rows of a wider buffer.
    std::vector<GradientSlots> slots;
    for (size_t i : {size_t{2}, size_t{0}}) {
      const int64_t n = plain[i].numel();
      const Tensor wide = randn({2, n + 3}, TensorOptions(kF32), &gen).to(kBF16);
      const Tensor rows = wide.narrow(1, 1, n);
      slots.push_back({rows, 0.5f});
      // The mean (Note [gradient slots]): f32 sum of the two bf16 values, halved, rounded to bf16.
      const Tensor mean = mul(add(rows.select(0, 0).to(kF32), rows.select(0, 1).to(kF32)), 0.5).to(kBF16).to(kF32);
      plain[i].set_grad(mean.view(plain[i].shape()));
      slotted[i].set_grad(full(plain[i].shape(), 7.0, TensorOptions(kF32)));  // overwritten with the mean
    }
    for (size_t i : {size_t{1}, size_t{3}}) {
      const Tensor g = randn(kGroupShapes[i], TensorOptions(kF32), &gen);
      plain[i].set_grad(g.clone());
      slotted[i].set_grad(g.clone());
    }
    plain_opt.step();
    slotted_opt.step_in_groups(groups, [](size_t) {}, [&](size_t g) {
      return g == 0 ? slots : std::vector<GradientSlots>{};
    });
    for (size_t i = 0; i < plain.size(); ++i) {
      expect_bitwise_equal(slotted[i], plain[i], "parameter " + std::to_string(i));
      expect_bitwise_equal(slotted[i].grad(), plain[i].grad(), "gradient " + std::to_string(i));
    }
  }
  expect_same_state(slotted_opt, plain_opt);
}

TEST(OptimizerStepInGroups, SlotsNeedAnOptimizerThatTakesThemAndOnePerMember) {
  std::vector<Tensor> params = seeded_params(33);
  for (const Tensor& p : params) p.set_grad(ones(p.shape(), TensorOptions(kF32)));
  const GradientSlots slots{zeros({2, params[1].numel()}, TensorOptions(kBF16)), 0.5f};
  SGD sgd(params, SGDOptions{.lr = 0.1});
  EXPECT_FALSE(sgd.takes_gradient_slots());
  const std::vector<float> before = params[1].to_vector<float>();
  EXPECT_TRUE(raises_error([&] { sgd.step_in_groups({{params[1]}}, [](size_t) {}, [&](size_t) {
    return std::vector<GradientSlots>{slots};
  }); }, {"SGD", "cannot take gradients as slots"}));
  EXPECT_EQ(params[1].to_vector<float>(), before);
  EXPECT_EQ(sgd.step_count(), 0) << "the refused step counted";
  AdamW adamw(params, AdamWOptions{.lr = 0.01});
  EXPECT_TRUE(raises_error([&] { adamw.step_in_groups({{params[1], params[0]}}, [](size_t) {}, [&](size_t) {
    return std::vector<GradientSlots>{slots};
  }); }, {"AdamW", "1 gradient slots for a group of 2 parameters"}));
  EXPECT_EQ(params[1].to_vector<float>(), before);
}

// A module converted (to()) after the optimizer's first step leaves the optimizer's state on the old
// dtype. The next step names that, and raises before anything changes: no step count advances and
// no parameter moves (SGD used to update the parameters before the failing one).
TEST(OptimizerStep, ModuleConvertedAfterTheFirstStepRaisesAndChangesNothing) {
  for (const bool sgd : {false, true}) {
    SCOPED_TRACE(sgd ? "SGD with momentum" : "AdamW");
    manual_seed(32);
    nn::Linear layer(3, 2);
    std::unique_ptr<Optimizer> opt;
    if (sgd) {
      opt = std::make_unique<SGD>(layer.parameters(), SGDOptions{.lr = 0.1, .momentum = 0.9});
    } else {
      opt = std::make_unique<AdamW>(layer.parameters(), AdamWOptions{.lr = 0.01});
    }
    sum(layer.forward(ones({4, 3}))).backward();
    opt->step();
    layer.to(kF64);
    sum(layer.forward(ones({4, 3}, TensorOptions(kF64)))).backward();
    std::vector<std::vector<double>> before;
    for (const Tensor& p : layer.parameters()) before.push_back(p.to_vector<double>());
    EXPECT_TRUE(raises_error([&] { opt->step(); },
                             {sgd ? "momentum_buffer" : "exp_avg", "moved or converted", "create the optimizer"}));
    EXPECT_EQ(opt->step_count(), 1);
    for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(layer.parameters()[i].to_vector<double>(), before[i]) << i;
  }
  nn::Linear layer(3, 2);
  EXPECT_TRUE(raises_error([&] { layer.to(kI64); }, {"Module::to", "not a floating dtype"}));
  EXPECT_EQ(layer.parameters()[0].dtype(), kF32);
}

// --- clip_grad_norm_ -----------------------------------------------------------------------------

TEST(ClipGradNorm, ScalesToMaxNormClosedForm) {
  for (DType dtype : {kF64, kF32}) {
    SCOPED_TRACE(std::string(dtype_name(dtype)));
    // Gradients [3, 4] and [[12]]: global norm 13.
    Tensor a = zeros({2}, dtype), b = zeros({1, 1}, dtype), none = zeros({3}, dtype);
    for (Tensor* t : {&a, &b, &none}) t->requires_grad_(true);
    a.set_grad(from_vector<double>({3.0, 4.0}, {2}, dtype));
    b.set_grad(from_vector<double>({12.0}, {1, 1}, dtype));
    const Tensor norm = clip_grad_norm_({a, none, b}, 6.5);
    EXPECT_EQ(norm.dim(), 0);
    EXPECT_EQ(norm.dtype(), dtype);
    const Tolerance tol = dtype == kF64 ? kF64Tol : kF32Tol;
    EXPECT_TRUE(values_close(host_values(norm), {13.0}, tol));
    const double scale = 6.5 / (13.0 + 1e-6);
    EXPECT_TRUE(values_close(host_values(a.grad()), {3.0 * scale, 4.0 * scale}, tol));
    EXPECT_TRUE(values_close(host_values(b.grad()), {12.0 * scale}, tol));
    EXPECT_FALSE(none.grad().defined());

    // Below the limit nothing changes (the scale is clamped to 1).
    const Tensor again = clip_grad_norm_({a, b}, 100.0);
    EXPECT_TRUE(values_close(host_values(again), {6.5 * 13.0 / (13.0 + 1e-6)}, tol));
    EXPECT_TRUE(values_close(host_values(a.grad()), {3.0 * scale, 4.0 * scale}, tol));
  }
}

TEST(ClipGradNorm, MixedDtypesAccumulateInF32) {
  Tensor a = zeros({2}, kF64), b = zeros({2}, kBF16);
  a.requires_grad_(true);
  b.requires_grad_(true);
  a.set_grad(from_vector<double>({1.0, 2.0}, {2}, kF64));
  b.set_grad(from_vector<double>({2.0, 4.0}, {2}, kBF16));
  const Tensor norm = clip_grad_norm_({a, b}, 1.0);  // sqrt(1 + 4 + 4 + 16) = 5
  EXPECT_EQ(norm.dtype(), kF32);
  EXPECT_TRUE(values_close(host_values(norm), {5.0}, kF32Tol));
  EXPECT_TRUE(values_close(host_values(a.grad()), {0.2, 0.4}, kF32Tol));
  EXPECT_TRUE(values_close(host_values(b.grad()), {0.4, 0.8}, test::tolerance_for(kBF16)));
}

TEST(ClipGradNorm, NoGradientsAndBadArguments) {
  Tensor a = zeros({2}, kF32);
  a.requires_grad_(true);
  const Tensor norm = clip_grad_norm_({a}, 1.0);
  EXPECT_EQ(norm.dim(), 0);
  EXPECT_EQ(norm.item(), 0.0);
  EXPECT_EQ(clip_grad_norm_({}, 1.0).item(), 0.0);
  EXPECT_TRUE(raises_error([&] { clip_grad_norm_({a}, 0.0); }, {"clip_grad_norm_", "max_norm"}));
  EXPECT_TRUE(raises_error([&] { clip_grad_norm_({a}, -1.0); }, {"max_norm"}));
}

// --- schedules -----------------------------------------------------------------------------------

TEST(Schedule, ConstantAndStep) {
  const LrSchedule constant = constant_schedule(0.3);
  for (int64_t s : {0, 1, 1000}) EXPECT_EQ(scheduled_lr(constant, s), 0.3);
  const LrSchedule step = step_schedule(1.0, 3, 0.5);
  const double expected[] = {1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125};
  for (int64_t s = 0; s < 10; ++s) EXPECT_DOUBLE_EQ(scheduled_lr(step, s), expected[s]) << "step " << s;
}

TEST(Schedule, WarmupCosineClosedForm) {
  const double lr = 1.0, min_lr = 0.1;
  const LrSchedule s = warmup_cosine_schedule(lr, 4, 14, min_lr);
  EXPECT_DOUBLE_EQ(scheduled_lr(s, 0), 0.25);
  EXPECT_DOUBLE_EQ(scheduled_lr(s, 1), 0.5);
  EXPECT_DOUBLE_EQ(scheduled_lr(s, 3), 1.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(s, 4), 1.0);                             // cosine phase starts at the peak
  EXPECT_NEAR(scheduled_lr(s, 9), min_lr + 0.5 * (lr - min_lr), 1e-15);  // half way: cos(pi/2) = 0
  for (int64_t step = 4; step < 14; ++step) {
    const double ratio = (step - 4) / 10.0;
    EXPECT_NEAR(scheduled_lr(s, step), min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(std::numbers::pi * ratio)), 1e-15);
  }
  EXPECT_DOUBLE_EQ(scheduled_lr(s, 14), min_lr);
  EXPECT_DOUBLE_EQ(scheduled_lr(s, 1000), min_lr);
  // No warmup: the first step gets the peak.
  EXPECT_DOUBLE_EQ(scheduled_lr(warmup_cosine_schedule(2.0, 0, 10), 0), 2.0);
  EXPECT_NEAR(scheduled_lr(warmup_cosine_schedule(2.0, 0, 10), 5), 1.0, 1e-15);
}

TEST(Schedule, RejectsBadConfigurations) {
  EXPECT_TRUE(raises_error([] { constant_schedule(-1.0); }, {"lr"}));
  EXPECT_TRUE(raises_error([] { step_schedule(1.0, 0, 0.5); }, {"step_size"}));
  EXPECT_TRUE(raises_error([] { step_schedule(1.0, 2, -0.5); }, {"gamma"}));
  EXPECT_TRUE(raises_error([] { warmup_cosine_schedule(1.0, 10, 5); }, {"warmup_steps", "total_steps"}));
  EXPECT_TRUE(raises_error([] { warmup_cosine_schedule(1.0, 1, 5, 2.0); }, {"min_lr"}));
  EXPECT_TRUE(raises_error([] { scheduled_lr(constant_schedule(1.0), -1); }, {"step"}));
}

TEST(Schedule, DrivesTheOptimizerLr) {
  Tensor p = from_vector<double>({0.0}, {1}, kF64);
  p.requires_grad_(true);
  SGD sgd({p}, SGDOptions{.lr = 0.0});
  const LrSchedule schedule = step_schedule(1.0, 1, 0.5);
  for (int64_t step = 0; step < 3; ++step) {
    sgd.set_lr(scheduled_lr(schedule, step));
    p.set_grad(from_vector<double>({1.0}, {1}, kF64));
    sgd.step();
  }
  EXPECT_TRUE(values_close(host_values(p), {-(1.0 + 0.5 + 0.25)}, kF64Tol));
}

}  // namespace
}  // namespace flame::optim
