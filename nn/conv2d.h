// Conv2d: the 2-D convolution layer, as PyTorch's nn.Conv2d.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "core/conv.h"
#include "nn/module.h"

namespace flame::nn {

/// y = conv2d(x, W, b, options) (core/conv.h): [N, in_channels, H, W] -> [N, out_channels, oh, ow]
/// (or unbatched [in_channels, H, W] -> [out_channels, oh, ow]). W is [out_channels, in_channels /
/// groups, kh, kw], drawn from init::kaiming_uniform_default; b is [out_channels], drawn from
/// init::bias_uniform_default with fan_in = in_channels / groups * kh * kw; both from the default
/// generator of `tensor_options.device`, as PyTorch initialises them. Invalid sizes raise
/// flame::Error at construction; an input of the wrong rank, channel count, dtype or device raises
/// flame::Error naming the layer and the shapes.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, std::array<int64_t, 2> kernel_size, Conv2dOptions options = {},
         bool bias = true, TensorOptions tensor_options = {});
  /// A square kernel_size x kernel_size kernel.
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Conv2dOptions options = {}, bool bias = true,
         TensorOptions tensor_options = {});

  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "Conv2d"; }

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  std::array<int64_t, 2> kernel_size() const { return kernel_size_; }
  const Conv2dOptions& options() const { return options_; }
  /// [out_channels, in_channels / groups, kh, kw].
  const Tensor& weight() const { return weight_; }
  /// [out_channels]; undefined when built without bias.
  const Tensor& bias() const { return bias_; }

 private:
  /// "Conv2d(1, 8, kernel_size=[3, 3], stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, bias=true)".
  std::string describe() const;

  int64_t in_channels_;
  int64_t out_channels_;
  std::array<int64_t, 2> kernel_size_;
  Conv2dOptions options_;
  bool has_bias_;
  Tensor weight_;
  Tensor bias_;
};

}  // namespace flame::nn
