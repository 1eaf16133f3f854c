#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/cuda_device.h"
#include "dist/communicator.h"
#include "dist/mpi_check.h"

namespace flame::dist {
namespace detail {

void throw_mpi_error(int code, const char* expr, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) std::snprintf(text, sizeof text, "code %d", code);
  const char* base = std::strrchr(file, '/');
  throw Error(fmt::format("MPI call failed: {} [{} at {}:{}]", text, expr, base ? base + 1 : file, line));
}

std::atomic<bool>& collective_failed() {
  static std::atomic<bool> failed{false};
  return failed;
}

bool mpi_active() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

void wait_request(MPI_Request& request, std::chrono::milliseconds timeout, const std::string& collective,
                  const std::string& what, int rank) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  for (int polls = 0;; ++polls) {
    int done = 0;
    const int status = MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (status != MPI_SUCCESS) {
      collective_failed().store(true);
      char text[MPI_MAX_ERROR_STRING] = {};
      int length = 0;
      MPI_Error_string(status, text, &length);
      FLAME_FAIL(
          "dist::{} (MPI){} failed on rank {}: {}. The ranks issued different collectives, or the same one with "
          "different shapes or dtypes; the communicator is unusable, bring the job down with dist::abort_job.",
          collective, what.empty() ? "" : " '" + what + "'", rank, text);
    }
    if (done) return;
    if (Clock::now() > deadline) {
      collective_failed().store(true);
      FLAME_FAIL(
          "dist::{} (MPI){} timed out on rank {} after {} ms: another rank did not join it (it failed, is "
          "stuck, or issues collectives in a different order or with different shapes). The communicator "
          "is unusable; bring the job down with dist::abort_job.",
          collective, what.empty() ? "" : " '" + what + "'", rank, timeout.count());
    }
    // Spin briefly for latency, then back off so oversubscribed ranks leave the cores to their peers.
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(polls > 5000 ? 500 : 20));
  }
}

}  // namespace detail

namespace {

bool launched_by_mpi_or_slurm() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  const char* force = std::getenv("FLAME_FORCE_MPI");
  return force != nullptr && std::strcmp(force, "1") == 0;
}

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  FLAME_CHECK(end != value && *end == '\0' && parsed >= 0, "ProcessGroup::init: ${}='{}' is not a non-negative integer",
              name, value);
  return static_cast<int>(parsed);
}

bool g_started_mpi = false;  // this module called MPI_Init_thread (so finalize() owns MPI_Finalize)

ProcessGroup make_group() {
  ProcessGroup group;
  if (!launched_by_mpi_or_slurm()) {
    // srun started several tasks without MPI's process management: each would train alone as rank 0.
    const int tasks = env_int("SLURM_STEP_NUM_TASKS", 1);
    FLAME_CHECK(tasks <= 1,
                "ProcessGroup::init: srun started {} tasks (this is task {}) without PMI or PMIx, so MPI cannot "
                "join them into one job and each would train alone as rank 0; run srun with --mpi=pmix (or the "
                "site's plugin: srun --mpi=list)",
                tasks, env_int("SLURM_PROCID", 0));
    return group;
  }
  int initialized = 0;
  FLAME_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    FLAME_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
    g_started_mpi = true;
    FLAME_CHECK(provided >= MPI_THREAD_FUNNELED,
                "ProcessGroup::init: MPI provides thread level {}, FLAME needs MPI_THREAD_FUNNELED", provided);
  }
  // Errors come back as codes (then flame::Error) instead of MPI's default fatal handler.
  FLAME_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  FLAME_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &group.rank));
  FLAME_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &group.world_size));

  MPI_Comm node = MPI_COMM_NULL;
  FLAME_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, group.rank, MPI_INFO_NULL, &node));
  int node_rank = 0, node_size = 1;
  FLAME_MPI_CHECK(MPI_Comm_rank(node, &node_rank));
  FLAME_MPI_CHECK(MPI_Comm_size(node, &node_size));
  FLAME_MPI_CHECK(MPI_Comm_free(&node));

  if (std::getenv("OMPI_COMM_WORLD_LOCAL_RANK") != nullptr) {
    group.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", node_rank);
    group.local_world_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", node_size);
  } else if (std::getenv("SLURM_LOCALID") != nullptr && node_size > 1) {
    // Slurm's local id only where MPI sees several ranks on this node (a lone rank, e.g. under
    // FLAME_FORCE_MPI inside another step, is local rank 0 of 1).
    group.local_rank = env_int("SLURM_LOCALID", node_rank);
    group.local_world_size = node_size;
  } else {
    group.local_rank = node_rank;
    group.local_world_size = node_size;
  }
  return group;
}

}  // namespace

const ProcessGroup& ProcessGroup::init() {
  static std::once_flag once;
  static ProcessGroup group;
  std::call_once(once, [] { group = make_group(); });
  return group;
}

Device ProcessGroup::cuda_device() const {
  const int count = cuda::device_count();
  FLAME_CHECK(local_rank < count,
              "ProcessGroup::cuda_device: rank {} has local rank {} but this node has {} usable CUDA device(s); "
              "start at most one rank per GPU on each node (mpirun -np / srun --ntasks-per-node)",
              rank, local_rank, count);
  return flame::cuda_device(local_rank);
}

void finalize() {
  if (!g_started_mpi || !detail::mpi_active()) return;
  // A rank that never joined the failed collective may never reach MPI_Finalize either.
  if (detail::collective_failed().load())
    abort_job(
        "dist::finalize after a collective failed on this rank (see the error above): the other ranks may "
        "never reach MPI_Finalize, so the job is brought down instead",
        1);
  MPI_Finalize();
}

void abort_job(const std::string& reason, int exit_code) {
  int rank = 0;
  const bool mpi = detail::mpi_active();
  if (mpi) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  spdlog::critical("[rank {}] aborting the job: {}", rank, reason);
  spdlog::default_logger()->flush();
  if (mpi) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::exit(exit_code);
}

}  // namespace flame::dist
