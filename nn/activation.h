// Elementwise activation modules (no parameters), as PyTorch's nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh
// and nn.Sigmoid. Each forwards to the op of the same name in core/ops.h, so autograd
// differentiates it and dtype / device rules are the op's.
#pragma once

#include <string>

#include "nn/module.h"

namespace flame::nn {

/// max(x, 0).
class ReLU : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "ReLU"; }
};

/// x * Phi(x) (exact, through erf), or PyTorch's tanh approximation.
class GELU : public Module {
 public:
  explicit GELU(GeluApproximation approximation = GeluApproximation::None) : approximation_(approximation) {}
  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "GELU"; }
  GeluApproximation approximation() const { return approximation_; }

 private:
  GeluApproximation approximation_;
};

/// x * sigmoid(x) (also known as swish).
class SiLU : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "SiLU"; }
};

class Tanh : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "Tanh"; }
};

/// 1 / (1 + exp(-x)).
class Sigmoid : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "Sigmoid"; }
};

}  // namespace flame::nn
