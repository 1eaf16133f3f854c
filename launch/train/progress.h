// flame-train's live progress line on rank 0: step, epoch, loss, lr, samples/s and ETA. On a
// terminal the line is rewritten in place ("\r"); otherwise (a log file, Slurm's output) one line
// is printed per update.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace flame::train {

class Progress {
 public:
  /// `enabled` false makes every call a no-op (other ranks, log.progress = false).
  Progress(int64_t total_steps, int64_t first_step, bool enabled);
  /// Shows the state after `step` (of total_steps); samples/s is measured since construction.
  void update(int64_t step, int64_t epoch, double loss, double lr, int64_t samples_per_step);
  /// Prints a message on its own line (e.g. an evaluation) without garbling the progress line.
  void note(const std::string& message);
  /// Ends the progress line.
  void finish();

  /// "1:02:03" / "2:03" for a number of seconds (tested).
  static std::string format_duration(double seconds);

 private:
  using Clock = std::chrono::steady_clock;
  int64_t total_steps_;
  int64_t first_step_;
  bool enabled_;
  bool terminal_;
  bool line_open_ = false;
  Clock::time_point start_;
};

}  // namespace flame::train
