// A multi-rank program that must fail, run by expect_failure.cmake (see tests/CMakeLists.txt):
//   failure_test rank_throws         rank 1 throws after a first collective and calls abort_job while
//                                    the other ranks wait in the next one: the whole job must exit
//                                    non-zero long before the communicator's 30 s timeout.
//   failure_test collective_timeout  rank 1 skips an all_reduce (and sleeps); the other ranks must
//                                    raise flame::Error naming the collective, `what` and their rank
//                                    after the 2 s timeout, then abort the job.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>

#include "core/ops.h"
#include "dist/communicator.h"

using namespace flame;

namespace {

void rank_throws(const dist::ProcessGroup& group) {
  auto comm = dist::make_mpi_communicator(group, {std::chrono::seconds(30)});
  Tensor t = ones({4});
  comm->all_reduce(t, dist::ReduceOp::Sum, "warm-up");
  if (group.rank == 1) throw std::runtime_error("injected failure on rank 1");
  comm->all_reduce(t, dist::ReduceOp::Sum, "never completes");
  std::fprintf(stderr, "rank %d: the second all_reduce completed without rank 1\n", group.rank);
}

void collective_timeout(const dist::ProcessGroup& group) {
  auto comm = dist::make_mpi_communicator(group, {std::chrono::seconds(2)});
  Tensor t = ones({4});
  comm->all_reduce(t, dist::ReduceOp::Sum, "warm-up");
  if (group.rank == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return;
  }
  comm->all_reduce(t, dist::ReduceOp::Sum, "grad bucket 0");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  const auto& group = dist::ProcessGroup::init();
  if (group.world_size < 2) {
    std::fprintf(stderr, "failure_test needs at least 2 ranks (run it under mpirun -np 2)\n");
    return 2;
  }
  try {
    if (scenario == "rank_throws") {
      rank_throws(group);
    } else if (scenario == "collective_timeout") {
      collective_timeout(group);
    } else {
      std::fprintf(stderr, "usage: failure_test rank_throws|collective_timeout\n");
      return 2;
    }
  } catch (const std::exception& e) {
    dist::abort_job(e.what(), 3);
  }
  dist::finalize();
  return 0;
}
