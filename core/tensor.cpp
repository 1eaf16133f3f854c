#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/op_checks.h"
#include "core/ops.h"

namespace flame {

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Strides contiguous_strides(const Shape& shape) {
  Strides strides(shape.size());
  int64_t running = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = running;
    running *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

int64_t shape_numel(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  FLAME_CHECK(dim >= lo && dim <= hi, "{}: dim {} out of range for a tensor of {} dims (expected {} to {})",
              op, dim, ndim, lo, hi);
  return dim < 0 ? dim + std::max<int64_t>(ndim, 1) : dim;
}

namespace {

/// At most 2^59 elements: their byte count (up to 8 bytes each) and every offset into them fit in
/// an int64 with room to spare.
constexpr int64_t kMaxNumel = int64_t{1} << 59;

void check_shape(const Shape& shape, const char* op) {
  FLAME_CHECK(shape.size() <= static_cast<size_t>(kMaxDims), "{}: shape {} has {} dims; at most {} are supported",
              op, shape_str(shape), shape.size(), kMaxDims);
  int64_t numel = 1;
  for (int64_t size : shape) {
    FLAME_CHECK(size >= 0, "{}: negative size in shape {}", op, shape_str(shape));
    FLAME_CHECK(!__builtin_mul_overflow(numel, size, &numel) && numel <= kMaxNumel,
                "{}: shape {} has more than 2^59 elements", op, shape_str(shape));
  }
}

/// Strides for viewing (shape, strides) as new_shape without copying, if the layout allows it
/// (PyTorch's rule: each group of merged/split dims must be contiguous within itself).
std::optional<Strides> view_strides(const Shape& shape, const Strides& strides, const Shape& new_shape) {
  Strides out(new_shape.size());
  if (shape_numel(shape) == 0 || shape.empty()) return contiguous_strides(new_shape);
  int64_t view_d = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

Shape infer_shape(Shape shape, int64_t numel, const char* op) {
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      FLAME_CHECK(infer < 0, "{}: only one dimension can be -1, got {}", op, shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      FLAME_CHECK(shape[i] >= 0, "{}: invalid size in shape {}", op, shape_str(shape));
      FLAME_CHECK(!__builtin_mul_overflow(known, shape[i], &known), "{}: shape {} is invalid for {} elements", op,
                  shape_str(shape), numel);
    }
  }
  if (infer >= 0) {
    FLAME_CHECK(known != 0 && numel % known == 0, "{}: shape {} is invalid for {} elements", op,
                shape_str(shape), numel);
    shape[infer] = numel / known;
  }
  FLAME_CHECK(shape_numel(shape) == numel, "{}: shape {} is invalid for {} elements", op,
              shape_str(shape), numel);
  check_shape(shape, op);
  return shape;
}

Tensor make_view(const Tensor& base, Shape shape, Strides strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

/// Records `fn` (gradient of `out` -> gradient of `input`) as the backward of a one-input op.
template <class F>
void record_unary(Tensor& out, const Tensor& input, const char* name, F fn) {
  autograd::record(out, name, {input},
                   [fn = std::move(fn)](const Tensor& g) { return std::vector<Tensor>{fn(g)}; });
}

/// Backward of a view that picks part of its input (narrow, slice, select): zeros of the input's
/// shape with `g` written where `pick` places it.
template <class Pick>
Tensor embed_in_zeros(const Tensor& g, const Shape& input_shape, Pick pick) {
  Tensor out = zeros(input_shape, TensorOptions(g.dtype(), g.device()));
  pick(out).copy_(g);
  return out;
}

/// A contiguous copy, unrecorded (clone records; to(device) needs a plain copy).
Tensor contiguous_copy(const Tensor& t) {
  Tensor out = Tensor::empty(t.shape(), TensorOptions(t.dtype(), t.device()));
  if (t.numel() > 0) backend_for(t.device()).copy(t, out);
  return out;
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, TensorOptions options) {
  check_shape(shape, "empty");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(options.device, static_cast<size_t>(shape_numel(shape)) *
                                                                dtype_size(options.dtype));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = options.dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, Shape shape, Strides strides,
                            int64_t offset, DType dtype) {
  check_shape(shape, "from_storage");
  FLAME_CHECK(shape.size() == strides.size(), "from_storage: shape {} and strides {} differ in length",
              shape_str(shape), shape_str(strides));
  int64_t last = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) last = offset - 1;
    FLAME_CHECK(strides[i] >= 0, "from_storage: negative strides are not supported");
  }
  bool overflow = false;
  if (last >= offset)
    for (size_t i = 0; i < shape.size(); ++i) {
      int64_t span = 0;
      overflow = overflow || __builtin_mul_overflow(shape[i] - 1, strides[i], &span) ||
                 __builtin_add_overflow(last, span, &last);
    }
  FLAME_CHECK(offset >= 0 && !overflow &&
                  (last < offset || static_cast<size_t>(last + 1) * dtype_size(dtype) <= storage->nbytes()),
              "from_storage: layout (shape {}, strides {}, offset {}) exceeds a storage of {} bytes",
              shape_str(shape), shape_str(strides), offset, storage->nbytes());
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

int64_t Tensor::size(int64_t dim) const { return shape()[wrap_dim(dim, this->dim(), "size")]; }
int64_t Tensor::stride(int64_t dim) const { return strides()[wrap_dim(dim, this->dim(), "stride")]; }
int64_t Tensor::numel() const { return shape_numel(shape()); }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t d = dim() - 1; d >= 0; --d) {
    if (shape()[d] == 1) continue;
    if (shape()[d] == 0) return true;
    if (strides()[d] != expected) return false;
    expected *= shape()[d];
  }
  return true;
}

void* Tensor::data_ptr() const {
  auto* base = static_cast<char*>(storage()->data());
  return base ? base + offset() * static_cast<int64_t>(element_size()) : nullptr;
}

std::string Tensor::describe() const {
  if (!defined()) return "Tensor(undefined)";
  return fmt::format("Tensor{} {} {}", shape_str(shape()), dtype_name(dtype()), device().str());
}

Tensor Tensor::view(const Shape& shape_in) const {
  const Shape new_shape = infer_shape(shape_in, numel(), "view");
  auto strides_out = view_strides(shape(), strides(), new_shape);
  FLAME_CHECK(strides_out.has_value(),
              "view: cannot view {} with strides {} as {} without copying; use reshape() or contiguous()",
              describe(), shape_str(strides()), shape_str(new_shape));
  Tensor out = make_view(*this, new_shape, std::move(*strides_out), offset());
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "ViewBackward", [in_shape = shape()](const Tensor& g) { return g.reshape(in_shape); });
  return out;
}

Tensor Tensor::reshape(const Shape& shape_in) const {
  const Shape new_shape = infer_shape(shape_in, numel(), "reshape");
  if (auto strides_out = view_strides(shape(), strides(), new_shape)) {
    Tensor out = make_view(*this, new_shape, std::move(*strides_out), offset());
    if (autograd::needs_grad({this}))
      record_unary(out, *this, "ReshapeBackward",
                   [in_shape = shape()](const Tensor& g) { return g.reshape(in_shape); });
    return out;
  }
  return contiguous().view(new_shape);  // records CloneBackward then ViewBackward
}

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const {
  dim0 = wrap_dim(dim0, dim(), "transpose");
  dim1 = wrap_dim(dim1, dim(), "transpose");
  if (dim() == 0) return *this;
  Shape s = shape();
  Strides st = strides();
  std::swap(s[dim0], s[dim1]);
  std::swap(st[dim0], st[dim1]);
  Tensor out = make_view(*this, std::move(s), std::move(st), offset());
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "TransposeBackward", [dim0, dim1](const Tensor& g) { return g.transpose(dim0, dim1); });
  return out;
}

Tensor Tensor::t() const {
  FLAME_CHECK(dim() <= 2, "t(): expects a tensor of at most 2 dims, got {}", describe());
  return dim() < 2 ? *this : transpose(0, 1);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  FLAME_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute: {} dims given for {}", dims.size(),
              describe());
  Shape s(dims.size());
  Strides st(dims.size());
  std::vector<bool> seen(dims.size(), false);
  std::vector<int64_t> inverse(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = wrap_dim(dims[i], dim(), "permute");
    FLAME_CHECK(!seen[d], "permute: dim {} repeated in [{}]", d, fmt::join(dims, ", "));
    seen[d] = true;
    s[i] = shape()[d];
    st[i] = strides()[d];
    inverse[d] = static_cast<int64_t>(i);
  }
  Tensor out = make_view(*this, std::move(s), std::move(st), offset());
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "PermuteBackward",
                 [inverse = std::move(inverse)](const Tensor& g) { return g.permute(inverse); });
  return out;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  FLAME_CHECK(dim() > 0, "narrow: cannot narrow a 0-d tensor");
  d = wrap_dim(d, dim(), "narrow");
  if (start < 0) start += shape()[d];
  FLAME_CHECK(start >= 0 && start <= shape()[d] && length >= 0 && length <= shape()[d] - start,
              "narrow: start {} and length {} out of bounds for dim {} of size {} in {}", start, length, d,
              shape()[d], describe());
  Shape s = shape();
  s[d] = length;
  Tensor out = make_view(*this, std::move(s), strides(), offset() + start * strides()[d]);
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "NarrowBackward", [in_shape = shape(), d, start, length](const Tensor& g) {
      return embed_in_zeros(g, in_shape, [&](const Tensor& z) { return z.narrow(d, start, length); });
    });
  return out;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  FLAME_CHECK(dim() > 0, "slice: cannot slice a 0-d tensor");
  d = wrap_dim(d, dim(), "slice");
  FLAME_CHECK(step > 0, "slice: step must be positive, got {}", step);
  const int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape();
  Strides st = strides();
  s[d] = end > start ? (end - start - 1) / step + 1 : 0;
  st[d] *= step;
  Tensor out = make_view(*this, std::move(s), std::move(st), offset() + start * strides()[d]);
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "SliceBackward", [in_shape = shape(), d, start, end, step](const Tensor& g) {
      return embed_in_zeros(g, in_shape, [&](const Tensor& z) { return z.slice(d, start, end, step); });
    });
  return out;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  FLAME_CHECK(dim() > 0, "select: cannot select from a 0-d tensor");
  d = wrap_dim(d, dim(), "select");
  const int64_t n = shape()[d];
  FLAME_CHECK(index >= -n && index < n, "select: index {} out of range for dim {} of size {}", index, d, n);
  if (index < 0) index += n;
  Shape s = shape();
  Strides st = strides();
  const int64_t new_offset = offset() + index * st[d];
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  Tensor out = make_view(*this, std::move(s), std::move(st), new_offset);
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "SelectBackward", [in_shape = shape(), d, index](const Tensor& g) {
      return embed_in_zeros(g, in_shape, [&](const Tensor& z) { return z.select(d, index); });
    });
  return out;
}

Tensor Tensor::expand(const Shape& new_shape) const {
  FLAME_CHECK(new_shape.size() <= static_cast<size_t>(kMaxDims), "expand: shape {} has more than {} dims",
              shape_str(new_shape), kMaxDims);
  const int64_t nd = static_cast<int64_t>(new_shape.size());
  FLAME_CHECK(nd >= dim(), "expand: cannot expand {} to fewer dims {}", describe(), shape_str(new_shape));
  Shape s(nd);
  Strides st(nd);
  for (int64_t i = nd - 1; i >= 0; --i) {
    const int64_t src = i - (nd - dim());
    const int64_t want = new_shape[i];
    if (src >= 0) {
      const int64_t have = shape()[src];
      FLAME_CHECK(want >= -1, "expand: invalid size {} in {}", want, shape_str(new_shape));
      if (want == -1 || want == have) {
        s[i] = have;
        st[i] = strides()[src];
      } else {
        FLAME_CHECK(have == 1, "expand: size {} of dim {} in {} cannot expand to {} (target {})", have, src,
                    describe(), want, shape_str(new_shape));
        s[i] = want;
        st[i] = 0;
      }
    } else {
      FLAME_CHECK(want >= 0, "expand: new leading dim {} cannot be -1 in {}", i, shape_str(new_shape));
      s[i] = want;
      st[i] = 0;
    }
  }
  check_shape(s, "expand");
  Tensor out = make_view(*this, std::move(s), std::move(st), offset());
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "ExpandBackward",
                 [in_shape = shape()](const Tensor& g) { return autograd::sum_to(g, in_shape); });
  return out;
}

Tensor Tensor::squeeze() const {
  Shape s;
  Strides st;
  for (int64_t i = 0; i < dim(); ++i) {
    if (shape()[i] == 1) continue;
    s.push_back(shape()[i]);
    st.push_back(strides()[i]);
  }
  Tensor out = make_view(*this, std::move(s), std::move(st), offset());
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "SqueezeBackward", [in_shape = shape()](const Tensor& g) { return g.reshape(in_shape); });
  return out;
}

Tensor Tensor::squeeze(int64_t d) const {
  if (dim() == 0) {
    wrap_dim(d, 0, "squeeze");
    return *this;
  }
  d = wrap_dim(d, dim(), "squeeze");
  if (shape()[d] != 1) return *this;
  Shape s = shape();
  Strides st = strides();
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  Tensor out = make_view(*this, std::move(s), std::move(st), offset());
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "SqueezeBackward", [in_shape = shape()](const Tensor& g) { return g.reshape(in_shape); });
  return out;
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  FLAME_CHECK(dim() < kMaxDims, "unsqueeze: {} already has {} dims", describe(), kMaxDims);
  Shape s = shape();
  Strides st = strides();
  const int64_t stride = d < dim() ? strides()[d] * shape()[d] : 1;
  s.insert(s.begin() + d, 1);
  st.insert(st.begin() + d, stride);
  Tensor out = make_view(*this, std::move(s), std::move(st), offset());
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "UnsqueezeBackward", [d](const Tensor& g) { return g.squeeze(d); });
  return out;
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  start_dim = wrap_dim(start_dim, dim(), "flatten");
  end_dim = wrap_dim(end_dim, dim(), "flatten");
  FLAME_CHECK(start_dim <= end_dim, "flatten: start_dim {} after end_dim {}", start_dim, end_dim);
  Shape s(shape().begin(), shape().begin() + start_dim);
  int64_t merged = 1;
  for (int64_t i = start_dim; i <= end_dim; ++i) merged *= shape()[i];
  s.push_back(merged);
  s.insert(s.end(), shape().begin() + end_dim + 1, shape().end());
  return reshape(s);
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor out = contiguous_copy(*this);
  if (autograd::needs_grad({this})) record_unary(out, *this, "CloneBackward", [](const Tensor& g) { return g; });
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor src = is_contiguous() ? *this : contiguous_copy(*this);
  Tensor out = Tensor::empty(shape(), TensorOptions(dtype(), target));
  if (numel() > 0) copy_across_devices(src, out);
  if (autograd::needs_grad({this}))
    record_unary(out, *this, "ToCopyBackward", [source = device()](const Tensor& g) { return g.to(source); });
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = Tensor::empty(shape(), TensorOptions(target, device()));
  if (numel() > 0) backend_for(device()).copy(*this, out);
  // A conversion to an integer or bool dtype ends the graph (its result cannot require grad).
  if (is_floating(target) && autograd::needs_grad({this}))
    record_unary(out, *this, "ToCopyBackward", [source = dtype()](const Tensor& g) { return g.to(source); });
  return out;
}

namespace detail {

bool may_overlap(const Tensor& a, const Tensor& b) {
  if (a.storage() != b.storage() || a.numel() == 0 || b.numel() == 0) return false;
  auto extent = [](const Tensor& t) {
    int64_t last = t.offset();
    for (int64_t i = 0; i < t.dim(); ++i) last += (t.shape()[i] - 1) * t.strides()[i];
    return std::pair{t.offset(), last};
  };
  const auto [a0, a1] = extent(a);
  const auto [b0, b1] = extent(b);
  return a0 <= b1 && b0 <= a1;
}

std::optional<Tensor> try_view(const Tensor& x, const Shape& shape) {
  FLAME_CHECK(shape_numel(shape) == x.numel(), "view: shape {} is invalid for {} elements", shape_str(shape),
              x.numel());
  auto strides_out = view_strides(x.shape(), x.strides(), shape);
  if (!strides_out) return std::nullopt;
  return make_view(x, shape, std::move(*strides_out), x.offset());
}

}  // namespace detail

namespace {

bool same_layout(const Tensor& a, const Tensor& b) {
  return a.storage() == b.storage() && a.offset() == b.offset() && a.shape() == b.shape() &&
         a.strides() == b.strides();
}

}  // namespace

Tensor& Tensor::copy_(const Tensor& src_in) {
  FLAME_CHECK(src_in.defined(), "copy_: source tensor is undefined");
  detail::check_inplace_allowed("copy_", *this, {&src_in});
  detail::check_no_internal_overlap("copy_", *this);
  Tensor src = src_in;
  if (src.device() != device()) src = src.to(device());
  src = src.expand(shape());
  if (!same_layout(src, *this) && numel() > 0) {
    if (detail::may_overlap(src, *this)) src = src.clone();
    backend_for(device()).copy(src, *this);
  }
  detail::mark_written(*this);
  return *this;
}

Tensor& Tensor::fill_(double value) {
  detail::check_inplace_allowed("fill_", *this);
  detail::check_no_internal_overlap("fill_", *this);
  FLAME_CHECK(is_floating(dtype()) || dtype() == DType::Bool || std::isfinite(value),
              "fill_: {} has no integer value for {}", value, describe());
  if (numel() > 0) backend_for(device()).fill(*this, value);
  detail::mark_written(*this);
  return *this;
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  const Tensor host = detach().to(kCPU).to(dtype_of<T>()).contiguous();
  std::vector<T> out(static_cast<size_t>(host.numel()));
  if (!out.empty()) std::memcpy(out.data(), host.data_ptr(), out.size() * sizeof(T));
  return out;
}

template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

double Tensor::item() const {
  FLAME_CHECK(numel() == 1, "item(): expects a one-element tensor, got {}", describe());
  return to_vector<double>()[0];
}

Tensor Tensor::operator-() const { return neg(*this); }
Tensor Tensor::matmul(const Tensor& other) const { return flame::matmul(*this, other); }
Tensor Tensor::sum(const std::vector<int64_t>& dims, bool keepdim) const { return flame::sum(*this, dims, keepdim); }
Tensor Tensor::sum() const { return flame::sum(*this); }
Tensor Tensor::mean(const std::vector<int64_t>& dims, bool keepdim) const { return flame::mean(*this, dims, keepdim); }
Tensor Tensor::mean() const { return flame::mean(*this); }

}  // namespace flame
