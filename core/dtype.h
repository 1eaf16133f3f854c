// Element types of a Tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace flame {

/// Element type. F16 and BF16 are stored as 16-bit patterns and computed in float.
enum class DType : uint8_t { F32, F64, F16, BF16, I32, I64, U8, Bool };

inline constexpr DType kF32 = DType::F32;
inline constexpr DType kF64 = DType::F64;
inline constexpr DType kF16 = DType::F16;
inline constexpr DType kBF16 = DType::BF16;
inline constexpr DType kI32 = DType::I32;
inline constexpr DType kI64 = DType::I64;
inline constexpr DType kU8 = DType::U8;
inline constexpr DType kBool = DType::Bool;

/// Bytes per element.
size_t dtype_size(DType dtype);
/// "f32", "bf16", "i64", ...
std::string_view dtype_name(DType dtype);
/// f32, f64, f16, bf16.
bool is_floating(DType dtype);
/// i32, i64, u8 (bool is neither floating nor integral).
bool is_integral(DType dtype);

/// Maps a C++ element type to its DType (float, double, int32_t, int64_t, uint8_t, bool).
template <class T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }
template <> constexpr DType dtype_of<bool>() { return DType::Bool; }

/// IEEE half <-> float on the host, round to nearest even. Bit patterns as uint16_t.
uint16_t float_to_half_bits(float value);
float half_bits_to_float(uint16_t bits);
/// bfloat16 <-> float on the host, round to nearest even (NaN stays NaN).
uint16_t float_to_bf16_bits(float value);
float bf16_bits_to_float(uint16_t bits);
/// `value` as a float rounded to odd: exact when it fits, else truncated toward zero with the last
/// mantissa bit set. Rounding it to f16 or bf16 (nearest even; at most 11 of float's 24
/// significant bits) gives what rounding `value` itself would, where going through the nearest
/// float could round twice: 1 + 2^-8 + 2^-40 would become 1 in bf16 instead of 1 + 2^-7, and the
/// integer 2^24 + 2^16 + 1 would become 2^24 instead of 2^24 + 2^17. Beyond float's range it is
/// the largest finite float (which rounds on to inf); NaN stays NaN. The elementwise kernels
/// convert the same way on CUDA (core/cuda/elementwise_source.cpp).
float float_rounded_to_odd(double value);
float float_rounded_to_odd(int64_t value);

}  // namespace flame
