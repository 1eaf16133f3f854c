// Frontends of the elementwise ops: checks, broadcasting, output allocation, dispatch.
#include <climits>
#include <cmath>
#include <limits>

#include "core/autograd.h"
#include "core/autograd/elementwise_backward.h"
#include "core/backend.h"
#include "core/op_checks.h"
#include "core/ops.h"

namespace flame {

using detail::broadcast_shapes;
using detail::check_floating;
using detail::check_same_device;
using detail::check_same_dtype;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

/// Neg, abs, relu and clamp work on integers too; the rest of the unary ops need floating point.
void check_unary_dtype(UnaryOp op, const Tensor& x) {
  const bool integer_ok = op == UnaryOp::Neg || op == UnaryOp::Abs || op == UnaryOp::Relu || op == UnaryOp::Clamp;
  if (integer_ok) {
    FLAME_CHECK(x.dtype() != kBool, "{}: not defined for bool tensors ({})", op_name(op), x.describe());
  } else {
    check_floating(op_name(op), x);
  }
}

/// Arithmetic needs numbers (bool only compares); div and pow need floating point.
void check_binary_dtype(BinaryOp op, const Tensor& a) {
  if (is_comparison(op)) return;
  if (op == BinaryOp::Div || op == BinaryOp::Pow) {
    FLAME_CHECK(is_floating(a.dtype()), "{}: expects floating-point tensors, got {}; convert with .to(kF32)",
                op_name(op), a.describe());
    return;
  }
  FLAME_CHECK(a.dtype() != kBool, "{}: not defined for bool tensors ({})", op_name(op), a.describe());
}

/// The values an integer dtype holds, as doubles ([0, 0] for bool).
std::pair<double, double> integer_range(DType dtype) {
  switch (dtype) {
    case DType::U8:
      return {0.0, 255.0};
    case DType::I32:
      return {INT32_MIN, INT32_MAX};
    case DType::I64:
      return {-9223372036854775808.0, 9223372036854775807.0};
    default:
      return {0.0, 0.0};
  }
}

void check_scalar_fits(BinaryOp op, const Tensor& a, double scalar) {
  // A comparison is exact with any scalar (the backends compare in double when it is fractional,
  // infinite or NaN), as PyTorch's: gt(i64 tensor, 0.5).
  if (is_floating(a.dtype()) || is_comparison(op)) return;
  FLAME_CHECK(std::isfinite(scalar) && scalar == std::trunc(scalar),
              "{}: scalar {} is not an integer but the tensor is {}; convert the tensor with .to(kF32)", op_name(op),
              scalar, a.describe());
  if (op == BinaryOp::Maximum || op == BinaryOp::Minimum) {
    // The scalar is converted to the tensor's dtype first: one it cannot hold would wrap
    // (maximum(u8, 300) gave 44 everywhere, maximum(u8, -1) 255).
    const auto [lowest, highest] = integer_range(a.dtype());
    FLAME_CHECK(scalar >= lowest && scalar <= highest,
                "{}: scalar {} does not fit in {} ([{}, {}]); convert the tensor to a wider dtype first", op_name(op),
                scalar, a.describe(), lowest, highest);
  }
}

Tensor unary(UnaryOp op, const Tensor& x, double p0 = 0, double p1 = 0) {
  check_same_device(op_name(op), {&x});
  check_unary_dtype(op, x);
  Tensor out = Tensor::empty(x.shape(), TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) backend_for(x.device()).unary(op, x, out, p0, p1);
  if (autograd::needs_grad({&x})) autograd::record_unary(op, out, x, p0, p1);
  return out;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = op_name(op);
  check_same_device(name, {&a, &b});
  check_same_dtype(name, {&a, &b});
  check_binary_dtype(op, a);
  const Shape shape = broadcast_shapes(name, a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, TensorOptions(is_comparison(op) ? kBool : a.dtype(), a.device()));
  if (out.numel() > 0) {
    autograd::NoGradGuard no_grad;  // the expanded operands are internal views
    backend_for(a.device()).binary(op, a.expand(shape), b.expand(shape), out);
  }
  if (!is_comparison(op) && autograd::needs_grad({&a, &b})) autograd::record_binary(op, out, a, b);
  return out;
}

Tensor binary_scalar(BinaryOp op, const Tensor& a, double scalar) {
  const char* name = op_name(op);
  check_same_device(name, {&a});
  check_binary_dtype(op, a);
  check_scalar_fits(op, a, scalar);
  Tensor out = Tensor::empty(a.shape(), TensorOptions(is_comparison(op) ? kBool : a.dtype(), a.device()));
  if (out.numel() > 0) backend_for(a.device()).binary_scalar(op, a, scalar, out);
  if (!is_comparison(op) && autograd::needs_grad({&a})) autograd::record_binary_scalar(op, out, a, scalar);
  return out;
}

Tensor& binary_inplace(BinaryOp op, Tensor& self, const Tensor& other) {
  const char* name = op_name(op);
  check_same_device(name, {&self, &other});
  check_same_dtype(name, {&self, &other});
  check_binary_dtype(op, self);
  FLAME_CHECK(broadcast_shapes(name, self.shape(), other.shape()) == self.shape(),
              "{}_: {} cannot broadcast to the in-place target's shape {}", name, other.describe(),
              shape_str(self.shape()));
  detail::check_no_internal_overlap(name, self);
  detail::check_inplace_allowed(name, self, {&other});
  Tensor operand = other.expand(self.shape());
  if (detail::may_overlap(operand, self) && !(operand.offset() == self.offset() && operand.strides() == self.strides()))
    operand = operand.clone();
  if (self.numel() > 0) backend_for(self.device()).binary(op, self, operand, self);
  detail::mark_written(self);
  return self;
}

Tensor& binary_scalar_inplace(BinaryOp op, Tensor& self, double scalar) {
  const char* name = op_name(op);
  check_same_device(name, {&self});
  check_binary_dtype(op, self);
  check_scalar_fits(op, self, scalar);
  detail::check_no_internal_overlap(name, self);
  detail::check_inplace_allowed(name, self);
  if (self.numel() > 0) backend_for(self.device()).binary_scalar(op, self, scalar, self);
  detail::mark_written(self);
  return self;
}

Tensor& unary_inplace(UnaryOp op, Tensor& self, double p0, double p1) {
  check_same_device(op_name(op), {&self});
  check_unary_dtype(op, self);
  detail::check_no_internal_overlap(op_name(op), self);
  detail::check_inplace_allowed(op_name(op), self);
  if (self.numel() > 0) backend_for(self.device()).unary(op, self, self, p0, p1);
  detail::mark_written(self);
  return self;
}

}  // namespace

Tensor neg(const Tensor& x) { return unary(UnaryOp::Neg, x); }
Tensor exp(const Tensor& x) { return unary(UnaryOp::Exp, x); }
Tensor log(const Tensor& x) { return unary(UnaryOp::Log, x); }
Tensor sqrt(const Tensor& x) { return unary(UnaryOp::Sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary(UnaryOp::Rsqrt, x); }
Tensor abs(const Tensor& x) { return unary(UnaryOp::Abs, x); }
Tensor relu(const Tensor& x) { return unary(UnaryOp::Relu, x); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::Sigmoid, x); }
Tensor tanh(const Tensor& x) { return unary(UnaryOp::Tanh, x); }
Tensor gelu(const Tensor& x, GeluApproximation approximation) {
  return unary(approximation == GeluApproximation::Tanh ? UnaryOp::GeluTanh : UnaryOp::Gelu, x);
}
Tensor silu(const Tensor& x) { return unary(UnaryOp::Silu, x); }
Tensor pow(const Tensor& x, double exponent) { return unary(UnaryOp::Pow, x, exponent); }
namespace {

/// An integer tensor clamped to a bound its dtype cannot hold would store wrapped values: raises.
void check_clamp_bounds(const char* op, const Tensor& x, double min, double max) {
  // Floating types hold every bound (as infinity at worst); bool is refused later.
  if (is_floating(x.dtype()) || x.dtype() == DType::Bool) return;
  const auto [lowest, highest] = integer_range(x.dtype());
  FLAME_CHECK(!(min > highest) && !(max < lowest),
              "{}: bounds [{}, {}] lie outside the values {} can hold ([{}, {}]), so every element would become "
              "a value it cannot store",
              op, min, max, x.describe(), lowest, highest);
}

}  // namespace

Tensor clamp(const Tensor& x, double min, double max) {
  FLAME_CHECK(!(min > max), "clamp: min {} is greater than max {}", min, max);
  check_clamp_bounds("clamp", x, min, max);
  return unary(UnaryOp::Clamp, x, min, max);
}
Tensor clamp_min(const Tensor& x, double min) {
  check_clamp_bounds("clamp_min", x, min, kInf);
  return unary(UnaryOp::Clamp, x, min, kInf);
}
Tensor clamp_max(const Tensor& x, double max) {
  check_clamp_bounds("clamp_max", x, -kInf, max);
  return unary(UnaryOp::Clamp, x, -kInf, max);
}

Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Div, a, b); }
Tensor pow(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Pow, a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Maximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Minimum, a, b); }
Tensor add(const Tensor& a, const Tensor& b, double alpha) { return alpha == 1.0 ? add(a, b) : add(a, mul(b, alpha)); }
Tensor add(const Tensor& a, double b) { return binary_scalar(BinaryOp::Add, a, b); }
Tensor sub(const Tensor& a, double b) { return binary_scalar(BinaryOp::Sub, a, b); }
Tensor mul(const Tensor& a, double b) { return binary_scalar(BinaryOp::Mul, a, b); }
Tensor div(const Tensor& a, double b) { return binary_scalar(BinaryOp::Div, a, b); }
Tensor maximum(const Tensor& a, double b) { return binary_scalar(BinaryOp::Maximum, a, b); }
Tensor minimum(const Tensor& a, double b) { return binary_scalar(BinaryOp::Minimum, a, b); }

Tensor eq(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Ge, a, b); }
Tensor eq(const Tensor& a, double b) { return binary_scalar(BinaryOp::Eq, a, b); }
Tensor ne(const Tensor& a, double b) { return binary_scalar(BinaryOp::Ne, a, b); }
Tensor lt(const Tensor& a, double b) { return binary_scalar(BinaryOp::Lt, a, b); }
Tensor le(const Tensor& a, double b) { return binary_scalar(BinaryOp::Le, a, b); }
Tensor gt(const Tensor& a, double b) { return binary_scalar(BinaryOp::Gt, a, b); }
Tensor ge(const Tensor& a, double b) { return binary_scalar(BinaryOp::Ge, a, b); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_same_device("where", {&cond, &a, &b});
  FLAME_CHECK(cond.dtype() == kBool, "where: condition must be bool, got {}", cond.describe());
  check_same_dtype("where", {&a, &b});
  const Shape shape = broadcast_shapes("where", cond.shape(), broadcast_shapes("where", a.shape(), b.shape()));
  Tensor out = Tensor::empty(shape, TensorOptions(a.dtype(), a.device()));
  if (out.numel() > 0) {
    autograd::NoGradGuard no_grad;  // the expanded operands are internal views
    backend_for(a.device()).where(cond.expand(shape), a.expand(shape), b.expand(shape), out);
  }
  if (autograd::needs_grad({&a, &b})) autograd::record_where(out, cond, a, b);
  return out;
}

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double b) { return add(a, b); }
Tensor operator-(const Tensor& a, double b) { return sub(a, b); }
Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
Tensor operator/(const Tensor& a, double b) { return div(a, b); }
Tensor operator*(double a, const Tensor& b) { return mul(b, a); }

Tensor& Tensor::add_(const Tensor& other) { return binary_inplace(BinaryOp::Add, *this, other); }
Tensor& Tensor::sub_(const Tensor& other) { return binary_inplace(BinaryOp::Sub, *this, other); }
Tensor& Tensor::mul_(const Tensor& other) { return binary_inplace(BinaryOp::Mul, *this, other); }
Tensor& Tensor::div_(const Tensor& other) { return binary_inplace(BinaryOp::Div, *this, other); }
Tensor& Tensor::add_(double other) { return binary_scalar_inplace(BinaryOp::Add, *this, other); }
Tensor& Tensor::sub_(double other) { return binary_scalar_inplace(BinaryOp::Sub, *this, other); }
Tensor& Tensor::mul_(double other) { return binary_scalar_inplace(BinaryOp::Mul, *this, other); }
Tensor& Tensor::div_(double other) { return binary_scalar_inplace(BinaryOp::Div, *this, other); }
Tensor& Tensor::clamp_(double min, double max) {
  FLAME_CHECK(!(min > max), "clamp_: min {} is greater than max {}", min, max);
  check_clamp_bounds("clamp_", *this, min, max);
  return unary_inplace(UnaryOp::Clamp, *this, min, max);
}
Tensor& Tensor::relu_() { return unary_inplace(UnaryOp::Relu, *this, 0, 0); }

}  // namespace flame
