// DistributedDataParallel: data-parallel training of one Module replicated on every rank
// (DESIGN.md dist/; the reducer is in dist/bucket.h, Note [ddp buckets]).
//
// Usage, per rank:
//   auto comm = make_communicator(ProcessGroup::init(), device);
//   DistributedDataParallel ddp(model, *comm);          // broadcasts rank 0's parameters
//   AdamW opt(ddp.parameters());
//   for (...) {
//     ddp.zero_grad();                                  // or opt.zero_grad()
//     Tensor loss = loss_fn(ddp.forward(x_local), y_local);
//     loss.backward();                                  // buckets are all-reduced as they fill
//     ddp.synchronize_gradients();                      // .grad = mean over ranks
//     opt.step();                                       // or both at once: ddp.step(opt)
//     ddp.after_step();                                 // periodic desynchronisation check
//   }
// Gradient accumulation: run the first micro-steps' backward inside `auto guard = ddp.no_sync();`
// and the last one outside it; that backward reduces the accumulated sum.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dist/bucket.h"
#include "dist/communicator.h"
#include "nn/module.h"
#include "nn/optim/optimizer.h"

namespace flame::dist {

struct DdpOptions {
  /// Cap of the first bucket (small, so the first all-reduce starts early in backward).
  size_t first_bucket_bytes = size_t{1} << 20;
  /// Cap of every later bucket.
  size_t bucket_cap_bytes = size_t{25} << 20;
  UnusedParameters unused_parameters = UnusedParameters::Error;
  /// after_step() runs check_parameters_in_sync() every this many steps (0: never).
  int64_t check_every_n_steps = 0;
  /// Relative tolerance of the checksum comparison (0: bitwise-equal checksums, as identical
  /// updates give).
  double checksum_rtol = 0.0;
  /// All-reduce the gradients in this floating dtype instead of the parameters' own: with NCCL,
  /// DType::BF16 halves the bytes of f32 gradients (as PyTorch DDP's bf16_compress_hook), and every
  /// rank gets the same mean rounded to bf16 (Note [ddp buckets]). It costs a conversion each way
  /// per step and a buffer of that dtype beside each bucket (half the gradients' memory for bf16).
  /// The MPI backend reduces bf16 through an f32 copy, so there it saves nothing. F16 can overflow
  /// to inf where bf16 cannot. With the copy-engine all-reduce (CommunicatorOptions::
  /// overlap_all_reduce) the communicator converts large f32 buckets to bf16 itself, on its own
  /// stream, and keeps no bf16 buffer beside them (Communicator::reduces_as). Unset: the
  /// parameters' dtype.
  std::optional<DType> reduce_dtype;
  /// The last bucket's all-reduce runs its own kernels at the device's highest priority, ahead of
  /// the optimizer's (Note [last bucket priority] in dist/bucket.h). Only the NCCL copy-engine
  /// all-reduce (CommunicatorOptions::overlap_all_reduce) has such kernels; elsewhere it changes
  /// nothing.
  bool last_bucket_high_priority = true;
  /// With reduce_dtype bf16 for f32 parameters, on the NCCL copy-engine all-reduce (or MPI),
  /// InUpdate and InUpdateNoGrad stop each bucket's all-reduce once every rank's bf16 values are
  /// gathered, and step() has Adam or AdamW compute the mean inside its update (Note [deferred
  /// mean] in dist/communicator.cpp). That takes the sum kernel's memory pass over each bucket off
  /// the path between the last all-gather and the update. Under InUpdate the update writes the
  /// mean into .grad as it goes, and .grad and the parameters end as the same bits as under
  /// Reduced (on the copy engines; on MPI with more than 2 ranks the means can differ in the last
  /// bf16 bit, as MPI sums in its own order). Under InUpdateNoGrad it does not (the parameters
  /// are the same bits as under InUpdate), and since a deferred bucket's .grad would then still
  /// hold this rank's own gradient, step() leaves every parameter's .grad none, whatever the
  /// communicator, as PyTorch's optimizer-in-backward does: after step() no parameter has a gradient
  /// (reading its values raises; nn::clip_grad_norm_ and optimizer steps skip it), rather than one
  /// that is not the mean. Read gradients between backward and the
  /// update (synchronize_gradients(), then the optimizer's step(), as clipping does; the means are
  /// written there), or choose one of the other two. Each deferred bucket keeps slots of its own in
  /// the communicator (its f32 size again) until the communicator goes. synchronize_gradients(),
  /// and step() with an optimizer that cannot take the slots (SGD), have the communicator write the
  /// means when they wait, on the compute stream. Elsewhere the mean's placement changes nothing.
  /// Measured: docs/PERFORMANCE.md.
  StepMean step_mean = StepMean::Reduced;
};

class DistributedDataParallel {
 public:
  /// Collective: checks that every rank has the same options (those that decide which collectives
  /// DDP issues, or when it raises) and holds the same parameter and buffer names, shapes, dtypes
  /// and frozen flags (raising on every rank, naming the first mismatch), broadcasts rank 0's
  /// parameters and buffers, builds the buckets of the parameters that require grad (frozen ones
  /// get none) and registers their gradient-ready hooks. Every parameter must be on the
  /// communicator's device. `communicator` must outlive this object.
  DistributedDataParallel(std::shared_ptr<nn::Module> module, Communicator& communicator, DdpOptions options = {});
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  /// The module's forward. Raises if the previous backward's reduction was never finished with
  /// synchronize_gradients() (it would mix two steps' gradients).
  Tensor forward(const Tensor& input);
  Tensor operator()(const Tensor& input) { return forward(input); }

  /// Collective, after every backward outside no_sync() and before the optimizer step: launches
  /// the buckets still pending and makes the compute stream wait for every all-reduce (the host
  /// does not wait), leaving each parameter's .grad the mean over ranks (a view into its bucket).
  /// Parameters without a gradient on some rank are handled by DdpOptions::unused_parameters
  /// (Note [ddp buckets]). Inside no_sync() it does nothing.
  void synchronize_gradients();

  /// Collective, after every backward outside no_sync(), instead of synchronize_gradients()
  /// followed by optimizer.step(): the same update (bit for bit), but each bucket's parameters are
  /// updated as soon as that bucket's all-reduce has finished, while later buckets are still
  /// being reduced (Note [ddp buckets]). `optimizer` must hold this module's parameters (others
  /// it holds are updated last). Use synchronize_gradients() and step() separately when something
  /// must see every mean gradient first, as gradient clipping by global norm does. Under
  /// StepMean::InUpdateNoGrad it leaves every parameter's .grad none. Raises inside no_sync(),
  /// where the gradients are not reduced.
  void step(optim::Optimizer& optimizer);

  /// Sets every parameter's gradient to zero in place: each .grad becomes its zeroed bucket view,
  /// so backward accumulates straight into the buckets (no copy, no allocation). Unlike the
  /// optimizer's zero_grad() (set_to_none), every parameter then has a gradient, so under
  /// UnusedParameters::Ignore a parameter no rank uses gets a zero gradient (and AdamW still
  /// decays it). Raises while a reduction is unfinished.
  void zero_grad() { reducer_->zero_grads(); }

  /// While alive, gradient-ready hooks only accumulate locally (no communication); the first
  /// backward after it ends reduces everything accumulated. Not nestable.
  class NoSyncGuard {
   public:
    explicit NoSyncGuard(Reducer& reducer);
    ~NoSyncGuard();
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;

   private:
    Reducer& reducer_;
  };
  [[nodiscard]] NoSyncGuard no_sync();

  /// Collective and synchronising (read back to the host): raises flame::Error on every rank when
  /// some rank left a parameter without a gradient since the last check (UnusedParameters::Error,
  /// Note [ddp buckets]), or when some parameter's checksum differs from rank 0's, naming `when`,
  /// the parameter and the ranks (dist/checksum.h).
  void check_parameters_in_sync(const std::string& when);
  /// Counts optimizer steps; every DdpOptions::check_every_n_steps-th call runs
  /// check_parameters_in_sync("after step N").
  void after_step();
  /// Sets the count of optimizer steps taken so far, e.g. to the step a run resumed from, so that
  /// the periodic check keeps the run's cadence and names its step numbers. Raises for steps < 0.
  void set_steps(int64_t steps);

  nn::Module& module() { return *module_; }
  const std::shared_ptr<nn::Module>& module_ptr() const { return module_; }
  std::vector<Tensor> parameters() const { return module_->parameters(); }
  Communicator& communicator() { return communicator_; }
  const DdpOptions& options() const { return options_; }
  int64_t steps() const { return steps_; }
  /// The buckets (Note [ddp buckets]) and the order their all-reduces were launched in.
  const Reducer& reducer() const { return *reducer_; }

 private:
  std::shared_ptr<nn::Module> module_;
  Communicator& communicator_;
  DdpOptions options_;
  std::shared_ptr<Reducer> reducer_;
  std::vector<std::vector<Tensor>> bucket_params_;  // per bucket, its parameters (step()'s groups)
  nn::NamedTensors params_;                         // the module's parameters at construction
  std::vector<bool> trained_;                       // per params_: requires_grad at construction
  /// Raises when a parameter's requires_grad changed since construction: its gradient would not be
  /// reduced (unfrozen) or it would be updated as unused (frozen).
  void check_trained_set_unchanged() const;
  int64_t steps_ = 0;
};

}  // namespace flame::dist
