// Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay, with
// exactly torch.optim.SGD's update rule.
#pragma once

#include "nn/optim/optimizer.h"

namespace flame::optim {

/// How SGD applies its momentum buffer b (torch.optim.SGD's nesterov flag).
enum class MomentumKind {
  Classic,   // step along b
  Nesterov,  // step along g + momentum * b (needs momentum > 0 and dampening = 0)
};

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;  // L2: added to the gradient
  MomentumKind kind = MomentumKind::Classic;
};

/// For each parameter p with gradient g (torch.optim.SGD):
///   g = g + weight_decay * p
///   if momentum != 0:  b = g on the first update, else b = momentum * b + (1 - dampening) * g
///                      g = g + momentum * b (Nesterov) or g = b (Classic)
///   p = p - lr * g
/// State (Note [optimizer state]): "momentum_buffer" when momentum != 0, else none.
class SGD final : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions options);
  const SGDOptions& options() const { return options_; }

 protected:
  void update(Tensor& param, const Tensor& grad, ParamState& state) override;
  std::vector<std::string> state_keys() const override;

 private:
  SGDOptions options_;
};

}  // namespace flame::optim
