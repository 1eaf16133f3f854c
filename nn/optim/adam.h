// Adam and AdamW with exactly torch.optim.Adam's and torch.optim.AdamW's update rules
// (amsgrad, maximize and capturable not supported). AdamW is Adam with decoupled weight decay.
#pragma once

#include <utility>

#include "core/fused.h"
#include "nn/optim/optimizer.h"

namespace flame::optim {

/// How Adam applies weight decay: L2 (Adam: weight_decay * p is added to the gradient) or
/// Decoupled (AdamW: p *= 1 - lr * weight_decay before the Adam update); the fused kernel's enum.
using WeightDecayMode = AdamWeightDecay;

struct AdamOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0.0;
};

/// AdamW's options: Adam's, with torch.optim.AdamW's default weight decay.
struct AdamWOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

/// For each parameter p with gradient g, at its t-th update (t counts from 1):
///   L2:         g = g + weight_decay * p
///   Decoupled:  p = p * (1 - lr * weight_decay)
///   m = beta1 * m + (1 - beta1) * g                 ("exp_avg", zero before the first update)
///   v = beta2 * v + (1 - beta2) * g * g             ("exp_avg_sq")
///   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// The bias corrections are host doubles computed from the host step count t. A step updates all
/// parameters that share a device and a step count with one fused adam_step_ call (core/fused.h:
/// one kernel launch on CUDA; each element computed in f32, or f64 for f64 parameters, and
/// rounded once).
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions options = {});
  const AdamOptions& options() const { return options_; }
  WeightDecayMode weight_decay_mode() const { return mode_; }
  /// The fused kernel computes a mean from GradientSlots itself (Note [gradient slots]).
  bool takes_gradient_slots() const override { return true; }

 protected:
  Adam(std::vector<Tensor> params, AdamOptions options, WeightDecayMode mode, const char* type_name);
  void update(Tensor& param, const Tensor& grad, ParamState& state) override;
  void update_all(const std::vector<PendingUpdate>& updates) override;
  std::vector<std::string> state_keys() const override { return {"exp_avg", "exp_avg_sq"}; }

 private:
  AdamOptions options_;
  WeightDecayMode mode_;
};

/// Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW.
class AdamW final : public Adam {
 public:
  AdamW(std::vector<Tensor> params, AdamWOptions options = {});
};

}  // namespace flame::optim
