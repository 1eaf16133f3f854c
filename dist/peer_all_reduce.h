// Note [one-shot all-reduce]: on 2 ranks of one node whose GPUs reach each other's memory
// (NVLink or PCIe peer access), the NCCL communicator all-reduces small f32 tensors (at most
// CommunicatorOptions::one_shot_max_bytes, 2 MiB by default) with one kernel of its own instead of
// ncclAllReduce. Each rank owns a buffer shared with the other through CUDA IPC: a flag per block
// and two slots of one_shot_max_bytes. The kernel, on the communication stream, splits the tensor
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
// timeout (the watchdog has brought the job down, or synchronize() raised, by then), or at once
// when the communicator abandons the kernels (a failure, or destruction after one); it then writes
// nothing. Destruction after clean use exchanges one last pair of flags, with no data, so that no
// peer kernel still reads this rank's buffer when it is freed.
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
  /// IPC refused); each logs its reason. MPI waits are bounded by `timeout`.
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
  /// The last flag exchange, on `stream` after every launch, for a communicator going away after
  /// clean use: the other rank calls it too. Waits at most the timeout, or 10 s, for it (then
  /// abandons).
  void close(cudaStream_t stream);
  /// Makes every kernel still waiting for the peer give up at once, and close() do nothing. For a
  /// communicator that failed.
  void abandon();
  /// One-shot all-reduces launched so far.
  uint64_t calls() const { return seq_; }

 private:
  PeerAllReduce() = default;
  /// n values from `in` into `out` (n = 0: the flag exchange alone).
  cudaError_t launch_raw(const float* in, float* out, size_t n, float scale, cudaStream_t stream, bool urgent);

  int device_ = 0;
  size_t max_bytes_ = 0;   // takes() at most this
  size_t slot_bytes_ = 0;  // each slot: max_bytes_ rounded up to 4 KiB
  std::chrono::milliseconds timeout_{0};
  char* mine_ = nullptr;    // this rank's buffer: flags, then the two slots
  char* theirs_ = nullptr;  // the peer's, mapped through CUDA IPC
  unsigned int* abandoned_host_ = nullptr;    // pinned, mapped: nonzero makes waiting blocks give up
  unsigned int* abandoned_device_ = nullptr;  // the same word as the kernel sees it
  cudaKernel_t kernel_ = nullptr;
  int highest_priority_ = 0;
  uint64_t seq_ = 0;
  bool abandoned_ = false;
};

}  // namespace flame::dist::detail

#endif  // FLAME_WITH_CUDA
