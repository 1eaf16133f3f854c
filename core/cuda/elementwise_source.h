// CUDA C++ source of the generated elementwise kernels (compiled with NVRTC by elementwise.cpp).
// Internal to core/cuda/.
//
// Note [elementwise kernels]
// One kernel per (kind, op, dtypes, layout). Every kernel has the signature
//   flame_elementwise(out_t* out, const in0_t* in0, const in1_t* in1, const in2_t* in2,
//                     p_t p0, p_t p1, idx_t n [, Layout layout])
// with unused inputs passed as null and p0/p1 the op's scalars. idx_t is `unsigned int` for the
// narrow index (every element and offset below 2^31) and `long long` otherwise.
// - Contiguous layout (ndim == 0): flat index; each thread loads `vec` elements of every operand
//   at once (16-byte loads for the widest operand; every pointer is aligned to vec * its element
//   size), grid-stride loop, then a scalar tail for n % vec.
// - Strided layout (ndim 1..8, after the launcher merged dimensions): Layout is
//     narrow: unsigned size[ndim]; unsigned magic[ndim]; unsigned shift[ndim]; unsigned stride[1+nin][ndim];
//     wide:   long long size[ndim]; long long stride[1+nin][ndim];
//   (strides in elements, operand 0 = out), passed by value; the narrow form divides by the sizes
//   with a multiply-high and shift (magic, shift from ew_fast_divider).
// Compute types: f16/bf16/f32 in float, f64 in double, i32 in int, i64 in long long, u8 and bool
// in int (bool read as 0/1), except that BinaryScalar computes integer dtypes in long long with an
// int64 scalar, so a scalar outside the tensor's range acts as in the CPU reference (int64
// arithmetic stored modulo the type's width). Stores follow Note [cpu numerics] in
// core/cpu/cpu_backend.h: f16/bf16 round to nearest even, floats to integers truncate and
// saturate (NaN -> 0), integers to integers wrap, nonzero -> bool 1.
#pragma once

#include <cstdint>
#include <string>

#include "core/backend.h"
#include "core/dtype.h"

namespace flame::cuda {

enum class EwKind : uint8_t { Unary, Binary, BinaryScalar, Where, Copy, Fill, Arange };

inline constexpr const char* kEwKernelName = "flame_elementwise";
inline constexpr int kEwThreads = 256;

/// Identifies one generated kernel. `op` is the UnaryOp or BinaryOp (0 for the other kinds);
/// `in` is the dtype of the data inputs (a and b for Where), `out` the output's.
struct EwKernelKey {
  EwKind kind = EwKind::Copy;
  uint8_t op = 0;
  DType in = DType::F32;
  DType out = DType::F32;
  uint8_t vec = 1;   // contiguous layout: elements per thread per step
  uint8_t ndim = 0;  // 0: contiguous layout; 1..8: strided layout over ndim dims
  bool wide_index = false;
  // BinaryScalar comparisons of an integer tensor with a scalar that is not an integer: compare
  // exactly in double (as the CPU reference does).
  bool scalar_f64 = false;

  /// A 64-bit key unique for (this key, device).
  uint64_t pack(int device) const {
    return uint64_t(kind) | uint64_t(op) << 8 | uint64_t(in) << 16 | uint64_t(out) << 24 |
           uint64_t(vec) << 32 | uint64_t(ndim) << 40 | uint64_t(wide_index) << 48 |
           uint64_t(scalar_f64) << 49 | uint64_t(device) << 56;
  }
};

/// Tensor inputs a kind reads: Unary, BinaryScalar, Copy 1; Binary 2; Where 3 (cond, a, b); else 0.
int ew_num_inputs(EwKind kind);

/// The dtype of the scalars p0, p1 as the kernel declares them: the compute type of `in` (as a
/// DType: F32 for f16/bf16, I32 for u8/bool; I64 for every integer dtype in BinaryScalar, F64
/// when scalar_f64) for Unary and BinaryScalar, out's storage dtype for Fill, F64 otherwise.
DType ew_param_dtype(const EwKernelKey& key);

/// The complete source of the kernel `key` for compute capability `arch`. Raises flame::Error for
/// an op the dtype does not support (e.g. exp on integers, div on integers).
std::string ew_kernel_source(const EwKernelKey& key, int arch);

/// Multiply-high divider for the narrow strided layout: for 1 <= d < 2^31 and every n < 2^31,
/// n / d == (umulhi(n, magic) + n) >> shift.
struct FastDivider {
  uint32_t magic;
  uint32_t shift;
};
FastDivider ew_fast_divider(uint32_t divisor);

}  // namespace flame::cuda
