// Finite-difference gradient checks (float64, CPU) of every differentiable elementwise op of
// core/ops.h: unary ops, scalar variants, binary ops with broadcasting ([3, 1] x [1, 4], rank mix,
// 0-d), operators, add with alpha, and where. Inputs are fresh random values kept away from the
// ops' kinks (0 for abs/relu, clamp bounds, ties for maximum/minimum), in contiguous and
// non-contiguous layouts.
#include <fmt/format.h>

#include "support/gradcheck.h"

namespace flame {
namespace {

using test::gradcheck;
using test::HostRng;
using test::Layout;

/// Values for one input of a case.
using Values = std::function<std::vector<double>(HostRng&, int64_t)>;

Values uniform(double low, double high) {
  return [=](HostRng& rng, int64_t n) { return rng.uniform(n, low, high); };
}
/// |x| in [low, high), random sign.
Values away_from_zero(double low, double high) {
  return [=](HostRng& rng, int64_t n) { return test::signed_away_from_zero(rng, n, low, high); };
}
/// Values at least 0.25 away from each of `points` (inputs of clamp, maximum with a scalar, ...).
Values avoiding(std::vector<double> points, double low, double high) {
  return [=](HostRng& rng, int64_t n) {
    std::vector<double> v;
    while (static_cast<int64_t>(v.size()) < n) {
      const double x = rng.uniform(1, low, high)[0];
      bool near = false;
      for (double p : points) near = near || std::abs(x - p) < 0.25;
      if (!near) v.push_back(x);
    }
    return v;
  };
}

const std::vector<Shape> kUnaryShapes{{}, {7}, {3, 4}, {2, 3, 2}};

struct UnaryGradCase {
  std::string name;
  std::function<Tensor(const Tensor&)> op;
  Values values;
};

std::vector<UnaryGradCase> unary_grad_cases() {
  return {
      {"neg", [](const Tensor& x) { return neg(x); }, uniform(-3, 3)},
      {"operator_neg", [](const Tensor& x) { return -x; }, uniform(-3, 3)},
      {"exp", [](const Tensor& x) { return exp(x); }, uniform(-2, 2)},
      {"log", [](const Tensor& x) { return log(x); }, uniform(0.3, 3)},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, uniform(0.3, 3)},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, uniform(0.3, 3)},
      {"abs", [](const Tensor& x) { return abs(x); }, away_from_zero(0.1, 3)},
      {"relu", [](const Tensor& x) { return relu(x); }, away_from_zero(0.1, 3)},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, uniform(-4, 4)},
      {"tanh", [](const Tensor& x) { return tanh(x); }, uniform(-2.5, 2.5)},
      {"gelu", [](const Tensor& x) { return gelu(x); }, uniform(-3, 3)},
      {"gelu_tanh", [](const Tensor& x) { return gelu(x, GeluApproximation::Tanh); }, uniform(-3, 3)},
      {"silu", [](const Tensor& x) { return silu(x); }, uniform(-4, 4)},
      {"pow_2", [](const Tensor& x) { return pow(x, 2.0); }, uniform(-2, 2)},
      {"pow_3", [](const Tensor& x) { return pow(x, 3.0); }, uniform(-2, 2)},
      {"pow_0.5", [](const Tensor& x) { return pow(x, 0.5); }, uniform(0.3, 3)},
      {"pow_-1.5", [](const Tensor& x) { return pow(x, -1.5); }, uniform(0.5, 3)},
      {"pow_1.7", [](const Tensor& x) { return pow(x, 1.7); }, uniform(0.3, 3)},
      {"pow_0", [](const Tensor& x) { return pow(x, 0.0); }, uniform(0.3, 3)},
      {"clamp", [](const Tensor& x) { return clamp(x, -1.0, 0.5); }, avoiding({-1.0, 0.5}, -2.5, 2.5)},
      {"clamp_min", [](const Tensor& x) { return clamp_min(x, -0.5); }, avoiding({-0.5}, -2.5, 2.5)},
      {"clamp_max", [](const Tensor& x) { return clamp_max(x, 0.7); }, avoiding({0.7}, -2.5, 2.5)},
      {"add_scalar", [](const Tensor& x) { return add(x, 1.5); }, uniform(-3, 3)},
      {"sub_scalar", [](const Tensor& x) { return sub(x, -0.75); }, uniform(-3, 3)},
      {"mul_scalar", [](const Tensor& x) { return mul(x, -2.5); }, uniform(-3, 3)},
      {"div_scalar", [](const Tensor& x) { return div(x, 0.4); }, uniform(-3, 3)},
      {"maximum_scalar", [](const Tensor& x) { return maximum(x, 0.3); }, avoiding({0.3}, -2, 2)},
      {"minimum_scalar", [](const Tensor& x) { return minimum(x, -0.2); }, avoiding({-0.2}, -2, 2)},
      {"operator_add_scalar", [](const Tensor& x) { return x + 2.0; }, uniform(-3, 3)},
      {"operator_sub_scalar", [](const Tensor& x) { return x - 2.0; }, uniform(-3, 3)},
      {"operator_mul_scalar", [](const Tensor& x) { return x * 3.0; }, uniform(-3, 3)},
      {"operator_div_scalar", [](const Tensor& x) { return x / 3.0; }, uniform(-3, 3)},
      {"operator_scalar_mul", [](const Tensor& x) { return 0.5 * x; }, uniform(-3, 3)},
      // A composite: every unary op in one graph (chain rule through several nodes).
      {"chain", [](const Tensor& x) { return tanh(mul(exp(neg(x)), sigmoid(x))) + silu(x) * 0.5; }, uniform(-2, 2)},
  };
}

TEST(GradcheckElementwise, UnaryOps) {
  HostRng rng;
  for (const UnaryGradCase& c : unary_grad_cases()) {
    for (const Shape& shape : kUnaryShapes) {
      // Transposed needs 2 dims; Strided covers 0-d and 1-d.
      for (Layout layout : {Layout::Contiguous, shape.size() >= 2 ? Layout::Transposed : Layout::Strided}) {
        SCOPED_TRACE(fmt::format("{} {} {}", c.name, shape_str(shape), test::layout_name(layout)));
        test::guarded([&] {
          const Tensor x = test::make_tensor(c.values(rng, test::numel_of(shape)), shape, kF64, kCPU, layout);
          EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return c.op(in[0]); }, {x}, rng));
        });
      }
    }
  }
}

// --- binary ops ---------------------------------------------------------------------------------

struct BinaryGradCase {
  std::string name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  Values a_values, b_values;
};

/// maximum/minimum inputs: a on k + [0.2, 0.3), b on k + [0.6, 0.7) for integers k in [-2, 2]: the
/// two never come closer than 0.3, and either may be the larger (no ties after broadcasting).
Values offset_integers(double offset) {
  return [=](HostRng& rng, int64_t n) {
    std::vector<double> v = rng.integers(n, -2, 2);
    const std::vector<double> jitter = rng.uniform(n, 0.0, 0.1);
    for (size_t i = 0; i < v.size(); ++i) v[i] += offset + jitter[i];
    return v;
  };
}

std::vector<BinaryGradCase> binary_grad_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, uniform(-3, 3), uniform(-3, 3)},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }, uniform(-3, 3), uniform(-3, 3)},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, uniform(-3, 3), uniform(-3, 3)},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, uniform(-3, 3), away_from_zero(0.5, 2)},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); }, uniform(0.5, 2), uniform(-2, 2)},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }, offset_integers(0.2),
       offset_integers(0.6)},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }, offset_integers(0.2),
       offset_integers(0.6)},
      {"add_alpha", [](const Tensor& a, const Tensor& b) { return add(a, b, -0.7); }, uniform(-3, 3), uniform(-3, 3)},
      {"operator_add", [](const Tensor& a, const Tensor& b) { return a + b; }, uniform(-3, 3), uniform(-3, 3)},
      {"operator_sub", [](const Tensor& a, const Tensor& b) { return a - b; }, uniform(-3, 3), uniform(-3, 3)},
      {"operator_mul", [](const Tensor& a, const Tensor& b) { return a * b; }, uniform(-3, 3), uniform(-3, 3)},
      {"operator_div", [](const Tensor& a, const Tensor& b) { return a / b; }, uniform(-3, 3), away_from_zero(0.5, 2)},
  };
}

/// Operand shapes: equal, the [3, 1] x [1, 4] outer broadcast, trailing, rank mix, 0-d on either side.
const std::vector<std::pair<Shape, Shape>> kBinaryShapes{
    {{3, 4}, {3, 4}},    {{3, 1}, {1, 4}}, {{2, 3, 4}, {4}}, {{4}, {2, 3, 4}},
    {{2, 1, 4}, {3, 1}}, {{}, {3, 2}},     {{3, 2}, {}},     {{}, {}},
};

TEST(GradcheckElementwise, BinaryOpsWithBroadcasting) {
  HostRng rng;
  for (const BinaryGradCase& c : binary_grad_cases()) {
    for (const auto& [shape_a, shape_b] : kBinaryShapes) {
      SCOPED_TRACE(fmt::format("{} {} x {}", c.name, shape_str(shape_a), shape_str(shape_b)));
      test::guarded([&] {
        const Tensor a = test::make_tensor(c.a_values(rng, test::numel_of(shape_a)), shape_a, kF64);
        const Tensor b = test::make_tensor(c.b_values(rng, test::numel_of(shape_b)), shape_b, kF64);
        EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return c.op(in[0], in[1]); }, {a, b}, rng));
      });
    }
  }
}

TEST(GradcheckElementwise, BinaryOpsOnNonContiguousOperands) {
  HostRng rng;
  const Shape shape{3, 4};
  for (const BinaryGradCase& c : binary_grad_cases()) {
    for (const auto& [layout_a, layout_b] :
         {std::pair{Layout::Transposed, Layout::Contiguous}, std::pair{Layout::Strided, Layout::Transposed},
          std::pair{Layout::Offset, Layout::Permuted}}) {
      SCOPED_TRACE(fmt::format("{} {} with {}", c.name, test::layout_name(layout_a), test::layout_name(layout_b)));
      test::guarded([&] {
        const Tensor a = test::make_tensor(c.a_values(rng, 12), shape, kF64, kCPU, layout_a);
        const Tensor b = test::make_tensor(c.b_values(rng, 12), shape, kF64, kCPU, layout_b);
        EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return c.op(in[0], in[1]); }, {a, b}, rng));
      });
    }
    // A transposed [4, 3] -> [3, 4] operand broadcast against a [3, 1] one.
    SCOPED_TRACE(fmt::format("{} transposed x [3, 1]", c.name));
    test::guarded([&] {
      const Tensor a = test::make_tensor(c.a_values(rng, 12), shape, kF64, kCPU, Layout::Transposed);
      const Tensor b = test::make_tensor(c.b_values(rng, 3), {3, 1}, kF64);
      EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return c.op(in[0], in[1]); }, {a, b}, rng));
    });
  }
}

TEST(GradcheckElementwise, BinaryOpWithOneOperandNotRequiringGrad) {
  // b is a captured constant (not an input of the check): only a is differentiated.
  HostRng rng;
  const Tensor b = test::make_tensor(test::signed_away_from_zero(rng, 4, 0.5, 2), {1, 4}, kF64);
  for (const BinaryGradCase& c : binary_grad_cases()) {
    if (c.name == "maximum" || c.name == "minimum" || c.name == "pow") continue;
    SCOPED_TRACE(c.name);
    test::guarded([&] {
      const Tensor a = test::make_tensor(c.a_values(rng, 12), {3, 4}, kF64);
      EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return c.op(in[0], b); }, {a}, rng));
      EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return c.op(b, in[0]); }, {a}, rng));
      EXPECT_FALSE(b.grad().defined()) << "a constant operand gets no gradient";
    });
  }
}

TEST(GradcheckElementwise, SameTensorAsBothOperands) {
  HostRng rng;
  for (const BinaryGradCase& c : binary_grad_cases()) {
    if (c.name == "maximum" || c.name == "minimum") continue;  // a tie everywhere
    SCOPED_TRACE(c.name);
    test::guarded([&] {
      const Tensor x = test::make_tensor(test::signed_away_from_zero(rng, 6, 0.5, 2), {2, 3}, kF64);
      const Tensor positive = abs(x);  // pow needs a positive base
      const Tensor input = c.name == "pow" ? positive : x;
      EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return c.op(in[0], in[0]); }, {input}, rng));
    });
  }
}

TEST(GradcheckElementwise, Where) {
  HostRng rng;
  struct WhereShapes {
    Shape cond, a, b;
  };
  const std::vector<WhereShapes> cases{
      {{3, 4}, {3, 4}, {3, 4}},
      {{3, 4}, {3, 1}, {1, 4}},
      {{4}, {3, 4}, {}},
      {{3, 1}, {1, 4}, {3, 4}},
  };
  for (const WhereShapes& s : cases) {
    SCOPED_TRACE(fmt::format("cond {} a {} b {}", shape_str(s.cond), shape_str(s.a), shape_str(s.b)));
    test::guarded([&] {
      const Tensor cond = test::make_tensor(rng.integers(test::numel_of(s.cond), 0, 1), s.cond, kBool);
      const Tensor a = test::random_f64(rng, s.a, -2, 2);
      const Tensor b = test::random_f64(rng, s.b, -2, 2);
      EXPECT_TRUE(
          gradcheck([](const std::vector<Tensor>& in) { return where(in[0], in[1], in[2]); }, {cond, a, b}, rng));
    });
  }
  SCOPED_TRACE("where with a transposed operand, cond from a comparison of a tracked tensor");
  test::guarded([&] {
    const Tensor a = test::random_f64(rng, {3, 4}, -2, 2, Layout::Transposed);
    const Tensor b = test::random_f64(rng, {3, 4}, -2, 2);
    EXPECT_TRUE(
        gradcheck([](const std::vector<Tensor>& in) { return where(gt(in[1], 0.0), mul(in[0], in[1]), exp(in[0])); },
                  {a, b}, rng));
  });
}

TEST(GradcheckElementwise, ComparisonsRecordNoGraph) {
  HostRng rng;
  Tensor x = test::random_f64(rng, {5}, -1, 1);
  x.requires_grad_();
  const Tensor y = test::random_f64(rng, {5}, -1, 1);
  for (const Tensor& out : {eq(x, y), ne(x, y), lt(x, y), le(x, y), gt(x, y), ge(x, y), gt(x, 0.0), le(x, 0.5)}) {
    EXPECT_EQ(out.dtype(), kBool);
    EXPECT_FALSE(out.requires_grad());
    EXPECT_EQ(out.grad_fn(), nullptr);
  }
}

// --- kinks and ties: the documented conventions (Note [elementwise gradients at kinks and ties]) ---

/// d sum(fn(inputs)) / d inputs, for float64 inputs built from `values`.
std::vector<std::vector<double>> grads_of(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                                          const std::vector<std::vector<double>>& values) {
  std::vector<Tensor> leaves;
  for (const auto& v : values) {
    Tensor t = test::make_tensor(v, {static_cast<int64_t>(v.size())}, kF64);
    t.requires_grad_();
    leaves.push_back(t);
  }
  sum(fn(leaves)).backward();
  std::vector<std::vector<double>> out;
  for (const Tensor& t : leaves)
    out.push_back(t.grad().defined() ? test::host_values(t.grad()) : std::vector<double>{});
  return out;
}

TEST(GradcheckElementwise, GradientsAtKinksAndTiesFollowPyTorch) {
  using G = std::vector<std::vector<double>>;
  const auto one = [](auto op) { return [op](const std::vector<Tensor>& in) { return op(in[0]); }; };
  const auto two = [](auto op) { return [op](const std::vector<Tensor>& in) { return op(in[0], in[1]); }; };
  struct Case {
    std::string name;
    std::function<Tensor(const std::vector<Tensor>&)> fn;
    G inputs, expected;
  };
  const std::vector<Case> cases{
      {"relu'(0) = 0", one([](const Tensor& x) { return relu(x); }), {{-1, 0, 2}}, {{0, 0, 1}}},
      {"abs'(0) = 0", one([](const Tensor& x) { return abs(x); }), {{-2, 0, 3}}, {{-1, 0, 1}}},
      {"clamp passes g at both bounds",
       one([](const Tensor& x) { return clamp(x, -1.0, 1.0); }),
       {{-2, -1, 0, 1, 2}},
       {{0, 1, 1, 1, 0}}},
      {"clamp_min passes g at the bound",
       one([](const Tensor& x) { return clamp_min(x, 0.5); }),
       {{0.5, 0, 1}},
       {{1, 0, 1}}},
      {"clamp_max passes g at the bound",
       one([](const Tensor& x) { return clamp_max(x, 0.5); }),
       {{0.5, 0, 1}},
       {{1, 1, 0}}},
      {"maximum splits ties",
       two([](const Tensor& a, const Tensor& b) { return maximum(a, b); }),
       {{1, 2, 3}, {1, 0, 4}},
       {{0.5, 1, 0}, {0.5, 0, 1}}},
      {"minimum splits ties",
       two([](const Tensor& a, const Tensor& b) { return minimum(a, b); }),
       {{1, 2, 3}, {1, 0, 4}},
       {{0.5, 0, 1}, {0.5, 1, 0}}},
      {"maximum with a scalar splits ties",
       one([](const Tensor& x) { return maximum(x, 1.0); }),
       {{1, 0, 2}},
       {{0.5, 0, 1}}},
      {"minimum with a scalar splits ties",
       one([](const Tensor& x) { return minimum(x, 1.0); }),
       {{1, 0, 2}},
       {{0.5, 1, 0}}},
      {"pow(x, 0)' = 0 even at 0", one([](const Tensor& x) { return pow(x, 0.0); }), {{0, 2}}, {{0, 0}}},
      {"pow(a, b): 0 for a where b == 0, 0 for b where a == 0 and b >= 0",
       two([](const Tensor& a, const Tensor& b) { return pow(a, b); }),
       {{0, 2, 0}, {2, 0, 0}},
       {{0, 0, 0}, {0, std::log(2.0), 0}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    test::guarded([&] {
      const G got = grads_of(c.fn, c.inputs);
      ASSERT_EQ(got.size(), c.expected.size());
      for (size_t i = 0; i < got.size(); ++i)
        EXPECT_TRUE(test::values_close(got[i], c.expected[i], test::tolerance_for(kF64))) << "input " << i;
    });
  }
}

// --- the checker itself ------------------------------------------------------------------------------

TEST(GradcheckHelper, CatchesAWrongBackwardAndAMissingGraph) {
  HostRng rng;
  const Tensor x = test::random_f64(rng, {2, 3}, -1, 1);
  // exp with a backward off by a factor of 2 (recorded by hand, as an op would).
  const auto wrong_exp = [](const std::vector<Tensor>& in) {
    Tensor out;
    {
      autograd::NoGradGuard guard;
      out = exp(in[0]);
    }
    if (autograd::needs_grad({&in[0]}))
      autograd::record(out, "WrongExpBackward", {in[0]}, [saved = autograd::SavedTensor(out)](const Tensor& g) {
        return std::vector<Tensor>{mul(mul(g, saved.get()), 2.0)};
      });
    return out;
  };
  const ::testing::AssertionResult wrong = gradcheck(wrong_exp, {x}, rng);
  EXPECT_FALSE(wrong);
  EXPECT_NE(std::string(wrong.message()).find("finite differences"), std::string::npos) << wrong.message();
  // A result cut from the graph.
  const ::testing::AssertionResult cut =
      gradcheck([](const std::vector<Tensor>& in) { return exp(in[0]).detach(); }, {x}, rng);
  EXPECT_FALSE(cut);
  EXPECT_NE(std::string(cut.message()).find("does not require grad"), std::string::npos) << cut.message();
  // The caller's tensor is left untouched: no grad, no requires_grad, same values.
  EXPECT_FALSE(x.requires_grad());
  EXPECT_FALSE(x.grad().defined());
  const auto before = test::host_values(x);
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return exp(in[0]); }, {x}, rng));
  EXPECT_EQ(test::host_values(x), before);
}

}  // namespace
}  // namespace flame
