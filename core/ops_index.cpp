// Frontends of joining and indexing ops: cat, stack, index_select, gather, scatter_add.
#include "core/autograd.h"
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
  if (autograd::needs_grad(tensors)) {
    // Per input: its extent along dim (0 for inputs that need no gradient).
    std::vector<int64_t> sizes;
    std::vector<bool> needed;
    for (const Tensor& t : tensors) {
      sizes.push_back(t.size(dim));
      needed.push_back(t.requires_grad());
    }
    autograd::record(out, "CatBackward", tensors,
                     [dim, sizes = std::move(sizes), needed = std::move(needed)](const Tensor& g) {
                       std::vector<Tensor> grads(sizes.size());
                       int64_t start = 0;
                       for (size_t i = 0; i < sizes.size(); ++i) {
                         if (needed[i]) grads[i] = g.narrow(dim, start, sizes[i]);
                         start += sizes[i];
                       }
                       return grads;
                     });
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
  FLAME_CHECK(index.dtype() == kI64 || (allow_i32 && index.dtype() == kI32), "{}: index must be {}, got {}", op,
              allow_i32 ? "i64 or i32" : "i64", index.describe());
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

/// Checks scatter_add's operands (messages name "scatter_add"); returns the wrapped dim.
int64_t check_scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  detail::check_same_device("scatter_add", {&x, &index, &src});
  detail::check_same_dtype("scatter_add", {&x, &src});
  check_index_tensor("scatter_add", index, false);
  dim = wrap_dim(dim, x.dim(), "scatter_add");
  check_index_fits("scatter_add", x, dim, index, "self");
  check_index_fits("scatter_add", src, -1, index, "src");
  return dim;
}

/// Adds src (cropped to index's shape) into x at index along dim through the backend; shared by
/// scatter_add_ (after its in-place checks) and scatter_add (into a fresh copy, never refused).
void scatter_add_into(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor target = x.is_contiguous() ? x : x.contiguous();
  Tensor values = crop_to(src, index.shape()).contiguous();
  if (detail::may_overlap(values, target)) values = values.clone();
  // An index sharing x's memory would change under the writes (and escape the range check done
  // before them): the backend reads a copy.
  Tensor positions = index.contiguous();
  if (detail::may_overlap(positions, target)) positions = positions.clone();
  backend_for(x.device()).scatter_add(target, dim, positions, values);
  if (!target.is_same(x)) backend_for(x.device()).copy(target, x);
}

/// Gradient of an input of `shape` that was read at `index` along dim (gather, index_select):
/// zeros with `g` added at those positions.
Tensor scatter_add_to_zeros(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& g) {
  Tensor grad = zeros(shape, TensorOptions(g.dtype(), g.device()));
  if (index.numel() > 0) scatter_add_into(grad, dim, index, g);
  return grad;
}

/// index_select without recording; sets `wrapped` to the wrapped dim.
Tensor index_select_forward(const Tensor& x, int64_t dim, const Tensor& index, int64_t& wrapped) {
  detail::check_same_device("index_select", {&x, &index});
  check_index_tensor("index_select", index, true);
  FLAME_CHECK(index.dim() <= 1, "index_select: index must be 0-d or 1-D, got {}", index.describe());
  const int64_t nd = std::max<int64_t>(x.dim(), 1);
  dim = wrap_dim(dim, nd, "index_select");
  wrapped = dim;
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
    backend_for(x.device())
        .index_select(xs.contiguous(), index.contiguous().reshape({n}), out, outer, xs.size(dim), inner);
  }
  return x.dim() == 0 ? out.reshape(index.shape()) : out;
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  Tensor out;
  int64_t wrapped = 0;
  {
    autograd::NoGradGuard no_grad;  // the forward's internal views and copies are not part of the graph
    out = index_select_forward(x, dim, index, wrapped);
  }
  if (autograd::needs_grad({&x})) {
    autograd::record(out, "IndexSelectBackward", {x, index},
                     [x_shape = x.shape(), dim = wrapped, saved_index = autograd::SavedTensor(index)](const Tensor& g) {
                       // Work on x as index_select saw it (0-d x as [1]): index expanded to g's shape.
                       const Shape xs_shape = x_shape.empty() ? Shape{1} : x_shape;
                       const Tensor& index = saved_index.get();
                       const int64_t n = index.numel();
                       Shape g_shape = xs_shape, index_shape(xs_shape.size(), 1);
                       g_shape[dim] = n;
                       index_shape[dim] = n;
                       const Tensor expanded = index.to(kI64).reshape(index_shape).expand(g_shape);
                       const Tensor grad = scatter_add_to_zeros(xs_shape, dim, expanded, g.reshape(g_shape));
                       return std::vector<Tensor>{grad.reshape(x_shape), Tensor()};
                     });
  }
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  detail::check_same_device("gather", {&x, &index});
  check_index_tensor("gather", index, false);
  dim = wrap_dim(dim, x.dim(), "gather");
  check_index_fits("gather", x, dim, index, "input");
  Tensor out = Tensor::empty(index.shape(), TensorOptions(x.dtype(), x.device()));
  if (out.numel() > 0) {
    autograd::NoGradGuard no_grad;  // x.contiguous() is not part of the graph
    backend_for(x.device()).gather(x.contiguous(), dim, index.contiguous(), out);
  }
  if (autograd::needs_grad({&x}))
    autograd::record(out, "GatherBackward", {x, index},
                     [x_shape = x.shape(), dim, saved_index = autograd::SavedTensor(index)](const Tensor& g) {
                       return std::vector<Tensor>{scatter_add_to_zeros(x_shape, dim, saved_index.get(), g), Tensor()};
                     });
  return out;
}

Tensor& scatter_add_(Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  dim = check_scatter_add(x, dim, index, src);
  if (index.numel() == 0) return x;
  detail::check_no_internal_overlap("scatter_add_", x);
  detail::check_inplace_allowed("scatter_add_", x, {&src});
  scatter_add_into(x, dim, index, src);  // a CUDA index out of range raises later, after the in-range adds
  detail::mark_written(x);
  return x;
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  dim = check_scatter_add(x, dim, index, src);
  Tensor out = Tensor::empty(x.shape(), TensorOptions(x.dtype(), x.device()));
  {
    autograd::NoGradGuard no_grad;  // the copies and views below are not part of the graph
    if (out.numel() > 0) backend_for(x.device()).copy(x, out);
    if (index.numel() > 0) scatter_add_into(out, dim, index, src);
  }
  if (autograd::needs_grad({&x, &src}))
    autograd::record(out, "ScatterAddBackward", {x, index, src},
                     [dim, need_x = x.requires_grad(), need_src = src.requires_grad(), src_shape = src.shape(),
                      saved_index = autograd::SavedTensor(index)](const Tensor& g) {
                       std::vector<Tensor> grads(3);
                       if (need_x) grads[0] = g;
                       if (need_src) {
                         const Tensor& index = saved_index.get();
                         grads[2] = gather(g, dim, index);
                         if (index.shape() != src_shape) {
                           // Entries of src outside index's shape were not read: zero gradient.
                           Tensor padded = zeros(src_shape, TensorOptions(g.dtype(), g.device()));
                           crop_to(padded, index.shape()).copy_(grads[2]);
                           grads[2] = padded;
                         }
                       }
                       return grads;
                     });
  return out;
}

}  // namespace flame
