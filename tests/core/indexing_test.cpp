// Joining and indexing ops on the CPU against host references: cat, stack, index_select, gather,
// scatter_add and scatter_add_, for every dim, floating and integer dtypes, non-contiguous inputs.
#include <fmt/format.h>

#include <cmath>

#include "support/test_support.h"

namespace flame {
namespace {

using test::all_close;
using test::HostRng;
using test::Layout;
using test::Tolerance;

const Tolerance kExact{0, 0};

std::vector<DType> all_value_dtypes() {
  std::vector<DType> d = test::floating_dtypes();
  d.insert(d.end(), {kI32, kI64});
  return d;
}

int64_t wrap(int64_t dim, int64_t nd) { return dim < 0 ? dim + nd : dim; }

// --- cat / stack --------------------------------------------------------------------------------

std::vector<double> cat_reference(const std::vector<std::vector<double>>& parts, const std::vector<Shape>& shapes,
                                  int64_t dim, Shape& out_shape) {
  out_shape = shapes[0];
  out_shape[dim] = 0;
  for (const Shape& s : shapes) out_shape[dim] += s[dim];
  std::vector<double> out(static_cast<size_t>(test::numel_of(out_shape)));
  for (int64_t flat = 0; flat < test::numel_of(out_shape); ++flat) {
    std::vector<int64_t> index = test::unravel_index(flat, out_shape);
    size_t part = 0;
    while (index[dim] >= shapes[part][dim]) index[dim] -= shapes[part++][dim];
    out[flat] = parts[part][test::ravel_index(index, shapes[part])];
  }
  return out;
}

TEST(Cat, JoinsAlongEveryDim) {
  HostRng rng;
  const auto& layouts = test::all_layouts();
  for (DType dtype : all_value_dtypes()) {
    for (int64_t dim = -1; dim < 3; ++dim) {
      for (size_t l = 0; l < layouts.size(); ++l) {
        SCOPED_TRACE(fmt::format("{} dim {} {}", dtype_name(dtype), dim, test::layout_name(layouts[l])));
        test::guarded([&] {
          const int64_t d = wrap(dim, 3);
          std::vector<Shape> shapes{{2, 3, 4}, {2, 3, 4}, {2, 3, 4}};
          shapes[1][d] = 1;
          shapes[2][d] = 5;
          std::vector<std::vector<double>> parts;
          std::vector<Tensor> tensors;
          for (size_t i = 0; i < shapes.size(); ++i) {
            parts.push_back(test::case_inputs(rng, test::numel_of(shapes[i]), -9, 9, dtype, false));
            tensors.push_back(
                test::make_tensor(parts.back(), shapes[i], dtype, kCPU, layouts[(l + i) % layouts.size()]));
          }
          Shape out_shape;
          const auto expected = cat_reference(parts, shapes, d, out_shape);
          const Tensor out = cat(tensors, dim);
          EXPECT_EQ(out.dtype(), dtype);
          EXPECT_TRUE(all_close(out, out_shape, expected, kExact));
        });
      }
    }
  }
}

TEST(Cat, OneDimensionalAndSingleTensor) {
  const Tensor a = test::make_tensor({1, 2}, {2}, kF32);
  const Tensor b = test::make_tensor({3, 4, 5}, {3}, kF32, kCPU, Layout::Strided);
  EXPECT_TRUE(all_close(cat({a, b}), {5}, {1, 2, 3, 4, 5}, kExact));
  EXPECT_TRUE(all_close(cat({b}), {3}, {3, 4, 5}, kExact));
  const Tensor e = test::make_tensor({7}, {1, 1}, kF64).expand({2, 3});
  EXPECT_TRUE(all_close(cat({e, e}, 1), {2, 6}, std::vector<double>(12, 7.0), kExact));
}

TEST(Stack, InsertsANewDim) {
  HostRng rng;
  for (DType dtype : all_value_dtypes()) {
    for (int64_t dim : {0, 1, 2, -1, -3}) {
      SCOPED_TRACE(fmt::format("{} dim {}", dtype_name(dtype), dim));
      test::guarded([&] {
        const Shape shape{2, 3};
        std::vector<std::vector<double>> parts;
        std::vector<Tensor> tensors;
        for (int i = 0; i < 4; ++i) {
          parts.push_back(test::case_inputs(rng, 6, -9, 9, dtype, false));
          tensors.push_back(test::make_tensor(parts.back(), shape, dtype, kCPU, test::all_layouts()[i]));
        }
        const int64_t d = wrap(dim, 3);
        Shape out_shape = shape;
        out_shape.insert(out_shape.begin() + d, 4);
        std::vector<double> expected(24);
        for (int64_t flat = 0; flat < 24; ++flat) {
          std::vector<int64_t> index = test::unravel_index(flat, out_shape);
          const int64_t which = index[d];
          index.erase(index.begin() + d);
          expected[flat] = parts[which][test::ravel_index(index, shape)];
        }
        const Tensor out = stack(tensors, dim);
        EXPECT_EQ(out.dtype(), dtype);
        EXPECT_TRUE(all_close(out, out_shape, expected, kExact));
      });
    }
  }
}

// --- index_select ------------------------------------------------------------------------------

TEST(IndexSelect, PicksEntriesAlongEveryDim) {
  HostRng rng;
  const Shape shape{4, 5, 3};
  for (DType dtype : all_value_dtypes()) {
    for (DType index_dtype : {kI64, kI32}) {
      for (int64_t dim = -1; dim < 3; ++dim) {
        for (Layout layout : test::all_layouts()) {
          SCOPED_TRACE(fmt::format("{} index {} dim {} {}", dtype_name(dtype), dtype_name(index_dtype), dim,
                                   test::layout_name(layout)));
          test::guarded([&] {
            const int64_t d = wrap(dim, 3);
            const auto v = test::case_inputs(rng, 60, -9, 9, dtype, false);
            const auto idx = rng.integers(7, 0, shape[d] - 1);  // repeats allowed
            const Tensor x = test::make_tensor(v, shape, dtype, kCPU, layout);
            const Tensor index = test::make_tensor(idx, {7}, index_dtype, kCPU, layout);
            Shape out_shape = shape;
            out_shape[d] = 7;
            std::vector<double> expected(static_cast<size_t>(test::numel_of(out_shape)));
            for (int64_t flat = 0; flat < test::numel_of(out_shape); ++flat) {
              std::vector<int64_t> i = test::unravel_index(flat, out_shape);
              i[d] = static_cast<int64_t>(idx[i[d]]);
              expected[flat] = v[test::ravel_index(i, shape)];
            }
            const Tensor out = index_select(x, dim, index);
            EXPECT_EQ(out.dtype(), dtype);
            EXPECT_TRUE(all_close(out, out_shape, expected, kExact));
          });
        }
      }
    }
  }
}

// --- gather / scatter_add -------------------------------------------------------------------------

/// For every position p of `index_shape`: the position of x it addresses (p with p[dim] replaced
/// by index[p]).
std::vector<int64_t> addressed(const std::vector<int64_t>& p, int64_t dim, const std::vector<double>& index,
                               const Shape& index_shape) {
  std::vector<int64_t> target = p;
  target[dim] = static_cast<int64_t>(index[test::ravel_index(p, index_shape)]);
  return target;
}

/// The shape gather and scatter_add read from and write into.
const Shape kIndexedShape{3, 4, 5};

/// Runs body(dtype, dim, d, layout, index_shape) as one traced, guarded sub-case for every value
/// dtype, every dim of kIndexedShape (-1 included; `d` is dim wrapped to 0..2) and every layout.
/// index_shape is kIndexedShape with 6 entries along d: more than its positions, so repeats are certain.
template <class Body>
void for_each_gather_case(Body&& body) {
  for (DType dtype : all_value_dtypes()) {
    for (int64_t dim = -1; dim < 3; ++dim) {
      for (Layout layout : test::all_layouts()) {
        SCOPED_TRACE(fmt::format("{} dim {} {}", dtype_name(dtype), dim, test::layout_name(layout)));
        test::guarded([&] {
          const int64_t d = wrap(dim, 3);
          Shape index_shape = kIndexedShape;
          index_shape[d] = 6;
          body(dtype, dim, d, layout, index_shape);
        });
      }
    }
  }
}

TEST(Gather, MatchesTorchGatherAlongEveryDim) {
  HostRng rng;
  const Shape& shape = kIndexedShape;
  for_each_gather_case([&](DType dtype, int64_t dim, int64_t d, Layout layout, const Shape& index_shape) {
    const auto v = test::case_inputs(rng, 60, -9, 9, dtype, false);
    const auto idx = rng.integers(test::numel_of(index_shape), 0, shape[d] - 1);
    const Tensor x = test::make_tensor(v, shape, dtype, kCPU, layout);
    const Tensor index = test::make_tensor(idx, index_shape, kI64, kCPU, layout);
    std::vector<double> expected(idx.size());
    for (int64_t flat = 0; flat < test::numel_of(index_shape); ++flat) {
      expected[flat] =
          v[test::ravel_index(addressed(test::unravel_index(flat, index_shape), d, idx, index_shape), shape)];
    }
    const Tensor out = gather(x, dim, index);
    EXPECT_EQ(out.dtype(), dtype);
    EXPECT_TRUE(all_close(out, index_shape, expected, kExact));
  });
}

TEST(Gather, IndexMayBeSmallerThanInputInOtherDims) {
  // torch.gather allows index.size(d) <= x.size(d) for d != dim.
  const Tensor x = test::make_tensor({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4}, kF32);
  const Tensor index = test::make_tensor({2, 0, 1, 1}, {2, 2}, kI64);
  // out[i][j] = x[index[i][j]][j]
  EXPECT_TRUE(all_close(gather(x, 0, index), {2, 2}, {8, 1, 4, 5}, kExact));
  // out[i][j] = x[i][index[i][j]]
  EXPECT_TRUE(all_close(gather(x, 1, index), {2, 2}, {2, 0, 5, 5}, kExact));
}

TEST(ScatterAdd, AccumulatesRepeatedIndicesAlongEveryDim) {
  HostRng rng;
  const Shape& shape = kIndexedShape;
  for_each_gather_case([&](DType dtype, int64_t dim, int64_t d, Layout layout, const Shape& index_shape) {
    const auto v = test::case_inputs(rng, 60, -3, 3, dtype, false);
    const auto idx = rng.integers(test::numel_of(index_shape), 0, shape[d] - 1);
    const auto src = test::case_inputs(rng, test::numel_of(index_shape), -3, 3, dtype, false);
    const Tensor x = test::make_tensor(v, shape, dtype, kCPU, layout);
    const Tensor index = test::make_tensor(idx, index_shape, kI64, kCPU, layout);
    const Tensor s = test::make_tensor(src, index_shape, dtype, kCPU, layout);
    std::vector<double> expected = v;
    for (int64_t flat = 0; flat < test::numel_of(index_shape); ++flat) {
      const auto target = addressed(test::unravel_index(flat, index_shape), d, idx, index_shape);
      expected[test::ravel_index(target, shape)] += src[flat];
    }
    const Tolerance tol = test::tolerance_for(dtype).scaled(4);  // a few roundings per element
    const Tensor out = scatter_add(x, dim, index, s);
    EXPECT_EQ(out.dtype(), dtype);
    EXPECT_TRUE(all_close(out, shape, expected, tol));
    EXPECT_TRUE(all_close(x, shape, v, kExact)) << "scatter_add must not modify its input";
    Tensor target = x;
    Tensor& same = scatter_add_(target, dim, index, s);
    EXPECT_EQ(&same, &target);
    EXPECT_TRUE(all_close(target, shape, expected, tol));
    EXPECT_TRUE(all_close(x, shape, expected, tol)) << "scatter_add_ writes into x's storage";
  });
}

// An index that is x itself: the positions are read as they were before any write (an index
// changed by an earlier write escaped the range check and wrote out of bounds).
TEST(ScatterAdd, IndexSharingTheTargetsMemoryUsesItsValuesBeforeTheWrites) {
  Tensor x = test::make_tensor({1, 0}, {2}, kI64);
  scatter_add_(x, 0, x, test::make_tensor({1000, 7}, {2}, kI64));
  // x[1] += 1000 (index x[0] = 1), then x[0] += 7 (index x[1] = 0, as before the writes).
  EXPECT_TRUE(all_close(x, {2}, {8, 1000}, kExact));
}

TEST(ScatterAdd, ClosedFormHistogram) {
  // Counting with scatter_add: bins[index[i]] += 1.
  const Tensor bins = zeros({4}, kI64);
  const Tensor index = test::make_tensor({0, 3, 3, 1, 3, 0, 2, 3}, {8}, kI64);
  EXPECT_TRUE(all_close(scatter_add(bins, 0, index, ones({8}, kI64)), {4}, {2, 1, 1, 4}, kExact));
}

}  // namespace
}  // namespace flame
