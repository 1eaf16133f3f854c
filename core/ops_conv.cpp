// Frontend of conv2d: argument checks, the geometry, dispatch to the backend, and the backward.
#include <fmt/format.h>

#include <string>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/conv.h"
#include "core/op_checks.h"
#include "core/ops.h"

namespace flame {

namespace {

std::string options_str(const Conv2dOptions& o) {
  return fmt::format("stride=[{}, {}], padding=[{}, {}], dilation=[{}, {}], groups={}", o.stride[0], o.stride[1],
                     o.padding[0], o.padding[1], o.dilation[0], o.dilation[1], o.groups);
}

Conv2dGeometry make_geometry(const Tensor& input, const Tensor& weight, const Tensor& bias, const Conv2dOptions& o) {
  FLAME_CHECK(input.defined() && weight.defined(), "conv2d: the input or the weight is undefined");
  detail::check_same_device("conv2d", {&input, &weight});
  detail::check_same_dtype("conv2d", {&input, &weight});
  if (bias.defined()) {
    detail::check_same_device("conv2d", {&input, &bias});
    detail::check_same_dtype("conv2d", {&input, &bias});
  }
  detail::check_floating("conv2d", input);
  FLAME_CHECK(input.dim() == 4, "conv2d: input {} must be 4-D [N, C, H, W] (or 3-D [C, H, W])", input.describe());
  FLAME_CHECK(weight.dim() == 4, "conv2d: weight {} must be 4-D [out_channels, in_channels / groups, kh, kw]",
              weight.describe());
  for (int d = 0; d < 2; ++d) {
    FLAME_CHECK(o.stride[d] >= 1 && o.padding[d] >= 0 && o.dilation[d] >= 1,
                "conv2d: needs stride >= 1, padding >= 0 and dilation >= 1, got {}", options_str(o));
  }
  Conv2dGeometry g;
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.groups = o.groups;
  FLAME_CHECK(
      g.groups >= 1 && g.in_channels % g.groups == 0 && g.out_channels % g.groups == 0 && g.in_channels >= g.groups,
      "conv2d: groups={} must be at least 1 and divide both the input's {} channels (input {}) and the "
      "weight's {} output channels (weight {})",
      g.groups, g.in_channels, input.describe(), g.out_channels, weight.describe());
  FLAME_CHECK(weight.size(1) == g.in_channels / g.groups,
              "conv2d: weight {} must have in_channels / groups = {} / {} = {} channels in dim 1 for input {}",
              weight.describe(), g.in_channels, g.groups, g.in_channels / g.groups, input.describe());
  FLAME_CHECK(g.kernel_h >= 1 && g.kernel_w >= 1, "conv2d: weight {} has an empty kernel", weight.describe());
  if (bias.defined()) {
    FLAME_CHECK(bias.dim() == 1 && bias.size(0) == g.out_channels,
                "conv2d: bias {} must be 1-D with one entry per output channel ({}) of weight {}", bias.describe(),
                g.out_channels, weight.describe());
  }
  g.stride_h = o.stride[0];
  g.stride_w = o.stride[1];
  g.pad_h = o.padding[0];
  g.pad_w = o.padding[1];
  g.dilation_h = o.dilation[0];
  g.dilation_w = o.dilation[1];
  g.out_h = conv2d_output_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = conv2d_output_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  FLAME_CHECK(g.out_h >= 1 && g.out_w >= 1,
              "conv2d: input {} padded by [{}, {}] is smaller than the dilated kernel [{}, {}] of weight {} ({}); "
              "the output would be empty",
              input.describe(), g.pad_h, g.pad_w, g.dilation_h * (g.kernel_h - 1) + 1,
              g.dilation_w * (g.kernel_w - 1) + 1, weight.describe(), options_str(o));
  return g;
}

/// input and weight contiguous; bias undefined or [O].
Tensor forward(const Conv2dGeometry& g, const Tensor& input, const Tensor& weight, const Tensor& bias) {
  Tensor out = Tensor::empty({g.batch, g.out_channels, g.out_h, g.out_w}, TensorOptions(input.dtype(), input.device()));
  if (out.numel() == 0) return out;
  Backend& backend = backend_for(input.device());
  backend.conv2d_forward(g, input, weight, out);
  if (bias.defined())
    backend.binary(BinaryOp::Add, out, bias.reshape({1, g.out_channels, 1, 1}).expand(out.shape()), out);
  return out;
}

/// Gradients of input (when `weight` is defined), weight (when `input` is defined) and bias (when
/// `bias_grad`), from the output's gradient `grad_out`.
std::vector<Tensor> backward(const Conv2dGeometry& g, const Tensor& grad_out, const Tensor& input, const Tensor& weight,
                             bool bias_grad) {
  const Tensor go = grad_out.contiguous();
  const TensorOptions options(go.dtype(), go.device());
  Backend& backend = backend_for(go.device());
  std::vector<Tensor> grads(3);
  if (input.defined()) {
    grads[1] = Tensor::empty({g.out_channels, g.in_channels / g.groups, g.kernel_h, g.kernel_w}, options);
    backend.conv2d_backward_weight(g, input, go, grads[1]);
  }
  if (bias_grad) grads[2] = sum(go, {0, 2, 3});
  if (weight.defined()) {
    // Note [early gradients]: the weight's and bias's gradients go on before the input's is queued.
    for (size_t i : {size_t{1}, size_t{2}}) {
      if (!grads[i].defined()) continue;
      autograd::deliver_gradient_early(i, std::move(grads[i]));
      grads[i] = Tensor();
    }
    grads[0] = Tensor::empty({g.batch, g.in_channels, g.in_h, g.in_w}, options);
    backend.conv2d_backward_input(g, go, weight, grads[0]);
  }
  return grads;
}

}  // namespace

int64_t conv2d_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  FLAME_CHECK(stride >= 1 && dilation >= 1 && kernel >= 1 && padding >= 0 && in >= 0,
              "conv2d_output_size: needs in >= 0, kernel >= 1, stride >= 1, padding >= 0 and dilation >= 1, got "
              "in={}, kernel={}, stride={}, padding={}, dilation={}",
              in, kernel, stride, padding, dilation);
  const int64_t span = in + 2 * padding - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias, const Conv2dOptions& options) {
  if (input.defined() && input.dim() == 3) return conv2d(input.unsqueeze(0), weight, bias, options).squeeze(0);
  Conv2dGeometry g;
  Tensor x, w, out;
  {
    autograd::NoGradGuard no_grad;  // the internal copies are not part of the graph
    g = make_geometry(input, weight, bias, options);
    x = input.contiguous();
    w = weight.contiguous();
    out = forward(g, x, w, bias);
  }
  if (autograd::needs_grad({&input, &weight, &bias})) {
    // The input is kept only for the weight's gradient, the weight only for the input's.
    autograd::record(out, "Conv2dBackward", {input, weight, bias},
                     [g, saved_input = autograd::SavedTensor(weight.requires_grad() ? x : Tensor()),
                      saved_weight = autograd::SavedTensor(input.requires_grad() ? w : Tensor()),
                      bias_grad = bias.defined() && bias.requires_grad()](const Tensor& grad_out) {
                       return backward(g, grad_out, saved_input.get(), saved_weight.get(), bias_grad);
                     });
  }
  return out;
}

}  // namespace flame
