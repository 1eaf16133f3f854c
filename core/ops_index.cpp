// Frontends of joining and indexing ops: cat, stack, index_select, gather, scatter_add.
#include "core/backend.h"
#include "core/op_checks.h"
#include "core/ops.h"

namespace flame {

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  FLAME_CHECK(!tensors.empty(), "cat: expects at least one tensor");
  const Tensor& first = tensors.front();
  FLAME_CHECK(first.defined(), "cat: tensor 0 is undefined");
  FLAME_CHECK(first.dim() > 0, "cat: zero-dimensional tensors cannot be concatenated; use stack");
  dim = wrap_dim(dim, first.dim(), "cat");
  Shape out_shape = first.shape();
  out_shape[dim] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    detail::check_same_device("cat", {&first, &t});
    detail::check_same_dtype("cat", {&first, &t});
    FLAME_CHECK(t.dim() == first.dim(), "cat: tensor {} has {} dims, tensor 0 has {}", i, t.dim(), first.dim());
    for (int64_t d = 0; d < t.dim(); ++d)
      FLAME_CHECK(d == dim || t.size(d) == first.size(d),
                  "cat: sizes must match except in dim {}: tensor {} is {}, tensor 0 is {}", dim, i,
                  shape_str(t.shape()), shape_str(first.shape()));
    out_shape[dim] += t.size(dim);
  }
  Tensor out = Tensor::empty(out_shape, TensorOptions(first.dtype(), first.device()));
  int64_t offset = 0;
  Backend& backend = backend_for(first.device());
  for (const Tensor& t : tensors) {
    if (t.numel() > 0) backend.copy(t, out.narrow(dim, offset, t.size(dim)));
    offset += t.size(dim);
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  FLAME_CHECK(!tensors.empty(), "stack: expects at least one tensor");
  dim = wrap_dim(dim, tensors.front().dim() + 1, "stack");
  std::vector<Tensor> expanded;
  expanded.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    detail::check_same_device("stack", {&tensors.front(), &tensors[i]});
    detail::check_same_dtype("stack", {&tensors.front(), &tensors[i]});
    FLAME_CHECK(tensors[i].shape() == tensors.front().shape(), "stack: tensor {} is {}, tensor 0 is {}", i,
                shape_str(tensors[i].shape()), shape_str(tensors.front().shape()));
    expanded.push_back(tensors[i].unsqueeze(dim));
  }
  return cat(expanded, dim);
}

namespace {

void check_index_tensor(const char* op, const Tensor& index, bool allow_i32) {
  FLAME_CHECK(index.dtype() == kI64 || (allow_i32 && index.dtype() == kI32),
              "{}: index must be {}, got {}", op, allow_i32 ? "i64 or i32" : "i64", index.describe());
}

/// gather/scatter_add rule: index has x's number of dims and is no larger outside `dim`.
void check_index_fits(const char* op, const Tensor& x, int64_t dim, const Tensor& index, const char* what) {
  FLAME_CHECK(index.dim() == x.dim(), "{}: index {} must have as many dims as {} {}", op, index.describe(), what,
              x.describe());
  for (int64_t d = 0; d < x.dim(); ++d)
    FLAME_CHECK(d == dim || index.size(d) <= x.size(d), "{}: index {} is larger than {} {} in dim {}", op,
                shape_str(index.shape()), what, shape_str(x.shape()), d);
}

Tensor crop_to(const Tensor& t, const Shape& shape) {
  Tensor out = t;
  for (int64_t d = 0; d < t.dim(); ++d) out = out.narrow(d, 0, shape[d]);
  return out;
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  detail::check_same_device("index_select", {&x, &index});
  check_index_tensor("index_select", index, true);
  FLAME_CHECK(index.dim() <= 1, "index_select: index must be 0-d or 1-D, got {}", index.describe());
  const int64_t nd = std::max<int64_t>(x.dim(), 1);
  dim = wrap_dim(dim, nd, "index_select");
  const Tensor xs = x.dim() == 0 ? x.reshape({1}) : x;
  const int64_t n = index.numel();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= xs.size(d);
  for (int64_t d = dim + 1; d < xs.dim(); ++d) inner *= xs.size(d);
  Shape out_shape = xs.shape();
  out_shape[dim] = n;
  Tensor out = Tensor::empty(out_shape, TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) {
    FLAME_CHECK(xs.size(dim) > 0, "index_select: cannot select from an empty dim {} of {}", dim, x.describe());
    backend_for(x.device()).index_select(xs.contiguous(), index.contiguous().reshape({n}), out, outer,
                                         xs.size(dim), inner);
  }
  return x.dim() == 0 ? out.reshape(index.shape()) : out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  detail::check_same_device("gather", {&x, &index});
  check_index_tensor("gather", index, false);
  dim = wrap_dim(dim, x.dim(), "gather");
  check_index_fits("gather", x, dim, index, "input");
  Tensor out = Tensor::empty(index.shape(), TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) backend_for(x.device()).gather(x.contiguous(), dim, index.contiguous(), out);
  return out;
}

Tensor& scatter_add_(Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  detail::check_same_device("scatter_add", {&x, &index, &src});
  detail::check_same_dtype("scatter_add", {&x, &src});
  check_index_tensor("scatter_add", index, false);
  dim = wrap_dim(dim, x.dim(), "scatter_add");
  check_index_fits("scatter_add", x, dim, index, "self");
  check_index_fits("scatter_add", src, -1, index, "src");
  if (index.numel() == 0) return x;
  detail::check_no_internal_overlap("scatter_add_", x);
  detail::prepare_inplace("scatter_add_", x, {&src});
  Tensor target = x.is_contiguous() ? x : x.contiguous();
  Tensor values = crop_to(src, index.shape()).contiguous();
  if (detail::may_overlap(values, target)) values = values.clone();
  backend_for(x.device()).scatter_add(target, dim, index.contiguous(), values);
  if (!target.is_same(x)) backend_for(x.device()).copy(target, x);
  return x;
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor out = x.clone();
  return scatter_add_(out, dim, index, src);
}

}  // namespace flame
