#include "nn/optim/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <utility>

#include "core/autograd.h"

namespace flame::optim {

void check_option(const char* op, const char* option, double value, double lo, double hi) {
  FLAME_CHECK(std::isfinite(value) && value >= lo && value <= hi, "{}: {} must be in [{}, {}], got {}", op, option, lo,
              hi, value);
}

Optimizer::Optimizer(std::vector<Tensor> params, double lr, std::string type_name)
    : params_(std::move(params)), state_(params_.size()), lr_(lr), type_name_(std::move(type_name)) {
  const char* op = type_name_.c_str();
  FLAME_CHECK(!params_.empty(), "{}: got an empty parameter list", op);
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    FLAME_CHECK(p.defined(), "{}: parameter {} is undefined", op, i);
    FLAME_CHECK(is_floating(p.dtype()), "{}: parameter {} is {}; only floating-point tensors can be optimized", op, i,
                p.describe());
    FLAME_CHECK(p.is_leaf(),
                "{}: parameter {} ({}) is not a leaf tensor; optimize the leaf, not a result computed "
                "from it",
                op, i, p.describe());
    for (size_t j = 0; j < i; ++j)
      FLAME_CHECK(!params_[j].is_same(p), "{}: parameters {} and {} are the same tensor; pass each parameter once", op,
                  j, i);
  }
  set_lr(lr);
}

void Optimizer::set_lr(double lr) {
  check_option(type_name_.c_str(), "lr", lr, 0.0, HUGE_VAL);
  lr_ = lr;
}

void Optimizer::step() {
  step_in_groups({}, [](size_t) {});
}

void Optimizer::step_in_groups(const std::vector<std::vector<Tensor>>& groups,
                               const std::function<void(size_t)>& before_group) {
  step_in_groups(groups, before_group, nullptr);
}

void Optimizer::step_in_groups(const std::vector<std::vector<Tensor>>& groups,
                               const std::function<void(size_t)>& before_group, const GroupGradientSlots& slots_of) {
  // Group of each parameter (groups.size(): none); checked before anything changes.
  std::vector<size_t> group_of(params_.size(), groups.size());
  std::vector<std::vector<size_t>> members(groups.size());  // per group, its parameters' indices in its order
  if (!groups.empty()) {
    std::unordered_map<const TensorImpl*, size_t> index_of;
    for (size_t i = 0; i < params_.size(); ++i) index_of.emplace(params_[i].impl_ptr().get(), i);
    for (size_t g = 0; g < groups.size(); ++g) {
      for (const Tensor& member : groups[g]) {
        const auto found = index_of.find(member.impl_ptr().get());
        FLAME_CHECK(found != index_of.end(), "{}.step_in_groups: group {} holds {}, which is not one of its parameters",
                    type_name_, g, member.describe());
        const size_t i = found->second;
        FLAME_CHECK(group_of[i] == groups.size(), "{}.step_in_groups: parameter {} ({}) is in groups {} and {}",
                    type_name_, i, member.describe(), group_of[i], g);
        group_of[i] = g;
        members[g].push_back(i);
      }
    }
  }
  // Nothing changes (step counts, state, parameters) unless every update fits.
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    const Tensor grad = p.grad();
    if (!grad.defined()) continue;
    FLAME_CHECK(grad.shape() == p.shape() && grad.dtype() == p.dtype() && grad.device() == p.device(),
                "{}: the gradient {} of parameter {} ({}) must have the parameter's shape, dtype and device",
                type_name_, grad.describe(), i, p.describe());
    for (const auto& [key, t] : state_[i].tensors) {
      FLAME_CHECK(t.shape() == p.shape() && t.dtype() == p.dtype() && t.device() == p.device(),
                  "{}: its state '{}' of parameter {} is {} but the parameter is now {}: the module was moved or "
                  "converted (to()) after the optimizer's first step. Move or convert the module first, then "
                  "create the optimizer",
                  type_name_, key, i, t.describe(), p.describe());
    }
  }
  FLAME_CHECK(!slots_of || takes_gradient_slots(),
              "{}.step_in_groups: {} cannot take gradients as slots (Adam and AdamW can)", type_name_, type_name_);
  autograd::NoGradGuard no_grad;
  ++step_count_;
  std::vector<std::vector<PendingUpdate>> updates(groups.size() + 1);  // per group, in parameter order
  std::vector<size_t> update_of(params_.size(), SIZE_MAX);              // index into its group's updates
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor grad = params_[i].grad();
    if (!grad.defined()) continue;
    ++state_[i].step;
    update_of[i] = updates[group_of[i]].size();
    updates[group_of[i]].push_back({&params_[i], std::move(grad), &state_[i], {}});
  }
  for (size_t g = 0; g <= groups.size(); ++g) {
    if (g == groups.size() && updates[g].empty()) break;
    before_group(g);
    if (slots_of && g < groups.size()) attach_slots(members[g], slots_of(g), update_of, updates[g]);
    if (!updates[g].empty()) update_all(updates[g]);
  }
}

void Optimizer::attach_slots(const std::vector<size_t>& members, std::vector<GradientSlots> slots,
                             const std::vector<size_t>& update_of, std::vector<PendingUpdate>& updates) const {
  if (slots.empty()) return;
  FLAME_CHECK(slots.size() == members.size(), "{}.step_in_groups: {} gradient slots for a group of {} parameters",
              type_name_, slots.size(), members.size());
  for (size_t k = 0; k < members.size(); ++k) {
    const size_t u = update_of[members[k]];
    if (u != SIZE_MAX) updates[u].slots = std::move(slots[k]);  // no gradient: skipped, slots unread
  }
}

void Optimizer::update_all(const std::vector<PendingUpdate>& updates) {
  for (const PendingUpdate& u : updates) {
    FLAME_CHECK(!u.slots.slots.defined(), "{}: cannot take a gradient as slots (Adam and AdamW can)", type_name_);
    update(*u.param, u.grad, *u.state);
  }
}

void Optimizer::zero_grad() {
  for (const Tensor& p : params_) p.set_grad(Tensor());
}

namespace {

Tensor host_scalar(int64_t value) { return from_vector<int64_t>({value}, {}, kI64); }

/// A step count stored as a one-element integer tensor.
int64_t read_count(const std::string& op, const std::string& name, const Tensor& t) {
  FLAME_CHECK(t.numel() == 1 && is_integral(t.dtype()),
              "{}.load_state_dict: '{}' must be a one-element integer "
              "tensor, got {}",
              op, name, t.describe());
  const double value = t.item();
  FLAME_CHECK(value >= 0, "{}.load_state_dict: '{}' is negative ({})", op, name, value);
  return static_cast<int64_t>(value);
}

/// "state.<i>.<key>" -> (i, key); nullopt when the name has another form.
std::optional<std::pair<size_t, std::string>> parse_state_name(const std::string& name) {
  const std::string prefix = "state.";
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size() || dot + 1 == name.size()) return std::nullopt;
  const std::string digits = name.substr(prefix.size(), dot - prefix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }) || digits.size() > 9)
    return std::nullopt;
  return std::pair{static_cast<size_t>(std::stoul(digits)), name.substr(dot + 1)};
}

/// "'step', 'exp_avg', 'exp_avg_sq'" for messages.
std::string describe_keys(const std::vector<std::string>& keys) {
  std::string out = "'step'";
  for (const std::string& key : keys) out += ", '" + key + "'";
  return out;
}

}  // namespace

NamedTensors Optimizer::state_dict() const {
  NamedTensors out;
  out.emplace_back("step", host_scalar(step_count_));
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamState& state = state_[i];
    if (state.step == 0) continue;
    const std::string prefix = "state." + std::to_string(i) + ".";
    out.emplace_back(prefix + "step", host_scalar(state.step));
    for (const auto& [key, t] : state.tensors) out.emplace_back(prefix + key, t);
  }
  return out;
}

void Optimizer::load_state_dict(const NamedTensors& state) {
  const std::string& op = type_name_;
  const std::vector<std::string> keys = state_keys();
  std::optional<int64_t> step_count;
  std::vector<std::map<std::string, const Tensor*>> given(params_.size());
  for (const auto& [name, t] : state) {
    FLAME_CHECK(t.defined(), "{}.load_state_dict: '{}' is undefined", op, name);
    if (name == "step") {
      FLAME_CHECK(!step_count, "{}.load_state_dict: 'step' appears twice", op);
      step_count = read_count(op, name, t);
      continue;
    }
    const auto parsed = parse_state_name(name);
    FLAME_CHECK(parsed.has_value(),
                "{}.load_state_dict: unexpected entry '{}' (expected 'step' or "
                "'state.<parameter index>.<key>')",
                op, name);
    const auto& [index, key] = *parsed;
    FLAME_CHECK(index < params_.size(),
                "{}.load_state_dict: '{}' refers to parameter {}, but this optimizer has {} "
                "parameters",
                op, name, index, params_.size());
    FLAME_CHECK(key == "step" || std::find(keys.begin(), keys.end(), key) != keys.end(),
                "{}.load_state_dict: unexpected entry '{}' ({} with these options keeps {} per parameter)", op, name,
                op, describe_keys(keys));
    FLAME_CHECK(given[index].emplace(key, &t).second, "{}.load_state_dict: '{}' appears twice", op, name);
  }
  FLAME_CHECK(step_count.has_value(), "{}.load_state_dict: the state dict has no 'step' entry", op);

  std::vector<ParamState> loaded(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    if (given[i].empty()) continue;
    const std::string prefix = "state." + std::to_string(i) + ".";
    const Tensor& param = params_[i];
    auto step_it = given[i].find("step");
    FLAME_CHECK(step_it != given[i].end(), "{}.load_state_dict: '{}step' is missing (parameter {} has other state)", op,
                prefix, i);
    loaded[i].step = read_count(op, prefix + "step", *step_it->second);
    FLAME_CHECK(loaded[i].step > 0, "{}.load_state_dict: '{}step' is 0 but parameter {} has state", op, prefix, i);
    for (const std::string& key : keys) {
      auto it = given[i].find(key);
      FLAME_CHECK(it != given[i].end(), "{}.load_state_dict: '{}{}' is missing", op, prefix, key);
      const Tensor& source = *it->second;
      FLAME_CHECK(source.shape() == param.shape(),
                  "{}.load_state_dict: '{}{}' has shape {} but parameter {} has "
                  "shape {}",
                  op, prefix, key, shape_str(source.shape()), i, shape_str(param.shape()));
      FLAME_CHECK(source.dtype() == param.dtype(), "{}.load_state_dict: '{}{}' is {} but parameter {} is {}", op,
                  prefix, key, dtype_name(source.dtype()), i, dtype_name(param.dtype()));
      loaded[i].tensors.emplace(key, Tensor());
    }
  }

  autograd::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto& [key, slot] : loaded[i].tensors) {
      const Tensor& param = params_[i];
      slot = Tensor::empty(param.shape(), TensorOptions(param.dtype(), param.device()));
      slot.copy_(*given[i].at(key));
    }
  }
  state_ = std::move(loaded);
  step_count_ = *step_count;
}

}  // namespace flame::optim
