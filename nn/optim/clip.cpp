#include "nn/optim/clip.h"

#include <cmath>
#include <map>

#include "core/autograd.h"
#include "core/ops.h"

namespace flame::optim {

Tensor clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  FLAME_CHECK(std::isfinite(max_norm) && max_norm > 0.0,
              "clip_grad_norm_: max_norm must be positive and finite, "
              "got {}",
              max_norm);
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    FLAME_CHECK(p.defined(), "clip_grad_norm_: a parameter is undefined");
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    FLAME_CHECK(grads.empty() || g.device() == grads.front().device(),
                "clip_grad_norm_: gradients live on {} and "
                "{}; all gradients must be on one device",
                grads.empty() ? "" : grads.front().device().str(), g.device().str());
    grads.push_back(g);
  }
  if (grads.empty()) return zeros({}, TensorOptions(kF32, params.empty() ? kCPU : params.front().device()));

  DType accumulate = kF64;
  for (const Tensor& g : grads)
    if (g.dtype() != kF64) accumulate = kF32;
  Tensor total_squares;
  for (const Tensor& g : grads) {
    const Tensor x = g.to(accumulate);
    const Tensor squares = sum(mul(x, x));
    total_squares = total_squares.defined() ? add(total_squares, squares) : squares;
  }
  const Tensor norm = sqrt(total_squares);
  const Tensor scale =
      clamp_max(div(full({}, max_norm, TensorOptions(accumulate, norm.device())), add(norm, 1e-6)), 1.0);

  std::map<DType, Tensor> scale_as;  // the scale converted once per gradient dtype
  for (Tensor& g : grads) {
    auto [it, fresh] = scale_as.try_emplace(g.dtype());
    if (fresh) it->second = scale.to(g.dtype());
    g.mul_(it->second);
  }
  return norm;
}

}  // namespace flame::optim
