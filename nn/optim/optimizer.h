// Optimizer: the base of SGD, Adam and AdamW. Holds the parameters, the learning rate, the step
// count and per-parameter state, and saves / restores that state by name.
//
// Note [optimizer state]
// Parameter i is the i-th tensor of the list given to the constructor. Its state is created on
// the first step() in which it has a gradient (parameters without a gradient are skipped, as in
// torch.optim) and holds the number of updates applied to it plus the optimizer's state tensors
// (state_keys(): "momentum_buffer" for SGD with momentum, "exp_avg" and "exp_avg_sq" for Adam),
// each with the parameter's shape, dtype and device. state_dict() names them
//   "step"                 i64 0-d: the number of step() calls
//   "state.<i>.step"       i64 0-d: the updates applied to parameter i (Adam's bias correction)
//   "state.<i>.<key>"      the state tensor itself (a live handle, not a copy)
// and has no "state.<i>." entries for a parameter that never had state. Step counts are host
// integers, so a step never reads anything back from the device.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/fused.h"
#include "nn/module.h"

namespace flame::optim {

using nn::NamedTensors;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// Applies one update to every parameter that has a gradient, under NoGradGuard, with in-place
  /// ops on the parameters and state on their own devices (no host synchronisation).
  void step();
  /// The same step as step() (same updates, same results bit for bit: every element's update
  /// depends only on its own parameter, gradient and state), issued group by group: for each group
  /// g of `groups` in order, before_group(g) runs and then the updates of g's parameters are
  /// issued; parameters in no group form a last group, index groups.size() (before_group runs for
  /// it only when one of them has a gradient). For starting each group's update as soon as its
  /// gradients are ready, as DDP's step() does per bucket. Raises naming the tensor for a group
  /// member that is not a parameter of this optimizer, or one listed twice.
  void step_in_groups(const std::vector<std::vector<Tensor>>& groups, const std::function<void(size_t)>& before_group);
  /// Per group, the GradientSlots of its members (in the group's order), or none (empty).
  using GroupGradientSlots = std::function<std::vector<GradientSlots>(size_t group)>;
  /// step_in_groups where, after before_group(g), slots_of(g) may give group g's gradients as
  /// every rank's bf16 values (Note [gradient slots] in core/fused.h): the update then computes
  /// each such member's mean, writes it into its .grad (GradientSlots::write_mean) and applies it,
  /// as DDP's step() does with DdpOptions::step_mean. Only where takes_gradient_slots(); elsewhere slots raise flame::Error.
  /// A member without a gradient is skipped as usual, its slots unread. An optimizer that cannot take
  /// slots raises before anything changes; a slots list whose length is not its group's raises when
  /// that group is reached, after the groups before it were updated.
  void step_in_groups(const std::vector<std::vector<Tensor>>& groups, const std::function<void(size_t)>& before_group,
                      const GroupGradientSlots& slots_of);
  /// Whether updates can read GradientSlots (Adam and AdamW: their fused kernel computes the mean).
  virtual bool takes_gradient_slots() const { return false; }
  /// Clears every parameter's gradient (PyTorch's zero_grad(set_to_none=True)).
  void zero_grad();

  double lr() const { return lr_; }
  /// Sets the learning rate used by the next steps (a schedule calls this before each step).
  void set_lr(double lr);
  /// The number of step() calls so far (restored by load_state_dict).
  int64_t step_count() const { return step_count_; }
  const std::vector<Tensor>& params() const { return params_; }
  /// "SGD", "Adam", "AdamW".
  const std::string& type_name() const { return type_name_; }

  /// The step count and per-parameter state, named as in Note [optimizer state].
  NamedTensors state_dict() const;
  /// Replaces the step count and all per-parameter state with copies of `state` (moved to each
  /// parameter's device). Raises flame::Error naming the entry for an unknown or malformed name,
  /// a parameter index out of range, a missing entry, or a shape or dtype that differs from the
  /// parameter's; nothing is changed unless every entry fits.
  void load_state_dict(const NamedTensors& state);

 protected:
  /// Per-parameter state (Note [optimizer state]).
  struct ParamState {
    int64_t step = 0;                       // updates applied, counting the one in progress
    std::map<std::string, Tensor> tensors;  // state_keys() -> tensor shaped like the parameter
  };

  /// Checks the parameters (a non-empty list of distinct floating-point leaf tensors) and lr.
  Optimizer(std::vector<Tensor> params, double lr, std::string type_name);

  /// Updates `param` in place from `grad` (grad mode is off). `state.step` already counts this
  /// update; on the first one (state.step == 1) `state.tensors` is empty and must be filled.
  virtual void update(Tensor& param, const Tensor& grad, ParamState& state) = 0;

  /// One parameter due for an update in this step (it has a gradient).
  struct PendingUpdate {
    Tensor* param;
    Tensor grad;
    ParamState* state;    // state->step already counts this update
    GradientSlots slots;  // defined slots: the gradient is their mean, written into grad first
  };
  /// Applies every update of one step() (in parameter order, grad mode off). The default calls
  /// update() on each (and raises for an update with slots); an optimizer that updates many
  /// parameters at once (Adam's fused kernel) overrides it.
  virtual void update_all(const std::vector<PendingUpdate>& updates);
  /// The names of the state tensors every parameter with state holds (may be empty).
  virtual std::vector<std::string> state_keys() const = 0;

 private:
  /// Gives group members' updates their slots (members: the group's parameter indices, in order;
  /// update_of: per parameter, its index in `updates`, SIZE_MAX without a gradient).
  void attach_slots(const std::vector<size_t>& members, std::vector<GradientSlots> slots,
                    const std::vector<size_t>& update_of, std::vector<PendingUpdate>& updates) const;

  std::vector<Tensor> params_;
  std::vector<ParamState> state_;  // one per parameter; step == 0 means no state yet
  double lr_;
  int64_t step_count_ = 0;
  std::string type_name_;
};

/// Raises flame::Error (naming `op` and the option) unless lo <= value <= hi (and value is finite).
void check_option(const char* op, const char* option, double value, double lo, double hi);

}  // namespace flame::optim
