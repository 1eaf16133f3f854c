// Random tensors on CUDA, drawn per Note [random stream layout] (core/random.h) so that they
// equal the CPU backend's draws for the same seed and offset.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include <cmath>

#include "core/cuda/launchers.h"
#include "core/random.h"

namespace flame::cuda {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// Uniform draws are clamped below 1 before rounding to 16 bits (see kHalfBelowOne in core/random.h).
template <class T>
__device__ __forceinline__ float uniform_limit() {
  if constexpr (std::is_same_v<T, __half>) return kHalfBelowOne;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return kBf16BelowOne;
  else return 1.0f;
}

// out: [n] contiguous. Thread b draws Philox block offset + b and writes elements 4b .. 4b+3.
template <class T>
__global__ void uniform_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = global_thread(); b < blocks; b += grid_threads()) {
    const Philox4x32 bits = philox4x32_10(offset + static_cast<uint64_t>(b), 0, seed);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = 4 * b + w;
      if (i < n) out[i] = from_compute<T>(fminf(uniform_from_bits(bits.v[w]), uniform_limit<T>()));
    }
  }
}

// Box-Muller's cos branch from words (a, b): in float, or in double for f64 outputs.
template <class T>
__device__ __forceinline__ T normal_from_bits(uint32_t a, uint32_t b) {
  if constexpr (std::is_same_v<T, double>) {
    const double u1 = 1.0 - static_cast<double>(uniform_from_bits(a));
    const double u2 = static_cast<double>(uniform_from_bits(b));
    return sqrt(-2.0 * log(u1)) * cos(kTwoPi * u2);
  } else {
    const float u1 = 1.0f - uniform_from_bits(a);
    const float u2 = uniform_from_bits(b);
    return from_compute<T>(sqrtf(-2.0f * logf(u1)) * cosf(static_cast<float>(kTwoPi) * u2));
  }
}

// out: [n] contiguous. Thread b draws Philox block offset + b and writes elements 2b, 2b+1.
template <class T>
__global__ void normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset) {
  const int64_t blocks = (n + 1) / 2;
  for (int64_t b = global_thread(); b < blocks; b += grid_threads()) {
    const Philox4x32 bits = philox4x32_10(offset + static_cast<uint64_t>(b), 0, seed);
    out[2 * b] = normal_from_bits<T>(bits.v[0], bits.v[1]);
    if (2 * b + 1 < n) out[2 * b + 1] = normal_from_bits<T>(bits.v[2], bits.v[3]);
  }
}

// out: [n] contiguous, integers in [low, high) stored as T.
template <class T>
__global__ void integer_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, int64_t low, int64_t high) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = global_thread(); b < blocks; b += grid_threads()) {
    const Philox4x32 bits = philox4x32_10(offset + static_cast<uint64_t>(b), 0, seed);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = 4 * b + w;
      if (i < n) out[i] = from_compute<T>(randint_from_bits(bits.v[w], low, high));
    }
  }
}

const char* kind_name(RandomKind kind) {
  switch (kind) {
    case RandomKind::Uniform: return "rand";
    case RandomKind::Normal: return "randn";
    case RandomKind::Integer: return "randint";
  }
  return "random";
}

}  // namespace

void launch_random(DeviceContext& ctx, const Tensor& out, RandomKind kind, uint64_t seed, uint64_t offset,
                   int64_t a, int64_t b) {
  const char* op = kind_name(kind);
  FLAME_CHECK(out.is_contiguous(), "{}: the CUDA kernel needs a contiguous output, got {}", op, out.describe());
  if (kind == RandomKind::Integer) {
    FLAME_CHECK(a < b, "{}: empty range [{}, {}); expected low < high", op, a, b);
    FLAME_CHECK(static_cast<uint64_t>(b) - static_cast<uint64_t>(a) <= (uint64_t{1} << 32),
                "{}: range [{}, {}) is wider than 2^32", op, a, b);
  }
  FLAME_CHECK(kind == RandomKind::Integer || is_floating(out.dtype()),
              "{}: output {} must be f32, f64, f16 or bf16 (integer outputs are for randint)", op, out.describe());
  const int64_t n = out.numel();
  if (n == 0) return;
  const int64_t counters = kind == RandomKind::Normal ? (n + 1) / 2 : (n + 3) / 4;
  const unsigned grid = grid_for(ctx, counters, kBlockSize);
  dispatch_dtype<DispatchSet::FloatingIntAndU8>(out.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* data = static_cast<T*>(out.data_ptr());
    switch (kind) {
      case RandomKind::Uniform:
        if constexpr (!std::is_integral_v<T>) {
          uniform_kernel<T><<<grid, kBlockSize, 0, ctx.stream>>>(data, n, seed, offset);
        }
        break;
      case RandomKind::Normal:
        if constexpr (!std::is_integral_v<T>) {
          normal_kernel<T><<<grid, kBlockSize, 0, ctx.stream>>>(data, n, seed, offset);
        }
        break;
      case RandomKind::Integer:
        integer_kernel<T><<<grid, kBlockSize, 0, ctx.stream>>>(data, n, seed, offset, a, b);
        break;
    }
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
