// Frontend of matmul: PyTorch's 1-D promotion and batch broadcasting, then one batched GEMM.
#include "core/autograd.h"
#include "core/backend.h"
#include "core/op_checks.h"
#include "core/ops.h"

namespace flame {

namespace {

/// One GEMM operand: a [batch, rows, cols] view whose matrices are row- or column-major with a
/// single batch stride.
struct Operand {
  Tensor view;
  bool transposed = false;
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

Operand prepare_operand(const Tensor& t, const Shape& batch_shape, int64_t batch, int64_t rows, int64_t cols) {
  Shape full = batch_shape;
  full.push_back(rows);
  full.push_back(cols);
  Tensor x = t.expand(full);
  Tensor v = detail::try_view(x, {batch, rows, cols}).value_or(Tensor());
  if (!v.defined()) v = x.contiguous().view({batch, rows, cols});
  auto layout = [&](const Tensor& m, Operand& op) {
    const int64_t s_row = m.stride(1), s_col = m.stride(2);
    if ((s_col == 1 || cols == 1) && (rows == 1 || s_row >= cols)) {
      op.transposed = false;
      op.ld = rows == 1 ? std::max<int64_t>(cols, 1) : s_row;
      return true;
    }
    if ((s_row == 1 || rows == 1) && (cols == 1 || s_col >= rows)) {
      op.transposed = true;
      op.ld = cols == 1 ? std::max<int64_t>(rows, 1) : s_col;
      return true;
    }
    return false;
  };
  Operand op;
  if (!layout(v, op)) {
    v = v.contiguous();
    layout(v, op);
  }
  op.view = v;
  op.batch_stride = batch == 1 ? 0 : v.stride(0);
  return op;
}

Tensor matmul_forward(const Tensor& a_in, const Tensor& b_in) {
  detail::check_same_device("matmul", {&a_in, &b_in});
  detail::check_same_dtype("matmul", {&a_in, &b_in});
  detail::check_floating("matmul", a_in);
  FLAME_CHECK(a_in.dim() >= 1 && b_in.dim() >= 1, "matmul: both operands need at least 1 dim, got {} and {}",
              a_in.describe(), b_in.describe());
  const bool a_vector = a_in.dim() == 1, b_vector = b_in.dim() == 1;
  const Tensor a = a_vector ? a_in.unsqueeze(0) : a_in;
  const Tensor b = b_vector ? b_in.unsqueeze(1) : b_in;
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  FLAME_CHECK(b.size(-2) == k, "matmul: inner dimensions differ: {} @ {} ({} vs {})", a_in.describe(), b_in.describe(),
              k, b.size(-2));
  const Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  const Shape batch_shape = detail::broadcast_shapes("matmul", batch_a, batch_b);
  const int64_t batch = shape_numel(batch_shape);

  Shape out_shape = batch_shape;
  if (!a_vector) out_shape.push_back(m);
  if (!b_vector) out_shape.push_back(n);
  Tensor out = Tensor::empty(out_shape, TensorOptions(a.dtype(), a.device()));
  if (out.numel() == 0) return out;
  if (k == 0) return out.zero_();

  const Operand pa = prepare_operand(a, batch_shape, batch, m, k);
  const Operand pb = prepare_operand(b, batch_shape, batch, k, n);
  MatmulArgs args;
  args.a = pa.view;
  args.b = pb.view;
  args.out = out.view({batch, m, n});
  args.batch = batch;
  args.m = m;
  args.n = n;
  args.k = k;
  args.a_transposed = pa.transposed;
  args.b_transposed = pb.transposed;
  args.lda = pa.ld;
  args.ldb = pb.ld;
  args.batch_stride_a = pa.batch_stride;
  args.batch_stride_b = pb.batch_stride;
  backend_for(a.device()).matmul(args);
  return out;
}

/// The shape of a matmul operand after PyTorch's 1-D promotion: [k] -> [1, k] on the left,
/// [k] -> [k, 1] on the right.
Shape promoted(const Shape& shape, bool left) {
  if (shape.size() != 1) return shape;
  return left ? Shape{1, shape[0]} : Shape{shape[0], 1};
}

/// Whether `t` is a 2-D transposed view of a contiguous matrix (as a linear layer's weight.t()).
bool is_column_major(const Tensor& t) {
  return t.dim() == 2 && !t.is_contiguous() && t.strides()[0] == 1 && t.strides()[1] == t.shape()[0];
}

/// grad_a = g @ b^T and grad_b = a^T @ g on the promoted operands, each summed over the batch dims
/// its operand was broadcast along, then shaped like the operand. `a` (`b`) is defined only when
/// grad_b (grad_a) is wanted. `b_column_major`: b was a 2-D transposed view of a contiguous matrix
/// (a linear layer's weight.t()), not itself a leaf; its gradient is then computed in that layout,
/// which the transpose turns back into the matrix's own (Note [weight gradient layout]). A
/// column-major leaf keeps the contiguous gradient, which AccumulateGrad can take over as it is.
std::vector<Tensor> matmul_backward(const Tensor& g, const Shape& a_shape, const Shape& b_shape, const Tensor& a_in,
                                    const Tensor& b_in, bool b_column_major) {
  const Shape pa = promoted(a_shape, true), pb = promoted(b_shape, false);
  const int64_t m = pa[pa.size() - 2], k = pa.back(), n = pb.back();
  // The output gradient with the dims that 1-D promotion removed put back: [batch..., m, n].
  Shape g_shape(g.shape().begin(), g.shape().end() - (a_shape.size() == 1 ? 0 : 1) - (b_shape.size() == 1 ? 0 : 1));
  g_shape.push_back(m);
  g_shape.push_back(n);
  const Tensor g2 = g.reshape(g_shape);
  std::vector<Tensor> grads(2);
  if (a_in.defined()) {
    const Tensor a = a_in.reshape(pa);
    if (pb.size() == 2) {
      // One matrix b (a linear layer): a batched a folds its batch into the rows rather than
      // forming a [batch, k, n] product and summing it.
      const int64_t rows = shape_numel(Shape(pa.begin(), pa.end() - 1));  // batch * m
      const Tensor a_rows = a.reshape({rows, k}), g_rows = g2.reshape({rows, n});
      // Note [weight gradient layout]: for y = x @ w.t(), w [n, k] contiguous, the GEMM writes
      // g^T @ x as a contiguous [n, k] and its transpose is b's gradient, so the transpose's
      // backward hands w a contiguous gradient, which AccumulateGrad takes over as .grad or adds
      // into it in one coalesced pass. Computed as a^T @ g instead, w's gradient would be a
      // transposed view, copied or added in a strided pass (over 64 MiB for a 4096 x 4096 layer).
      // Same GEMM, same FLOPs.
      grads[1] = b_column_major ? matmul(g_rows.t(), a_rows).t() : matmul(a_rows.t(), g_rows);
    } else {
      grads[1] = autograd::sum_to(matmul(a.transpose(-1, -2), g2), pb);
    }
    grads[1] = grads[1].reshape(b_shape);
    if (b_in.defined()) {
      // Note [early gradients]: b's gradient (a linear layer's weight) goes on before a's is queued.
      autograd::deliver_gradient_early(1, std::move(grads[1]));
      grads[1] = Tensor();
    }
  }
  if (b_in.defined()) {
    const Tensor b = b_in.reshape(pb);
    grads[0] = autograd::sum_to(matmul(g2, b.transpose(-1, -2)), pa).reshape(a_shape);
  }
  return grads;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor out;
  {
    autograd::NoGradGuard no_grad;  // the forward's internal views and copies are not part of the graph
    out = matmul_forward(a, b);
  }
  if (autograd::needs_grad({&a, &b})) {
    // Each operand is saved only when the other's gradient needs it.
    autograd::record(
        out, "MatmulBackward", {a, b},
        [a_shape = a.shape(), b_shape = b.shape(), saved_a = autograd::SavedTensor(b.requires_grad() ? a : Tensor()),
         saved_b = autograd::SavedTensor(a.requires_grad() ? b : Tensor()),
         b_column_major = is_column_major(b) && !b.is_leaf()](const Tensor& g) {
          return matmul_backward(g, a_shape, b_shape, saved_a.get(), saved_b.get(), b_column_major);
        });
  }
  return out;
}

}  // namespace flame
