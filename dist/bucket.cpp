#include "dist/bucket.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <utility>

#include "core/autograd.h"

namespace flame::dist {

void check_bucket_options(const BucketOptions& options) {
  FLAME_CHECK(options.first_bucket_bytes > 0 && options.bucket_cap_bytes > 0,
              "DistributedDataParallel: bucket caps must be positive (first_bucket_bytes {}, bucket_cap_bytes {})",
              options.first_bucket_bytes, options.bucket_cap_bytes);
  FLAME_CHECK(!options.reduce_dtype || is_floating(*options.reduce_dtype),
              "DistributedDataParallel: reduce_dtype must be a floating dtype (bf16, f16, f32 or f64), got {}",
              dtype_name(*options.reduce_dtype));
}

std::string bucketing_problem(const nn::NamedTensors& params, Device device) {
  if (params.empty()) return "DistributedDataParallel: the module has no parameters to synchronise";
  for (const auto& [name, p] : params) {
    if (!(p.is_leaf() && p.requires_grad() && is_floating(p.dtype()) && p.is_contiguous()))
      return fmt::format(
          "DistributedDataParallel: parameter '{}' ({}) must be a contiguous floating-point leaf that requires grad",
          name, p.describe());
    if (p.device() != device)
      return fmt::format(
          "DistributedDataParallel: parameter '{}' is on {} but the communicator works on {}; every parameter must be "
          "on the communicator's device (call module->to(device) first)",
          name, p.device().str(), device.str());
  }
  return "";
}

std::vector<std::vector<size_t>> assign_buckets(const std::vector<Tensor>& params, const BucketOptions& options) {
  check_bucket_options(options);
  struct Open {
    size_t bucket;
    size_t bytes;
    size_t cap;
  };
  std::vector<std::vector<size_t>> buckets;
  std::map<std::pair<int, std::string>, Open> open;  // (dtype, device) -> the bucket being filled
  for (size_t k = params.size(); k-- > 0;) {
    const Tensor& p = params[k];
    const auto key = std::make_pair(static_cast<int>(p.dtype()), p.device().str());
    auto it = open.find(key);
    if (it != open.end() && it->second.bytes > 0 && it->second.bytes + p.nbytes() > it->second.cap) {
      open.erase(it);
      it = open.end();
    }
    if (it == open.end()) {
      const size_t cap = buckets.empty() ? options.first_bucket_bytes : options.bucket_cap_bytes;
      it = open.emplace(key, Open{buckets.size(), 0, cap}).first;
      buckets.emplace_back();
    }
    buckets[it->second.bucket].push_back(k);
    it->second.bytes += p.nbytes();
  }
  return buckets;
}

std::shared_ptr<Reducer> Reducer::make(nn::NamedTensors params, Communicator& communicator, BucketOptions options,
                                       UnusedParameters unused) {
  auto reducer = std::make_shared<Reducer>(std::move(params), communicator, options, unused);
  reducer->register_hooks();
  return reducer;
}

Reducer::Reducer(nn::NamedTensors params, Communicator& communicator, BucketOptions options, UnusedParameters unused)
    : params_(std::move(params)),
      communicator_(communicator),
      unused_(unused),
      last_bucket_high_priority_(options.last_bucket_high_priority),
      step_mean_(options.step_mean) {
  // Note [deferred mean]: slot keys of their own, so that the rounds of two DDPs on one communicator
  // (one backward through two wrapped modules, say) never share slots. The keys are local: each
  // rank's slots are its own buffers, allocated at the same collectives on every rank.
  static std::atomic<size_t> reducers{0};
  deferred_key_base_ = reducers.fetch_add(1) << 32;
  const std::string problem = bucketing_problem(params_, communicator_.device());
  FLAME_CHECK(problem.empty(), "{}", problem);
  std::vector<Tensor> tensors;
  for (const auto& [name, p] : params_) tensors.push_back(p);
  bucket_of_.resize(params_.size());
  slot_of_.resize(params_.size());
  param_ready_.assign(params_.size(), false);
  unused_since_check_.assign(params_.size(), 0);
  for (const std::vector<size_t>& members : assign_buckets(tensors, options)) {
    Bucket bucket;
    int64_t numel = 0;
    for (size_t k : members) numel += tensors[k].numel();
    const Tensor& first = tensors[members.front()];
    bucket.flat = zeros({numel}, TensorOptions(first.dtype(), first.device()));
    if (options.reduce_dtype && *options.reduce_dtype != first.dtype()) {
      if (options.step_mean != StepMean::Reduced && communicator_.defers_mean(bucket.flat, *options.reduce_dtype)) {
        bucket.converted_by_communicator = *options.reduce_dtype;
        bucket.mean_deferred = true;
      } else if (communicator_.reduces_as(bucket.flat, *options.reduce_dtype))
        bucket.converted_by_communicator = *options.reduce_dtype;
      else
        bucket.reduced = zeros({numel}, TensorOptions(*options.reduce_dtype, first.device()));
    }
    int64_t offset = 0;
    for (size_t k : members) {
      bucket_of_[k] = buckets_.size();
      slot_of_[k] = bucket.params.size();
      bucket.params.push_back(k);
      bucket.views.push_back(bucket.flat.narrow(0, offset, tensors[k].numel()).view(tensors[k].shape()));
      offset += tensors[k].numel();
    }
    bucket.pending = members.size();
    bucket.label = fmt::format("DDP bucket {}", buckets_.size());
    buckets_.push_back(std::move(bucket));
  }
}

Reducer::~Reducer() {
  if (launches_ == 0) return;
  try {
    communicator_.compute_wait();
  } catch (...) {  // a failed communicator: nothing more can be waited for, and a destructor must not throw
  }
}

void Reducer::register_hooks() {
  std::weak_ptr<Reducer> weak = weak_from_this();
  for (size_t k = 0; k < params_.size(); ++k) {
    params_[k].second.register_grad_ready_hook([weak, k](const Tensor&) {
      if (auto reducer = weak.lock()) reducer->on_grad_ready(k);
    });
  }
}

void Reducer::on_grad_ready(size_t param) {
  adopt_grad(param);
  if (sync_ == GradSync::AccumulateLocally) return;
  if (param_ready_[param]) {
    // Autograd has already added this gradient into the bucket view, possibly while the bucket is
    // reduced: this round's gradients are wrong from here on (Note [ddp buckets]).
    invalid_reason_ = "a parameter got a gradient twice in one reduction";
    FLAME_FAIL(
        "DistributedDataParallel: parameter '{}' got a gradient twice without synchronize_gradients() in between "
        "(two backwards, or one through two forwards, per reduction). This step's gradients are now invalid: call "
        "synchronize_gradients() (it finishes the reduction on every rank, then raises) and ddp.zero_grad() "
        "before the next backward. Call synchronize_gradients() after every backward outside no_sync() (before "
        "the optimizer step), or run accumulation steps inside no_sync()",
        params_[param].first);
  }
  mark_ready(param);
}

void Reducer::adopt_grad(size_t param) {
  const Tensor& p = params_[param].second;
  Tensor view = buckets_[bucket_of_[param]].views[slot_of_[param]];  // a handle: copy_ is non-const
  autograd::NoGradGuard no_grad;
  const Tensor grad = p.grad();
  if (grad.defined() && grad.is_same(view)) return;
  if (grad.defined()) {
    view.copy_(grad);
    p.set_grad(view);
  } else {
    view.zero_();
  }
}

void Reducer::mark_ready(size_t param) {
  param_ready_[param] = true;
  ++ready_params_;
  Bucket& bucket = buckets_[bucket_of_[param]];
  if (--bucket.pending == 0) {
    bucket.ready = true;
    launch_ready_buckets();
  }
}

void Reducer::launch_ready_buckets() {
  // Note [ddp buckets]: strictly in index order on every rank.
  autograd::NoGradGuard no_grad;
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].ready) {
    try {
      launch(next_launch_);
    } catch (const std::exception& e) {
      // The bucket stays ready and unlaunched: finish_round() issues it (Note [ddp buckets]). Raised in
      // a hook, the error also ends backward, so later gradients may be missing: the round is invalid.
      if (invalid_reason_.empty())
        invalid_reason_ = fmt::format("the all-reduce of '{}' could not be issued during backward ({})",
                                      buckets_[next_launch_].label, e.what());
      throw;
    }
    if (next_launch_ == 0) last_round_launches_.clear();
    last_round_launches_.push_back(next_launch_);
    ++launches_;
    ++next_launch_;
  }
}

void Reducer::launch(size_t index) {
  Bucket& bucket = buckets_[index];
  const OverlapPriority priority =  // Note [last bucket priority]
      last_bucket_high_priority_ && index + 1 == buckets_.size() ? OverlapPriority::High : OverlapPriority::Normal;
  if (bucket.mean_deferred) {
    bucket.deferred =
        communicator_.all_reduce_overlapped_deferred(bucket.flat, *bucket.converted_by_communicator, ReduceOp::Avg,
                                                     deferred_key_base_ + index, bucket.label, priority);
    bucket.collective = bucket.deferred.collective;
    bucket.mean_written = false;
  } else if (bucket.converted_by_communicator) {
    bucket.collective = communicator_.all_reduce_overlapped_as(bucket.flat, *bucket.converted_by_communicator,
                                                               ReduceOp::Avg, bucket.label, priority);
  } else {
    if (bucket.reduced.defined()) bucket.reduced.copy_(bucket.flat);
    const Tensor& wire = bucket.reduced.defined() ? bucket.reduced : bucket.flat;
    bucket.collective = communicator_.all_reduce_overlapped(wire, ReduceOp::Avg, bucket.label, priority);
  }
}

void Reducer::wait_for_bucket(size_t index) {
  FLAME_CHECK(index < buckets_.size(), "DistributedDataParallel: bucket {} does not exist ({} buckets)", index,
              buckets_.size());
  communicator_.compute_wait(buckets_[index].collective);
  write_back(buckets_[index]);
}

std::vector<GradientSlots> Reducer::wait_for_bucket_slots(size_t index) {
  FLAME_CHECK(index < buckets_.size(), "DistributedDataParallel: bucket {} does not exist ({} buckets)", index,
              buckets_.size());
  Bucket& bucket = buckets_[index];
  communicator_.compute_wait(bucket.collective);
  if (bucket.mean_written) {
    write_back(bucket);
    return {};
  }
  std::vector<GradientSlots> slots;
  int64_t offset = 0;
  for (const Tensor& view : bucket.views) {
    slots.push_back({bucket.deferred.slots.narrow(1, offset, view.numel()), bucket.deferred.scale,
                     step_mean_ == StepMean::InUpdate});
    offset += view.numel();
  }
  // mean_written stays false: under InUpdate the caller writes the mean into the .grad of every
  // parameter it updates (under InUpdateNoGrad into none), and should it raise instead, DDP's
  // step() has write_back() write them all.
  return slots;
}

void Reducer::wait_for_all_buckets() {
  communicator_.compute_wait();
  for (Bucket& bucket : buckets_) write_back(bucket);
}

void Reducer::write_back(Bucket& bucket) {
  if (bucket.mean_deferred && !bucket.mean_written) {
    communicator_.write_deferred_mean(bucket.deferred, bucket.flat);
    bucket.mean_written = true;
    return;
  }
  if (!bucket.reduced.defined()) return;
  autograd::NoGradGuard no_grad;
  bucket.flat.copy_(bucket.reduced);
}

void Reducer::finish(ComputeWaits waits) {
  // Invalid gradients: finish the round like any other (the collectives stay matched across ranks)
  // and wait for every bucket, since no optimizer step follows; then raise.
  finish_round(invalid_reason_.empty() ? waits : ComputeWaits::All);
  FLAME_CHECK(invalid_reason_.empty(),
              "DistributedDataParallel: the gradients are invalid since {}; call ddp.zero_grad() before the next "
              "backward (the optimizer must not step on them)",
              invalid_reason_);
}

void Reducer::finish_round(ComputeWaits waits) {
  std::vector<int32_t> used;  // [P], UnusedParameters::Ignore only: 1 where this rank produced a gradient
  if (unused_ == UnusedParameters::Ignore)
    for (size_t k = 0; k < params_.size(); ++k) used.push_back(param_ready_[k] ? 1 : 0);
  if (ready_params_ == 0) empty_round_since_check_ = true;  // no hook fired since the last reduction
  for (size_t k = 0; k < params_.size(); ++k) {
    if (param_ready_[k]) continue;
    adopt_grad(k);
    mark_ready(k);
    if (unused_ == UnusedParameters::Error) {
      // An invalid round is discarded (finish() raises until zero_grads()): what it missed is not
      // the module's doing, e.g. a backward that a failed all-reduce ended.
      if (invalid_reason_.empty()) unused_since_check_[k] = 1;
      // Every rank ends with the same .grad (the mean), so the replicas stay identical until the
      // check raises.
      params_[k].second.set_grad(buckets_[bucket_of_[k]].views[slot_of_[k]]);
    }
  }
  // Every bucket is ready now. One whose all-reduce could not be issued in a hook is still waiting
  // to be: issue it, in order, so that this rank's collectives match the others'.
  launch_ready_buckets();
  // The first round under Error checks for unused parameters, which may raise: wait for every
  // bucket then too, so that whoever catches the error finds the means in every .grad.
  const bool first_check = unused_ == UnusedParameters::Error && rounds_ == 0;
  if (waits == ComputeWaits::All || first_check) wait_for_all_buckets();
  reset_round();
  ++rounds_;
  if (unused_ == UnusedParameters::Error) {
    if (first_check) check_unused("in the first backward");
    return;
  }

  // UnusedParameters::Ignore: every rank must learn now which parameters no rank used.
  const Device device = params_.front().second.device();
  Tensor counts = from_vector(used, {static_cast<int64_t>(used.size())}, TensorOptions(DType::I32, device));
  communicator_.all_reduce(counts, ReduceOp::Sum, "DDP used-parameter counts");
  communicator_.synchronize();
  const std::vector<int32_t> global = counts.to_vector<int32_t>();  // [P]: ranks that used each
  for (size_t k = 0; k < params_.size(); ++k) {
    const Tensor& p = params_[k].second;
    if (used[k] == 0 && !p.grad().defined() && global[k] > 0) p.set_grad(buckets_[bucket_of_[k]].views[slot_of_[k]]);
  }
}

void Reducer::check_unused(const std::string& when) {
  // Under either policy: a collective here would not match the other ranks' bucket all-reduces.
  FLAME_CHECK(!round_in_progress(),
              "DistributedDataParallel: the unused-parameter check while a backward's reduction is unfinished; call "
              "synchronize_gradients() first");
  if (unused_ != UnusedParameters::Error) return;
  const Device device = params_.front().second.device();
  // [P + 1]: per parameter, 1 when this rank left it unused; last, 1 when a reduction found no
  // gradient from any backward on this rank.
  std::vector<int32_t> local = unused_since_check_;
  local.push_back(empty_round_since_check_ ? 1 : 0);
  Tensor flags = from_vector(local, {static_cast<int64_t>(local.size())}, TensorOptions(DType::I32, device));
  communicator_.all_reduce(flags, ReduceOp::Sum, "DDP unused-parameter check");
  communicator_.synchronize();
  const std::vector<int32_t> ranks_without = flags.to_vector<int32_t>();  // [P]: ranks that left it unused
  const std::vector<int32_t> mine = unused_since_check_;
  std::fill(unused_since_check_.begin(), unused_since_check_.end(), 0);
  empty_round_since_check_ = false;
  const int world = communicator_.group().world_size;
  FLAME_CHECK(ranks_without.back() < world,
              "DistributedDataParallel: a reduction {} found no gradient from any backward on any rank: "
              "synchronize_gradients() or step() was called twice for one backward (step() synchronizes by itself), "
              "or every backward since the last reduction ran inside no_sync() (run the last micro-step's backward "
              "outside it)",
              when);
  for (size_t k = 0; k < params_.size(); ++k) {
    FLAME_CHECK(ranks_without[k] == 0,
                "DistributedDataParallel: parameter '{}' received no gradient on {} of {} ranks{} {}. Likely causes: "
                "it is not used by forward() for every input, its output does not reach the loss, a backward raised "
                "before reaching it, or the gradients of one backward were reduced twice (synchronize_gradients() "
                "or step() called twice). Make every "
                "parameter take part in the loss, or construct DDP with DdpOptions::unused_parameters = "
                "UnusedParameters::Ignore",
                params_[k].first, ranks_without[k], world, mine[k] ? " (including this one)" : "", when);
  }
}

void Reducer::zero_grads() {
  FLAME_CHECK(!round_in_progress(),
              "DistributedDataParallel: zero_grad() while a backward's reduction is unfinished; call "
              "synchronize_gradients() first");
  autograd::NoGradGuard no_grad;
  invalid_reason_.clear();
  for (Bucket& bucket : buckets_) {
    bucket.flat.zero_();
    for (size_t k = 0; k < bucket.params.size(); ++k) params_[bucket.params[k]].second.set_grad(bucket.views[k]);
  }
}

void Reducer::reset_round() {
  for (Bucket& bucket : buckets_) {
    bucket.pending = bucket.params.size();
    bucket.ready = false;
  }
  param_ready_.assign(params_.size(), false);
  ready_params_ = 0;
  next_launch_ = 0;
}

}  // namespace flame::dist
