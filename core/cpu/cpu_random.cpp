// Philox draws laid out per Note [random stream layout] (core/random.h), as the CUDA backend does.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"
#include "core/random.h"

namespace flame {

using namespace cpu;

namespace {

// Box-Muller's cos branch from the word pair (a, b), in float.
float normal_from_bits_float(uint32_t a, uint32_t b) {
  const float u1 = 1.0f - uniform_from_bits(a);
  const float u2 = uniform_from_bits(b);
  return sqrtf(-2.0f * logf(u1)) * cosf(2.0f * std::numbers::pi_v<float> * u2);
}

// The same in double, for f64 outputs.
double normal_from_bits_double(uint32_t a, uint32_t b) {
  const double u1 = 1.0 - static_cast<double>(uniform_from_bits(a));
  const double u2 = static_cast<double>(uniform_from_bits(b));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace

void CpuBackend::random(const Tensor& out, RandomKind kind, uint64_t seed, uint64_t offset,
                        int64_t a, int64_t b) {
  FLAME_CHECK(out.is_contiguous(), "random: out must be contiguous, got {}", out.describe());
  const int64_t n = out.numel();
  char* data = static_cast<char*>(out.data_ptr());
  const size_t size = out.element_size();
  auto element = [&](int64_t i) { return data + static_cast<size_t>(i) * size; };

  switch (kind) {
    case RandomKind::Uniform: {
      FLAME_CHECK(is_floating(out.dtype()), "rand: out must be a floating dtype, got {}",
                  out.describe());
      const StoreDouble store = double_storer(out.dtype());
      const float below_one = out.dtype() == DType::F16    ? kHalfBelowOne
                              : out.dtype() == DType::BF16 ? kBf16BelowOne
                                                           : 1.0f;
      for (int64_t i = 0; i < n; ++i) {
        const Philox4x32 block = philox4x32_10(offset + static_cast<uint64_t>(i / 4), 0, seed);
        store(element(i), std::min(uniform_from_bits(block.v[i % 4]), below_one));
      }
      return;
    }
    case RandomKind::Normal: {
      FLAME_CHECK(is_floating(out.dtype()), "randn: out must be a floating dtype, got {}",
                  out.describe());
      const StoreDouble store = double_storer(out.dtype());
      const bool in_double = out.dtype() == DType::F64;
      for (int64_t i = 0; i < n; ++i) {
        const Philox4x32 block = philox4x32_10(offset + static_cast<uint64_t>(i / 2), 0, seed);
        const uint32_t wa = block.v[2 * (i % 2)], wb = block.v[2 * (i % 2) + 1];
        store(element(i),
              in_double ? normal_from_bits_double(wa, wb) : normal_from_bits_float(wa, wb));
      }
      return;
    }
    case RandomKind::Integer: {
      FLAME_CHECK(a < b, "randint: needs low < high, got [{}, {})", a, b);
      FLAME_CHECK(static_cast<uint64_t>(b) - static_cast<uint64_t>(a) <= (uint64_t{1} << 32),
                  "randint: range [{}, {}) is wider than 2^32", a, b);
      const StoreInt store = int_storer(out.dtype());
      for (int64_t i = 0; i < n; ++i) {
        const Philox4x32 block = philox4x32_10(offset + static_cast<uint64_t>(i / 4), 0, seed);
        store(element(i), randint_from_bits(block.v[i % 4], a, b));
      }
      return;
    }
  }
  FLAME_FAIL("random: unknown kind {}", static_cast<int>(kind));
}

}  // namespace flame
