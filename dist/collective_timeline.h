// A device-side timeline of the NCCL communicator's work, for finding where a step's time goes
// without a profiler (docs/dist.md, "Collective timeline"). Internal to dist/ (CUDA only).
//
// Note [collective timeline]: with FLAME_NCCL_TIMELINE=<path> in the environment, each NCCL
// communicator records a CUDA timing event at each point below and, when it is destroyed after
// every collective finished, writes them to <path>.rank<r> (the process's first such communicator;
// later ones to <path>.rank<r>.<k>, k = 2, 3, ...) as tab-separated lines
// "<ms since the first mark>\t<stream>\t<mark>\t<what>":
//   issue     compute stream, when the collective is issued (its inputs are complete there);
//   begin     communication stream, once it has waited for those inputs;
//   staged    communication stream, the copy-engine all-reduce has written its own slot (a copy,
//             or the bf16 rounding);
//   gathered  communication stream, its all-gather done;
//   end       communication stream, the collective done;
//   wait      compute stream, past compute_wait() for the collective named ("all" for every one;
//             "collective <n>" when it is older than the last 64 issued).
// An event completes when the device reaches it in its stream, so "wait" is when work queued after
// the wait can start. Every mark is recorded after "issue" of the first collective in stream order,
// so no time is negative. Nothing is written when a collective failed or did not finish, or when
// recording an event failed (logged). At most kMaxMarks marks are kept (a warning says when
// recording stops). The events cost the host about a microsecond each; meant for a few hundred
// steps of a benchmark, not for production runs.
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
  /// Writes the file (waiting for every mark) unless discard() ran or a mark failed; a failure to
  /// write is logged, never thrown.
  ~CollectiveTimeline();
  CollectiveTimeline(const CollectiveTimeline&) = delete;
  CollectiveTimeline& operator=(const CollectiveTimeline&) = delete;

  /// Drops the marks without waiting for them (the device may never reach them: a collective
  /// hung or failed); nothing is written.
  void discard();

  /// Records a timing event on `stream` named `mark` ("issue", ...) for collective `what`;
  /// `stream_name` is "compute" or "comm". Never throws: a CUDA error is logged and ends the
  /// recording (nothing is written then), so a collective in progress is never interrupted.
  void mark(cudaStream_t stream, const char* stream_name, const char* mark, const std::string& what) noexcept;

 private:
  struct Mark {
    cudaEvent_t event;
    const char* stream_name;
    const char* mark;
    std::string what;
  };
  void write() const;
  void release() noexcept;

  std::string path_;
  std::vector<Mark> marks_;
  bool full_ = false;
  bool failed_ = false;
};

}  // namespace flame::dist::detail

#endif  // FLAME_WITH_CUDA
