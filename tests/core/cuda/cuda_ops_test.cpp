// Every op on CUDA against the CPU reference backend on the same inputs (built on the host, then
// laid out on each device the same way, contiguous or not): elementwise, matmul, reductions,
// softmax, joining and indexing, creation, conversions, cross-device copies, and the RNG
// (rand/randint bit-identical, randn within 1e-6). Skips without a CUDA device.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "support/test_support.h"

namespace flame {
namespace {

using test::HostRng;
using test::Layout;
using test::Tolerance;

const Device kGpu = cuda_device(0);

/// One operand: host values, shape, dtype and the layout to build it in on both devices.
struct Input {
  std::vector<double> values;
  Shape shape;
  DType dtype;
  Layout layout = Layout::Contiguous;
};

using MultiOp = std::function<Tensor(const std::vector<Tensor>&)>;

std::vector<Tensor> build(const std::vector<Input>& inputs, Device device) {
  std::vector<Tensor> out;
  for (const Input& in : inputs)
    out.push_back(test::make_tensor(in.values, in.shape, in.dtype, device, in.layout));
  return out;
}

/// Runs `op` on the CPU and on CUDA; the CUDA result must stay on the GPU and match the CPU's.
::testing::AssertionResult matches_cpu(const MultiOp& op, const std::vector<Input>& inputs, Tolerance tol) {
  Tensor expected, actual;
  try {
    expected = op(build(inputs, kCPU));
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure() << "the CPU op threw: " << error.what();
  }
  try {
    actual = op(build(inputs, kGpu));
    if (!actual.defined()) return ::testing::AssertionFailure() << "undefined CUDA result";
    if (actual.device() != kGpu) {
      return ::testing::AssertionFailure() << "the CUDA op returned a tensor on " << actual.device().str();
    }
    return test::tensors_close(actual, expected, tol);
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure() << "the CUDA op threw: " << error.what();
  }
}

std::vector<DType> dtypes_for(bool integer_ok) {
  std::vector<DType> d = test::floating_dtypes();
  if (integer_ok) d.insert(d.end(), {kI32, kI64});
  return d;
}

std::vector<DType> value_dtypes() { return dtypes_for(true); }

class CudaOps : public test::CudaTest {};

// --- elementwise -----------------------------------------------------------------------------------

class CudaUnary : public test::CudaTest, public ::testing::WithParamInterface<test::UnaryCase> {};

TEST_P(CudaUnary, MatchesCpu) {
  const test::UnaryCase& c = GetParam();
  HostRng rng;
  const std::vector<Shape> shapes{{}, {13}, {4, 5}, {2, 3, 7}, {40, 64}, {3000}};
  for (DType dtype : dtypes_for(c.integer_ok)) {
    for (const Shape& shape : shapes) {
      for (Layout layout : test::all_layouts()) {
        SCOPED_TRACE(fmt::format("{} {} {} {}", c.name, dtype_name(dtype), shape_str(shape),
                                 test::layout_name(layout)));
        test::guarded([&] {
          const Input x{test::case_inputs(rng, test::numel_of(shape), c.low, c.high, dtype, c.small_integers),
                        shape, dtype, layout};
          EXPECT_TRUE(matches_cpu([&](const std::vector<Tensor>& t) { return c.op(t[0]); }, {x},
                                  test::tolerance_for(dtype)));
        });
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cuda, CudaUnary, ::testing::ValuesIn(test::unary_cases()),
                         [](const ::testing::TestParamInfo<test::UnaryCase>& info) {
                           return info.param.name;
                         });

class CudaBinary : public test::CudaTest, public ::testing::WithParamInterface<test::BinaryCase> {};

TEST_P(CudaBinary, MatchesCpuWithBroadcasting) {
  const test::BinaryCase& c = GetParam();
  HostRng rng;
  const auto& layouts = test::all_layouts();
  const auto& pairs = test::broadcast_shape_pairs();
  for (DType dtype : dtypes_for(c.integer_ok)) {
    for (size_t p = 0; p < pairs.size(); ++p) {
      for (size_t l = 0; l < layouts.size(); ++l) {
        const auto& [sa, sb] = pairs[p];
        SCOPED_TRACE(fmt::format("{} {} {} {} / {} {}", c.name, dtype_name(dtype), shape_str(sa),
                                 test::layout_name(layouts[l]), shape_str(sb),
                                 test::layout_name(layouts[(l + p) % layouts.size()])));
        test::guarded([&] {
          const Input a{
              test::case_inputs(rng, test::numel_of(sa), c.a_low, c.a_high, dtype, c.small_integers), sa,
              dtype, layouts[l]};
          const Input b{
              test::case_inputs(rng, test::numel_of(sb), c.b_low, c.b_high, dtype, c.small_integers), sb,
              dtype, layouts[(l + p) % layouts.size()]};
          EXPECT_TRUE(matches_cpu([&](const std::vector<Tensor>& t) { return c.op(t[0], t[1]); }, {a, b},
                                  test::tolerance_for(dtype)));
        });
      }
    }
  }
}

TEST_P(CudaBinary, MatchesCpuWithExpandedOperand) {
  const test::BinaryCase& c = GetParam();
  HostRng rng;
  for (DType dtype : dtypes_for(c.integer_ok)) {
    SCOPED_TRACE(fmt::format("{} {}", c.name, dtype_name(dtype)));
    test::guarded([&] {
      const Input a{test::case_inputs(rng, 3, c.a_low, c.a_high, dtype, c.small_integers), {3, 1}, dtype};
      const Input b{test::case_inputs(rng, 12, c.b_low, c.b_high, dtype, c.small_integers),
                    {3, 4},
                    dtype,
                    Layout::Transposed};
      EXPECT_TRUE(matches_cpu(
          [&](const std::vector<Tensor>& t) {
            return c.op(t[0].expand({2, 3, 4}), t[1]);
          },
          {a, b}, test::tolerance_for(dtype)));
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Cuda, CudaBinary, ::testing::ValuesIn(test::binary_cases()),
                         [](const ::testing::TestParamInfo<test::BinaryCase>& info) {
                           return info.param.name;
                         });

TEST_F(CudaOps, InPlaceBinaryOnViews) {
  HostRng rng;
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const Input a{test::case_inputs(rng, 15, -3, 3, dtype, false), {3, 5}, dtype, Layout::Transposed};
      const Input b{test::case_inputs(rng, 5, 0.5, 3, dtype, false), {5}, dtype, Layout::Strided};
      const Tolerance tol = test::tolerance_for(dtype);
      EXPECT_TRUE(matches_cpu(
          [](const std::vector<Tensor>& t) {
            Tensor x = t[0];
            x.add_(t[1]);
            return x;
          },
          {a, b}, tol));
      EXPECT_TRUE(matches_cpu(
          [](const std::vector<Tensor>& t) {
            Tensor x = t[0];
            x.sub_(t[1]);
            return x;
          },
          {a, b}, tol));
      EXPECT_TRUE(matches_cpu(
          [](const std::vector<Tensor>& t) {
            Tensor x = t[0];
            x.mul_(t[1]);
            return x;
          },
          {a, b}, tol));
      EXPECT_TRUE(matches_cpu(
          [](const std::vector<Tensor>& t) {
            Tensor x = t[0];
            x.div_(t[1]);
            return x;
          },
          {a, b}, tol));
      EXPECT_TRUE(matches_cpu(
          [](const std::vector<Tensor>& t) {
            Tensor x = t[0];
            x.mul_(x);
            return x;
          },
          {a}, tol));
    });
  }
}

// Integer tensors compared with a fractional, infinite or NaN scalar (the kernels compare in double).
TEST_F(CudaOps, IntegerComparisonsWithAnyScalar) {
  HostRng rng;
  for (DType dtype : {DType::I64, DType::I32, DType::U8}) {
    const Input x{test::case_inputs(rng, 24, 0, 9, dtype, true), {4, 6}, dtype, Layout::Transposed};
    for (double scalar : {0.5, 3.25, -1.5, 1e30, std::numeric_limits<double>::infinity(), std::nan("")}) {
      SCOPED_TRACE(fmt::format("{} vs {}", dtype_name(dtype), scalar));
      EXPECT_TRUE(matches_cpu([&](const std::vector<Tensor>& t) { return gt(t[0], scalar); }, {x}, {}));
      EXPECT_TRUE(matches_cpu([&](const std::vector<Tensor>& t) { return le(t[0], scalar); }, {x}, {}));
      EXPECT_TRUE(matches_cpu([&](const std::vector<Tensor>& t) { return ne(t[0], scalar); }, {x}, {}));
    }
  }
}

TEST_F(CudaOps, Where) {
  HostRng rng;
  for (DType dtype : value_dtypes()) {
    for (Layout layout : test::all_layouts()) {
      SCOPED_TRACE(fmt::format("{} {}", dtype_name(dtype), test::layout_name(layout)));
      test::guarded([&] {
        const Input cond{rng.integers(3, 0, 1), {3, 1}, kBool, layout};
        const Input a{test::case_inputs(rng, 4, -3, 3, dtype, false), {4}, dtype, layout};
        const Input b{test::case_inputs(rng, 24, -3, 3, dtype, false), {2, 3, 4}, dtype, layout};
        EXPECT_TRUE(matches_cpu([](const std::vector<Tensor>& t) { return where(t[0], t[1], t[2]); },
                                {cond, a, b}, Tolerance{0, 0}));
      });
    }
  }
}

// --- matmul ------------------------------------------------------------------------------------

TEST_F(CudaOps, Matmul) {
  struct Shapes {
    Shape a, b;
  };
  const std::vector<Shapes> cases{
      {{5}, {5}},
      {{5}, {5, 3}},
      {{4, 5}, {5}},
      {{4, 5}, {5, 3}},
      {{64, 64}, {64, 64}},
      {{33, 17}, {17, 9}},
      {{2, 4, 5}, {2, 5, 3}},
      {{3, 33, 17}, {17, 9}},
      {{4, 5}, {3, 5, 2}},
      {{2, 1, 4, 5}, {3, 5, 6}},
      {{1, 1}, {1, 1}},
  };
  HostRng rng;
  const auto& layouts = test::all_layouts();
  for (DType dtype : test::floating_dtypes()) {
    for (size_t s = 0; s < cases.size(); ++s) {
      for (size_t l = 0; l < layouts.size(); ++l) {
        const Shapes& c = cases[s];
        const Layout la = layouts[l], lb = layouts[(l + s) % layouts.size()];
        SCOPED_TRACE(fmt::format("{} {} ({}) @ {} ({})", dtype_name(dtype), shape_str(c.a),
                                 test::layout_name(la), shape_str(c.b), test::layout_name(lb)));
        test::guarded([&] {
          const Input a{test::case_inputs(rng, test::numel_of(c.a), -1, 1, dtype, false), c.a, dtype, la};
          const Input b{test::case_inputs(rng, test::numel_of(c.b), -1, 1, dtype, false), c.b, dtype, lb};
          const double k = static_cast<double>(c.a.back());
          EXPECT_TRUE(matches_cpu([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); }, {a, b},
                                  test::tolerance_for(dtype).scaled(std::max(1.0, std::sqrt(k)))));
        });
      }
    }
    SCOPED_TRACE(fmt::format("{} expanded batch", dtype_name(dtype)));
    test::guarded([&] {
      const Input a{test::case_inputs(rng, 20, -1, 1, dtype, false), {1, 4, 5}, dtype};
      const Input b{test::case_inputs(rng, 90, -1, 1, dtype, false), {3, 5, 6}, dtype, Layout::Transposed};
      EXPECT_TRUE(matches_cpu(
          [](const std::vector<Tensor>& t) {
            return matmul(t[0].expand({3, 4, 5}), t[1]);
          },
          {a, b}, test::tolerance_for(dtype).scaled(3)));
    });
  }
}

// --- reductions and softmax ------------------------------------------------------------------------

struct CudaReduction {
  std::string name;
  std::function<Tensor(const Tensor&, int64_t dim, bool keepdim)> op;  // dim < -100: all dims
  bool integer_ok = false;
  bool small_integers = false;
  bool exact = false;
};

std::vector<CudaReduction> cuda_reductions() {
  const auto dims_of = [](int64_t dim) {
    return dim < -100 ? std::vector<int64_t>{} : std::vector<int64_t>{dim};
  };
  return {
      {"sum", [=](const Tensor& x, int64_t d, bool k) { return sum(x, dims_of(d), k); }},
      {"mean", [=](const Tensor& x, int64_t d, bool k) { return mean(x, dims_of(d), k); }},
      {"var", [=](const Tensor& x, int64_t d, bool k) { return var(x, dims_of(d), 1, k); }},
      {"var_correction_0", [=](const Tensor& x, int64_t d, bool k) { return var(x, dims_of(d), 0, k); }},
      {"max", [](const Tensor& x, int64_t d, bool k) { return d < -100 ? max(x) : max(x, d, k); }, true,
       false, true},
      {"min", [](const Tensor& x, int64_t d, bool k) { return d < -100 ? min(x) : min(x, d, k); }, true,
       false, true},
      {"argmax", [](const Tensor& x, int64_t d, bool k) { return argmax(x, d < -100 ? 0 : d, k); }, true,
       true, true},
      {"softmax", [](const Tensor& x, int64_t d, bool) { return softmax(x, d < -100 ? -1 : d); }},
      {"log_softmax", [](const Tensor& x, int64_t d, bool) { return log_softmax(x, d < -100 ? 0 : d); }},
  };
}

void PrintTo(const CudaReduction& c, std::ostream* os) { *os << c.name; }

class CudaReduce : public test::CudaTest, public ::testing::WithParamInterface<CudaReduction> {};

TEST_P(CudaReduce, MatchesCpu) {
  const CudaReduction& c = GetParam();
  HostRng rng;
  const std::vector<Shape> shapes{{7}, {4, 6}, {2, 3, 5}, {3, 4, 5, 2}, {8, 300}, {3, 5000}, {2, 3000, 3}};
  for (DType dtype : dtypes_for(c.integer_ok)) {
    for (const Shape& shape : shapes) {
      const int64_t nd = static_cast<int64_t>(shape.size());
      std::vector<int64_t> dims{-1000};  // all dims
      for (int64_t d = -1; d < nd; ++d) dims.push_back(d);
      for (int64_t dim : dims) {
        for (bool keepdim : {false, true}) {
          for (Layout layout : test::all_layouts()) {
            SCOPED_TRACE(fmt::format("{} {} {} dim {} keepdim {} {}", c.name, dtype_name(dtype),
                                     shape_str(shape), dim < -100 ? std::string("all") : std::to_string(dim),
                                     keepdim, test::layout_name(layout)));
            test::guarded([&] {
              const Input x{test::case_inputs(rng, test::numel_of(shape), -3, 3, dtype, c.small_integers),
                            shape, dtype, layout};
              const double n = dim < -100 ? static_cast<double>(test::numel_of(shape))
                                          : static_cast<double>(shape[dim < 0 ? dim + nd : dim]);
              const Tolerance tol =
                  c.exact ? Tolerance{0, 0} : test::tolerance_for(dtype).scaled(std::sqrt(n));
              EXPECT_TRUE(matches_cpu([&](const std::vector<Tensor>& t) { return c.op(t[0], dim, keepdim); },
                                      {x}, tol));
            });
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cuda, CudaReduce, ::testing::ValuesIn(cuda_reductions()),
                         [](const ::testing::TestParamInfo<CudaReduction>& info) { return info.param.name; });

TEST_F(CudaOps, MaxMinPropagateNaNAndLargeSoftmaxIsStable) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const Input x{{1, nan, 3, -4, 2, 0}, {2, 3}, dtype};
      EXPECT_TRUE(
          matches_cpu([](const std::vector<Tensor>& t) { return max(t[0], 1); }, {x}, Tolerance{0, 0}));
      EXPECT_TRUE(
          matches_cpu([](const std::vector<Tensor>& t) { return min(t[0], 0); }, {x}, Tolerance{0, 0}));
      EXPECT_TRUE(matches_cpu([](const std::vector<Tensor>& t) { return max(t[0]); }, {x}, Tolerance{0, 0}));
      const Input big{test::round_to_dtype({1000, 1001, 999, 1000, -1000, 0, 50, 80}, dtype), {2, 4}, dtype};
      EXPECT_TRUE(matches_cpu([](const std::vector<Tensor>& t) { return softmax(t[0], 1); }, {big},
                              test::tolerance_for(dtype)));
      EXPECT_TRUE(matches_cpu([](const std::vector<Tensor>& t) { return log_softmax(t[0], 1); }, {big},
                              test::tolerance_for(dtype)));
    });
  }
}

// --- joining and indexing ------------------------------------------------------------------------

TEST_F(CudaOps, CatAndStack) {
  HostRng rng;
  for (DType dtype : value_dtypes()) {
    for (int64_t dim = -1; dim < 3; ++dim) {
      SCOPED_TRACE(fmt::format("{} dim {}", dtype_name(dtype), dim));
      test::guarded([&] {
        const int64_t d = dim < 0 ? dim + 3 : dim;
        std::vector<Input> parts;
        for (int64_t i = 0; i < 3; ++i) {
          Shape s{2, 3, 4};
          s[d] = 1 + 2 * i;
          parts.push_back({test::case_inputs(rng, test::numel_of(s), -9, 9, dtype, false), s, dtype,
                           test::all_layouts()[i + 1]});
        }
        EXPECT_TRUE(
            matches_cpu([&](const std::vector<Tensor>& t) { return cat(t, dim); }, parts, Tolerance{0, 0}));
        std::vector<Input> same;
        for (int64_t i = 0; i < 3; ++i) {
          same.push_back({test::case_inputs(rng, 24, -9, 9, dtype, false),
                          {2, 3, 4},
                          dtype,
                          test::all_layouts()[i + 1]});
        }
        EXPECT_TRUE(
            matches_cpu([&](const std::vector<Tensor>& t) { return stack(t, dim); }, same, Tolerance{0, 0}));
        EXPECT_TRUE(
            matches_cpu([&](const std::vector<Tensor>& t) { return stack(t, 3); }, same, Tolerance{0, 0}));
      });
    }
  }
}

TEST_F(CudaOps, IndexSelectGatherScatterAdd) {
  HostRng rng;
  const Shape shape{4, 5, 6};
  for (DType dtype : value_dtypes()) {
    for (int64_t dim = -1; dim < 3; ++dim) {
      for (Layout layout : test::all_layouts()) {
        SCOPED_TRACE(fmt::format("{} dim {} {}", dtype_name(dtype), dim, test::layout_name(layout)));
        test::guarded([&] {
          const int64_t d = dim < 0 ? dim + 3 : dim;
          const Input x{test::case_inputs(rng, 120, -3, 3, dtype, false), shape, dtype, layout};
          for (DType index_dtype : {kI64, kI32}) {
            const Input idx{rng.integers(9, 0, shape[d] - 1), {9}, index_dtype, layout};
            EXPECT_TRUE(
                matches_cpu([&](const std::vector<Tensor>& t) { return index_select(t[0], dim, t[1]); },
                            {x, idx}, Tolerance{0, 0}));
          }
          Shape index_shape = shape;
          index_shape[d] = 7;
          const Input gidx{rng.integers(test::numel_of(index_shape), 0, shape[d] - 1), index_shape, kI64,
                           layout};
          EXPECT_TRUE(matches_cpu([&](const std::vector<Tensor>& t) { return gather(t[0], dim, t[1]); },
                                  {x, gidx}, Tolerance{0, 0}));
          const Input src{test::case_inputs(rng, test::numel_of(index_shape), -3, 3, dtype, false),
                          index_shape, dtype, layout};
          const Tolerance tol = test::tolerance_for(dtype).scaled(4);  // atomics add in another order
          EXPECT_TRUE(
              matches_cpu([&](const std::vector<Tensor>& t) { return scatter_add(t[0], dim, t[1], t[2]); },
                          {x, gidx, src}, tol));
          EXPECT_TRUE(matches_cpu(
              [&](const std::vector<Tensor>& t) {
                Tensor target = t[0];
                scatter_add_(target, dim, t[1], t[2]);
                return t[0];
              },
              {x, gidx, src}, tol));
        });
      }
    }
  }
}

// --- creation, conversion, copies --------------------------------------------------------------------

TEST_F(CudaOps, CreationOnTheDevice) {
  for (DType dtype : {kF64, kF32, kF16, kBF16, kI32, kI64, kU8, kBool}) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const TensorOptions gpu(dtype, kGpu), cpu(dtype, kCPU);
      EXPECT_EQ(empty({3, 4}, gpu).device(), kGpu);
      EXPECT_EQ(empty({3, 4}, gpu).dtype(), dtype);
      EXPECT_TRUE(test::tensors_close(zeros({3, 4}, gpu), zeros({3, 4}, cpu), Tolerance{0, 0}));
      EXPECT_TRUE(test::tensors_close(ones({5}, gpu), ones({5}, cpu), Tolerance{0, 0}));
      EXPECT_TRUE(test::tensors_close(full({2, 3}, 1.0, gpu), full({2, 3}, 1.0, cpu), Tolerance{0, 0}));
    });
  }
  for (DType dtype : value_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const TensorOptions gpu(dtype, kGpu), cpu(dtype, kCPU);
      EXPECT_TRUE(test::tensors_close(full({1000}, -2.0, gpu), full({1000}, -2.0, cpu), Tolerance{0, 0}));
      EXPECT_TRUE(test::tensors_close(arange(0, 1000, 3, gpu), arange(0, 1000, 3, cpu), Tolerance{0, 0}));
      EXPECT_TRUE(test::tensors_close(arange(17.0, gpu), arange(17.0, cpu), Tolerance{0, 0}));
      const Tensor v = from_vector(std::vector<double>{1, -2, 3, 4, 5, 6}, {2, 3}, gpu);
      EXPECT_EQ(v.device(), kGpu);
      EXPECT_TRUE(test::tensors_close(v, from_vector(std::vector<double>{1, -2, 3, 4, 5, 6}, {2, 3}, cpu),
                                      Tolerance{0, 0}));
    });
  }
  EXPECT_TRUE(test::tensors_close(arange(0.0, 1.0, 0.1, TensorOptions(kF64, kGpu)),
                                  arange(0.0, 1.0, 0.1, TensorOptions(kF64, kCPU)),
                                  test::tolerance_for(kF64)));
  EXPECT_TRUE(test::tensors_close(full({7}, 0.1, TensorOptions(kF16, kGpu)),
                                  full({7}, 0.1, TensorOptions(kF16, kCPU)), Tolerance{0, 0}));
}

TEST_F(CudaOps, ConversionsBetweenEveryDtype) {
  HostRng rng;
  const std::vector<DType> dtypes{kF64, kF32, kF16, kBF16, kI32, kI64, kU8, kBool};
  for (DType from : dtypes) {
    for (DType to : dtypes) {
      for (Layout layout : {Layout::Contiguous, Layout::Transposed}) {
        SCOPED_TRACE(fmt::format("{} -> {} {}", dtype_name(from), dtype_name(to), test::layout_name(layout)));
        test::guarded([&] {
          // In range for every target: u8 gets non-negative values; fractions truncate toward zero.
          std::vector<double> v = from == kBool ? rng.integers(24, 0, 1) : rng.uniform(24, 0, 100);
          if (from != kBool && from != kU8 && to != kU8) {
            for (size_t i = 0; i < v.size(); i += 2) v[i] = -v[i];
          }
          v[0] = 0.0;
          v = test::round_to_dtype(v, from);
          const Input x{v, {4, 6}, from, layout};
          EXPECT_TRUE(
              matches_cpu([to](const std::vector<Tensor>& t) { return t[0].to(to); }, {x}, Tolerance{0, 0}));
        });
      }
    }
  }
}

// f64 and integer values round once to f16 and bf16 on CUDA, as on the CPU (float_rounded_to_odd,
// core/dtype.h): values just above a midpoint, which the nearest float turns into the midpoint.
TEST_F(CudaOps, ConversionsToHalfAndBf16RoundOnceAsOnTheCpu) {
  HostRng rng;
  std::vector<double> doubles{1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40),
                              -(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)),
                              1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40), 1e39, -1e39, 0.0, -0.0,
                              std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                              std::ldexp(1.0, -140) * (1.0 + std::ldexp(1.0, -30)),  // a float subnormal
                              -std::ldexp(1.0, -160),                                // below every float: -0
                              std::ldexp(1.0, -24) * (1.5 + std::ldexp(1.0, -40)),   // an f16 subnormal, above a tie
                              65520.0 - std::ldexp(1.0, -30)};                       // just below f16's overflow
  for (double v : rng.uniform(19, -1e5, 1e5)) doubles.push_back(v);
  std::vector<int64_t> integers{(int64_t{1} << 24) + (int64_t{1} << 16) + 1, -((int64_t{1} << 24) + (int64_t{1} << 16) + 1),
                                (int64_t{1} << 24) + 1, std::numeric_limits<int64_t>::max(),
                                std::numeric_limits<int64_t>::min(), (int64_t{1} << 40) + (int64_t{1} << 32) + 7};
  for (double v : rng.uniform(26, -1e12, 1e12)) integers.push_back(static_cast<int64_t>(v));
  const Tensor f64 = from_vector<double>(doubles, {32}, kF64);
  const Tensor i64 = from_vector<int64_t>(integers, {32}, kI64);
  std::vector<int32_t> narrow{(1 << 24) + (1 << 16) + 1, -((1 << 24) + (1 << 16) + 1), (1 << 24) + 3,
                              std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
  for (double v : rng.uniform(27, -2e9, 2e9)) narrow.push_back(static_cast<int32_t>(v));
  const Tensor i32 = from_vector<int32_t>(narrow, {32}, kI32);
  for (const auto& [name, input] : {std::pair{"f64", f64}, std::pair{"i64", i64}, std::pair{"i32", i32}}) {
    for (const DType to : {kBF16, kF16}) {
      SCOPED_TRACE(fmt::format("{} -> {}", name, dtype_name(to)));
      // Widening to f32 is exact and keeps the sign of zero: compare the bits.
      const std::vector<float> cpu = input.to(to).to(kF32).to_vector<float>();
      const std::vector<float> gpu = input.to(kGpu).to(to).to(kCPU).to(kF32).to_vector<float>();
      ASSERT_EQ(cpu.size(), gpu.size());
      for (size_t i = 0; i < cpu.size(); ++i) {
        uint32_t cpu_bits = 0, gpu_bits = 0;
        std::memcpy(&cpu_bits, &cpu[i], sizeof cpu_bits);
        std::memcpy(&gpu_bits, &gpu[i], sizeof gpu_bits);
        EXPECT_EQ(cpu_bits, gpu_bits) << "element " << i << ": cpu " << cpu[i] << ", cuda " << gpu[i];
      }
    }
  }
  // A double scalar filled into bf16 rounds once too.
  EXPECT_EQ(full({4}, doubles[0], TensorOptions(kBF16, kGpu)).to(kCPU).to(kF32).to_vector<float>(),
            std::vector<float>(4, 1.0f + std::ldexp(1.0f, -7)));
}

TEST_F(CudaOps, ViewsCopiesAndCrossDeviceTransfers) {
  HostRng rng;
  const auto v = rng.uniform(60, -5, 5);
  const Tensor host = test::make_tensor(v, {3, 4, 5}, kF32);
  const Tensor dev = host.to(kGpu);
  EXPECT_EQ(dev.device(), kGpu);
  EXPECT_TRUE(dev.is_contiguous());
  EXPECT_TRUE(test::tensors_close(dev, host, Tolerance{0, 0}));
  EXPECT_TRUE(dev.to(kGpu).is_same(dev));
  // Non-contiguous CUDA views read back in row-major order, through to() and to_vector().
  const Tensor view = dev.permute({2, 0, 1}).slice(1, 0, 3, 2).narrow(2, 1, 3);
  const Tensor host_view = host.permute({2, 0, 1}).slice(1, 0, 3, 2).narrow(2, 1, 3);
  EXPECT_TRUE(test::tensors_close(view.to(kCPU), host_view, Tolerance{0, 0}));
  EXPECT_EQ(view.to_vector<float>(), host_view.to_vector<float>());
  EXPECT_TRUE(test::tensors_close(view.contiguous(), host_view.contiguous(), Tolerance{0, 0}));
  EXPECT_TRUE(test::tensors_close(view.clone(), host_view.clone(), Tolerance{0, 0}));
  EXPECT_TRUE(test::tensors_close(view.reshape({-1}), host_view.reshape({-1}), Tolerance{0, 0}));
  EXPECT_TRUE(view.contiguous().is_contiguous());
  EXPECT_EQ(view.contiguous().device(), kGpu);
  EXPECT_EQ(dev.select(0, 1).select(0, 2).select(0, 3).item(),
            host.select(0, 1).select(0, 2).select(0, 3).item());

  // Writes into CUDA views: fill_ and copy_ from the host (broadcast, dtype conversion).
  Tensor dev_target = zeros({4, 6}, TensorOptions(kF32, kGpu));
  Tensor host_target = zeros({4, 6}, kF32);
  dev_target.narrow(1, 1, 3).fill_(2.5);
  host_target.narrow(1, 1, 3).fill_(2.5);
  const Tensor row = test::make_tensor(rng.uniform(4, -1, 1), {4, 1}, kF64);
  dev_target.slice(1, 0, 6, 2).copy_(row);  // host f64 -> CUDA f32 view, broadcast over columns
  host_target.slice(1, 0, 6, 2).copy_(row);
  EXPECT_TRUE(test::tensors_close(dev_target, host_target, Tolerance{0, 0}));
  // CUDA -> host view copy.
  Tensor host_dst = zeros({6, 4}, kF32);
  host_dst.t().copy_(dev_target);
  EXPECT_TRUE(test::tensors_close(host_dst.t(), host_target, Tolerance{0, 0}));
  // CUDA -> CUDA copy into a transposed view.
  Tensor dev_dst = zeros({6, 4}, TensorOptions(kF64, kGpu));
  dev_dst.t().copy_(dev_target);
  EXPECT_TRUE(test::tensors_close(dev_dst.t().to(kF32), host_target, Tolerance{0, 0}));
  EXPECT_EQ(dev_dst.device(), kGpu);
}

TEST_F(CudaOps, ZeroSizeTensors) {
  const Input empty_rows{{}, {0, 3}, kF32};
  const Input row{{1, 2, 3}, {3}, kF32};
  EXPECT_TRUE(matches_cpu([](const std::vector<Tensor>& t) { return add(t[0], t[1]); }, {empty_rows, row},
                          Tolerance{0, 0}));
  EXPECT_TRUE(matches_cpu([](const std::vector<Tensor>& t) { return sum(t[0], {0}); }, {empty_rows},
                          Tolerance{0, 0}));
  EXPECT_TRUE(matches_cpu([](const std::vector<Tensor>& t) { return matmul(t[0].t(), t[0]); }, {empty_rows},
                          Tolerance{0, 0}));
  EXPECT_TRUE(matches_cpu(
      [](const std::vector<Tensor>& t) {
        return cat({t[0], t[1].unsqueeze(0)});
      },
      {empty_rows, row}, Tolerance{0, 0}));
}

// --- random numbers --------------------------------------------------------------------------------

TEST_F(CudaOps, RandAndRandintAreBitIdenticalToCpu) {
  const uint64_t seed = test::test_seed();
  for (const Shape& shape : std::vector<Shape>{{1}, {7}, {1001}, {33, 65}}) {
    for (DType dtype : test::floating_dtypes()) {
      SCOPED_TRACE(fmt::format("rand {} {}", dtype_name(dtype), shape_str(shape)));
      test::guarded([&] {
        Generator g_cpu(seed), g_gpu(seed);
        g_cpu.set_offset(3);
        g_gpu.set_offset(3);
        const Tensor a = rand(shape, TensorOptions(dtype, kCPU), &g_cpu);
        const Tensor b = rand(shape, TensorOptions(dtype, kGpu), &g_gpu);
        EXPECT_EQ(b.device(), kGpu);
        EXPECT_TRUE(test::tensors_identical(b, a));
        EXPECT_EQ(g_gpu.offset(), g_cpu.offset());
      });
    }
    for (DType dtype : {kI64, kI32}) {
      SCOPED_TRACE(fmt::format("randint {} {}", dtype_name(dtype), shape_str(shape)));
      test::guarded([&] {
        Generator g_cpu(seed), g_gpu(seed);
        const Tensor a = randint(-50, 1000, shape, TensorOptions(dtype, kCPU), &g_cpu);
        const Tensor b = randint(-50, 1000, shape, TensorOptions(dtype, kGpu), &g_gpu);
        EXPECT_TRUE(test::tensors_identical(b, a));
        EXPECT_EQ(g_gpu.offset(), g_cpu.offset());
      });
    }
  }
}

TEST_F(CudaOps, RandnMatchesCpuWithin1e6) {
  const uint64_t seed = test::test_seed();
  for (const Shape& shape : std::vector<Shape>{{1}, {7}, {1001}, {33, 65}}) {
    for (DType dtype : test::floating_dtypes()) {
      SCOPED_TRACE(fmt::format("randn {} {}", dtype_name(dtype), shape_str(shape)));
      test::guarded([&] {
        Generator g_cpu(seed), g_gpu(seed);
        const Tensor a = randn(shape, TensorOptions(dtype, kCPU), &g_cpu);
        const Tensor b = randn(shape, TensorOptions(dtype, kGpu), &g_gpu);
        // f16 / bf16 round once on store: a 1e-6 difference before rounding may flip one ulp.
        const Tolerance tol =
            dtype == kF32 || dtype == kF64 ? Tolerance{1e-6, 1e-6} : test::tolerance_for(dtype);
        EXPECT_TRUE(test::tensors_close(b, a, tol));
        EXPECT_EQ(g_gpu.offset(), g_cpu.offset());
      });
    }
  }
}

TEST_F(CudaOps, DefaultGeneratorsFollowManualSeed) {
  const uint64_t seed = test::test_seed();
  manual_seed(seed);
  const Tensor c1 = rand({100}, TensorOptions(kF32, kCPU));
  const Tensor c2 = randn({10}, TensorOptions(kF32, kCPU));
  manual_seed(seed);
  EXPECT_EQ(default_generator(kGpu).offset(), 0u);
  EXPECT_EQ(default_generator(kGpu).seed(), seed);
  const Tensor g1 = rand({100}, TensorOptions(kF32, kGpu));
  const Tensor g2 = randn({10}, TensorOptions(kF32, kGpu));
  EXPECT_TRUE(test::tensors_identical(g1, c1));
  EXPECT_TRUE(test::tensors_close(g2, c2, Tolerance{1e-6, 1e-6}));
  EXPECT_EQ(default_generator(kGpu).offset(), 25u + 5u);
}

}  // namespace
}  // namespace flame
