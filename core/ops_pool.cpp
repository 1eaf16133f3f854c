// Frontends of 2-D pooling (core/pool.h): argument checks, output allocation, dispatch, backward.
#include "core/pool.h"

#include "core/autograd.h"
#include "core/backend.h"
#include "core/op_checks.h"
#include "core/ops.h"

namespace flame {

namespace {

std::string options_str(const Pool2dOptions& o) {
  return fmt::format("kernel {{{}, {}}}, stride {{{}, {}}}, padding {{{}, {}}}", o.kernel[0], o.kernel[1], o.stride[0],
                     o.stride[1], o.padding[0], o.padding[1]);
}

/// floor(a / b) for b > 0.
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/// Checks a 4-D input and the options (Note [pool2d semantics]) and computes the geometry.
Pool2dGeometry make_geometry(const char* op, const Tensor& input, const Pool2dOptions& options,
                             bool count_include_pad) {
  const auto where = [&] { return fmt::format("{}({}, {})", op, input.describe(), options_str(options)); };
  FLAME_CHECK(input.dim() == 4 && input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0,
              "{}: expects a [N, C, H, W] or [C, H, W] input with non-zero C, H and W", where());
  FLAME_CHECK(is_floating(input.dtype()), "{}: expects a floating-point input (f32, f64, f16, bf16)", where());
  const std::array<int64_t, 2> stride =
      options.stride[0] == 0 && options.stride[1] == 0 ? options.kernel : options.stride;
  const char* names[2] = {"height", "width"};
  Pool2dGeometry g;
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  int64_t out[2] = {0, 0};
  for (int d = 0; d < 2; ++d) {
    const int64_t k = options.kernel[d], s = stride[d], p = options.padding[d];
    FLAME_CHECK(k > 0, "{}: the kernel {} must be positive", where(), names[d]);
    FLAME_CHECK(s > 0, "{}: the stride {} must be positive (or leave the stride {{0, 0}} for stride = kernel)",
                where(), names[d]);
    FLAME_CHECK(p >= 0 && p <= k / 2, "{}: the padding {} must be between 0 and half the kernel ({}), got {}", where(),
                names[d], k / 2, p);
    const int64_t in = input.size(2 + d);
    out[d] = floor_div(in + 2 * p - k, s) + 1;
    FLAME_CHECK(out[d] >= 1,
                "{}: the output {} would be {} (input {} {} + 2 * padding {} is smaller than the kernel {}); use a "
                "smaller kernel or more padding",
                where(), names[d], out[d], names[d], in, p, k);
  }
  g.out_h = out[0];
  g.out_w = out[1];
  g.kernel_h = options.kernel[0];
  g.kernel_w = options.kernel[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = options.padding[0];
  g.pad_w = options.padding[1];
  g.count_include_pad = count_include_pad;
  return g;
}

/// Checks the rank, then runs `fn` on a 4-D input; an unbatched [C, H, W] input runs as
/// [1, C, H, W] and each result loses the added dim again.
template <class Fn>
auto with_batch_dim(const char* op, const Tensor& input, const Pool2dOptions& options, Fn&& fn) {
  FLAME_CHECK(input.defined(), "{}: the input is undefined", op);
  FLAME_CHECK(input.dim() == 3 || input.dim() == 4, "{}({}, {}): expects a [N, C, H, W] or [C, H, W] input", op,
              input.describe(), options_str(options));
  return fn(input.dim() == 4 ? input : input.unsqueeze(0), input.dim() == 3);
}

MaxPool2dResult max_pool2d_4d(const Tensor& input, const Pool2dOptions& options) {
  const Pool2dGeometry g = make_geometry("max_pool2d", input, options, true);
  const Shape out_shape{g.batch, g.channels, g.out_h, g.out_w};
  MaxPool2dResult result{Tensor::empty(out_shape, TensorOptions(input.dtype(), input.device())),
                         Tensor::empty(out_shape, TensorOptions(kI64, input.device()))};
  if (input.numel() > 0)
    backend_for(input.device()).max_pool2d_forward(g, input.contiguous(), result.output, result.indices);
  if (autograd::needs_grad({&input})) {
    autograd::record(result.output, "MaxPool2dBackward", {input},
                     [g, shape = input.shape(), indices = autograd::SavedTensor(result.indices)](const Tensor& grad) {
                       Tensor grad_input = Tensor::empty(shape, TensorOptions(grad.dtype(), grad.device()));
                       if (grad_input.numel() > 0)
                         backend_for(grad.device()).max_pool2d_backward(g, grad.contiguous(), indices.get(),
                                                                        grad_input);
                       return std::vector<Tensor>{grad_input};
                     });
  }
  return result;
}

Tensor avg_pool2d_4d(const Tensor& input, const Pool2dOptions& options, bool count_include_pad) {
  const Pool2dGeometry g = make_geometry("avg_pool2d", input, options, count_include_pad);
  Tensor out = Tensor::empty({g.batch, g.channels, g.out_h, g.out_w}, TensorOptions(input.dtype(), input.device()));
  if (input.numel() > 0) backend_for(input.device()).avg_pool2d_forward(g, input.contiguous(), out);
  if (autograd::needs_grad({&input})) {
    autograd::record(out, "AvgPool2dBackward", {input}, [g, shape = input.shape()](const Tensor& grad) {
      Tensor grad_input = Tensor::empty(shape, TensorOptions(grad.dtype(), grad.device()));
      if (grad_input.numel() > 0) backend_for(grad.device()).avg_pool2d_backward(g, grad.contiguous(), grad_input);
      return std::vector<Tensor>{grad_input};
    });
  }
  return out;
}

}  // namespace

MaxPool2dResult max_pool2d_with_indices(const Tensor& input, const Pool2dOptions& options) {
  return with_batch_dim("max_pool2d", input, options, [&](const Tensor& x, bool unbatched) {
    MaxPool2dResult result = max_pool2d_4d(x, options);
    if (unbatched) result = {result.output.squeeze(0), result.indices.squeeze(0)};
    return result;
  });
}

Tensor max_pool2d(const Tensor& input, const Pool2dOptions& options) {
  return max_pool2d_with_indices(input, options).output;
}

Tensor avg_pool2d(const Tensor& input, const Pool2dOptions& options, bool count_include_pad) {
  return with_batch_dim("avg_pool2d", input, options, [&](const Tensor& x, bool unbatched) {
    Tensor out = avg_pool2d_4d(x, options, count_include_pad);
    return unbatched ? out.squeeze(0) : out;
  });
}

}  // namespace flame
