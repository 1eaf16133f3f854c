// Recording the backward of the elementwise ops (internal to core/: called by the frontends in
// core/ops_elementwise.cpp when autograd::needs_grad holds). The formulas, one table entry per op,
// are in elementwise_backward.cpp; each is built from public ops (core/ops.h), so it runs on the
// gradient's device without host synchronisation.
//
// Note [elementwise gradients at kinks and ties]
// Where the derivative is undefined, the gradient follows PyTorch:
// - relu'(0) = 0 (and NaN inputs pass the gradient through); abs'(0) = 0.
// - clamp, clamp_min, clamp_max pass g where min <= x <= max and 0 elsewhere, including at the
//   bounds themselves (so both sides of a bound see a gradient there); a NaN input gets 0.
// - maximum/minimum (tensor or scalar operand) give g to the larger (smaller) operand and split it
//   g/2, g/2 on ties; where a NaN is involved neither comparison holds and both get g.
// - pow(x, 0) gives 0 for x, even at x = 0. pow(a, b): the gradient for a is 0 where b == 0; the
//   gradient for b, g * a^b * log(a), is 0 where a == 0 and b >= 0 (its limit as a -> 0+), and
//   left as the formula gives elsewhere: NaN for a < 0, infinite for a == 0 with b < 0.
// - gelu (exact) has no erf op to build its derivative from: Phi(x) is recovered as gelu(x) / x,
//   and as its series 0.5 + x * phi(0) for |x| < 1e-5 (error below 1e-16). gelu(tanh) uses
//   PyTorch's formula.
// Precision: the derivatives of gelu, gelu(tanh) and silu cancel (1 + tanh(..) near -1, a zero
// crossing), so for f16/bf16 they are evaluated in f32 and rounded once, as PyTorch's kernels do.
// The other formulas run in the tensor's dtype, each intermediate op rounding once.
#pragma once

#include "core/backend.h"
#include "core/tensor.h"

namespace flame::autograd {

/// Records the backward of out = op(x; p0, p1) (see UnaryOp for the parameters).
void record_unary(UnaryOp op, Tensor& out, const Tensor& x, double p0, double p1);
/// Records the backward of out = op(a, b) for an arithmetic op; reduces each gradient to its
/// input's shape (the backward of broadcasting).
void record_binary(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b);
/// Records the backward of out = op(a, scalar); only `a` gets a gradient.
void record_binary_scalar(BinaryOp op, Tensor& out, const Tensor& a, double scalar);
/// Records the backward of out = where(cond, a, b); cond gets no gradient.
void record_where(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b);

}  // namespace flame::autograd
