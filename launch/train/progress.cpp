#include "launch/train/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace flame::train {

Progress::Progress(int64_t total_steps, int64_t first_step, bool enabled)
    : total_steps_(total_steps),
      first_step_(first_step),
      enabled_(enabled),
      terminal_(isatty(fileno(stderr)) != 0),
      start_(Clock::now()) {}

std::string Progress::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{}:{:02d}", s / 60, s % 60);
}

void Progress::update(int64_t step, int64_t epoch, double loss, double lr, int64_t samples_per_step) {
  if (!enabled_) return;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const int64_t done = step - first_step_;
  const double rate = elapsed > 0 ? static_cast<double>(done * samples_per_step) / elapsed : 0.0;
  const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_steps_ - step) : NAN;
  const std::string line =
      fmt::format("step {}/{} ({:.0f}%)  epoch {}  loss {:.4f}  lr {:.3g}  {:.0f} samples/s  ETA {}", step,
                  total_steps_, 100.0 * static_cast<double>(step) / static_cast<double>(total_steps_), epoch, loss, lr,
                  rate, format_duration(eta));
  if (terminal_) {
    fmt::print(stderr, "\r{:<100}", line);
    line_open_ = true;
  } else {
    fmt::print(stderr, "{}\n", line);
  }
  std::fflush(stderr);
}

void Progress::note(const std::string& message) {
  if (!enabled_) return;
  if (line_open_) fmt::print(stderr, "\n");
  line_open_ = false;
  fmt::print(stderr, "{}\n", message);
  std::fflush(stderr);
}

void Progress::finish() {
  if (!enabled_ || !line_open_) return;
  fmt::print(stderr, "\n");
  line_open_ = false;
  std::fflush(stderr);
}

}  // namespace flame::train
