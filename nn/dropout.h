// Dropout, as PyTorch's nn.Dropout: zeroes elements with probability p in training mode and scales
// the rest by 1 / (1 - p); the identity in evaluation mode.
#pragma once

#include <string>

#include "nn/module.h"

namespace flame::nn {

/// In training mode, out = x * mask / (1 - p) with mask = (u < 1 - p), u = rand(x.shape) in f32
/// drawn from the default Philox generator of x's device. The f32 draw does not depend on x's
/// dtype, and a seed gives the same mask on the CPU and on CUDA (Note [random stream layout] in
/// core/random.h); each call advances that generator. In evaluation mode, or for p == 0, forward
/// returns its input unchanged (the same tensor). p outside [0, 1) raises flame::Error.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);

  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "Dropout"; }
  double p() const { return p_; }

 private:
  double p_;
};

}  // namespace flame::nn
