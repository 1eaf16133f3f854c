#include "dist/collective_timeline.h"

#ifdef FLAME_WITH_CUDA

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "core/cuda/context.h"

namespace flame::dist::detail {

std::unique_ptr<CollectiveTimeline> CollectiveTimeline::from_environment(int rank) {
  const char* path = std::getenv("FLAME_NCCL_TIMELINE");
  if (path == nullptr || *path == '\0') return nullptr;
  return std::make_unique<CollectiveTimeline>(fmt::format("{}.rank{}", path, rank));
}

CollectiveTimeline::CollectiveTimeline(std::string path) : path_(std::move(path)) {
  spdlog::info("FLAME_NCCL_TIMELINE: this communicator's timeline goes to '{}' when it is destroyed", path_);
}

CollectiveTimeline::~CollectiveTimeline() {
  write();
  for (const Mark& m : marks_) cudaEventDestroy(m.event);
}

void CollectiveTimeline::discard() {
  if (!marks_.empty()) spdlog::warn("FLAME_NCCL_TIMELINE: a collective did not finish; '{}' not written", path_);
  for (const Mark& m : marks_) cudaEventDestroy(m.event);
  marks_.clear();
}

void CollectiveTimeline::mark(cudaStream_t stream, const char* stream_name, const char* mark,
                              const std::string& what) {
  if (marks_.size() >= kMaxMarks) {
    if (!full_) spdlog::warn("FLAME_NCCL_TIMELINE: {} marks recorded; recording stops here", kMaxMarks);
    full_ = true;
    return;
  }
  cudaEvent_t event = nullptr;
  FLAME_CUDA_CHECK(cudaEventCreate(&event));
  FLAME_CUDA_CHECK(cudaEventRecord(event, stream));
  marks_.push_back(Mark{event, stream_name, mark, what});
}

void CollectiveTimeline::write() const {
  if (marks_.empty()) return;
  if (cudaEventSynchronize(marks_.back().event) != cudaSuccess) {
    spdlog::error("FLAME_NCCL_TIMELINE: the device failed before the last mark; '{}' not written", path_);
    return;
  }
  std::FILE* file = std::fopen(path_.c_str(), "w");
  if (file == nullptr) {
    spdlog::error("FLAME_NCCL_TIMELINE: cannot write '{}'", path_);
    return;
  }
  for (const Mark& m : marks_) {
    float ms = 0.0f;
    // Marks on two streams complete out of order; each is timed against the first.
    if (cudaEventSynchronize(m.event) != cudaSuccess || cudaEventElapsedTime(&ms, marks_.front().event, m.event) != cudaSuccess)
      ms = -1.0f;
    fmt::print(file, "{:.4f}\t{}\t{}\t{}\n", ms, m.stream_name, m.mark, m.what);
  }
  if (std::fclose(file) != 0) spdlog::error("FLAME_NCCL_TIMELINE: writing '{}' failed", path_);
}

}  // namespace flame::dist::detail

#endif  // FLAME_WITH_CUDA
