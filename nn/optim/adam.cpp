#include "nn/optim/adam.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/fused.h"

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
  update_all({PendingUpdate{&param, grad, &state, {}}});
}

void Adam::update_all(const std::vector<PendingUpdate>& updates) {
  // Parameters on one device with one step count share the bias corrections: one fused call each.
  struct Group {
    Device device;
    int64_t step = 0;
    std::vector<Tensor> params, grads, exp_avg, exp_avg_sq;
    std::vector<GradientSlots> slots;
  };
  std::vector<Group> groups;
  std::vector<std::pair<Tensor*, Tensor>> copy_back;  // non-contiguous parameter, its updated copy
  for (const PendingUpdate& u : updates) {
    Tensor& param = *u.param;
    const Tensor& grad = u.grad;
    FLAME_CHECK(grad.shape() == param.shape() && grad.dtype() == param.dtype() && grad.device() == param.device(),
                "{}: the gradient {} of parameter {} must have the parameter's shape, dtype and device", type_name(),
                grad.describe(), param.describe());
    ParamState& state = *u.state;
    if (state.tensors.empty()) {
      const TensorOptions like(param.dtype(), param.device());
      state.tensors["exp_avg"] = zeros(param.shape(), like);
      state.tensors["exp_avg_sq"] = zeros(param.shape(), like);
    }
    auto group = std::find_if(groups.begin(), groups.end(),
                              [&](const Group& g) { return g.device == param.device() && g.step == state.step; });
    if (group == groups.end()) group = groups.insert(groups.end(), Group{param.device(), state.step, {}, {}, {}, {}, {}});
    Tensor target = param;
    if (!param.is_contiguous()) {
      target = param.contiguous();
      copy_back.emplace_back(&param, target);
    }
    group->params.push_back(target);
    group->grads.push_back(grad);
    group->exp_avg.push_back(state.tensors.at("exp_avg"));
    group->exp_avg_sq.push_back(state.tensors.at("exp_avg_sq"));
    group->slots.push_back(u.slots);
  }

  const auto [beta1, beta2] = options_.betas;
  for (const Group& g : groups) {
    const double t = static_cast<double>(g.step);
    AdamStepArgs args;
    args.lr = lr();
    args.beta1 = beta1;
    args.beta2 = beta2;
    args.eps = options_.eps;
    args.weight_decay = options_.weight_decay;
    args.decay = mode_;
    args.bias_correction1 = 1.0 - std::pow(beta1, t);
    args.bias_correction2 = 1.0 - std::pow(beta2, t);
    const bool any_slots =
        std::any_of(g.slots.begin(), g.slots.end(), [](const GradientSlots& s) { return s.slots.defined(); });
    adam_step_(g.params, g.grads, g.exp_avg, g.exp_avg_sq, args, any_slots ? g.slots : std::vector<GradientSlots>{});
  }
  for (auto& [param, updated] : copy_back) param->copy_(updated);
}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions options)
    : Adam(std::move(params), AdamOptions{options.lr, options.betas, options.eps, options.weight_decay},
           WeightDecayMode::Decoupled, "AdamW") {}

}  // namespace flame::optim
