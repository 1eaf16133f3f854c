// Finite-difference gradient checks (float64, CPU) of the indexing ops of core/ops.h: index_select,
// gather and scatter_add, differentiated with respect to their floating-point inputs only (indices
// get no gradient). Indices repeat, so gradients must accumulate; inputs may be non-contiguous.
#include <fmt/format.h>

#include "support/gradcheck.h"

namespace flame {
namespace {

using test::gradcheck;
using test::HostRng;
using test::Layout;

/// `n` random indices in [0, size) as a tensor of `shape` and `dtype`.
Tensor random_index(HostRng& rng, const Shape& shape, int64_t size, DType dtype = kI64) {
  return test::make_tensor(rng.integers(test::numel_of(shape), 0, size - 1), shape, dtype);
}

TEST(GradcheckIndex, IndexSelect) {
  HostRng rng;
  struct Case {
    Shape x;
    int64_t dim;
    Shape index;  // 1-D or 0-d
  };
  const std::vector<Case> cases{{{4, 3}, 0, {6}}, {{4, 3}, 1, {5}}, {{2, 3, 4}, 1, {4}}, {{2, 3, 4}, -1, {2}},
                                {{5}, 0, {7}},    {{4, 3}, 0, {}},  {{}, 0, {3}},        {{3, 1}, 1, {4}}};
  for (const Case& c : cases) {
    for (DType index_dtype : {kI64, kI32}) {
      for (Layout layout : {Layout::Contiguous, c.x.size() >= 2 ? Layout::Transposed : Layout::Strided}) {
        SCOPED_TRACE(fmt::format("x {} {} dim {} index {} {}", shape_str(c.x), test::layout_name(layout), c.dim,
                                 shape_str(c.index), dtype_name(index_dtype)));
        test::guarded([&] {
          const Tensor x = test::random_f64(rng, c.x, -2, 2, layout);
          // A 0-d x is indexed as if it were [1].
          const int64_t size =
              c.x.empty() ? 1 : c.x[static_cast<size_t>(c.dim < 0 ? c.dim + static_cast<int64_t>(c.x.size()) : c.dim)];
          const Tensor index = random_index(rng, c.index, size, index_dtype);
          EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return index_select(in[0], c.dim, in[1]); },
                                {x, index}, rng));
        });
      }
    }
  }
  SCOPED_TRACE("every row picked twice: the gradient accumulates");
  test::guarded([&] {
    const Tensor x = test::random_f64(rng, {3, 2}, -2, 2);
    const Tensor index = test::make_tensor({2, 0, 1, 0, 2, 1}, {6}, kI64);
    EXPECT_TRUE(
        gradcheck([](const std::vector<Tensor>& in) { return index_select(in[0], 0, in[1]); }, {x, index}, rng));
  });
}

TEST(GradcheckIndex, Gather) {
  HostRng rng;
  struct Case {
    Shape x;
    int64_t dim;
    Shape index;
  };
  const std::vector<Case> cases{
      {{3, 4}, 0, {5, 4}},                             // more rows than x: repeats
      {{3, 4}, 1, {3, 6}},       {{3, 4}, 1, {2, 2}},  // smaller than x outside dim
      {{2, 3, 4}, 2, {2, 3, 3}}, {{2, 3, 4}, -2, {2, 5, 1}}, {{6}, 0, {9}},
  };
  for (const Case& c : cases) {
    for (Layout layout : {Layout::Contiguous, c.x.size() >= 2 ? Layout::Transposed : Layout::Strided}) {
      SCOPED_TRACE(
          fmt::format("x {} {} dim {} index {}", shape_str(c.x), test::layout_name(layout), c.dim, shape_str(c.index)));
      test::guarded([&] {
        const Tensor x = test::random_f64(rng, c.x, -2, 2, layout);
        const int64_t d = c.dim < 0 ? c.dim + static_cast<int64_t>(c.x.size()) : c.dim;
        const Tensor index = random_index(rng, c.index, c.x[static_cast<size_t>(d)]);
        EXPECT_TRUE(
            gradcheck([&](const std::vector<Tensor>& in) { return gather(in[0], c.dim, in[1]); }, {x, index}, rng));
      });
    }
  }
}

TEST(GradcheckIndex, ScatterAdd) {
  HostRng rng;
  struct Case {
    Shape x;
    int64_t dim;
    Shape index, src;
  };
  const std::vector<Case> cases{
      {{3, 4}, 0, {5, 4}, {5, 4}},                                        // more sources than rows: repeats
      {{3, 4}, 1, {3, 6}, {3, 6}},          {{3, 4}, 0, {2, 3}, {4, 5}},  // src larger than index: only the covered
                                                                          // part counts
      {{2, 3, 4}, 1, {2, 4, 4}, {2, 4, 4}}, {{2, 3, 4}, -1, {1, 3, 2}, {2, 3, 2}}, {{5}, 0, {8}, {8}},
  };
  for (const Case& c : cases) {
    for (Layout layout : {Layout::Contiguous, c.x.size() >= 2 ? Layout::Transposed : Layout::Strided}) {
      SCOPED_TRACE(fmt::format("x {} ({}) dim {} index {} src {}", shape_str(c.x), test::layout_name(layout), c.dim,
                               shape_str(c.index), shape_str(c.src)));
      test::guarded([&] {
        const Tensor x = test::random_f64(rng, c.x, -2, 2, layout);
        const Tensor src = test::random_f64(rng, c.src, -2, 2, layout);
        const int64_t d = c.dim < 0 ? c.dim + static_cast<int64_t>(c.x.size()) : c.dim;
        const Tensor index = random_index(rng, c.index, c.x[static_cast<size_t>(d)]);
        EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return scatter_add(in[0], c.dim, in[1], in[2]); },
                              {x, index, src}, rng))
            << "with respect to x and src";
        // Only one of the two floating operands tracked.
        EXPECT_TRUE(
            gradcheck([&](const std::vector<Tensor>& in) { return scatter_add(in[0], c.dim, index, src); }, {x}, rng))
            << "with respect to x only";
        EXPECT_TRUE(
            gradcheck([&](const std::vector<Tensor>& in) { return scatter_add(x, c.dim, index, in[0]); }, {src}, rng))
            << "with respect to src only";
      });
    }
  }
}

TEST(GradcheckIndex, IndicesGetNoGradientAndInPlaceScatterIsRefused) {
  HostRng rng;
  Tensor x = test::random_f64(rng, {3, 4}, -2, 2);
  x.requires_grad_();
  const Tensor index = random_index(rng, {3, 4}, 3);
  const Tensor src = test::random_f64(rng, {3, 4}, -2, 2);
  sum(gather(x, 0, index)).backward();
  EXPECT_FALSE(index.grad().defined());
  EXPECT_FALSE(index.requires_grad());
  // scatter_add_ into a tracked tensor, or from a tracked source, is refused in grad mode.
  EXPECT_TRUE(test::raises_error([&] { scatter_add_(x, 0, index, src); }, {"scatter_add_"}));
  Tensor target = zeros({3, 4}, kF64);
  EXPECT_TRUE(test::raises_error([&] { scatter_add_(target, 0, index, x); }, {"scatter_add_"}));
  {
    autograd::NoGradGuard guard;
    EXPECT_NO_THROW(scatter_add_(target, 0, index, x));
  }
  EXPECT_FALSE(target.requires_grad());
}

}  // namespace
}  // namespace flame
