#include "nn/pool2d.h"

namespace flame::nn {

Tensor MaxPool2d::forward(const Tensor& input) { return max_pool2d(input, options_); }

Tensor AvgPool2d::forward(const Tensor& input) { return avg_pool2d(input, options_, count_include_pad_); }

}  // namespace flame::nn
