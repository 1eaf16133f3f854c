// rand / randn / randint on the CPU: the values follow Note [random stream layout] (checked with
// philox4x32_10 from core/random.h), generators advance by the counters they use, the same seed
// reproduces the same values, and 1e5 draws have the closed-form mean and variance.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "support/test_support.h"

namespace flame {
namespace {

using test::all_close;
using test::Tolerance;

/// Word `i % 4` of block offset + i / 4 (rand, randint).
uint32_t word_for(uint64_t seed, uint64_t offset, int64_t i) {
  return philox4x32_10(offset + static_cast<uint64_t>(i) / 4, 0, seed).v[i % 4];
}

std::vector<double> expected_rand(uint64_t seed, uint64_t offset, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = uniform_from_bits(word_for(seed, offset, i));
  return out;
}

std::vector<double> expected_randint(uint64_t seed, uint64_t offset, int64_t n, int64_t low, int64_t high) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<double>(randint_from_bits(word_for(seed, offset, i), low, high));
  return out;
}

/// Box-Muller's cos branch on words 2*(i%2), 2*(i%2)+1 of block offset + i / 2, in double.
std::vector<double> expected_randn(uint64_t seed, uint64_t offset, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const Philox4x32 block = philox4x32_10(offset + static_cast<uint64_t>(i) / 2, 0, seed);
    const double u1 = 1.0 - static_cast<double>(uniform_from_bits(block.v[2 * (i % 2)]));
    const double u2 = uniform_from_bits(block.v[2 * (i % 2) + 1]);
    out[i] = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
  return out;
}

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

TEST(Philox, KnownAnswer) {
  // Random123's published known-answer vectors for philox4x32_10.
  const Philox4x32 zero = philox4x32_10(0, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  const Philox4x32 ones = philox4x32_10(0xffffffffffffffffull, 0xffffffffffffffffull, 0xffffffffffffffffull);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
  const Philox4x32 pi = philox4x32_10(0x85a308d3243f6a88ull, 0x0370734413198a2eull, 0x299f31d0a4093822ull);
  EXPECT_EQ(pi.v[0], 0xd16cfe09u);
  EXPECT_EQ(pi.v[1], 0x94fdccebu);
  EXPECT_EQ(pi.v[2], 0x5001e420u);
  EXPECT_EQ(pi.v[3], 0x24126ea1u);
}

TEST(Random, RandFollowsTheStreamLayout) {
  const uint64_t seed = test::test_seed();
  Generator gen(seed);
  const Tensor a = rand({11}, kF32, &gen);
  EXPECT_EQ(a.dtype(), kF32);
  EXPECT_TRUE(all_close(a, {11}, expected_rand(seed, 0, 11), Tolerance{0, 0}));
  EXPECT_EQ(gen.offset(), ceil_div(11, 4));
  const Tensor b = rand({2, 3}, kF32, &gen);  // continues at offset 3
  EXPECT_TRUE(all_close(b, {2, 3}, expected_rand(seed, 3, 6), Tolerance{0, 0}));
  EXPECT_EQ(gen.offset(), 3 + ceil_div(6, 4));
}

TEST(Random, RandintFollowsTheStreamLayout) {
  const uint64_t seed = test::test_seed();
  Generator gen(seed);
  const Tensor a = randint(-5, 7, {10}, kI64, &gen);
  EXPECT_EQ(a.dtype(), kI64);
  EXPECT_TRUE(all_close(a, {10}, expected_randint(seed, 0, 10, -5, 7), Tolerance{0, 0}));
  EXPECT_EQ(gen.offset(), ceil_div(10, 4));
  const Tensor b = randint(0, 1000, {3, 3}, kI32, &gen);
  EXPECT_EQ(b.dtype(), kI32);
  EXPECT_TRUE(all_close(b, {3, 3}, expected_randint(seed, 3, 9, 0, 1000), Tolerance{0, 0}));
  EXPECT_EQ(gen.offset(), 3 + ceil_div(9, 4));
  EXPECT_EQ(randint(0, 5, {4}).dtype(), kI64);  // the default dtype
}

TEST(Random, RandnFollowsTheStreamLayout) {
  const uint64_t seed = test::test_seed();
  for (DType dtype : {kF32, kF64}) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      Generator gen(seed);
      gen.set_offset(5);
      const Tensor z = randn({13}, dtype, &gen);
      EXPECT_EQ(z.dtype(), dtype);
      EXPECT_TRUE(all_close(z, {13}, expected_randn(seed, 5, 13), Tolerance{1e-6, 1e-6}));
      EXPECT_EQ(gen.offset(), 5 + ceil_div(13, 2));
    });
  }
}

TEST(Random, SetOffsetSkipsWholeCounters) {
  const uint64_t seed = test::test_seed();
  Generator whole(seed), part(seed);
  const std::vector<double> all = test::host_values(rand({16}, kF32, &whole));
  part.set_offset(3);
  const std::vector<double> tail = test::host_values(rand({4}, kF32, &part));
  EXPECT_EQ(tail, std::vector<double>(all.begin() + 12, all.end()));
}

TEST(Random, SameSeedSameValuesAndTheOffsetAdvances) {
  const uint64_t seed = test::test_seed();
  manual_seed(seed);
  Generator& cpu = default_generator(kCPU);
  EXPECT_EQ(cpu.seed(), seed);
  EXPECT_EQ(cpu.offset(), 0u);
  const Tensor a = rand({100});
  EXPECT_EQ(cpu.offset(), 25u);
  const Tensor a2 = rand({100});
  EXPECT_EQ(cpu.offset(), 50u);
  const Tensor n = randn({10});
  EXPECT_EQ(cpu.offset(), 55u);
  const Tensor i = randint(0, 10, {5});
  EXPECT_EQ(cpu.offset(), 57u);
  EXPECT_FALSE(test::values_close(test::host_values(a), test::host_values(a2), Tolerance{0, 0}))
      << "consecutive draws must differ";

  manual_seed(seed);
  EXPECT_EQ(cpu.offset(), 0u);
  EXPECT_TRUE(test::tensors_identical(rand({100}), a));
  EXPECT_TRUE(test::tensors_identical(rand({100}), a2));
  EXPECT_TRUE(test::tensors_identical(randn({10}), n));
  EXPECT_TRUE(test::tensors_identical(randint(0, 10, {5}), i));

  manual_seed(seed + 1);
  EXPECT_FALSE(test::values_close(test::host_values(rand({100})), test::host_values(a), Tolerance{0, 0}))
      << "another seed must give other values";
}

TEST(Random, ExplicitGeneratorLeavesTheDefaultAlone) {
  manual_seed(test::test_seed());
  const uint64_t before = default_generator(kCPU).offset();
  Generator gen(7);
  (void)rand({64}, kF32, &gen);
  (void)randn({64}, kF32, &gen);
  EXPECT_EQ(default_generator(kCPU).offset(), before);
  EXPECT_EQ(gen.offset(), 16u + 32u);
  gen.manual_seed(7);
  EXPECT_EQ(gen.offset(), 0u);
}

TEST(Random, EveryFloatingDtypeIsInRange) {
  Generator gen(test::test_seed());
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      // 40000 draws: in f16 about 10 of them lie within rounding distance of 1.
      const Tensor u = rand({40000}, dtype, &gen);
      EXPECT_EQ(u.dtype(), dtype);
      const auto v = test::host_values(u);
      EXPECT_GE(*std::min_element(v.begin(), v.end()), 0.0);
      EXPECT_LT(*std::max_element(v.begin(), v.end()), 1.0);
      const auto z = test::host_values(randn({4000}, dtype, &gen));
      for (double x : z) ASSERT_TRUE(std::isfinite(x));
    });
  }
}

struct Moments {
  double mean = 0, var = 0;
};

Moments moments(const std::vector<double>& v) {
  Moments m;
  for (double x : v) m.mean += x;
  m.mean /= static_cast<double>(v.size());
  for (double x : v) m.var += (x - m.mean) * (x - m.mean);
  m.var /= static_cast<double>(v.size() - 1);
  return m;
}

constexpr double kSigmas = 6.0;  // bounds at six standard errors: a false alarm is ~1e-9

TEST(RandomStatistics, UniformMomentsAndHistogram) {
  const int64_t n = 100000;
  Generator gen(test::test_seed());
  const auto v = test::host_values(rand({n}, kF32, &gen));
  const Moments m = moments(v);
  EXPECT_NEAR(m.mean, 0.5, kSigmas * std::sqrt(1.0 / 12.0 / n));
  EXPECT_NEAR(m.var, 1.0 / 12.0, kSigmas * std::sqrt((1.0 / 80.0 - 1.0 / 144.0) / n));
  std::vector<int64_t> bins(10, 0);
  for (double x : v) ++bins[std::min<int64_t>(9, static_cast<int64_t>(x * 10))];
  for (int b = 0; b < 10; ++b) {
    EXPECT_NEAR(static_cast<double>(bins[b]), n * 0.1, kSigmas * std::sqrt(n * 0.1 * 0.9)) << "bin " << b;
  }
}

TEST(RandomStatistics, NormalMomentsAndTails) {
  const int64_t n = 100000;
  Generator gen(test::test_seed());
  for (DType dtype : {kF32, kF64}) {
    SCOPED_TRACE(dtype_name(dtype));
    test::guarded([&] {
      const auto v = test::host_values(randn({n}, dtype, &gen));
      const Moments m = moments(v);
      EXPECT_NEAR(m.mean, 0.0, kSigmas / std::sqrt(static_cast<double>(n)));
      EXPECT_NEAR(m.var, 1.0, kSigmas * std::sqrt(2.0 / n));
      const double p1 = std::erf(1.0 / std::sqrt(2.0));  // P(|z| < 1) = 0.6827
      const double inside =
          static_cast<double>(std::count_if(v.begin(), v.end(), [](double x) { return std::fabs(x) < 1.0; }));
      EXPECT_NEAR(inside / n, p1, kSigmas * std::sqrt(p1 * (1 - p1) / n));
    });
  }
}

// A range the dtype cannot hold exactly raises rather than wrapping (u8) or rounding up to high (f16).
TEST(RandomErrors, RandintRangeMustFitTheDtype) {
  EXPECT_TRUE(test::raises_error([] { (void)randint(0, 300, {8}, kU8); }, {"[0, 300)", "u8"}));
  EXPECT_TRUE(test::raises_error([] { (void)randint(-1, 5, {8}, kU8); }, {"u8"}));
  EXPECT_TRUE(test::raises_error([] { (void)randint(0, 4097, {8}, DType::F16); }, {"f16", "2048"}));
  EXPECT_TRUE(test::raises_error([] { (void)randint(0, 1000, {8}, DType::BF16); }, {"bf16"}));
  EXPECT_EQ(randint(0, 256, {8}, kU8).numel(), 8);
  EXPECT_EQ(randint(-2048, 2049, {8}, DType::F16).numel(), 8);
}

TEST(RandomStatistics, RandintCoversTheRangeUniformly) {
  const int64_t n = 100000, low = -3, high = 5;
  Generator gen(test::test_seed());
  const auto v = test::host_values(randint(low, high, {n}, kI64, &gen));
  std::vector<int64_t> counts(high - low, 0);
  for (double x : v) {
    ASSERT_GE(x, low);
    ASSERT_LT(x, high);
    ++counts[static_cast<int64_t>(x) - low];
  }
  const double p = 1.0 / (high - low);
  for (int64_t k = 0; k < high - low; ++k) {
    EXPECT_NEAR(static_cast<double>(counts[k]), n * p, kSigmas * std::sqrt(n * p * (1 - p)))
        << "value " << k + low;
  }
  const Moments m = moments(v);
  const double range = static_cast<double>(high - low);
  EXPECT_NEAR(m.mean, (low + high - 1) / 2.0, kSigmas * std::sqrt((range * range - 1) / 12.0 / n));
}

}  // namespace
}  // namespace flame
