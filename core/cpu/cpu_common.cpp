#include "core/cpu/cpu_common.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace flame::cpu {

namespace {

template <class T>
T read(const char* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

template <class T>
void write(char* p, T value) {
  std::memcpy(p, &value, sizeof(T));
}

// Truncates toward zero and saturates to Int's range; NaN -> 0.
template <class Int>
Int saturate(double value) {
  if (std::isnan(value)) return 0;
  constexpr double lo = static_cast<double>(std::numeric_limits<Int>::min());
  // 2^bits (or 2^(bits-1)) is exact in double; values at or above it saturate.
  constexpr double hi_exclusive = static_cast<double>(std::numeric_limits<Int>::max()) + 1.0;
  if (value <= lo) return std::numeric_limits<Int>::min();
  if (value >= hi_exclusive) return std::numeric_limits<Int>::max();
  return static_cast<Int>(value);
}

}  // namespace

int64_t double_to_int64(double value) { return saturate<int64_t>(value); }

bool is_int64_value(double value) {
  return std::isfinite(value) && value == std::trunc(value) && value >= -9223372036854775808.0 &&
         value < 9223372036854775808.0;
}

LoadDouble double_loader(DType dtype) {
  switch (dtype) {
    case DType::F32: return [](const char* p) { return static_cast<double>(read<float>(p)); };
    case DType::F64: return [](const char* p) { return read<double>(p); };
    case DType::F16:
      return
          [](const char* p) { return static_cast<double>(half_bits_to_float(read<uint16_t>(p))); };
    case DType::BF16:
      return
          [](const char* p) { return static_cast<double>(bf16_bits_to_float(read<uint16_t>(p))); };
    case DType::I32: return [](const char* p) { return static_cast<double>(read<int32_t>(p)); };
    case DType::I64: return [](const char* p) { return static_cast<double>(read<int64_t>(p)); };
    case DType::U8: return [](const char* p) { return static_cast<double>(read<uint8_t>(p)); };
    case DType::Bool: return [](const char* p) { return read<uint8_t>(p) != 0 ? 1.0 : 0.0; };
  }
  FLAME_FAIL("cpu backend: unknown dtype {}", static_cast<int>(dtype));
}

StoreDouble double_storer(DType dtype) {
  switch (dtype) {
    case DType::F32: return [](char* p, double v) { write(p, static_cast<float>(v)); };
    case DType::F64: return [](char* p, double v) { write(p, v); };
    case DType::F16:
      return [](char* p, double v) { write(p, float_to_half_bits(float_rounded_to_odd(v))); };
    case DType::BF16:
      return [](char* p, double v) { write(p, float_to_bf16_bits(float_rounded_to_odd(v))); };
    case DType::I32: return [](char* p, double v) { write(p, saturate<int32_t>(v)); };
    case DType::I64: return [](char* p, double v) { write(p, saturate<int64_t>(v)); };
    case DType::U8: return [](char* p, double v) { write(p, saturate<uint8_t>(v)); };
    case DType::Bool: return [](char* p, double v) { write<uint8_t>(p, v != 0.0 ? 1 : 0); };
  }
  FLAME_FAIL("cpu backend: unknown dtype {}", static_cast<int>(dtype));
}

LoadInt int_loader(DType dtype) {
  switch (dtype) {
    case DType::F32: return [](const char* p) { return saturate<int64_t>(read<float>(p)); };
    case DType::F64: return [](const char* p) { return saturate<int64_t>(read<double>(p)); };
    case DType::F16:
      return [](const char* p) { return saturate<int64_t>(half_bits_to_float(read<uint16_t>(p))); };
    case DType::BF16:
      return [](const char* p) { return saturate<int64_t>(bf16_bits_to_float(read<uint16_t>(p))); };
    case DType::I32: return [](const char* p) { return static_cast<int64_t>(read<int32_t>(p)); };
    case DType::I64: return [](const char* p) { return read<int64_t>(p); };
    case DType::U8: return [](const char* p) { return static_cast<int64_t>(read<uint8_t>(p)); };
    case DType::Bool:
      return [](const char* p) { return static_cast<int64_t>(read<uint8_t>(p) != 0); };
  }
  FLAME_FAIL("cpu backend: unknown dtype {}", static_cast<int>(dtype));
}

StoreInt int_storer(DType dtype) {
  switch (dtype) {
    case DType::F32: return [](char* p, int64_t v) { write(p, static_cast<float>(v)); };
    case DType::F64: return [](char* p, int64_t v) { write(p, static_cast<double>(v)); };
    case DType::F16:
      return [](char* p, int64_t v) { write(p, float_to_half_bits(float_rounded_to_odd(v))); };
    case DType::BF16:
      return [](char* p, int64_t v) { write(p, float_to_bf16_bits(float_rounded_to_odd(v))); };
    case DType::I32: return [](char* p, int64_t v) { write(p, static_cast<int32_t>(v)); };
    case DType::I64: return [](char* p, int64_t v) { write(p, v); };
    case DType::U8: return [](char* p, int64_t v) { write(p, static_cast<uint8_t>(v)); };
    case DType::Bool: return [](char* p, int64_t v) { write<uint8_t>(p, v != 0 ? 1 : 0); };
  }
  FLAME_FAIL("cpu backend: unknown dtype {}", static_cast<int>(dtype));
}

void check_contiguous(const char* op, const char* what, const Tensor& t, int64_t numel) {
  FLAME_CHECK(t.is_contiguous(), "{}: {} must be contiguous, got {} with strides [{}]", op, what,
              t.describe(), fmt::join(t.strides(), ", "));
  FLAME_CHECK(t.numel() == numel, "{}: {} must have {} elements, got {}", op, what, numel,
              t.describe());
}

}  // namespace flame::cpu
