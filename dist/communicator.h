// Process groups and collective communication across MPI ranks (DESIGN.md, dist/).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace flame::dist {

/// Where this process sits in the job. Read from MPI (rank, world size) and from the launcher's
/// environment for the local rank (OMPI_COMM_WORLD_LOCAL_RANK under mpirun, SLURM_LOCALID under
/// srun). A plain process with no launcher is rank 0 of 1 and needs no MPI daemon.
struct ProcessGroup {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;

  /// Initialises MPI once per process (MPI_Init_thread, funneled) when launched under mpirun or
  /// srun, or when FLAME_FORCE_MPI=1; otherwise returns the single-process group. Thread-safe.
  static const ProcessGroup& init();
  /// The CUDA device this rank uses: cuda:local_rank. Raises flame::Error when the node has fewer
  /// GPUs than local ranks.
  Device cuda_device() const;
  bool is_distributed() const { return world_size > 1; }
};

/// Finalises MPI if init() started it (call once at the end of main; safe to call when not). After
/// an MPI collective timed out or failed on this rank, it brings the job down with abort_job (exit
/// code 1) instead: MPI_Finalize could wait forever for a rank that never joined that collective.
void finalize();

/// Brings the whole job down (MPI_Abort) after logging `reason`; used when a rank fails so that
/// the others never wait forever.
[[noreturn]] void abort_job(const std::string& reason, int exit_code = 1);

enum class ReduceOp { Sum, Avg };

/// How urgently an overlapped all-reduce's own kernels should run beside the compute stream's work.
/// High: the NCCL communicator launches the copy-engine all-reduce's rounding and sum kernels (Note
/// [copy-engine all-reduce] in dist/nccl_communicator.cpp) at the device's highest priority, so
/// their blocks are scheduled ahead of waiting compute blocks. For an all-reduce whose result is
/// needed next and that runs beside memory-bound work only, such as DDP's last bucket of a round,
/// which runs beside the optimizer (Note [last bucket priority] in dist/bucket.h). NCCL's own
/// kernels (the ring) keep the communication stream's priority, and the MPI backend ignores it.
enum class OverlapPriority { Normal, High };

/// What all_reduce_overlapped_deferred() leaves: every rank's values, not yet averaged.
struct DeferredMean {
  Tensor slots;             // [W, numel] of the wire dtype: row w holds rank w's values rounded to it
  float scale = 1.0f;       // 1/W for Avg, 1 for Sum (GradientSlots::scale in core/fused.h)
  uint64_t collective = 0;  // the all-reduce's number, for compute_wait(collective)
};

/// Collectives over all ranks of the process group. Every rank must call the same collectives in
/// the same order with tensors of the same shape and dtype. Failures (an NCCL error, a timeout)
/// raise flame::Error naming the collective, `what` (e.g. "bucket 3") and the rank.
class Communicator {
 public:
  virtual ~Communicator() = default;
  /// In place; Avg divides by the world size.
  virtual void all_reduce(const Tensor& tensor, ReduceOp op, const std::string& what = "") = 0;
  /// In place: every rank receives root's values.
  virtual void broadcast(const Tensor& tensor, int root, const std::string& what = "") = 0;
  /// output = concatenation of every rank's input along dim 0 (output is [W * n, ...]).
  virtual void all_gather(const Tensor& input, const Tensor& output, const std::string& what = "") = 0;
  /// output (shape input / W along dim 0) = this rank's share of the reduction of input.
  virtual void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op, const std::string& what = "") = 0;
  virtual void barrier() = 0;
  /// Waits until every collective issued so far has finished (for NCCL: the communication stream
  /// is drained, polling for asynchronous errors and the timeout).
  virtual void synchronize() = 0;

  /// all_reduce whose result the compute stream does not wait for (Note [NCCL communicator
  /// streams]): device work issued after it runs while the tensor is reduced. For buffers that
  /// nothing reads, writes or frees until compute_wait() or synchronize(), as DDP's buckets during
  /// backward. Returns the collective's number, for compute_wait(number). A synchronous backend
  /// (MPI) implements it as all_reduce.
  /// `priority`: see OverlapPriority.
  virtual uint64_t all_reduce_overlapped(const Tensor& tensor, ReduceOp op, const std::string& what = "",
                                         OverlapPriority priority = OverlapPriority::Normal) {
    (void)priority;
    all_reduce(tensor, op, what);
    return 0;
  }
  /// Whether all_reduce_overlapped_as(tensor, wire, ...) is available for this tensor: the
  /// communicator then converts to and from `wire` itself, on its own stream. False by default;
  /// the NCCL communicator's copy-engine all-reduce does it for f32 tensors sent as bf16 (Note
  /// [bf16 on the wire] in dist/nccl_communicator.cpp). Depends only on the tensor's dtype and size
  /// and the options, which the ranks are checked to agree on.
  virtual bool reduces_as(const Tensor& tensor, DType wire) const {
    (void)tensor;
    (void)wire;
    return false;
  }
  /// all_reduce_overlapped of `tensor` whose values travel rounded to `wire` (a narrower floating
  /// dtype): afterwards `tensor` holds the sum (Avg: mean) of every rank's values rounded to
  /// `wire`, itself rounded to `wire`, and the same bits on every rank. Raises flame::Error where
  /// reduces_as() is false.
  virtual uint64_t all_reduce_overlapped_as(const Tensor& tensor, DType wire, ReduceOp op,
                                            const std::string& what = "",
                                            OverlapPriority priority = OverlapPriority::Normal);
  /// Whether all_reduce_overlapped_deferred(tensor, wire, ...) is available: f32 tensors sent as bf16,
  /// on the NCCL copy-engine all-reduce where reduces_as() holds, and on the MPI backend. Depends
  /// only on the tensor's dtype and size and the options, which the ranks agree on.
  virtual bool defers_mean(const Tensor& tensor, DType wire) const {
    (void)tensor;
    (void)wire;
    return false;
  }
  /// all_reduce_overlapped_as() without its last step (Note [deferred mean] in dist/communicator.cpp):
  /// every rank's `tensor` rounded to `wire` is gathered, and the reader computes the mean: DDP's
  /// fused step inside the optimizer's update (core/fused.h, Note [gradient slots]), anything else
  /// through write_deferred_mean(). Read the slots only after compute_wait(result.collective). They
  /// stay valid until the next deferred all-reduce with the same `key` (DDP: the bucket index) is
  /// issued, which, like every collective, is ordered after the compute stream's work issued
  /// before it; the communicator must outlive them. Raises flame::Error where defers_mean() is false.
  virtual DeferredMean all_reduce_overlapped_deferred(const Tensor& tensor, DType wire, ReduceOp op, size_t key,
                                                      const std::string& what = "",
                                                      OverlapPriority priority = OverlapPriority::Normal);
  /// Writes `mean`'s average into `out` (f32, contiguous, one slot row's numel) on the compute
  /// stream, without blocking the host: the bits all_reduce_overlapped_as() would have left in the
  /// tensor. Call it after compute_wait(mean.collective).
  virtual void write_deferred_mean(const DeferredMean& mean, const Tensor& out);
  /// Makes the compute stream wait for every collective issued so far, without blocking the host
  /// (nothing to do for a synchronous backend).
  virtual void compute_wait() {}
  /// Makes the compute stream wait for the overlapped all-reduce numbered `collective` and every
  /// collective issued before it (they complete in issue order), without blocking the host: work
  /// that needs only that result can start while later ones are still reduced.
  virtual void compute_wait(uint64_t collective) { (void)collective; }

  /// How many all-reduces took the NCCL communicator's one-shot kernel (Note [one-shot
  /// all-reduce]); 0 for other communicators.
  virtual uint64_t one_shot_all_reduces() const { return 0; }
  const ProcessGroup& group() const { return group_; }
  /// Where this communicator's tensors live: the CPU (MPI) or group().cuda_device() (NCCL).
  virtual Device device() const = 0;

 protected:
  explicit Communicator(const ProcessGroup& group) : group_(group) {}

  // Argument checks shared by the backends; `backend` ("MPI", "NCCL") names it in messages.
  /// A reduction of `dtype` with `reduce`: no bool, and Avg needs a floating dtype.
  static void check_reducible(const char* backend, const char* op, DType dtype, ReduceOp reduce);
  /// broadcast: root is a rank of the group.
  void check_root(int root) const;
  /// all_gather: same dtypes, output [W * n, ...] for input [n, ...].
  void check_all_gather(const Tensor& input, const Tensor& output) const;
  /// reduce_scatter: same dtypes, reducible, input dim 0 divisible by W, output input / W along dim 0.
  void check_reduce_scatter(const char* backend, const Tensor& input, const Tensor& output, ReduceOp op) const;

  ProcessGroup group_;
};

/// How the NCCL communicator's calls return (Note [NCCL timeouts]). Blocking (the default) returns
/// once the work is enqueued; NonBlocking returns at once and the communicator polls every call,
/// init included, until NCCL has issued it, which costs 60-140 us per collective on the 2x H200
/// machine (docs/PERFORMANCE.md). Both bound every wait by the timeout.
enum class NcclCalls { NonBlocking, Blocking };

/// How the NCCL communicator runs all_reduce_overlapped() (DDP's bucket all-reduces) on 2 ranks
/// (Note [copy-engine all-reduce] in dist/nccl_communicator.cpp).
enum class OverlapAllReduce {
  Ring,              // ncclAllReduce: NCCL's kernels, which hold SMs while backward runs
  CopyEngineGather,  // f32 tensors of at least overlap_carveout_min_bytes: each rank's tensor goes
                     // to the other on the copy engines, and a kernel sums the two in rank order
};

struct CommunicatorOptions {
  /// A collective that has not completed after this long raises (and the job is aborted).
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  NcclCalls nccl_calls = NcclCalls::Blocking;
  /// NCCL: at most this many CTAs (one SM each) per collective (ncclConfig_t::maxCTAs); 0 leaves
  /// it to NCCL (24 on the 2x H200 machine).
  int nccl_max_ctas = 0;
  /// NCCL, more than one rank: while overlapped all-reduces are in flight (from the first
  /// all_reduce_overlapped() of at least overlap_carveout_min_bytes to the compute_wait() or
  /// synchronize() after the last one), cuBLAS
  /// plans GEMMs for this many fewer SMs, leaving them to NCCL's kernels (Note [SM carve-out] in
  /// dist/nccl_communicator.cpp). 0: no carve-out; kAutoCarveout: a quarter of the device's SMs,
  /// at most 32 (32 on an H100 or H200, the best value measured there).
  static constexpr int kAutoCarveout = -1;
  int overlap_sm_carveout = kAutoCarveout;
  /// The carve-out starts at the first overlapped all-reduce of at least this many bytes (the bytes
  /// sent: a bf16 bucket counts half its f32 gradients): smaller
  /// ones (DDP's 1 MiB first bucket) finish within tens of microseconds and leave the GEMMs that
  /// follow them all SMs.
  size_t overlap_carveout_min_bytes = size_t{4} << 20;
  /// NCCL: the communication stream gets the device's highest priority, so NCCL's blocks are
  /// scheduled ahead of waiting compute blocks.
  bool high_priority_stream = false;
  /// NCCL: how overlapped all-reduces run. With CopyEngineGather NCCL's kernels hold no SMs while
  /// the gradients move, at the price of a device buffer of twice the largest such tensor and two
  /// memory passes (a copy, a sum kernel) over each. flame::Error at construction for more than 2
  /// ranks (an all-gather moves W/2 times a ring's bytes), NcclCalls::NonBlocking, NCCL older than
  /// 2.28, or ranks that disagree on it; at the first such all-reduce when NCCL has no symmetric
  /// memory. f32 tensors sent as bf16 (all_reduce_overlapped_as) go the same way in bf16 slots.
  /// Smaller tensors, other dtypes and every other collective still use the ring. The MPI backend
  /// ignores it.
  OverlapAllReduce overlap_all_reduce = OverlapAllReduce::Ring;
  /// On 2 ranks of one node whose GPUs map each other's memory, f32 all-reduces (all_reduce() and
  /// all_reduce_overlapped()) of at most this many bytes run as one kernel of FLAME's own, which
  /// reads the other rank's values over NVLink, instead of ncclAllReduce: lower latency for DDP's
  /// small buckets (Note [one-shot all-reduce] in dist/peer_all_reduce.h). Each rank holds twice
  /// this in device memory for it. 0 turns it off; at most 4 MiB. The ranks must agree (checked at
  /// construction); where either cannot map the other's memory, both log why and use NCCL.
  size_t one_shot_max_bytes = size_t{2} << 20;
};

/// MPI collectives on CPU tensors (the backend the whole distributed path is tested with on CI).
std::unique_ptr<Communicator> make_mpi_communicator(const ProcessGroup& group, CommunicatorOptions options = {});
/// NCCL collectives on CUDA tensors of group.cuda_device(), on their own stream; the unique id is
/// broadcast over MPI. Raises flame::Error in a build without CUDA.
std::unique_ptr<Communicator> make_nccl_communicator(const ProcessGroup& group, CommunicatorOptions options = {});
/// The communicator for tensors on `device`: NCCL for CUDA, MPI for the CPU.
std::unique_ptr<Communicator> make_communicator(const ProcessGroup& group, Device device,
                                                CommunicatorOptions options = {});

}  // namespace flame::dist
