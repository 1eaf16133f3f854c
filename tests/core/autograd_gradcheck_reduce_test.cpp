// Finite-difference gradient checks (float64, CPU) of the reductions of core/ops.h (sum, mean, var,
// max/min along a dim and over everything, softmax, log_softmax) over single and multiple dims, with
// and without keepdim, on contiguous and transposed inputs; and of matmul in every rank combination
// (1-D, 2-D, batched, broadcast batch dims, non-contiguous operands).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "support/gradcheck.h"

namespace flame {
namespace {

using test::gradcheck;
using test::HostRng;
using test::Layout;

using Dims = std::vector<int64_t>;

struct DimsCase {
  Shape shape;
  Dims dims;
};

/// Reduction shapes and dim lists: all dims, one dim (first, middle, negative), several dims.
const std::vector<DimsCase> kDimsCases{
    {{3, 4}, {}},        {{3, 4}, {0}},        {{3, 4}, {1}}, {{3, 4}, {-1}}, {{3, 4}, {0, 1}}, {{2, 3, 4}, {1}},
    {{2, 3, 4}, {0, 2}}, {{2, 3, 4}, {-1, 0}}, {{5}, {0}},    {{}, {}},       {{3, 1, 2}, {1}}, {{}, {0}},
};

/// Layouts worth checking for a shape (Transposed needs 2 dims).
std::vector<Layout> layouts_for(const Shape& shape) {
  if (shape.size() >= 2) return {Layout::Contiguous, Layout::Transposed};
  return {Layout::Contiguous, Layout::Strided};
}

TEST(GradcheckReduce, SumAndMean) {
  HostRng rng;
  for (const DimsCase& c : kDimsCases) {
    for (bool keepdim : {false, true}) {
      for (Layout layout : layouts_for(c.shape)) {
        SCOPED_TRACE(fmt::format("{} dims [{}] keepdim {} {}", shape_str(c.shape), fmt::join(c.dims, ", "), keepdim,
                                 test::layout_name(layout)));
        test::guarded([&] {
          const Tensor x = test::random_f64(rng, c.shape, -2, 2, layout);
          EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return sum(in[0], c.dims, keepdim); }, {x}, rng))
              << "sum";
          EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return mean(in[0], c.dims, keepdim); }, {x}, rng))
              << "mean";
        });
      }
    }
  }
  SCOPED_TRACE("Tensor::sum / Tensor::mean members");
  test::guarded([&] {
    const Tensor x = test::random_f64(rng, {3, 4}, -2, 2);
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return in[0].sum(); }, {x}, rng));
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return in[0].sum({1}, true); }, {x}, rng));
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return in[0].mean(); }, {x}, rng));
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return in[0].mean({0}); }, {x}, rng));
  });
}

TEST(GradcheckReduce, Var) {
  HostRng rng;
  for (const DimsCase& c : kDimsCases) {
    int64_t reduced = 1;  // elements per result
    for (size_t d = 0; d < c.shape.size(); ++d) {
      const bool in_dims =
          c.dims.empty() || std::find_if(c.dims.begin(), c.dims.end(), [&](int64_t k) {
                              return (k < 0 ? k + static_cast<int64_t>(c.shape.size()) : k) == static_cast<int64_t>(d);
                            }) != c.dims.end();
      if (in_dims) reduced *= c.shape[d];
    }
    for (int64_t correction : {0, 1}) {
      if (reduced <= correction || reduced == 1) continue;  // no spread: the variance is 0/0
      for (bool keepdim : {false, true}) {
        SCOPED_TRACE(fmt::format("{} dims [{}] correction {} keepdim {}", shape_str(c.shape), fmt::join(c.dims, ", "),
                                 correction, keepdim));
        test::guarded([&] {
          const Tensor x = test::random_f64(rng, c.shape, -2, 2, layouts_for(c.shape).back());
          EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return var(in[0], c.dims, correction, keepdim); },
                                {x}, rng));
        });
      }
    }
  }
}

TEST(GradcheckReduce, MaxAndMin) {
  HostRng rng;
  const std::vector<std::pair<Shape, int64_t>> cases{{{5}, 0},        {{3, 4}, 0}, {{3, 4}, 1}, {{2, 3, 4}, 1},
                                                     {{2, 3, 4}, -1}, {{3, 1}, 1}, {{}, 0}};
  for (const auto& [shape, dim] : cases) {
    for (bool keepdim : {false, true}) {
      for (Layout layout : layouts_for(shape)) {
        SCOPED_TRACE(fmt::format("{} dim {} keepdim {} {}", shape_str(shape), dim, keepdim, test::layout_name(layout)));
        test::guarded([&] {
          // Distinct values: the arg-extremum is unique and no +-eps step changes it.
          const Tensor x =
              test::make_tensor(test::distinct_values(rng, test::numel_of(shape)), shape, kF64, kCPU, layout);
          EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return max(in[0], dim, keepdim); }, {x}, rng))
              << "max";
          EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return min(in[0], dim, keepdim); }, {x}, rng))
              << "min";
        });
      }
    }
  }
  for (const Shape& shape : {Shape{}, Shape{6}, Shape{3, 4}, Shape{2, 3, 2}}) {
    SCOPED_TRACE(fmt::format("max()/min() of {}", shape_str(shape)));
    test::guarded([&] {
      const Tensor x = test::make_tensor(test::distinct_values(rng, test::numel_of(shape)), shape, kF64);
      EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return max(in[0]); }, {x}, rng)) << "max";
      EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return min(in[0]); }, {x}, rng)) << "min";
    });
  }
  SCOPED_TRACE("ties share the gradient evenly (Note [max and min backward])");
  test::guarded([&] {
    Tensor t = test::make_tensor({1, 3, 3, 2, 2, 2}, {2, 3}, kF64);
    t.requires_grad_();
    sum(max(t, 1)).backward();
    EXPECT_TRUE(test::all_close(t.grad(), {2, 3}, {0, 0.5, 0.5, 1.0 / 3, 1.0 / 3, 1.0 / 3}, test::tolerance_for(kF64)));
    t.set_grad(Tensor());
    min(t).backward();
    EXPECT_TRUE(test::all_close(t.grad(), {2, 3}, {1, 0, 0, 0, 0, 0}, test::tolerance_for(kF64)));
    t.set_grad(Tensor());
    max(t).backward();
    EXPECT_TRUE(test::all_close(t.grad(), {2, 3}, {0, 0.5, 0.5, 0, 0, 0}, test::tolerance_for(kF64)));
  });
  SCOPED_TRACE("argmax records no graph");
  Tensor x = test::random_f64(rng, {3, 4}, -1, 1);
  x.requires_grad_();
  const Tensor index = argmax(x, 1);
  EXPECT_FALSE(index.requires_grad());
  EXPECT_EQ(index.grad_fn(), nullptr);
}

TEST(GradcheckReduce, SoftmaxAndLogSoftmax) {
  HostRng rng;
  const std::vector<std::pair<Shape, int64_t>> cases{{{5}, 0},       {{3, 4}, 0},    {{3, 4}, 1}, {{3, 4}, -1},
                                                     {{2, 3, 4}, 1}, {{2, 3, 4}, 2}, {{3, 1}, 1}, {{}, 0}};
  for (const auto& [shape, dim] : cases) {
    for (Layout layout : layouts_for(shape)) {
      SCOPED_TRACE(fmt::format("{} dim {} {}", shape_str(shape), dim, test::layout_name(layout)));
      test::guarded([&] {
        const Tensor x = test::random_f64(rng, shape, -3, 3, layout);
        EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return softmax(in[0], dim); }, {x}, rng))
            << "softmax";
        EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return log_softmax(in[0], dim); }, {x}, rng))
            << "log_softmax";
      });
    }
  }
  SCOPED_TRACE("cross-entropy-like composite: -mean(gather(log_softmax(logits), target))");
  test::guarded([&] {
    const Tensor logits = test::random_f64(rng, {4, 5}, -3, 3);
    const Tensor target = test::make_tensor(rng.integers(4, 0, 4), {4, 1}, kI64);
    EXPECT_TRUE(
        gradcheck([](const std::vector<Tensor>& in) { return neg(mean(gather(log_softmax(in[0], 1), 1, in[1]))); },
                  {logits, target}, rng));
  });
}

// --- matmul -----------------------------------------------------------------------------------------

TEST(GradcheckMatmul, EveryRankCombination) {
  HostRng rng;
  const std::vector<std::pair<Shape, Shape>> cases{
      {{4}, {4}},                 // dot: 0-d result
      {{4}, {4, 3}},              // vector @ matrix
      {{3, 4}, {4}},              // matrix @ vector
      {{3, 4}, {4, 5}},           // matrix @ matrix
      {{1, 4}, {4, 1}},           // outer dims of size 1
      {{2, 3, 4}, {2, 4, 5}},     // batched
      {{2, 3, 4}, {4, 5}},        // batched @ matrix
      {{3, 4}, {2, 4, 5}},        // matrix @ batched
      {{4}, {2, 4, 3}},           // vector @ batched
      {{2, 3, 4}, {4}},           // batched @ vector
      {{2, 1, 3, 4}, {3, 4, 2}},  // broadcast batch dims: [2, 3, 3, 2]
      {{1, 3, 4}, {2, 4, 2}},     // a size-1 batch dim against 2
  };
  for (const auto& [shape_a, shape_b] : cases) {
    SCOPED_TRACE(fmt::format("{} @ {}", shape_str(shape_a), shape_str(shape_b)));
    test::guarded([&] {
      const Tensor a = test::random_f64(rng, shape_a, -1, 1);
      const Tensor b = test::random_f64(rng, shape_b, -1, 1);
      EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, {a, b}, rng));
    });
  }
}

TEST(GradcheckMatmul, NonContiguousOperandsAndComposites) {
  HostRng rng;
  for (const auto& [layout_a, layout_b] :
       {std::pair{Layout::Transposed, Layout::Contiguous}, std::pair{Layout::Contiguous, Layout::Transposed},
        std::pair{Layout::Transposed, Layout::Transposed}, std::pair{Layout::Strided, Layout::Offset}}) {
    SCOPED_TRACE(fmt::format("[3, 4] {} @ [4, 2] {}", test::layout_name(layout_a), test::layout_name(layout_b)));
    test::guarded([&] {
      const Tensor a = test::random_f64(rng, {3, 4}, -1, 1, layout_a);
      const Tensor b = test::random_f64(rng, {4, 2}, -1, 1, layout_b);
      EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, {a, b}, rng));
    });
  }
  SCOPED_TRACE("batched permuted operand; Tensor::matmul; x @ x.t(); a linear layer with bias");
  test::guarded([&] {
    const Tensor a = test::random_f64(rng, {2, 3, 4}, -1, 1, Layout::Permuted);
    const Tensor b = test::random_f64(rng, {2, 4, 3}, -1, 1);
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return in[0].matmul(in[1]); }, {a, b}, rng));
    const Tensor x = test::random_f64(rng, {3, 4}, -1, 1);
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[0].t()); }, {x}, rng));
    const Tensor w = test::random_f64(rng, {5, 4}, -1, 1);
    const Tensor bias = test::random_f64(rng, {5}, -1, 1);
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return add(matmul(in[0], in[1].t()), in[2]); },
                          {x, w, bias}, rng));
    // Batched and 1-D inputs through a transposed weight (Note [weight gradient layout]).
    for (const Shape& x_shape : {Shape{2, 3, 4}, Shape{4}}) {
      const Tensor xb = test::random_f64(rng, x_shape, -1, 1);
      EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[1].t()); }, {xb, w}, rng));
    }
  });
}

}  // namespace
}  // namespace flame
