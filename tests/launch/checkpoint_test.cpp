// CheckpointStore and load_checkpoint: round trips, latest() skipping incomplete and temporary
// directories, retention, overwriting a step, an unwritable root, a full disk (RLIMIT_FSIZE in a
// forked child), and corrupt or missing files named in load errors.
#include "launch/train/checkpoint.h"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <limits>
#include <sstream>

#include "core/ops.h"
#include "support/test_support.h"

namespace flame::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::raises_error;
using test::tensors_identical;

using test::TempDir;
using test::write_file;

/// The sorted names of the entries of `dir`.
std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

/// A checkpoint with tensors of several dtypes whose values depend on `step`, and a nested state.
CheckpointData make_data(int64_t step) {
  CheckpointData data;
  data.step = step;
  const double s = static_cast<double>(step);
  data.model = {{"0.weight", test::make_tensor({s, 0.5, -1.25, 2.0, 3.5, -s}, {2, 3}, kF32)},
                {"0.bias", test::make_tensor({1.0 + s, -2.0}, {2}, kF64)},
                {"count", test::make_tensor({s}, {}, kI64)}};
  data.optimizer = {{"0.weight.exp_avg", test::make_tensor({0.1, 0.2, 0.3, 0.4, 0.5, s}, {2, 3}, kF32)},
                    {"0.bias.mask", test::make_tensor({1.0, 0.0}, {2}, kBool)}};
  data.state = {{"epoch", step / 10},
                {"loader", {{"position", step * 64}, {"order", {3, 1, 2}}}},
                {"rng", {{"cpu", std::numeric_limits<uint64_t>::max() - static_cast<uint64_t>(step)}}},
                {"config", "[model]\nname = \"mlp\"\n"}};
  return data;
}

/// `data.state` as load_checkpoint returns it: with the store's "step" and "format".
json stored_state(const CheckpointData& data) {
  json state = data.state;
  state["step"] = data.step;
  state["format"] = kCheckpointFormat;
  return state;
}

void expect_same(const nn::NamedTensors& actual, const nn::NamedTensors& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_EQ(actual[i].first, expected[i].first);
    EXPECT_TRUE(tensors_identical(actual[i].second, expected[i].second)) << actual[i].first;
  }
}

void expect_loads_as(const std::string& dir, const CheckpointData& expected) {
  const CheckpointData loaded = load_checkpoint(dir);
  EXPECT_EQ(loaded.step, expected.step);
  expect_same(loaded.model, expected.model);
  expect_same(loaded.optimizer, expected.optimizer);
  EXPECT_EQ(loaded.state, stored_state(expected));
}

/// Routes spdlog's default logger into a string for the test's lifetime.
class CapturedLog {
 public:
  CapturedLog() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("captured", sink));
  }
  ~CapturedLog() { spdlog::set_default_logger(previous_); }
  std::string text() const { return stream_.str(); }

 private:
  std::shared_ptr<spdlog::logger> previous_;
  std::ostringstream stream_;
};

TEST(CheckpointDirName, PadsToEightDigits) {
  EXPECT_EQ(checkpoint_dir_name(0), "step-00000000");
  EXPECT_EQ(checkpoint_dir_name(42), "step-00000042");
  EXPECT_EQ(checkpoint_dir_name(123456789), "step-123456789");
  EXPECT_TRUE(raises_error([] { checkpoint_dir_name(-1); }, {"-1", ">= 0"}));
}

TEST(CheckpointStore, RoundTripKeepsTensorsAndState) {
  TempDir tmp;
  const std::string root = tmp.file("run/checkpoints");  // parents created by save
  CheckpointStore store(root, 3);
  const CheckpointData data = make_data(42);
  const std::string dir = store.save(data);
  EXPECT_EQ(dir, (fs::path(root) / "step-00000042").string());
  EXPECT_EQ(entries(dir),
            (std::vector<std::string>{"COMPLETE", "model.safetensors", "optimizer.safetensors", "state.json"}));
  EXPECT_EQ(entries(root), std::vector<std::string>{"step-00000042"});
  expect_loads_as(dir, data);
  EXPECT_EQ(store.latest(), dir);
  EXPECT_EQ(store.list(), std::vector<std::string>{dir});
}

TEST(CheckpointStore, RootWithTrailingSlash) {
  TempDir tmp;
  CheckpointStore store(tmp.file("new/ckpt/"), 1);
  const std::string dir = store.save(make_data(3));
  EXPECT_EQ(fs::path(dir), fs::path(tmp.file("new/ckpt/step-00000003")));
  EXPECT_EQ(store.latest(), dir);
}

TEST(CheckpointStore, SaveAcceptsNullStateAndMatchingStoreKeys) {
  TempDir tmp;
  CheckpointStore store(tmp.file("ckpt"), 1);
  CheckpointData data = make_data(7);
  data.state = nullptr;
  EXPECT_EQ(load_checkpoint(store.save(data)).state, (json{{"step", 7}, {"format", kCheckpointFormat}}));
  // A loaded checkpoint saves again unchanged: its state already holds the same step and format.
  const CheckpointData loaded = load_checkpoint(store.save(make_data(8)));
  const CheckpointData again = load_checkpoint(store.save(loaded));
  EXPECT_EQ(again.state, loaded.state);
}

TEST(CheckpointStore, SaveRejectsInvalidData) {
  TempDir tmp;
  CheckpointStore store(tmp.file("ckpt"), 2);
  CheckpointData data = make_data(3);
  data.state = json::array({1, 2});
  EXPECT_TRUE(raises_error([&] { store.save(data); }, {"state must be a JSON object", "array"}));
  data.state = {{"step", 4}};
  EXPECT_TRUE(raises_error([&] { store.save(data); }, {"\"step\" 4", "CheckpointData::step is 3"}));
  data.state = {{"format", 2}};
  EXPECT_TRUE(raises_error([&] { store.save(data); }, {"\"format\" 2", "format 1"}));
  data = make_data(-5);
  EXPECT_TRUE(raises_error([&] { store.save(data); }, {"step must be >= 0", "-5"}));
  EXPECT_FALSE(fs::exists(tmp.file("ckpt")));  // nothing was written
}

TEST(CheckpointStore, ConstructorRejectsBadArguments) {
  EXPECT_TRUE(raises_error([] { CheckpointStore("/tmp/x", 0); }, {"keep_last must be at least 1", "got 0"}));
  EXPECT_TRUE(raises_error([] { CheckpointStore("/tmp/x", -2); }, {"keep_last", "got -2"}));
  EXPECT_TRUE(raises_error([] { CheckpointStore("", 1); }, {"non-empty"}));
}

TEST(CheckpointStore, LatestSkipsIncompleteTemporaryAndCorruptDirectories) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  CheckpointStore store(root, 10);
  EXPECT_EQ(store.latest(), std::nullopt);  // a missing root is no checkpoint
  EXPECT_TRUE(store.list().empty());

  const std::string dir1 = store.save(make_data(1));
  const std::string dir3 = store.save(make_data(3));
  // A newer directory without COMPLETE, as a save cut short by hand would leave.
  const std::string incomplete = store.save(make_data(9));
  fs::remove(fs::path(incomplete) / "COMPLETE");
  // A newer temporary directory holding every file.
  fs::copy(dir3, fs::path(root) / ".tmp-step-00000010-12345");
  // A newer complete directory whose state.json does not parse, and one whose step disagrees.
  fs::copy(dir3, fs::path(root) / "step-00000011");
  write_file(root + "/step-00000011/state.json", "{\"step\": 11,");
  fs::copy(dir3, fs::path(root) / "step-00000012");
  // Names that are not checkpoints at all.
  fs::create_directory(fs::path(root) / "step-12");
  write_file(root + "/notes.txt", "hello");

  CapturedLog log;
  EXPECT_EQ(store.latest(), dir3);
  EXPECT_EQ(store.list(), (std::vector<std::string>{dir1, dir3}));
  const std::string warnings = log.text();
  EXPECT_NE(warnings.find("step-00000009': it has no COMPLETE marker"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find(".tmp-step-00000010-12345', a temporary directory"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("step-00000011/state.json' is not valid JSON"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("named for step 12"), std::string::npos) << warnings;
}

TEST(CheckpointStore, LatestOrdersStepsNumerically) {
  TempDir tmp;
  CheckpointStore store(tmp.file("ckpt"), 5);
  const std::string small = store.save(make_data(99999999));
  const std::string large = store.save(make_data(100000000));  // "step-1..." sorts before "step-9..." as text
  EXPECT_EQ(store.latest(), large);
  EXPECT_EQ(store.list(), (std::vector<std::string>{small, large}));
}

TEST(CheckpointStore, KeepsTheLastK) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  CheckpointStore store(root, 2);
  for (int64_t step = 1; step <= 5; ++step) store.save(make_data(step * 100));
  EXPECT_EQ(entries(root), (std::vector<std::string>{"step-00000400", "step-00000500"}));
  expect_loads_as(root + "/step-00000400", make_data(400));

  // An incomplete directory is not a checkpoint: retention neither counts nor deletes it.
  fs::create_directory(fs::path(root) / "step-00000001");
  store.save(make_data(600));
  EXPECT_EQ(entries(root), (std::vector<std::string>{"step-00000001", "step-00000500", "step-00000600"}));
}

TEST(CheckpointStore, RetentionNeverDeletesTheCheckpointJustWritten) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  CheckpointStore store(root, 2);
  store.save(make_data(10));
  store.save(make_data(20));
  const std::string older = store.save(make_data(5));
  EXPECT_TRUE(fs::exists(older));
  EXPECT_EQ(entries(root), (std::vector<std::string>{"step-00000005", "step-00000020"}));
}

TEST(CheckpointStore, OverwritingAStepReplacesIt) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  CheckpointStore store(root, 3);
  store.save(make_data(1));
  store.save(make_data(2));
  CheckpointData replacement = make_data(1);
  replacement.model = {{"w", test::make_tensor({7.0, 8.0, 9.0}, {3}, kF32)}};
  replacement.state["epoch"] = 99;
  const std::string dir = store.save(replacement);
  expect_loads_as(dir, replacement);
  EXPECT_EQ(entries(root), (std::vector<std::string>{"step-00000001", "step-00000002"}));
  EXPECT_EQ(store.latest(), root + "/step-00000002");
}

TEST(CheckpointStore, RemovesStaleTemporariesOfThisProcessOnly) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  const std::string mine = fmt::format("{}/.tmp-step-00000007-{}", root, getpid());
  const std::string other = root + "/.tmp-step-00000007-999999999";
  fs::create_directories(mine);
  write_file(mine + "/model.safetensors", "half written");
  fs::create_directories(other);
  CheckpointStore store(root, 2);
  store.save(make_data(8));
  EXPECT_FALSE(fs::exists(mine));
  EXPECT_TRUE(fs::exists(other));  // may belong to a live process
}

TEST(CheckpointStore, UnwritableRootFailsNamingThePath) {
  TempDir tmp;
  // A root below a regular file cannot be created, even by root (where chmod does not block writes).
  write_file(tmp.file("file"), "not a directory");
  const std::string root = tmp.file("file/ckpt");
  CheckpointStore store(root, 2);
  EXPECT_TRUE(raises_error([&] { store.save(make_data(1)); },
                           {"saving step 1", "cannot create the checkpoint root '" + root + "'", "Not a directory"}));
  EXPECT_TRUE(raises_error([&] { store.latest(); }, {root, "Not a directory"}));

  // A root that is itself a regular file.
  CheckpointStore on_file(tmp.file("file"), 2);
  EXPECT_TRUE(raises_error([&] { on_file.save(make_data(1)); }, {tmp.file("file")}));
  EXPECT_TRUE(raises_error([&] { on_file.latest(); }, {tmp.file("file"), "is not a directory"}));
}

/// Exit statuses of the full-disk child.
enum ChildStatus : int {
  kFailedAsExpected = 0,
  kSaveSucceeded = 1,
  kWrongMessage = 2,
  kOtherException = 3,
  kSetupFailed = 4,
};

/// In a child process limited to `limit_bytes` per file, saves `data` to `root`; reports through
/// the exit status (ChildStatus) whether the save raised flame::Error holding every fragment, and
/// prints the error.
int save_with_file_size_limit(const std::string& root, const CheckpointData& data, rlim_t limit_bytes,
                              const std::vector<std::string>& fragments) {
  std::cout.flush();
  std::cerr.flush();
  const pid_t pid = fork();
  if (pid == 0) {
    int status = kSetupFailed;
    rlimit limit{};
    if (std::signal(SIGXFSZ, SIG_IGN) != SIG_ERR && getrlimit(RLIMIT_FSIZE, &limit) == 0) {
      limit.rlim_cur = limit_bytes;
      if (setrlimit(RLIMIT_FSIZE, &limit) == 0) {
        try {
          CheckpointStore(root, 2).save(data);
          status = kSaveSucceeded;
        } catch (const Error& error) {
          const std::string message = error.what();
          std::cerr << "child's error: " << message << "\n";
          const bool clear = std::all_of(fragments.begin(), fragments.end(), [&](const std::string& fragment) {
            return message.find(fragment) != std::string::npos;
          });
          status = clear ? kFailedAsExpected : kWrongMessage;
        } catch (...) {
          status = kOtherException;
        }
      }
    }
    std::cerr.flush();
    _exit(status);
  }
  int wait_status = 0;
  if (pid < 0 || waitpid(pid, &wait_status, 0) != pid || !WIFEXITED(wait_status)) return -1;
  return WEXITSTATUS(wait_status);
}

TEST(CheckpointStore, FullDiskLeavesNoTemporaryAndThePreviousCheckpointIntact) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  CheckpointStore store(root, 2);
  const CheckpointData previous = make_data(1);
  const std::string previous_dir = store.save(previous);

  CheckpointData big = make_data(2);
  big.model.emplace_back("big", ones({64, 1024}, TensorOptions(kF32, kCPU)));  // 256 KiB
  EXPECT_EQ(save_with_file_size_limit(
                root, big, 16 * 1024,
                {"saving step 2", "existing checkpoints are unchanged", "model.safetensors", "File too large"}),
            kFailedAsExpected);

  EXPECT_EQ(entries(root), std::vector<std::string>{"step-00000001"});  // no temporary directory left
  EXPECT_EQ(store.latest(), previous_dir);
  expect_loads_as(previous_dir, previous);
}

TEST(CheckpointStore, FullDiskWhileReplacingAStepKeepsTheOldOne) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  CheckpointStore store(root, 2);
  const CheckpointData old_two = make_data(2);
  const std::string dir = store.save(old_two);
  CheckpointData big = make_data(2);
  big.model.emplace_back("big", ones({64, 1024}, TensorOptions(kF32, kCPU)));
  EXPECT_EQ(save_with_file_size_limit(root, big, 16 * 1024, {"saving step 2", "File too large"}), kFailedAsExpected);
  EXPECT_EQ(entries(root), std::vector<std::string>{"step-00000002"});
  expect_loads_as(dir, old_two);
}

TEST(CheckpointStore, FullDiskWhileWritingTheStateFails) {
  TempDir tmp;
  const std::string root = tmp.file("ckpt");
  CheckpointStore store(root, 2);
  const CheckpointData previous = make_data(1);
  const std::string previous_dir = store.save(previous);
  CheckpointData big_state = make_data(2);
  big_state.state["config"] = std::string(64 * 1024, '#');  // the tensor files fit, state.json does not
  EXPECT_EQ(save_with_file_size_limit(
                root, big_state, 16 * 1024,
                {"saving step 2", "writing '" + root + "/.tmp-step-00000002-", "/state.json' failed: File too large"}),
            kFailedAsExpected);
  EXPECT_EQ(entries(root), std::vector<std::string>{"step-00000001"});
  expect_loads_as(previous_dir, previous);
}

class LoadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = CheckpointStore(tmp_.file("ckpt"), 1).save(make_data(5)); }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }
  /// Rewrites state.json with `state` and expects loading to fail naming it and the fragments.
  void expect_bad_state(const json& state, const std::vector<std::string>& fragments) {
    write_file(file("state.json"), state.dump());
    std::vector<std::string> all = fragments;
    all.push_back(file("state.json"));
    EXPECT_TRUE(raises_error([&] { load_checkpoint(dir_); }, all)) << state.dump();
  }

  TempDir tmp_;
  std::string dir_;
};

TEST_F(LoadCheckpoint, MissingCompleteMarker) {
  fs::remove(file("COMPLETE"));
  EXPECT_TRUE(raises_error([&] { load_checkpoint(dir_); }, {file("COMPLETE"), "is missing", "not a complete"}));
}

TEST_F(LoadCheckpoint, MissingOrTruncatedTensorFiles) {
  fs::remove(file("optimizer.safetensors"));
  EXPECT_TRUE(raises_error([&] { load_checkpoint(dir_); },
                           {"load_checkpoint('" + dir_ + "')", file("optimizer.safetensors"), "No such file"}));
  fs::resize_file(file("model.safetensors"), fs::file_size(file("model.safetensors")) - 3);
  EXPECT_TRUE(raises_error([&] { load_checkpoint(dir_); }, {file("model.safetensors")}));
}

TEST_F(LoadCheckpoint, MissingOrCorruptState) {
  write_file(file("state.json"), "{\"step\": 5, \"format\"");
  EXPECT_TRUE(raises_error([&] { load_checkpoint(dir_); }, {file("state.json"), "not valid JSON"}));
  fs::remove(file("state.json"));
  EXPECT_TRUE(raises_error([&] { load_checkpoint(dir_); }, {file("state.json"), "No such file"}));
}

TEST_F(LoadCheckpoint, WrongStepOrFormat) {
  expect_bad_state(json::array({5}), {"must hold a JSON object", "array"});
  expect_bad_state({{"step", 5}}, {"\"format\" missing", "format 1"});
  expect_bad_state({{"step", 5}, {"format", 2}}, {"\"format\" 2", "format 1"});
  expect_bad_state({{"step", 5}, {"format", "1"}}, {"\"format\" \"1\""});
  expect_bad_state({{"format", 1}}, {"\"step\" missing", "integer >= 0"});
  expect_bad_state({{"step", -1}, {"format", 1}}, {"\"step\" -1"});
  expect_bad_state({{"step", 2.5}, {"format", 1}}, {"\"step\" 2.5"});
}

}  // namespace
}  // namespace flame::train
