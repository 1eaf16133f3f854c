#include "nn/activation.h"

namespace flame::nn {
namespace {

void check_defined(const Module& m, const Tensor& input) {
  FLAME_CHECK(input.defined(), "{}: the input is undefined", m.type_name());
}

/// GELU, SiLU, Tanh and Sigmoid are floating-point only (ReLU, like relu, also takes integers).
void check_floating_input(const Module& m, const Tensor& input) {
  check_defined(m, input);
  FLAME_CHECK(is_floating(input.dtype()), "{}: input {} must be floating point (f32, f64, f16 or bf16)", m.type_name(),
              input.describe());
}

}  // namespace

Tensor ReLU::forward(const Tensor& input) {
  check_defined(*this, input);
  return relu(input);
}

Tensor GELU::forward(const Tensor& input) {
  check_floating_input(*this, input);
  return gelu(input, approximation_);
}

Tensor SiLU::forward(const Tensor& input) {
  check_floating_input(*this, input);
  return silu(input);
}

Tensor Tanh::forward(const Tensor& input) {
  check_floating_input(*this, input);
  return tanh(input);
}

Tensor Sigmoid::forward(const Tensor& input) {
  check_floating_input(*this, input);
  return sigmoid(input);
}

}  // namespace flame::nn
