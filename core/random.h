// Counter-based random numbers (Philox 4x32-10): the same seed and offset give the same stream on
// the CPU and on CUDA, so init, dropout and shuffles are reproducible across devices.
#pragma once

#include <cstdint>

#include "core/device.h"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FLAME_HOST_DEVICE __host__ __device__
#else
#define FLAME_HOST_DEVICE
#endif

namespace flame {

/// Philox 4x32 with 10 rounds (Salmon et al., SC'11): four 32-bit words for each 128-bit counter.
struct Philox4x32 {
  uint32_t v[4];
};

FLAME_HOST_DEVICE inline Philox4x32 philox4x32_10(uint64_t counter_lo, uint64_t counter_hi,
                                                  uint64_t key) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

/// Note [random stream layout]: element i of a draw with (seed, offset) takes word i % 4 of
/// philox4x32_10(offset + i / 4, 0, seed) for rand and randint; randn takes a pair of words
/// per element: element i uses words a = w[2*(i%2)], b = w[2*(i%2)+1] of block offset + i / 2,
/// u1 = 1 - uniform_from_bits(a) in (0, 1], u2 = uniform_from_bits(b), and Box-Muller's cos branch
/// z = sqrt(-2 log u1) * cos(2 pi u2), computed in float (in double for f64 outputs). randint maps
/// one word per element through randint_from_bits.
/// A draw of n elements advances the generator's offset by the number of counters it used.

/// Uniform float in [0, 1) from 24 random bits.
FLAME_HOST_DEVICE inline float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

/// The largest f16 and bf16 values below 1. A uniform draw stored in those dtypes is first clamped
/// to them, since rounding to nearest would otherwise turn draws near 1 into exactly 1.
inline constexpr float kHalfBelowOne = 0.99951171875f;  // 1 - 2^-11
inline constexpr float kBf16BelowOne = 0.99609375f;     // 1 - 2^-8

/// Integer in [low, high) from one word: low + (bits % (high - low)). The modulo bias is below
/// 2^-32 * range, negligible for the ranges tensors use; ranges over 2^32 are rejected by randint.
FLAME_HOST_DEVICE inline int64_t randint_from_bits(uint32_t bits, int64_t low, int64_t high) {
  return low + static_cast<int64_t>(bits % static_cast<uint64_t>(high - low));
}

/// A seed and a position in its stream. Draws read (seed, offset) and advance offset.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void manual_seed(uint64_t seed) {
    seed_ = seed;
    offset_ = 0;
  }
  void set_offset(uint64_t offset) { offset_ = offset; }
  /// Returns the current offset and advances it by `counters`.
  uint64_t advance(uint64_t counters) {
    const uint64_t start = offset_;
    offset_ += counters;
    return start;
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

/// The default generator of `device` (one per device, seed 0 until manual_seed).
Generator& default_generator(Device device);
/// Seeds every device's default generator (PyTorch's torch.manual_seed).
void manual_seed(uint64_t seed);

}  // namespace flame
