// 2-D max and average pooling over contiguous NCHW tensors (Note [pool2d semantics] in
// core/pool.h), computed in double one plane at a time.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"

namespace flame {

using namespace cpu;

namespace {

/// The rows [begin, end) and columns of the input that window (oh, ow) covers, clipped to the
/// input, and its average-pooling divisor.
struct Window {
  int64_t h_begin, h_end, w_begin, w_end;
  int64_t divisor;
};

Window window_of(const Pool2dGeometry& g, int64_t oh, int64_t ow) {
  const int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
  // With count_include_pad the divisor counts padding, but not window parts beyond it.
  const int64_t padded = (std::min(h0 + g.kernel_h, g.in_h + g.pad_h) - h0) *
                         (std::min(w0 + g.kernel_w, g.in_w + g.pad_w) - w0);
  Window win{std::max<int64_t>(h0, 0), std::min(h0 + g.kernel_h, g.in_h), std::max<int64_t>(w0, 0),
             std::min(w0 + g.kernel_w, g.in_w), 0};
  win.divisor = g.count_include_pad ? padded : (win.h_end - win.h_begin) * (win.w_end - win.w_begin);
  return win;
}

/// Checks the operands' dtypes and that each is contiguous with the geometry's element count.
void check_operands(const char* op, const Pool2dGeometry& g, const Tensor& input, const char* input_name,
                    const Tensor& output, const char* output_name) {
  FLAME_CHECK(is_floating(input.dtype()), "{}: expects a floating-point input (f32, f64, f16, bf16), got {}", op,
              input.describe());
  FLAME_CHECK(output.dtype() == input.dtype(), "{}: {} and {} must share a dtype", op, input.describe(),
              output.describe());
  check_pool2d_geometry(op, g);
  check_contiguous(op, input_name, input, g.batch * g.channels * g.in_h * g.in_w);
  check_contiguous(op, output_name, output, g.batch * g.channels * g.out_h * g.out_w);
}

/// Addresses of the elements of a contiguous tensor, by flat index.
struct Elements {
  char* base;
  size_t size;
  char* at(int64_t i) const { return base + static_cast<size_t>(i) * size; }
  explicit Elements(const Tensor& t) : base(static_cast<char*>(t.data_ptr())), size(t.element_size()) {}
};

/// Calls visit(o, window) for every output element of `plane` in row-major order, `o` being its
/// flat index in the output.
template <class Visit>
void for_each_window(const Pool2dGeometry& g, int64_t plane, Visit&& visit) {
  const int64_t out_plane = g.out_h * g.out_w;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) visit(plane * out_plane + oh * g.out_w + ow, window_of(g, oh, ow));
  }
}

/// Writes grad_input one plane at a time: add_plane(plane, sums) accumulates the plane's gradient
/// into `sums` [in_h, in_w] (zeroed first), which is then stored into the plane.
template <class AddPlane>
void backward_by_plane(const Pool2dGeometry& g, const Tensor& grad_input, AddPlane&& add_plane) {
  const StoreDouble store = double_storer(grad_input.dtype());
  const Elements dx(grad_input);
  const int64_t in_plane = g.in_h * g.in_w;
  std::vector<double> sums(static_cast<size_t>(in_plane));  // [in_h, in_w] of one plane
  for (int64_t plane = 0; plane < g.batch * g.channels; ++plane) {
    std::fill(sums.begin(), sums.end(), 0.0);
    add_plane(plane, sums);
    for (int64_t i = 0; i < in_plane; ++i) store(dx.at(plane * in_plane + i), sums[static_cast<size_t>(i)]);
  }
}

}  // namespace

void CpuBackend::max_pool2d_forward(const Pool2dGeometry& g, const Tensor& input, const Tensor& out,
                                    const Tensor& indices) {
  check_operands("max_pool2d", g, input, "input", out, "output");
  FLAME_CHECK(indices.dtype() == DType::I64, "max_pool2d: indices must be i64, got {}", indices.describe());
  check_contiguous("max_pool2d", "indices", indices, out.numel());
  const LoadDouble load = double_loader(input.dtype());
  const StoreDouble store = double_storer(out.dtype());
  const Elements x(input), y(out);
  int64_t* index = static_cast<int64_t*>(indices.data_ptr());
  const int64_t in_plane = g.in_h * g.in_w;
  for (int64_t plane = 0; plane < g.batch * g.channels; ++plane) {
    for_each_window(g, plane, [&](int64_t o, const Window& win) {
      double best = -std::numeric_limits<double>::infinity();
      int64_t best_index = win.h_begin * g.in_w + win.w_begin;
      for (int64_t h = win.h_begin; h < win.h_end; ++h) {
        for (int64_t w = win.w_begin; w < win.w_end; ++w) {
          const double v = load(x.at(plane * in_plane + h * g.in_w + w));
          if (v > best || (std::isnan(v) && !std::isnan(best))) {  // the first NaN wins
            best = v;
            best_index = h * g.in_w + w;
          }
        }
      }
      store(y.at(o), best);
      index[o] = best_index;
    });
  }
}

void CpuBackend::max_pool2d_backward(const Pool2dGeometry& g, const Tensor& grad_out, const Tensor& indices,
                                     const Tensor& grad_input) {
  check_operands("max_pool2d_backward", g, grad_input, "grad_input", grad_out, "grad_output");
  FLAME_CHECK(indices.dtype() == DType::I64, "max_pool2d_backward: indices must be i64, got {}", indices.describe());
  check_contiguous("max_pool2d_backward", "indices", indices, grad_out.numel());
  const LoadDouble load = double_loader(grad_out.dtype());
  const Elements dy(grad_out);
  const int64_t* index = static_cast<const int64_t*>(indices.data_ptr());
  backward_by_plane(g, grad_input, [&](int64_t plane, std::vector<double>& sums) {
    for_each_window(g, plane, [&](int64_t o, const Window& win) {
      const int64_t i = index[o];
      const int64_t h = i >= 0 ? i / g.in_w : -1, w = i >= 0 ? i % g.in_w : -1;
      FLAME_CHECK(h >= win.h_begin && h < win.h_end && w >= win.w_begin && w < win.w_end,
                  "max_pool2d_backward: index {} of output element {} lies outside its pooling window (rows [{}, "
                  "{}), columns [{}, {})); the indices must come from max_pool2d_forward with the same geometry",
                  i, o, win.h_begin, win.h_end, win.w_begin, win.w_end);
      sums[static_cast<size_t>(i)] += load(dy.at(o));
    });
  });
}

void CpuBackend::avg_pool2d_forward(const Pool2dGeometry& g, const Tensor& input, const Tensor& out) {
  check_operands("avg_pool2d", g, input, "input", out, "output");
  const LoadDouble load = double_loader(input.dtype());
  const StoreDouble store = double_storer(out.dtype());
  const Elements x(input), y(out);
  const int64_t in_plane = g.in_h * g.in_w;
  for (int64_t plane = 0; plane < g.batch * g.channels; ++plane) {
    for_each_window(g, plane, [&](int64_t o, const Window& win) {
      double sum = 0.0;
      for (int64_t h = win.h_begin; h < win.h_end; ++h)
        for (int64_t w = win.w_begin; w < win.w_end; ++w) sum += load(x.at(plane * in_plane + h * g.in_w + w));
      store(y.at(o), sum / static_cast<double>(win.divisor));
    });
  }
}

void CpuBackend::avg_pool2d_backward(const Pool2dGeometry& g, const Tensor& grad_out, const Tensor& grad_input) {
  check_operands("avg_pool2d_backward", g, grad_input, "grad_input", grad_out, "grad_output");
  const LoadDouble load = double_loader(grad_out.dtype());
  const Elements dy(grad_out);
  backward_by_plane(g, grad_input, [&](int64_t plane, std::vector<double>& sums) {
    for_each_window(g, plane, [&](int64_t o, const Window& win) {
      const double share = load(dy.at(o)) / static_cast<double>(win.divisor);
      for (int64_t h = win.h_begin; h < win.h_end; ++h)
        for (int64_t w = win.w_begin; w < win.w_end; ++w) sums[static_cast<size_t>(h * g.in_w + w)] += share;
    });
  });
}

}  // namespace flame
