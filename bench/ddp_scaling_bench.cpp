// Weak scaling of a full DistributedDataParallel training step, and how much of its communication
// backward hides. An MPI program: run as `mpirun -np 1 ddp_scaling_bench` and
// `mpirun -np 2 ddp_scaling_bench` (one GPU per rank, cuda:local_rank); scripts/bench_summary.py
// joins the two runs (efficiency = t(W=1) / t(W=2), per-rank batch fixed). Measure one model per
// process (--model cnn, --model mlp), as a training job runs: a model measured after another one in
// the same process ran slower at W=2 (docs/PERFORMANCE.md, ninth run). --between-cases release
// returns the caching allocator's cached blocks to the driver after each case (it did not remove the
// slowdown). The cases share one NCCL communicator per NcclCalls mode (--communicator shared, the
// default): with one communicator per case (--communicator per-case), every case after the first
// ran its compute about 7% slower at W=2.
//
// Models, f32, batch 256 per rank unless --batch says otherwise (each rank draws its own random
// batch and labels):
//   cnn: flame-train's Fashion-MNIST CNN (launch/train/models.h: conv 1->32, conv 32->64, linear
//        3136->128->10; 421,642 parameters) on 1x28x28 inputs;
//   mlp: Linear(1024,4096) - ReLU - Linear(4096,4096) - ReLU - Linear(4096,10).
// A step is ddp.zero_grad(), forward, nn::cross_entropy, backward, then either ddp.step(AdamW)
// ("bucket": each bucket's parameters are updated as soon as it is reduced) or
// ddp.synchronize_gradients() and AdamW step() ("after-sync"), then ddp.after_step(). The
// communicator has the default CommunicatorOptions (blocking NCCL calls, automatic SM carve-out)
// unless the flags below say otherwise. For each model, NcclCalls mode and step (a fresh model and
// DDP per case; one communicator per NcclCalls mode, shared by the cases), kWarmup steps, then kRuns
// steps each bracketed by CUDA events on the compute stream; the median is reported. Sanity check: the loss must stay
// finite and fall.
//
// Overlap (world > 1, mlp, every case), on the same DDP after the timed steps:
//   step_without_comm: the same step with everything from zero_grad() to the optimizer step inside
//                      ddp.no_sync(), so no gradient is all-reduced (median of kRuns);
//   comm_ms:           the all-reduces alone: one Sum all-reduce per DDP bucket, of a tensor of the
//                      bucket's size, issued back to back on the communicator after a barrier and
//                      bracketed by events on the compute stream (median of kRuns);
//   exposed_ms = step_with_comm - step_without_comm; hidden_fraction = 1 - exposed_ms / comm_ms.
//   With --reduce bf16 the step also holds the two conversions, which neither the no-comm step nor
//   comm_ms has, so its hidden_fraction understates what backward hides.
//
// Phases (every case): kRuns more steps with events on the compute stream between the parts of
// the step, medians of each part:
//   forward_ms   zero_grad, forward and loss;
//   backward_ms  backward's compute (at W > 1 the all-reduces run beside it on their own stream);
//   wait_ms      synchronize_gradients(): what the compute stream waits for the all-reduces after
//                backward has finished (the exposed tail);
//   optimizer_ms the AdamW step and after_step();
//   host_ms      the host's time to issue the whole step (when it is close to the step time, the
//                step is bound by the host, not the GPU).
//
// Usage: ddp_scaling_bench [--model cnn|mlp|all] [--calls blocking|nonblocking|all]
//                          [--max-ctas N] [--carveout N] [--priority high|default]
//                          [--step bucket|after-sync|all] [--batch N] [--reduce f32|bf16]
//                          [--carveout-min-kib N] [--between-cases keep|release]
//                          [--communicator per-case|shared] [--all-reduce ring|copy-engine]
//                          [--last-bucket-priority high|default]
//                          [--step-mean reduced|in-update|in-update-no-grad] [--bucket-cap-kib N]
//                          [--one-shot-max-kib N]
// (defaults: every model, blocking calls, both steps, batch 256, gradients reduced in f32, the
// last bucket at high priority).
// --reduce bf16 sets DdpOptions::reduce_dtype (gradients all-reduced in bf16, as PyTorch's
// bf16_compress_hook). --all-reduce copy-engine sets CommunicatorOptions::overlap_all_reduce to
// CopyEngineGather (Note [copy-engine all-reduce], dist/nccl_communicator.cpp; 2 ranks).
// --last-bucket-priority sets DdpOptions::last_bucket_high_priority (Note [last bucket priority],
// dist/bucket.h; high, the default, or default, i.e. the stream's priority). --step-mean sets
// DdpOptions::step_mean (Note [deferred mean], dist/communicator.cpp; reduced by default).
// --bucket-cap-kib sets DdpOptions::bucket_cap_bytes (the cap of every bucket after the first).
// --one-shot-max-kib sets CommunicatorOptions::one_shot_max_bytes (Note [one-shot all-reduce],
// dist/peer_all_reduce.h; 0 turns it off).
// (--max-ctas, --carveout, --carveout-min-kib and --priority set CommunicatorOptions::nccl_max_ctas,
// overlap_sm_carveout, overlap_carveout_min_bytes and high_priority_stream, dist/communicator.h; --step bucket replaces
// synchronize_gradients() + AdamW step() with ddp.step(optimizer), whose wait_ms is then 0 and
// optimizer_ms holds the waits.
//
// Rank 0 prints
//   {"bench": "ddp_step", "impl": "flame", "model": "cnn"|"mlp", "world": W,
//    "nccl_calls": "nonblocking"|"blocking", "step": "bucket"|"after-sync", "dtype": "f32",
//    "reduce": "f32"|"bf16", "size": "b<batch>", "high_priority": true|false,
//    "last_bucket_high_priority": true|false, "step_mean": "reduced"|"in_update"|"in_update_no_grad",
//    "bucket_cap_bytes": N, "one_shot_max_bytes": N, ["all_reduce": "copy_engine" (W=2),] "value": <ms>,
//    "unit": "ms/step", "device": ...}
//   {"bench": "ddp_overlap", "impl": "flame", "model": "mlp", "world": W, "nccl_calls": ...,
//    "dtype": "f32", "size": "b256", "step_ms": ..., "step_no_comm_ms": ..., "comm_ms": ...,
//    "exposed_ms": ..., "hidden_fraction": ..., "buckets": ..., "bucket_mib": ...,
//    "value": <hidden_fraction>, "unit": "fraction", "device": ...}
//   {"bench": "ddp_phases", ..., "forward_ms": ..., "backward_ms": ..., "wait_ms": ...,
//    "optimizer_ms": ..., "value": <sum of the medians>, "unit": "ms/step", "device": ...}
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/cuda/context.h"
#include "core/cuda_device.h"
#include "core/ops.h"
#include "dist/communicator.h"
#include "dist/ddp.h"
#include "launch/train/models.h"
#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/optim/adam.h"

namespace flame {
namespace {

constexpr int64_t kDefaultBatch = 256;  // per rank
constexpr int64_t kSide = 28;
constexpr int64_t kMlpIn = 1024;
constexpr int64_t kMlpHidden = 4096;
constexpr int64_t kClasses = 10;
constexpr int kWarmup = 10;
constexpr int kRuns = 50;

enum class Model { Cnn, Mlp };

const char* model_name(Model model) { return model == Model::Cnn ? "cnn" : "mlp"; }
/// DdpOptions::step_mean as the JSON lines name it.
const char* step_mean_name(dist::StepMean mean) {
  switch (mean) {
    case dist::StepMean::Reduced:
      return "reduced";
    case dist::StepMean::InUpdate:
      return "in_update";
    case dist::StepMean::InUpdateNoGrad:
      return "in_update_no_grad";
  }
  return "?";
}

const char* calls_name(dist::NcclCalls calls) {
  return calls == dist::NcclCalls::NonBlocking ? "nonblocking" : "blocking";
}

std::shared_ptr<nn::Module> make_model(Model model) {
  if (model == Model::Mlp) {
    return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(kMlpIn, kMlpHidden), std::make_shared<nn::ReLU>(),
        std::make_shared<nn::Linear>(kMlpHidden, kMlpHidden), std::make_shared<nn::ReLU>(),
        std::make_shared<nn::Linear>(kMlpHidden, kClasses)});
  }
  return train::make_model("cnn");  // flame-train's Fashion-MNIST CNN (launch/train/models.h)
}

/// The per-rank input batch: x [batch, 1, 28, 28] (cnn) or [batch, 1024] (mlp), f32.
Shape input_shape(Model model, int64_t batch) {
  return model == Model::Cnn ? Shape{batch, 1, kSide, kSide} : Shape{batch, kMlpIn};
}

/// Median milliseconds of kRuns calls of `body`, each bracketed by events on `stream`.
double median_ms(cudaStream_t stream, const std::function<void()>& body) {
  bench::EventTimes times(kRuns);
  for (int i = 0; i < kRuns; ++i) {
    times.start(i, stream);
    body();
    times.stop(i, stream);
  }
  return bench::median(times.elapsed_ms());
}

/// Medians of the parts of a step (see the phases paragraph at the top).
struct Phases {
  double forward_ms = 0, backward_ms = 0, wait_ms = 0, optimizer_ms = 0;
  double host_ms = 0;  // the host's time to issue one step
};

Phases time_phases(cudaStream_t stream, dist::DistributedDataParallel& ddp, optim::AdamW& optimizer, bool bucket_step,
                   const std::function<Tensor()>& forward_loss) {
  constexpr int kMarks = 5;  // before zero_grad, after the loss, after backward, after sync, after the step
  std::vector<cudaEvent_t> marks(static_cast<size_t>(kRuns) * kMarks);
  for (cudaEvent_t& event : marks) FLAME_CUDA_CHECK(cudaEventCreate(&event));
  std::vector<double> host_ms(kRuns);
  for (int i = 0; i < kRuns; ++i) {
    cudaEvent_t* mark = &marks[static_cast<size_t>(i) * kMarks];
    const auto host_start = std::chrono::steady_clock::now();
    FLAME_CUDA_CHECK(cudaEventRecord(mark[0], stream));
    ddp.zero_grad();
    Tensor loss = forward_loss();
    FLAME_CUDA_CHECK(cudaEventRecord(mark[1], stream));
    loss.backward();
    FLAME_CUDA_CHECK(cudaEventRecord(mark[2], stream));
    if (bucket_step) {  // the wait is inside the optimizer part
      FLAME_CUDA_CHECK(cudaEventRecord(mark[3], stream));
      ddp.step(optimizer);
    } else {
      ddp.synchronize_gradients();
      FLAME_CUDA_CHECK(cudaEventRecord(mark[3], stream));
      optimizer.step();
    }
    ddp.after_step();
    FLAME_CUDA_CHECK(cudaEventRecord(mark[4], stream));
    host_ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_start).count();
  }
  std::vector<std::vector<double>> parts(kMarks - 1, std::vector<double>(kRuns));
  for (int i = 0; i < kRuns; ++i) {
    cudaEvent_t* mark = &marks[static_cast<size_t>(i) * kMarks];
    FLAME_CUDA_CHECK(cudaEventSynchronize(mark[kMarks - 1]));
    for (int k = 0; k + 1 < kMarks; ++k) {
      float ms = 0.0f;
      FLAME_CUDA_CHECK(cudaEventElapsedTime(&ms, mark[k], mark[k + 1]));
      parts[k][i] = ms;
    }
  }
  for (cudaEvent_t event : marks) cudaEventDestroy(event);
  return Phases{bench::median(parts[0]), bench::median(parts[1]), bench::median(parts[2]), bench::median(parts[3]),
                bench::median(host_ms)};
}

/// One benchmark case: the model, how NCCL is called and configured, and how the step is taken.
struct Case {
  Model model = Model::Mlp;
  dist::NcclCalls calls = dist::NcclCalls::Blocking;
  dist::CommunicatorOptions options;  // --max-ctas, --carveout, --carveout-min-kib, --priority
  bool bucket_step = true;            // ddp.step(optimizer), or synchronize_gradients() + step()
  int64_t batch = kDefaultBatch;      // per rank
  std::optional<DType> reduce_dtype;  // DdpOptions::reduce_dtype (--reduce bf16)
  // DdpOptions::last_bucket_high_priority (--last-bucket-priority)
  bool last_bucket_high_priority = dist::DdpOptions{}.last_bucket_high_priority;
  dist::StepMean step_mean = dist::StepMean::Reduced;  // DdpOptions::step_mean (--step-mean)
  size_t bucket_cap_bytes = dist::DdpOptions{}.bucket_cap_bytes;  // DdpOptions::bucket_cap_bytes (--bucket-cap-kib)
};

/// Prints one JSON line (rank 0 only): the common keys, `extra` (already formatted "key": value
/// pairs, each followed by ", "), then value, unit and device.
void emit_line(const std::string& bench_name, const Case& c, int world, const std::string& extra, double value,
               const std::string& unit, const std::string& device) {
  fmt::print(
      "{{\"bench\": \"{}\", \"impl\": \"flame\", \"model\": \"{}\", \"world\": {}, \"nccl_calls\": \"{}\", "
      "\"step\": \"{}\", \"dtype\": \"f32\", \"reduce\": \"{}\", \"size\": \"b{}\", \"high_priority\": {}, "
      "\"last_bucket_high_priority\": {}, \"step_mean\": \"{}\", \"bucket_cap_bytes\": {}, "
      "\"one_shot_max_bytes\": {}, {}{}"
      "\"value\": {:.6g}, "
      "\"unit\": \"{}\", \"device\": \"{}\"}}\n",
      bench_name, model_name(c.model), world, calls_name(c.calls), c.bucket_step ? "bucket" : "after-sync",
      c.reduce_dtype ? dtype_name(*c.reduce_dtype) : "f32", c.batch, c.options.high_priority_stream,
      c.last_bucket_high_priority,
      // Only bf16 gradients through the copy engines can defer their means (Note [deferred mean]).
      step_mean_name(c.options.overlap_all_reduce == dist::OverlapAllReduce::CopyEngineGather && world == 2 &&
                             c.reduce_dtype == DType::BF16
                         ? c.step_mean
                         : dist::StepMean::Reduced),
      c.bucket_cap_bytes, c.options.one_shot_max_bytes,
      c.options.overlap_all_reduce == dist::OverlapAllReduce::CopyEngineGather && world == 2  // W=1: nothing to move
          ? "\"all_reduce\": \"copy_engine\", "
          : "",
      extra, value, unit, device);
  std::fflush(stdout);
}

/// Times one (model, NCCL mode) case; false when the loss did not behave.
/// `shared`: the communicator to use, or null to create one for this case.
bool run_case(const dist::ProcessGroup& group, Device device, const Case& c, dist::Communicator* shared) {
  const Model model_kind = c.model;
  const bool bucket_step = c.bucket_step;
  dist::CommunicatorOptions comm_options = c.options;
  const cudaStream_t stream = cuda::compute_stream(device.index);
  const bool print = group.rank == 0;
  const std::string device_name = bench::json_escape(cuda::context(device.index).properties.name);
  const std::string label =
      fmt::format("{} {} b{} world {}", model_name(model_kind), calls_name(c.calls), c.batch, group.world_size);

  comm_options.nccl_calls = c.calls;
  std::unique_ptr<dist::Communicator> own;
  if (shared == nullptr) own = dist::make_nccl_communicator(group, comm_options);
  dist::Communicator* const comm = shared != nullptr ? shared : own.get();

  manual_seed(0);
  std::shared_ptr<nn::Module> model = make_model(model_kind);
  model->to(device);
  dist::DdpOptions ddp_options;
  ddp_options.reduce_dtype = c.reduce_dtype;
  ddp_options.last_bucket_high_priority = c.last_bucket_high_priority;
  ddp_options.step_mean = c.step_mean;
  ddp_options.bucket_cap_bytes = c.bucket_cap_bytes;
  dist::DistributedDataParallel ddp(model, *comm, ddp_options);
  optim::AdamW optimizer(ddp.parameters(), optim::AdamWOptions{.lr = 1e-3});

  manual_seed(1000 + static_cast<uint64_t>(group.rank));  // a different batch on every rank
  const Tensor x = randn(input_shape(model_kind, c.batch), TensorOptions(kF32, device));
  const Tensor y = randint(0, kClasses, {c.batch}, TensorOptions(kI64, device));

  const auto step = [&] {
    ddp.zero_grad();
    Tensor loss = nn::cross_entropy(ddp.forward(x), y);
    loss.backward();
    if (bucket_step) {
      ddp.step(optimizer);
    } else {
      ddp.synchronize_gradients();
      optimizer.step();
    }
    ddp.after_step();
    return loss;
  };
  const double first_loss = step().item();
  for (int i = 1; i < kWarmup; ++i) step();
  cuda::synchronize(device.index);

  Tensor last_loss;
  const uint64_t mallocs_before = cuda::malloc_count(device.index);
  const double step_ms = median_ms(stream, [&] { last_loss = step(); });
  cuda::synchronize(device.index);
  const uint64_t mallocs = cuda::malloc_count(device.index) - mallocs_before;
  const double final_loss = last_loss.item();
  if (print) {
    if (mallocs != 0)
      fmt::print(stderr, "ddp_scaling_bench: note: {} cudaMalloc calls during the timed {} steps\n", mallocs, label);
    fmt::print(stderr, "ddp_scaling_bench: {}: loss {:.4f} after the first step, {:.4f} after {} steps\n", label,
               first_loss, final_loss, kWarmup + kRuns);
    emit_line("ddp_step", c, group.world_size, "", step_ms, "ms/step", device_name);
  }
  const Phases phases =
      time_phases(stream, ddp, optimizer, bucket_step, [&] { return nn::cross_entropy(ddp.forward(x), y); });
  if (print) {
    const std::string extra = fmt::format(
        "\"forward_ms\": {:.6g}, \"backward_ms\": {:.6g}, \"wait_ms\": {:.6g}, \"optimizer_ms\": {:.6g}, "
        "\"host_ms\": {:.6g}, \"max_ctas\": {}, \"carveout\": {}, \"carveout_min_bytes\": {}, ",
        phases.forward_ms, phases.backward_ms, phases.wait_ms, phases.optimizer_ms, phases.host_ms,
        comm_options.nccl_max_ctas, comm_options.overlap_sm_carveout, comm_options.overlap_carveout_min_bytes);
    emit_line("ddp_phases", c, group.world_size, extra,
              phases.forward_ms + phases.backward_ms + phases.wait_ms + phases.optimizer_ms, "ms/step", device_name);
  }
  const bool loss_fell = std::isfinite(final_loss) && final_loss < first_loss;
  if (!loss_fell)
    fmt::print(stderr, "ddp_scaling_bench: rank {}: {}: the loss did not fall ({} -> {}); the step is wrong\n",
               group.rank, label, first_loss, final_loss);

  if (model_kind == Model::Mlp && group.is_distributed()) {
    // The same step with no all-reduce (the replicas drift apart from here on; nothing after this
    // depends on them agreeing).
    const auto local_step = [&] {
      auto no_sync = ddp.no_sync();
      ddp.zero_grad();
      nn::cross_entropy(ddp.forward(x), y).backward();
      ddp.synchronize_gradients();  // does nothing inside no_sync()
      optimizer.step();
      ddp.after_step();
    };
    for (int i = 0; i < kWarmup; ++i) local_step();
    cuda::synchronize(device.index);
    const double local_ms = median_ms(stream, local_step);

    // The buckets' all-reduces alone, on tensors shaped like the buckets.
    std::vector<Tensor> flats;
    double bucket_bytes = 0.0;
    for (const dist::Bucket& bucket : ddp.reducer().buckets()) {
      const Tensor& wire = bucket.reduced.defined() ? bucket.reduced : bucket.flat;  // what the step all-reduces
      const DType sent = bucket.converted_by_communicator.value_or(wire.dtype());     // and in which dtype
      flats.push_back(zeros(wire.shape(), TensorOptions(sent, wire.device())));
      bucket_bytes += static_cast<double>(flats.back().nbytes());
    }
    const auto reduce_all = [&] {
      for (size_t b = 0; b < flats.size(); ++b)
        comm->all_reduce(flats[b], dist::ReduceOp::Sum, fmt::format("ddp_scaling_bench bucket {}", b));
    };
    for (int i = 0; i < kWarmup; ++i) {
      reduce_all();
      comm->synchronize();
    }
    bench::EventTimes times(kRuns);
    for (int i = 0; i < kRuns; ++i) {
      comm->barrier();
      times.start(i, stream);
      reduce_all();  // the compute stream waits on each collective's completion (communicator.h)
      times.stop(i, stream);
      comm->synchronize();
    }
    const double comm_ms = bench::median(times.elapsed_ms());
    const double exposed_ms = step_ms - local_ms;
    const double hidden_fraction = 1.0 - exposed_ms / comm_ms;
    if (print) {
      const std::string extra = fmt::format(
          "\"step_ms\": {:.6g}, \"step_no_comm_ms\": {:.6g}, \"comm_ms\": {:.6g}, \"exposed_ms\": {:.6g}, "
          "\"hidden_fraction\": {:.6g}, \"buckets\": {}, \"bucket_mib\": {:.6g}, ",
          step_ms, local_ms, comm_ms, exposed_ms, hidden_fraction, flats.size(), bucket_bytes / (1 << 20));
      emit_line("ddp_overlap", c, group.world_size, extra, hidden_fraction, "fraction", device_name);
    }
  }
  cuda::synchronize(device.index);
  return loss_fell;
}

/// What happens between two cases.
enum class BetweenCases {
  Keep,     // the caching allocator keeps its cached blocks
  Release,  // cuda::empty_cache(): they go back to the driver
};
/// Which NCCL communicator a case uses.
enum class CommunicatorScope {
  Shared,   // one per NcclCalls mode for every case (a second communicator in a process slowed it)
  PerCase,  // a fresh one per case
};

/// The cases chosen on the command line (every model and mode by default).
struct Selection {
  std::vector<Model> models{Model::Cnn, Model::Mlp};
  std::vector<dist::NcclCalls> calls{dist::NcclCalls::Blocking};
  std::vector<bool> bucket_steps{true, false};                  // --step: ddp.step(optimizer) and/or sync + step()
  Case common;                                                  // --max-ctas, --carveout, --priority, --batch, --reduce
  BetweenCases between_cases = BetweenCases::Keep;              // --between-cases
  CommunicatorScope communicators = CommunicatorScope::Shared;  // --communicator
};

Selection parse_arguments(int argc, char** argv) {
  Selection selection;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    FLAME_CHECK(i + 1 < argc && (flag == "--model" || flag == "--calls" || flag == "--max-ctas" ||
                                 flag == "--carveout" || flag == "--priority" || flag == "--step" ||
                                 flag == "--batch" || flag == "--reduce" || flag == "--carveout-min-kib" ||
                                 flag == "--between-cases" || flag == "--communicator" || flag == "--all-reduce" ||
                                 flag == "--last-bucket-priority" || flag == "--step-mean" ||
                                 flag == "--bucket-cap-kib" || flag == "--one-shot-max-kib"),
                "ddp_scaling_bench: unknown argument '{}'; usage: ddp_scaling_bench [--model cnn|mlp|all] "
                "[--calls blocking|nonblocking|all] [--max-ctas N] [--carveout N] [--priority high|default] "
                "[--step bucket|after-sync|all] [--batch N] [--reduce f32|bf16] [--carveout-min-kib N] "
                "[--between-cases keep|release] [--communicator per-case|shared] [--all-reduce ring|copy-engine] "
                "[--last-bucket-priority high|default] [--step-mean reduced|in-update|in-update-no-grad] "
                "[--bucket-cap-kib N] [--one-shot-max-kib N]",
                flag);
    const std::string value = argv[++i];
    if (flag == "--all-reduce") {
      FLAME_CHECK(value == "ring" || value == "copy-engine",
                  "ddp_scaling_bench: --all-reduce must be ring or copy-engine, got '{}'", value);
      selection.common.options.overlap_all_reduce =
          value == "ring" ? dist::OverlapAllReduce::Ring : dist::OverlapAllReduce::CopyEngineGather;
    } else if (flag == "--step") {
      FLAME_CHECK(value == "bucket" || value == "after-sync" || value == "all",
                  "ddp_scaling_bench: --step must be bucket, after-sync or all");
      if (value != "all") selection.bucket_steps = {value == "bucket"};
    } else if (flag == "--max-ctas") {
      selection.common.options.nccl_max_ctas = std::stoi(value);
    } else if (flag == "--carveout") {
      selection.common.options.overlap_sm_carveout = std::stoi(value);
    } else if (flag == "--communicator") {
      FLAME_CHECK(value == "per-case" || value == "shared",
                  "ddp_scaling_bench: --communicator must be per-case or shared, got '{}'", value);
      selection.communicators = value == "shared" ? CommunicatorScope::Shared : CommunicatorScope::PerCase;
    } else if (flag == "--between-cases") {
      FLAME_CHECK(value == "keep" || value == "release",
                  "ddp_scaling_bench: --between-cases must be keep or release, got '{}'", value);
      selection.between_cases = value == "release" ? BetweenCases::Release : BetweenCases::Keep;
    } else if (flag == "--carveout-min-kib") {
      const long long kib = std::stoll(value);
      FLAME_CHECK(kib >= 0, "ddp_scaling_bench: --carveout-min-kib must be >= 0, got {}", value);
      selection.common.options.overlap_carveout_min_bytes = static_cast<size_t>(kib) << 10;
    } else if (flag == "--one-shot-max-kib") {
      const long long kib = std::stoll(value);
      FLAME_CHECK(kib >= 0, "ddp_scaling_bench: --one-shot-max-kib must be >= 0, got {}", value);
      selection.common.options.one_shot_max_bytes = static_cast<size_t>(kib) << 10;
    } else if (flag == "--bucket-cap-kib") {
      const long long kib = std::stoll(value);
      FLAME_CHECK(kib >= 1, "ddp_scaling_bench: --bucket-cap-kib must be >= 1, got {}", value);
      selection.common.bucket_cap_bytes = static_cast<size_t>(kib) << 10;
    } else if (flag == "--step-mean") {
      FLAME_CHECK(value == "reduced" || value == "in-update" || value == "in-update-no-grad",
                  "ddp_scaling_bench: --step-mean must be reduced, in-update or in-update-no-grad, got '{}'", value);
      selection.common.step_mean = value == "reduced"     ? dist::StepMean::Reduced
                                   : value == "in-update" ? dist::StepMean::InUpdate
                                                          : dist::StepMean::InUpdateNoGrad;
    } else if (flag == "--last-bucket-priority") {
      FLAME_CHECK(value == "high" || value == "default",
                  "ddp_scaling_bench: --last-bucket-priority must be high or default, got '{}'", value);
      selection.common.last_bucket_high_priority = value == "high";
    } else if (flag == "--priority") {
      FLAME_CHECK(value == "high" || value == "default", "ddp_scaling_bench: --priority must be high or default");
      selection.common.options.high_priority_stream = value == "high";
    } else if (flag == "--batch") {
      selection.common.batch = std::stoll(value);
      FLAME_CHECK(selection.common.batch >= 1, "ddp_scaling_bench: --batch must be at least 1, got {}", value);
    } else if (flag == "--reduce") {
      FLAME_CHECK(value == "f32" || value == "bf16", "ddp_scaling_bench: --reduce must be f32 or bf16, got '{}'",
                  value);
      if (value == "bf16") selection.common.reduce_dtype = DType::BF16;
    } else if (flag == "--model") {
      FLAME_CHECK(value == "cnn" || value == "mlp" || value == "all",
                  "ddp_scaling_bench: --model must be cnn, mlp or all, got '{}'", value);
      if (value != "all") selection.models = {value == "cnn" ? Model::Cnn : Model::Mlp};
    } else {
      FLAME_CHECK(value == "blocking" || value == "nonblocking" || value == "all",
                  "ddp_scaling_bench: --calls must be blocking, nonblocking or all, got '{}'", value);
      if (value != "all")
        selection.calls = {value == "blocking" ? dist::NcclCalls::Blocking : dist::NcclCalls::NonBlocking};
    }
  }
  return selection;
}

int run(const Selection& selection) {
  const dist::ProcessGroup& group = dist::ProcessGroup::init();
  const Device device = group.cuda_device();
  FLAME_CUDA_CHECK(cudaSetDevice(device.index));
  bool all_right = true;
  // --communicator shared: blocking, nonblocking. With --calls all both are alive at once, so the
  // figures of the mode measured second may carry the second-communicator slowdown.
  std::unique_ptr<dist::Communicator> shared_communicators[2];
  for (const Model model : selection.models)
    for (const dist::NcclCalls calls : selection.calls)
      for (const bool bucket_step : selection.bucket_steps) {
        std::unique_ptr<dist::Communicator>& shared = shared_communicators[calls == dist::NcclCalls::Blocking ? 0 : 1];
        if (selection.communicators == CommunicatorScope::Shared && shared == nullptr) {
          dist::CommunicatorOptions options = selection.common.options;
          options.nccl_calls = calls;
          shared = dist::make_nccl_communicator(group, options);
        }
        Case c = selection.common;
        c.model = model;
        c.calls = calls;
        c.bucket_step = bucket_step;
        all_right = run_case(group, device, c, shared.get()) && all_right;
        if (selection.between_cases == BetweenCases::Release) cuda::empty_cache(device.index);
      }
  return all_right ? 0 : 1;
}

}  // namespace
}  // namespace flame

int main(int argc, char** argv) {
  const int status = flame::bench::run_benchmark("ddp_scaling_bench", [&] {
    try {
      return flame::run(flame::parse_arguments(argc, argv));
    } catch (const std::exception& e) {
      // One rank failing must not leave the others waiting in a collective.
      flame::dist::abort_job(fmt::format("ddp_scaling_bench: failed: {}", e.what()));
    }
  });
  flame::dist::finalize();
  return status;
}
