// Tensor's autograd methods (declared in core/tensor.h).
#include "core/autograd.h"

namespace flame {

AutogradMeta& Tensor::autograd_meta() const {
  auto& slot = impl().autograd;
  if (!slot) slot = std::make_shared<AutogradMeta>();
  return *slot;
}

bool Tensor::requires_grad() const {
  const auto& meta = impl().autograd;
  return meta && meta->requires_grad;
}

Tensor& Tensor::requires_grad_(bool requires_grad) {
  FLAME_CHECK(is_leaf(), "requires_grad_: {} is the result of an op (has a grad_fn); only leaves can change "
              "requires_grad; use detach() for a new leaf", describe());
  FLAME_CHECK(!requires_grad || is_floating(dtype()), "requires_grad_: only floating-point tensors can require "
              "gradients, got {}", describe());
  autograd_meta().requires_grad = requires_grad;
  return *this;
}

bool Tensor::is_leaf() const {
  const auto& meta = impl().autograd;
  return !meta || !meta->grad_fn;
}

Tensor Tensor::grad() const {
  const auto& meta = impl().autograd;
  return meta ? meta->grad : Tensor();
}

void Tensor::set_grad(const Tensor& grad) const {
  if (grad.defined())
    FLAME_CHECK(grad.shape() == shape() && grad.dtype() == dtype() && grad.device() == device(),
                "set_grad: gradient {} does not match the tensor {}", grad.describe(), describe());
  autograd_meta().grad = grad;
}

std::shared_ptr<autograd::Node> Tensor::grad_fn() const {
  const auto& meta = impl().autograd;
  return meta ? meta->grad_fn : nullptr;
}

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  autograd::run_backward(*this, gradient, retain_graph);
}

Tensor Tensor::detach() const {
  auto copy = std::make_shared<TensorImpl>(impl());
  copy->autograd = nullptr;
  return Tensor(std::move(copy));
}

void Tensor::register_grad_ready_hook(GradReadyHook hook) const {
  FLAME_CHECK(is_leaf() && requires_grad(), "register_grad_ready_hook: {} must be a leaf that requires grad",
              describe());
  autograd_meta().ready_hooks.push_back(std::move(hook));
}

}  // namespace flame
