// Frontends of reductions and softmax: canonicalise to [outer, reduced, inner], dispatch, record
// the backward.
//
// Note [max and min backward]
// max/min, over a dim or over everything, split the gradient of each result evenly among the
// input elements equal to it (a NaN result: among the NaN elements), as PyTorch's max() without a
// dim does. PyTorch's max(dim) instead routes all of it to the one index it returns; the two agree
// wherever the extremum is unique.
#include <algorithm>
#include <limits>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/op_checks.h"
#include "core/ops.h"

namespace flame {

namespace {

/// A contiguous input seen as [outer, reduced, inner], and the output shapes.
struct RowsView {
  Tensor input;  // contiguous
  std::vector<int64_t> dims;  // the reduced dims, sorted
  int64_t outer = 1, reduced = 1, inner = 1;
  Shape kept_shape;  // keepdim=true shape
  Shape out_shape;   // keepdim=false shape
};

RowsView rows_view(const char* op, const Tensor& x, const std::vector<int64_t>& dims_in) {
  const std::vector<int64_t> dims = detail::normalize_dims(op, dims_in, x.dim());
  RowsView v;
  v.dims = dims;
  std::vector<bool> reduced(x.dim(), false);
  for (int64_t d : dims) reduced[d] = true;
  for (int64_t d = 0; d < x.dim(); ++d) {
    v.kept_shape.push_back(reduced[d] ? 1 : x.size(d));
    if (!reduced[d]) v.out_shape.push_back(x.size(d));
  }
  const bool one_block = dims.empty() || dims.back() - dims.front() + 1 == static_cast<int64_t>(dims.size());
  if (one_block) {
    v.input = x.contiguous();
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (reduced[d]) v.reduced *= x.size(d);
      else if (dims.empty() || d < dims.front()) v.outer *= x.size(d);
      else v.inner *= x.size(d);
    }
    return v;
  }
  std::vector<int64_t> order;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!reduced[d]) {
      order.push_back(d);
      v.outer *= x.size(d);
    }
  for (int64_t d : dims) {
    order.push_back(d);
    v.reduced *= x.size(d);
  }
  v.input = x.permute(order).contiguous();
  return v;
}

/// The elements equal to the result share its gradient evenly (Note [max and min backward]).
Tensor extremum_backward(const Tensor& g, const Tensor& x, const Tensor& y, const Shape& kept,
                         const std::vector<int64_t>& dims) {
  const Tensor y_kept = y.reshape(kept);
  const Tensor hit = where(ne(y_kept, y_kept), ne(x, x).to(x.dtype()), eq(x, y_kept).to(x.dtype()));
  return hit * (g.reshape(kept) / sum(hit, dims, true));
}

/// Gives out = op(x over v.dims) its backward; the gradient of a reduced result is broadcast back
/// over the reduced dims.
void record_reduce(ReduceOp op, Tensor& out, const Tensor& x, const RowsView& v, int64_t correction) {
  const Shape shape = x.shape(), kept = v.kept_shape;
  switch (op) {
    case ReduceOp::Sum:
      autograd::record(out, "SumBackward", {x}, [shape, kept](const Tensor& g) {
        return std::vector<Tensor>{g.reshape(kept).expand(shape)};
      });
      return;
    case ReduceOp::Mean:
      autograd::record(out, "MeanBackward", {x}, [shape, kept, n = v.reduced](const Tensor& g) {
        return std::vector<Tensor>{div(g, static_cast<double>(n)).reshape(kept).expand(shape)};
      });
      return;
    case ReduceOp::Var: {
      // The forward divides by max(0, n - correction); so does its derivative.
      const double scale = 2.0 / std::max(0.0, static_cast<double>(v.reduced - correction));
      autograd::record(out, "VarBackward", {x},
                       [kept, scale, dims = v.dims, x = autograd::SavedTensor(x)](const Tensor& g) {
                         const Tensor& xv = x.get();
                         return std::vector<Tensor>{(xv - mean(xv, dims, true)) * (g.reshape(kept) * scale)};
                       });
      return;
    }
    case ReduceOp::Max:
    case ReduceOp::Min:
      // Saving the output makes no cycle: SavedTensor keeps a detached handle (core/autograd.h).
      autograd::record(out, op == ReduceOp::Max ? "MaxBackward" : "MinBackward", {x},
                       [kept, dims = v.dims, x = autograd::SavedTensor(x),
                        y = autograd::SavedTensor(out)](const Tensor& g) {
                         return std::vector<Tensor>{extremum_backward(g, x.get(), y.get(), kept, dims)};
                       });
      return;
    case ReduceOp::ArgMax: return;
  }
}

Tensor reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim,
              int64_t correction = 0) {
  const char* name = op_name(op);
  detail::check_same_device(name, {&x});
  FLAME_CHECK(x.dtype() != kBool, "{}: not defined for bool tensors ({})", name, x.describe());
  if (op == ReduceOp::Mean || op == ReduceOp::Var) detail::check_floating(name, x);
  FLAME_CHECK(x.dtype() != kU8 || op == ReduceOp::Max || op == ReduceOp::Min || op == ReduceOp::ArgMax,
              "{}: not defined for u8 tensors; convert with .to(kI64)", name);
  const bool track = op != ReduceOp::ArgMax && autograd::needs_grad({&x});
  autograd::NoGradGuard no_grad;  // rows_view's permute and copy are internal
  RowsView v = rows_view(name, x, dims);
  const DType out_dtype = op == ReduceOp::ArgMax ? kI64 : x.dtype();
  Tensor out = Tensor::empty(keepdim ? v.kept_shape : v.out_shape, TensorOptions(out_dtype, x.device()));
  // max/min/argmax have no value over an empty dimension, even when the result is empty too (as
  // PyTorch: max(zeros({0, 0}), 0) raises).
  FLAME_CHECK(v.reduced > 0 || op == ReduceOp::Sum || op == ReduceOp::Mean || op == ReduceOp::Var,
              "{}: cannot reduce over an empty dimension of {}", name, x.describe());
  if (out.numel() > 0 && v.reduced == 0) {
    out.fill_(op == ReduceOp::Sum ? 0.0 : std::numeric_limits<double>::quiet_NaN());
  } else if (out.numel() > 0) {
    backend_for(x.device()).reduce(op, v.input, out, v.outer, v.reduced, v.inner, correction);
  }
  if (track) record_reduce(op, out, x, v, correction);
  return out;
}

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  detail::check_same_device(name, {&x});
  detail::check_floating(name, x);
  const int64_t d = wrap_dim(dim, x.dim(), name);
  const bool track = autograd::needs_grad({&x});
  autograd::NoGradGuard no_grad;  // rows_view's permute and copy are internal
  RowsView v = rows_view(name, x, {d});
  Tensor out = Tensor::empty(x.shape(), TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) backend_for(x.device()).softmax(v.input, out, v.outer, v.reduced, v.inner, log);
  if (track)
    autograd::record(out, log ? "LogSoftmaxBackward" : "SoftmaxBackward", {x},
                     [d, log, y = autograd::SavedTensor(out)](const Tensor& g) {
                       const Tensor& yv = y.get();
                       return std::vector<Tensor>{log ? g - exp(yv) * sum(g, {d}, true)
                                                      : yv * (g - sum(g * yv, {d}, true))};
                     });
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return reduce(ReduceOp::Sum, x, dims, keepdim);
}
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return reduce(ReduceOp::Mean, x, dims, keepdim);
}
Tensor var(const Tensor& x, const std::vector<int64_t>& dims, int64_t correction, bool keepdim) {
  FLAME_CHECK(correction >= 0, "var: correction must be >= 0, got {}", correction);
  return reduce(ReduceOp::Var, x, dims, keepdim, correction);
}
Tensor max(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce(ReduceOp::Max, x, {wrap_dim(dim, x.dim(), "max")}, keepdim);
}
Tensor min(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce(ReduceOp::Min, x, {wrap_dim(dim, x.dim(), "min")}, keepdim);
}
Tensor max(const Tensor& x) { return reduce(ReduceOp::Max, x, {}, false); }
Tensor min(const Tensor& x) { return reduce(ReduceOp::Min, x, {}, false); }
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce(ReduceOp::ArgMax, x, {wrap_dim(dim, x.dim(), "argmax")}, keepdim);
}
Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }

}  // namespace flame
