// Losses and metrics on the CPU: cross_entropy (ignore_index, label smoothing, every reduction) and
// mse_loss against float64 references computed here, their finite-difference gradients in float64,
// numerical stability, the errors bad inputs raise, and accuracy.
#include "nn/loss.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "support/gradcheck.h"

namespace flame {
namespace {

using nn::CrossEntropyOptions;
using nn::Reduction;
using test::all_close;
using test::HostRng;
using test::raises_error;

const char* reduction_name(Reduction r) {
  switch (r) {
    case Reduction::Mean:
      return "mean";
    case Reduction::Sum:
      return "sum";
    case Reduction::None:
      return "none";
  }
  return "?";
}

/// Per-row losses (0 for ignored rows) and the count of rows that are not ignored.
struct CrossEntropyReference {
  std::vector<double> rows;
  int64_t counted = 0;

  std::vector<double> reduced(Reduction r) const {
    if (r == Reduction::None) return rows;
    double total = 0.0;
    for (double v : rows) total += v;
    return {r == Reduction::Sum ? total : total / static_cast<double>(counted)};
  }
};

CrossEntropyReference cross_entropy_reference(const std::vector<double>& logits, int64_t n, int64_t c,
                                              const std::vector<int64_t>& target, const CrossEntropyOptions& o) {
  CrossEntropyReference ref;
  for (int64_t i = 0; i < n; ++i) {
    if (target[i] == o.ignore_index) {
      ref.rows.push_back(0.0);
      continue;
    }
    const double* row = &logits[static_cast<size_t>(i * c)];
    const double m = *std::max_element(row, row + c);
    double s = 0.0;
    for (int64_t j = 0; j < c; ++j) s += std::exp(row[j] - m);
    const double log_sum = m + std::log(s);
    double mean_neg_logp = 0.0;
    for (int64_t j = 0; j < c; ++j) mean_neg_logp += (log_sum - row[j]) / static_cast<double>(c);
    const double nll = log_sum - row[target[i]];
    ref.rows.push_back((1.0 - o.label_smoothing) * nll + o.label_smoothing * mean_neg_logp);
    ++ref.counted;
  }
  return ref;
}

/// Options covering the defaults, ignored targets (default and custom ignore_index) and smoothing.
std::vector<std::pair<std::string, CrossEntropyOptions>> option_cases() {
  std::vector<std::pair<std::string, CrossEntropyOptions>> cases;
  for (Reduction r : {Reduction::Mean, Reduction::Sum, Reduction::None}) {
    for (double eps : {0.0, 0.1, 0.3}) {
      for (int64_t ignore : {-100, 2}) {
        cases.emplace_back(fmt::format("{} eps={} ignore={}", reduction_name(r), eps, ignore),
                           CrossEntropyOptions{ignore, eps, r});
      }
    }
  }
  return cases;
}

/// Targets in [0, c), with -100 and 2 (the two ignore_index values used) both present.
std::vector<int64_t> targets_with_ignored(HostRng& rng, int64_t n, int64_t c) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(rng.integer(0, c - 1));
  t[1] = -100;
  t[3] = 2;
  return t;
}

// --- cross_entropy --------------------------------------------------------------------------------

TEST(CrossEntropy, MatchesFloat64Reference) {
  HostRng rng;
  const int64_t n = 7, c = 5;
  for (DType dtype : {kF64, kF32}) {
    for (const auto& [name, options] : option_cases()) {
      SCOPED_TRACE(fmt::format("{} {}", dtype_name(dtype), name));
      test::guarded([&, &options = options] {
        std::vector<int64_t> target = targets_with_ignored(rng, n, c);
        if (options.ignore_index != -100) target[1] = 0;  // -100 is a real error unless ignored
        const auto v = test::round_to_dtype(rng.uniform(n * c, -4, 4), dtype);
        const Tensor logits = test::make_tensor(v, {n, c}, dtype, kCPU, test::Layout::Transposed);
        const Tensor loss = nn::cross_entropy(logits, from_vector(target, {n}, kI64), options);
        EXPECT_EQ(loss.dtype(), dtype);
        const Shape shape = options.reduction == Reduction::None ? Shape{n} : Shape{};
        EXPECT_TRUE(all_close(loss, shape, cross_entropy_reference(v, n, c, target, options).reduced(options.reduction),
                              test::tolerance_for(dtype).scaled(10)));
      });
    }
  }
}

TEST(CrossEntropy, LargeLogitsStayFinite) {
  const std::vector<double> v{1000.0, -1000.0, 999.0, -5000.0, 3000.0, 2990.0};
  const std::vector<int64_t> target{2, 1};
  const CrossEntropyOptions options{-100, 0.1, Reduction::None};
  const Tensor loss = nn::cross_entropy(from_vector(v, {2, 3}, kF64), from_vector(target, {2}, kI64), options);
  EXPECT_TRUE(all_close(loss, {2}, cross_entropy_reference(v, 2, 3, target, options).rows, test::tolerance_for(kF64)));
  for (double x : test::host_values(loss)) EXPECT_TRUE(std::isfinite(x));
}

// Half-precision logits: the mean's sum and count accumulate in f32, so 70000 rows (more than f16's
// largest finite value, 65504) give the right loss and gradients, not inf/NaN and zero gradients.
TEST(CrossEntropy, HalfPrecisionMeanOverManyRowsStaysFinite) {
  constexpr int64_t kRows = 70000;
  for (DType dtype : {DType::F16, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    std::vector<double> v(2 * kRows);
    for (int64_t i = 0; i < kRows; ++i) v[static_cast<size_t>(2 * i + 1)] = 10.0;  // rows [0, 10]
    Tensor logits = from_vector(v, {kRows, 2}, dtype);
    logits.requires_grad_(true);
    const Tensor loss = nn::cross_entropy(logits, zeros({kRows}, kI64));  // every target is class 0
    const double expected = std::log1p(std::exp(10.0));                   // 10.0000454
    EXPECT_NEAR(loss.item(), expected, 0.02 * expected);
    // The sum itself, 700003, fits bf16 but not f16 (inf there, as in PyTorch).
    if (dtype == DType::BF16) {
      EXPECT_NEAR(nn::cross_entropy(logits, zeros({kRows}, kI64), {-100, 0.0, Reduction::Sum}).to(kF64).item(),
                  expected * kRows, 0.02 * expected * kRows);
    }
    loss.backward();
    // d loss / d logit[i][0] = (softmax_0 - 1) / N
    const double grad = (1.0 / (1.0 + std::exp(10.0)) - 1.0) / kRows;
    const double first = logits.grad().to(kF64).to_vector<double>()[0];
    EXPECT_NEAR(first, grad, 0.02 * std::abs(grad));
  }
}

TEST(CrossEntropy, AllTargetsIgnoredGivesNanMeanLikePyTorch) {
  const Tensor logits = rand({3, 4}, kF64);
  const Tensor target = full({3}, -100, kI64);
  EXPECT_TRUE(std::isnan(nn::cross_entropy(logits, target).item()));
  EXPECT_EQ(nn::cross_entropy(logits, target, {-100, 0.0, Reduction::Sum}).item(), 0.0);
  EXPECT_TRUE(all_close(nn::cross_entropy(logits, target, {-100, 0.2, Reduction::None}), {3}, {0, 0, 0}, {}));
  // An empty batch averages nothing, too.
  EXPECT_TRUE(std::isnan(nn::cross_entropy(zeros({0, 4}), zeros({0}, kI64)).item()));
}

TEST(CrossEntropy, GradientsMatchFiniteDifferences) {
  HostRng rng;
  const int64_t n = 6, c = 4;
  for (const auto& [name, options] : option_cases()) {
    SCOPED_TRACE(name);
    std::vector<int64_t> target = targets_with_ignored(rng, n, c);
    if (options.ignore_index != -100) target[1] = 0;
    const Tensor t = from_vector(target, {n}, kI64);
    const CrossEntropyOptions o = options;
    EXPECT_TRUE(test::gradcheck([o](const std::vector<Tensor>& in) { return nn::cross_entropy(in[0], in[1], o); },
                                {test::random_f64(rng, {n, c}, -3, 3), t}, rng));
  }
}

TEST(CrossEntropy, IgnoredRowsGetNoGradient) {
  Tensor logits = rand({3, 4}, kF64);
  logits.requires_grad_();
  nn::cross_entropy(logits, from_vector<int64_t>({1, -100, 3}, {3}, kI64), {-100, 0.2}).backward();
  const std::vector<double> g = test::host_values(logits.grad());
  for (int j = 0; j < 4; ++j) EXPECT_EQ(g[4 + j], 0.0);
  double row0 = 0.0;
  for (int j = 0; j < 4; ++j) row0 += g[j];
  EXPECT_NEAR(row0, 0.0, 1e-12);  // softmax minus a (smoothed) distribution sums to 0
}

TEST(CrossEntropy, BadInputsRaiseNamingTheShapes) {
  const Tensor logits = zeros({4, 3});
  const Tensor target = zeros({4}, kI64);
  EXPECT_TRUE(raises_error([&] { nn::cross_entropy(zeros({3}), target); }, {"cross_entropy", "[3]", "2-D"}));
  EXPECT_TRUE(raises_error([&] { nn::cross_entropy(zeros({4, 3, 2}), target); }, {"cross_entropy", "[4, 3, 2]"}));
  EXPECT_TRUE(raises_error([&] { nn::cross_entropy(logits, zeros({4}, kI32)); }, {"cross_entropy", "i32", "i64"}));
  EXPECT_TRUE(raises_error([&] { nn::cross_entropy(logits, zeros({4}, kF32)); }, {"cross_entropy", "i64"}));
  EXPECT_TRUE(raises_error([&] { nn::cross_entropy(logits, zeros({5}, kI64)); }, {"cross_entropy", "[5]", "[4, 3]"}));
  EXPECT_TRUE(raises_error(
      [&] {
        nn::cross_entropy(logits, zeros({4, 1}, kI64));
      },
      {"cross_entropy", "[4, 1]", "[4, 3]"}));
  EXPECT_TRUE(raises_error([&] { nn::cross_entropy(zeros({4, 3}, kI64), target); }, {"cross_entropy", "floating"}));
  EXPECT_TRUE(raises_error([&] { nn::cross_entropy(logits, target, {-100, 1.5}); }, {"label_smoothing", "1.5"}));
  EXPECT_TRUE(raises_error([&] { nn::cross_entropy(zeros({4, 0}), target); }, {"cross_entropy", "[4, 0]"}));
}

TEST(CrossEntropy, OutOfRangeTargetsRaiseOnTheCpu) {
  const Tensor logits = zeros({3, 5});
  EXPECT_TRUE(raises_error(
      [&] {
        nn::cross_entropy(logits, from_vector<int64_t>({0, 5, 1}, {3}, kI64));
      },
      {"cross_entropy", "target[1] = 5", "[3, 5]", "< 5"}));
  EXPECT_TRUE(raises_error(
      [&] {
        nn::cross_entropy(logits, from_vector<int64_t>({0, 1, -1}, {3}, kI64));
      },
      {"cross_entropy", "target[2] = -1"}));
  // -100 is only special while it is the ignore_index.
  EXPECT_TRUE(raises_error(
      [&] {
        nn::cross_entropy(logits, from_vector<int64_t>({-100, 1, 2}, {3}, kI64), {4});
      },
      {"target[0] = -100", "ignore_index 4"}));
  EXPECT_NO_THROW(nn::cross_entropy(logits, from_vector<int64_t>({4, 1, -100}, {3}, kI64)));
}

// --- mse_loss -------------------------------------------------------------------------------------

TEST(MseLoss, MatchesFloat64Reference) {
  HostRng rng;
  const Shape shape{3, 4, 2};
  for (DType dtype : {kF64, kF32}) {
    for (Reduction r : {Reduction::Mean, Reduction::Sum, Reduction::None}) {
      SCOPED_TRACE(fmt::format("{} {}", dtype_name(dtype), reduction_name(r)));
      const int64_t n = test::numel_of(shape);
      const auto a = test::round_to_dtype(rng.uniform(n, -2, 2), dtype);
      const auto b = test::round_to_dtype(rng.uniform(n, -2, 2), dtype);
      std::vector<double> squares;
      double total = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        squares.push_back((a[i] - b[i]) * (a[i] - b[i]));
        total += squares.back();
      }
      const Tensor loss = nn::mse_loss(test::make_tensor(a, shape, dtype, kCPU, test::Layout::Strided),
                                       test::make_tensor(b, shape, dtype), r);
      const test::Tolerance tol = test::tolerance_for(dtype).scaled(4);
      if (r == Reduction::None)
        EXPECT_TRUE(all_close(loss, shape, squares, tol));
      else
        EXPECT_TRUE(all_close(loss, {}, {r == Reduction::Sum ? total : total / static_cast<double>(n)}, tol));
    }
  }
}

TEST(MseLoss, GradientsMatchFiniteDifferences) {
  HostRng rng;
  for (Reduction r : {Reduction::Mean, Reduction::Sum, Reduction::None}) {
    SCOPED_TRACE(reduction_name(r));
    EXPECT_TRUE(test::gradcheck([r](const std::vector<Tensor>& in) { return nn::mse_loss(in[0], in[1], r); },
                                {test::random_f64(rng, {3, 4}, -2, 2), test::random_f64(rng, {3, 4}, -2, 2)}, rng));
  }
}

TEST(MseLoss, MismatchedInputsRaise) {
  EXPECT_TRUE(raises_error([] { nn::mse_loss(zeros({3, 4}), zeros({4})); }, {"mse_loss", "[3, 4]", "[4]"}));
  EXPECT_TRUE(raises_error([] { nn::mse_loss(zeros({3}), zeros({3}, kF64)); }, {"mse_loss", "f32", "f64"}));
  EXPECT_TRUE(raises_error([] { nn::mse_loss(zeros({3}, kI64), zeros({3}, kI64)); }, {"mse_loss", "floating"}));
}

// --- accuracy -------------------------------------------------------------------------------------

TEST(Accuracy, CountsRowsWhoseArgmaxIsTheTarget) {
  // Row argmaxes: 1, 0 (tie with 2: the first wins), 2, 2.
  const Tensor logits = from_vector<double>({0.1, 0.9, 0.0, 5.0, -1.0, 5.0, 0.0, 0.0, 1.0, -3.0, -2.0, -1.0}, {4, 3});
  EXPECT_DOUBLE_EQ(nn::accuracy(logits, from_vector<int64_t>({1, 0, 2, 2}, {4}, kI64)), 1.0);
  EXPECT_DOUBLE_EQ(nn::accuracy(logits, from_vector<int64_t>({1, 2, 2, 0}, {4}, kI64)), 0.5);
  EXPECT_DOUBLE_EQ(nn::accuracy(logits, from_vector<int64_t>({0, 2, 1, 0}, {4}, kI64)), 0.0);
  EXPECT_TRUE(raises_error([&] { nn::accuracy(logits, zeros({3}, kI64)); }, {"accuracy", "[3]", "[4, 3]"}));
  EXPECT_TRUE(raises_error([&] { nn::accuracy(zeros({0, 3}), zeros({0}, kI64)); }, {"accuracy", "empty"}));
}

}  // namespace
}  // namespace flame
