// Module: the base of every layer and model. Holds named parameters, buffers and child modules,
// recursively, like PyTorch's nn.Module.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/ops.h"

namespace flame::nn {

/// Names and tensors in registration order ("0.weight", "encoder.bias", ...).
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// The module's computation on one input.
  virtual Tensor forward(const Tensor& input) = 0;
  /// Type name for messages, e.g. "Linear".
  virtual std::string type_name() const = 0;
  Tensor operator()(const Tensor& input) { return forward(input); }

  /// Parameters (leaves that require grad), this module's first, then each child's in order. A
  /// tensor registered under several names (tied weights, a child added twice) is listed once,
  /// under its first name, as in PyTorch: optimizers, gradient clipping and DDP see it once.
  std::vector<Tensor> parameters(bool recurse = true) const;
  NamedTensors named_parameters(bool recurse = true) const;
  /// Buffers: state that is saved but not trained (e.g. running statistics); listed once each, as
  /// parameters are.
  NamedTensors named_buffers(bool recurse = true) const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const { return children_; }

  /// Training mode (dropout active, ...) for this module and its children.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  /// Moves (or converts) every parameter and buffer in place: every handle to a parameter (a
  /// layer's member, an optimizer's list) sees the new data; gradients are cleared. An optimizer's
  /// state (moments, momentum) is not moved: do this before the optimizer's first step (a step
  /// after it raises, naming the state). to(DType) takes a floating dtype only.
  void to(Device device);
  void to(DType dtype);
  /// Clears every parameter's gradient (PyTorch's zero_grad(set_to_none=True)).
  void zero_grad();

  /// Parameters then buffers, by dotted name; a tied tensor under each of its names (as PyTorch).
  NamedTensors state_dict() const;
  /// Copies values in by name. Raises flame::Error naming the tensor for a missing or unexpected
  /// name (when strict), a shape or a dtype mismatch; nothing is changed unless every entry fits.
  void load_state_dict(const NamedTensors& state, bool strict = true);

 protected:
  /// Registers `value` as a parameter named `name` (made a leaf that requires grad); returns a
  /// handle to it that stays valid for the module's lifetime (to() swaps data in place).
  Tensor register_parameter(const std::string& name, Tensor value);
  Tensor register_buffer(const std::string& name, Tensor value);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, bool recurse, bool params, NamedTensors& out) const;
  /// Every parameter and buffer of this module and its children.
  void for_each_slot(const std::function<void(Tensor& slot, bool is_parameter)>& fn);

  NamedTensors parameters_;
  NamedTensors buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

/// Runs its children in order, each on the previous one's output. Children are named "0", "1", ...
class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::shared_ptr<Module>> modules);
  void push_back(std::shared_ptr<Module> module);
  size_t size() const { return named_children().size(); }
  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "Sequential"; }
};

}  // namespace flame::nn
