#include "core/op_checks.h"

#include <algorithm>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/conv.h"

namespace flame::detail {

void check_same_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    FLAME_CHECK(t->defined(), "{}: an operand is an undefined Tensor", op);
    if (!first) {
      first = t;
      continue;
    }
    FLAME_CHECK(t->device() == first->device(),
                "{}: operands on different devices ({} and {}); move them with .to(device) first", op,
                first->describe(), t->describe());
  }
}

void check_same_dtype(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!first) {
      first = t;
      continue;
    }
    FLAME_CHECK(t->dtype() == first->dtype(),
                "{}: operands of different dtypes ({} and {}); convert one with .to(dtype)", op,
                first->describe(), t->describe());
  }
}

void check_floating(const char* op, const Tensor& t) {
  FLAME_CHECK(is_floating(t.dtype()), "{}: expects a floating-point tensor (f32, f64, f16, bf16), got {}", op,
              t.describe());
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    FLAME_CHECK(da == db || da == 1 || db == 1, "{}: shapes {} and {} cannot broadcast (dim {}: {} vs {})", op,
                shape_str(a), shape_str(b), i, da, db);
    out[i] = da == 1 ? db : da;
  }
  return out;
}

void check_no_internal_overlap(const char* op, const Tensor& out) {
  for (int64_t i = 0; i < out.dim(); ++i)
    FLAME_CHECK(out.strides()[i] != 0 || out.shape()[i] <= 1,
                "{}: cannot write in place to {}, whose elements share memory (an expanded view); "
                "clone() it first", op, out.describe());
}

std::vector<int64_t> normalize_dims(const char* op, const std::vector<int64_t>& dims, int64_t ndim) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    for (int64_t d = 0; d < ndim; ++d) out.push_back(d);
    return out;
  }
  for (int64_t d : dims) out.push_back(wrap_dim(d, ndim, op));
  std::sort(out.begin(), out.end());
  FLAME_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), "{}: dim repeated in [{}]", op,
              fmt::join(dims, ", "));
  if (ndim == 0) out.clear();
  return out;
}

void check_inplace_allowed(const char* op, const Tensor& self, std::initializer_list<const Tensor*> sources) {
  if (autograd::grad_enabled()) {
    bool tracked = self.requires_grad();
    for (const Tensor* t : sources) tracked = tracked || (t->defined() && t->requires_grad());
    FLAME_CHECK(!tracked, "{}: in-place ops on tensors that require grad are not recorded by autograd; use the "
                "out-of-place op, or wrap the update in autograd::NoGradGuard (as optimizers do)", op);
  }
}

void mark_written(const Tensor& self) { self.storage()->bump_version(); }

}  // namespace flame::detail

namespace flame {

void check_pool2d_geometry(const char* op, const Pool2dGeometry& g) {
  FLAME_CHECK(g.batch >= 0 && g.channels > 0 && g.in_h > 0 && g.in_w > 0 && g.kernel_h > 0 && g.kernel_w > 0 &&
                  g.stride_h > 0 && g.stride_w > 0 && g.pad_h >= 0 && g.pad_w >= 0 && g.pad_h <= g.kernel_h / 2 &&
                  g.pad_w <= g.kernel_w / 2 && g.in_h + 2 * g.pad_h >= g.kernel_h && g.in_w + 2 * g.pad_w >= g.kernel_w,
              "{}: invalid pooling geometry (a size, kernel or stride is not positive, the padding is negative or "
              "more than half the kernel, or the padded input is smaller than the kernel)",
              op);
  FLAME_CHECK((g.in_h + 2 * g.pad_h - g.kernel_h) / g.stride_h + 1 == g.out_h &&
                  (g.in_w + 2 * g.pad_w - g.kernel_w) / g.stride_w + 1 == g.out_w,
              "{}: output size {}x{} does not match input {}x{}, kernel {}x{}, stride {}x{}, padding {}x{}", op,
              g.out_h, g.out_w, g.in_h, g.in_w, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w);
}

void check_conv2d_geometry(const char* op, const Conv2dGeometry& g) {
  FLAME_CHECK(g.batch >= 0 && g.groups >= 1 && g.in_channels >= g.groups && g.in_channels % g.groups == 0 &&
                  g.out_channels >= 0 && g.out_channels % g.groups == 0 && g.kernel_h >= 1 && g.kernel_w >= 1 &&
                  g.stride_h >= 1 && g.stride_w >= 1 && g.pad_h >= 0 && g.pad_w >= 0 && g.dilation_h >= 1 &&
                  g.dilation_w >= 1 && g.in_h >= 0 && g.in_w >= 0,
              "{}: invalid geometry: batch {}, channels {} -> {}, groups {}, kernel {}x{}, stride {}x{}, padding "
              "{}x{}, dilation {}x{}",
              op, g.batch, g.in_channels, g.out_channels, g.groups, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
              g.pad_h, g.pad_w, g.dilation_h, g.dilation_w);
  const int64_t out_h = conv2d_output_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  const int64_t out_w = conv2d_output_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  FLAME_CHECK(g.out_h == out_h && g.out_w == out_w && out_h >= 1 && out_w >= 1,
              "{}: output size {}x{} does not match the {}x{} that input {}x{} gives (must be at least 1x1)", op,
              g.out_h, g.out_w, out_h, out_w, g.in_h, g.in_w);
}

}  // namespace flame
