// 2-D max and average pooling over contiguous NCHW tensors (Note [pool2d semantics] in
// core/pool.h), computed in float (f32, f16, bf16) or double (f64).
//
// Forward: one thread per output element scans its window. Backward: one thread per input
// element sums the gradients of the windows that cover it (for max, only those whose index names
// it), in a fixed order, so results are deterministic and need no atomics.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include <limits>

#include "core/cuda/launchers.h"

namespace flame::cuda {
namespace {

/// First input row (or column) of window `o` along one dim, before clipping to the input.
__device__ __forceinline__ int64_t window_start(int64_t o, int64_t stride, int64_t pad) { return o * stride - pad; }

/// Average pooling's divisor for the window starting at (h0, w0) (Note [pool2d semantics]).
__device__ __forceinline__ int64_t avg_divisor(const Pool2dGeometry& g, int64_t h0, int64_t w0) {
  if (g.count_include_pad) {
    // Padding counts, window parts beyond it do not (none in floor mode; kept for clarity).
    return (min(h0 + g.kernel_h, g.in_h + g.pad_h) - h0) * (min(w0 + g.kernel_w, g.in_w + g.pad_w) - w0);
  }
  return (min(h0 + g.kernel_h, g.in_h) - max(h0, int64_t{0})) * (min(w0 + g.kernel_w, g.in_w) - max(w0, int64_t{0}));
}

/// Outputs [first, last] along one dim whose windows cover input position `i` (empty when
/// first > last).
__device__ __forceinline__ void covering_outputs(int64_t i, int64_t kernel, int64_t stride, int64_t pad,
                                                 int64_t out_size, int64_t& first, int64_t& last) {
  first = i + pad < kernel ? 0 : (i + pad - kernel) / stride + 1;
  last = min((i + pad) / stride, out_size - 1);
}

/// The window of one output element: its plane, its first row and column (h0, w0) before
/// clipping, and the input rows [h_begin, h_end) and columns [w_begin, w_end) it covers.
struct Window {
  int64_t plane, h0, w0, h_begin, h_end, w_begin, w_end;
};

/// The window of output element `e`, a flat index into [planes, out_h, out_w].
__device__ __forceinline__ Window window_of_output(const Pool2dGeometry& g, int64_t e) {
  Window win;
  int64_t rest, ow, oh;
  div_mod(e, g.out_w, rest, ow);
  div_mod(rest, g.out_h, win.plane, oh);
  win.h0 = window_start(oh, g.stride_h, g.pad_h);
  win.w0 = window_start(ow, g.stride_w, g.pad_w);
  win.h_begin = max(win.h0, int64_t{0});
  win.h_end = min(win.h0 + g.kernel_h, g.in_h);
  win.w_begin = max(win.w0, int64_t{0});
  win.w_end = min(win.w0 + g.kernel_w, g.in_w);
  return win;
}

/// One input element: its plane, its position (h, w) and the outputs whose windows cover it, rows
/// [oh_first, oh_last] and columns [ow_first, ow_last] (empty when first > last).
struct Covering {
  int64_t plane, h, w, oh_first, oh_last, ow_first, ow_last;
};

/// The covering outputs of input element `e`, a flat index into [planes, in_h, in_w].
__device__ __forceinline__ Covering covering_of_input(const Pool2dGeometry& g, int64_t e) {
  Covering c;
  int64_t rest;
  div_mod(e, g.in_w, rest, c.w);
  div_mod(rest, g.in_h, c.plane, c.h);
  covering_outputs(c.h, g.kernel_h, g.stride_h, g.pad_h, g.out_h, c.oh_first, c.oh_last);
  covering_outputs(c.w, g.kernel_w, g.stride_w, g.pad_w, g.out_w, c.ow_first, c.ow_last);
  return c;
}

// in: [planes, in_h, in_w]; out, indices: [planes, out_h, out_w]; numel = planes * out_h * out_w.
template <class T>
__global__ void max_pool2d_forward_kernel(const T* in, T* out, int64_t* indices, int64_t numel, Pool2dGeometry g) {
  using C = compute_t<T>;
  for (int64_t e = global_thread(); e < numel; e += grid_threads()) {
    const Window win = window_of_output(g, e);
    const T* x = in + win.plane * g.in_h * g.in_w;
    C best = -std::numeric_limits<C>::infinity();
    int64_t best_index = win.h_begin * g.in_w + win.w_begin;
    for (int64_t h = win.h_begin; h < win.h_end; ++h) {
      for (int64_t w = win.w_begin; w < win.w_end; ++w) {
        const C v = to_compute(x[h * g.in_w + w]);
        if (v > best || (is_nan(v) && !is_nan(best))) {  // the first NaN wins
          best = v;
          best_index = h * g.in_w + w;
        }
      }
    }
    out[e] = from_compute<T>(best);
    indices[e] = best_index;
  }
}

// grad_out, indices: [planes, out_h, out_w]; grad_in: [planes, in_h, in_w]; numel = planes * in_h * in_w.
template <class T>
__global__ void max_pool2d_backward_kernel(const T* grad_out, const int64_t* indices, T* grad_in, int64_t numel,
                                           Pool2dGeometry g) {
  using C = compute_t<T>;
  for (int64_t e = global_thread(); e < numel; e += grid_threads()) {
    const Covering cov = covering_of_input(g, e);
    const int64_t self = cov.h * g.in_w + cov.w;
    const int64_t out_base = cov.plane * g.out_h * g.out_w;
    C sum = 0;
    for (int64_t oh = cov.oh_first; oh <= cov.oh_last; ++oh) {
      for (int64_t ow = cov.ow_first; ow <= cov.ow_last; ++ow) {
        const int64_t o = out_base + oh * g.out_w + ow;
        if (indices[o] == self) sum += to_compute(grad_out[o]);
      }
    }
    grad_in[e] = from_compute<T>(sum);
  }
}

// in: [planes, in_h, in_w]; out: [planes, out_h, out_w]; numel = planes * out_h * out_w.
template <class T>
__global__ void avg_pool2d_forward_kernel(const T* in, T* out, int64_t numel, Pool2dGeometry g) {
  using C = compute_t<T>;
  for (int64_t e = global_thread(); e < numel; e += grid_threads()) {
    const Window win = window_of_output(g, e);
    const T* x = in + win.plane * g.in_h * g.in_w;
    C sum = 0;
    for (int64_t h = win.h_begin; h < win.h_end; ++h)
      for (int64_t w = win.w_begin; w < win.w_end; ++w) sum += to_compute(x[h * g.in_w + w]);
    out[e] = from_compute<T>(sum / static_cast<C>(avg_divisor(g, win.h0, win.w0)));
  }
}

// grad_out: [planes, out_h, out_w]; grad_in: [planes, in_h, in_w]; numel = planes * in_h * in_w.
template <class T>
__global__ void avg_pool2d_backward_kernel(const T* grad_out, T* grad_in, int64_t numel, Pool2dGeometry g) {
  using C = compute_t<T>;
  for (int64_t e = global_thread(); e < numel; e += grid_threads()) {
    const Covering cov = covering_of_input(g, e);
    const int64_t out_base = cov.plane * g.out_h * g.out_w;
    C sum = 0;
    for (int64_t oh = cov.oh_first; oh <= cov.oh_last; ++oh) {
      const int64_t h0 = window_start(oh, g.stride_h, g.pad_h);
      for (int64_t ow = cov.ow_first; ow <= cov.ow_last; ++ow) {
        const int64_t divisor = avg_divisor(g, h0, window_start(ow, g.stride_w, g.pad_w));
        sum += to_compute(grad_out[out_base + oh * g.out_w + ow]) / static_cast<C>(divisor);
      }
    }
    grad_in[e] = from_compute<T>(sum);
  }
}

/// Checks the geometry and that `input` and `output` are contiguous floating tensors of one dtype
/// with the geometry's element counts (input [batch, channels, in_h, in_w], output [..., out_h, out_w]).
void check_operands(const char* op, const Pool2dGeometry& g, const Tensor& input, const char* input_name,
                    const Tensor& output, const char* output_name) {
  check_pool2d_geometry(op, g);
  const int64_t planes = g.batch * g.channels;
  FLAME_CHECK(input.is_contiguous() && input.numel() == planes * g.in_h * g.in_w,
              "{}: {} {} must be contiguous with {} x {} x {} x {} elements", op, input_name, input.describe(), g.batch,
              g.channels, g.in_h, g.in_w);
  FLAME_CHECK(output.is_contiguous() && output.numel() == planes * g.out_h * g.out_w,
              "{}: {} {} must be contiguous with {} x {} x {} x {} elements", op, output_name, output.describe(),
              g.batch, g.channels, g.out_h, g.out_w);
  FLAME_CHECK(input.dtype() == output.dtype(), "{}: {} is {} but {} is {}; they must share a dtype", op, input_name,
              input.describe(), output_name, output.describe());
}

void check_indices(const char* op, const Tensor& indices, const Tensor& out) {
  FLAME_CHECK(indices.dtype() == DType::I64 && indices.is_contiguous() && indices.numel() == out.numel(),
              "{}: indices {} must be contiguous i64 with the output's {} elements", op, indices.describe(),
              out.numel());
}

}  // namespace

void launch_max_pool2d_forward(DeviceContext& ctx, const Pool2dGeometry& g, const Tensor& input, const Tensor& out,
                               const Tensor& indices) {
  check_operands("max_pool2d", g, input, "input", out, "output");
  check_indices("max_pool2d", indices, out);
  const int64_t numel = out.numel();
  if (numel == 0) return;
  dispatch_dtype<DispatchSet::Floating>(input.dtype(), "max_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    max_pool2d_forward_kernel<T><<<grid_for(ctx, numel, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        static_cast<const T*>(input.data_ptr()), static_cast<T*>(out.data_ptr()),
        static_cast<int64_t*>(indices.data_ptr()), numel, g);
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

void launch_max_pool2d_backward(DeviceContext& ctx, const Pool2dGeometry& g, const Tensor& grad_out,
                                const Tensor& indices, const Tensor& grad_input) {
  check_operands("max_pool2d_backward", g, grad_input, "grad_input", grad_out, "grad_output");
  check_indices("max_pool2d_backward", indices, grad_out);
  const int64_t numel = grad_input.numel();
  if (numel == 0) return;
  dispatch_dtype<DispatchSet::Floating>(grad_out.dtype(), "max_pool2d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    max_pool2d_backward_kernel<T><<<grid_for(ctx, numel, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        static_cast<const T*>(grad_out.data_ptr()), static_cast<const int64_t*>(indices.data_ptr()),
        static_cast<T*>(grad_input.data_ptr()), numel, g);
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

void launch_avg_pool2d_forward(DeviceContext& ctx, const Pool2dGeometry& g, const Tensor& input, const Tensor& out) {
  check_operands("avg_pool2d", g, input, "input", out, "output");
  const int64_t numel = out.numel();
  if (numel == 0) return;
  dispatch_dtype<DispatchSet::Floating>(input.dtype(), "avg_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool2d_forward_kernel<T><<<grid_for(ctx, numel, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        static_cast<const T*>(input.data_ptr()), static_cast<T*>(out.data_ptr()), numel, g);
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

void launch_avg_pool2d_backward(DeviceContext& ctx, const Pool2dGeometry& g, const Tensor& grad_out,
                                const Tensor& grad_input) {
  check_operands("avg_pool2d_backward", g, grad_input, "grad_input", grad_out, "grad_output");
  const int64_t numel = grad_input.numel();
  if (numel == 0) return;
  dispatch_dtype<DispatchSet::Floating>(grad_out.dtype(), "avg_pool2d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool2d_backward_kernel<T><<<grid_for(ctx, numel, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        static_cast<const T*>(grad_out.data_ptr()), static_cast<T*>(grad_input.data_ptr()), numel, g);
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
