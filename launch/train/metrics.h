// flame-train's per-step metrics as JSON Lines: one JSON object per line, one line per record.
//
// Note [metrics jsonl]
// A record is {"step": N, "time": T, "<name>": value, ...} with the keys in that order: `step` the
// training step (an integer), `time` the wall-clock time of the write in Unix seconds (a float, to
// the microsecond), then the scalars in the order given. Finite values are written as JSON numbers in
// the shortest form that reads back to the same double; NaN and the infinities, which JSON has no
// numbers for, are written as the strings "NaN", "Infinity" and "-Infinity" (which Python's float()
// reads back). The file is opened for appending, so a resumed run continues the file of the run it
// resumes. The resumed run first drops the records of steps after its checkpoint
// (drop_records_after): the run that stopped logged them, and the resumed run logs those steps again.
// A run that starts from scratch moves an earlier run's file aside (metrics.earlier-<time>.jsonl). Each
// record is flushed to the operating system as soon as it is written, so a crash of the process loses
// at most the line being written.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace flame::train {

/// Appends one JSON object per line to a file (Note [metrics jsonl]). Used by rank 0 only; not
/// thread-safe.
class JsonlWriter {
 public:
  /// Opens `path` for appending, creating it and any missing parent directories. Raises flame::Error
  /// naming the path when it cannot be opened (a parent that is a regular file, no permission, ...).
  explicit JsonlWriter(std::string path);

  /// Appends {"step": step, "time": <now>, name: value, ...} and flushes it. Names must be non-empty,
  /// distinct, and neither "step" nor "time"; step must be >= 0. Raises flame::Error naming the path
  /// when the write fails (a full disk, ...), and naming the scalar for a bad name.
  void write(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);

  /// The file being written.
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_;
};

/// Rewrites the metrics file `path` without its records of steps after `step`, and without a last
/// line cut short by a crash; atomically (a temporary file renamed over it). Returns how many lines
/// were dropped. A missing file drops nothing. Raises flame::Error naming the path when it cannot
/// be read or written.
int64_t drop_records_after(const std::string& path, int64_t step);

}  // namespace flame::train
