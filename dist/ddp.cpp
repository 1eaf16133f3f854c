#include "dist/ddp.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>
#include <bit>
#include <string>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "dist/checksum.h"

namespace flame::dist {
namespace {

/// What this rank alone can see wrong with the module for DDP on `device` (empty when nothing):
/// a trained parameter the reducer cannot bucket (bucketing_problem), or a frozen parameter or a
/// buffer that the broadcast cannot take. Every parameter frozen, or none at all, is left to the
/// checks after the broadcast, which every rank reaches alike (the signatures agree on it).
std::string local_problem(const nn::NamedTensors& params, const nn::NamedTensors& buffers, Device device) {
  nn::NamedTensors trained;
  for (const auto& entry : params) {
    if (entry.second.requires_grad()) trained.push_back(entry);
  }
  const std::string bucketing = trained.empty() ? "" : bucketing_problem(trained, device);
  if (!bucketing.empty()) return bucketing;
  for (const nn::NamedTensors* list : {&params, &buffers}) {
    for (const auto& [name, t] : *list) {
      if (t.device() != device)
        return fmt::format(
            "DistributedDataParallel: {} '{}' is on {} but the communicator works on {}; move the module "
            "there first (module->to(device))",
            list == &params ? "parameter" : "buffer", name, t.device().str(), device.str());
    }
  }
  return "";
}

/// Collective: every rank learns whether any rank found a local problem, and raises if so (this
/// rank with its own message, the others naming the ranks), before any collective that a rank with
/// a problem could not join.
void agree_on_local_problems(const std::string& problem, Communicator& communicator) {
  const Device device = communicator.device();
  const int world = communicator.group().world_size;
  Tensor mine = full({1}, problem.empty() ? 0.0 : 1.0, TensorOptions(DType::I32, device));
  Tensor all = zeros({world}, TensorOptions(DType::I32, device));
  communicator.all_gather(mine, all, "DDP module check");
  communicator.synchronize();
  FLAME_CHECK(problem.empty(), "{} (on rank {}; every rank raises)", problem, communicator.group().rank);
  const std::vector<int32_t> flags = all.to_vector<int32_t>();  // [W]: 1 where that rank found a problem
  std::vector<int> ranks;
  for (int r = 0; r < world; ++r) {
    if (flags[r] != 0) ranks.push_back(r);
  }
  FLAME_CHECK(ranks.empty(),
              "DistributedDataParallel: rank(s) {} cannot wrap the module (each names the parameter in its own error); "
              "every rank raises here so that none waits for them",
              fmt::join(ranks, ", "));
}

/// One DdpOptions field as agree_on_options() compares it: its name, its value as an int64 (a double's
/// bits, -1 for an unset dtype) and how to print that value.
struct OptionField {
  const char* name;
  int64_t value;
  std::string (*describe)(int64_t);
};

std::string describe_number(int64_t value) { return std::to_string(value); }
std::string describe_double(int64_t bits) { return fmt::format("{}", std::bit_cast<double>(bits)); }
std::string describe_bool(int64_t value) { return value != 0 ? "true" : "false"; }
std::string describe_dtype(int64_t value) {
  return value < 0 ? "unset" : std::string(dtype_name(static_cast<DType>(value)));
}
std::string describe_unused(int64_t value) {
  return static_cast<UnusedParameters>(value) == UnusedParameters::Error ? "Error" : "Ignore";
}
std::string describe_step_mean(int64_t value) {
  constexpr std::array<const char*, 3> kNames{"Reduced", "InUpdate", "InUpdateNoGrad"};
  return value >= 0 && value < 3 ? kNames[static_cast<size_t>(value)] : std::to_string(value);
}

/// Collective: raises on every rank when the ranks' options differ in a field that decides which
/// collectives DDP issues, and in which order, or when it raises (the bucket caps, the reduce dtype,
/// the step mean, the unused-parameter policy, the checksum's cadence and tolerance), or in the last
/// bucket's priority; names the first such field and the ranks' values. Different options would
/// otherwise mismatch collectives: a truncation error, a false unused-parameter error, or a hang.
void agree_on_options(const DdpOptions& o, Communicator& communicator) {
  const std::vector<OptionField> fields{
      {"first_bucket_bytes", static_cast<int64_t>(o.first_bucket_bytes), describe_number},
      {"bucket_cap_bytes", static_cast<int64_t>(o.bucket_cap_bytes), describe_number},
      {"reduce_dtype", o.reduce_dtype ? static_cast<int64_t>(*o.reduce_dtype) : -1, describe_dtype},
      {"step_mean", static_cast<int64_t>(o.step_mean), describe_step_mean},
      {"unused_parameters", static_cast<int64_t>(o.unused_parameters), describe_unused},
      {"check_every_n_steps", o.check_every_n_steps, describe_number},
      {"checksum_rtol", std::bit_cast<int64_t>(o.checksum_rtol), describe_double},
      {"last_bucket_high_priority", o.last_bucket_high_priority ? 1 : 0, describe_bool},
  };
  const Device device = communicator.device();
  const int world = communicator.group().world_size;
  const auto n = static_cast<int64_t>(fields.size());
  std::vector<int64_t> values;
  for (const OptionField& field : fields) values.push_back(field.value);
  const Tensor mine = from_vector(values, {n}, TensorOptions(DType::I64, device));
  Tensor all = zeros({world * n}, TensorOptions(DType::I64, device));
  communicator.all_gather(mine, all, "DDP options check");
  communicator.synchronize();
  const std::vector<int64_t> gathered = all.to_vector<int64_t>();  // [W * n]: rank r's fields at r * n
  for (size_t f = 0; f < fields.size(); ++f) {
    for (int r = 1; r < world; ++r) {
      const int64_t theirs = gathered[static_cast<size_t>(r) * fields.size() + f];
      FLAME_CHECK(theirs == gathered[f],
                  "DistributedDataParallel: DdpOptions::{} is {} on rank 0 but {} on rank {}; every rank must wrap "
                  "its module with the same options (every rank raises)",
                  fields[f].name, fields[f].describe(gathered[f]), fields[f].describe(theirs), r);
    }
  }
}

}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<nn::Module> module, Communicator& communicator,
                                                 DdpOptions options)
    : module_(std::move(module)), communicator_(communicator), options_(options) {
  FLAME_CHECK(module_ != nullptr, "DistributedDataParallel: the module is null");
  FLAME_CHECK(options_.check_every_n_steps >= 0 && options_.checksum_rtol >= 0,
              "DistributedDataParallel: check_every_n_steps ({}) and checksum_rtol ({}) must be >= 0",
              options_.check_every_n_steps, options_.checksum_rtol);
  const BucketOptions bucket_options{options_.first_bucket_bytes, options_.bucket_cap_bytes, options_.reduce_dtype,
                                     options_.last_bucket_high_priority, options_.step_mean};
  check_bucket_options(bucket_options);  // before any collective changes the module
  const nn::NamedTensors params = module_->named_parameters();
  const nn::NamedTensors buffers = module_->named_buffers();
  agree_on_local_problems(local_problem(params, buffers, communicator_.device()), communicator_);
  agree_on_options(options_, communicator_);
  // The checks' own tensors go to the communicator's device; a rank without buffers still takes
  // part in the buffer check, so that the ranks' collectives stay matched.
  const Device device = communicator_.device();
  verify_same_signatures(params, communicator_, device, "parameter");
  verify_same_signatures(buffers, communicator_, device, "buffer");
  {
    autograd::NoGradGuard no_grad;
    for (const auto& [name, p] : params) communicator_.broadcast(p, 0, "DDP parameter " + name);
    for (const auto& [name, b] : buffers) communicator_.broadcast(b, 0, "DDP buffer " + name);
  }
  // Frozen parameters (requires_grad false) are broadcast and checked like the others but get no
  // bucket: they have no gradient to reduce.
  nn::NamedTensors trained;
  for (const auto& entry : params) {
    if (entry.second.requires_grad()) trained.push_back(entry);
    trained_.push_back(entry.second.requires_grad());
  }
  params_ = params;
  FLAME_CHECK(!trained.empty() || params.empty(),
              "DistributedDataParallel: every parameter of the module is frozen (requires_grad false); there are "
              "no gradients to synchronise");
  reducer_ = Reducer::make(trained, communicator_, bucket_options, options_.unused_parameters);
  for (const Bucket& bucket : reducer_->buckets()) {
    std::vector<Tensor>& members = bucket_params_.emplace_back();
    for (size_t k : bucket.params) members.push_back(reducer_->params()[k].second);
  }
  communicator_.synchronize();
}

Tensor DistributedDataParallel::forward(const Tensor& input) {
  FLAME_CHECK(!reducer_->round_in_progress(),
              "DistributedDataParallel: forward() while the previous backward's gradients are still being "
              "reduced; call synchronize_gradients() after backward (before the optimizer step)");
  return module_->forward(input);
}

void DistributedDataParallel::check_trained_set_unchanged() const {
  for (size_t k = 0; k < params_.size(); ++k) {
    const bool now = params_[k].second.requires_grad();
    FLAME_CHECK(now == trained_[k],
                "DistributedDataParallel: parameter '{}' was {} after DDP was constructed (requires_grad is now {}). "
                "DDP reduces the gradients of the parameters that required grad at construction only; construct a new "
                "DistributedDataParallel after changing which parameters train",
                params_[k].first, now ? "unfrozen" : "frozen", now);
  }
}

void DistributedDataParallel::synchronize_gradients() {
  check_trained_set_unchanged();
  if (reducer_->grad_sync() == GradSync::AccumulateLocally) return;
  reducer_->finish();
}

void DistributedDataParallel::step(optim::Optimizer& optimizer) {
  FLAME_CHECK(reducer_->grad_sync() == GradSync::Reduce,
              "DistributedDataParallel: step() inside no_sync(): the gradients are not reduced, so the replicas would "
              "drift apart. End the no_sync() block before the last micro-step's backward, or call optimizer.step() "
              "only after a reducing backward");
  check_trained_set_unchanged();
  reducer_->finish(Reducer::ComputeWaits::PerBucket);
  try {
    if (!optimizer.takes_gradient_slots()) {
      optimizer.step_in_groups(bucket_params_, [&](size_t g) {
        if (g < bucket_params_.size()) {
          reducer_->wait_for_bucket(g);
        } else {
          communicator_.compute_wait();  // parameters outside the module: after every bucket
        }
      });
    } else {
      // Deferred means (DdpOptions::step_mean) go to the update as slots.
      std::vector<GradientSlots> slots;  // of the group being updated
      optimizer.step_in_groups(
          bucket_params_,
          [&](size_t g) {
            if (g < bucket_params_.size()) {
              slots = reducer_->wait_for_bucket_slots(g);
            } else {
              slots.clear();
              communicator_.compute_wait();
            }
          },
          [&](size_t) { return std::move(slots); });
    }
  } catch (...) {
    // e.g. the optimizer does not hold the module's parameters: the buckets are still waited for,
    // so the next backward does not write them while they are reduced, and .grad holds the means.
    reducer_->wait_for_all_buckets();
    throw;
  }
  // StepMean::InUpdateNoGrad: a deferred bucket's .grad still holds this rank's own gradient, which
  // must not be read as the mean; every gradient goes, as after optimizer-in-backward.
  if (options_.step_mean == StepMean::InUpdateNoGrad)
    for (const std::vector<Tensor>& group : bucket_params_)
      for (const Tensor& p : group) p.set_grad(Tensor());
}

DistributedDataParallel::NoSyncGuard::NoSyncGuard(Reducer& reducer) : reducer_(reducer) {
  FLAME_CHECK(reducer_.grad_sync() == GradSync::Reduce, "DistributedDataParallel: no_sync() is already active");
  FLAME_CHECK(!reducer_.round_in_progress(),
              "DistributedDataParallel: no_sync() while a backward's reduction is unfinished; call "
              "synchronize_gradients() first");
  reducer_.set_grad_sync(GradSync::AccumulateLocally);
}

DistributedDataParallel::NoSyncGuard::~NoSyncGuard() { reducer_.set_grad_sync(GradSync::Reduce); }

DistributedDataParallel::NoSyncGuard DistributedDataParallel::no_sync() { return NoSyncGuard(*reducer_); }

void DistributedDataParallel::check_parameters_in_sync(const std::string& when) {
  reducer_->check_unused(fmt::format("in a backward before the check {}", when));
  check_in_sync(module_->named_parameters(), communicator_, when, options_.checksum_rtol);
}

void DistributedDataParallel::set_steps(int64_t steps) {
  FLAME_CHECK(steps >= 0, "DistributedDataParallel::set_steps: {} steps is negative", steps);
  steps_ = steps;
}

void DistributedDataParallel::after_step() {
  ++steps_;
  if (options_.check_every_n_steps > 0 && steps_ % options_.check_every_n_steps == 0)
    check_parameters_in_sync(fmt::format("after step {}", steps_));
}

}  // namespace flame::dist
