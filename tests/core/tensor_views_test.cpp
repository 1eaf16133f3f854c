// Tensor metadata and views (view, reshape, transpose, permute, narrow, slice, select, expand,
// squeeze, unsqueeze, flatten): shapes, strides and offsets as in PyTorch, values read through the
// views against host index math, storage sharing, and copies (contiguous, clone, copy_, to_vector).
#include <climits>
#include <fmt/format.h>

#include <functional>
#include <limits>
#include <cmath>
#include <memory>
#include <numeric>

#include "support/test_support.h"

namespace flame {
namespace {

using test::all_close;
using test::HostRng;
using test::Layout;
using test::Tolerance;

using IndexMap = std::function<std::vector<int64_t>(const std::vector<int64_t>&)>;

/// Values of a view of shape `out_shape` whose element at index i is base[map(i)].
std::vector<double> view_reference(const std::vector<double>& base, const Shape& base_shape,
                                   const Shape& out_shape, const IndexMap& map) {
  std::vector<double> out(static_cast<size_t>(test::numel_of(out_shape)));
  for (int64_t flat = 0; flat < test::numel_of(out_shape); ++flat) {
    out[flat] = base[test::ravel_index(map(test::unravel_index(flat, out_shape)), base_shape)];
  }
  return out;
}

std::vector<double> iota(int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0.0);
  return v;
}

const Tolerance kExact{0.0, 0.0};

class ViewTest : public ::testing::Test {
 protected:
  // base: [2, 3, 4] holding random f64 values, contiguous.
  void SetUp() override {
    HostRng rng;
    values_ = rng.uniform(24, -5, 5);
    base_ = test::make_tensor(values_, shape_, kF64);
  }
  std::vector<double> values_;
  Shape shape_{2, 3, 4};
  Tensor base_;
};

TEST(TensorMetadata, ContiguousTensor) {
  const Tensor x = empty({2, 3, 4}, kF32);
  EXPECT_TRUE(x.defined());
  EXPECT_EQ(x.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(x.strides(), (Strides{12, 4, 1}));
  EXPECT_EQ(x.dim(), 3);
  EXPECT_EQ(x.numel(), 24);
  EXPECT_EQ(x.size(-1), 4);
  EXPECT_EQ(x.size(0), 2);
  EXPECT_EQ(x.stride(-2), 4);
  EXPECT_EQ(x.offset(), 0);
  EXPECT_EQ(x.dtype(), kF32);
  EXPECT_EQ(x.device(), kCPU);
  EXPECT_EQ(x.element_size(), 4u);
  EXPECT_EQ(x.nbytes(), 96u);
  EXPECT_TRUE(x.is_contiguous());
  EXPECT_EQ(x.describe(), "Tensor[2, 3, 4] f32 cpu");
  const Tensor scalar = zeros({}, kI64);
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.element_size(), 8u);
  EXPECT_FALSE(Tensor().defined());
}

TEST(TensorMetadata, ShapeHelpers) {
  EXPECT_EQ(shape_str({2, 3}), "[2, 3]");
  EXPECT_EQ(shape_str({}), "[]");
  EXPECT_EQ(contiguous_strides({2, 3, 4}), (Strides{12, 4, 1}));
  EXPECT_EQ(contiguous_strides({5}), (Strides{1}));
  EXPECT_EQ(shape_numel({}), 1);
  EXPECT_EQ(shape_numel({2, 3, 4}), 24);
  EXPECT_EQ(wrap_dim(-1, 3, "test"), 2);
  EXPECT_EQ(wrap_dim(-3, 3, "test"), 0);
  EXPECT_EQ(wrap_dim(1, 3, "test"), 1);
  EXPECT_TRUE(test::raises_error([] { wrap_dim(3, 3, "my_op"); }, {"my_op"}));
  EXPECT_TRUE(test::raises_error([] { wrap_dim(-4, 3, "my_op"); }, {"my_op"}));
}

TEST(TensorLayouts, MakeTensorRoundTripsInEveryLayout) {
  HostRng rng;
  const std::vector<Shape> shapes{{}, {5}, {3, 4}, {2, 3, 4}, {2, 1, 3, 2}};
  for (DType dtype : {kF64, kF32, kF16, kBF16, kI32, kI64}) {
    for (const Shape& shape : shapes) {
      for (Layout layout : test::all_layouts()) {
        SCOPED_TRACE(fmt::format("{} {} {}", dtype_name(dtype), shape_str(shape), test::layout_name(layout)));
        test::guarded([&] {
          const auto v = test::case_inputs(rng, test::numel_of(shape), -9, 9, dtype, false);
          const Tensor x = test::make_tensor(v, shape, dtype, kCPU, layout);
          EXPECT_EQ(x.dtype(), dtype);
          EXPECT_TRUE(all_close(x, shape, v, kExact));
          if (layout == Layout::Transposed && shape.size() >= 2 && shape.back() > 1) {
            EXPECT_FALSE(x.is_contiguous());
          }
          if (layout == Layout::Strided && !shape.empty()) {
            EXPECT_EQ(x.strides().back(), 2);
            EXPECT_FALSE(x.is_contiguous());
          }
        });
      }
    }
  }
}

TEST_F(ViewTest, ViewSharesStorageAndKeepsRowMajorOrder) {
  const Tensor v = base_.view({4, -1});
  EXPECT_EQ(v.shape(), (Shape{4, 6}));
  EXPECT_EQ(v.strides(), (Strides{6, 1}));
  EXPECT_EQ(v.storage().get(), base_.storage().get());
  EXPECT_TRUE(all_close(v, {4, 6}, values_, kExact));
  const Tensor flat = base_.view({24});
  EXPECT_TRUE(all_close(flat, {24}, values_, kExact));
}

TEST_F(ViewTest, TransposeSwapsStrides) {
  const Tensor t = base_.transpose(0, 2);
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(t.strides(), (Strides{1, 4, 12}));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.storage().get(), base_.storage().get());
  EXPECT_TRUE(all_close(t, {4, 3, 2},
                        view_reference(values_, shape_, {4, 3, 2},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{i[2], i[1], i[0]};
                                       }),
                        kExact));
  const Tensor neg = base_.transpose(-1, -2);
  EXPECT_EQ(neg.shape(), (Shape{2, 4, 3}));
  EXPECT_EQ(neg.strides(), (Strides{12, 1, 4}));
}

TEST_F(ViewTest, TOfMatrix) {
  const Tensor m = base_.select(0, 1);  // [3, 4]
  const Tensor mt = m.t();
  EXPECT_EQ(mt.shape(), (Shape{4, 3}));
  EXPECT_EQ(mt.strides(), (Strides{1, 4}));
  EXPECT_TRUE(all_close(mt, {4, 3},
                        view_reference(values_, shape_, {4, 3},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{1, i[1], i[0]};
                                       }),
                        kExact));
}

TEST_F(ViewTest, PermuteReordersDims) {
  const Tensor p = base_.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.strides(), (Strides{1, 12, 4}));
  EXPECT_TRUE(all_close(p, {4, 2, 3},
                        view_reference(values_, shape_, {4, 2, 3},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{i[1], i[2], i[0]};
                                       }),
                        kExact));
}

TEST_F(ViewTest, NarrowMovesOffset) {
  const Tensor n = base_.narrow(1, 1, 2);
  EXPECT_EQ(n.shape(), (Shape{2, 2, 4}));
  EXPECT_EQ(n.strides(), (Strides{12, 4, 1}));
  EXPECT_EQ(n.offset(), 4);
  EXPECT_FALSE(n.is_contiguous());
  EXPECT_TRUE(all_close(n, {2, 2, 4},
                        view_reference(values_, shape_, {2, 2, 4},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{i[0], i[1] + 1, i[2]};
                                       }),
                        kExact));
  const Tensor last = base_.narrow(-1, 3, 1);
  EXPECT_EQ(last.shape(), (Shape{2, 3, 1}));
  EXPECT_EQ(last.offset(), 3);
}

TEST_F(ViewTest, SliceWithStepFollowsPythonSemantics) {
  const Tensor s = base_.slice(2, 1, 4, 2);  // columns 1, 3
  EXPECT_EQ(s.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(s.strides(), (Strides{12, 4, 2}));
  EXPECT_EQ(s.offset(), 1);
  EXPECT_TRUE(all_close(s, {2, 3, 2},
                        view_reference(values_, shape_, {2, 3, 2},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{i[0], i[1], 1 + 2 * i[2]};
                                       }),
                        kExact));
  // end beyond the size is clamped: columns 0 and 3.
  const Tensor clamped = base_.slice(2, 0, 100, 3);
  EXPECT_EQ(clamped.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(clamped.strides(), (Strides{12, 4, 3}));
  EXPECT_TRUE(all_close(clamped, {2, 3, 2},
                        view_reference(values_, shape_, {2, 3, 2},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{i[0], i[1], 3 * i[2]};
                                       }),
                        kExact));
  // negative start counts from the end: rows 1, 2 of dim 1.
  const Tensor negative = base_.slice(1, -2, 3);
  EXPECT_EQ(negative.shape(), (Shape{2, 2, 4}));
  EXPECT_EQ(negative.offset(), 4);
}

TEST_F(ViewTest, SelectRemovesDim) {
  const Tensor s = base_.select(1, 2);
  EXPECT_EQ(s.shape(), (Shape{2, 4}));
  EXPECT_EQ(s.strides(), (Strides{12, 1}));
  EXPECT_EQ(s.offset(), 8);
  EXPECT_TRUE(all_close(s, {2, 4},
                        view_reference(values_, shape_, {2, 4},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{i[0], 2, i[1]};
                                       }),
                        kExact));
  const Tensor last = base_.select(-2, -1);
  EXPECT_EQ(last.offset(), 8);
  EXPECT_TRUE(all_close(last, {2, 4}, test::host_values(s), kExact));
  const Tensor scalar = base_.select(0, 1).select(0, 2).select(0, 3);
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.item(), values_[12 + 8 + 3]);
}

TEST_F(ViewTest, ExpandUsesZeroStrides) {
  const Tensor col = base_.select(0, 0).narrow(1, 0, 1);  // [3, 1], strides [4, 1]
  const Tensor e = col.expand({2, 3, 5});
  EXPECT_EQ(e.shape(), (Shape{2, 3, 5}));
  EXPECT_EQ(e.strides()[0], 0);
  EXPECT_EQ(e.strides()[1], 4);
  EXPECT_EQ(e.strides()[2], 0);
  EXPECT_TRUE(all_close(e, {2, 3, 5},
                        view_reference(values_, shape_, {2, 3, 5},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{0, i[1], 0};
                                       }),
                        kExact));
  const Tensor keep = col.expand({-1, 7});
  EXPECT_EQ(keep.shape(), (Shape{3, 7}));
}

TEST_F(ViewTest, SqueezeUnsqueezeFlatten) {
  const Tensor x = base_.view({2, 1, 3, 1, 4});
  EXPECT_EQ(x.squeeze().shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(x.squeeze(1).shape(), (Shape{2, 3, 1, 4}));
  EXPECT_EQ(x.squeeze(-2).shape(), (Shape{2, 1, 3, 4}));
  EXPECT_EQ(x.squeeze(0).shape(), (Shape{2, 1, 3, 1, 4}));  // size 2: unchanged
  EXPECT_EQ(base_.unsqueeze(0).shape(), (Shape{1, 2, 3, 4}));
  EXPECT_EQ(base_.unsqueeze(1).shape(), (Shape{2, 1, 3, 4}));
  EXPECT_EQ(base_.unsqueeze(-1).shape(), (Shape{2, 3, 4, 1}));
  EXPECT_EQ(base_.unsqueeze(3).shape(), (Shape{2, 3, 4, 1}));
  EXPECT_EQ(base_.flatten().shape(), (Shape{24}));
  EXPECT_EQ(base_.flatten(1).shape(), (Shape{2, 12}));
  EXPECT_EQ(base_.flatten(0, 1).shape(), (Shape{6, 4}));
  EXPECT_TRUE(all_close(x.squeeze(), shape_, values_, kExact));
  EXPECT_TRUE(all_close(base_.unsqueeze(1), {2, 1, 3, 4}, values_, kExact));
  EXPECT_TRUE(all_close(base_.flatten(0, 1), {6, 4}, values_, kExact));
  // flatten of a non-contiguous tensor follows reshape: values in the view's row-major order.
  const Tensor t = base_.transpose(0, 1);  // [3, 2, 4]
  EXPECT_TRUE(all_close(t.flatten(), {24},
                        view_reference(values_, shape_, {3, 2, 4},
                                       [](const std::vector<int64_t>& i) {
                                         return std::vector<int64_t>{i[1], i[0], i[2]};
                                       }),
                        kExact));
}

TEST_F(ViewTest, ViewOfStridedTensorSplittingAContiguousDim) {
  const Tensor s = base_.view({4, 6}).slice(1, 0, 6, 2);  // [4, 3], strides [6, 2]
  const Tensor v = s.view({2, 2, 3});
  EXPECT_EQ(v.strides(), (Strides{12, 6, 2}));
  EXPECT_EQ(v.storage().get(), base_.storage().get());
  EXPECT_TRUE(all_close(v, {2, 2, 3}, test::host_values(s), kExact));
}

TEST_F(ViewTest, ReshapeCopiesOnlyWhenNeeded) {
  const Tensor same = base_.reshape({6, 4});
  EXPECT_EQ(same.storage().get(), base_.storage().get());
  const Tensor t = base_.transpose(1, 2);  // [2, 4, 3]: cannot be viewed flat
  const std::vector<double> t_values =
      view_reference(values_, shape_, {2, 4, 3}, [](const std::vector<int64_t>& i) {
        return std::vector<int64_t>{i[0], i[2], i[1]};
      });
  Tensor r = t.reshape({8, 3});
  EXPECT_NE(r.storage().get(), base_.storage().get());
  EXPECT_TRUE(all_close(r, {8, 3}, t_values, kExact));
  r.fill_(0.0);
  EXPECT_TRUE(all_close(base_, shape_, values_, kExact));  // the copy is independent
}

TEST_F(ViewTest, WritesThroughViewsReachTheBase) {
  std::vector<double> expected = values_;
  base_.narrow(1, 1, 1).fill_(7.0);  // base[:, 1, :] = 7
  for (int64_t a = 0; a < 2; ++a) {
    for (int64_t c = 0; c < 4; ++c) expected[a * 12 + 4 + c] = 7.0;
  }
  EXPECT_TRUE(all_close(base_, shape_, expected, kExact));
  base_.transpose(0, 2).select(0, 3).fill_(-1.0);  // base[:, :, 3] = -1
  for (int64_t a = 0; a < 2; ++a) {
    for (int64_t b = 0; b < 3; ++b) expected[a * 12 + b * 4 + 3] = -1.0;
  }
  EXPECT_TRUE(all_close(base_, shape_, expected, kExact));
  base_.slice(2, 0, 4, 2).zero_();  // base[:, :, ::2] = 0
  for (int64_t a = 0; a < 2; ++a) {
    for (int64_t b = 0; b < 3; ++b) {
      expected[a * 12 + b * 4 + 0] = 0.0;
      expected[a * 12 + b * 4 + 2] = 0.0;
    }
  }
  EXPECT_TRUE(all_close(base_, shape_, expected, kExact));
}

TEST_F(ViewTest, ContiguousAndClone) {
  EXPECT_EQ(base_.contiguous().storage().get(), base_.storage().get());
  const Tensor t = base_.permute({1, 2, 0});
  const Tensor c = t.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.shape(), (Shape{3, 4, 2}));
  EXPECT_EQ(c.strides(), (Strides{8, 2, 1}));
  EXPECT_NE(c.storage().get(), base_.storage().get());
  EXPECT_TRUE(all_close(c, {3, 4, 2}, test::host_values(t), kExact));
  Tensor cl = base_.clone();
  EXPECT_NE(cl.storage().get(), base_.storage().get());
  EXPECT_TRUE(all_close(cl, shape_, values_, kExact));
  cl.fill_(3.0);
  EXPECT_TRUE(all_close(base_, shape_, values_, kExact));
  const Tensor cl_t = t.clone();
  EXPECT_TRUE(cl_t.is_contiguous());
  EXPECT_TRUE(all_close(cl_t, {3, 4, 2}, test::host_values(t), kExact));
}

TEST_F(ViewTest, CopyIntoNonContiguousView) {
  HostRng rng;
  const auto src_values = rng.uniform(12, -1, 1);
  const Tensor src = test::make_tensor(src_values, {4, 3}, kF64);
  Tensor target = base_.select(0, 1).t();  // [4, 3] view of base[1]
  Tensor& result = target.copy_(src);
  EXPECT_EQ(&result, &target);
  std::vector<double> expected = values_;
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j < 3; ++j) expected[12 + j * 4 + i] = src_values[i * 3 + j];
  }
  EXPECT_TRUE(all_close(base_, shape_, expected, kExact));
}

TEST(TensorCopy, CopyBroadcastsAndConvertsDtype) {
  HostRng rng;
  const auto row = rng.uniform(4, -2, 2);
  Tensor dst = zeros({3, 4}, kF32);
  dst.copy_(test::make_tensor(row, {4}, kF64));
  EXPECT_TRUE(all_close(dst, {3, 4}, test::round_to_dtype(test::broadcast_to(row, {4}, {3, 4}), kF32),
                        Tolerance{0, 0}));
  Tensor ints = zeros({2, 2}, kI64);
  ints.copy_(test::make_tensor({1, -2, 3, 4}, {2, 2}, kI32));
  EXPECT_EQ(ints.to_vector<int64_t>(), (std::vector<int64_t>{1, -2, 3, 4}));
}

TEST(TensorCopy, ToVectorConvertsTypes) {
  const Tensor x = test::make_tensor({1.5, -2.0, 3.25, 4.0}, {2, 2}, kF32, kCPU, Layout::Transposed);
  EXPECT_EQ(x.to_vector<float>(), (std::vector<float>{1.5f, -2.0f, 3.25f, 4.0f}));
  EXPECT_EQ(x.to_vector<double>(), (std::vector<double>{1.5, -2.0, 3.25, 4.0}));
  const Tensor i = test::make_tensor({5, -6, 7}, {3}, kI32, kCPU, Layout::Strided);
  EXPECT_EQ(i.to_vector<int32_t>(), (std::vector<int32_t>{5, -6, 7}));
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{5, -6, 7}));
  const Tensor b = test::make_tensor({1, 0, 1}, {3}, kBool);
  EXPECT_EQ(b.to_vector<uint8_t>(), (std::vector<uint8_t>{1, 0, 1}));
}

// f64 to f16 and bf16 rounds once, to nearest even (not through a float rounded to nearest first).
TEST(TensorCopy, DoubleToHalfPrecisionRoundsOnce) {
  const double tiny = std::ldexp(1.0, -40);
  const std::vector<double> values{1.0 + std::ldexp(1.0, -11) + tiny, 1.0 + std::ldexp(1.0, -11),
                                   1.0 + 3 * std::ldexp(1.0, -11), -(1.0 + std::ldexp(1.0, -11) + tiny)};
  EXPECT_EQ(from_vector(values, {4}, kF64).to(DType::F16).to_vector<double>(),
            (std::vector<double>{1.0009765625, 1.0, 1.001953125, -1.0009765625}));
  const std::vector<double> b{1.0 + std::ldexp(1.0, -8) + tiny, 1.0 + std::ldexp(1.0, -8)};
  EXPECT_EQ(from_vector(b, {2}, kF64).to(DType::BF16).to_vector<double>(), (std::vector<double>{1.0078125, 1.0}));
  // Past the largest float: infinity in both, and NaN stays NaN.
  const Tensor big = from_vector(std::vector<double>{1e39, -1e300, std::nan("")}, {3}, kF64);
  for (DType dtype : {DType::F16, DType::BF16}) {
    const std::vector<double> out = big.to(dtype).to_vector<double>();
    EXPECT_EQ(out[0], std::numeric_limits<double>::infinity());
    EXPECT_EQ(out[1], -std::numeric_limits<double>::infinity());
    EXPECT_TRUE(std::isnan(out[2]));
  }
}

TEST(TensorCopy, ItemOfOneElementTensors) {
  EXPECT_EQ(full({}, 2.5, kF64).item(), 2.5);
  EXPECT_EQ(full({1, 1}, -3.0, kI32).item(), -3.0);
  EXPECT_EQ(test::make_tensor({0.25}, {}, kF16, kCPU, Layout::Strided).item(), 0.25);
  EXPECT_TRUE(test::raises_error([] { (void)zeros({2}).item(); }));
}

TEST(TensorCopy, HandlesAreSharedNotCopied) {
  Tensor a = zeros({3}, kF64);
  Tensor b = a;  // same implementation
  EXPECT_TRUE(b.is_same(a));
  EXPECT_FALSE(a.view({3}).is_same(a));
  b.fill_(4.0);
  EXPECT_EQ(a.to_vector<double>(), (std::vector<double>{4, 4, 4}));
}

TEST(TensorEdgeCases, ZeroSizeTensorsFollowPyTorch) {
  const Tensor empty_rows = zeros({0, 3}, kF64);
  EXPECT_EQ(empty_rows.numel(), 0);
  EXPECT_TRUE(all_close(add(empty_rows, ones({3}, kF64)), {0, 3}, {}, kExact));
  EXPECT_TRUE(all_close(sum(empty_rows, {0}), {3}, {0, 0, 0}, kExact));  // the empty sum is 0
  EXPECT_TRUE(all_close(matmul(zeros({2, 0}, kF64), zeros({0, 3}, kF64)), {2, 3}, std::vector<double>(6, 0.0),
                        kExact));
  EXPECT_TRUE(all_close(cat({empty_rows, ones({2, 3}, kF64)}), {2, 3}, std::vector<double>(6, 1.0), kExact));
  EXPECT_EQ(zeros({2, 3}).narrow(1, 1, 0).shape(), (Shape{2, 0}));
  EXPECT_EQ(zeros({4}).slice(0, 3, 1).shape(), (Shape{0}));  // end before start: empty
  EXPECT_EQ(arange(0.0, kF32).shape(), (Shape{0}));
}

TEST(TensorStorage, FromStorageBuildsAView) {
  auto storage = std::make_shared<Storage>(kCPU, 10 * sizeof(double));
  Tensor whole = Tensor::from_storage(storage, {10}, {1}, 0, kF64);
  whole.copy_(test::make_tensor(iota(10), {10}, kF64));
  const Tensor v = Tensor::from_storage(storage, {2, 3}, {1, 3}, 2, kF64);  // a transposed window
  EXPECT_EQ(v.offset(), 2);
  EXPECT_TRUE(all_close(v, {2, 3}, {2, 5, 8, 3, 6, 9}, kExact));
  EXPECT_TRUE(test::raises_error([&] { (void)Tensor::from_storage(storage, {2, 3}, {1, 3}, 3, kF64); }));
  EXPECT_TRUE(test::raises_error([&] { (void)Tensor::from_storage(storage, {11}, {1}, 0, kF64); }));
  // A stride whose span overflows int64 is out of bounds, not wrapped into range.
  EXPECT_TRUE(test::raises_error(
      [&] { (void)Tensor::from_storage(storage, {3}, {INT64_MAX / 2 + 2}, 0, kF64); }, {"exceeds a storage"}));
}

// Sizes and bounds whose arithmetic would overflow int64 raise instead of wrapping.
TEST(TensorEdgeCases, OverflowingSizesAndBoundsRaise) {
  const int64_t huge = (int64_t{1} << 62) + 1;
  EXPECT_TRUE(test::raises_error([&] { (void)Tensor::empty({huge, 4}); }, {"more than 2^59 elements"}));
  EXPECT_TRUE(test::raises_error([&] { (void)arange(0, 4).unsqueeze(0).expand({huge, 4}); },
                                 {"expand", "more than 2^59 elements"}));
  EXPECT_TRUE(test::raises_error([&] { (void)zeros({2, 3}).reshape({-1, huge, 4}); }, {"invalid for 6 elements"}));
  const Tensor x = zeros({2, 3});
  EXPECT_TRUE(test::raises_error([&] { (void)x.narrow(1, 1, INT64_MAX); }, {"out of bounds"}));
  EXPECT_TRUE(test::raises_error([&] { (void)x.narrow(1, 2, INT64_MAX - 1); }, {"out of bounds"}));
  EXPECT_EQ(x.slice(1, 0, 3, INT64_MAX).shape(), (Shape{2, 1}));
  EXPECT_EQ(x.slice(1, 1, 3, 5).shape(), (Shape{2, 1}));
  EXPECT_EQ(x.slice(1, 3, 3, 2).shape(), (Shape{2, 0}));
}

// copy_ and fill_ into an expanded view (elements sharing memory) raise, as add_ does; so does
// filling an integer tensor with NaN or infinity.
TEST(TensorEdgeCases, CopyAndFillRefuseWhatTheyCannotStore) {
  Tensor e = arange(0, 3).unsqueeze(0).expand({2, 3});
  EXPECT_TRUE(test::raises_error([&] { e.copy_(ones({2, 3}, kI64)); }, {"copy_", "share memory"}));
  EXPECT_TRUE(test::raises_error([&] { e.fill_(1.0); }, {"fill_", "share memory"}));
  // An integer tensor has no value for NaN or infinity.
  EXPECT_TRUE(test::raises_error([] { (void)full({1}, std::nan(""), kI64); }, {"no integer value"}));
  EXPECT_TRUE(test::raises_error([] { (void)full({1}, -INFINITY, kU8); }, {"no integer value"}));
  EXPECT_EQ(full({1}, std::nan(""), kBool).to(kU8).to_vector<uint8_t>(), (std::vector<uint8_t>{1}));
}

}  // namespace
}  // namespace flame
