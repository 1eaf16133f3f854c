// Parameter initialisation as PyTorch does it by default, drawn from FLAME's seeded Philox
// generators (so a seed gives the same weights on the CPU and on CUDA).
#pragma once

#include "core/autograd.h"
#include "core/ops.h"

namespace flame::nn::init {

/// Fan-in and fan-out of a weight: [out, in] for linear layers, [out, in/groups, kh, kw] for
/// convolutions (receptive field multiplied in).
struct Fans {
  int64_t fan_in = 0;
  int64_t fan_out = 0;
};
Fans compute_fans(const Shape& weight_shape);

/// U(low, high) of `shape`, as a new leaf tensor.
Tensor uniform(const Shape& shape, double low, double high, TensorOptions options, Generator* gen = nullptr);

/// PyTorch's default for Linear and Conv weights: kaiming_uniform_(a = sqrt(5)), i.e.
/// U(-b, b) with b = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
Tensor kaiming_uniform_default(const Shape& weight_shape, TensorOptions options, Generator* gen = nullptr);

/// PyTorch's default for Linear and Conv biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
Tensor bias_uniform_default(int64_t size, int64_t fan_in, TensorOptions options, Generator* gen = nullptr);

}  // namespace flame::nn::init
