#include "launch/train/checkpoint.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <filesystem>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "core/file_io.h"
#include "nn/safetensors.h"

namespace flame::train {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kCompleteFile = "COMPLETE";
constexpr const char* kTempPrefix = ".tmp-";

using io::errno_text;
using io::fsync_directory;

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

/// "-<pid>": the suffix of this process's temporary directories.
std::string pid_suffix() { return fmt::format("-{}", ::getpid()); }

/// Creates `path` (which must not exist) holding `bytes`, fsync'ed.
void write_synced_file(const std::string& path, const std::string& bytes) {
  io::File file(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  FLAME_CHECK(file.is_open(), "cannot create '{}': {}", path, errno_text());
  io::write_all(file.get(), bytes.data(), bytes.size(), path);
  io::sync_and_close(file, path);
}

/// Whether `path` exists (as anything, links not followed); raises for errors other than ENOENT.
bool path_exists(const std::string& path) {
  struct stat info {};
  if (::lstat(path.c_str(), &info) == 0) return true;
  FLAME_CHECK(errno == ENOENT, "cannot inspect '{}': {}", path, errno_text());
  return false;
}

/// Removes `path` and everything under it; raises naming the path on failure.
void remove_tree(const std::string& path) {
  std::error_code error;
  fs::remove_all(path, error);
  FLAME_CHECK(!error, "cannot remove '{}': {}", path, error.message());
}

/// The step of a checkpoint directory name (exactly checkpoint_dir_name(step)), or nullopt.
std::optional<int64_t> parse_dir_name(const std::string& name) {
  constexpr std::string_view kPrefix = "step-";
  if (name.size() <= kPrefix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0) return std::nullopt;
  int64_t step = 0;
  const char* begin = name.data() + kPrefix.size();
  const char* end = name.data() + name.size();
  const auto [last, error] = std::from_chars(begin, end, step);
  if (error != std::errc() || last != end || step < 0 || checkpoint_dir_name(step) != name) return std::nullopt;
  return step;
}

/// state.json of checkpoint directory `dir`, validated (Note [checkpoint layout]).
json read_state(const std::string& dir) {
  const std::string path = join(dir, kStateFile);
  const std::string text = io::read_whole_file(path);
  json state;
  try {
    state = json::parse(text);
  } catch (const json::exception& error) {
    FLAME_FAIL("'{}' is not valid JSON ({}); the checkpoint is corrupt", path, error.what());
  }
  FLAME_CHECK(state.is_object(), "'{}' must hold a JSON object, got {}", path, state.type_name());
  FLAME_CHECK(state.contains("format") && state["format"].is_number_integer() &&
                  state["format"].get<int64_t>() == kCheckpointFormat,
              "'{}' has \"format\" {}, but this FLAME reads only checkpoint format {}", path,
              state.contains("format") ? state["format"].dump() : "missing", kCheckpointFormat);
  FLAME_CHECK(state.contains("step") && state["step"].is_number_integer() && state["step"].get<int64_t>() >= 0,
              "'{}' has \"step\" {}; expected an integer >= 0", path,
              state.contains("step") ? state["step"].dump() : "missing");
  return state;
}

/// The caller's state with "step" and "format" added; raises when they are present and differ.
json state_to_write(const CheckpointData& data) {
  FLAME_CHECK(data.state.is_null() || data.state.is_object(),
              "CheckpointStore::save: CheckpointData::state must be a JSON object (or null), got {}",
              data.state.type_name());
  json state = data.state.is_null() ? json::object() : data.state;
  FLAME_CHECK(!state.contains("step") || state["step"] == json(data.step),
              "CheckpointStore::save: state holds \"step\" {} but CheckpointData::step is {}; drop the key or make "
              "them equal",
              state["step"].dump(), data.step);
  FLAME_CHECK(!state.contains("format") || state["format"] == json(kCheckpointFormat),
              "CheckpointStore::save: state holds \"format\" {}, but the store writes format {}; drop the key",
              state.contains("format") ? state["format"].dump() : "", kCheckpointFormat);
  state["step"] = data.step;
  state["format"] = kCheckpointFormat;
  return state;
}

/// A directory that is removed on destruction unless released.
class TempDirectory {
 public:
  explicit TempDirectory(std::string path) : path_(std::move(path)) {}
  ~TempDirectory() {
    if (path_.empty()) return;
    std::error_code error;
    fs::remove_all(path_, error);
    if (error) spdlog::warn("CheckpointStore: could not remove temporary directory '{}': {}", path_, error.message());
  }
  TempDirectory(const TempDirectory&) = delete;
  TempDirectory& operator=(const TempDirectory&) = delete;
  void release() { path_.clear(); }

 private:
  std::string path_;
};

/// Writes the files of `data` into the new directory `dir`, each fsync'ed, COMPLETE last, and then
/// fsync's `dir` (Note [checkpoint layout]).
void write_checkpoint_files(const std::string& dir, const CheckpointData& data, const json& state) {
  nn::save_safetensors(join(dir, kModelFile), data.model);
  nn::save_safetensors(join(dir, kOptimizerFile), data.optimizer);
  write_synced_file(join(dir, kStateFile), state.dump(2) + "\n");
  write_synced_file(join(dir, kCompleteFile), fmt::format("step {}\n", data.step));
  fsync_directory(dir);
}

/// Creates `root` and its parents when missing; fsync's the parent of a newly created root.
void ensure_root(const std::string& root) {
  std::error_code error;
  const bool created = fs::create_directories(root, error);
  FLAME_CHECK(!error, "cannot create the checkpoint root '{}': {}", root, error.message());
  struct stat info {};
  FLAME_CHECK(::stat(root.c_str(), &info) == 0 && S_ISDIR(info.st_mode),
              "the checkpoint root '{}' is not a directory; give a directory path", root);
  if (!created) return;
  fs::path absolute = fs::absolute(root, error);
  FLAME_CHECK(!error, "cannot resolve the checkpoint root '{}': {}", root, error.message());
  if (!absolute.has_filename()) absolute = absolute.parent_path();  // "dir/" names dir
  fsync_directory(absolute.parent_path().string());
}

/// Moves the finished `temp` directory to `final_dir`, replacing an existing one there: the old one
/// is renamed to `aside` first, and renamed back if the move fails. Returns whether `aside` holds
/// an old checkpoint to delete.
bool move_into_place(const std::string& temp, const std::string& final_dir, const std::string& aside) {
  const bool replacing = path_exists(final_dir);
  if (replacing) {
    if (path_exists(aside)) remove_tree(aside);
    FLAME_CHECK(::rename(final_dir.c_str(), aside.c_str()) == 0, "cannot rename the old '{}' to '{}': {}", final_dir,
                aside, errno_text());
  }
  if (::rename(temp.c_str(), final_dir.c_str()) != 0) {
    const std::string reason = errno_text();
    if (replacing && ::rename(aside.c_str(), final_dir.c_str()) != 0) {
      FLAME_FAIL("cannot rename '{}' to '{}': {}; and the old checkpoint could not be renamed back from '{}': {}", temp,
                 final_dir, reason, aside, errno_text());
    }
    FLAME_FAIL("cannot rename '{}' to '{}': {}", temp, final_dir, reason);
  }
  return replacing;
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  FLAME_CHECK(step >= 0, "checkpoint steps must be >= 0, got {}", step);
  return fmt::format("step-{:08d}", step);
}

bool is_checkpoint_entry(const std::string& name) {
  return parse_dir_name(name).has_value() || name.rfind(kTempPrefix, 0) == 0;
}

CheckpointStore::CheckpointStore(std::string root, int64_t keep_last) : root_(std::move(root)), keep_last_(keep_last) {
  FLAME_CHECK(!root_.empty(), "CheckpointStore: the checkpoint root must be a non-empty directory path");
  FLAME_CHECK(keep_last_ >= 1, "CheckpointStore('{}'): keep_last must be at least 1, got {}", root_, keep_last_);
}

std::string CheckpointStore::save(const CheckpointData& data) {
  FLAME_CHECK(data.step >= 0, "CheckpointStore::save: the step must be >= 0, got {}", data.step);
  const json state = state_to_write(data);
  const std::string name = checkpoint_dir_name(data.step);
  const std::string final_dir = join(root_, name);
  const std::string temp = join(root_, kTempPrefix + name + pid_suffix());
  const std::string aside = join(root_, kTempPrefix + std::string("replaced-") + name + pid_suffix());
  bool replaced = false;
  try {
    ensure_root(root_);
    if (path_exists(temp)) remove_tree(temp);
    FLAME_CHECK(::mkdir(temp.c_str(), 0755) == 0, "cannot create directory '{}': {}", temp, errno_text());
    TempDirectory guard(temp);
    write_checkpoint_files(temp, data, state);
    replaced = move_into_place(temp, final_dir, aside);
    guard.release();
    fsync_directory(root_);
  } catch (const Error& error) {
    throw Error(fmt::format("CheckpointStore: saving step {} to '{}' failed; existing checkpoints are unchanged: {}",
                            data.step, final_dir, error.what()));
  }
  if (replaced) {
    std::error_code error;
    fs::remove_all(aside, error);
    if (error)
      spdlog::warn("CheckpointStore: could not remove the replaced checkpoint '{}': {}", aside, error.message());
  }
  apply_retention(final_dir);
  remove_stale_temporaries();
  return final_dir;
}

std::optional<std::string> CheckpointStore::latest() const {
  const std::vector<Found> found = scan(SkippedLog::kWarn);
  if (found.empty()) return std::nullopt;
  return found.back().dir;
}

std::optional<int64_t> CheckpointStore::latest_step() const {
  const std::vector<Found> found = scan(SkippedLog::kWarn);
  if (found.empty()) return std::nullopt;
  return found.back().step;
}

std::vector<std::string> CheckpointStore::list() const {
  std::vector<std::string> dirs;
  for (const Found& f : scan(SkippedLog::kQuiet)) dirs.push_back(f.dir);
  return dirs;
}

std::vector<CheckpointStore::Found> CheckpointStore::scan(SkippedLog log) const {
  struct stat info {};
  if (::stat(root_.c_str(), &info) != 0) {
    FLAME_CHECK(errno == ENOENT, "cannot inspect the checkpoint root '{}': {}", root_, errno_text());
    return {};
  }
  FLAME_CHECK(S_ISDIR(info.st_mode), "the checkpoint root '{}' is not a directory", root_);
  std::error_code error;
  fs::directory_iterator it(root_, error);
  FLAME_CHECK(!error, "cannot list the checkpoint root '{}': {}", root_, error.message());

  std::vector<Found> found;
  for (; it != fs::directory_iterator(); it.increment(error)) {
    FLAME_CHECK(!error, "cannot list the checkpoint root '{}': {}", root_, error.message());
    const std::string name = it->path().filename().string();
    const std::string dir = it->path().string();
    if (name.rfind(kTempPrefix, 0) == 0) {
      if (log == SkippedLog::kWarn)
        spdlog::warn("CheckpointStore: ignoring '{}', a temporary directory left by an interrupted save", dir);
      continue;
    }
    const std::optional<int64_t> step = parse_dir_name(name);
    if (!step || !it->is_directory(error)) continue;
    if (!fs::exists(join(dir, kCompleteFile), error)) {
      if (log == SkippedLog::kWarn)
        spdlog::warn("CheckpointStore: ignoring '{}': it has no {} marker (its save did not finish)", dir,
                     kCompleteFile);
      continue;
    }
    try {
      const int64_t state_step = read_state(dir)["step"].get<int64_t>();
      FLAME_CHECK(state_step == *step, "'{}' has \"step\" {}, but the directory is named for step {}",
                  join(dir, kStateFile), state_step, *step);
    } catch (const Error& bad_state) {
      if (log == SkippedLog::kWarn) spdlog::warn("CheckpointStore: ignoring '{}': {}", dir, bad_state.what());
      continue;
    }
    found.push_back({*step, dir});
  }
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.step < b.step; });
  return found;
}

void CheckpointStore::apply_retention(const std::string& just_saved) const {
  const std::vector<Found> found = scan(SkippedLog::kQuiet);
  auto excess = static_cast<int64_t>(found.size()) - keep_last_;
  for (const Found& f : found) {
    if (excess <= 0) break;
    if (f.dir == just_saved) continue;
    // Unlinking COMPLETE first makes a deletion cut short by a crash an incomplete directory, never
    // a checkpoint with files missing.
    std::error_code error;
    fs::remove(join(f.dir, kCompleteFile), error);
    if (!error) fs::remove_all(f.dir, error);
    if (error)
      spdlog::warn("CheckpointStore: could not delete old checkpoint '{}' (keep_last = {}): {}", f.dir, keep_last_,
                   error.message());
    --excess;
  }
}

void CheckpointStore::remove_stale_temporaries() const {
  const std::string suffix = pid_suffix();
  std::vector<fs::path> stale;  // collected first: the directory is not changed while it is read
  std::error_code error;
  for (fs::directory_iterator it(root_, error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(kTempPrefix, 0) == 0 && name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      stale.push_back(it->path());
  }
  if (error) spdlog::warn("CheckpointStore: could not list '{}' for stale temporaries: {}", root_, error.message());
  for (const fs::path& path : stale) {
    fs::remove_all(path, error);
    if (error)
      spdlog::warn("CheckpointStore: could not remove stale temporary directory '{}': {}", path.string(),
                   error.message());
  }
}

CheckpointData load_checkpoint(const std::string& dir) {
  try {
    const std::string complete = join(dir, kCompleteFile);
    FLAME_CHECK(path_exists(complete),
                "'{}' is missing, so '{}' is not a complete checkpoint (its save was interrupted, or it is not a "
                "checkpoint directory)",
                complete, dir);
    CheckpointData data;
    data.state = read_state(dir);
    data.step = data.state["step"].get<int64_t>();
    data.model = nn::load_safetensors(join(dir, kModelFile));
    data.optimizer = nn::load_safetensors(join(dir, kOptimizerFile));
    return data;
  } catch (const Error& error) {
    throw Error(fmt::format("load_checkpoint('{}'): {}", dir, error.what()));
  }
}

}  // namespace flame::train
