// Frontends of reductions and softmax: canonicalise to [outer, reduced, inner] and dispatch.
#include <limits>

#include "core/backend.h"
#include "core/op_checks.h"
#include "core/ops.h"

namespace flame {

namespace {

/// A contiguous input seen as [outer, reduced, inner], and the output shapes.
struct RowsView {
  Tensor input;  // contiguous
  int64_t outer = 1, reduced = 1, inner = 1;
  Shape kept_shape;  // keepdim=true shape
  Shape out_shape;   // keepdim=false shape
};

RowsView rows_view(const char* op, const Tensor& x, const std::vector<int64_t>& dims_in) {
  const std::vector<int64_t> dims = detail::normalize_dims(op, dims_in, x.dim());
  RowsView v;
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

Tensor reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim,
              int64_t correction = 0) {
  const char* name = op_name(op);
  detail::check_same_device(name, {&x});
  FLAME_CHECK(x.dtype() != kBool, "{}: not defined for bool tensors ({})", name, x.describe());
  if (op == ReduceOp::Mean || op == ReduceOp::Var) detail::check_floating(name, x);
  FLAME_CHECK(x.dtype() != kU8 || op == ReduceOp::Max || op == ReduceOp::Min || op == ReduceOp::ArgMax,
              "{}: not defined for u8 tensors; convert with .to(kI64)", name);
  RowsView v = rows_view(name, x, dims);
  const DType out_dtype = op == ReduceOp::ArgMax ? kI64 : x.dtype();
  Tensor out = Tensor::empty(keepdim ? v.kept_shape : v.out_shape, TensorOptions(out_dtype, x.device()));
  if (out.numel() == 0) return out;
  if (v.reduced == 0) {
    FLAME_CHECK(op == ReduceOp::Sum || op == ReduceOp::Mean || op == ReduceOp::Var,
                "{}: cannot reduce over an empty dimension of {}", name, x.describe());
    return out.fill_(op == ReduceOp::Sum ? 0.0 : std::numeric_limits<double>::quiet_NaN());
  }
  backend_for(x.device()).reduce(op, v.input, out, v.outer, v.reduced, v.inner, correction);
  return out;
}

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  detail::check_same_device(name, {&x});
  detail::check_floating(name, x);
  RowsView v = rows_view(name, x, {wrap_dim(dim, x.dim(), name)});
  Tensor out = Tensor::empty(x.shape(), TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) backend_for(x.device()).softmax(v.input, out, v.outer, v.reduced, v.inner, log);
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
