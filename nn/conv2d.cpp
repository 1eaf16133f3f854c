#include "nn/conv2d.h"

#include <fmt/format.h>

#include "nn/init.h"

namespace flame::nn {

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, std::array<int64_t, 2> kernel_size, Conv2dOptions options,
               bool bias, TensorOptions tensor_options)
    : in_channels_(in_channels),
      out_channels_(out_channels),
      kernel_size_(kernel_size),
      options_(options),
      has_bias_(bias) {
  FLAME_CHECK(in_channels > 0 && out_channels > 0 && kernel_size[0] > 0 && kernel_size[1] > 0,
              "{}: in_channels, out_channels and the kernel size must be positive", describe());
  FLAME_CHECK(options.groups > 0 && in_channels % options.groups == 0 && out_channels % options.groups == 0,
              "{}: groups must be positive and divide in_channels and out_channels", describe());
  for (int d = 0; d < 2; ++d) {
    FLAME_CHECK(options.stride[d] > 0 && options.padding[d] >= 0 && options.dilation[d] > 0,
                "{}: stride and dilation must be positive and padding non-negative", describe());
  }
  FLAME_CHECK(is_floating(tensor_options.dtype), "{}: parameters must have a floating-point dtype, got {}", describe(),
              dtype_name(tensor_options.dtype));
  const Shape weight_shape{out_channels, in_channels / options.groups, kernel_size[0], kernel_size[1]};
  weight_ = register_parameter("weight", init::kaiming_uniform_default(weight_shape, tensor_options));
  if (bias) {
    const int64_t fan_in = init::compute_fans(weight_shape).fan_in;
    bias_ = register_parameter("bias", init::bias_uniform_default(out_channels, fan_in, tensor_options));
  }
}

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Conv2dOptions options, bool bias,
               TensorOptions tensor_options)
    : Conv2d(in_channels, out_channels, {kernel_size, kernel_size}, options, bias, tensor_options) {}

std::string Conv2d::describe() const {
  const Conv2dOptions& o = options_;
  return fmt::format(
      "Conv2d({}, {}, kernel_size=[{}, {}], stride=[{}, {}], padding=[{}, {}], dilation=[{}, {}], groups={}, bias={})",
      in_channels_, out_channels_, kernel_size_[0], kernel_size_[1], o.stride[0], o.stride[1], o.padding[0],
      o.padding[1], o.dilation[0], o.dilation[1], o.groups, has_bias_);
}

Tensor Conv2d::forward(const Tensor& input) {
  FLAME_CHECK(input.defined(), "{}: the input is undefined", describe());
  FLAME_CHECK((input.dim() == 4 || input.dim() == 3) && input.size(-3) == in_channels_,
              "{}: input {} must be [N, {}, H, W] (or unbatched [{}, H, W])", describe(), input.describe(),
              in_channels_, in_channels_);
  FLAME_CHECK(input.dtype() == weight_.dtype(),
              "{}: input {} is {} but the weight is {}; convert the input with to() or the layer with Module::to()",
              describe(), input.describe(), dtype_name(input.dtype()), dtype_name(weight_.dtype()));
  FLAME_CHECK(input.device() == weight_.device(),
              "{}: input {} is on {} but the weight is on {}; move one of them with to()", describe(), input.describe(),
              input.device().str(), weight_.device().str());
  return conv2d(input, weight_, bias_, options_);
}

}  // namespace flame::nn
