// A multi-rank program that must fail, run by expect_failure.cmake (see tests/CMakeLists.txt):
//   failure_test rank_throws         rank 1 throws after a first collective and calls abort_job while
//                                    the other ranks wait in the next one: the whole job must exit
//                                    non-zero long before the communicator's 30 s timeout.
//   failure_test collective_timeout  rank 1 skips an all_reduce (and sleeps); the other ranks must
//                                    raise flame::Error naming the collective, `what` and their rank
//                                    after the 2 s timeout, then abort the job.
//   failure_test communicator_timeout rank 1 sleeps before creating its MPI communicator; the others
//                                    must raise naming make_mpi_communicator and their rank after the
//                                    2 s timeout, then abort the job.
//   failure_test finalize_after_timeout rank 1 skips an all_reduce (and sleeps); the others catch the
//                                    timeout and call dist::finalize(), which must bring the job down
//                                    instead of waiting in MPI_Finalize for rank 1.
//   failure_test mismatched_shapes   rank 1 all-reduces 5 elements where the others give 3: MPI
//                                    reports an error, raised as flame::Error naming the collective,
//                                    `what` and the rank, then the job is aborted.
//   failure_test nccl_timeout        the same through NCCL (one GPU per rank): rank 1 skips an
//                                    all_reduce; the others raise from synchronize() after the 3 s
//                                    timeout, naming it (Note [NCCL timeouts]).
//   failure_test nccl_watchdog       rank 1 skips an all_reduce; the others block the host in a
//                                    device-to-host copy that waits for it, so only the NCCL
//                                    communicator's watchdog can end the job, after the 3 s timeout.
//   failure_test nccl_one_shot_closed rank 1 destroys its NCCL communicator while rank 0 issues one
//                                    more small all_reduce (Note [one-shot all-reduce]): rank 0's
//                                    synchronize() must raise saying that the other rank closed,
//                                    instead of returning an all-reduce that was never done.
// The NCCL scenarios print "skipped: ..." and exit 0 without one GPU per rank (CTest's
// SKIP_REGULAR_EXPRESSION).
// Checks: expect_failure.cmake requires the job to exit non-zero in time with the failing rank's
// message; each scenario also asserts, with must_not_reach(), that no rank gets past the point where
// it must fail, and expect_failure.cmake fails on that assertion's "failure_test: FAILED" line.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "core/cuda_device.h"
#include "core/ops.h"
#include "dist/communicator.h"

using namespace flame;

namespace {

/// The assertion at a point a rank must not reach: reports which and ends the rank with status 99.
[[noreturn]] void must_not_reach(const dist::ProcessGroup& group, const char* what) {
  std::fprintf(stderr, "failure_test: FAILED on rank %d: %s\n", group.rank, what);
  std::fflush(stderr);
  std::_Exit(99);
}

void rank_throws(const dist::ProcessGroup& group) {
  auto comm = dist::make_mpi_communicator(group, {std::chrono::seconds(30)});
  Tensor t = ones({4});
  comm->all_reduce(t, dist::ReduceOp::Sum, "warm-up");
  if (group.rank == 1) throw std::runtime_error("injected failure on rank 1");
  comm->all_reduce(t, dist::ReduceOp::Sum, "never completes");
  must_not_reach(group, "the second all_reduce completed without rank 1");
}

/// Rank 1 sleeps for a minute (it never joins what the others do next) and true comes back there.
bool rank_1_sleeps(const dist::ProcessGroup& group) {
  if (group.rank != 1) return false;
  std::this_thread::sleep_for(std::chrono::seconds(60));
  return true;
}

void collective_timeout(const dist::ProcessGroup& group) {
  auto comm = dist::make_mpi_communicator(group, {std::chrono::seconds(2)});
  Tensor t = ones({4});
  comm->all_reduce(t, dist::ReduceOp::Sum, "warm-up");
  if (rank_1_sleeps(group)) return;
  comm->all_reduce(t, dist::ReduceOp::Sum, "grad bucket 0");
  must_not_reach(group, "the all_reduce 'grad bucket 0' completed without rank 1");
}

void communicator_timeout(const dist::ProcessGroup& group) {
  if (rank_1_sleeps(group)) return;
  auto comm = dist::make_mpi_communicator(group, {std::chrono::seconds(2)});
  must_not_reach(group, "created a communicator without rank 1");
}

void finalize_after_timeout(const dist::ProcessGroup& group) {
  try {
    collective_timeout(group);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d caught: %s\n", group.rank, e.what());
  }
  dist::finalize();
  must_not_reach(group, "dist::finalize returned after a collective timed out");
}

void mismatched_shapes(const dist::ProcessGroup& group) {
  auto comm = dist::make_mpi_communicator(group, {std::chrono::seconds(10)});
  Tensor t = ones({group.rank == 1 ? 5 : 3});
  comm->all_reduce(t, dist::ReduceOp::Sum, "grad bucket 7");
}

/// One GPU per local rank, or nullopt after printing why the NCCL scenario is skipped.
bool have_gpu_per_rank(const dist::ProcessGroup& group) {
  if (cuda::device_count() >= group.local_world_size) return true;
  std::fprintf(stderr, "skipped: the NCCL scenarios need one GPU per rank (%d local ranks, %d GPUs)\n",
               group.local_world_size, cuda::device_count());
  return false;
}

/// An NCCL communicator with a 3 s timeout, after one all-reduce of `t` that every rank joins.
std::unique_ptr<dist::Communicator> warmed_up_nccl(const dist::ProcessGroup& group, const Tensor& t) {
  auto comm = dist::make_nccl_communicator(group, {std::chrono::seconds(3)});
  comm->all_reduce(t, dist::ReduceOp::Sum, "warm-up");
  comm->synchronize();
  return comm;
}

void nccl_timeout(const dist::ProcessGroup& group) {
  if (!have_gpu_per_rank(group)) return;
  Tensor t = ones({4}, TensorOptions(kF32, group.cuda_device()));
  auto comm = warmed_up_nccl(group, t);
  if (rank_1_sleeps(group)) return;
  comm->all_reduce(t, dist::ReduceOp::Sum, "grad bucket 0");
  comm->synchronize();
  must_not_reach(group, "synchronize() returned without rank 1");
}

void nccl_watchdog(const dist::ProcessGroup& group) {
  if (!have_gpu_per_rank(group)) return;
  Tensor t = ones({4}, TensorOptions(kF32, group.cuda_device()));
  auto comm = warmed_up_nccl(group, t);
  if (rank_1_sleeps(group)) return;
  comm->all_reduce(t, dist::ReduceOp::Sum, "grad bucket 0");
  std::fprintf(stderr, "rank %d: read %g\n", group.rank, sum(t).item());  // waits on the device for rank 1
  must_not_reach(group, "the device-to-host copy completed without rank 1");
}

void nccl_one_shot_closed(const dist::ProcessGroup& group) {
  if (!have_gpu_per_rank(group)) return;
  Tensor t = ones({4}, TensorOptions(kF32, group.cuda_device()));
  auto comm = warmed_up_nccl(group, t);
  if (comm->one_shot_all_reduces() == 0) must_not_reach(group, "the warm-up did not take the one-shot all-reduce");
  if (group.rank == 1) {
    comm.reset();  // waits up to the 3 s timeout for rank 0's closing flag, which never comes
    rank_1_sleeps(group);
    return;
  }
  comm->all_reduce(t, dist::ReduceOp::Sum, "grad bucket 0");
  comm->synchronize();
  must_not_reach(group, "synchronize() returned an all-reduce that rank 1 never joined");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  const dist::ProcessGroup* started = nullptr;
  try {
    started = &dist::ProcessGroup::init();
  } catch (const std::exception& e) {  // a launch that cannot form a job (process_group_srun_without_pmi)
    std::fprintf(stderr, "failure_test: %s\n", e.what());
    return 4;
  }
  const dist::ProcessGroup& group = *started;
  if (group.world_size < 2) {
    std::fprintf(stderr, "failure_test needs at least 2 ranks (run it under mpirun -np 2)\n");
    return 2;
  }
  try {
    if (scenario == "rank_throws") {
      rank_throws(group);
    } else if (scenario == "collective_timeout") {
      collective_timeout(group);
    } else if (scenario == "communicator_timeout") {
      communicator_timeout(group);
    } else if (scenario == "finalize_after_timeout") {
      finalize_after_timeout(group);
    } else if (scenario == "mismatched_shapes") {
      mismatched_shapes(group);
    } else if (scenario == "nccl_timeout") {
      nccl_timeout(group);
    } else if (scenario == "nccl_watchdog") {
      nccl_watchdog(group);
    } else if (scenario == "nccl_one_shot_closed") {
      nccl_one_shot_closed(group);
    } else {
      std::fprintf(stderr,
                   "usage: failure_test rank_throws|collective_timeout|communicator_timeout|finalize_after_timeout|"
                   "mismatched_shapes|nccl_timeout|nccl_watchdog|nccl_one_shot_closed\n");
      return 2;
    }
  } catch (const std::exception& e) {
    dist::abort_job(e.what(), 3);
  }
  dist::finalize();
  return 0;
}
