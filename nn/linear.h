// Linear: the fully connected layer y = x W^T + b, as PyTorch's nn.Linear.
#pragma once

#include <cstdint>
#include <string>

#include "nn/module.h"

namespace flame::nn {

/// y = x @ W^T + b on the last dim of x: [..., in_features] -> [..., out_features] (any number of
/// leading dims, including none). W is [out_features, in_features], drawn from
/// init::kaiming_uniform_default; b is [out_features], drawn from init::bias_uniform_default(out,
/// in), both from the default generator of `options.device`. The input must have the weight's
/// dtype and device; anything else raises flame::Error naming the layer and the shapes.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, TensorOptions options = {});

  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "Linear"; }

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  /// [out_features, in_features].
  const Tensor& weight() const { return weight_; }
  /// [out_features]; undefined when built without bias.
  const Tensor& bias() const { return bias_; }

 private:
  /// "Linear(in_features=4, out_features=3, bias=true)" for messages.
  std::string describe() const;

  int64_t in_features_;
  int64_t out_features_;
  Tensor weight_;
  Tensor bias_;
};

}  // namespace flame::nn
