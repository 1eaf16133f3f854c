// max_pool2d, max_pool2d_with_indices and avg_pool2d on the CPU (core/pool.h): values and indices
// against float64 references for many window geometries (kernel, stride, padding, rectangular,
// overlapping, unbatched input, empty batch), every floating dtype and non-contiguous inputs; NaN
// and -inf windows; closed-form gradients and finite-difference gradient checks in float64; the
// argument errors; the nn::MaxPool2d and nn::AvgPool2d modules.
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "core/autograd.h"
#include "core/pool.h"
#include "nn/pool2d.h"
#include "support/conv_pool_reference.h"
#include "support/gradcheck.h"

namespace flame {
namespace {

using test::all_close;
using test::gradcheck;
using test::HostRng;
using test::Layout;
using test::Pool;
using test::pool_name;
using test::PoolCase;
using test::raises_error;
using test::run_pool;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const std::vector<PoolCase>& pool_cases() {
  static const std::vector<PoolCase> cases = [] {
    std::vector<PoolCase> c = test::shared_pool_cases();
    c.push_back({{1, 1, 2, 9}, {{2, 4}, {1, 3}, {1, 2}}});  // wide
    c.push_back({{2, 3, 8, 6}, {{2, 2}, {2, 2}, {0, 0}}});  // the classic 2x2 / 2
    return c;
  }();
  return cases;
}

/// The options with stride = kernel where it was left {0, 0}.
std::array<int64_t, 2> stride_of(const Pool2dOptions& o) {
  return o.stride[0] == 0 && o.stride[1] == 0 ? o.kernel : o.stride;
}

/// Results of a reference pooling on host doubles.
struct Reference {
  Shape shape;
  std::vector<double> values;
  std::vector<double> indices;  // max only
};

/// Pooling of `x` (row-major, `shape` 3-D or 4-D) by visiting every kernel offset of every window;
/// offsets that fall in the padding are skipped for max (they are -inf) and counted (as zeros) or
/// not in the average's divisor.
Reference pool_reference(Pool pool, const std::vector<double>& x, const Shape& shape, const Pool2dOptions& o) {
  const bool unbatched = shape.size() == 3;
  const int64_t n = unbatched ? 1 : shape[0], c = shape[shape.size() - 3];
  const int64_t h = shape[shape.size() - 2], w = shape[shape.size() - 1];
  const auto stride = stride_of(o);
  const int64_t oh = (h + 2 * o.padding[0] - o.kernel[0]) / stride[0] + 1;
  const int64_t ow = (w + 2 * o.padding[1] - o.kernel[1]) / stride[1] + 1;
  Reference ref;
  ref.shape = unbatched ? Shape{c, oh, ow} : Shape{n, c, oh, ow};
  for (int64_t plane = 0; plane < n * c; ++plane) {
    for (int64_t i = 0; i < oh; ++i) {
      for (int64_t j = 0; j < ow; ++j) {
        double best = -kInf, sum = 0.0;
        int64_t best_index = -1, real = 0;
        for (int64_t a = 0; a < o.kernel[0]; ++a) {
          for (int64_t b = 0; b < o.kernel[1]; ++b) {
            const int64_t y = i * stride[0] - o.padding[0] + a, z = j * stride[1] - o.padding[1] + b;
            if (y < 0 || y >= h || z < 0 || z >= w) continue;
            const double v = x[static_cast<size_t>(plane * h * w + y * w + z)];
            ++real;
            sum += v;
            // The first real element, then any larger one; the first NaN stays.
            if (best_index < 0 || (!std::isnan(best) && (v > best || std::isnan(v)))) {
              best = v;
              best_index = y * w + z;
            }
          }
        }
        if (pool == Pool::Max) {
          ref.values.push_back(best);
          ref.indices.push_back(static_cast<double>(best_index));
        } else {
          const int64_t divisor = pool == Pool::AvgIncludePad ? o.kernel[0] * o.kernel[1] : real;
          ref.values.push_back(sum / static_cast<double>(divisor));
        }
      }
    }
  }
  return ref;
}

TEST(Pool2d, MatchesFloat64ReferenceForEveryGeometryDtypeAndLayout) {
  HostRng rng;
  for (Pool pool : {Pool::Max, Pool::AvgIncludePad, Pool::AvgExcludePad}) {
    for (const PoolCase& c : pool_cases()) {
      for (DType dtype : test::floating_dtypes()) {
        for (Layout layout : {Layout::Contiguous, Layout::Permuted, Layout::Strided}) {
          SCOPED_TRACE(fmt::format("{} {} {} {}", pool_name(pool), test::case_str(c), dtype_name(dtype),
                                   test::layout_name(layout)));
          test::guarded([&] {
            const std::vector<double> values =
                test::round_to_dtype(rng.uniform(test::numel_of(c.input), -3.0, 3.0), dtype);
            const Tensor x = test::make_tensor(values, c.input, dtype, kCPU, layout);
            Tensor indices;
            const Tensor out = run_pool(pool, x, c.options, &indices);
            const Reference ref = pool_reference(pool, values, c.input, c.options);
            EXPECT_EQ(out.dtype(), dtype);
            EXPECT_TRUE(all_close(out, ref.shape, test::round_to_dtype(ref.values, dtype), test::tolerance_for(dtype)));
            if (pool == Pool::Max) {
              EXPECT_EQ(indices.dtype(), kI64);
              EXPECT_TRUE(all_close(indices, ref.shape, ref.indices, {}));
            }
          });
        }
      }
    }
  }
}

TEST(Pool2d, MaxPicksTheFirstOfTiedMaxima) {
  // Windows of 2x2 / 2 over a plane of equal values: each index is its window's top-left element.
  const Tensor x = ones({1, 1, 4, 4});
  const MaxPool2dResult r = max_pool2d_with_indices(x, {{2, 2}});
  EXPECT_TRUE(all_close(r.indices, {1, 1, 2, 2}, {0, 2, 8, 10}, {}));
  EXPECT_TRUE(all_close(r.output, {1, 1, 2, 2}, {1, 1, 1, 1}, {}));
}

TEST(Pool2d, NaNPropagatesAndInfinitiesAreValues) {
  // 1x1x4x4, 2x2 windows with stride 2: window 0 holds two NaNs, window 1 only -inf, window 2 a
  // +inf, window 3 ordinary values.
  const std::vector<double> values = test::nan_and_inf_plane();
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor x = test::make_tensor(values, {1, 1, 4, 4}, dtype);
    const MaxPool2dResult r = max_pool2d_with_indices(x, {{2, 2}});
    EXPECT_TRUE(all_close(r.output, {1, 1, 2, 2}, {kNaN, -kInf, kInf, 4.0}, {}));
    EXPECT_TRUE(all_close(r.indices, {1, 1, 2, 2}, {1, 2, 9, 14}, {}));
    EXPECT_TRUE(all_close(avg_pool2d(x, {{2, 2}}), {1, 1, 2, 2}, {kNaN, -kInf, kInf, 1.0}, {}));
  }
}

TEST(Pool2d, PaddingNeverWinsAMaxAndCountsInTheAverageOnlyWhenAsked) {
  // All values negative: a padded max must still return a real element.
  const Tensor x = test::make_tensor({-4, -3, -2, -1}, {1, 1, 2, 2}, kF64);
  const Pool2dOptions o{{3, 3}, {1, 1}, {1, 1}};
  const MaxPool2dResult r = max_pool2d_with_indices(x, o);
  EXPECT_TRUE(all_close(r.output, {1, 1, 2, 2}, {-1, -1, -1, -1}, {}));
  EXPECT_TRUE(all_close(r.indices, {1, 1, 2, 2}, {3, 3, 3, 3}, {}));
  // Every 3x3 window covers the whole 2x2 input: sum -10 over 9 (padding counted) or over 4.
  EXPECT_TRUE(all_close(avg_pool2d(x, o), {1, 1, 2, 2}, std::vector<double>(4, -10.0 / 9.0), {1e-15, 1e-15}));
  EXPECT_TRUE(all_close(avg_pool2d(x, o, false), {1, 1, 2, 2}, std::vector<double>(4, -2.5), {1e-15, 1e-15}));
}

TEST(Pool2d, EmptyBatch) {
  for (Pool pool : {Pool::Max, Pool::AvgIncludePad}) {
    SCOPED_TRACE(pool_name(pool));
    Tensor x = zeros({0, 3, 5, 4}, kF64);
    x.requires_grad_();
    Tensor indices;
    const Tensor out = run_pool(pool, x, {{2, 2}, {1, 1}, {1, 1}}, &indices);
    EXPECT_EQ(out.shape(), (Shape{0, 3, 6, 5}));
    out.sum().backward();
    ASSERT_TRUE(x.grad().defined());
    EXPECT_EQ(x.grad().shape(), x.shape());
  }
}

// --- gradients ---------------------------------------------------------------------------------------

TEST(Pool2dGrad, MaxRoutesAndSumsGradientsThroughTheIndices) {
  // 3x3 plane with its maximum in the centre; 2x2 windows, stride 1: all four windows pick the
  // centre, so it receives the sum of the four output gradients.
  Tensor x = test::make_tensor({1, 2, 3, 4, 9, 5, 6, 7, 8}, {1, 1, 3, 3}, kF64);
  x.requires_grad_();
  const Tensor out = max_pool2d(x, {{2, 2}, {1, 1}});
  EXPECT_EQ(out.grad_fn()->name(), std::string("MaxPool2dBackward"));
  out.backward(test::make_tensor({1, 2, 3, 4}, {1, 1, 2, 2}, kF64));
  EXPECT_TRUE(all_close(x.grad(), {1, 1, 3, 3}, {0, 0, 0, 0, 10, 0, 0, 0, 0}, {}));
}

TEST(Pool2dGrad, AvgSpreadsEachGradientOverItsWindow) {
  // 2x2 windows, stride 1, over 3x3: corners are in one window, edges in two, the centre in four.
  Tensor x = zeros({1, 1, 3, 3}, kF64);
  x.requires_grad_();
  const Tensor out = avg_pool2d(x, {{2, 2}, {1, 1}});
  EXPECT_EQ(out.grad_fn()->name(), std::string("AvgPool2dBackward"));
  out.backward(ones({1, 1, 2, 2}, kF64));
  EXPECT_TRUE(all_close(x.grad(), {1, 1, 3, 3}, {0.25, 0.5, 0.25, 0.5, 1.0, 0.5, 0.25, 0.5, 0.25}, {1e-15, 1e-15}));
}

TEST(Pool2dGrad, IndicesAreNotDifferentiable) {
  HostRng rng;
  Tensor x = test::random_f64(rng, {1, 2, 4, 4}, -1, 1);
  x.requires_grad_();
  const MaxPool2dResult r = max_pool2d_with_indices(x, {{2, 2}});
  EXPECT_TRUE(r.output.requires_grad());
  EXPECT_FALSE(r.indices.requires_grad());
  autograd::NoGradGuard no_grad;
  EXPECT_FALSE(max_pool2d(x, {{2, 2}}).requires_grad());
  EXPECT_FALSE(avg_pool2d(x, {{2, 2}}).requires_grad());
}

TEST(Pool2dGrad, FiniteDifferencesFloat64) {
  HostRng rng;
  for (Pool pool : {Pool::Max, Pool::AvgIncludePad, Pool::AvgExcludePad}) {
    for (const PoolCase& c : pool_cases()) {
      for (Layout layout : {Layout::Contiguous, Layout::Transposed}) {
        SCOPED_TRACE(fmt::format("{} {} {}", pool_name(pool), test::case_str(c), test::layout_name(layout)));
        test::guarded([&] {
          // Distinct values (at least 0.25 apart) keep each maximum unique under the +-eps steps.
          const std::vector<double> values = pool == Pool::Max ? test::distinct_values(rng, test::numel_of(c.input))
                                                               : rng.uniform(test::numel_of(c.input), -2.0, 2.0);
          const Tensor x = test::make_tensor(values, c.input, kF64, kCPU, layout);
          EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return run_pool(pool, in[0], c.options); }, {x},
                                rng));
        });
      }
    }
  }
  SCOPED_TRACE("a non-contiguous output gradient");
  for (Pool pool : {Pool::Max, Pool::AvgExcludePad}) {
    const Tensor x = test::make_tensor(test::distinct_values(rng, 2 * 3 * 6 * 5), {2, 3, 6, 5}, kF64);
    EXPECT_TRUE(gradcheck(
        [&](const std::vector<Tensor>& in) { return run_pool(pool, in[0], {{3, 2}, {2, 1}, {1, 1}}).transpose(1, 3); },
        {x}, rng));
  }
}

// --- errors --------------------------------------------------------------------------------------------

TEST(Pool2dErrors, RejectsBadInputsAndOptions) {
  const Tensor x = zeros({1, 2, 4, 4});
  for (Pool pool : {Pool::Max, Pool::AvgIncludePad}) {
    SCOPED_TRACE(pool_name(pool));
    const char* op = pool == Pool::Max ? "max_pool2d" : "avg_pool2d";
    const auto run = [&](const Tensor& t, const Pool2dOptions& o) { return [&, t, o] { run_pool(pool, t, o); }; };
    EXPECT_TRUE(raises_error(run(Tensor(), {{2, 2}}), {op, "undefined"}));
    EXPECT_TRUE(raises_error(run(zeros({4, 4}), {{2, 2}}), {op, "[N, C, H, W] or [C, H, W]"}));
    EXPECT_TRUE(raises_error(run(zeros({1, 1, 1, 4, 4}), {{2, 2}}), {op, "[N, C, H, W] or [C, H, W]"}));
    EXPECT_TRUE(raises_error(run(zeros({1, 0, 4, 4}), {{2, 2}}), {op, "non-zero C, H and W"}));
    EXPECT_TRUE(raises_error(run(zeros({1, 2, 4, 4}, kI64), {{2, 2}}), {op, "floating-point", "i64"}));
    EXPECT_TRUE(raises_error(run(zeros({1, 2, 4, 4}, kBool), {{2, 2}}), {op, "floating-point"}));
    EXPECT_TRUE(raises_error(run(x, {{0, 2}}), {op, "kernel height must be positive"}));
    EXPECT_TRUE(raises_error(run(x, {{2, 2}, {1, -1}}), {op, "stride width must be positive"}));
    EXPECT_TRUE(raises_error(run(x, {{2, 2}, {1, 1}, {2, 0}}), {op, "padding height", "half the kernel (1)", "got 2"}));
    EXPECT_TRUE(raises_error(run(x, {{3, 3}, {1, 1}, {0, -1}}), {op, "padding width"}));
    EXPECT_TRUE(raises_error(run(x, {{5, 2}}), {op, "output height would be 0", "smaller than the kernel 5"}));
    EXPECT_TRUE(raises_error(run(x, {{2, 8}, {1, 1}, {0, 1}}), {op, "output width would be -1"}));
  }
}

// --- nn modules ----------------------------------------------------------------------------------------

TEST(Pool2dModules, ForwardToTheOpsAndHaveNoParameters) {
  HostRng rng;
  const Tensor x = test::random_f64(rng, {2, 3, 7, 6}, -1, 1);
  const Pool2dOptions o{{3, 2}, {2, 2}, {1, 1}};
  nn::MaxPool2d max_layer(o);
  nn::AvgPool2d avg_layer(o);
  nn::AvgPool2d avg_exclude_layer(o, false);
  EXPECT_EQ(max_layer.type_name(), "MaxPool2d");
  EXPECT_EQ(avg_layer.type_name(), "AvgPool2d");
  EXPECT_TRUE(max_layer.parameters().empty());
  EXPECT_TRUE(avg_layer.parameters().empty());
  EXPECT_TRUE(avg_layer.count_include_pad());
  EXPECT_FALSE(avg_exclude_layer.count_include_pad());
  EXPECT_EQ(max_layer.options().kernel, o.kernel);
  const std::vector<double> values = test::host_values(x);
  EXPECT_TRUE(all_close(max_layer(x), {2, 3, 4, 4}, pool_reference(Pool::Max, values, x.shape(), o).values, {}));
  EXPECT_TRUE(all_close(avg_layer(x), {2, 3, 4, 4}, pool_reference(Pool::AvgIncludePad, values, x.shape(), o).values,
                        test::tolerance_for(kF64)));
  EXPECT_TRUE(all_close(avg_exclude_layer(x), {2, 3, 4, 4},
                        pool_reference(Pool::AvgExcludePad, values, x.shape(), o).values, test::tolerance_for(kF64)));
  // Gradients flow through a module stack.
  Tensor leaf = x.detach();
  leaf.requires_grad_();
  avg_layer(max_layer(leaf)).sum().backward();
  ASSERT_TRUE(leaf.grad().defined());
  EXPECT_EQ(leaf.grad().shape(), leaf.shape());
}

}  // namespace
}  // namespace flame
