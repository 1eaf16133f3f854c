#include "dist/collective_timeline.h"

#ifdef FLAME_WITH_CUDA

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <utility>

namespace flame::dist::detail {

std::unique_ptr<CollectiveTimeline> CollectiveTimeline::from_environment(int rank) {
  const char* path = std::getenv("FLAME_NCCL_TIMELINE");
  if (path == nullptr || *path == '\0') return nullptr;
  static std::atomic<int> created{0};  // communicators with a timeline in this process
  const int k = ++created;
  return std::make_unique<CollectiveTimeline>(k == 1 ? fmt::format("{}.rank{}", path, rank)
                                                     : fmt::format("{}.rank{}.{}", path, rank, k));
}

CollectiveTimeline::CollectiveTimeline(std::string path) : path_(std::move(path)) {
  spdlog::info("FLAME_NCCL_TIMELINE: this communicator's timeline goes to '{}' when it is destroyed", path_);
}

CollectiveTimeline::~CollectiveTimeline() {
  try {
    if (!failed_) write();
  } catch (const std::exception& e) {  // e.g. fmt's error when the disk is full
    spdlog::error("FLAME_NCCL_TIMELINE: writing '{}' failed: {}", path_, e.what());
  }
  release();
}

void CollectiveTimeline::release() noexcept {
  for (const Mark& m : marks_) cudaEventDestroy(m.event);
  marks_.clear();
}

void CollectiveTimeline::discard() {
  if (!marks_.empty()) spdlog::warn("FLAME_NCCL_TIMELINE: a collective did not finish; '{}' not written", path_);
  failed_ = true;
  release();
}

void CollectiveTimeline::mark(cudaStream_t stream, const char* stream_name, const char* mark,
                              const std::string& what) noexcept {
  if (failed_ || full_) return;
  if (marks_.size() >= kMaxMarks) {
    spdlog::warn("FLAME_NCCL_TIMELINE: {} marks recorded; recording stops here", kMaxMarks);
    full_ = true;
    return;
  }
  cudaEvent_t event = nullptr;
  cudaError_t status = cudaEventCreate(&event);
  if (status == cudaSuccess) status = cudaEventRecord(event, stream);
  if (status == cudaSuccess) {
    try {
      marks_.push_back(Mark{event, stream_name, mark, what});
      return;
    } catch (const std::exception&) {  // out of memory: give up the timeline, not the collective
      status = cudaErrorMemoryAllocation;
    }
  }
  if (event != nullptr) cudaEventDestroy(event);
  spdlog::error("FLAME_NCCL_TIMELINE: recording the '{}' mark of '{}' failed ({}); '{}' will not be written", mark,
                what, cudaGetErrorString(status), path_);
  failed_ = true;
}

void CollectiveTimeline::write() const {
  if (marks_.empty()) return;
  for (const Mark& m : marks_) {
    if (cudaEventSynchronize(m.event) != cudaSuccess) {
      spdlog::error("FLAME_NCCL_TIMELINE: the device failed before every mark was reached; '{}' not written", path_);
      return;
    }
  }
  std::string text;
  for (const Mark& m : marks_) {
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, marks_.front().event, m.event) != cudaSuccess) {
      spdlog::error("FLAME_NCCL_TIMELINE: timing the marks failed; '{}' not written", path_);
      return;
    }
    text += fmt::format("{:.4f}\t{}\t{}\t{}\n", ms, m.stream_name, m.mark, m.what);
  }
  std::FILE* file = std::fopen(path_.c_str(), "w");
  if (file == nullptr) {
    spdlog::error("FLAME_NCCL_TIMELINE: cannot create '{}'", path_);
    return;
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  if (std::fclose(file) != 0 || !written) spdlog::error("FLAME_NCCL_TIMELINE: writing '{}' failed", path_);
}

}  // namespace flame::dist::detail

#endif  // FLAME_WITH_CUDA
