// 2-D pooling layers (no parameters), as PyTorch's nn.MaxPool2d and nn.AvgPool2d. Each forwards
// to the op of core/pool.h, so autograd differentiates it and the shape, dtype and device rules
// are the op's (Note [pool2d semantics]: [N, C, H, W] or [C, H, W] input, floor output size, no
// ceil_mode or dilation).
#pragma once

#include <string>

#include "core/pool.h"
#include "nn/module.h"

namespace flame::nn {

/// Max over each window: max_pool2d(input, options).
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(const Pool2dOptions& options) : options_(options) {}

  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "MaxPool2d"; }
  const Pool2dOptions& options() const { return options_; }

 private:
  Pool2dOptions options_;
};

/// Mean over each window: avg_pool2d(input, options, count_include_pad).
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(const Pool2dOptions& options, bool count_include_pad = true)
      : options_(options), count_include_pad_(count_include_pad) {}

  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "AvgPool2d"; }
  const Pool2dOptions& options() const { return options_; }
  bool count_include_pad() const { return count_include_pad_; }

 private:
  Pool2dOptions options_;
  bool count_include_pad_;
};

}  // namespace flame::nn
