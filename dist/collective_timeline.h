// A device-side timeline of the NCCL communicator's work, for finding where a step's time goes
// without a profiler (docs/dist.md, "Collective timeline"). Internal to dist/ (CUDA only).
//
// Note [collective timeline]: with FLAME_NCCL_TIMELINE=<path> in the environment, each NCCL
// communicator records a CUDA timing event at each point below and, when it is destroyed, writes
// them to <path>.rank<r> as tab-separated lines "<ms since the first mark>\t<stream>\t<mark>\t<what>":
//   issue     compute stream, when the collective is issued (its inputs are complete there);
//   begin     communication stream, once it has waited for those inputs;
//   staged    communication stream, the copy-engine all-reduce has written its own slot (a copy,
//             or the bf16 rounding);
//   gathered  communication stream, its all-gather done;
//   end       communication stream, the collective done;
//   wait      compute stream, past compute_wait() for the collective named (or "all").
// An event completes when the device reaches it in its stream, so "wait" is when work queued after
// the wait can start. At most kMaxMarks marks are kept (a warning says when recording stops). The
// events cost the host about a microsecond each; meant for a few hundred steps of a benchmark.
#pragma once

#ifdef FLAME_WITH_CUDA

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace flame::dist::detail {

class CollectiveTimeline {
 public:
  static constexpr size_t kMaxMarks = 200000;

  /// The timeline FLAME_NCCL_TIMELINE asks for (rank `rank`'s file), or null when it is unset.
  static std::unique_ptr<CollectiveTimeline> from_environment(int rank);

  explicit CollectiveTimeline(std::string path);
  /// Waits for the last mark and writes the file (a failure is logged, not thrown).
  ~CollectiveTimeline();
  CollectiveTimeline(const CollectiveTimeline&) = delete;
  CollectiveTimeline& operator=(const CollectiveTimeline&) = delete;

  /// Drops the marks without waiting for them (the device may never reach them: a collective
  /// hung or failed); nothing is written.
  void discard();

  /// Records a timing event on `stream` named `mark` ("issue", ...) for collective `what`;
  /// `stream_name` is "compute" or "comm".
  void mark(cudaStream_t stream, const char* stream_name, const char* mark, const std::string& what);

 private:
  struct Mark {
    cudaEvent_t event;
    const char* stream_name;
    const char* mark;
    std::string what;
  };
  void write() const;

  std::string path_;
  std::vector<Mark> marks_;
  bool full_ = false;
};

}  // namespace flame::dist::detail

#endif  // FLAME_WITH_CUDA
