// Creation ops (empty, zeros, ones, full, arange, from_vector), dtype conversions with their
// rounding rules, and the dtype / device helpers.
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "support/test_support.h"

namespace flame {
namespace {

using test::all_close;
using test::Tolerance;

const Tolerance kExact{0.0, 0.0};
const std::vector<DType> kAllDtypes{kF64, kF32, kF16, kBF16, kI32, kI64, kU8, kBool};

TEST(Creation, EmptyHasShapeDtypeAndDevice) {
  for (DType dtype : kAllDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const Tensor x = empty({3, 5}, dtype);
      EXPECT_EQ(x.shape(), (Shape{3, 5}));
      EXPECT_EQ(x.dtype(), dtype);
      EXPECT_EQ(x.device(), kCPU);
      EXPECT_TRUE(x.is_contiguous());
      EXPECT_EQ(x.nbytes(), 15 * dtype_size(dtype));
      EXPECT_EQ(Tensor::empty({2}, TensorOptions(dtype, kCPU)).dtype(), dtype);
    });
  }
  EXPECT_EQ(empty({2}).dtype(), kF32);  // the default options: f32 on the CPU
}

TEST(Creation, ZerosOnesFullInEveryDtype) {
  for (DType dtype : kAllDtypes) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      EXPECT_TRUE(all_close(zeros({2, 3}, dtype), {2, 3}, std::vector<double>(6, 0.0), kExact));
      EXPECT_TRUE(all_close(ones({4}, dtype), {4}, std::vector<double>(4, 1.0), kExact));
      EXPECT_TRUE(all_close(full({}, 1.0, dtype), {}, {1.0}, kExact));
      EXPECT_EQ(zeros({2, 3}, dtype).dtype(), dtype);
    });
  }
  for (DType dtype : {kF64, kF32, kF16, kBF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const double value = 0.1;  // not exact in any binary format: rounded to nearest
      EXPECT_TRUE(all_close(full({2, 2}, value, dtype), {2, 2},
                            test::round_to_dtype(std::vector<double>(4, value), dtype), kExact));
    });
  }
  EXPECT_TRUE(all_close(full({3}, -7.0, kI32), {3}, {-7, -7, -7}, kExact));
  EXPECT_TRUE(all_close(full({3}, 200.0, kU8), {3}, {200, 200, 200}, kExact));
}

TEST(Creation, FillAndZeroInPlace) {
  Tensor x = ones({2, 3}, kF64);
  Tensor& same = x.fill_(2.5);
  EXPECT_EQ(&same, &x);
  EXPECT_TRUE(all_close(x, {2, 3}, std::vector<double>(6, 2.5), kExact));
  x.zero_();
  EXPECT_TRUE(all_close(x, {2, 3}, std::vector<double>(6, 0.0), kExact));
}

TEST(Creation, ArangeCountsFromStartByStep) {
  EXPECT_TRUE(all_close(arange(5.0, kI64), {5}, {0, 1, 2, 3, 4}, kExact));
  EXPECT_EQ(arange(5.0, kI64).dtype(), kI64);
  EXPECT_TRUE(all_close(arange(-3, 3, 1, kI32), {6}, {-3, -2, -1, 0, 1, 2}, kExact));
  EXPECT_TRUE(all_close(arange(1.0, 2.0, 0.25, kF64), {4}, {1.0, 1.25, 1.5, 1.75}, kExact));
  // ceil((1 - 0) / 0.3) = 4 elements, each start + i * step.
  EXPECT_TRUE(
      all_close(arange(0.0, 1.0, 0.3, kF64), {4}, {0.0, 0.3, 0.6, 0.3 * 3}, test::tolerance_for(kF64)));
  EXPECT_TRUE(all_close(arange(2.0, 12.0, 3.0, kF32), {4}, {2, 5, 8, 11}, kExact));
  const Tensor big = arange(0.0, 1000.0, 1.0, kF32);
  std::vector<double> expected(1000);
  for (int i = 0; i < 1000; ++i) expected[i] = i;
  EXPECT_TRUE(all_close(big, {1000}, expected, kExact));
}

TEST(Creation, FromVectorOfEachElementType) {
  EXPECT_TRUE(all_close(from_vector(std::vector<float>{1.5f, -2.0f}, {2}, kF32), {2}, {1.5, -2.0}, kExact));
  EXPECT_TRUE(all_close(from_vector(std::vector<double>{0.1, 0.2, 0.3}, {3, 1}, kF64), {3, 1},
                        {0.1, 0.2, 0.3}, kExact));
  EXPECT_TRUE(
      all_close(from_vector(std::vector<int32_t>{1, 2, 3, 4}, {2, 2}, kI32), {2, 2}, {1, 2, 3, 4}, kExact));
  EXPECT_TRUE(all_close(from_vector(std::vector<int64_t>{-5, 1LL << 40}, {2}, kI64), {2},
                        {-5, static_cast<double>(1LL << 40)}, kExact));
  EXPECT_TRUE(all_close(from_vector(std::vector<uint8_t>{0, 255}, {2}, kU8), {2}, {0, 255}, kExact));
  // converting on the way in
  const Tensor h = from_vector(std::vector<float>{0.1f, 3.0f}, {2}, kF16);
  EXPECT_EQ(h.dtype(), kF16);
  EXPECT_TRUE(all_close(h, {2}, test::round_to_dtype({0.1f, 3.0f}, kF16), kExact));
  const Tensor i = from_vector(std::vector<int32_t>{7, -8}, {2}, kF64);
  EXPECT_EQ(i.dtype(), kF64);
  EXPECT_TRUE(all_close(i, {2}, {7, -8}, kExact));
  EXPECT_EQ(from_vector(std::vector<double>{1.0}, {}).dtype(), kF32);
}

TEST(Conversion, FloatToHalfRoundsToNearestEven) {
  const double one = 1.0;
  const std::vector<double> in{one + std::ldexp(1.0, -11),      // tie -> even: 1
                               one + 3 * std::ldexp(1.0, -11),  // tie -> even: 1 + 2^-9
                               one + std::ldexp(1.0, -12),      // below half: 1
                               65504.0,                         // largest half
                               70000.0,                         // overflow: inf
                               -70000.0,
                               std::ldexp(1.0, -24)};  // smallest subnormal
  const std::vector<double> expected{1.0,
                                     one + std::ldexp(1.0, -9),
                                     1.0,
                                     65504.0,
                                     std::numeric_limits<double>::infinity(),
                                     -std::numeric_limits<double>::infinity(),
                                     std::ldexp(1.0, -24)};
  const Tensor x = test::make_tensor(in, {7}, kF32).to(kF16);
  EXPECT_EQ(x.dtype(), kF16);
  EXPECT_TRUE(all_close(x, {7}, expected, kExact));
  EXPECT_EQ(float_to_half_bits(1.0f), 0x3C00);
  EXPECT_EQ(float_to_half_bits(-2.0f), 0xC000);
  EXPECT_EQ(float_to_half_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(half_bits_to_float(0x3555), 0.333251953125f);
}

TEST(Conversion, FloatToBf16RoundsToNearestEven) {
  const double one = 1.0;
  const std::vector<double> in{one + std::ldexp(1.0, -8), one + 3 * std::ldexp(1.0, -8),
                               one + std::ldexp(1.0, -9), 3.0e38};
  const std::vector<double> expected{1.0, one + std::ldexp(1.0, -6), 1.0,
                                     bf16_bits_to_float(float_to_bf16_bits(3.0e38f))};
  const Tensor x = test::make_tensor(in, {4}, kF32).to(kBF16);
  EXPECT_EQ(x.dtype(), kBF16);
  EXPECT_TRUE(all_close(x, {4}, expected, kExact));
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(-2.0f), 0xC000);
  EXPECT_EQ(bf16_bits_to_float(0x4049), 3.140625f);
}

TEST(Conversion, FloatToIntegerTruncatesTowardZero) {
  const Tensor x = test::make_tensor({2.7, -2.7, 0.5, -0.5, 100.0}, {5}, kF64);
  EXPECT_TRUE(all_close(x.to(kI32), {5}, {2, -2, 0, 0, 100}, kExact));
  EXPECT_TRUE(all_close(x.to(kI64), {5}, {2, -2, 0, 0, 100}, kExact));
  EXPECT_EQ(x.to(kI64).dtype(), kI64);
}

TEST(Conversion, BoolAndIntegerConversions) {
  const Tensor x = test::make_tensor({0.0, 2.0, -1.5, 0.0}, {4}, kF32);
  const Tensor b = x.to(kBool);
  EXPECT_EQ(b.dtype(), kBool);
  EXPECT_TRUE(all_close(b, {4}, {0, 1, 1, 0}, kExact));
  EXPECT_TRUE(all_close(b.to(kF32), {4}, {0, 1, 1, 0}, kExact));
  EXPECT_TRUE(all_close(b.to(kI64), {4}, {0, 1, 1, 0}, kExact));
  const Tensor i = test::make_tensor({-3, 0, 1000000}, {3}, kI64);
  EXPECT_TRUE(all_close(i.to(kF64), {3}, {-3, 0, 1000000}, kExact));
  EXPECT_TRUE(all_close(i.to(kI32), {3}, {-3, 0, 1000000}, kExact));
}

TEST(Conversion, LargeIntegersRoundOnceToFloat) {
  // 2^60 + 2^36 + 1 lies just above the midpoint of two f32 values (2^60 and 2^60 + 2^37): rounded
  // once it goes up; rounded to a double first (which drops the + 1, leaving the exact midpoint)
  // and then to f32 (ties to even), it would go down to 2^60.
  const int64_t v = (int64_t{1} << 60) + (int64_t{1} << 36) + 1;
  const Tensor i = from_vector<int64_t>({v, -v}, {2}, kI64);
  const std::vector<float> f = i.to(kF32).to_vector<float>();
  EXPECT_EQ(f[0], std::ldexp(1.0f, 60) + std::ldexp(1.0f, 37));
  EXPECT_EQ(f[1], -(std::ldexp(1.0f, 60) + std::ldexp(1.0f, 37)));
  EXPECT_EQ(i.to(kF64).to_vector<double>()[0], std::ldexp(1.0, 60) + std::ldexp(1.0, 36));  // one rounding too
}

// float_rounded_to_odd (core/dtype.h): an f64 or integer value is rounded once to f16 or bf16, not
// first to the nearest float and then again.
TEST(Conversion, DoublesAndIntegersRoundOnceToHalfAndBf16) {
  const double one = 1.0;
  // Just above the bf16 (f16) midpoint between 1 and its next value: up. Through the nearest float
  // the + 2^-40 is lost, the midpoint remains, and ties to even give 1.
  const std::vector<double> above{one + std::ldexp(1.0, -8) + std::ldexp(1.0, -40),
                                  -(one + std::ldexp(1.0, -8) + std::ldexp(1.0, -40))};
  EXPECT_TRUE(all_close(test::make_tensor(above, {2}, kF64).to(kBF16), {2},
                        {one + std::ldexp(1.0, -7), -(one + std::ldexp(1.0, -7))}, kExact));
  const double half_above = one + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  EXPECT_TRUE(all_close(test::make_tensor({half_above}, {1}, kF64).to(kF16), {1}, {one + std::ldexp(1.0, -10)}, kExact));
  EXPECT_TRUE(all_close(full({2}, above[0], TensorOptions(kBF16)), {2}, std::vector<double>(2, one + std::ldexp(1.0, -7)), kExact));
  // 2^24 + 2^16 + 1 is just above the bf16 midpoint 2^24 + 2^16: up to 2^24 + 2^17. The nearest
  // float is the midpoint itself (2^24 + 2^16), which ties to even give 2^24.
  const int64_t v = (int64_t{1} << 24) + (int64_t{1} << 16) + 1;
  const double up = std::ldexp(1.0, 24) + std::ldexp(1.0, 17);
  for (const DType from : {kI64, kI32}) {
    SCOPED_TRACE(dtype_name(from));
    const Tensor i = from_vector<int64_t>({v, -v, (int64_t{1} << 24) + 1}, {3}, kI64).to(from);
    EXPECT_TRUE(all_close(i.to(kBF16), {3}, {up, -up, std::ldexp(1.0, 24)}, kExact));
  }
  // Exact values, the midpoint itself, the extremes and NaN keep their usual results.
  EXPECT_EQ(float_rounded_to_odd(int64_t{1} << 24), std::ldexp(1.0f, 24));
  EXPECT_EQ(float_rounded_to_odd(std::numeric_limits<int64_t>::min()), -std::ldexp(1.0f, 63));
  EXPECT_EQ(float_rounded_to_odd(std::numeric_limits<int64_t>::max()), std::ldexp(1.0f, 63) - std::ldexp(1.0f, 39));
  EXPECT_EQ(float_to_bf16_bits(float_rounded_to_odd(std::numeric_limits<int64_t>::max())), 0x5F00);  // 2^63
  EXPECT_EQ(float_rounded_to_odd(1e39), std::numeric_limits<float>::max());
  EXPECT_TRUE(std::isnan(float_rounded_to_odd(std::nan(""))));
  EXPECT_EQ(float_rounded_to_odd(one + std::ldexp(1.0, -8)), 1.0f + std::ldexp(1.0f, -8));
}

TEST(Conversion, ConversionOfNonContiguousViews) {
  test::HostRng rng;
  const auto v = rng.uniform(12, -4, 4);
  const Tensor x = test::make_tensor(v, {3, 4}, kF64, kCPU, test::Layout::Transposed);
  for (DType dtype : {kF32, kF16, kBF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const Tensor y = x.to(dtype);
      EXPECT_TRUE(all_close(y, {3, 4}, test::round_to_dtype(v, dtype), kExact));
    });
  }
}

TEST(Conversion, NoOpConversionsReturnTheSameTensor) {
  const Tensor x = ones({3}, kF32);
  EXPECT_TRUE(x.to(kF32).is_same(x));
  EXPECT_TRUE(x.to(kCPU).is_same(x));
}

TEST(DTypeHelpers, SizesNamesAndKinds) {
  EXPECT_EQ(dtype_size(kF32), 4u);
  EXPECT_EQ(dtype_size(kF64), 8u);
  EXPECT_EQ(dtype_size(kF16), 2u);
  EXPECT_EQ(dtype_size(kBF16), 2u);
  EXPECT_EQ(dtype_size(kI32), 4u);
  EXPECT_EQ(dtype_size(kI64), 8u);
  EXPECT_EQ(dtype_size(kU8), 1u);
  EXPECT_EQ(dtype_size(kBool), 1u);
  EXPECT_EQ(dtype_name(kBF16), "bf16");
  EXPECT_EQ(dtype_name(kI64), "i64");
  for (DType d : {kF32, kF64, kF16, kBF16}) EXPECT_TRUE(is_floating(d));
  for (DType d : {kI32, kI64, kU8}) EXPECT_TRUE(is_integral(d));
  EXPECT_FALSE(is_floating(kBool));
  EXPECT_FALSE(is_integral(kBool));
  EXPECT_FALSE(is_integral(kF32));
}

TEST(DeviceHelpers, ParseAndFormat) {
  EXPECT_EQ(Device::parse("cpu"), kCPU);
  EXPECT_EQ(Device::parse("cuda"), cuda_device(0));
  EXPECT_EQ(Device::parse("cuda:3"), cuda_device(3));
  EXPECT_EQ(cuda_device(2).str(), "cuda:2");
  EXPECT_EQ(kCPU.str(), "cpu");
  EXPECT_TRUE(test::raises_error([] { (void)Device::parse("gpu"); }, {"gpu"}));
  EXPECT_TRUE(test::raises_error([] { (void)Device::parse("cuda:-1"); }));
  EXPECT_TRUE(test::raises_error([] { (void)Device::parse("cuda:1x"); }));
}

}  // namespace
}  // namespace flame
