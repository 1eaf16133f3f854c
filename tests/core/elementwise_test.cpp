// Elementwise ops on the CPU against float64 references computed on the host: every unary and
// binary op of core/ops.h, every floating dtype (and i32/i64 where the op is defined on integers),
// NumPy broadcasting, and non-contiguous operands (transposed, permuted, strided, offset, expanded).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "support/test_support.h"

namespace flame {
namespace {

using test::all_close;
using test::BinaryCase;
using test::HostRng;
using test::Layout;
using test::UnaryCase;

std::vector<DType> dtypes_for(bool integer_ok) {
  std::vector<DType> dtypes = test::floating_dtypes();
  if (integer_ok) {
    for (DType d : test::integer_dtypes()) dtypes.push_back(d);
  }
  return dtypes;
}

std::vector<double> map_values(const std::function<double(double)>& f, const std::vector<double>& x) {
  std::vector<double> out(x.size());
  std::transform(x.begin(), x.end(), out.begin(), f);
  return out;
}

// --- unary (and tensor-scalar) ops ---------------------------------------------------------------

class UnaryOpTest : public ::testing::TestWithParam<UnaryCase> {};

TEST_P(UnaryOpTest, MatchesFloat64ReferenceInEveryLayout) {
  const UnaryCase& c = GetParam();
  HostRng rng;
  const std::vector<Shape> shapes{{}, {13}, {4, 5}, {2, 3, 7}, {40, 64}};
  for (DType dtype : dtypes_for(c.integer_ok)) {
    for (const Shape& shape : shapes) {
      for (Layout layout : test::all_layouts()) {
        SCOPED_TRACE(
            fmt::format("{} {} {} {}", c.name, dtype_name(dtype), shape_str(shape), test::layout_name(layout)));
        test::guarded([&] {
          const auto values = test::case_inputs(rng, test::numel_of(shape), c.low, c.high, dtype, c.small_integers);
          const Tensor x = test::make_tensor(values, shape, dtype, kCPU, layout);
          const Tensor y = c.op(x);
          ASSERT_TRUE(y.defined());
          EXPECT_EQ(y.dtype(), c.bool_result ? kBool : dtype);
          EXPECT_EQ(y.device(), kCPU);
          EXPECT_TRUE(all_close(y, shape, map_values(c.reference, values), test::tolerance_for(dtype)));
        });
      }
    }
  }
}

std::vector<UnaryCase> out_of_place_unary_cases() {
  std::vector<UnaryCase> out;
  for (const UnaryCase& c : test::unary_cases()) {
    if (c.name.find("inplace") == std::string::npos) out.push_back(c);
  }
  return out;
}

class UnaryOutOfPlaceTest : public ::testing::TestWithParam<UnaryCase> {};

TEST_P(UnaryOutOfPlaceTest, ReadsExpandedInput) {
  const UnaryCase& c = GetParam();
  HostRng rng;
  for (DType dtype : dtypes_for(c.integer_ok)) {
    SCOPED_TRACE(fmt::format("{} {}", c.name, dtype_name(dtype)));
    test::guarded([&] {
      // A [3, 1, 5] buffer expanded to [2, 3, 4, 5]: strides 0 on the new and the size-1 dims.
      const Shape small{3, 1, 5}, big{2, 3, 4, 5};
      const auto values = test::case_inputs(rng, 15, c.low, c.high, dtype, c.small_integers);
      const Tensor x = test::make_tensor(values, small, dtype).expand(big);
      ASSERT_EQ(x.shape(), big);
      const Tensor y = c.op(x);
      EXPECT_TRUE(all_close(y, big, map_values(c.reference, test::broadcast_to(values, small, big)),
                            test::tolerance_for(dtype)));
    });
  }
}

std::string unary_name(const ::testing::TestParamInfo<UnaryCase>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Cpu, UnaryOpTest, ::testing::ValuesIn(test::unary_cases()), unary_name);
INSTANTIATE_TEST_SUITE_P(Cpu, UnaryOutOfPlaceTest, ::testing::ValuesIn(out_of_place_unary_cases()), unary_name);

TEST(UnaryInPlace, ReturnsTheSameTensorAndWritesThroughTheView) {
  HostRng rng;
  const auto base_values = rng.uniform(24, -3, 3);
  Tensor base = test::make_tensor(base_values, {4, 6}, kF64);
  Tensor view = base.narrow(1, 2, 3);  // columns 2..4 of every row
  Tensor& same = view.relu_();
  EXPECT_EQ(&same, &view);
  std::vector<double> expected = base_values;
  for (int64_t r = 0; r < 4; ++r) {
    for (int64_t col = 2; col < 5; ++col) expected[r * 6 + col] = std::max(expected[r * 6 + col], 0.0);
  }
  EXPECT_TRUE(all_close(base, {4, 6}, expected, test::tolerance_for(kF64)));
  Tensor& clamped = view.clamp_(0.25, 0.5);
  EXPECT_EQ(&clamped, &view);
  for (int64_t r = 0; r < 4; ++r) {
    for (int64_t col = 2; col < 5; ++col) {
      expected[r * 6 + col] = std::clamp(expected[r * 6 + col], 0.25, 0.5);
    }
  }
  EXPECT_TRUE(all_close(base, {4, 6}, expected, test::tolerance_for(kF64)));
}

// --- binary ops ---------------------------------------------------------------------------------

class BinaryOpTest : public ::testing::TestWithParam<BinaryCase> {};

TEST_P(BinaryOpTest, BroadcastsLikeNumpyInEveryLayout) {
  const BinaryCase& c = GetParam();
  HostRng rng;
  const auto& layouts = test::all_layouts();
  for (DType dtype : dtypes_for(c.integer_ok)) {
    const auto& pairs = test::broadcast_shape_pairs();
    for (size_t p = 0; p < pairs.size(); ++p) {
      for (size_t l = 0; l < layouts.size(); ++l) {
        const auto& [shape_a, shape_b] = pairs[p];
        const Layout layout_a = layouts[l], layout_b = layouts[(l + p) % layouts.size()];
        SCOPED_TRACE(fmt::format("{} {} {} ({}) with {} ({})", c.name, dtype_name(dtype), shape_str(shape_a),
                                 test::layout_name(layout_a), shape_str(shape_b), test::layout_name(layout_b)));
        test::guarded([&] {
          const auto va = test::case_inputs(rng, test::numel_of(shape_a), c.a_low, c.a_high, dtype, c.small_integers);
          const auto vb = test::case_inputs(rng, test::numel_of(shape_b), c.b_low, c.b_high, dtype, c.small_integers);
          const Tensor a = test::make_tensor(va, shape_a, dtype, kCPU, layout_a);
          const Tensor b = test::make_tensor(vb, shape_b, dtype, kCPU, layout_b);
          const Shape out_shape = test::broadcast_shapes(shape_a, shape_b);
          const auto ea = test::broadcast_to(va, shape_a, out_shape);
          const auto eb = test::broadcast_to(vb, shape_b, out_shape);
          std::vector<double> expected(ea.size());
          for (size_t i = 0; i < ea.size(); ++i) expected[i] = c.reference(ea[i], eb[i]);
          const Tensor out = c.op(a, b);
          ASSERT_TRUE(out.defined());
          EXPECT_EQ(out.dtype(), c.bool_result ? kBool : dtype);
          EXPECT_TRUE(all_close(out, out_shape, expected, test::tolerance_for(dtype)));
        });
      }
    }
  }
}

TEST_P(BinaryOpTest, ReadsExpandedOperands) {
  const BinaryCase& c = GetParam();
  HostRng rng;
  for (DType dtype : dtypes_for(c.integer_ok)) {
    SCOPED_TRACE(fmt::format("{} {}", c.name, dtype_name(dtype)));
    test::guarded([&] {
      const auto va = test::case_inputs(rng, 3, c.a_low, c.a_high, dtype, c.small_integers);
      const auto vb = test::case_inputs(rng, 12, c.b_low, c.b_high, dtype, c.small_integers);
      // a: [3, 1] expanded to [2, 3, 4]; b: [4, 3] transposed to [3, 4].
      const Tensor a = test::make_tensor(va, {3, 1}, dtype).expand({2, 3, 4});
      const Tensor b = test::make_tensor(vb, {3, 4}, dtype, kCPU, Layout::Transposed);
      const auto ea = test::broadcast_to(va, {3, 1}, {2, 3, 4});
      const auto eb = test::broadcast_to(vb, {3, 4}, {2, 3, 4});
      std::vector<double> expected(ea.size());
      for (size_t i = 0; i < ea.size(); ++i) expected[i] = c.reference(ea[i], eb[i]);
      EXPECT_TRUE(all_close(c.op(a, b), {2, 3, 4}, expected, test::tolerance_for(dtype)));
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Cpu, BinaryOpTest, ::testing::ValuesIn(test::binary_cases()),
                         [](const ::testing::TestParamInfo<BinaryCase>& info) { return info.param.name; });

// --- in-place binary ops --------------------------------------------------------------------------

struct InPlaceCase {
  const char* name;
  Tensor& (*op)(Tensor&, const Tensor&);
  double (*reference)(double, double);
};

TEST(BinaryInPlace, UpdatesNonContiguousTargetWithBroadcastOperand) {
  const InPlaceCase cases[] = {
      {"add_", [](Tensor& a, const Tensor& b) -> Tensor& { return a.add_(b); },
       [](double a, double b) { return a + b; }},
      {"sub_", [](Tensor& a, const Tensor& b) -> Tensor& { return a.sub_(b); },
       [](double a, double b) { return a - b; }},
      {"mul_", [](Tensor& a, const Tensor& b) -> Tensor& { return a.mul_(b); },
       [](double a, double b) { return a * b; }},
      {"div_", [](Tensor& a, const Tensor& b) -> Tensor& { return a.div_(b); },
       [](double a, double b) { return a / b; }},
  };
  HostRng rng;
  for (const InPlaceCase& c : cases) {
    for (DType dtype : test::floating_dtypes()) {
      SCOPED_TRACE(fmt::format("{} {}", c.name, dtype_name(dtype)));
      test::guarded([&] {
        const auto va = test::round_to_dtype(rng.uniform(15, -3, 3), dtype);
        const auto vb = test::round_to_dtype(rng.uniform(5, 0.5, 3), dtype);
        Tensor a = test::make_tensor(va, {3, 5}, dtype, kCPU, Layout::Transposed);
        const Tensor b = test::make_tensor(vb, {5}, dtype, kCPU, Layout::Strided);
        Tensor& result = c.op(a, b);
        EXPECT_EQ(&result, &a);
        const auto eb = test::broadcast_to(vb, {5}, {3, 5});
        std::vector<double> expected(15);
        for (size_t i = 0; i < 15; ++i) expected[i] = c.reference(va[i], eb[i]);
        EXPECT_TRUE(all_close(a, {3, 5}, expected, test::tolerance_for(dtype)));
        EXPECT_FALSE(a.is_contiguous());  // updated in place: still the transposed view
      });
    }
  }
}

TEST(BinaryInPlace, OperandMayBeTheTargetItself) {
  HostRng rng;
  const auto v = rng.uniform(12, -2, 2);
  Tensor x = test::make_tensor(v, {3, 4}, kF64, kCPU, Layout::Transposed);
  x.mul_(x);
  std::vector<double> expected(12);
  for (size_t i = 0; i < 12; ++i) expected[i] = v[i] * v[i];
  EXPECT_TRUE(all_close(x, {3, 4}, expected, test::tolerance_for(kF64)));
  x.add_(x);
  for (double& e : expected) e *= 2;
  EXPECT_TRUE(all_close(x, {3, 4}, expected, test::tolerance_for(kF64)));
}

// --- where -------------------------------------------------------------------------------------

TEST(Where, SelectsWithBroadcastConditionAndOperands) {
  HostRng rng;
  const Shape cond_shape{3, 1}, a_shape{4}, b_shape{2, 3, 4}, out_shape{2, 3, 4};
  std::vector<DType> dtypes = test::floating_dtypes();
  for (DType d : test::integer_dtypes()) dtypes.push_back(d);
  for (DType dtype : dtypes) {
    for (Layout layout : test::all_layouts()) {
      SCOPED_TRACE(fmt::format("{} {}", dtype_name(dtype), test::layout_name(layout)));
      test::guarded([&] {
        const auto vc = rng.integers(3, 0, 1);
        const auto va = test::case_inputs(rng, 4, -3, 3, dtype, false);
        const auto vb = test::case_inputs(rng, 24, -3, 3, dtype, false);
        const Tensor cond = test::make_tensor(vc, cond_shape, kBool, kCPU, layout);
        const Tensor a = test::make_tensor(va, a_shape, dtype, kCPU, layout);
        const Tensor b = test::make_tensor(vb, b_shape, dtype, kCPU, layout);
        const auto ec = test::broadcast_to(vc, cond_shape, out_shape);
        const auto ea = test::broadcast_to(va, a_shape, out_shape);
        std::vector<double> expected(24);
        for (size_t i = 0; i < 24; ++i) expected[i] = ec[i] != 0 ? ea[i] : vb[i];
        const Tensor out = where(cond, a, b);
        EXPECT_EQ(out.dtype(), dtype);
        EXPECT_TRUE(all_close(out, out_shape, expected, test::tolerance_for(dtype)));
      });
    }
  }
}

TEST(Where, ConditionFromComparison) {
  HostRng rng;
  const auto v = rng.uniform(30, -2, 2);
  const Tensor x = test::make_tensor(v, {5, 6}, kF32);
  const Tensor out = where(gt(x, 0.0), x, zeros({1}, kF32));
  std::vector<double> expected = test::round_to_dtype(v, kF32);
  for (double& e : expected) e = e > 0 ? e : 0.0;
  EXPECT_TRUE(all_close(out, {5, 6}, expected, test::tolerance_for(kF32)));
}

// Comparing an integer tensor with a fractional, infinite or NaN scalar is exact, as in PyTorch;
// arithmetic with a fractional scalar still raises.
TEST(Comparisons, IntegerTensorsCompareExactlyWithAnyScalar) {
  for (DType dtype : {DType::I64, DType::I32, DType::U8}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Tensor x = from_vector(std::vector<int64_t>{0, 1, 2}, {3}, kI64).to(dtype);
    EXPECT_EQ(gt(x, 0.5).to(kU8).to_vector<uint8_t>(), (std::vector<uint8_t>{0, 1, 1}));
    EXPECT_EQ(le(x, 1.5).to(kU8).to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1, 0}));
    EXPECT_EQ(eq(x, 1.0000001).to(kU8).to_vector<uint8_t>(), (std::vector<uint8_t>{0, 0, 0}));
    EXPECT_EQ(ne(x, std::nan("")).to(kU8).to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1, 1}));
    EXPECT_EQ(lt(x, std::numeric_limits<double>::infinity()).to(kU8).to_vector<uint8_t>(),
              (std::vector<uint8_t>{1, 1, 1}));
    EXPECT_TRUE(test::raises_error([&] { (void)add(x, 0.5); }, {"not an integer"}));
  }
}

// Clamping an integer tensor to a bound its dtype cannot hold raises (the result would wrap); bounds
// beyond the range on the side nothing reaches are harmless.
TEST(Clamp, IntegerBoundsOutsideTheDtype) {
  const Tensor x = from_vector(std::vector<int64_t>{-5, 0, 7}, {3}, kI64).to(DType::I32);
  EXPECT_TRUE(test::raises_error([&] { (void)clamp_min(x, 3e9); }, {"clamp_min", "cannot store"}));
  EXPECT_TRUE(test::raises_error([&] { (void)clamp_max(x, -3e9); }, {"clamp_max"}));
  EXPECT_TRUE(test::raises_error([&] { (void)clamp(x.to(kU8), 300, 400); }, {"clamp"}));
  EXPECT_EQ(clamp(x, -1e10, 1e10).to(kI64).to_vector<int64_t>(), (std::vector<int64_t>{-5, 0, 7}));
  EXPECT_EQ(clamp_min(x, -3e9).to(kI64).to_vector<int64_t>(), (std::vector<int64_t>{-5, 0, 7}));
  EXPECT_EQ(clamp(x, -1, 2).to(kI64).to_vector<int64_t>(), (std::vector<int64_t>{-1, 0, 2}));
  // In place too, and nothing is written.
  Tensor y = x.to(kU8).clone();
  EXPECT_TRUE(test::raises_error([&] { y.clamp_(300, 400); }, {"clamp_", "cannot store"}));
  EXPECT_EQ(y.to(kI64).to_vector<int64_t>(), x.to(kU8).to(kI64).to_vector<int64_t>());
}

// maximum / minimum with a scalar an integer dtype cannot hold raise instead of wrapping it
// (maximum(u8, 300) gave 44 everywhere, maximum(u8, -1) 255).
TEST(Maximum, IntegerScalarOutsideTheDtypeRaises) {
  const Tensor x = from_vector(std::vector<int64_t>{5, 200}, {2}, kI64).to(kU8);
  EXPECT_TRUE(test::raises_error([&] { (void)maximum(x, 300); }, {"maximum", "300", "does not fit"}));
  EXPECT_TRUE(test::raises_error([&] { (void)maximum(x, -1); }, {"maximum", "-1", "does not fit"}));
  EXPECT_TRUE(test::raises_error([&] { (void)minimum(x, -1); }, {"minimum", "does not fit"}));
  EXPECT_TRUE(test::raises_error([&] { (void)maximum(x.to(DType::I32), 3e9); }, {"maximum", "does not fit"}));
  EXPECT_EQ(maximum(x, 100).to(kI64).to_vector<int64_t>(), (std::vector<int64_t>{100, 200}));
  EXPECT_EQ(minimum(x, 255).to(kI64).to_vector<int64_t>(), (std::vector<int64_t>{5, 200}));
}

}  // namespace
}  // namespace flame
