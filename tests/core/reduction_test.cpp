// Reductions (sum, mean, var, max, min, argmax) on the CPU against float64 references: every
// dim subset (negative dims included), keepdim, every floating dtype, non-contiguous and expanded
// inputs, ties (argmax takes the first) and NaN propagation.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>

#include "support/test_support.h"

namespace flame {
namespace {

using test::all_close;
using test::HostRng;
using test::Layout;
using test::Tolerance;

using Group = std::vector<double>;

struct Reduced {
  Shape shape;
  std::vector<double> values;
};

/// Reduces `values` of `shape` over `dims` (empty: all) with `fn` applied to each group (in
/// increasing order of the reduced index).
Reduced reduce_reference(const std::vector<double>& values, const Shape& shape, std::vector<int64_t> dims,
                         bool keepdim, const std::function<double(const Group&)>& fn) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  std::vector<bool> reduced(shape.size(), dims.empty());
  for (int64_t d : dims) reduced[d < 0 ? d + nd : d] = true;
  Shape kept = shape;
  for (int64_t d = 0; d < nd; ++d) {
    if (reduced[d]) kept[d] = 1;
  }
  std::vector<Group> groups(static_cast<size_t>(test::numel_of(kept)));
  for (int64_t flat = 0; flat < test::numel_of(shape); ++flat) {
    std::vector<int64_t> index = test::unravel_index(flat, shape);
    for (int64_t d = 0; d < nd; ++d) {
      if (reduced[d]) index[d] = 0;
    }
    groups[test::ravel_index(index, kept)].push_back(values[flat]);
  }
  Reduced out;
  for (const Group& g : groups) out.values.push_back(fn(g));
  for (int64_t d = 0; d < nd; ++d) {
    if (keepdim || !reduced[d]) out.shape.push_back(kept[d]);
  }
  return out;
}

double sum_of(const Group& g) { return std::accumulate(g.begin(), g.end(), 0.0); }
double mean_of(const Group& g) { return sum_of(g) / static_cast<double>(g.size()); }
double var_of(const Group& g, int64_t correction) {
  const double m = mean_of(g);
  double ss = 0.0;
  for (double v : g) ss += (v - m) * (v - m);
  return ss / static_cast<double>(static_cast<int64_t>(g.size()) - correction);
}
double max_of(const Group& g) {
  for (double v : g) {
    if (std::isnan(v)) return v;
  }
  return *std::max_element(g.begin(), g.end());
}
double min_of(const Group& g) {
  for (double v : g) {
    if (std::isnan(v)) return v;
  }
  return *std::min_element(g.begin(), g.end());
}
double argmax_of(const Group& g) {
  return static_cast<double>(std::max_element(g.begin(), g.end()) - g.begin());  // first largest
}

struct ReductionCase {
  std::string name;
  bool single_dim = false;  // op takes one dim (max, min, argmax), not a list
  std::function<Tensor(const Tensor&, const std::vector<int64_t>&, bool)> op;
  std::function<double(const Group&)> reference;
  bool exact = false;           // the result is one of the inputs (or an index)
  bool integer_ok = false;      // also run on i32 / i64
  bool small_integers = false;  // draw integer values so ties occur
  std::optional<DType> out_dtype;
  int64_t min_group = 1;  // skip dim lists reducing fewer elements (var's correction)
};

ReductionCase make_case(std::string name, bool single_dim,
                        std::function<Tensor(const Tensor&, const std::vector<int64_t>&, bool)> op,
                        std::function<double(const Group&)> reference) {
  ReductionCase c;
  c.name = std::move(name);
  c.single_dim = single_dim;
  c.op = std::move(op);
  c.reference = std::move(reference);
  return c;
}

ReductionCase exact_case(ReductionCase c) {
  c.exact = true;
  c.integer_ok = true;
  return c;
}

ReductionCase var_case(std::string name, int64_t correction) {
  ReductionCase c = make_case(
      std::move(name), false,
      [correction](const Tensor& x, const std::vector<int64_t>& d, bool k) {
        return var(x, d, correction, k);
      },
      [correction](const Group& g) { return var_of(g, correction); });
  c.min_group = correction + 1;
  return c;
}

std::vector<ReductionCase> reduction_cases() {
  using Dims = const std::vector<int64_t>&;
  std::vector<ReductionCase> c;
  c.push_back(make_case(
      "sum", false, [](const Tensor& x, Dims d, bool k) { return sum(x, d, k); }, sum_of));
  c.push_back(make_case(
      "sum_member", false, [](const Tensor& x, Dims d, bool k) { return x.sum(d, k); }, sum_of));
  c.push_back(make_case(
      "mean", false, [](const Tensor& x, Dims d, bool k) { return mean(x, d, k); }, mean_of));
  c.push_back(make_case(
      "mean_member", false, [](const Tensor& x, Dims d, bool k) { return x.mean(d, k); }, mean_of));
  c.push_back(var_case("var", 1));
  c.push_back(var_case("var_correction_0", 0));
  c.push_back(var_case("var_correction_2", 2));
  c.push_back(exact_case(make_case(
      "max", true, [](const Tensor& x, Dims d, bool k) { return max(x, d[0], k); }, max_of)));
  c.push_back(exact_case(make_case(
      "min", true, [](const Tensor& x, Dims d, bool k) { return min(x, d[0], k); }, min_of)));
  ReductionCase a = exact_case(make_case(
      "argmax", true, [](const Tensor& x, Dims d, bool k) { return argmax(x, d[0], k); }, argmax_of));
  a.small_integers = true;
  a.out_dtype = kI64;
  c.push_back(a);
  return c;
}

/// Dim lists to reduce over for a tensor of rank nd.
std::vector<std::vector<int64_t>> dim_lists(int64_t nd, bool single_dim) {
  std::vector<std::vector<int64_t>> lists;
  for (int64_t d = 0; d < nd; ++d) lists.push_back({d});
  lists.push_back({-1});
  if (single_dim) return lists;
  lists.push_back({});  // all dims
  if (nd >= 2) lists.push_back({0, nd - 1});
  if (nd >= 3) lists.push_back({-3, -2});
  if (nd >= 4) lists.push_back({1, 3});
  return lists;
}

int64_t group_size(const Shape& shape, const std::vector<int64_t>& dims) {
  if (dims.empty()) return test::numel_of(shape);
  int64_t n = 1;
  for (int64_t d : dims) n *= shape[d < 0 ? d + static_cast<int64_t>(shape.size()) : d];
  return n;
}

void PrintTo(const ReductionCase& c, std::ostream* os) { *os << c.name; }

class ReductionTest : public ::testing::TestWithParam<ReductionCase> {};

TEST_P(ReductionTest, MatchesFloat64ReferenceOverDimsAndLayouts) {
  const ReductionCase& c = GetParam();
  HostRng rng;
  const std::vector<Shape> shapes{{7}, {4, 6}, {2, 3, 5}, {3, 4, 5, 2}, {8, 300}};
  std::vector<DType> dtypes = test::floating_dtypes();
  if (c.integer_ok) dtypes.insert(dtypes.end(), {kI32, kI64});
  for (DType dtype : dtypes) {
    for (const Shape& shape : shapes) {
      for (const auto& dims : dim_lists(static_cast<int64_t>(shape.size()), c.single_dim)) {
        if (group_size(shape, dims) < c.min_group) continue;
        for (bool keepdim : {false, true}) {
          for (Layout layout : test::all_layouts()) {
            SCOPED_TRACE(fmt::format("{} {} {} dims [{}] keepdim {} {}", c.name, dtype_name(dtype),
                                     shape_str(shape), fmt::join(dims, ", "), keepdim,
                                     test::layout_name(layout)));
            test::guarded([&] {
              const auto v = test::case_inputs(rng, test::numel_of(shape), -3, 3, dtype, c.small_integers);
              const Tensor x = test::make_tensor(v, shape, dtype, kCPU, layout);
              const Reduced expected = reduce_reference(v, shape, dims, keepdim, c.reference);
              const Tensor y = c.op(x, dims, keepdim);
              ASSERT_TRUE(y.defined());
              EXPECT_EQ(y.dtype(), c.out_dtype.value_or(dtype));
              const Tolerance tol = c.exact ? Tolerance{0, 0}
                                            : test::tolerance_for(dtype).scaled(
                                                  std::sqrt(static_cast<double>(group_size(shape, dims))));
              EXPECT_TRUE(all_close(y, expected.shape, expected.values, tol));
            });
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cpu, ReductionTest, ::testing::ValuesIn(reduction_cases()),
                         [](const ::testing::TestParamInfo<ReductionCase>& info) { return info.param.name; });

TEST(Reduction, WholeTensorReductionsAreZeroDimensional) {
  HostRng rng;
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const auto v = test::case_inputs(rng, 60, -3, 3, dtype, false);
      const Tensor x = test::make_tensor(v, {3, 4, 5}, dtype, kCPU, Layout::Permuted);
      const Tolerance tol = test::tolerance_for(dtype).scaled(std::sqrt(60.0));
      EXPECT_TRUE(all_close(sum(x), {}, {sum_of(v)}, tol));
      EXPECT_TRUE(all_close(x.sum(), {}, {sum_of(v)}, tol));
      EXPECT_TRUE(all_close(mean(x), {}, {mean_of(v)}, tol));
      EXPECT_TRUE(all_close(x.mean(), {}, {mean_of(v)}, tol));
      EXPECT_TRUE(all_close(var(x), {}, {var_of(v, 1)}, tol));
      EXPECT_TRUE(all_close(max(x), {}, {max_of(v)}, Tolerance{0, 0}));
      EXPECT_TRUE(all_close(min(x), {}, {min_of(v)}, Tolerance{0, 0}));
      EXPECT_TRUE(all_close(sum(x, {}, true), {1, 1, 1}, {sum_of(v)}, tol));
      EXPECT_EQ(max(x).dtype(), dtype);
    });
  }
  for (DType dtype : {kI32, kI64}) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const auto v = rng.integers(30, -100, 100);
      const Tensor x = test::make_tensor(v, {5, 6}, dtype, kCPU, Layout::Transposed);
      EXPECT_TRUE(all_close(max(x), {}, {max_of(v)}, Tolerance{0, 0}));
      EXPECT_TRUE(all_close(min(x), {}, {min_of(v)}, Tolerance{0, 0}));
    });
  }
}

TEST(Reduction, ExpandedInputCountsEveryRepeat) {
  HostRng rng;
  const auto v = rng.uniform(3, -2, 2);
  const Tensor x = test::make_tensor(v, {3, 1}, kF64).expand({2, 3, 4});
  const auto full = test::broadcast_to(v, {3, 1}, {2, 3, 4});
  for (const std::vector<int64_t>& dims : std::vector<std::vector<int64_t>>{{0}, {2}, {0, 2}, {}}) {
    SCOPED_TRACE(fmt::format("dims [{}]", fmt::join(dims, ", ")));
    test::guarded([&] {
      const Reduced s = reduce_reference(full, {2, 3, 4}, dims, false, sum_of);
      EXPECT_TRUE(all_close(sum(x, dims), s.shape, s.values, test::tolerance_for(kF64)));
      const Reduced m = reduce_reference(full, {2, 3, 4}, dims, true, mean_of);
      EXPECT_TRUE(all_close(mean(x, dims, true), m.shape, m.values, test::tolerance_for(kF64)));
    });
  }
  const Reduced vr =
      reduce_reference(full, {2, 3, 4}, {1}, false, [](const Group& g) { return var_of(g, 1); });
  EXPECT_TRUE(all_close(var(x, {1}), vr.shape, vr.values, test::tolerance_for(kF64)));
}

TEST(Reduction, ArgmaxTakesTheFirstOfTies) {
  const Tensor x = test::make_tensor({1, 3, 3, 0,  //
                                      5, 5, 5, 5,  //
                                      -1, -2, -1, -3},
                                     {3, 4}, kF32);
  const Tensor a = argmax(x, 1);
  EXPECT_EQ(a.dtype(), kI64);
  EXPECT_TRUE(all_close(a, {3}, {1, 0, 0}, Tolerance{0, 0}));
  EXPECT_TRUE(all_close(argmax(x, 0), {4}, {1, 1, 1, 1}, Tolerance{0, 0}));
  EXPECT_TRUE(all_close(argmax(x, -1, true), {3, 1}, {1, 0, 0}, Tolerance{0, 0}));
}

TEST(Reduction, MaxAndMinPropagateNaN) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const Tensor x = test::make_tensor({1, nan, 3, -4, 2, 0}, {2, 3}, dtype);
      EXPECT_TRUE(all_close(max(x, 1), {2}, {nan, 2}, Tolerance{0, 0}));
      EXPECT_TRUE(all_close(min(x, 1), {2}, {nan, -4}, Tolerance{0, 0}));
      EXPECT_TRUE(all_close(max(x, 0), {3}, {1, nan, 3}, Tolerance{0, 0}));
      EXPECT_TRUE(std::isnan(max(x).item()));
      EXPECT_TRUE(std::isnan(min(x).item()));
    });
  }
}

// Over an empty dimension, sum is 0 and mean/var NaN; max/min/argmax have no value and raise,
// even when the result would be empty too (PyTorch's rule).
TEST(Reduction, EmptyDimensions) {
  EXPECT_EQ(sum(zeros({0, 3}), {0}).to_vector<float>(), (std::vector<float>{0, 0, 0}));
  EXPECT_TRUE(std::isnan(mean(zeros({0, 2}), {0}).to_vector<float>()[0]));
  for (const auto& reduce : std::vector<std::function<Tensor(const Tensor&)>>{
           [](const Tensor& t) { return max(t, 0); }, [](const Tensor& t) { return min(t, 0); },
           [](const Tensor& t) { return argmax(t, 0); }}) {
    EXPECT_TRUE(test::raises_error([&] { (void)reduce(zeros({0, 3})); }, {"empty dimension"}));
    EXPECT_TRUE(test::raises_error([&] { (void)reduce(zeros({0, 0})); }, {"empty dimension"}));
    EXPECT_EQ(reduce(zeros({3, 0})).shape(), (Shape{0}));  // a non-empty dimension reduced
  }
}

TEST(Reduction, LargeSumKeepsAccuracy) {
  // 4096 values of 0.1 (f32): even a naive f32 running sum stays within 4e-5 relative of the
  // double sum; an f16 or bf16 accumulator would be far off.
  const int64_t n = 4096;
  const Tensor x = full({n}, 0.1, kF32);
  const double expected = static_cast<double>(0.1f) * n;
  EXPECT_TRUE(all_close(sum(x), {}, {expected}, Tolerance{1e-4, 0}));
  EXPECT_TRUE(all_close(mean(x), {}, {static_cast<double>(0.1f)}, Tolerance{1e-4, 0}));
  const Tensor h = full({n}, 1.0, kF16);  // 4096 is exact in f16; an f16 accumulator would stop at 2048
  EXPECT_TRUE(all_close(sum(h), {}, {4096.0}, Tolerance{0, 0}));
  const Tensor b = full({1000}, 1.0, kBF16);  // 1000 is exact in bf16; a bf16 accumulator stops at 256
  EXPECT_TRUE(all_close(sum(b), {}, {1000.0}, Tolerance{0, 0}));
}

}  // namespace
}  // namespace flame
