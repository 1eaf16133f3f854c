// Convolution on the CPU: im2col + a BLAS GEMM per sample and group. f64 runs dgemm in double;
// f32 runs sgemm; f16/bf16 are converted to f32 around sgemm (as matmul does).
//
// Per sample n and group gi, with Cg = C/G, Og = O/G, K = Cg kh kw and L = oh ow:
//   columns [K, L]: columns[(c kh + i) kw + j][y ow + x] =
//                   input[n, gi Cg + c, y sh - ph + i dh, x sw - pw + j dw]  (0 outside the image)
//   forward:         out[n, gi Og ..][Og, L]  = weight_g [Og, K] @ columns
//   backward input:  columns = weight_g^T @ grad_out_g, each entry added back where it was read
//   backward weight: grad_weight_g [Og, K] += grad_out_g [Og, L] @ columns^T, summed over n
// A 1x1 kernel with stride 1 and no padding reads the image itself as its columns.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <vector>

#include "core/conv.h"
#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"

namespace flame {

using namespace cpu;

namespace {

void check_geometry(const char* op, const Conv2dGeometry& g) {
  check_conv2d_geometry(op, g);
  const int64_t k = g.in_channels / g.groups * g.kernel_h * g.kernel_w;
  FLAME_CHECK(k <= INT_MAX && g.out_h * g.out_w <= INT_MAX && g.out_channels <= INT_MAX && g.in_h * g.in_w <= INT_MAX,
              "{}: sizes exceed the BLAS's 32-bit dimensions (K {}, output plane {}, out_channels {})", op, k,
              g.out_h * g.out_w, g.out_channels);
}

/// Checks the three operands of one primitive: one floating dtype, contiguous, sized by `g`.
void check_operands(const char* op, const Conv2dGeometry& g, const Tensor& input, const char* input_name,
                    const Tensor& weight, const char* weight_name, const Tensor& out, const char* out_name) {
  check_geometry(op, g);
  FLAME_CHECK(input.dtype() == out.dtype() && weight.dtype() == out.dtype() && is_floating(out.dtype()),
              "{}: {} {}, {} {} and {} {} must share one floating dtype", op, input_name, input.describe(), weight_name,
              weight.describe(), out_name, out.describe());
}

bool columns_are_input(const Conv2dGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
}

/// A contiguous tensor's elements as T: its own memory when its dtype is T, else (f16/bf16 as
/// float) a converted copy, which store() writes back.
template <class T>
class Elements {
 public:
  Elements(const Tensor& t, bool read) : tensor_(t) {
    if (t.dtype() == dtype_of<T>()) {
      data_ = static_cast<T*>(t.data_ptr());
      return;
    }
    copy_.resize(static_cast<size_t>(t.numel()));
    if (read) {
      const LoadDouble load = double_loader(t.dtype());
      const char* p = static_cast<const char*>(t.data_ptr());
      for (size_t i = 0; i < copy_.size(); ++i) copy_[i] = static_cast<T>(load(p + i * t.element_size()));
    }
    data_ = copy_.data();
  }
  T* data() const { return data_; }
  void store() const {
    if (tensor_.dtype() == dtype_of<T>()) return;
    const StoreDouble store = double_storer(tensor_.dtype());
    char* p = static_cast<char*>(tensor_.data_ptr());
    for (size_t i = 0; i < copy_.size(); ++i) store(p + i * tensor_.element_size(), copy_[i]);
  }

 private:
  Tensor tensor_;
  std::vector<T> copy_;
  T* data_ = nullptr;
};

/// Runs fn(T{}) with T = double for f64 and float for the other floating dtypes.
template <class Fn>
void with_compute_type(DType dtype, Fn&& fn) {
  if (dtype == DType::F64)
    fn(double{});
  else
    fn(float{});
}

/// Row-major c [m, n] = op(a) [m, k] @ op(b) [k, n] + beta c.
template <class T>
void gemm(bool a_t, bool b_t, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T beta,
          T* c, int64_t ldc) {
  const CBLAS_TRANSPOSE ta = a_t ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = b_t ? CblasTrans : CblasNoTrans;
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, im, in, ik, 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                static_cast<int>(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, im, in, ik, 1.0, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                static_cast<int>(ldc));
  }
}

/// Calls fn(c, row, y, x, iy, ix) for every column entry: its channel c within the group, its row
/// (c kh + i) kw + j, the output position (y, x) and the input position (iy, ix) it reads (possibly
/// outside the image).
template <class Fn>
void for_each_column_entry(const Conv2dGeometry& g, Fn&& fn) {
  const int64_t channels = g.in_channels / g.groups;
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = 0; i < g.kernel_h; ++i)
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const int64_t row = (c * g.kernel_h + i) * g.kernel_w + j;
        for (int64_t y = 0; y < g.out_h; ++y) {
          const int64_t iy = y * g.stride_h - g.pad_h + i * g.dilation_h;
          for (int64_t x = 0; x < g.out_w; ++x) fn(c, row, y, x, iy, x * g.stride_w - g.pad_w + j * g.dilation_w);
        }
      }
}

/// columns [K, L] from one sample's group of channels `image` [Cg, H, W].
template <class T>
void im2col(const Conv2dGeometry& g, const T* image, T* columns) {
  const int64_t plane = g.in_h * g.in_w, width = g.out_h * g.out_w;
  for_each_column_entry(g, [&](int64_t c, int64_t row, int64_t y, int64_t x, int64_t iy, int64_t ix) {
    const bool inside = iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w;
    columns[row * width + y * g.out_w + x] = inside ? image[c * plane + iy * g.in_w + ix] : T(0);
  });
}

/// image [Cg, H, W] += each entry of columns [K, L] at the position it was read from.
template <class T>
void col2im_add(const Conv2dGeometry& g, const T* columns, T* image) {
  const int64_t plane = g.in_h * g.in_w, width = g.out_h * g.out_w;
  for_each_column_entry(g, [&](int64_t c, int64_t row, int64_t y, int64_t x, int64_t iy, int64_t ix) {
    if (iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w)
      image[c * plane + iy * g.in_w + ix] += columns[row * width + y * g.out_w + x];
  });
}

/// Sizes shared by the three passes.
struct Dims {
  int64_t cg, og, k, l, plane;
  explicit Dims(const Conv2dGeometry& g)
      : cg(g.in_channels / g.groups),
        og(g.out_channels / g.groups),
        k(cg * g.kernel_h * g.kernel_w),
        l(g.out_h * g.out_w),
        plane(g.in_h * g.in_w) {}
};

/// Element offsets of one (sample n, group gi) step: its image [Cg, H, W] in input / grad_input,
/// its [Og, L] block in out / grad_out, and its weight_g [Og, K] in weight / grad_weight.
struct GroupOffsets {
  int64_t image, out, weight;
};

/// Calls step(offsets, columns) for every sample and group in order. `columns` is one scratch
/// [K, L] reused by all steps, or null when the image is its own columns (columns_are_input).
template <class T, class Step>
void for_each_sample_group(const Conv2dGeometry& g, const Dims& d, Step&& step) {
  const bool direct = columns_are_input(g);
  std::vector<T> columns(direct ? 0 : static_cast<size_t>(d.k * d.l));  // [K, L]
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t gi = 0; gi < g.groups; ++gi)
      step(GroupOffsets{(n * g.in_channels + gi * d.cg) * d.plane, (n * g.out_channels + gi * d.og) * d.l,
                        gi * d.og * d.k},
           direct ? nullptr : columns.data());
}

/// The columns [K, L] of `image`: the image itself when `columns` is null, else im2col into `columns`.
template <class T>
const T* columns_of(const Conv2dGeometry& g, const T* image, T* columns) {
  if (columns == nullptr) return image;
  im2col(g, image, columns);
  return columns;
}

// input [N, C, H, W], weight [O, Cg, kh, kw], out [N, O, oh, ow].
template <class T>
void forward_impl(const Conv2dGeometry& g, const T* input, const T* weight, T* out) {
  const Dims d(g);
  for_each_sample_group<T>(g, d, [&](const GroupOffsets& at, T* columns) {
    gemm(false, false, d.og, d.l, d.k, weight + at.weight, d.k, columns_of(g, input + at.image, columns), d.l, T(0),
         out + at.out, d.l);
  });
}

// grad_out [N, O, oh, ow], weight [O, Cg, kh, kw], grad_input [N, C, H, W] (written whole).
template <class T>
void backward_input_impl(const Conv2dGeometry& g, const T* grad_out, const T* weight, T* grad_input) {
  const Dims d(g);
  std::fill(grad_input, grad_input + g.batch * g.in_channels * d.plane, T(0));
  if (d.og == 0) return;
  for_each_sample_group<T>(g, d, [&](const GroupOffsets& at, T* columns) {
    T* image = grad_input + at.image;
    gemm(true, false, d.k, d.l, d.og, weight + at.weight, d.k, grad_out + at.out, d.l, T(0),
         columns == nullptr ? image : columns, d.l);
    if (columns != nullptr) col2im_add(g, columns, image);
  });
}

// input [N, C, H, W], grad_out [N, O, oh, ow], grad_weight [O, Cg, kh, kw] (written whole).
template <class T>
void backward_weight_impl(const Conv2dGeometry& g, const T* input, const T* grad_out, T* grad_weight) {
  const Dims d(g);
  std::fill(grad_weight, grad_weight + g.out_channels * d.k, T(0));
  for_each_sample_group<T>(g, d, [&](const GroupOffsets& at, T* columns) {
    gemm(false, true, d.og, d.k, d.l, grad_out + at.out, d.l, columns_of(g, input + at.image, columns), d.l, T(1),
         grad_weight + at.weight, d.k);
  });
}

int64_t input_numel(const Conv2dGeometry& g) { return g.batch * g.in_channels * g.in_h * g.in_w; }
int64_t weight_numel(const Conv2dGeometry& g) {
  return g.out_channels * (g.in_channels / g.groups) * g.kernel_h * g.kernel_w;
}
int64_t output_numel(const Conv2dGeometry& g) { return g.batch * g.out_channels * g.out_h * g.out_w; }

}  // namespace

void CpuBackend::conv2d_forward(const Conv2dGeometry& g, const Tensor& input, const Tensor& weight, const Tensor& out) {
  const char* op = "conv2d";
  check_operands(op, g, input, "input", weight, "weight", out, "out");
  check_contiguous(op, "input", input, input_numel(g));
  check_contiguous(op, "weight", weight, weight_numel(g));
  check_contiguous(op, "out", out, output_numel(g));
  if (out.numel() == 0) return;
  with_compute_type(out.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const Elements<T> x(input, true), w(weight, true), y(out, false);
    forward_impl(g, x.data(), w.data(), y.data());
    y.store();
  });
}

void CpuBackend::conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out, const Tensor& weight,
                                       const Tensor& grad_input) {
  const char* op = "conv2d backward (input)";
  check_operands(op, g, grad_out, "grad_out", weight, "weight", grad_input, "grad_input");
  check_contiguous(op, "grad_out", grad_out, output_numel(g));
  check_contiguous(op, "weight", weight, weight_numel(g));
  check_contiguous(op, "grad_input", grad_input, input_numel(g));
  if (grad_input.numel() == 0) return;
  with_compute_type(grad_input.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const Elements<T> dy(grad_out, true), w(weight, true), dx(grad_input, false);
    backward_input_impl(g, dy.data(), w.data(), dx.data());
    dx.store();
  });
}

void CpuBackend::conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& input, const Tensor& grad_out,
                                        const Tensor& grad_weight) {
  const char* op = "conv2d backward (weight)";
  check_operands(op, g, input, "input", grad_out, "grad_out", grad_weight, "grad_weight");
  check_contiguous(op, "input", input, input_numel(g));
  check_contiguous(op, "grad_out", grad_out, output_numel(g));
  check_contiguous(op, "grad_weight", grad_weight, weight_numel(g));
  if (grad_weight.numel() == 0) return;
  with_compute_type(grad_weight.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const Elements<T> x(input, true), dy(grad_out, true), dw(grad_weight, false);
    backward_weight_impl(g, x.data(), dy.data(), dw.data());
    dw.store();
  });
}

}  // namespace flame
