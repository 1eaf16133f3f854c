// All-reduce bus bandwidth of FLAME's NCCL communicator against raw NCCL in the same program.
// An MPI program: run as `mpirun -np 2 allreduce_bench` (one GPU per rank, cuda:local_rank).
//
// For each size (1 .. 1024 MiB of f32 per rank) and each implementation: a correctness check
// (every rank contributes rank + 1, every element must become W (W + 1) / 2), 5 warm-up calls,
// then `iterations` timed calls, each after an MPI barrier, bracketed by CUDA events:
//   flame: events on the compute stream around Communicator::all_reduce(Sum) (the compute stream
//          waits on the collective's completion event, so the stop event marks its end), then
//          synchronize();
//   nccl:  events on its own stream around ncclAllReduce on its own communicator, then
//          cudaStreamSynchronize.
// On 2 ranks FLAME's communicator all-reduces tensors of at most CommunicatorOptions::
// one_shot_max_bytes (2 MiB) with its own one-shot kernel (Note [one-shot all-reduce]), so its 1 MiB
// figure is that kernel's, not NCCL's.
// Bus bandwidth of the median time: 2 (W - 1) / W * bytes / time (NCCL's busbw convention).
// Rank 0 prints the JSON lines (bench_util.h), one per (impl, size), and the flame/nccl ratio.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/cuda/context.h"
#include "core/ops.h"
#include "dist/communicator.h"

namespace flame {
namespace {

constexpr int kWarmup = 5;

#define BENCH_NCCL_CHECK(call)                                                                          \
  do {                                                                                                  \
    const ncclResult_t nccl_status_ = (call);                                                           \
    FLAME_CHECK(nccl_status_ == ncclSuccess, "allreduce_bench: {} failed: {}", #call,                   \
                ncclGetErrorString(nccl_status_));                                                      \
  } while (0)

#define BENCH_MPI_CHECK(call) FLAME_CHECK((call) == MPI_SUCCESS, "allreduce_bench: {} failed", #call)

/// A raw NCCL communicator and stream of its own (the baseline).
class RawNccl {
 public:
  RawNccl(const dist::ProcessGroup& group, int device) {
    ncclUniqueId id{};
    if (group.rank == 0) BENCH_NCCL_CHECK(ncclGetUniqueId(&id));
    BENCH_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD));
    FLAME_CUDA_CHECK(cudaSetDevice(device));
    BENCH_NCCL_CHECK(ncclCommInitRank(&comm_, group.world_size, id, group.rank));
    FLAME_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~RawNccl() {
    if (stream_) cudaStreamDestroy(stream_);
    if (comm_) ncclCommDestroy(comm_);
  }
  RawNccl(const RawNccl&) = delete;
  RawNccl& operator=(const RawNccl&) = delete;

  void all_reduce_sum(const Tensor& t) {
    BENCH_NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), ncclFloat, ncclSum,
                                   comm_, stream_));
  }
  cudaStream_t stream() const { return stream_; }

 private:
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

void barrier() { BENCH_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

/// Every element of `t` must be W (W + 1) / 2 (checked at the first, middle and last element).
void check_sum(const Tensor& t, int world, const char* impl) {
  const float want = world * (world + 1) / 2.0f;
  const int64_t n = t.numel();
  for (int64_t i : {int64_t{0}, n / 2, n - 1}) {
    const float got = t.narrow(0, i, 1).to_vector<float>()[0];
    FLAME_CHECK(got == want, "allreduce_bench: {} all-reduce of {} f32 gave {} at element {}, expected {}", impl, n,
                got, i, want);
  }
}

/// Median milliseconds of `iterations` calls of `body`, each bracketed by events on `stream`
/// after a barrier and followed by `drain`.
template <class Body, class Drain>
double time_ms(int iterations, cudaStream_t stream, Body body, Drain drain) {
  for (int i = 0; i < kWarmup; ++i) {
    body();
    drain();
  }
  bench::EventTimes events(iterations);
  for (int i = 0; i < iterations; ++i) {
    barrier();
    events.start(i, stream);
    body();
    events.stop(i, stream);
    drain();
  }
  return bench::median(events.elapsed_ms());
}

int run() {
  const dist::ProcessGroup& group = dist::ProcessGroup::init();
  FLAME_CHECK(group.world_size >= 2,
              "allreduce_bench: needs at least 2 ranks (run it as `mpirun -np 2 allreduce_bench`), got world size {}",
              group.world_size);
  const Device device = group.cuda_device();
  FLAME_CUDA_CHECK(cudaSetDevice(device.index));
  const int world = group.world_size;
  const bool print = group.rank == 0;

  std::unique_ptr<dist::Communicator> flame_comm = dist::make_nccl_communicator(group);
  dist::CommunicatorOptions blocking_options;
  blocking_options.nccl_calls = dist::NcclCalls::Blocking;
  std::unique_ptr<dist::Communicator> flame_blocking = dist::make_nccl_communicator(group, blocking_options);
  RawNccl raw(group, device.index);
  const cudaStream_t compute = cuda::compute_stream(device.index);
  const double bus_factor = 2.0 * (world - 1) / world;

  for (const int mib : {1, 4, 16, 64, 256, 1024}) {
    const int64_t n = int64_t{mib} << 18;  // f32 elements in `mib` MiB
    const double bytes = static_cast<double>(n) * 4.0;
    const int iterations = mib <= 64 ? 50 : 20;
    const std::string size = fmt::format("{}MiB", mib);
    Tensor buffer = full({n}, group.rank + 1, {DType::F32, device});

    flame_comm->all_reduce(buffer, dist::ReduceOp::Sum, "allreduce_bench check");
    flame_comm->synchronize();
    check_sum(buffer, world, "flame");
    buffer.fill_(group.rank + 1);
    FLAME_CUDA_CHECK(cudaStreamSynchronize(compute));  // the raw stream is not ordered after it
    raw.all_reduce_sum(buffer);
    FLAME_CUDA_CHECK(cudaStreamSynchronize(raw.stream()));
    check_sum(buffer, world, "nccl");
    buffer.zero_();  // sums of zeros stay finite however often they are repeated
    FLAME_CUDA_CHECK(cudaStreamSynchronize(compute));

    const double flame_ms = time_ms(
        iterations, compute, [&] { flame_comm->all_reduce(buffer, dist::ReduceOp::Sum, "allreduce_bench"); },
        [&] { flame_comm->synchronize(); });
    const double blocking_ms = time_ms(
        iterations, compute, [&] { flame_blocking->all_reduce(buffer, dist::ReduceOp::Sum, "allreduce_bench"); },
        [&] { flame_blocking->synchronize(); });
    const double nccl_ms = time_ms(
        iterations, raw.stream(), [&] { raw.all_reduce_sum(buffer); },
        [&] { FLAME_CUDA_CHECK(cudaStreamSynchronize(raw.stream())); });

    const double flame_gbs = bus_factor * bytes / (flame_ms * 1e-3) / 1e9;
    const double nccl_gbs = bus_factor * bytes / (nccl_ms * 1e-3) / 1e9;
    const double blocking_gbs = bus_factor * bytes / (blocking_ms * 1e-3) / 1e9;
    if (print) {
      bench::emit({"allreduce", "flame", "f32", size, flame_gbs, "GB/s"});
      bench::emit({"allreduce", "nccl", "f32", size, nccl_gbs, "GB/s"});
      bench::emit({"allreduce", "flame/nccl", "f32", size, flame_gbs / nccl_gbs, "ratio"});
      bench::emit({"allreduce", "flame_blocking", "f32", size, blocking_gbs, "GB/s"});
      bench::emit({"allreduce", "flame_blocking/nccl", "f32", size, blocking_gbs / nccl_gbs, "ratio"});
    }
  }
  flame_blocking.reset();
  flame_comm.reset();
  return 0;
}

}  // namespace
}  // namespace flame

int main() {
  const int status = flame::bench::run_benchmark("allreduce_bench", [] {
    try {
      return flame::run();
    } catch (const std::exception& e) {
      // One rank failing must not leave the other waiting in a collective.
      flame::dist::abort_job(fmt::format("allreduce_bench: failed: {}", e.what()));
    }
  });
  flame::dist::finalize();
  return status;
}
