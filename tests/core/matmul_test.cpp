// matmul on the CPU against a float64 reference: PyTorch's rules for 1-D operands and broadcast
// batch dims, every floating dtype, transposed / strided / offset / expanded operands.
#include <fmt/format.h>

#include <cmath>

#include "support/test_support.h"

namespace flame {
namespace {

using test::all_close;
using test::HostRng;
using test::Layout;

struct Product {
  Shape shape;
  std::vector<double> values;
};

/// torch.matmul on host data: 1-D operands are promoted ([k] -> [1, k] on the left, [k, 1] on the
/// right) and the added dim removed from the result; batch dims broadcast.
Product matmul_reference(const std::vector<double>& va, Shape sa, const std::vector<double>& vb, Shape sb) {
  const bool a_vector = sa.size() == 1, b_vector = sb.size() == 1;
  if (a_vector) sa.insert(sa.begin(), 1);
  if (b_vector) sb.push_back(1);
  const int64_t m = sa[sa.size() - 2], k = sa.back(), n = sb.back();
  const Shape batch_a(sa.begin(), sa.end() - 2), batch_b(sb.begin(), sb.end() - 2);
  const Shape batch = test::broadcast_shapes(batch_a, batch_b);
  // Broadcast each operand's batch dims, keeping its matrix dims.
  Shape full_a = batch, full_b = batch;
  full_a.insert(full_a.end(), {m, k});
  full_b.insert(full_b.end(), {k, n});
  const auto a = test::broadcast_to(va, sa, full_a);
  const auto b = test::broadcast_to(vb, sb, full_b);
  const int64_t batches = test::numel_of(batch);
  Product out;
  out.values.assign(static_cast<size_t>(batches * m * n), 0.0);
  for (int64_t p = 0; p < batches; ++p) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        for (int64_t q = 0; q < k; ++q) acc += a[(p * m + i) * k + q] * b[(p * k + q) * n + j];
        out.values[(p * m + i) * n + j] = acc;
      }
    }
  }
  out.shape = batch;
  if (!a_vector) out.shape.push_back(m);
  if (!b_vector) out.shape.push_back(n);
  return out;
}

struct ShapePair {
  Shape a, b;
};

const std::vector<ShapePair> kShapes{
    {{5}, {5}},     // dot: 0-d
    {{5}, {5, 3}},  // vector @ matrix
    {{4, 5}, {5}},  // matrix @ vector
    {{4, 5}, {5, 3}},
    {{1, 1}, {1, 1}},
    {{33, 17}, {17, 9}},
    {{64, 64}, {64, 64}},
    {{2, 4, 5}, {2, 5, 3}},     // batched
    {{2, 4, 5}, {5, 3}},        // batch @ matrix
    {{4, 5}, {3, 5, 2}},        // matrix @ batch
    {{2, 1, 4, 5}, {3, 5, 6}},  // broadcast batch dims
    {{3, 4, 5}, {5}},
    {{5}, {3, 5, 2}},
};

TEST(Matmul, MatchesFloat64ReferenceForEveryRankAndLayout) {
  HostRng rng;
  const auto& layouts = test::all_layouts();
  for (DType dtype : test::floating_dtypes()) {
    for (size_t s = 0; s < kShapes.size(); ++s) {
      for (size_t l = 0; l < layouts.size(); ++l) {
        const ShapePair& shapes = kShapes[s];
        const Layout la = layouts[l], lb = layouts[(l + s) % layouts.size()];
        SCOPED_TRACE(fmt::format("{} {} ({}) @ {} ({})", dtype_name(dtype), shape_str(shapes.a),
                                 test::layout_name(la), shape_str(shapes.b), test::layout_name(lb)));
        test::guarded([&] {
          const auto va = test::round_to_dtype(rng.uniform(test::numel_of(shapes.a), -1, 1), dtype);
          const auto vb = test::round_to_dtype(rng.uniform(test::numel_of(shapes.b), -1, 1), dtype);
          const Tensor a = test::make_tensor(va, shapes.a, dtype, kCPU, la);
          const Tensor b = test::make_tensor(vb, shapes.b, dtype, kCPU, lb);
          const Product expected = matmul_reference(va, shapes.a, vb, shapes.b);
          const double k = static_cast<double>(shapes.a.back());
          const Tensor out = matmul(a, b);
          EXPECT_EQ(out.dtype(), dtype);
          EXPECT_EQ(out.device(), kCPU);
          EXPECT_TRUE(all_close(out, expected.shape, expected.values,
                                test::tolerance_for(dtype).scaled(std::max(1.0, std::sqrt(k)))));
          EXPECT_TRUE(all_close(a.matmul(b), expected.shape, expected.values,
                                test::tolerance_for(dtype).scaled(std::max(1.0, std::sqrt(k)))));
        });
      }
    }
  }
}

TEST(Matmul, ExpandedBatchOperand) {
  HostRng rng;
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const auto va = test::round_to_dtype(rng.uniform(20, -1, 1), dtype);
      const auto vb = test::round_to_dtype(rng.uniform(3 * 5 * 6, -1, 1), dtype);
      // a: one [4, 5] matrix expanded to a batch of 3 (batch stride 0); b: a transposed batch.
      const Tensor a = test::make_tensor(va, {1, 4, 5}, dtype).expand({3, 4, 5});
      const Tensor b = test::make_tensor(vb, {3, 5, 6}, dtype, kCPU, Layout::Transposed);
      const Product expected = matmul_reference(va, {1, 4, 5}, vb, {3, 5, 6});
      EXPECT_TRUE(all_close(matmul(a, b), expected.shape, expected.values,
                            test::tolerance_for(dtype).scaled(std::sqrt(5.0))));
    });
  }
}

TEST(Matmul, IdentityAndClosedForm) {
  // [[1, 2], [3, 4]] @ [[5, 6], [7, 8]] = [[19, 22], [43, 50]], exact in every floating dtype.
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const Tensor a = test::make_tensor({1, 2, 3, 4}, {2, 2}, dtype);
      const Tensor b = test::make_tensor({5, 6, 7, 8}, {2, 2}, dtype);
      EXPECT_TRUE(all_close(matmul(a, b), {2, 2}, {19, 22, 43, 50}, {0, 0}));
      EXPECT_TRUE(all_close(matmul(b.t(), a.t()), {2, 2}, {19, 43, 22, 50}, {0, 0}));
    });
  }
}

}  // namespace
}  // namespace flame
