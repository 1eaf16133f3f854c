// nn layers on the CPU: Linear, the activation modules, Flatten and Dropout against float64
// references computed here by explicit loops, finite-difference gradient checks in float64 for
// each (parameters included), the errors bad inputs raise, and an MLP that learns under plain SGD.
#include <fmt/format.h>

#include <cmath>
#include <functional>
#include <memory>
#include <numbers>

#include "core/autograd.h"
#include "nn/activation.h"
#include "nn/dropout.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "support/gradcheck.h"

namespace flame {
namespace {

using test::all_close;
using test::HostRng;
using test::raises_error;

/// Checks the gradients of sum(m(x) * r) with respect to x and to every parameter of `m` against
/// central finite differences (float64, CPU). `before_forward` runs before every evaluation (e.g.
/// to reseed the generator so Dropout draws the same mask each time).
::testing::AssertionResult module_gradcheck(
    nn::Module& m, const Tensor& x, HostRng& rng, const std::function<void()>& before_forward = [] {}) {
  using test::gradcheck_detail::element;
  using test::gradcheck_detail::projection;
  constexpr double kEps = 1e-6, kTol = 1e-6;
  Tensor input = x.clone().detach();
  input.requires_grad_();
  m.zero_grad();
  before_forward();
  const Tensor out = m(input);
  if (!out.requires_grad()) return ::testing::AssertionFailure() << m.type_name() << " output has no grad_fn";
  const std::vector<double> r = rng.uniform(out.numel(), -1.0, 1.0);
  out.backward(test::make_tensor(r, out.shape(), kF64));

  nn::NamedTensors targets{{"input", input}};
  for (auto& entry : m.named_parameters()) targets.push_back(entry);
  autograd::NoGradGuard no_grad;
  for (const auto& [name, t] : targets) {
    const Tensor grad = t.grad();
    if (!grad.defined()) return ::testing::AssertionFailure() << "no gradient reached " << name;
    if (grad.shape() != t.shape() || grad.dtype() != kF64)
      return ::testing::AssertionFailure() << "gradient of " << name << " is " << grad.describe();
    const std::vector<double> analytic = test::host_values(grad);
    for (int64_t flat = 0; flat < t.numel(); ++flat) {
      double& value = element(t, flat);
      const double original = value;
      value = original + kEps;
      before_forward();
      const double plus = projection(m(input), r);
      value = original - kEps;
      before_forward();
      const double minus = projection(m(input), r);
      value = original;
      const double numeric = (plus - minus) / (2 * kEps);
      if (!(std::abs(analytic[flat] - numeric) <= kTol + kTol * std::abs(numeric)))
        return ::testing::AssertionFailure() << m.type_name() << ": d/d" << name << " element " << flat << " is "
                                             << analytic[flat] << ", finite differences give " << numeric;
    }
  }
  return ::testing::AssertionSuccess();
}

/// x [rows, in] @ w[out, in]^T + b on host doubles.
std::vector<double> linear_reference(const std::vector<double>& x, const std::vector<double>& w,
                                     const std::vector<double>& b, int64_t rows, int64_t in, int64_t out) {
  std::vector<double> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = b.empty() ? 0.0 : b[o];
      for (int64_t i = 0; i < in; ++i) acc += x[r * in + i] * w[o * in + i];
      y[r * out + o] = acc;
    }
  return y;
}

// --- Linear ---------------------------------------------------------------------------------------

TEST(Linear, MatchesExplicitLoopsForAnyLeadingDims) {
  HostRng rng;
  manual_seed(test::test_seed());
  const std::vector<Shape> input_shapes{{5, 4}, {2, 3, 4}, {4}, {2, 1, 3, 4}, {0, 4}};
  for (DType dtype : {kF64, kF32}) {
    for (bool bias : {true, false}) {
      nn::Linear linear(4, 3, bias, dtype);
      const std::vector<double> w = test::host_values(linear.weight());
      const std::vector<double> b = bias ? test::host_values(linear.bias()) : std::vector<double>{};
      for (const Shape& shape : input_shapes) {
        for (test::Layout layout : {test::Layout::Contiguous, test::Layout::Transposed}) {
          SCOPED_TRACE(
              fmt::format("{} bias={} {} {}", dtype_name(dtype), bias, shape_str(shape), test::layout_name(layout)));
          const auto v = test::round_to_dtype(rng.uniform(test::numel_of(shape), -2, 2), dtype);
          const Tensor y = linear(test::make_tensor(v, shape, dtype, kCPU, layout));
          Shape expected_shape(shape.begin(), shape.end() - 1);
          expected_shape.push_back(3);
          EXPECT_EQ(y.dtype(), dtype);
          EXPECT_TRUE(all_close(y, expected_shape, linear_reference(v, w, b, test::numel_of(shape) / 4, 4, 3),
                                test::tolerance_for(dtype)));
        }
      }
    }
  }
}

TEST(Linear, ParametersFollowPyTorchDefaultInitAndSeed) {
  manual_seed(11);
  nn::Linear a(16, 8);
  manual_seed(11);
  nn::Linear b(16, 8);
  nn::Linear c(16, 8);  // later draws from the same stream
  EXPECT_TRUE(test::tensors_identical(a.weight(), b.weight()));
  EXPECT_TRUE(test::tensors_identical(a.bias(), b.bias()));
  EXPECT_FALSE(test::tensors_identical(a.weight(), c.weight()));
  EXPECT_EQ(a.weight().shape(), (Shape{8, 16}));
  EXPECT_EQ(a.bias().shape(), (Shape{8}));
  EXPECT_TRUE(a.weight().requires_grad() && a.weight().is_leaf() && a.bias().requires_grad());
  const double bound = 1.0 / std::sqrt(16.0);  // kaiming_uniform(a = sqrt(5)) and the bias rule agree
  for (const Tensor& p : {a.weight(), a.bias()}) {
    for (double value : test::host_values(p)) {
      EXPECT_GE(value, -bound);
      EXPECT_LT(value, bound);
    }
  }
  const auto names = a.named_parameters();
  ASSERT_EQ(names.size(), 2u);
  EXPECT_EQ(names[0].first, "weight");
  EXPECT_EQ(names[1].first, "bias");
  EXPECT_TRUE(names[0].second.is_same(a.weight()));
  nn::Linear no_bias(3, 2, false);
  EXPECT_FALSE(no_bias.bias().defined());
  ASSERT_EQ(no_bias.parameters().size(), 1u);
  EXPECT_EQ(no_bias.named_parameters()[0].first, "weight");
}

TEST(Linear, GradientsMatchFiniteDifferences) {
  HostRng rng;
  manual_seed(test::test_seed());
  for (bool bias : {true, false}) {
    for (const Shape& shape : std::vector<Shape>{{3, 4}, {2, 2, 4}, {4}}) {
      SCOPED_TRACE(fmt::format("bias={} input {}", bias, shape_str(shape)));
      nn::Linear linear(4, 3, bias, kF64);
      EXPECT_TRUE(module_gradcheck(linear, test::random_f64(rng, shape, -1, 1), rng));
    }
  }
}

TEST(Linear, BadInputsRaiseNamingTheLayerAndShapes) {
  nn::Linear linear(4, 3);
  EXPECT_TRUE(raises_error([&] { linear(zeros({5, 7})); }, {"Linear", "in_features=4", "[5, 7]", "last dim"}));
  EXPECT_TRUE(raises_error([&] { linear(zeros({})); }, {"Linear", "[]"}));
  EXPECT_TRUE(raises_error([&] { linear(zeros({2, 4}, kF64)); }, {"Linear", "f64", "f32", "[2, 4]"}));
  EXPECT_TRUE(raises_error([&] { linear(zeros({2, 4}, kI64)); }, {"Linear", "i64"}));
  EXPECT_TRUE(raises_error([&] { linear(Tensor()); }, {"Linear", "undefined"}));
  EXPECT_TRUE(raises_error([] { nn::Linear(0, 3); }, {"Linear", "in_features=0"}));
  EXPECT_TRUE(raises_error([] { nn::Linear(2, 3, true, kI32); }, {"Linear", "floating", "i32"}));
}

// --- activations ----------------------------------------------------------------------------------

struct ActivationCase {
  std::string name;
  std::function<std::shared_ptr<nn::Module>()> make;
  std::function<double(double)> reference;
};

void PrintTo(const ActivationCase& c, std::ostream* os) { *os << c.name; }

double gelu_exact(double x) { return 0.5 * x * (1.0 + std::erf(x / std::numbers::sqrt2)); }
double gelu_tanh(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
}
double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }

const std::vector<ActivationCase>& activation_cases() {
  static const std::vector<ActivationCase> cases{
      {"ReLU", [] { return std::make_shared<nn::ReLU>(); }, [](double x) { return x > 0 ? x : 0.0; }},
      {"GELU", [] { return std::make_shared<nn::GELU>(); }, gelu_exact},
      {"GELU_tanh", [] { return std::make_shared<nn::GELU>(GeluApproximation::Tanh); }, gelu_tanh},
      {"SiLU", [] { return std::make_shared<nn::SiLU>(); }, [](double x) { return x * sigmoid_ref(x); }},
      {"Tanh", [] { return std::make_shared<nn::Tanh>(); }, [](double x) { return std::tanh(x); }},
      {"Sigmoid", [] { return std::make_shared<nn::Sigmoid>(); }, sigmoid_ref},
  };
  return cases;
}

class ActivationTest : public ::testing::TestWithParam<ActivationCase> {};

TEST_P(ActivationTest, MatchesFloat64Reference) {
  const ActivationCase& c = GetParam();
  HostRng rng;
  const auto module = c.make();
  const Shape shape{3, 5, 2};
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    const auto v = test::round_to_dtype(rng.uniform(test::numel_of(shape), -4, 4), dtype);
    std::vector<double> expected;
    for (double x : v) expected.push_back(c.reference(x));
    const Tensor y = (*module)(test::make_tensor(v, shape, dtype, kCPU, test::Layout::Permuted));
    EXPECT_EQ(y.dtype(), dtype);
    EXPECT_TRUE(all_close(y, shape, expected, test::tolerance_for(dtype).scaled(2)));
  }
}

TEST_P(ActivationTest, GradientMatchesFiniteDifferences) {
  const ActivationCase& c = GetParam();
  HostRng rng;
  const auto module = c.make();
  // Away from 0, where ReLU has its kink.
  const Tensor x = test::make_tensor(test::signed_away_from_zero(rng, 12, 0.05, 3.0), {3, 4}, kF64);
  EXPECT_TRUE(module_gradcheck(*module, x, rng));
}

TEST_P(ActivationTest, RejectsUndefinedInput) {
  const auto module = GetParam().make();
  EXPECT_TRUE(raises_error([&] { (*module)(Tensor()); }, {module->type_name(), "undefined"}));
}

INSTANTIATE_TEST_SUITE_P(Activations, ActivationTest, ::testing::ValuesIn(activation_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(Activation, ReluGradientAtZeroIsZeroLikePyTorch) {
  Tensor x = from_vector<double>({-1.0, 0.0, 2.0}, {3}, kF64);
  x.requires_grad_();
  nn::ReLU relu;
  sum(relu(x)).backward();
  EXPECT_TRUE(all_close(x.grad(), {3}, {0.0, 0.0, 1.0}, test::tolerance_for(kF64)));
}

TEST(Activation, FloatingOnlyModulesNameThemselvesForIntegerInput) {
  const Tensor ints = zeros({2, 3}, kI64);
  EXPECT_TRUE(raises_error([&] { nn::GELU()(ints); }, {"GELU", "[2, 3]", "floating"}));
  EXPECT_TRUE(raises_error([&] { nn::SiLU()(ints); }, {"SiLU", "[2, 3]"}));
  EXPECT_TRUE(raises_error([&] { nn::Tanh()(ints); }, {"Tanh", "[2, 3]"}));
  EXPECT_TRUE(raises_error([&] { nn::Sigmoid()(ints); }, {"Sigmoid", "[2, 3]"}));
  EXPECT_EQ(nn::GELU(GeluApproximation::Tanh).approximation(), GeluApproximation::Tanh);
}

// --- Flatten --------------------------------------------------------------------------------------

TEST(Flatten, MergesTheRequestedDimsAndKeepsValues) {
  HostRng rng;
  const Shape shape{2, 3, 4, 5};
  const auto v = rng.uniform(test::numel_of(shape), -1, 1);
  const Tensor x = test::make_tensor(v, shape, kF64);
  struct Case {
    int64_t start, end;
    Shape expected;
  };
  for (const Case& c : std::vector<Case>{{1, -1, {2, 60}},
                                         {0, -1, {120}},
                                         {1, 2, {2, 12, 5}},
                                         {-3, -2, {2, 12, 5}},
                                         {2, 2, {2, 3, 4, 5}},
                                         {0, 0, {2, 3, 4, 5}}}) {
    SCOPED_TRACE(fmt::format("start {} end {}", c.start, c.end));
    EXPECT_TRUE(all_close(nn::Flatten(c.start, c.end)(x), c.expected, v, test::tolerance_for(kF64)));
  }
  // Non-contiguous input: values in logical order.
  const Tensor xt = test::make_tensor(v, shape, kF64, kCPU, test::Layout::Permuted);
  EXPECT_TRUE(all_close(nn::Flatten()(xt), {2, 60}, v, test::tolerance_for(kF64)));
  EXPECT_TRUE(all_close(nn::Flatten(0)(from_vector<double>({3.0}, {}, kF64)), {1}, {3.0}, {}));
}

TEST(Flatten, GradientMatchesFiniteDifferences) {
  HostRng rng;
  nn::Flatten flatten;
  EXPECT_TRUE(module_gradcheck(flatten, test::random_f64(rng, {2, 3, 2}, -1, 1), rng));
}

TEST(Flatten, DimsOutOfRangeRaiseNamingTheLayerAndShape) {
  EXPECT_TRUE(raises_error([] { nn::Flatten()(zeros({7})); }, {"Flatten", "start_dim=1", "[7]", "1 dims"}));
  EXPECT_TRUE(raises_error([] { nn::Flatten(0, 5)(zeros({2, 3})); }, {"Flatten", "end_dim=5", "[2, 3]"}));
  EXPECT_TRUE(raises_error([] { nn::Flatten(2, 1)(zeros({2, 3, 4})); }, {"Flatten", "[2, 3, 4]"}));
  EXPECT_TRUE(raises_error([] { nn::Flatten(-4)(zeros({2, 3, 4})); }, {"Flatten", "start_dim=-4"}));
}

// --- Dropout --------------------------------------------------------------------------------------

TEST(Dropout, TrainModeZeroesWithTheSeededMaskAndScalesTheRest) {
  HostRng rng;
  const double p = 0.3;
  const Shape shape{50, 40};
  const auto v = test::signed_away_from_zero(rng, test::numel_of(shape), 0.5, 2.0);
  for (DType dtype : {kF64, kF32}) {
    SCOPED_TRACE(dtype_name(dtype));
    const auto vd = test::round_to_dtype(v, dtype);
    const Tensor x = test::make_tensor(vd, shape, dtype);
    nn::Dropout dropout(p);
    const uint64_t seed = test::test_seed();
    manual_seed(seed);
    const Tensor y = dropout(x);
    manual_seed(seed);
    const std::vector<double> u = test::host_values(rand(shape, kF32));  // the mask's draw
    std::vector<double> expected(vd.size());
    int64_t dropped = 0;
    for (size_t i = 0; i < vd.size(); ++i) {
      const bool keep = u[i] < static_cast<double>(static_cast<float>(1.0 - p));
      expected[i] = keep ? vd[i] / (1.0 - p) : 0.0;
      dropped += keep ? 0 : 1;
    }
    EXPECT_TRUE(all_close(y, shape, expected, test::tolerance_for(dtype).scaled(2)));
    EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(vd.size()), p, 0.04);
    manual_seed(seed);
    EXPECT_TRUE(test::tensors_identical(dropout(x), y));   // same seed, same mask
    EXPECT_FALSE(test::tensors_identical(dropout(x), y));  // the generator moved on
  }
}

TEST(Dropout, EvalModeAndZeroPAreTheIdentity) {
  const Tensor x = ones({4, 4});
  nn::Dropout dropout(0.5);
  dropout.eval();
  EXPECT_TRUE(dropout(x).is_same(x));
  dropout.train();
  EXPECT_FALSE(dropout(x).is_same(x));
  nn::Dropout none(0.0);
  EXPECT_TRUE(none(x).is_same(x));
}

TEST(Dropout, GradientMatchesFiniteDifferencesForAFixedMask) {
  HostRng rng;
  nn::Dropout dropout(0.4);
  const uint64_t seed = test::test_seed();
  EXPECT_TRUE(module_gradcheck(dropout, test::random_f64(rng, {4, 5}, -1, 1), rng, [&] { manual_seed(seed); }));
}

TEST(Dropout, InvalidProbabilityOrInputRaises) {
  EXPECT_TRUE(raises_error([] { nn::Dropout(1.0); }, {"Dropout", "[0, 1)", "1"}));
  EXPECT_TRUE(raises_error([] { nn::Dropout(-0.1); }, {"Dropout", "-0.1"}));
  EXPECT_TRUE(raises_error([] { nn::Dropout(0.5)(zeros({2}, kI64)); }, {"Dropout", "floating"}));
}

// --- training -------------------------------------------------------------------------------------

TEST(Mlp, SgdOnSeparableBlobsLowersTheLoss) {
  // Three Gaussian blobs in 2-D (centres 3 apart, sd 0.5), 32 points each.
  HostRng rng;
  manual_seed(test::test_seed());
  const int64_t per_class = 32, classes = 3, n = per_class * classes;
  const double centres[3][2] = {{0.0, 3.0}, {2.6, -1.5}, {-2.6, -1.5}};
  std::normal_distribution<double> noise(0.0, 0.5);
  std::vector<double> points;
  std::vector<int64_t> labels;
  for (int64_t k = 0; k < classes; ++k)
    for (int64_t i = 0; i < per_class; ++i) {
      points.push_back(centres[k][0] + noise(rng.engine()));
      points.push_back(centres[k][1] + noise(rng.engine()));
      labels.push_back(k);
    }
  const Tensor x = from_vector(points, {n, 2});
  const Tensor y = from_vector(labels, {n}, kI64);

  nn::Sequential mlp(
      {std::make_shared<nn::Linear>(2, 16), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(16, classes)});
  const double lr = 0.2;
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 60; ++step) {
    const Tensor loss = nn::cross_entropy(mlp(x), y);
    last = loss.item();
    if (step == 0) first = last;
    mlp.zero_grad();
    loss.backward();
    autograd::NoGradGuard no_grad;
    for (Tensor p : mlp.parameters()) p.sub_(mul(p.grad(), lr));
  }
  SCOPED_TRACE(fmt::format("loss {} -> {}", first, last));
  EXPECT_LT(last, 0.5 * first);
  EXPECT_LT(last, 0.3);
  EXPECT_GT(nn::accuracy(mlp(x), y), 0.95);
}

}  // namespace
}  // namespace flame
