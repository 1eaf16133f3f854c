// flame-train's checkpoint store: crash-safe checkpoint directories under one root, with retention.
//
// Note [checkpoint layout]
// <root>/step-<step, at least 8 digits, zero-padded>/ holds
//   model.safetensors      the module's state_dict
//   optimizer.safetensors  the optimizer's state_dict
//   state.json             the trainer's state: a JSON object given by the caller (epoch, loader
//                          positions, RNG states, config text, ...) to which the store adds
//                          "step" and "format" (kCheckpointFormat)
//   COMPLETE               written last; a directory without it is not a checkpoint
// A checkpoint is built in <root>/.tmp-step-<step>-<pid>/, every file and the directory fsync'ed,
// then renamed to its final name and <root> fsync'ed, so a crash at any point leaves either the
// whole new checkpoint or none of it, and never harms an existing one. Directories named .tmp-*
// are leftovers of interrupted saves and are never read as checkpoints.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "nn/module.h"

namespace flame::train {

/// The version written to state.json's "format"; load_checkpoint accepts only this one.
constexpr int64_t kCheckpointFormat = 1;

/// What one checkpoint holds (Note [checkpoint layout]).
struct CheckpointData {
  int64_t step = 0;
  nn::NamedTensors model;      // module.state_dict(); any device when saving, CPU when loaded
  nn::NamedTensors optimizer;  // optimizer.state_dict(); any device when saving, CPU when loaded
  /// The trainer's state: a JSON object (null counts as empty). On save it may hold "step" only
  /// equal to `step` and "format" only equal to kCheckpointFormat; loaded, it holds both.
  nlohmann::json state;
};

/// The checkpoints under one root directory (Note [checkpoint layout]).
class CheckpointStore {
 public:
  /// Checkpoints under `root`, keeping the newest `keep_last` (>= 1) after each save. Touches no
  /// file: `root` is created by the first save.
  CheckpointStore(std::string root, int64_t keep_last);

  /// Writes `data` atomically: into <root>/.tmp-step-XXXXXXXX-<pid>/, every file fsync'ed,
  /// COMPLETE written and fsync'ed, the directory fsync'ed, then rename()d to step-XXXXXXXX and
  /// <root> fsync'ed. Then deletes the oldest complete checkpoints beyond keep_last (never the one
  /// just written; a failed deletion is logged, not raised, as the save itself succeeded) and stale
  /// .tmp-* directories of this process. Creates <root> (and its parents) when missing.
  /// Overwriting an existing step-N replaces it: the new one is written, the old one renamed away,
  /// the new one renamed in, the old one removed (a crash in between leaves both as .tmp-*
  /// directories, and latest() falls back to the previous step).
  /// On any failure (an unwritable root, a full disk, an invalid `data.state`, ...) it removes its
  /// temporary directory, leaves every existing checkpoint as it was and raises flame::Error naming
  /// the path and the system error. Returns the checkpoint's directory.
  std::string save(const CheckpointData& data);

  /// The newest complete checkpoint's directory: the largest step whose directory holds COMPLETE
  /// and a state.json that parses with the directory's step. Incomplete and temporary directories
  /// are skipped with a spdlog warning. A missing root means no checkpoint (std::nullopt); a root
  /// that is not a readable directory raises flame::Error.
  std::optional<std::string> latest() const;
  /// The step of latest(), read from its directory name (nothing is loaded).
  std::optional<int64_t> latest_step() const;

  /// Every complete checkpoint directory (as latest() judges them), oldest first.
  std::vector<std::string> list() const;

  const std::string& root() const { return root_; }
  int64_t keep_last() const { return keep_last_; }

 private:
  /// One complete checkpoint found under the root.
  struct Found {
    int64_t step;
    std::string dir;
  };
  /// The complete checkpoints by ascending step; warns about skipped directories when asked.
  enum class SkippedLog { kWarn, kQuiet };
  std::vector<Found> scan(SkippedLog log) const;
  /// Deletes the oldest complete checkpoints beyond keep_last_, sparing `just_saved`.
  void apply_retention(const std::string& just_saved) const;
  /// Deletes <root>/.tmp-* directories whose name ends in -<this process's pid>.
  void remove_stale_temporaries() const;

  std::string root_;
  int64_t keep_last_;
};

/// Loads the checkpoint directory `dir` (tensors on the CPU; state as stored, with "step" and
/// "format"). Raises flame::Error naming the file for a missing COMPLETE marker, a missing or
/// corrupt file, or a state.json that is not an object or whose "step" (an integer >= 0) or
/// "format" (kCheckpointFormat) is wrong.
CheckpointData load_checkpoint(const std::string& dir);

/// The directory name of `step`'s checkpoint: "step-" and the step, zero-padded to 8 digits.
std::string checkpoint_dir_name(int64_t step);

/// True for a name a CheckpointStore writes under its root: a checkpoint directory
/// (checkpoint_dir_name) or a temporary one (".tmp-...").
bool is_checkpoint_entry(const std::string& name);

}  // namespace flame::train
