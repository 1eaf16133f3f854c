// Backward formulas of the elementwise ops (Note [elementwise gradients at kinks and ties] in
// elementwise_backward.h).
#include "core/autograd/elementwise_backward.h"

#include <limits>
#include <utility>

#include "core/autograd.h"
#include "core/ops.h"

namespace flame::autograd {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // phi(0) = 1 / sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhCubic = 0.044715;

/// What a formula reads besides the incoming gradient, as a set of bits.
enum Reads : unsigned { kNothing = 0, kInputA = 1, kInputB = 2, kOutput = 4 };

/// A saved handle of `t` when `wanted`, else an empty slot.
SavedTensor save_if(bool wanted, const Tensor& t) { return wanted ? SavedTensor(t) : SavedTensor(); }

/// A 0-d zero that broadcasts against g in where().
Tensor zero_for(const Tensor& g) { return zeros({}, TensorOptions(g.dtype(), g.device())); }
Tensor one_minus(const Tensor& t) { return add(neg(t), 1.0); }
/// -1, 0 or 1 (0 for 0 and NaN), in x's dtype.
Tensor sign(const Tensor& x) { return sub(gt(x, 0.0).to(x.dtype()), lt(x, 0.0).to(x.dtype())); }

/// derivative(x), evaluated in f32 when x is f16 or bf16, in x's dtype.
Tensor in_f32(Tensor (*derivative)(const Tensor&), const Tensor& x) {
  const bool half = x.dtype() == kF16 || x.dtype() == kBF16;
  return half ? derivative(x.to(kF32)).to(x.dtype()) : derivative(x);
}

/// Phi(x) + x phi(x) (see the Note for how Phi is obtained).
Tensor gelu_derivative(const Tensor& x) {
  const Tensor pdf = exp(x * x * -0.5) * kInvSqrt2Pi;
  const Tensor cdf = where(lt(abs(x), 1e-5), x * kInvSqrt2Pi + 0.5, gelu(x) / x);
  return cdf + x * pdf;
}

/// PyTorch's derivative of 0.5 x (1 + tanh(k (x + c x^3))).
Tensor gelu_tanh_derivative(const Tensor& x) {
  const Tensor x_sq = x * x;
  const Tensor t = tanh((x + x_sq * x * kGeluTanhCubic) * kSqrt2OverPi);
  const Tensor inner_derivative = (x_sq * (3.0 * kGeluTanhCubic) + 1.0) * kSqrt2OverPi;
  return (t + 1.0) * 0.5 + x * 0.5 * one_minus(t * t) * inner_derivative;
}

/// s (1 + x (1 - s)) with s = sigmoid(x).
Tensor silu_derivative(const Tensor& x) {
  const Tensor s = sigmoid(x);
  return s * (x * one_minus(s) + 1.0);
}

// --- unary ---------------------------------------------------------------------------------

struct UnaryArgs {
  const Tensor& g;  // gradient of the output
  const Tensor& x;  // input (defined when the rule reads kInputA)
  const Tensor& y;  // output (defined when the rule reads kOutput)
  double p0, p1;
};

struct UnaryRule {
  const char* name;
  unsigned reads;
  Tensor (*grad)(const UnaryArgs&);
};

Tensor clamp_backward(const UnaryArgs& u) {
  const Tensor zero = zero_for(u.g);
  Tensor grad = u.g;
  // An infinite bound admits every x but NaN; one test still runs when both are infinite.
  if (u.p0 != -kInf || u.p1 == kInf) grad = where(ge(u.x, u.p0), grad, zero);
  if (u.p1 != kInf) grad = where(le(u.x, u.p1), grad, zero);
  return grad;
}

UnaryRule unary_rule(UnaryOp op) {
  using U = const UnaryArgs&;
  switch (op) {
    case UnaryOp::Neg: return {"NegBackward", kNothing, [](U u) { return neg(u.g); }};
    case UnaryOp::Exp: return {"ExpBackward", kOutput, [](U u) { return u.g * u.y; }};
    case UnaryOp::Log: return {"LogBackward", kInputA, [](U u) { return u.g / u.x; }};
    case UnaryOp::Sqrt: return {"SqrtBackward", kOutput, [](U u) { return u.g / (u.y * 2.0); }};
    case UnaryOp::Rsqrt: return {"RsqrtBackward", kOutput, [](U u) { return u.g * (pow(u.y, 3.0) * -0.5); }};
    case UnaryOp::Abs: return {"AbsBackward", kInputA, [](U u) { return u.g * sign(u.x); }};
    case UnaryOp::Relu:
      return {"ReluBackward", kOutput, [](U u) { return where(le(u.y, 0.0), zero_for(u.g), u.g); }};
    case UnaryOp::Sigmoid: return {"SigmoidBackward", kOutput, [](U u) { return u.g * (u.y * one_minus(u.y)); }};
    case UnaryOp::Tanh: return {"TanhBackward", kOutput, [](U u) { return u.g * one_minus(u.y * u.y); }};
    case UnaryOp::Gelu: return {"GeluBackward", kInputA, [](U u) { return u.g * in_f32(gelu_derivative, u.x); }};
    case UnaryOp::GeluTanh:
      return {"GeluTanhBackward", kInputA, [](U u) { return u.g * in_f32(gelu_tanh_derivative, u.x); }};
    case UnaryOp::Silu: return {"SiluBackward", kInputA, [](U u) { return u.g * in_f32(silu_derivative, u.x); }};
    case UnaryOp::Pow:
      return {"PowBackward", kInputA, [](U u) {
                if (u.p0 == 0.0) return zeros(u.g.shape(), TensorOptions(u.g.dtype(), u.g.device()));
                return u.g * (pow(u.x, u.p0 - 1.0) * u.p0);
              }};
    case UnaryOp::Clamp: return {"ClampBackward", kInputA, clamp_backward};
  }
  FLAME_FAIL("backward of unary op {}: not differentiable", op_name(op));
}

// --- binary --------------------------------------------------------------------------------

struct BinaryArgs {
  const Tensor& g;  // gradient of the (broadcast) output
  const Tensor& a;
  const Tensor& b;
  const Tensor& y;
  bool want_a, want_b;  // which inputs need a gradient
};

/// Gradients for a and b at the output's shape (reduced to the inputs' shapes by the caller);
/// undefined where not wanted.
using Grads = std::pair<Tensor, Tensor>;

struct BinaryRule {
  const char* name;
  unsigned reads_for_a, reads_for_b;
  Grads (*grad)(const BinaryArgs&);
};

Grads pow_backward(const BinaryArgs& u) {
  const Tensor zero = zero_for(u.g);
  Tensor ga, gb;
  if (u.want_a) ga = where(eq(u.b, 0.0), zero, u.g * (u.b * pow(u.a, sub(u.b, 1.0))));
  if (u.want_b) {
    const Tensor d = u.y * log(u.a);
    gb = u.g * where(eq(u.a, 0.0), where(ge(u.b, 0.0), zero, d), d);
  }
  return {ga, gb};
}

enum class Extremum { Max, Min };

/// maximum/minimum: g to the winner, g/2 to each on a tie.
template <Extremum kind>
Grads extremum_backward(const BinaryArgs& u) {
  const Tensor zero = zero_for(u.g);
  const Tensor shared = where(eq(u.a, u.b), u.g * 0.5, u.g);
  const auto a_loses = [&] { return kind == Extremum::Max ? lt(u.a, u.b) : gt(u.a, u.b); };
  const auto b_loses = [&] { return kind == Extremum::Max ? gt(u.a, u.b) : lt(u.a, u.b); };
  return {u.want_a ? where(a_loses(), zero, shared) : Tensor(),
          u.want_b ? where(b_loses(), zero, shared) : Tensor()};
}

BinaryRule binary_rule(BinaryOp op) {
  using B = const BinaryArgs&;
  switch (op) {
    case BinaryOp::Add: return {"AddBackward", kNothing, kNothing, [](B u) { return Grads{u.g, u.g}; }};
    case BinaryOp::Sub:
      return {"SubBackward", kNothing, kNothing, [](B u) { return Grads{u.g, u.want_b ? neg(u.g) : Tensor()}; }};
    case BinaryOp::Mul:
      return {"MulBackward", kInputB, kInputA, [](B u) {
                return Grads{u.want_a ? u.g * u.b : Tensor(), u.want_b ? u.g * u.a : Tensor()};
              }};
    case BinaryOp::Div:
      return {"DivBackward", kInputB, kInputB | kOutput, [](B u) {
                const Tensor ga = u.g / u.b;  // d(a/b)/db = -(g / b) * (a / b)
                return Grads{ga, u.want_b ? neg(ga * u.y) : Tensor()};
              }};
    case BinaryOp::Pow: return {"PowBackward", kInputA | kInputB, kInputA | kInputB | kOutput, pow_backward};
    case BinaryOp::Maximum:
      return {"MaximumBackward", kInputA | kInputB, kInputA | kInputB, extremum_backward<Extremum::Max>};
    case BinaryOp::Minimum:
      return {"MinimumBackward", kInputA | kInputB, kInputA | kInputB, extremum_backward<Extremum::Min>};
    default: break;
  }
  FLAME_FAIL("backward of binary op {}: not differentiable", op_name(op));
}

// --- tensor op scalar ----------------------------------------------------------------------

struct ScalarArgs {
  const Tensor& g;
  const Tensor& a;  // defined when the rule reads kInputA
  double scalar;
};

struct ScalarRule {
  const char* name;
  unsigned reads;
  Tensor (*grad)(const ScalarArgs&);
};

template <Extremum kind>
Tensor extremum_scalar_backward(const ScalarArgs& u) {
  const Tensor loses = kind == Extremum::Max ? lt(u.a, u.scalar) : gt(u.a, u.scalar);
  return where(loses, zero_for(u.g), where(eq(u.a, u.scalar), u.g * 0.5, u.g));
}

ScalarRule scalar_rule(BinaryOp op) {
  using S = const ScalarArgs&;
  switch (op) {
    case BinaryOp::Add: return {"AddScalarBackward", kNothing, [](S u) { return u.g; }};
    case BinaryOp::Sub: return {"SubScalarBackward", kNothing, [](S u) { return u.g; }};
    case BinaryOp::Mul: return {"MulScalarBackward", kNothing, [](S u) { return u.g * u.scalar; }};
    case BinaryOp::Div: return {"DivScalarBackward", kNothing, [](S u) { return u.g / u.scalar; }};
    case BinaryOp::Maximum: return {"MaximumScalarBackward", kInputA, extremum_scalar_backward<Extremum::Max>};
    case BinaryOp::Minimum: return {"MinimumScalarBackward", kInputA, extremum_scalar_backward<Extremum::Min>};
    default: break;
  }
  FLAME_FAIL("backward of {} with a scalar: not differentiable", op_name(op));
}

}  // namespace

void record_unary(UnaryOp op, Tensor& out, const Tensor& x, double p0, double p1) {
  const UnaryRule rule = unary_rule(op);
  record(out, rule.name, {x},
         [grad = rule.grad, p0, p1, x = save_if(rule.reads & kInputA, x),
          y = save_if(rule.reads & kOutput, out)](const Tensor& g) {
           return std::vector<Tensor>{grad({g, x.get(), y.get(), p0, p1})};
         });
}

void record_binary(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b) {
  const BinaryRule rule = binary_rule(op);
  const bool want_a = a.requires_grad(), want_b = b.requires_grad();
  const unsigned reads = (want_a ? rule.reads_for_a : 0u) | (want_b ? rule.reads_for_b : 0u);
  record(out, rule.name, {a, b},
         [grad = rule.grad, want_a, want_b, a_shape = a.shape(), b_shape = b.shape(),
          a = save_if(reads & kInputA, a), b = save_if(reads & kInputB, b),
          y = save_if(reads & kOutput, out)](const Tensor& g) {
           auto [ga, gb] = grad({g, a.get(), b.get(), y.get(), want_a, want_b});
           return std::vector<Tensor>{want_a ? sum_to(ga, a_shape) : Tensor(),
                                      want_b ? sum_to(gb, b_shape) : Tensor()};
         });
}

void record_binary_scalar(BinaryOp op, Tensor& out, const Tensor& a, double scalar) {
  const ScalarRule rule = scalar_rule(op);
  record(out, rule.name, {a},
         [grad = rule.grad, scalar, a = save_if(rule.reads & kInputA, a)](const Tensor& g) {
           return std::vector<Tensor>{grad({g, a.get(), scalar})};
         });
}

void record_where(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  const bool want_a = a.requires_grad(), want_b = b.requires_grad();
  record(out, "WhereBackward", {cond, a, b},
         [want_a, want_b, a_shape = a.shape(), b_shape = b.shape(),
          cond = SavedTensor(cond)](const Tensor& g) {
           const Tensor zero = zero_for(g);
           return std::vector<Tensor>{Tensor(), want_a ? sum_to(where(cond.get(), g, zero), a_shape) : Tensor(),
                                      want_b ? sum_to(where(cond.get(), zero, g), b_shape) : Tensor()};
         });
}

}  // namespace flame::autograd
