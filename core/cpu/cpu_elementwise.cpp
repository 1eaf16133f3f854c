// unary, binary, binary_scalar, where, copy, fill, arange (Note [cpu numerics] in cpu_backend.h).
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"

namespace flame {

using namespace cpu;

namespace {

using UnaryFloatFn = double (*)(double x, double p0, double p1);
using UnaryIntFn = int64_t (*)(int64_t x, int64_t p0, int64_t p1);
using BinaryFloatFn = double (*)(double a, double b);
using BinaryIntFn = int64_t (*)(int64_t a, int64_t b);
template <class T>
using CompareFn = bool (*)(T a, T b);

// Wrapping int64 arithmetic (two's complement, like the stored integer types).
int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
int64_t wrap_sub(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
int64_t wrap_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

// base ** exponent for exponent >= 0 by squaring, wrapping; negative exponents follow PyTorch.
int64_t int_pow(int64_t base, int64_t exponent) {
  if (exponent < 0) {
    if (base == 1) return 1;
    if (base == -1) return (exponent % 2 == 0) ? 1 : -1;
    return 0;
  }
  int64_t result = 1;
  while (exponent > 0) {
    if (exponent & 1) result = wrap_mul(result, base);
    base = wrap_mul(base, base);
    exponent >>= 1;
  }
  return result;
}

bool is_float_only(UnaryOp op) {
  switch (op) {
    case UnaryOp::Neg:
    case UnaryOp::Abs:
    case UnaryOp::Relu:
    case UnaryOp::Pow:
    case UnaryOp::Clamp: return false;
    default: return true;
  }
}

UnaryFloatFn unary_float_fn(UnaryOp op) {
  switch (op) {
    case UnaryOp::Neg: return [](double x, double, double) { return -x; };
    case UnaryOp::Exp: return [](double x, double, double) { return std::exp(x); };
    case UnaryOp::Log: return [](double x, double, double) { return std::log(x); };
    case UnaryOp::Sqrt: return [](double x, double, double) { return std::sqrt(x); };
    case UnaryOp::Rsqrt: return [](double x, double, double) { return 1.0 / std::sqrt(x); };
    case UnaryOp::Abs: return [](double x, double, double) { return std::fabs(x); };
    case UnaryOp::Relu:
      return [](double x, double, double) { return std::isnan(x) || x > 0.0 ? x : 0.0; };
    case UnaryOp::Sigmoid:
      return [](double x, double, double) { return 1.0 / (1.0 + std::exp(-x)); };
    case UnaryOp::Tanh: return [](double x, double, double) { return std::tanh(x); };
    case UnaryOp::Gelu:
      return [](double x, double, double) {
        return 0.5 * x * (1.0 + std::erf(x * std::numbers::sqrt2 / 2.0));
      };
    case UnaryOp::GeluTanh:
      return [](double x, double, double) {
        const double k = std::sqrt(2.0 / std::numbers::pi);
        return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
      };
    case UnaryOp::Silu: return [](double x, double, double) { return x / (1.0 + std::exp(-x)); };
    case UnaryOp::Pow: return [](double x, double p0, double) { return std::pow(x, p0); };
    case UnaryOp::Clamp:
      return [](double x, double lo, double hi) {
        if (std::isnan(x) || std::isnan(lo) || std::isnan(hi))
          return std::numeric_limits<double>::quiet_NaN();
        const double r = x < lo ? lo : x;
        return r > hi ? hi : r;
      };
  }
  FLAME_FAIL("unary: unknown op {}", static_cast<int>(op));
}

UnaryIntFn unary_int_fn(UnaryOp op) {
  switch (op) {
    case UnaryOp::Neg: return [](int64_t x, int64_t, int64_t) { return wrap_sub(0, x); };
    case UnaryOp::Abs:
      return [](int64_t x, int64_t, int64_t) { return x < 0 ? wrap_sub(0, x) : x; };
    case UnaryOp::Relu: return [](int64_t x, int64_t, int64_t) { return x > 0 ? x : int64_t{0}; };
    case UnaryOp::Pow: return [](int64_t x, int64_t p0, int64_t) { return int_pow(x, p0); };
    case UnaryOp::Clamp:
      return [](int64_t x, int64_t lo, int64_t hi) {
        const int64_t r = x < lo ? lo : x;
        return r > hi ? hi : r;
      };
    default: FLAME_FAIL("unary {}: not defined for integer tensors", op_name(op));
  }
}

// An integer clamp bound: an integral double, or +-inf meaning "no bound".
int64_t int_clamp_bound(double bound, const Tensor& in) {
  if (bound == -std::numeric_limits<double>::infinity()) return std::numeric_limits<int64_t>::min();
  if (bound == std::numeric_limits<double>::infinity()) return std::numeric_limits<int64_t>::max();
  FLAME_CHECK(is_int64_value(bound),
              "clamp: bound {} is not an integer but the input is {}; convert it to a floating "
              "dtype with to() first",
              bound, in.describe());
  return static_cast<int64_t>(bound);
}

BinaryFloatFn binary_float_fn(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return [](double a, double b) { return a + b; };
    case BinaryOp::Sub: return [](double a, double b) { return a - b; };
    case BinaryOp::Mul: return [](double a, double b) { return a * b; };
    case BinaryOp::Div: return [](double a, double b) { return a / b; };
    case BinaryOp::Pow: return [](double a, double b) { return std::pow(a, b); };
    case BinaryOp::Maximum:
      return [](double a, double b) {
        return std::isnan(a) ? a : std::isnan(b) ? b : (a > b ? a : b);
      };
    case BinaryOp::Minimum:
      return [](double a, double b) {
        return std::isnan(a) ? a : std::isnan(b) ? b : (a < b ? a : b);
      };
    default: FLAME_FAIL("binary {}: not an arithmetic op", op_name(op));
  }
}

BinaryIntFn binary_int_fn(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return wrap_add;
    case BinaryOp::Sub: return wrap_sub;
    case BinaryOp::Mul: return wrap_mul;
    case BinaryOp::Pow: return int_pow;
    case BinaryOp::Maximum: return [](int64_t a, int64_t b) { return a > b ? a : b; };
    case BinaryOp::Minimum: return [](int64_t a, int64_t b) { return a < b ? a : b; };
    default: FLAME_FAIL("binary {}: not defined for integer tensors", op_name(op));
  }
}

template <class T>
CompareFn<T> compare_fn(BinaryOp op) {
  switch (op) {
    case BinaryOp::Eq: return [](T a, T b) { return a == b; };
    case BinaryOp::Ne: return [](T a, T b) { return a != b; };
    case BinaryOp::Lt: return [](T a, T b) { return a < b; };
    case BinaryOp::Le: return [](T a, T b) { return a <= b; };
    case BinaryOp::Gt: return [](T a, T b) { return a > b; };
    case BinaryOp::Ge: return [](T a, T b) { return a >= b; };
    default: FLAME_FAIL("binary {}: not a comparison", op_name(op));
  }
}

void store_bool(char* p, bool value) { *reinterpret_cast<uint8_t*>(p) = value ? 1 : 0; }

// out = fn(a, b) where b is the tensor `b` when given, else the constant `scalar`.
template <class T, class Load, class Fn, class Store>
void binary_loop(const char* name, const Tensor& a, const Tensor* b, T scalar, const Tensor& out,
                 Load load, Fn fn, Store store) {
  if (b != nullptr) {
    const Load load_b = load;
    for_each_element<3>(name, {&a, b, &out}, [&](const std::array<char*, 3>& p) {
      store(p[2], fn(load(p[0]), load_b(p[1])));
    });
  } else {
    for_each_element<2>(name, {&a, &out}, [&](const std::array<char*, 2>& p) {
      store(p[1], fn(load(p[0]), scalar));
    });
  }
}

// Shared body of binary (b given) and binary_scalar (b null, `scalar` used).
void binary_impl(BinaryOp op, const Tensor& a, const Tensor* b, double scalar, const Tensor& out) {
  const char* name = op_name(op);
  const DType dtype = a.dtype();
  if (b != nullptr) {
    FLAME_CHECK(b->dtype() == dtype, "{}: operands must share a dtype, got {} and {}", name,
                a.describe(), b->describe());
  }
  const DType expected_out = is_comparison(op) ? DType::Bool : dtype;
  FLAME_CHECK(out.dtype() == expected_out, "{}: out must be {} for inputs of dtype {}, got {}",
              name, dtype_name(expected_out), dtype_name(dtype), out.describe());

  if (is_floating(dtype)) {
    // A scalar takes the compute type of the tensor (f32 for f32/f16/bf16, f64 for f64), as on CUDA
    // and in PyTorch: f32(0.1) == 0.1 holds.
    if (b == nullptr && dtype != DType::F64) scalar = static_cast<double>(static_cast<float>(scalar));
    if (is_comparison(op)) {
      binary_loop(name, a, b, scalar, out, double_loader(dtype), compare_fn<double>(op),
                  store_bool);
    } else {
      binary_loop(name, a, b, scalar, out, double_loader(dtype), binary_float_fn(op),
                  double_storer(dtype));
    }
    return;
  }

  FLAME_CHECK(op != BinaryOp::Div,
              "div: not defined for {} tensors ({}); convert to a floating dtype with to() first",
              dtype_name(dtype), a.describe());
  FLAME_CHECK(dtype != DType::Bool || (op != BinaryOp::Sub && op != BinaryOp::Pow),
              "{}: not defined for bool tensors ({}); use a logical op or convert with to()", name,
              a.describe());
  if (is_comparison(op)) {
    if (b == nullptr && !is_int64_value(scalar)) {
      // Compared exactly in double: a fractional scalar lies far from any int64 that rounds.
      binary_loop(name, a, b, scalar, out, double_loader(dtype), compare_fn<double>(op),
                  store_bool);
      return;
    }
    binary_loop(name, a, b, static_cast<int64_t>(scalar), out, int_loader(dtype),
                compare_fn<int64_t>(op), store_bool);
    return;
  }
  if (b == nullptr) {
    FLAME_CHECK(is_int64_value(scalar),
                "{}: scalar {} is not an integer but the tensor is {}; convert it to a floating "
                "dtype with to() first",
                name, scalar, a.describe());
    FLAME_CHECK(op != BinaryOp::Pow || scalar >= 0,
                "pow: integer tensors ({}) take non-negative integer exponents, got {}",
                a.describe(), scalar);
  }
  binary_loop(name, a, b, static_cast<int64_t>(b == nullptr ? scalar : 0.0), out, int_loader(dtype),
              binary_int_fn(op), int_storer(dtype));
}

}  // namespace

void CpuBackend::unary(UnaryOp op, const Tensor& in, const Tensor& out, double p0, double p1) {
  const char* name = op_name(op);
  const DType dtype = in.dtype();
  FLAME_CHECK(out.dtype() == dtype, "{}: out must have the input's dtype, got {} and {}", name,
              in.describe(), out.describe());
  if (is_floating(dtype)) {
    const UnaryFloatFn fn = unary_float_fn(op);
    const LoadDouble load = double_loader(dtype);
    const StoreDouble store = double_storer(dtype);
    for_each_element<2>(name, {&in, &out}, [&](const std::array<char*, 2>& p) {
      store(p[1], fn(load(p[0]), p0, p1));
    });
    return;
  }
  FLAME_CHECK(dtype != DType::Bool,
              "{}: not defined for bool tensors ({}); convert with to() first", name,
              in.describe());
  FLAME_CHECK(!is_float_only(op),
              "{}: needs a floating-point tensor, got {}; convert with to() first", name,
              in.describe());
  int64_t i0 = 0, i1 = 0;
  if (op == UnaryOp::Pow) {
    FLAME_CHECK(is_int64_value(p0) && p0 >= 0,
                "pow: integer tensors ({}) take non-negative integer exponents, got {}",
                in.describe(), p0);
    i0 = static_cast<int64_t>(p0);
  } else if (op == UnaryOp::Clamp) {
    i0 = int_clamp_bound(p0, in);
    i1 = int_clamp_bound(p1, in);
  }
  const UnaryIntFn fn = unary_int_fn(op);
  const LoadInt load = int_loader(dtype);
  const StoreInt store = int_storer(dtype);
  for_each_element<2>(name, {&in, &out},
                      [&](const std::array<char*, 2>& p) { store(p[1], fn(load(p[0]), i0, i1)); });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  binary_impl(op, a, &b, 0.0, out);
}

void CpuBackend::binary_scalar(BinaryOp op, const Tensor& a, double scalar, const Tensor& out) {
  binary_impl(op, a, nullptr, scalar, out);
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  FLAME_CHECK(cond.dtype() == DType::Bool, "where: cond must be bool, got {}", cond.describe());
  FLAME_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(),
              "where: a, b and out must share a dtype, got {}, {} and {}", a.describe(),
              b.describe(), out.describe());
  const size_t size = out.element_size();
  for_each_element<4>("where", {&cond, &a, &b, &out}, [&](const std::array<char*, 4>& p) {
    std::memcpy(p[3], *reinterpret_cast<const uint8_t*>(p[0]) != 0 ? p[1] : p[2], size);
  });
}

void CpuBackend::copy(const Tensor& src, const Tensor& out) {
  if (src.dtype() == out.dtype()) {
    const size_t size = out.element_size();
    for_each_element<2>("copy", {&src, &out},
                        [&](const std::array<char*, 2>& p) { std::memmove(p[1], p[0], size); });
  } else if (!is_floating(src.dtype())) {
    // Integers (and bool) to anything through int64: an i64 beyond 2^53 rounds once to f32, as on
    // CUDA, not first to a double and then again to f32.
    const LoadInt load = int_loader(src.dtype());
    const StoreInt store = int_storer(out.dtype());
    for_each_element<2>("copy", {&src, &out},
                        [&](const std::array<char*, 2>& p) { store(p[1], load(p[0])); });
  } else {
    const LoadDouble load = double_loader(src.dtype());
    const StoreDouble store = double_storer(out.dtype());
    for_each_element<2>("copy", {&src, &out},
                        [&](const std::array<char*, 2>& p) { store(p[1], load(p[0])); });
  }
}

void CpuBackend::fill(const Tensor& out, double value) {
  alignas(8) char element[8];
  double_storer(out.dtype())(element, value);
  const size_t size = out.element_size();
  for_each_element<1>("fill", {&out},
                      [&](const std::array<char*, 1>& p) { std::memcpy(p[0], element, size); });
}

void CpuBackend::arange(const Tensor& out, double start, double step) {
  FLAME_CHECK(out.dim() == 1 && out.is_contiguous(), "arange: out must be 1-D contiguous, got {}",
              out.describe());
  const StoreDouble store = double_storer(out.dtype());
  const size_t size = out.element_size();
  char* data = static_cast<char*>(out.data_ptr());
  for (int64_t i = 0; i < out.numel(); ++i) {
    store(data + static_cast<size_t>(i) * size, start + static_cast<double>(i) * step);
  }
}

}  // namespace flame
