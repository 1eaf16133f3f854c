#include "nn/optim/adam.h"

#include <cmath>

namespace flame::optim {

Adam::Adam(std::vector<Tensor> params, AdamOptions options)
    : Adam(std::move(params), options, WeightDecayMode::L2, "Adam") {}

Adam::Adam(std::vector<Tensor> params, AdamOptions options, WeightDecayMode mode, const char* type_name)
    : Optimizer(std::move(params), options.lr, type_name), options_(options), mode_(mode) {
  for (const double beta : {options.betas.first, options.betas.second})
    FLAME_CHECK(beta >= 0.0 && beta < 1.0, "{}: betas must be in [0, 1), got ({}, {})", type_name, options.betas.first,
                options.betas.second);
  check_option(type_name, "eps", options.eps, 0.0, HUGE_VAL);
  check_option(type_name, "weight_decay", options.weight_decay, 0.0, HUGE_VAL);
}

void Adam::update(Tensor& param, const Tensor& grad, ParamState& state) {
  const auto [beta1, beta2] = options_.betas;
  const double lr = this->lr();
  const double weight_decay = options_.weight_decay;
  Tensor g = grad;
  if (weight_decay != 0.0 && mode_ == WeightDecayMode::L2) g = add(g, param, weight_decay);
  if (weight_decay != 0.0 && mode_ == WeightDecayMode::Decoupled) param.mul_(1.0 - lr * weight_decay);

  if (state.tensors.empty()) {
    const TensorOptions like(param.dtype(), param.device());
    state.tensors["exp_avg"] = zeros(param.shape(), like);
    state.tensors["exp_avg_sq"] = zeros(param.shape(), like);
  }
  Tensor& exp_avg = state.tensors.at("exp_avg");
  Tensor& exp_avg_sq = state.tensors.at("exp_avg_sq");
  exp_avg.mul_(beta1).add_(mul(g, 1.0 - beta1));
  Tensor g_squared = mul(g, g);
  exp_avg_sq.mul_(beta2).add_(g_squared.mul_(1.0 - beta2));

  const double t = static_cast<double>(state.step);
  const double bias_correction1 = 1.0 - std::pow(beta1, t);
  const double bias_correction2 = 1.0 - std::pow(beta2, t);
  Tensor denom = sqrt(exp_avg_sq);
  denom.div_(std::sqrt(bias_correction2)).add_(options_.eps);
  Tensor step = div(exp_avg, denom);
  param.sub_(step.mul_(lr / bias_correction1));
}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions options)
    : Adam(std::move(params), AdamOptions{options.lr, options.betas, options.eps, options.weight_decay},
           WeightDecayMode::Decoupled, "AdamW") {}

}  // namespace flame::optim
