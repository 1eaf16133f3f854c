#include "nn/module.h"

#include <functional>
#include <map>
#include <unordered_set>

#include "core/autograd.h"

namespace flame::nn {

void Module::check_new_name(const std::string& name) const {
  FLAME_CHECK(!name.empty() && name.find('.') == std::string::npos, "{}: invalid name '{}' (non-empty, no dots)",
              type_name(), name);
  auto taken = [&](const auto& list) {
    for (const auto& entry : list)
      if (entry.first == name) return true;
    return false;
  };
  FLAME_CHECK(!taken(parameters_) && !taken(buffers_) && !taken(children_), "{}: name '{}' is already registered",
              type_name(), name);
}

Tensor Module::register_parameter(const std::string& name, Tensor value) {
  check_new_name(name);
  FLAME_CHECK(value.defined(), "{}: parameter '{}' is undefined", type_name(), name);
  Tensor leaf = value.is_leaf() ? value : value.detach();
  leaf.requires_grad_(true);
  parameters_.emplace_back(name, leaf);
  return leaf;
}

Tensor Module::register_buffer(const std::string& name, Tensor value) {
  check_new_name(name);
  FLAME_CHECK(value.defined(), "{}: buffer '{}' is undefined", type_name(), name);
  buffers_.emplace_back(name, value.detach());
  return buffers_.back().second;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name);
  FLAME_CHECK(module != nullptr, "{}: child module '{}' is null", type_name(), name);
  children_.emplace_back(name, std::move(module));
}

void Module::collect(const std::string& prefix, bool recurse, bool params, NamedTensors& out) const {
  for (const auto& [name, t] : params ? parameters_ : buffers_) out.emplace_back(prefix + name, t);
  if (!recurse) return;
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", true, params, out);
}

namespace {

/// `all` without the entries whose tensor appeared under an earlier name (a tied parameter, a child
/// module added twice): the first name wins, as in PyTorch.
NamedTensors first_name_of_each(NamedTensors all) {
  std::unordered_set<const TensorImpl*> seen;
  NamedTensors out;
  for (auto& entry : all)
    if (seen.insert(entry.second.impl_ptr().get()).second) out.push_back(std::move(entry));
  return out;
}

}  // namespace

NamedTensors Module::named_parameters(bool recurse) const {
  NamedTensors out;
  collect("", recurse, true, out);
  return first_name_of_each(std::move(out));
}

NamedTensors Module::named_buffers(bool recurse) const {
  NamedTensors out;
  collect("", recurse, false, out);
  return first_name_of_each(std::move(out));
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::for_each_slot(const std::function<void(Tensor&, bool)>& fn) {
  for (auto& [name, t] : parameters_) fn(t, true);
  for (auto& [name, t] : buffers_) fn(t, false);
  for (auto& [name, child] : children_) child->for_each_slot(fn);
}

namespace {

/// Points every handle of `slot` at `moved`'s data (so layers, optimizers and hooks holding the
/// parameter keep working, as PyTorch's in-place .data swap), dropping a gradient that no longer fits.
void replace_data(Tensor& slot, const Tensor& moved) {
  TensorImpl& impl = *slot.impl_ptr();
  impl.storage = moved.storage();
  impl.shape = moved.shape();
  impl.strides = moved.strides();
  impl.offset = moved.offset();
  impl.dtype = moved.dtype();
  if (impl.autograd) impl.autograd->grad = Tensor();
}

}  // namespace

void Module::to(Device device) {
  autograd::NoGradGuard no_grad;
  for_each_slot([&](Tensor& slot, bool) {
    if (slot.device() != device) replace_data(slot, slot.to(device));
  });
}

void Module::to(DType dtype) {
  FLAME_CHECK(is_floating(dtype),
              "Module::to: {} is not a floating dtype; parameters and buffers convert to floating dtypes only (an "
              "integer cast would truncate the weights)",
              dtype_name(dtype));
  autograd::NoGradGuard no_grad;
  for_each_slot([&](Tensor& slot, bool) {
    if (slot.dtype() != dtype && is_floating(slot.dtype())) replace_data(slot, slot.to(dtype));
  });
}

void Module::zero_grad() {
  for (const Tensor& p : parameters()) p.set_grad(Tensor());
}

NamedTensors Module::state_dict() const {
  // Every name, a tied tensor's included (as PyTorch's state_dict): parameters, then buffers.
  NamedTensors out;
  collect("", true, true, out);
  collect("", true, false, out);
  return out;
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, t] : state) {
    FLAME_CHECK(given.emplace(name, &t).second, "load_state_dict: '{}' appears twice", name);
  }
  const NamedTensors own = state_dict();
  std::vector<std::pair<Tensor, const Tensor*>> copies;
  for (const auto& [name, target] : own) {
    auto it = given.find(name);
    if (it == given.end()) {
      FLAME_CHECK(!strict, "load_state_dict: '{}' is missing from the state dict", name);
      continue;
    }
    const Tensor& source = *it->second;
    FLAME_CHECK(source.shape() == target.shape(),
                "load_state_dict: '{}' has shape {} in the state dict but {} in "
                "the {}",
                name, shape_str(source.shape()), shape_str(target.shape()), type_name());
    FLAME_CHECK(source.dtype() == target.dtype(), "load_state_dict: '{}' is {} in the state dict but {} in the {}",
                name, dtype_name(source.dtype()), dtype_name(target.dtype()), type_name());
    copies.emplace_back(target, &source);
    given.erase(it);
  }
  if (strict && !given.empty())
    FLAME_FAIL("load_state_dict: unexpected '{}' in the state dict (the {} has no such parameter or buffer)",
               given.begin()->first, type_name());
  autograd::NoGradGuard no_grad;
  for (auto& [target, source] : copies) Tensor(target).copy_(*source);
}

Sequential::Sequential(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) push_back(std::move(m));
}

void Sequential::push_back(std::shared_ptr<Module> module) {
  register_module(std::to_string(named_children().size()), std::move(module));
}

Tensor Sequential::forward(const Tensor& input) {
  Tensor x = input;
  for (const auto& [name, child] : named_children()) x = child->forward(x);
  return x;
}

}  // namespace flame::nn
