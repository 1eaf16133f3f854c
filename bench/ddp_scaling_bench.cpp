// Weak scaling of a full DistributedDataParallel training step, and how much of its communication
// backward hides. An MPI program: run as `mpirun -np 1 ddp_scaling_bench` and
// `mpirun -np 2 ddp_scaling_bench` (one GPU per rank, cuda:local_rank); scripts/bench_summary.py
// joins the two runs (efficiency = t(W=1) / t(W=2), per-rank batch fixed).
//
// Models, f32, batch 256 per rank (each rank draws its own random batch and labels):
//   cnn: cnn_step_bench's CNN on 1x28x28 inputs;
//   mlp: Linear(1024,4096) - ReLU - Linear(4096,4096) - ReLU - Linear(4096,10).
// A step is ddp.zero_grad(), forward, nn::cross_entropy, backward, ddp.synchronize_gradients(),
// AdamW step(), ddp.after_step(). For each model and each NcclCalls mode (a fresh communicator,
// model and DDP per case), kWarmup steps, then kRuns steps each bracketed by CUDA events on the
// compute stream; the median is reported. Sanity check: the loss must stay finite and fall.
//
// Overlap (world > 1, mlp, both modes), on the same DDP after the timed steps:
//   step_without_comm: the same step with everything from zero_grad() to the optimizer step inside
//                      ddp.no_sync(), so no gradient is all-reduced (median of kRuns);
//   comm_ms:           the all-reduces alone: one Sum all-reduce per DDP bucket, of a tensor of the
//                      bucket's size, issued back to back on the communicator after a barrier and
//                      bracketed by events on the compute stream (median of kRuns);
//   exposed_ms = step_with_comm - step_without_comm; hidden_fraction = 1 - exposed_ms / comm_ms.
//
// Rank 0 prints
//   {"bench": "ddp_step", "impl": "flame", "model": "cnn"|"mlp", "world": W,
//    "nccl_calls": "nonblocking"|"blocking", "dtype": "f32", "size": "b256", "value": <ms>,
//    "unit": "ms/step", "device": ...}
//   {"bench": "ddp_overlap", "impl": "flame", "model": "mlp", "world": W, "nccl_calls": ...,
//    "dtype": "f32", "size": "b256", "step_ms": ..., "step_no_comm_ms": ..., "comm_ms": ...,
//    "exposed_ms": ..., "hidden_fraction": ..., "buckets": ..., "bucket_mib": ...,
//    "value": <hidden_fraction>, "unit": "fraction", "device": ...}
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/cuda/context.h"
#include "core/cuda_device.h"
#include "core/ops.h"
#include "dist/communicator.h"
#include "dist/ddp.h"
#include "nn/activation.h"
#include "nn/conv2d.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/optim/adam.h"
#include "nn/pool2d.h"

namespace flame {
namespace {

constexpr int64_t kBatch = 256;  // per rank
constexpr int64_t kSide = 28;
constexpr int64_t kMlpIn = 1024;
constexpr int64_t kMlpHidden = 4096;
constexpr int64_t kClasses = 10;
constexpr int kWarmup = 10;
constexpr int kRuns = 50;

enum class Model { Cnn, Mlp };

const char* model_name(Model model) { return model == Model::Cnn ? "cnn" : "mlp"; }
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
  Conv2dOptions same;
  same.padding = {1, 1};
  Pool2dOptions pool;
  pool.kernel = {2, 2};
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 4, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
      std::make_shared<nn::Conv2d>(4, 8, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
      std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(8 * (kSide / 4) * (kSide / 4), kClasses)});
}

/// The per-rank input batch: x [256, 1, 28, 28] (cnn) or [256, 1024] (mlp), f32.
Shape input_shape(Model model) { return model == Model::Cnn ? Shape{kBatch, 1, kSide, kSide} : Shape{kBatch, kMlpIn}; }

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

/// Prints one JSON line (rank 0 only): the common keys, `extra` (already formatted "key": value
/// pairs, each followed by ", "), then value, unit and device.
void emit_line(const std::string& bench_name, Model model, int world, dist::NcclCalls calls, const std::string& extra,
               double value, const std::string& unit, const std::string& device) {
  fmt::print(
      "{{\"bench\": \"{}\", \"impl\": \"flame\", \"model\": \"{}\", \"world\": {}, \"nccl_calls\": \"{}\", "
      "\"dtype\": \"f32\", \"size\": \"b{}\", {}\"value\": {:.6g}, \"unit\": \"{}\", \"device\": \"{}\"}}\n",
      bench_name, model_name(model), world, calls_name(calls), kBatch, extra, value, unit, device);
  std::fflush(stdout);
}

/// Times one (model, NCCL mode) case; false when the loss did not behave.
bool run_case(const dist::ProcessGroup& group, Device device, Model model_kind, dist::NcclCalls calls) {
  const cudaStream_t stream = cuda::compute_stream(device.index);
  const bool print = group.rank == 0;
  const std::string device_name = bench::json_escape(cuda::context(device.index).properties.name);
  const std::string label = fmt::format("{} {} world {}", model_name(model_kind), calls_name(calls), group.world_size);

  dist::CommunicatorOptions comm_options;
  comm_options.nccl_calls = calls;
  std::unique_ptr<dist::Communicator> comm = dist::make_nccl_communicator(group, comm_options);

  manual_seed(0);
  std::shared_ptr<nn::Module> model = make_model(model_kind);
  model->to(device);
  dist::DistributedDataParallel ddp(model, *comm);
  optim::AdamW optimizer(ddp.parameters(), optim::AdamWOptions{.lr = 1e-3});

  manual_seed(1000 + static_cast<uint64_t>(group.rank));  // a different batch on every rank
  const Tensor x = randn(input_shape(model_kind), TensorOptions(kF32, device));
  const Tensor y = randint(0, kClasses, {kBatch}, TensorOptions(kI64, device));

  const auto step = [&] {
    ddp.zero_grad();
    Tensor loss = nn::cross_entropy(ddp.forward(x), y);
    loss.backward();
    ddp.synchronize_gradients();
    optimizer.step();
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
    emit_line("ddp_step", model_kind, group.world_size, calls, "", step_ms, "ms/step", device_name);
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
      step();
    };
    for (int i = 0; i < kWarmup; ++i) local_step();
    cuda::synchronize(device.index);
    const double local_ms = median_ms(stream, local_step);

    // The buckets' all-reduces alone, on tensors shaped like the buckets.
    std::vector<Tensor> flats;
    double bucket_bytes = 0.0;
    for (const dist::Bucket& bucket : ddp.reducer().buckets()) {
      flats.push_back(zeros(bucket.flat.shape(), TensorOptions(bucket.flat.dtype(), bucket.flat.device())));
      bucket_bytes += static_cast<double>(bucket.flat.numel()) * 4.0;
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
      emit_line("ddp_overlap", model_kind, group.world_size, calls, extra, hidden_fraction, "fraction", device_name);
    }
  }
  cuda::synchronize(device.index);
  return loss_fell;
}

int run() {
  const dist::ProcessGroup& group = dist::ProcessGroup::init();
  const Device device = group.cuda_device();
  FLAME_CUDA_CHECK(cudaSetDevice(device.index));
  bool all_right = true;
  for (const Model model : {Model::Cnn, Model::Mlp})
    for (const dist::NcclCalls calls : {dist::NcclCalls::NonBlocking, dist::NcclCalls::Blocking})
      all_right = run_case(group, device, model, calls) && all_right;
  return all_right ? 0 : 1;
}

}  // namespace
}  // namespace flame

int main() {
  const int status = flame::bench::run_benchmark("ddp_scaling_bench", [] {
    try {
      return flame::run();
    } catch (const std::exception& e) {
      // One rank failing must not leave the others waiting in a collective.
      flame::dist::abort_job(fmt::format("ddp_scaling_bench: failed: {}", e.what()));
    }
  });
  flame::dist::finalize();
  return status;
}
