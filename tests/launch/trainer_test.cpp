// flame::train::train() in one process on the CPU: a short run's result and outputs (summary.json,
// metrics.jsonl, the TensorBoard event file, the rank log, checkpoints and their retention), exact
// resume after a stop request (grad_accum, epoch boundaries, epochs-based runs, every optimizer),
// the result of a run stopped between log steps and of resuming a finished run, a stop by a real
// SIGTERM, learning a synthetic task, ResumeMode::Auto without a checkpoint, and the errors for bad
// data, bad settings, a checkpoint of another world size and an unwritable checkpoint directory.
#include "launch/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "datasets/dataset.h"
#include "launch/train/checkpoint.h"
#include "launch/train/models.h"
#include "launch/train/tensorboard.h"
#include "support/test_support.h"

namespace flame::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::raises_error;

using test::read_file;
using test::TempDir;
using test::write_file;

// --- datasets ------------------------------------------------------------------------------------

constexpr int64_t kSide = 28;
constexpr int64_t kHalf = kSide / 2;

/// Writes `n` images u8 [1, 28, 28] whose label (i64, 0..3) is the quadrant holding a bright
/// 14x14 block; everything else is dim noise. Fields are named `image_field` and "label".
void write_quadrant_images(const std::string& dir, int64_t n, uint64_t seed, const std::string& image_field = "image") {
  std::mt19937_64 rng(seed);
  data::ShardWriter writer(dir, {{image_field, kU8, {1, kSide, kSide}}, {"label", kI64, {}}}, 64);
  Tensor images = Tensor::empty({n, 1, kSide, kSide}, kU8);
  Tensor labels = Tensor::empty({n}, kI64);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t quadrant = static_cast<int64_t>(rng() % 4);
    labels.data<int64_t>()[i] = quadrant;
    uint8_t* pixels = images.data<uint8_t>() + i * kSide * kSide;
    for (int64_t y = 0; y < kSide; ++y) {
      for (int64_t x = 0; x < kSide; ++x) {
        const bool bright = y / kHalf == quadrant / 2 && x / kHalf == quadrant % 2;
        pixels[y * kSide + x] = static_cast<uint8_t>(bright ? 150 + rng() % 106 : rng() % 90);
      }
    }
  }
  writer.append({images, labels});
  writer.finish();
}

// --- configs -------------------------------------------------------------------------------------

/// A small mlp run on the CPU in `dir`: data in dir/train, logs in dir/run; `overrides` after.
Config make_config(const TempDir& dir, const std::vector<std::string>& overrides = {}) {
  std::vector<std::string> all = {
      fmt::format("data.train=\"{}\"", dir.file("train")),
      fmt::format("log.dir=\"{}\"", dir.file("run")),
  };
  all.insert(all.end(), overrides.begin(), overrides.end());
  constexpr const char* kBase = R"(
[model]
name = "mlp"

[data]
train = "set by make_config"
workers = 1

[train]
batch_size = 8
steps = 12
seed = 11
device = "cpu"

[optimizer]
name = "adamw"
lr = 1e-3

[log]
every_steps = 1
progress = false
)";
  return parse_config(kBase, "trainer_test.toml", all);
}

// --- reading the outputs ------------------------------------------------------------------------

/// The records of a metrics.jsonl file, in order.
std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> records;
  std::istringstream lines(read_file(path));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) records.push_back(json::parse(line));
  }
  return records;
}

/// step -> value of every record holding `name`; a step recorded twice fails the test.
std::map<int64_t, double> series(const std::vector<json>& records, const std::string& name) {
  std::map<int64_t, double> out;
  for (const json& r : records) {
    if (!r.contains(name)) continue;
    const int64_t step = r.at("step").get<int64_t>();
    EXPECT_TRUE(out.emplace(step, r.at(name).get<double>()).second) << name << " recorded twice at step " << step;
  }
  return out;
}

std::vector<int64_t> keys(const std::map<int64_t, double>& m) {
  std::vector<int64_t> out;
  for (const auto& [k, v] : m) out.push_back(k);
  return out;
}

/// One scalar of a TensorBoard event file.
struct Scalar {
  std::string tag;
  int64_t step;
  float value;
};

uint64_t read_varint(const std::string& s, size_t& pos) {
  uint64_t value = 0;
  for (int shift = 0; pos < s.size(); shift += 7) {
    const auto byte = static_cast<uint8_t>(s[pos++]);
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return value;
  }
  ADD_FAILURE() << "truncated varint";
  return value;
}

/// Calls `field(number, wire_type, varint, bytes)` for each field of a protobuf message.
template <class Field>
void for_each_field(const std::string& message, Field field) {
  size_t pos = 0;
  while (pos < message.size()) {
    const uint64_t key = read_varint(message, pos);
    const int number = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    uint64_t varint = 0;
    std::string bytes;
    switch (wire) {
      case 0:
        varint = read_varint(message, pos);
        break;
      case 1:
        bytes = message.substr(pos, 8), pos += 8;
        break;
      case 2: {
        const uint64_t length = read_varint(message, pos);
        bytes = message.substr(pos, length), pos += length;
        break;
      }
      case 5:
        bytes = message.substr(pos, 4), pos += 4;
        break;
      default:
        ADD_FAILURE() << "unexpected protobuf wire type " << wire;
        return;
    }
    field(number, wire, varint, bytes);
  }
}

/// The scalars of an event file (Note [tensorboard event file]), its frames and CRCs checked by
/// read_tfrecords; `file_version` gets the first event's file_version.
std::vector<Scalar> read_event_file(const std::string& path, std::string* file_version) {
  std::vector<Scalar> scalars;
  for (const std::string& event : read_tfrecords(path)) {
    int64_t step = 0;
    std::vector<std::pair<std::string, float>> values;
    for_each_field(event, [&](int number, int, uint64_t varint, const std::string& data) {
      if (number == 2) step = static_cast<int64_t>(varint);
      if (number == 3 && file_version->empty()) *file_version = data;
      if (number != 5) return;
      for_each_field(data, [&](int, int, uint64_t, const std::string& value) {  // Summary.value
        std::pair<std::string, float> v;
        for_each_field(value, [&](int n, int, uint64_t, const std::string& d) {
          if (n == 1) v.first = d;
          if (n == 2) std::memcpy(&v.second, d.data(), 4);
        });
        values.push_back(v);
      });
    });
    for (const auto& [tag, value] : values) scalars.push_back({tag, step, value});
  }
  return scalars;
}

/// The files directly in `dir` whose names contain `fragment`.
std::vector<std::string> files_containing(const std::string& dir, const std::string& fragment) {
  std::vector<std::string> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().find(fragment) != std::string::npos) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// The names of the entries of a checkpoint root, sorted.
std::vector<std::string> checkpoint_names(const std::string& root) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(root)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// --- a short run and its outputs ------------------------------------------------------------------

TEST(Trainer, ShortRunResultAndOutputs) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 96, 1);
  write_quadrant_images(dir.file("test"), 40, 2);
  const Config config =
      make_config(dir, {fmt::format("data.test=\"{}\"", dir.file("test")), "log.every_steps=5", "eval.every_steps=6",
                        "eval.batch_size=16", "checkpoint.every_steps=3", "checkpoint.keep_last=2"});
  const RunResult result = train(config);

  EXPECT_FALSE(result.stopped);
  EXPECT_EQ(result.steps, 12);
  EXPECT_EQ(result.resumed_from_step, 0);
  EXPECT_EQ(result.world_size, 1);
  EXPECT_EQ(result.device, "cpu");
  EXPECT_TRUE(std::isfinite(result.final_loss));
  EXPECT_GT(result.final_loss, 0.0);
  ASSERT_TRUE(result.test_accuracy.has_value());
  ASSERT_TRUE(result.test_loss.has_value());
  EXPECT_GE(*result.test_accuracy, 0.0);
  EXPECT_LE(*result.test_accuracy, 1.0);
  // 40 test samples: an accuracy is a multiple of 1/40.
  EXPECT_DOUBLE_EQ(std::round(*result.test_accuracy * 40) / 40, *result.test_accuracy);
  EXPECT_TRUE(std::isfinite(*result.test_loss));
  EXPECT_GT(result.samples_per_s, 0.0);
  const std::string root = dir.file("run/checkpoints");  // the default: <log.dir>/checkpoints
  EXPECT_EQ(fs::path(result.last_checkpoint), fs::path(root) / "step-00000012");

  // summary.json: the result, as JSON.
  const json summary = json::parse(read_file(dir.file("run/summary.json")));
  EXPECT_EQ(summary.at("steps").get<int64_t>(), 12);
  EXPECT_EQ(summary.at("stopped").get<bool>(), false);
  EXPECT_EQ(summary.at("resumed_from_step").get<int64_t>(), 0);
  EXPECT_EQ(summary.at("world_size").get<int>(), 1);
  EXPECT_EQ(summary.at("device").get<std::string>(), "cpu");
  EXPECT_EQ(summary.at("final_loss").get<double>(), result.final_loss);
  EXPECT_EQ(summary.at("test_loss").get<double>(), *result.test_loss);
  EXPECT_EQ(summary.at("test_accuracy").get<double>(), *result.test_accuracy);
  EXPECT_EQ(summary.at("checkpoint").get<std::string>(), result.last_checkpoint);
  EXPECT_GT(summary.at("samples_per_s").get<double>(), 0.0);
  EXPECT_TRUE(summary.contains("time_to_90_s"));

  // metrics.jsonl: loss, lr and epoch every log.every_steps and at the last step; the evaluations
  // every eval.every_steps (the last step is one of them).
  const std::vector<json> records = read_jsonl(dir.file("run/metrics.jsonl"));
  const std::map<int64_t, double> loss = series(records, "loss");
  EXPECT_EQ(keys(loss), (std::vector<int64_t>{5, 10, 12}));
  EXPECT_EQ(loss.at(12), result.final_loss);
  EXPECT_EQ(keys(series(records, "lr")), (std::vector<int64_t>{5, 10, 12}));
  for (const auto& [step, lr] : series(records, "lr")) EXPECT_EQ(lr, 1e-3) << step;  // constant schedule
  // 96 samples / batch 8 = 12 batches per epoch: steps 5 and 10 in epoch 0, step 12 ends it.
  EXPECT_EQ(series(records, "epoch"), (std::map<int64_t, double>{{5, 0.0}, {10, 0.0}, {12, 0.0}}));
  const std::map<int64_t, double> accuracy = series(records, "test_accuracy");
  EXPECT_EQ(keys(accuracy), (std::vector<int64_t>{6, 12}));
  EXPECT_EQ(accuracy.at(12), *result.test_accuracy);
  EXPECT_EQ(series(records, "test_loss").at(12), *result.test_loss);
  EXPECT_EQ(series(records, "test_samples"), (std::map<int64_t, double>{{6, 40.0}, {12, 40.0}}));  // every one
  for (const json& r : records) EXPECT_GT(r.at("time").get<double>(), 1.5e9) << r.dump();          // Unix seconds

  // The TensorBoard event file holds the same scalars (as float32).
  const std::vector<std::string> events = files_containing(dir.file("run/tensorboard"), "tfevents");
  ASSERT_EQ(events.size(), 1u);
  std::string file_version;
  const std::vector<Scalar> scalars = read_event_file(events[0], &file_version);
  EXPECT_EQ(file_version, "brain.Event:2");
  std::map<int64_t, float> tb_loss, tb_accuracy;
  for (const Scalar& s : scalars) {
    if (s.tag == "train/loss") tb_loss[s.step] = s.value;
    if (s.tag == "test/accuracy") tb_accuracy[s.step] = s.value;
  }
  EXPECT_EQ(tb_loss.size(), 3u);
  for (const auto& [step, value] : loss) EXPECT_EQ(tb_loss[step], static_cast<float>(value)) << step;
  EXPECT_EQ(tb_accuracy.size(), 2u);
  for (const auto& [step, value] : accuracy) EXPECT_EQ(tb_accuracy[step], static_cast<float>(value)) << step;

  // The rank's log file.
  const std::string log = read_file(dir.file("run/logs/rank-0.log"));
  EXPECT_NE(log.find("[rank 0]"), std::string::npos) << log;
  EXPECT_NE(log.find("done: 12 steps"), std::string::npos) << log;

  // Checkpoints at steps 3, 6, 9 and 12; keep_last 2 leaves the last two.
  EXPECT_EQ(checkpoint_names(root), (std::vector<std::string>{"step-00000009", "step-00000012"}));
  const CheckpointData last = load_checkpoint(result.last_checkpoint);
  EXPECT_EQ(last.step, 12);
  EXPECT_EQ(last.state.at("world_size").get<int>(), 1);
  EXPECT_EQ(last.state.at("total_steps").get<int64_t>(), 12);
  EXPECT_EQ(last.state.at("rng").size(), 1u);
  EXPECT_EQ(parse_config(last.state.at("config").get<std::string>(), "state.json config").train.steps, 12);
  const CheckpointData earlier = load_checkpoint((fs::path(root) / "step-00000009").string());
  EXPECT_EQ(earlier.step, 9);
  ASSERT_EQ(earlier.model.size(), last.model.size());
  EXPECT_FALSE(test::tensors_identical(earlier.model[0].second, last.model[0].second)) << "the weights trained on";
}

TEST(Trainer, RunWithoutTestSetHasNoEvaluation) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 1);
  const Config config = make_config(dir, {"train.steps=4", "eval.every_steps=2", "log.tensorboard=false"});
  const RunResult result = train(config);
  EXPECT_EQ(result.steps, 4);
  EXPECT_FALSE(result.test_accuracy.has_value());
  EXPECT_FALSE(result.test_loss.has_value());
  EXPECT_FALSE(result.time_to_90_s.has_value());
  const json summary = json::parse(read_file(dir.file("run/summary.json")));
  EXPECT_TRUE(summary.at("test_accuracy").is_null());
  EXPECT_TRUE(summary.at("test_loss").is_null());
  const std::vector<json> records = read_jsonl(dir.file("run/metrics.jsonl"));
  EXPECT_EQ(keys(series(records, "loss")), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(series(records, "test_accuracy").empty());
  EXPECT_FALSE(fs::exists(dir.file("run/tensorboard"))) << "log.tensorboard = false";
  // Only the final checkpoint (checkpoint.every_steps = 0).
  EXPECT_EQ(checkpoint_names(dir.file("run/checkpoints")), (std::vector<std::string>{"step-00000004"}));
}

// --- exact resume ------------------------------------------------------------------------------------

struct ResumeCase {
  std::string name;
  int64_t train_samples;               // batch_size 8
  std::vector<std::string> overrides;  // on top of make_config's
  int64_t stop_after;
  int64_t total_steps;
};

void PrintTo(const ResumeCase& c, std::ostream* os) { *os << c.name; }

class TrainerResume : public ::testing::TestWithParam<ResumeCase> {};

/// Run A uninterrupted in dir/a; run B in dir/b stopped after `stop_after` steps, then resumed
/// with ResumeMode::Auto: every later loss, the final loss and the final weights are identical.
TEST_P(TrainerResume, StopThenResumeReproducesUninterruptedRun) {
  const ResumeCase& c = GetParam();
  TempDir dir;
  write_quadrant_images(dir.file("train"), c.train_samples, 3);
  write_quadrant_images(dir.file("test"), 24, 4);
  std::vector<std::string> overrides = c.overrides;
  overrides.push_back(fmt::format("data.test=\"{}\"", dir.file("test")));
  overrides.push_back("eval.every_steps=5");
  Config a_config = make_config(dir, overrides);
  a_config.log.dir = dir.file("a");
  a_config.checkpoint.dir = dir.file("a/checkpoints");
  Config b_config = a_config;
  b_config.log.dir = dir.file("b");
  b_config.checkpoint.dir = dir.file("b/checkpoints");

  const RunResult a = train(a_config);
  EXPECT_FALSE(a.stopped);
  EXPECT_EQ(a.steps, c.total_steps);

  RunOptions stop_early;
  stop_early.stop_after_steps = c.stop_after;
  const RunResult b1 = train(b_config, stop_early);
  EXPECT_TRUE(b1.stopped);
  EXPECT_EQ(b1.steps, c.stop_after);
  EXPECT_EQ(fs::path(b1.last_checkpoint), fs::path(b_config.checkpoint.dir) / checkpoint_dir_name(c.stop_after));
  EXPECT_EQ(checkpoint_names(b_config.checkpoint.dir), (std::vector<std::string>{checkpoint_dir_name(c.stop_after)}));
  EXPECT_TRUE(json::parse(read_file(dir.file("b/summary.json"))).at("stopped").get<bool>());

  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  const RunResult b2 = train(b_config, resume);
  EXPECT_FALSE(b2.stopped);
  EXPECT_EQ(b2.resumed_from_step, c.stop_after);
  EXPECT_EQ(b2.steps, c.total_steps);
  EXPECT_EQ(b2.final_loss, a.final_loss);
  ASSERT_TRUE(a.test_accuracy && b2.test_accuracy);
  EXPECT_EQ(*b2.test_accuracy, *a.test_accuracy);
  EXPECT_EQ(*b2.test_loss, *a.test_loss);

  // B's metrics.jsonl (appended to by the resumed run) holds A's losses and rates, step for step.
  const std::vector<json> a_records = read_jsonl(dir.file("a/metrics.jsonl"));
  const std::vector<json> b_records = read_jsonl(dir.file("b/metrics.jsonl"));
  const std::map<int64_t, double> a_loss = series(a_records, "loss"), b_loss = series(b_records, "loss");
  ASSERT_EQ(static_cast<int64_t>(a_loss.size()), c.total_steps);
  EXPECT_EQ(keys(b_loss), keys(a_loss));
  int64_t compared_after_stop = 0;
  for (const auto& [step, loss] : a_loss) {
    if (!b_loss.count(step)) continue;
    EXPECT_EQ(b_loss.at(step), loss) << "step " << step;
    compared_after_stop += step > c.stop_after;
  }
  EXPECT_EQ(compared_after_stop, c.total_steps - c.stop_after);
  EXPECT_EQ(series(b_records, "lr"), series(a_records, "lr"));
  EXPECT_EQ(series(b_records, "epoch"), series(a_records, "epoch"));
  EXPECT_EQ(series(b_records, "test_loss"), series(a_records, "test_loss"));
  // The losses are not all equal (a run that did not train would pass the checks above).
  EXPECT_NE(a_loss.begin()->second, a_loss.rbegin()->second);

  // The final weights and optimizer state are bit-identical.
  const CheckpointData a_last = load_checkpoint(a.last_checkpoint);
  const CheckpointData b_last = load_checkpoint(b2.last_checkpoint);
  ASSERT_EQ(a_last.model.size(), b_last.model.size());
  for (size_t i = 0; i < a_last.model.size(); ++i) {
    EXPECT_EQ(a_last.model[i].first, b_last.model[i].first);
    EXPECT_TRUE(test::tensors_identical(b_last.model[i].second, a_last.model[i].second)) << a_last.model[i].first;
  }
  ASSERT_EQ(a_last.optimizer.size(), b_last.optimizer.size());
  for (size_t i = 0; i < a_last.optimizer.size(); ++i) {
    EXPECT_TRUE(test::tensors_identical(b_last.optimizer[i].second, a_last.optimizer[i].second))
        << a_last.optimizer[i].first;
  }
  EXPECT_EQ(b_last.state.at("epoch"), a_last.state.at("epoch"));
  EXPECT_EQ(b_last.state.at("next_batch"), a_last.state.at("next_batch"));
  EXPECT_EQ(b_last.state.at("rng"), a_last.state.at("rng"));

  const std::string b_log = read_file(dir.file("b/logs/rank-0.log"));
  EXPECT_NE(b_log.find(fmt::format("resumed from {}", b1.last_checkpoint)), std::string::npos) << b_log;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, TrainerResume,
    ::testing::Values(
        // 7 batches per epoch: the stop falls exactly on the end of epoch 0; warmup then cosine.
        ResumeCase{
            "StopAtEpochEnd", 56, {"train.steps=20", "schedule.name=warmup_cosine", "schedule.warmup_steps=4"}, 7, 20},
        // 5 batches per epoch, 2 per step: steps straddle epochs (batches 5-6 are step 3), the stop
        // falls mid-epoch; SGD with Nesterov momentum, clipping and an in-memory dataset.
        ResumeCase{"GradAccum2AcrossEpochs",
                   40,
                   {"train.steps=20", "train.grad_accum=2", "optimizer.name=sgd", "optimizer.lr=0.05",
                    "optimizer.momentum=0.9", "optimizer.nesterov=true", "train.clip_grad_norm=1.0",
                    "data.in_memory=true", "data.workers=2"},
                   7,
                   20},
        // train.epochs: 3 epochs of 6 batches = 18 steps; Adam with weight decay and a step schedule.
        ResumeCase{"Epochs",
                   48,
                   {"train.steps=0", "train.epochs=3", "optimizer.name=adam", "optimizer.weight_decay=0.01",
                    "schedule.name=step", "schedule.step_size=5", "schedule.gamma=0.5"},
                   7,
                   18}),
    [](const ::testing::TestParamInfo<ResumeCase>& info) { return info.param.name; });

TEST(Trainer, AutoResumeWithoutCheckpointStartsFromScratch) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 5);
  Config fresh = make_config(dir, {"train.steps=6"});
  fresh.log.dir = dir.file("fresh");
  fresh.checkpoint.dir = dir.file("fresh/checkpoints");
  Config auto_config = fresh;
  auto_config.log.dir = dir.file("auto");
  auto_config.checkpoint.dir = dir.file("auto/checkpoints");

  const RunResult reference = train(fresh);
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  const RunResult result = train(auto_config, resume);
  EXPECT_EQ(result.resumed_from_step, 0);
  EXPECT_EQ(result.steps, 6);
  EXPECT_FALSE(result.stopped);
  EXPECT_EQ(result.final_loss, reference.final_loss);
  EXPECT_EQ(series(read_jsonl(dir.file("auto/metrics.jsonl")), "loss"),
            series(read_jsonl(dir.file("fresh/metrics.jsonl")), "loss"));
  const std::string log = read_file(dir.file("auto/logs/rank-0.log"));
  EXPECT_NE(log.find("no checkpoint in"), std::string::npos) << log;
}

// RunResult::final_loss is "the last step's training loss": for a run stopped between two log
// steps, that is the stopping step's loss, not the last logged one's (nor 0.0 when no step was
// logged yet). Run A logs every step, so it knows every step's loss.
TEST(Trainer, StoppedRunReportsTheStoppingStepsLoss) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 7);
  Config a = make_config(dir, {"train.steps=10"});
  a.log.dir = dir.file("a");
  a.checkpoint.dir = dir.file("a/checkpoints");
  train(a);
  const std::map<int64_t, double> a_loss = series(read_jsonl(dir.file("a/metrics.jsonl")), "loss");
  ASSERT_EQ(a_loss.size(), 10u);

  for (const int64_t stop_after : {7, 2}) {
    SCOPED_TRACE(fmt::format("stopped after step {} with log.every_steps = 5", stop_after));
    Config b = a;
    b.log.dir = dir.file(fmt::format("b{}", stop_after));
    b.checkpoint.dir = dir.file(fmt::format("b{}/checkpoints", stop_after));
    b.log.every_steps = 5;
    RunOptions options;
    options.stop_after_steps = stop_after;
    const RunResult stopped = train(b, options);
    ASSERT_TRUE(stopped.stopped);
    ASSERT_EQ(stopped.steps, stop_after);
    EXPECT_EQ(stopped.final_loss, a_loss.at(stop_after));
    const json summary = json::parse(read_file(b.log.dir + "/summary.json"));
    EXPECT_EQ(summary.at("final_loss").get<double>(), a_loss.at(stop_after));
  }
}

// Resuming a run that already finished (its newest checkpoint is at the last step) trains no step;
// its result and summary.json still describe that run instead of a final loss of 0.0 and no
// checkpoint.
TEST(Trainer, AutoResumeOfAFinishedRunKeepsItsResult) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 8);
  const Config config = make_config(dir, {"train.steps=6"});
  const RunResult first = train(config);
  ASSERT_FALSE(first.last_checkpoint.empty());

  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  const RunResult again = train(config, resume);
  EXPECT_FALSE(again.stopped);
  EXPECT_EQ(again.steps, 6);
  EXPECT_EQ(again.resumed_from_step, 6);
  EXPECT_EQ(again.last_checkpoint, first.last_checkpoint);
  EXPECT_EQ(again.final_loss, first.final_loss);
  const json summary = json::parse(read_file(dir.file("run/summary.json")));
  EXPECT_EQ(summary.at("final_loss").get<double>(), first.final_loss);
  EXPECT_EQ(summary.at("checkpoint").get<std::string>(), first.last_checkpoint);
  // No step ran, so no loss was appended to metrics.jsonl.
  EXPECT_EQ(keys(series(read_jsonl(dir.file("run/metrics.jsonl")), "loss")), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
}

/// How many records of `path` carry `name`, per step.
std::map<int64_t, int> record_counts(const std::string& path, const std::string& name) {
  std::map<int64_t, int> counts;
  for (const json& record : read_jsonl(path))
    if (record.contains(name)) ++counts[record.at("step").get<int64_t>()];
  return counts;
}

/// Steps 1..steps each have exactly one loss record in `path`.
void expect_each_step_logged_once(const std::string& path, int64_t steps) {
  const std::map<int64_t, int> counts = record_counts(path, "loss");
  EXPECT_EQ(static_cast<int64_t>(counts.size()), steps);
  for (const auto& [step, count] : counts) EXPECT_EQ(count, 1) << "step " << step;
}

// A run that crashed after logging steps past its last checkpoint: the resumed run logs those
// steps again, and metrics.jsonl holds each step once (the crashed run's later records dropped).
TEST(Trainer, ResumeAfterACrashLogsEachStepOnce) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 9);
  const Config config = make_config(dir, {"train.steps=12", "checkpoint.every_steps=5"});
  RunOptions stop;
  stop.stop_after_steps = 8;  // checkpoints at 5 and 8, losses logged for steps 1..8
  ASSERT_TRUE(train(config, stop).stopped);
  // The crash: step 8's checkpoint never happened.
  fs::remove_all(fs::path(config.checkpoint.dir) / checkpoint_dir_name(8));
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  const RunResult resumed = train(config, resume);
  EXPECT_EQ(resumed.resumed_from_step, 5);
  EXPECT_EQ(resumed.steps, 12);
  expect_each_step_logged_once(dir.file("run/metrics.jsonl"), 12);
  const std::string log = read_file(dir.file("run/logs/rank-0.log"));
  EXPECT_NE(log.find("dropped 3 records of steps after 5"), std::string::npos) << log;
}

/// A 12-step run on 64 samples (seed 15) in `dir`, stopped after its checkpoint at step 5; returns
/// its config, to resume with.
Config run_stopped_at_step_5(const TempDir& dir) {
  write_quadrant_images(dir.file("train"), 64, 15);
  const Config config = make_config(dir, {"train.steps=12", "checkpoint.every_steps=5"});
  RunOptions stop;
  stop.stop_after_steps = 5;
  EXPECT_TRUE(train(config, stop).stopped);
  return config;
}

// The training set regenerated with another size between the stop and the resume: the data order
// would differ, so the resume is refused, naming both sizes.
TEST(Trainer, ResumeWithATrainingSetOfAnotherSizeIsRefused) {
  TempDir dir;
  const Config config = run_stopped_at_step_5(dir);
  write_quadrant_images(dir.file("train"), 80, 15);
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  EXPECT_TRUE(test::raises_error([&] { train(config, resume); }, {"64 samples", "now holds 80", "--resume none"}));
}

// data.verify_checksums: a shard whose SHA-256 disagrees with manifest.json (here the manifest's
// record is changed) is an error naming the shard; by default only the structure is checked.
TEST(Trainer, VerifyChecksumsRefusesAShardThatFailsItsChecksum) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 17);
  const std::string manifest_path = dir.file("train/manifest.json");
  json manifest = json::parse(read_file(manifest_path));
  manifest["shards"][0]["sha256"] = std::string(64, '0');
  write_file(manifest_path, manifest.dump(2));
  const Config checked = make_config(dir, {"train.steps=2", "data.verify_checksums=true"});
  EXPECT_TRUE(raises_error([&] { train(checked); }, {"shard", "fails its checksum", std::string(64, '0')}));
  EXPECT_EQ(train(make_config(dir, {"train.steps=2"})).steps, 2);
}

// A resume whose checkpoint is at or past a lowered step count trains nothing and says so.
TEST(Trainer, ResumePastTheLastStepWarnsThatNothingIsLeft) {
  TempDir dir;
  Config config = run_stopped_at_step_5(dir);
  config.train.steps = 4;
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  const RunResult result = train(config, resume);
  EXPECT_EQ(result.resumed_from_step, 5);
  const std::string log = read_file(dir.file("run/logs/rank-0.log"));
  EXPECT_NE(log.find("the checkpoint's step 5 is at or past this run's 4 steps"), std::string::npos) << log;
}

// The training set regenerated with other contents of the same size: the resume is refused, naming
// data.train.
TEST(Trainer, ResumeWithOtherTrainingDataOfTheSameSizeIsRefused) {
  TempDir dir;
  const Config config = run_stopped_at_step_5(dir);
  fs::remove_all(dir.file("train"));
  write_quadrant_images(dir.file("train"), 64, 16);
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  EXPECT_TRUE(test::raises_error([&] { train(config, resume); },
                                 {"other contents of data.train", dir.file("train"), "--resume none"}));
}

// A run started from scratch (--resume none) where an earlier run left checkpoints: they are moved
// aside, so a later --resume auto continues this run, not the earlier one's newer step.
TEST(Trainer, AFreshRunMovesTheEarlierRunAside) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 10);
  const Config earlier = make_config(dir, {"train.steps=10", "checkpoint.every_steps=5"});
  train(earlier);
  const Config later = make_config(dir, {"train.steps=12", "checkpoint.every_steps=5", "optimizer.lr=2e-3"});
  RunOptions stop;
  stop.stop_after_steps = 6;
  ASSERT_TRUE(train(later, stop).stopped);
  EXPECT_EQ(checkpoint_names(later.checkpoint.dir),
            (std::vector<std::string>{checkpoint_dir_name(5), checkpoint_dir_name(6)}));
  const std::vector<std::string> moved = files_containing(dir.file("run"), ".earlier-");
  ASSERT_EQ(moved.size(), 2u);  // checkpoints.earlier-<time>, metrics.earlier-<time>.jsonl
  for (const std::string& name : moved) {
    if (name.find("checkpoints.earlier-") != std::string::npos)
      EXPECT_EQ(checkpoint_names(name).back(), checkpoint_dir_name(10));
    else
      EXPECT_EQ(record_counts(name, "loss").size(), 10u) << name;
  }
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  const RunResult resumed = train(later, resume);
  EXPECT_EQ(resumed.resumed_from_step, 6);
  EXPECT_EQ(resumed.steps, 12);
  expect_each_step_logged_once(dir.file("run/metrics.jsonl"), 12);
}

// A run from scratch whose checkpoint.dir holds anything but checkpoints (here a project with its
// data) refuses to start, naming the entry, and moves nothing.
TEST(Trainer, AFreshRunRefusesACheckpointDirHoldingOtherFiles) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 10);
  fs::create_directories(dir.file("project/src"));
  { std::ofstream(dir.file("project/notes.txt")) << "keep me\n"; }
  Config config = make_config(dir, {"train.steps=2"});
  config.checkpoint.dir = dir.file("project");
  EXPECT_TRUE(raises_error([&] { train(config); },
                           {"checkpoint.dir", dir.file("project"), "which is not a checkpoint", "--resume auto"}));
  EXPECT_TRUE(fs::exists(dir.file("project/notes.txt")));
  EXPECT_TRUE(fs::exists(dir.file("project/src")));
  EXPECT_TRUE(files_containing(dir.path(), ".earlier-").empty());
  // A checkpoint.dir holding checkpoints only is still set aside.
  fs::remove_all(dir.file("project"));
  config.checkpoint.dir = dir.file("checkpoints");
  train(config);
  train(config);
  EXPECT_EQ(files_containing(dir.path(), "checkpoints.earlier-").size(), 1u);
}

// An epoch count whose step count overflows int64 is refused, naming the key.
TEST(Trainer, AnEpochCountThatOverflowsTheStepCountIsRefused) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 10);
  // 8 batches per epoch (64 samples, batch 8): 2^61 epochs overflow the step count.
  const Config config = make_config(dir, {"train.steps=0", "train.epochs=2305843009213693952"});
  RunOptions bounded;  // without the check this run would not end: stop it after two steps then
  bounded.stop_after_steps = 2;
  EXPECT_TRUE(raises_error([&] { train(config, bounded); }, {"train.epochs = 2305843009213693952", "overflows"}));
}

// Runs from scratch in quick succession (within one second): each earlier run is set aside under its
// own name, none overwritten.
TEST(Trainer, FreshRunsInOneSecondKeepEveryEarlierRun) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 14);
  const Config config = make_config(dir, {"train.steps=2"});
  for (int run = 0; run < 3; ++run) train(config);
  EXPECT_EQ(files_containing(dir.file("run"), "metrics.earlier-").size(), 2u);
  EXPECT_EQ(files_containing(dir.file("run"), "checkpoints.earlier-").size(), 2u);
}

// checkpoint.dir written with a trailing separator: the directory itself is moved aside (not into
// itself), so a second run from scratch starts.
TEST(Trainer, AFreshRunMovesACheckpointDirWithATrailingSlashAside) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 11);
  const Config config = make_config(dir, {"train.steps=5", fmt::format("checkpoint.dir=\"{}/\"", dir.file("ckpt"))});
  train(config);
  const RunResult again = train(config);
  EXPECT_EQ(again.steps, 5);
  EXPECT_EQ(checkpoint_names(dir.file("ckpt")), std::vector<std::string>{checkpoint_dir_name(5)});
  EXPECT_EQ(files_containing(dir.path(), "ckpt.earlier-").size(), 1u);
}

// checkpoint.dir holding log.dir would move the run's own logs aside: refused before training.
TEST(Trainer, CheckpointDirHoldingTheLogsIsRefused) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 12);
  for (const std::string& checkpoints : {dir.file("run"), dir.file("run") + "/", dir.path()}) {
    SCOPED_TRACE(checkpoints);
    const Config config = make_config(dir, {"train.steps=2", fmt::format("checkpoint.dir=\"{}\"", checkpoints)});
    EXPECT_TRUE(test::raises_error([&] { train(config); }, {"checkpoint.dir", "must not be log.dir", "contain it"}));
  }
}

// --- stop by a real signal -----------------------------------------------------------------------------

TEST(Trainer, SigtermStopsAfterTheStepWithACheckpoint) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 6);
  // Far more steps than can run before the signal: the run ends only by stopping.
  const Config config = make_config(dir, {"train.steps=1000000"});
  const std::string metrics = dir.file("run/metrics.jsonl");

  struct sigaction before {};
  sigaction(SIGTERM, nullptr, &before);
  std::atomic<bool> done{false};
  std::thread sender([&] {
    // Signal once a few steps are logged (or after 20 s, so that a hang shows as a failure).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!done && std::chrono::steady_clock::now() < deadline) {
      std::ifstream in(metrics);  // lines, not JSON: the last one may be half written
      if (std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n') >= 3) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!done) kill(getpid(), SIGTERM);
  });
  RunResult result;
  test::guarded([&] { result = train(config); });
  done = true;
  sender.join();

  EXPECT_TRUE(result.stopped);
  EXPECT_GE(result.steps, 3);
  EXPECT_LT(result.steps, 1000000);
  EXPECT_EQ(fs::path(result.last_checkpoint),
            fs::path(dir.file("run/checkpoints")) / checkpoint_dir_name(result.steps));
  EXPECT_EQ(load_checkpoint(result.last_checkpoint).step, result.steps);
  const std::map<int64_t, double> loss = series(read_jsonl(metrics), "loss");
  ASSERT_FALSE(loss.empty());
  EXPECT_EQ(loss.rbegin()->first, result.steps) << "no step after the stopping one";
  EXPECT_NE(read_file(dir.file("run/logs/rank-0.log")).find("by SIGTERM"), std::string::npos);
  // train() put the previous SIGTERM disposition back.
  struct sigaction after {};
  sigaction(SIGTERM, nullptr, &after);
  EXPECT_EQ(after.sa_handler, before.sa_handler);
}

// Slurm's SIGUSR1 (save and requeue) and the time limit's SIGTERM reaching a rank before the next
// stop agreement: SIGUSR1 stands, in either order, so the job is still requeued.
TEST(Trainer, Sigusr1StandsOverALaterOrEarlierSigterm) {
  EXPECT_EQ(combined_stop_signal(0, SIGTERM), SIGTERM);
  EXPECT_EQ(combined_stop_signal(0, SIGUSR1), SIGUSR1);
  EXPECT_EQ(combined_stop_signal(SIGUSR1, SIGTERM), SIGUSR1);
  EXPECT_EQ(combined_stop_signal(SIGTERM, SIGUSR1), SIGUSR1);
  EXPECT_EQ(combined_stop_signal(SIGTERM, SIGTERM), SIGTERM);
}

// --- learning ---------------------------------------------------------------------------------------

TEST(Trainer, MlpLearnsWhichQuadrantIsBright) {
  TempDir dir;
  const uint64_t seed = test::test_seed();
  write_quadrant_images(dir.file("train"), 256, seed);
  write_quadrant_images(dir.file("test"), 200, seed + 1);
  const Config config =
      make_config(dir, {fmt::format("data.test=\"{}\"", dir.file("test")), "train.batch_size=16", "train.steps=30",
                        "log.tensorboard=false", fmt::format("train.seed={}", seed % (uint64_t{1} << 62))});
  const RunResult result = train(config);
  const std::map<int64_t, double> loss = series(read_jsonl(dir.file("run/metrics.jsonl")), "loss");
  ASSERT_EQ(loss.size(), 30u);
  double last = 0;
  for (int64_t s = 26; s <= 30; ++s) last += loss.at(s) / 5;
  // Step 1 runs the untrained model: 10 classes, a loss near ln 10 = 2.30.
  EXPECT_GT(loss.at(1), 1.5);
  EXPECT_LT(last, 0.1 * loss.at(1)) << "step 1: " << loss.at(1) << ", mean of the last 5 steps: " << last;
  ASSERT_TRUE(result.test_accuracy.has_value());
  EXPECT_GE(*result.test_accuracy, 0.9) << "chance is 0.25";
  EXPECT_LT(*result.test_loss, 0.3);
}

// ddp.step_mean (Note [deferred mean]): with bf16 gradients every bucket's mean is deferred, even on
// one CPU rank (through MPI's all_gather), and AdamW computes it in its update. One rank's mean is
// its own gradient rounded to bf16, as the reduced path gives: the same losses, step for step.
TEST(Trainer, StepMeanInTheUpdateTrainsAsTheReducedMean) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 5);
  std::map<std::string, std::map<int64_t, double>> losses;
  for (const std::string mean : {"reduced", "in_update", "in_update_no_grad"}) {
    const Config config =
        make_config(dir, {"train.batch_size=8", "train.steps=6", "log.tensorboard=false", "optimizer.name=\"adamw\"",
                          "ddp.reduce_dtype=\"bf16\"", fmt::format("ddp.step_mean=\"{}\"", mean),
                          fmt::format("log.dir=\"{}\"", dir.file("run-" + mean)),
                          fmt::format("checkpoint.dir=\"{}\"", dir.file("ckpt-" + mean))});
    EXPECT_EQ(config.ddp.step_mean == StepMeanChoice::Reduced, mean == "reduced");
    train(config);
    losses[mean] = series(read_jsonl(dir.file("run-" + mean + "/metrics.jsonl")), "loss");
    ASSERT_EQ(losses[mean].size(), 6u) << mean;
  }
  EXPECT_EQ(losses["in_update"], losses["reduced"]);
  EXPECT_EQ(losses["in_update_no_grad"], losses["reduced"]);
  EXPECT_NE(losses["reduced"].at(1), losses["reduced"].at(6)) << "the run did not train";
}

// --- errors -----------------------------------------------------------------------------------------

TEST(TrainerErrors, DatasetWithoutImageField) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 32, 1, "pixels");
  EXPECT_TRUE(raises_error([&] { train(make_config(dir)); }, {dir.file("train"), "\"image\"", "\"label\""}));
}

TEST(TrainerErrors, TestSetWithoutImageField) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 32, 1);
  write_quadrant_images(dir.file("test"), 32, 1, "picture");
  const Config config = make_config(dir, {fmt::format("data.test=\"{}\"", dir.file("test"))});
  EXPECT_TRUE(raises_error([&] { train(config); }, {dir.file("test"), "\"image\""}));
}

TEST(TrainerErrors, MissingTrainDirectory) {
  TempDir dir;
  const Config config = make_config(dir);  // dir/train was never written
  EXPECT_TRUE(raises_error([&] { train(config); }, {dir.file("train"), "manifest"}));
}

TEST(TrainerErrors, BatchLargerThanDataset) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 20, 1);
  const Config config = make_config(dir, {"train.batch_size=21"});
  EXPECT_TRUE(raises_error([&] { train(config); }, {"train.batch_size 21", "20 samples", "lower it"}));
}

/// `n` blank images [1, side, side] with label_of(i), in shards of 64.
void write_labelled_images(const std::string& dir, int64_t n, int64_t side,
                           const std::function<int64_t(int64_t)>& label_of) {
  data::ShardWriter writer(dir, {{"image", kU8, {1, side, side}}, {"label", kI64, {}}}, 64);
  Tensor images = zeros({n, 1, side, side}, TensorOptions(kU8));
  Tensor labels = Tensor::empty({n}, kI64);
  for (int64_t i = 0; i < n; ++i) labels.data<int64_t>()[i] = label_of(i);
  writer.append({images, labels});
  writer.finish();
}

/// The built-in mlp behind a layer that records, at each forward, whether it and the mlp are in
/// training mode; its builder leaves it in training mode and the mlp in eval mode.
class ModeRecorder : public nn::Module {
 public:
  ModeRecorder() : inner_(register_module("inner", make_model("mlp"))) { inner_->eval(); }
  Tensor forward(const Tensor& input) override {
    seen().emplace_back(is_training(), inner_->is_training());
    return inner_->forward(input);
  }
  std::string type_name() const override { return "ModeRecorder"; }
  static std::vector<std::pair<bool, bool>>& seen() {
    static std::vector<std::pair<bool, bool>> modes;
    return modes;
  }

 private:
  std::shared_ptr<nn::Module> inner_;
};

// The data check's forward runs in eval mode, and every module gets its own mode back for training.
TEST(Trainer, TheDataCheckLeavesEveryModuleInTheModeItsBuilderGaveIt) {
  static const bool registered = [] {
    register_model("mode_recorder", [] { return std::make_shared<ModeRecorder>(); });
    return true;
  }();
  ASSERT_TRUE(registered);
  TempDir dir;
  write_quadrant_images(dir.file("train"), 32, 1);
  ModeRecorder::seen().clear();
  train(make_config(dir, {"model.name=\"mode_recorder\"", "train.steps=2"}));
  const std::vector<std::pair<bool, bool>> seen = ModeRecorder::seen();
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen.front(), std::make_pair(false, false)) << "the check's forward";
  for (size_t i = 1; i < seen.size(); ++i) EXPECT_EQ(seen[i], std::make_pair(true, false)) << "forward " << i;
}

TEST(TrainerErrors, LabelOutsideTheModelsClassesNamesItsShard) {
  // The mlp has 10 classes: labels 10 and -1 are out, in the second shard of the training set and
  // in the test set.
  for (const int64_t bad : {int64_t{10}, int64_t{-1}}) {
    SCOPED_TRACE(bad);
    TempDir dir;
    write_labelled_images(dir.file("train"), 96, kSide, [&](int64_t i) { return i == 70 ? bad : i % 10; });
    const std::string shard = data::Manifest::read(dir.file("train")).shards.at(1).file;
    EXPECT_TRUE(raises_error(
        [&] { train(make_config(dir)); },
        {dir.file("train"), "'" + shard + "'", fmt::format("label {}", bad), "its sample 6", "[0, 10)", "'mlp'"}));
    write_labelled_images(dir.file("good"), 96, kSide, [](int64_t i) { return i % 10; });
    write_labelled_images(dir.file("test"), 10, kSide, [&](int64_t i) { return i == 9 ? bad : 0; });
    const Config config = make_config(
        dir, {fmt::format("data.train=\"{}\"", dir.file("good")), fmt::format("data.test=\"{}\"", dir.file("test"))});
    EXPECT_TRUE(raises_error([&] { train(config); }, {dir.file("test"), fmt::format("label {}", bad), "its sample 9"}));
  }
}

TEST(TrainerErrors, ImagesTheModelCannotTakeAreNamedBeforeTraining) {
  TempDir dir;
  write_labelled_images(dir.file("train"), 64, 20, [](int64_t i) { return i % 10; });
  EXPECT_TRUE(raises_error([&] { train(make_config(dir)); }, {dir.file("train"), "[1, 20, 20]", "model 'mlp'"}));
  EXPECT_TRUE(raises_error([&] { train(make_config(dir, {"model.name=\"cnn\""})); },
                           {dir.file("train"), "[1, 20, 20]", "model 'cnn'"}));
  // A test set whose images differ from the training set's.
  write_labelled_images(dir.file("good"), 64, kSide, [](int64_t i) { return i % 10; });
  const Config config = make_config(
      dir, {fmt::format("data.train=\"{}\"", dir.file("good")), fmt::format("data.test=\"{}\"", dir.file("train"))});
  EXPECT_TRUE(
      raises_error([&] { train(config); }, {dir.file("train"), "[1, 20, 20]", dir.file("good"), "[1, 28, 28]"}));
}

TEST(TrainerErrors, UnknownModel) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 32, 1);
  const Config config = make_config(dir, {"model.name=resnet50"});
  EXPECT_TRUE(raises_error([&] { train(config); }, {"model.name", "'resnet50'", "cnn", "mlp"}));
}

TEST(TrainerErrors, WarmupLongerThanEpochsRun) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 40, 1);  // 5 batches: 1 epoch is 5 steps
  const Config config =
      make_config(dir, {"train.steps=0", "train.epochs=1", "schedule.name=warmup_cosine", "schedule.warmup_steps=10"});
  EXPECT_TRUE(raises_error([&] { train(config); }, {"schedule.warmup_steps (10)", "5 optimizer steps"}));
}

TEST(TrainerErrors, CheckpointOfAnotherWorldSize) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 32, 1);
  const Config config = make_config(dir, {"train.steps=3"});
  const RunResult first = train(config);
  ASSERT_EQ(first.last_checkpoint, (fs::path(config.log.dir) / "checkpoints" / "step-00000003").string());

  // Rewrite state.json as a 2-rank run would have: still valid JSON, COMPLETE left in place.
  const std::string state_path = (fs::path(first.last_checkpoint) / "state.json").string();
  json state = json::parse(read_file(state_path));
  state["world_size"] = 2;
  state["rng"].push_back(state["rng"][0]);
  write_file(state_path, state.dump(2));
  ASSERT_TRUE(fs::exists(fs::path(first.last_checkpoint) / "COMPLETE"));
  ASSERT_EQ(load_checkpoint(first.last_checkpoint).state.at("world_size").get<int>(), 2);

  Config longer = config;
  longer.train.steps = 6;
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  EXPECT_TRUE(raises_error([&] { train(longer, resume); },
                           {first.last_checkpoint, "written by 2 ranks", "this run has 1", "resume with 2 ranks"}));
}

// A checkpoint resumes only under the config that fixes its model, data order and optimizer; other
// changes (a learning rate) are allowed and logged.
TEST(TrainerErrors, ResumeWithAnotherDataOrderOrModel) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 12);
  write_quadrant_images(dir.file("train2"), 64, 12);  // the same samples in another directory
  const Config config = make_config(dir, {"train.steps=10"});
  RunOptions stop;
  stop.stop_after_steps = 4;
  const RunResult first = train(config, stop);
  ASSERT_TRUE(first.stopped);
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, std::string>>{{"train.batch_size", "4"},
                                                        {"train.seed", "99"},
                                                        {"data.shuffle", "false"},
                                                        {"model.name", "\"cnn\""},
                                                        {"optimizer.name", "\"sgd\""},
                                                        {"train.grad_accum", "2"},
                                                        {"data.train", fmt::format("\"{}\"", dir.file("train2"))}}) {
    SCOPED_TRACE(key + " = " + value);
    const Config changed = make_config(dir, {"train.steps=10", key + "=" + value});
    EXPECT_TRUE(raises_error([&] { train(changed, resume); }, {first.last_checkpoint, key, "same model, data order"}));
  }
  // The same data directory spelled another way, and another learning rate: allowed.
  const Config other_lr =
      make_config(dir, {"train.steps=10", "optimizer.lr=5e-4", fmt::format("data.train=\"{}/./train\"", dir.path())});
  const RunResult resumed = train(other_lr, resume);
  EXPECT_EQ(resumed.resumed_from_step, 4);
  EXPECT_EQ(resumed.steps, 10);
  const std::string log = read_file(dir.file("run/logs/rank-0.log"));
  EXPECT_NE(log.find("with a changed config: data.train = "), std::string::npos) << log;
  EXPECT_NE(log.find("; optimizer.lr = 0.0005"), std::string::npos) << log;
}

TEST(TrainerErrors, StateJsonWithoutTheTrainersKeys) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 32, 13);
  const Config config = make_config(dir, {"train.steps=3"});
  const RunResult first = train(config);
  const std::string state_path = (fs::path(first.last_checkpoint) / "state.json").string();
  const json good = json::parse(read_file(state_path));
  Config longer = config;
  longer.train.steps = 6;
  RunOptions resume;
  resume.resume = ResumeMode::Auto;
  for (const char* key : {"world_size", "epoch", "next_batch", "rng", "config"}) {
    SCOPED_TRACE(key);
    json state = good;
    state.erase(key);
    write_file(state_path, state.dump(2));
    EXPECT_TRUE(raises_error([&] { train(longer, resume); }, {state_path, fmt::format("no \"{}\"", key)}));
  }
  json state = good;
  state["epoch"] = "zero";
  write_file(state_path, state.dump(2));
  EXPECT_TRUE(raises_error([&] { train(longer, resume); }, {state_path, "\"epoch\" must be an integer"}));
  state = good;
  state["rng"] = json::array();
  write_file(state_path, state.dump(2));
  EXPECT_TRUE(raises_error([&] { train(longer, resume); }, {state_path, "one entry per rank"}));
  for (const json& entry : {json("seed"), json::array({1, 2, 3}), json::array({1, 2, "three", 4})}) {
    SCOPED_TRACE(entry.dump());
    state = good;
    state["rng"][0] = entry;
    write_file(state_path, state.dump(2));
    EXPECT_TRUE(raises_error([&] { train(longer, resume); },
                             {state_path, "\"rng\" entry of rank 0 must hold 4 integers", entry.dump()}));
  }
}

TEST(TrainerErrors, CheckpointDirUnderRegularFile) {
  TempDir dir;
  write_quadrant_images(dir.file("train"), 64, 1);
  write_file(dir.file("blocker"), "a regular file\n");
  const Config config = make_config(
      dir, {"train.steps=8", "checkpoint.every_steps=4", fmt::format("checkpoint.dir=\"{}\"", dir.file("blocker/ck"))});
  EXPECT_TRUE(raises_error([&] { train(config); }, {dir.file("blocker")}));

  // The failure came at the first checkpoint (step 4); what was written before it is intact.
  EXPECT_EQ(read_file(dir.file("blocker")), "a regular file\n");
  const std::map<int64_t, double> loss = series(read_jsonl(dir.file("run/metrics.jsonl")), "loss");
  EXPECT_EQ(keys(loss), (std::vector<int64_t>{1, 2, 3, 4}));
  for (const auto& [step, value] : loss) EXPECT_TRUE(std::isfinite(value)) << step;
  const std::vector<std::string> events = files_containing(dir.file("run/tensorboard"), "tfevents");
  ASSERT_EQ(events.size(), 1u);
  std::string file_version;
  int64_t tb_losses = 0;
  for (const Scalar& s : read_event_file(events[0], &file_version)) tb_losses += s.tag == "train/loss";
  EXPECT_EQ(tb_losses, 4);
  EXPECT_NE(read_file(dir.file("run/logs/rank-0.log")).find("training mlp"), std::string::npos);
}

}  // namespace
}  // namespace flame::train
