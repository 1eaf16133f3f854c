// The gradient reducer behind DistributedDataParallel: flat buckets, gradient-ready hooks, and
// all-reduces launched in bucket order during backward (DESIGN.md dist/, STYLE.md point 5).
//
// Note [ddp buckets]
// Parameters are assigned to buckets in reverse registration order (the order backward roughly
// produces their gradients), one open bucket per (dtype, device); a bucket is closed when the next
// parameter would take it past its cap: first_bucket_bytes for the first bucket created,
// bucket_cap_bytes for every later one (a parameter larger than the cap gets a bucket of its own).
// Bucket indices follow creation order. Each bucket is one flat contiguous tensor
//   flat: [numel of its parameters, summed]   (the parameters' dtype, on their device)
// and each of its parameters owns a view of it, view(i) = flat[offset_i : offset_i + numel_i]
// shaped like the parameter.
//
// Gradient as bucket view. A parameter's gradient-ready hook (Note [autograd engine]) first makes
// sure the parameter's .grad is its bucket view: when .grad is some other tensor (the first
// backward, or any backward after zero_grad(set_to_none), where AccumulateGrad's .grad is the
// gradient itself or a fresh copy of it), the hook copies it into the view and calls set_grad(view). From then on
// autograd adds later gradients into the view in place, so accumulation under no_sync() happens in the bucket and the
// reduced result is already in .grad: there is no copy back after the all-reduce. DDP's zero_grad() zeroes the buckets
// and keeps the views as gradients (PyTorch's zero_grad(set_to_none=False) with gradient_as_bucket_view), so then even
// the first copy is skipped; the optimizer's zero_grad() (set_to_none) costs one copy per parameter per step.
//
// Reduction. Outside no_sync(), the hook then counts the parameter ready in its bucket. When a
// bucket's pending count reaches 0 it is marked ready, and every ready bucket from the lowest
// index not yet launched upwards is launched: communicator.all_reduce_overlapped(flat, Avg).
// So buckets are launched strictly in index order on every rank (if bucket 2 is ready before
// bucket 1, it waits for 1), and each rank issues the same collectives in the same order. With
// NCCL the communicator orders its stream after the compute stream (an event, no host sync), so
// the hook never blocks; with MPI the all-reduce runs in the hook.
// The average over ranks is the mean gradient; a .grad that already held a gradient
// (synchronised in an earlier step, so equal on every rank) keeps it: old + mean(new), as PyTorch.
//
// Finishing. A hook cannot know that backward has ended, so the user calls finish() (DDP's
// synchronize_gradients()) after backward. finish() launches the buckets still pending, in order,
// with a parameter that got no gradient on this rank contributing its current .grad (zeros when it
// has none), then makes the compute stream wait for the all-reduces (Communicator::compute_wait):
// the host never waits, and the optimizer step that follows on the compute stream reads the means.
// The all-reduces are "overlapped" ones: the compute stream does not wait for a bucket when it is
// launched, only at finish(), so the rest of backward runs while buckets are reduced.
//
// Unused parameters (a parameter some rank produced no gradient for in a backward):
// - UnusedParameters::Error (the default): finish() costs nothing extra. Each rank notes the
//   parameters it left without a gradient, gives them the bucket view as .grad (so every rank
//   applies the same mean and the replicas stay identical), and check_unused() -- collective, one
//   [P] i32 all-reduce and a host wait -- raises on every rank naming the first such parameter. It
//   runs at the end of the first finish() (a model that never uses a parameter fails at once) and
//   from DDP's check_parameters_in_sync() (every check_every_n_steps steps and on request).
// - UnusedParameters::Ignore: finish() all-reduces a [P] i32 "used" count and reads it back (a host
//   wait per step, the price of this option); a parameter some rank used gets the mean (its bucket
//   view) as .grad, one no rank used keeps no gradient.
// Because the collectives stay matched, a rank's missing gradient never leaves the others waiting.
//
// Errors. A parameter that gets a gradient twice in one round (two backwards per reduction) has
// had it added into its bucket view, possibly while the bucket is reduced, before its hook can
// raise: the round's gradients are invalid. So are they when a bucket's all-reduce cannot be issued
// in a hook (the communicator raises): the bucket stays ready and unlaunched, and the error ends
// backward, so later gradients may be missing. finish() then still completes the round, issuing
// every bucket not yet issued in order (the ranks' collectives stay matched), waits for every bucket
// and raises, and keeps raising until zero_grads(). Destroying the reducer orders the compute
// stream after every launched all-reduce.
//
// Reduced precision (BucketOptions::reduce_dtype, e.g. bf16 for f32 gradients, as PyTorch DDP's
// bf16_compress_hook): each bucket then also has `reduced`, a flat buffer of that dtype. At launch
// the bucket is converted into it on the compute stream and `reduced` is all-reduced instead of
// `flat` (half the bytes for bf16, so half of NCCL's time on the SMs it shares with backward);
// once that all-reduce is waited for (finish(All), or wait_for_bucket() under PerBucket), the
// mean is converted back into `flat`, so every .grad holds the mean rounded to reduce_dtype. The
// conversions are elementwise passes over the bucket on the compute stream; on the 2x H200 they
// cost about what the smaller all-reduce saves (docs/PERFORMANCE.md, ninth run). The first round
// under Error, whose check may raise, and a DDP step that raises wait for every bucket, so .grad
// holds the means whenever control returns.
// Where the communicator converts itself (Communicator::reduces_as(): the NCCL copy-engine
// all-reduce, f32 buckets sent as bf16, Note [bf16 on the wire]), the bucket has no `reduced`
// buffer: flat goes to all_reduce_overlapped_as(), which rounds, sends and writes the rounded mean
// back into flat on the communication stream, so nothing is converted on the compute stream.
//
// Note [last bucket priority]: the last bucket (highest index) is launched when backward's last
// gradient is ready, so its all-reduce runs beside the optimizer step and the next forward, never
// beside backward's GEMMs, and the optimizer's last updates wait for it. With
// BucketOptions::last_bucket_high_priority it is issued with OverlapPriority::High: the
// copy-engine all-reduce's rounding and sum kernels are then scheduled ahead of the optimizer's
// blocks instead of sharing the SMs with them. Measured on the 2x H200 (docs/PERFORMANCE.md,
// thirteenth run), the mlp's last bucket's sum kernel took 87 us beside the AdamW update at
// normal priority and 29 us with the whole communication stream at high priority; a whole
// high-priority stream also puts the earlier buckets' kernels ahead of backward's GEMMs, which
// cost 0.01 of scaling efficiency at batch 512. With only the last bucket at high priority
// (fourteenth run, bf16 gradients through the copy engines, calls 2 and 3): its sum kernel took 32 us
// instead of 61, and the mlp scaled 0.946-0.948 at batch 256 per rank against 0.918, 0.971-0.979
// at 512 against 0.973-0.980, 0.980-0.987 at 1024 against 0.986-0.988; so it is on by default.
// Every rank issues the same priorities (they depend on the bucket index only).
//
// Deferred means (BucketOptions::step_mean, Note [deferred mean] in dist/communicator.cpp): where
// the communicator defers_mean() for a bucket (f32 gradients with reduce_dtype bf16, on the NCCL
// copy engines or MPI), its all-reduce stops after the all-gather: Bucket::deferred holds every
// rank's bf16 values, and flat keeps this rank's gradient until the mean is written. DDP's step()
// hands each parameter's slots to the optimizer (wait_for_bucket_slots()), whose update computes
// the mean and applies it, writing it into .grad (the bucket view) under StepMean::InUpdate and
// not under InUpdateNoGrad; everything else (synchronize_gradients(), an optimizer that cannot
// take slots, a round that raises) has the communicator write the mean into flat when it waits
// for the bucket (write_back()). So .grad ends as the same bits as under StepMean::Reduced (on the
// copy engines; MPI's own sum order can change the last bf16 bit with more than 2 ranks). Under
// InUpdateNoGrad a deferred bucket's .grad would still hold this rank's own gradient after the
// update, so DDP's step() then leaves every parameter's .grad none (none can be read as a mean).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/fused.h"
#include "dist/communicator.h"
#include "nn/module.h"

namespace flame::dist {

/// What DDP does when a parameter gets no gradient in a backward on some rank.
enum class UnusedParameters {
  Error,   // synchronize_gradients() raises on every rank, naming the parameter
  Ignore,  // it contributes nothing; it keeps no gradient unless another rank produced one
};

/// Where DDP's step() takes each bucket's mean from, for a bucket whose mean the communicator can
/// defer (Communicator::defers_mean(): f32 gradients with reduce_dtype bf16 on the NCCL copy
/// engines, or on MPI); other buckets are all-reduced as under Reduced whatever is chosen.
enum class StepMean {
  Reduced,         // the all-reduce writes the mean into the bucket (.grad); the update reads it
  InUpdate,        // the all-reduce stops after the all-gather; Adam's update computes the mean,
                   // writes it into .grad and applies it: the same bits, one memory pass less
  InUpdateNoGrad,  // as InUpdate, but the mean is not written (one more memory pass less), and
                   // DDP's step() leaves every parameter's .grad none, as optimizer-in-backward
};

/// Whether gradient-ready hooks reduce (the default) or only accumulate locally (no_sync()).
enum class GradSync { Reduce, AccumulateLocally };

/// How parameters are packed into buckets (Note [ddp buckets]).
struct BucketOptions {
  size_t first_bucket_bytes = size_t{1} << 20;
  size_t bucket_cap_bytes = size_t{25} << 20;
  /// A floating dtype to all-reduce gradients in (DType::BF16 halves f32 traffic); unset, or the
  /// parameters' own dtype: their own dtype. Bucket caps still count the parameters' bytes.
  std::optional<DType> reduce_dtype;
  /// Note [last bucket priority]: the last bucket's all-reduce runs its own kernels at high
  /// priority (OverlapPriority::High).
  bool last_bucket_high_priority = true;
  /// Deferred means (see the notes above): where DDP's step() takes each mean from.
  StepMean step_mean = StepMean::Reduced;
};

/// One flat bucket: its tensor and the parameters it holds (indices into the reducer's list).
struct Bucket {
  Tensor flat;     // [sum of numel], the parameters' dtype and device
  Tensor reduced;  // [sum of numel] in BucketOptions::reduce_dtype, when the reducer converts;
                   // undefined when flat is all-reduced as is, or converted by the communicator
  /// Set when the communicator sends flat as this dtype itself (Communicator::reduces_as(): the
  /// copy-engine all-reduce with reduce_dtype bf16): no conversion on the compute stream.
  std::optional<DType> converted_by_communicator;
  /// Set when its mean is deferred (BucketOptions::step_mean not Reduced, and the communicator
  /// defers_mean()); `deferred` then holds the latest all-reduce's slots, and `mean_written` says
  /// whether flat already holds their mean.
  bool mean_deferred = false;
  DeferredMean deferred;
  bool mean_written = true;
  std::vector<size_t> params;  // in bucket order (reverse registration order)
  std::vector<Tensor> views;   // views[k]: flat's slice for params[k], shaped like it
  size_t pending = 0;          // parameters not yet ready in the current round
  bool ready = false;
  std::string label;        // "DDP bucket <index>", names its all-reduce in errors
  uint64_t collective = 0;  // the communicator's number for its latest all-reduce (compute_wait)
};

/// Raises flame::Error for a cap that is not positive or a reduce_dtype that is not floating.
void check_bucket_options(const BucketOptions& options);

/// Why the reducer cannot take `params` on `device` (the communicator's): empty, or a parameter
/// that is not a contiguous floating-point leaf requiring grad, or lives elsewhere; the message
/// names the first such parameter. Empty when they are fine. Local: DDP has every rank agree on it
/// before any other collective, so one rank's bad module raises on all of them at once.
std::string bucketing_problem(const nn::NamedTensors& params, Device device);

/// Assigns parameters to buckets (Note [ddp buckets]): returns, per bucket, the parameter indices
/// in bucket order. Pure function of the shapes, dtypes and devices, so identical on every rank.
std::vector<std::vector<size_t>> assign_buckets(const std::vector<Tensor>& params, const BucketOptions& options);

/// The reducer. Registers one gradient-ready hook per parameter; the hooks hold only a weak
/// reference, so they do nothing once the reducer is gone.
class Reducer : public std::enable_shared_from_this<Reducer> {
 public:
  /// Use make(); the parameters must be distinct contiguous leaves, in registration order.
  static std::shared_ptr<Reducer> make(nn::NamedTensors params, Communicator& communicator, BucketOptions options,
                                       UnusedParameters unused);
  Reducer(nn::NamedTensors params, Communicator& communicator, BucketOptions options, UnusedParameters unused);
  /// Orders the compute stream after every all-reduce launched (a backward that raised may have left
  /// some in flight), so the buckets are not freed while NCCL still uses them.
  ~Reducer();
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  /// See Note [ddp buckets]: launches what is pending, orders the compute stream after the
  /// all-reduces (all of them, or none with ComputeWaits::PerBucket: the caller then orders its
  /// work after each bucket with wait_for_bucket()) and starts a new round. Under Error, the first
  /// call also runs check_unused().
  enum class ComputeWaits { All, PerBucket };
  /// Raises (after finishing the round) while the gradients are invalid: a parameter got a
  /// gradient twice in one round, until zero_grads().
  void finish(ComputeWaits waits = ComputeWaits::All);
  /// Orders the compute stream's later work after bucket `index`'s latest all-reduce (and the
  /// buckets launched before it), without blocking the host. With a reduce_dtype it also converts
  /// the bucket's mean back into its gradients, so under PerBucket every bucket must be waited for.
  void wait_for_bucket(size_t index);
  /// As wait_for_bucket(index), but a deferred mean (BucketOptions::step_mean) is left to the
  /// caller: returns each of the bucket's parameters' slots (bucket order; the rows of
  /// Bucket::deferred at the parameter's offset), whose mean the caller applies, and writes into
  /// its .grad where GradientSlots::write_mean says so (StepMean::InUpdate; as AdamW's update does,
  /// core/fused.h Note [gradient slots]). Empty when the mean is not deferred or already in flat.
  std::vector<GradientSlots> wait_for_bucket_slots(size_t index);
  /// Orders the compute stream's later work after every bucket's latest all-reduce (with a
  /// reduce_dtype, converting every mean back), without blocking the host.
  void wait_for_all_buckets();
  /// Collective: raises on every rank (UnusedParameters::Error) when some rank left a parameter
  /// without a gradient in a finish() since the last check, naming it and `when`.
  void check_unused(const std::string& when);
  /// Zeroes every bucket and makes each parameter's .grad its (zero) bucket view, so the next
  /// backward accumulates straight into the buckets with no copy (Note [ddp buckets]).
  void zero_grads();
  /// True between the first reducing hook of a backward and finish().
  bool round_in_progress() const { return ready_params_ > 0; }

  void set_grad_sync(GradSync sync) { sync_ = sync; }
  GradSync grad_sync() const { return sync_; }

  const std::vector<Bucket>& buckets() const { return buckets_; }
  /// Bucket all-reduces launched since construction.
  uint64_t launches() const { return launches_; }
  /// Bucket indices in the order the latest round (backward) launched their all-reduces.
  const std::vector<size_t>& last_round_launches() const { return last_round_launches_; }
  const nn::NamedTensors& params() const { return params_; }

 private:
  void register_hooks();
  void on_grad_ready(size_t param);
  /// Makes the parameter's .grad its bucket view (copying a foreign gradient in, or zeroing the
  /// view when there is none).
  void adopt_grad(size_t param);
  void mark_ready(size_t param);
  /// Launches every ready bucket from next_launch_ on, in index order (Note [ddp buckets]).
  void launch_ready_buckets();
  /// Issues bucket `index`'s all-reduce (or its deferred part) on the communicator.
  void launch(size_t index);
  /// With a reduce_dtype: converts the bucket's reduced mean back into its gradients (flat), or has
  /// the communicator write a deferred mean there.
  void write_back(Bucket& bucket);
  void reset_round();
  void finish_round(ComputeWaits waits);

  nn::NamedTensors params_;
  Communicator& communicator_;
  UnusedParameters unused_;
  bool last_bucket_high_priority_;  // BucketOptions::last_bucket_high_priority
  StepMean step_mean_;              // BucketOptions::step_mean
  size_t deferred_key_base_ = 0;    // this reducer's slot keys: base + bucket index (Note [deferred mean])
  GradSync sync_ = GradSync::Reduce;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;            // per parameter
  std::vector<size_t> slot_of_;              // per parameter: its index within its bucket
  std::vector<bool> param_ready_;            // per parameter, this round
  std::vector<int32_t> unused_since_check_;  // per parameter: 1 when this rank left it without a gradient
  int64_t rounds_ = 0;                       // finish() calls so far
  bool empty_round_since_check_ = false;     // a finish() since the last check found no hook fired
  size_t ready_params_ = 0;
  size_t next_launch_ = 0;
  std::string invalid_reason_;               // why this round's gradients are invalid; "" when they are not;
                                             // cleared by zero_grads()
  uint64_t launches_ = 0;                    // all-reduces launched since construction
  std::vector<size_t> last_round_launches_;  // bucket indices, in launch order, of the latest round
};

}  // namespace flame::dist
