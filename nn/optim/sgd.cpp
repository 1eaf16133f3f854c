#include "nn/optim/sgd.h"

#include <cmath>

namespace flame::optim {

SGD::SGD(std::vector<Tensor> params, SGDOptions options)
    : Optimizer(std::move(params), options.lr, "SGD"), options_(options) {
  check_option("SGD", "momentum", options.momentum, 0.0, HUGE_VAL);
  check_option("SGD", "dampening", options.dampening, -HUGE_VAL, HUGE_VAL);
  check_option("SGD", "weight_decay", options.weight_decay, 0.0, HUGE_VAL);
  if (options.kind == MomentumKind::Nesterov)
    FLAME_CHECK(options.momentum > 0.0 && options.dampening == 0.0,
                "SGD: Nesterov momentum requires momentum > 0 "
                "and dampening = 0, got momentum {} and dampening {}",
                options.momentum, options.dampening);
}

std::vector<std::string> SGD::state_keys() const {
  if (options_.momentum == 0.0) return {};
  return {"momentum_buffer"};
}

void SGD::update(Tensor& param, const Tensor& grad, ParamState& state) {
  Tensor g = options_.weight_decay != 0.0 ? add(grad, param, options_.weight_decay) : grad;
  if (options_.momentum != 0.0) {
    auto [it, fresh] = state.tensors.try_emplace("momentum_buffer");
    Tensor& buffer = it->second;
    if (fresh) {
      buffer = g.clone();
    } else {
      buffer.mul_(options_.momentum);
      buffer.add_(options_.dampening == 0.0 ? g : mul(g, 1.0 - options_.dampening));
    }
    g = options_.kind == MomentumKind::Nesterov ? add(g, buffer, options_.momentum) : buffer;
  }
  param.sub_(mul(g, lr()));
}

}  // namespace flame::optim
