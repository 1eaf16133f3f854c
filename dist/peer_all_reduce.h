// Note [one-shot all-reduce]: on 2 ranks of one node whose GPUs reach each other's memory
// (NVLink or PCIe peer access), the NCCL communicator all-reduces small f32 tensors (at most
// CommunicatorOptions::one_shot_max_bytes: 2 MiB by default, 4 MiB at most) with one kernel of its
// own instead of ncclAllReduce. Each rank owns a buffer shared with the other through CUDA IPC: a
// flag per block and two slots of one_shot_max_bytes. The kernel, on the communication stream, splits the tensor
// into chunks of 8192 values, one per block; each block
//   1. copies its chunk into this rank's slot (of parity seq % 2) and keeps it in registers;
//   2. writes seq into the peer's flag for that block (a system-scope release after a fence), then
//      waits until its own flag, written by the peer's block, reaches seq (acquire);
//   3. reads the peer's chunk over NVLink and writes (mine + theirs) * scale.
// Float addition of two values commutes exactly, so both ranks hold the same bits. seq counts the
// communicator's one-shot all-reduces, the same on both ranks (they issue the same collectives). A
// rank overwrites a slot of parity p again two all-reduces later, in a kernel that starts only
// after its previous one finished, i.e. after the peer's next kernel signalled, which starts only
// after the peer finished reading that slot; flags only grow.
// Nothing waits forever: a block waiting for the peer gives up after twice the communicator's
// timeout, or at once when the communicator abandons the kernels (a failure, or destruction after
// one). One that gave up writes nothing and leaves its reason in a mapped word, which the
// communicator's watchdog and synchronize() raise, so a result that was not written never passes
// silently. A communicator destroyed after clean use sends a closing flag (seq with the top bit
// set, which no all-reduce accepts: a rank that issues one more all-reduce than the other sees
// that the other closed, and says so) and waits for the other's; then each unmaps the other's
// buffer and they meet in an MPI barrier before either frees its own (CUDA IPC memory must not be
// freed while another process maps it). A block waits only for the same block of the other rank.
// The grid is at most 128 blocks (4 MiB), and at most as many as both devices hold at once (the
// limit shrinks to that at creation); other work on a device finishes without them, so all of a
// kernel's blocks end up running together on each rank and meet.
// Which way a tensor goes depends on its dtype and size only (takes()), so both ranks choose alike;
// the ranks also agree on one_shot_max_bytes at construction and on whether both could map the
// other's buffer. Misaligned tensors (a view at an odd offset) take a scalar form of the kernel on
// that rank only. Measured on the 2x H200 (docs/PERFORMANCE.md, seventeenth run): 15 us against
// NCCL's 22 at 1.6 MiB, 16 against 30 at 2 MiB, the same 10.5 us at 75 KB.
#pragma once

#ifdef FLAME_WITH_CUDA

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "dist/communicator.h"

namespace flame::dist::detail {

class PeerAllReduce {
 public:
  /// Collective over MPI_COMM_WORLD, which holds exactly these 2 ranks (rank 0 and 1): allocates
  /// this rank's buffer on `device`, exchanges CUDA IPC handles and host names, and maps the
  /// peer's buffer. Returns null on both ranks when either could not (another node, no peer access,
  /// IPC refused); each logs its reason. MPI waits are bounded by `timeout`. max_bytes: 1 to 4 MiB.
  static std::unique_ptr<PeerAllReduce> create(int rank, int device, size_t max_bytes,
                                               std::chrono::milliseconds timeout);
  ~PeerAllReduce();
  PeerAllReduce(const PeerAllReduce&) = delete;
  PeerAllReduce& operator=(const PeerAllReduce&) = delete;

  /// Whether `tensor` goes this way: f32 and at most max_bytes (dtype and size only, so both ranks
  /// agree).
  bool takes(const Tensor& tensor) const;
  /// Enqueues the kernel on `stream` (at the device's highest priority when `urgent`): the
  /// contiguous f32 `tensor` becomes the sum of both ranks' tensors, times 1/2 for Avg. Returns the
  /// launch's status.
  cudaError_t launch(const Tensor& tensor, ReduceOp op, cudaStream_t stream, bool urgent);
  /// Why a kernel gave up (the other rank closed instead of joining, or it waited twice the
  /// timeout): its result was not written. Empty while none did. The communicator's watchdog and
  /// synchronize() raise it.
  std::string failure() const;
  /// For a communicator going away after clean use; the other rank calls it too, at the same point.
  /// Exchanges closing flags on `stream` after every launch (waiting at most the timeout), unmaps
  /// the other rank's buffer and meets it in an MPI barrier, so that neither frees a buffer the
  /// other still maps. When the other rank does not come, abandons instead.
  void close(cudaStream_t stream);
  /// Makes every kernel still waiting for the peer give up at once, and close() do nothing. For a
  /// communicator that failed.
  void abandon();
  /// One-shot all-reduces launched so far.
  uint64_t calls() const { return seq_; }

 private:
  PeerAllReduce() = default;
  /// n values from `in` into `out`; `closing` (n = 0): the closing flag exchange.
  cudaError_t launch_raw(const float* in, float* out, size_t n, float scale, cudaStream_t stream, bool urgent,
                         bool closing);
  /// Unmaps the other rank's buffer, then a bounded MPI barrier (skipped without MPI).
  void unmap_and_meet();

  int rank_ = 0;
  int device_ = 0;
  size_t max_bytes_ = 0;   // takes() at most this
  size_t slot_bytes_ = 0;  // each slot: max_bytes_ rounded up to 4 KiB
  std::chrono::milliseconds timeout_{0};
  char* mine_ = nullptr;    // this rank's buffer: flags, then the two slots
  char* theirs_ = nullptr;  // the peer's, mapped through CUDA IPC
  unsigned int* control_host_ = nullptr;    // pinned, mapped: [0] abandon (host), [1] why a kernel gave up
  unsigned int* control_device_ = nullptr;  // the same words as the kernel sees them
  cudaKernel_t kernel_ = nullptr;
  int highest_priority_ = 0;
  uint64_t seq_ = 0;
  bool abandoned_ = false;
};

}  // namespace flame::dist::detail

#endif  // FLAME_WITH_CUDA
