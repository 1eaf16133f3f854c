// softmax and log_softmax on the CPU against float64 references: every dim (negative included),
// every floating dtype, non-contiguous and expanded inputs, and numerical stability for large
// inputs (the max is subtracted first).
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "support/test_support.h"

namespace flame {
namespace {

using test::all_close;
using test::HostRng;
using test::Layout;

/// softmax (or log_softmax) of `values` of `shape` along `dim`, on host doubles.
std::vector<double> softmax_reference(const std::vector<double>& values, const Shape& shape, int64_t dim,
                                      bool log) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  if (dim < 0) dim += nd;
  std::vector<double> out(values.size());
  for (int64_t flat = 0; flat < test::numel_of(shape); ++flat) {
    std::vector<int64_t> index = test::unravel_index(flat, shape);
    if (index[dim] != 0) continue;  // one pass per row along dim, started at its first element
    std::vector<int64_t> row;
    for (int64_t j = 0; j < shape[dim]; ++j) {
      index[dim] = j;
      row.push_back(test::ravel_index(index, shape));
    }
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t i : row) m = std::max(m, values[i]);
    double s = 0.0;
    for (int64_t i : row) s += std::exp(values[i] - m);
    for (int64_t i : row) out[i] = log ? values[i] - m - std::log(s) : std::exp(values[i] - m) / s;
  }
  return out;
}

struct SoftmaxCase {
  const char* name;
  bool log;
};

void PrintTo(const SoftmaxCase& c, std::ostream* os) { *os << c.name; }

class SoftmaxTest : public ::testing::TestWithParam<SoftmaxCase> {};

Tensor run(const SoftmaxCase& c, const Tensor& x, int64_t dim) {
  return c.log ? log_softmax(x, dim) : softmax(x, dim);
}

TEST_P(SoftmaxTest, MatchesFloat64ReferenceAlongEveryDim) {
  const SoftmaxCase& c = GetParam();
  HostRng rng;
  const std::vector<Shape> shapes{{10}, {2, 7}, {3, 4, 5}, {4, 300}};
  for (DType dtype : test::floating_dtypes()) {
    for (const Shape& shape : shapes) {
      const int64_t nd = static_cast<int64_t>(shape.size());
      for (int64_t dim = -1; dim < nd; ++dim) {
        for (Layout layout : test::all_layouts()) {
          SCOPED_TRACE(fmt::format("{} {} {} dim {} {}", c.name, dtype_name(dtype), shape_str(shape), dim,
                                   test::layout_name(layout)));
          test::guarded([&] {
            const auto v = test::round_to_dtype(rng.uniform(test::numel_of(shape), -5, 5), dtype);
            const Tensor x = test::make_tensor(v, shape, dtype, kCPU, layout);
            const Tensor y = run(c, x, dim);
            EXPECT_EQ(y.dtype(), dtype);
            EXPECT_TRUE(
                all_close(y, shape, softmax_reference(v, shape, dim, c.log), test::tolerance_for(dtype)));
          });
        }
      }
    }
  }
}

TEST_P(SoftmaxTest, LargeInputsStayFinite) {
  const SoftmaxCase& c = GetParam();
  // exp(1000) overflows every format: only a max-subtracting implementation gets this right.
  const std::vector<double> v{1000, 1001, 999, 1000, -1000, 0, 50, 80, 1e4, 1e4, -1e4, 1e4};
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(fmt::format("{} {}", c.name, dtype_name(dtype)));
    test::guarded([&] {
      const auto rounded = test::round_to_dtype(v, dtype);
      const Tensor x = test::make_tensor(rounded, {3, 4}, dtype);
      EXPECT_TRUE(all_close(run(c, x, 1), {3, 4}, softmax_reference(rounded, {3, 4}, 1, c.log),
                            test::tolerance_for(dtype)));
    });
  }
  const std::vector<double> h{60000, 60001, 59999, 60000};  // f16: large but finite
  const auto rounded = test::round_to_dtype(h, kF16);
  EXPECT_TRUE(all_close(run(c, test::make_tensor(rounded, {4}, kF16), 0), {4},
                        softmax_reference(rounded, {4}, 0, c.log), test::tolerance_for(kF16)));
}

TEST_P(SoftmaxTest, ExpandedInput) {
  const SoftmaxCase& c = GetParam();
  HostRng rng;
  const auto v = rng.uniform(4, -2, 2);
  const Tensor x = test::make_tensor(v, {1, 4}, kF64).expand({3, 4});
  const auto full = test::broadcast_to(v, {1, 4}, {3, 4});
  EXPECT_TRUE(
      all_close(run(c, x, 1), {3, 4}, softmax_reference(full, {3, 4}, 1, c.log), test::tolerance_for(kF64)));
  EXPECT_TRUE(
      all_close(run(c, x, 0), {3, 4}, softmax_reference(full, {3, 4}, 0, c.log), test::tolerance_for(kF64)));
}

INSTANTIATE_TEST_SUITE_P(Cpu, SoftmaxTest,
                         ::testing::Values(SoftmaxCase{"softmax", false}, SoftmaxCase{"log_softmax", true}),
                         [](const ::testing::TestParamInfo<SoftmaxCase>& info) {
                           return std::string(info.param.name);
                         });

TEST(Softmax, RowsSumToOneAndMatchLogSoftmax) {
  HostRng rng;
  const auto v = rng.uniform(6 * 9, -4, 4);
  const Tensor x = test::make_tensor(v, {6, 9}, kF64, kCPU, Layout::Transposed);
  const std::vector<double> p = test::host_values(softmax(x, -1));
  const std::vector<double> lp = test::host_values(log_softmax(x, -1));
  for (int r = 0; r < 6; ++r) {
    double s = 0.0;
    for (int j = 0; j < 9; ++j) {
      s += p[r * 9 + j];
      EXPECT_NEAR(std::log(p[r * 9 + j]), lp[r * 9 + j], 1e-12);
    }
    EXPECT_NEAR(s, 1.0, 1e-12);
  }
  // Uniform inputs give 1/n.
  EXPECT_TRUE(all_close(softmax(full({2, 8}, 3.0, kF32), 1), {2, 8}, std::vector<double>(16, 0.125),
                        test::tolerance_for(kF32)));
}

}  // namespace
}  // namespace flame
