// flame-train's metric writers: JSON Lines records parsed back with nlohmann::json, appends across
// writers, open and write failures; CRC32C check values on both implementations; TensorBoard event
// files parsed back frame by frame (lengths, CRCs, protobuf fields) and, where Python's tensorboard
// is installed, read by TensorBoard's own loader (tests/launch/tensorboard_read.py).
#include "launch/train/metrics.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>

#include "launch/train/tensorboard.h"
#include "support/test_support.h"

namespace flame::train {
namespace {

namespace fs = std::filesystem;
using test::raises_error;

using test::read_file;
using test::TempDir;
using test::write_file;

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

double unix_now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

/// While alive, files this process writes may not grow past `bytes` (RLIMIT_FSIZE; SIGXFSZ ignored,
/// so the write fails with EFBIG). Limits apply to root too.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    EXPECT_EQ(getrlimit(RLIMIT_FSIZE, &saved_), 0);
    saved_handler_ = signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    signal(SIGXFSZ, saved_handler_);
  }

 private:
  rlimit saved_{};
  sighandler_t saved_handler_{};
};

// --- JSON Lines ----------------------------------------------------------------------------------

TEST(JsonlWriter, WritesOneParsableObjectPerLineWithExactValues) {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  const std::vector<double> values = {
      0.1, 1.0 / 3.0, -2.5e10, 1e-300, std::numeric_limits<double>::denorm_min(), std::numeric_limits<double>::max(),
      0.0, 3.0};
  const double before = unix_now();
  {
    JsonlWriter writer(path);
    EXPECT_EQ(writer.path(), path);
    for (size_t i = 0; i < values.size(); ++i)
      writer.write(static_cast<int64_t>(10 * i), {{"loss", values[i]}, {"lr", 0.5 * i}, {"eval/accuracy", -values[i]}});
  }
  const double after = unix_now();
  const std::vector<std::string> lines = read_lines(path);
  ASSERT_EQ(lines.size(), values.size());
  double previous_time = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    SCOPED_TRACE(lines[i]);
    const auto record = nlohmann::ordered_json::parse(lines[i]);
    ASSERT_TRUE(record.is_object());
    std::vector<std::string> keys;
    for (const auto& item : record.items()) keys.push_back(item.key());
    EXPECT_EQ(keys, (std::vector<std::string>{"step", "time", "loss", "lr", "eval/accuracy"}));
    EXPECT_TRUE(record["step"].is_number_integer());
    EXPECT_EQ(record["step"].get<int64_t>(), static_cast<int64_t>(10 * i));
    ASSERT_TRUE(record["time"].is_number_float());
    const double time = record["time"].get<double>();
    EXPECT_GE(time, std::floor(before));
    EXPECT_LE(time, after + 1e-3);
    EXPECT_GE(time, previous_time);
    previous_time = time;
    EXPECT_EQ(record["loss"].get<double>(), values[i]);  // round-trip exact
    EXPECT_EQ(record["lr"].get<double>(), 0.5 * i);
    EXPECT_EQ(record["eval/accuracy"].get<double>(), -values[i]);
  }
}

TEST(JsonlWriter, AppendsAcrossWritersAndFlushesEachRecord) {
  TempDir dir;
  const std::string path = dir.file("nested/run/metrics.jsonl");  // parents created
  {
    JsonlWriter first(path);
    first.write(0, {{"loss", 2.0}});
    EXPECT_EQ(read_lines(path).size(), 1u);  // on disk while the writer is still open
    first.write(1, {{"loss", 1.5}});
    EXPECT_EQ(read_lines(path).size(), 2u);
  }
  JsonlWriter resumed(path);
  resumed.write(2, {{"loss", 1.25}});
  resumed.write(3, {});
  const std::vector<std::string> lines = read_lines(path);
  ASSERT_EQ(lines.size(), 4u);
  for (int64_t step = 0; step < 4; ++step) {
    const auto record = nlohmann::json::parse(lines[step]);
    EXPECT_EQ(record["step"].get<int64_t>(), step);
    if (step < 3) {
      EXPECT_EQ(record["loss"].get<double>(), std::vector<double>({2.0, 1.5, 1.25})[step]);
    } else {
      EXPECT_EQ(record.size(), 2u) << lines[step];  // step and time only
    }
  }
}

TEST(JsonlWriter, WritesNonFiniteValuesAsStrings) {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  JsonlWriter writer(path);
  writer.write(7, {{"nan", std::nan("")},
                   {"inf", std::numeric_limits<double>::infinity()},
                   {"minus_inf", -std::numeric_limits<double>::infinity()}});
  const std::vector<std::string> lines = read_lines(path);
  ASSERT_EQ(lines.size(), 1u);
  const auto record = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(record["nan"], "NaN");
  EXPECT_EQ(record["inf"], "Infinity");
  EXPECT_EQ(record["minus_inf"], "-Infinity");
}

TEST(JsonlWriter, RejectsBadNamesAndStepsWritingNothing) {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  JsonlWriter writer(path);
  EXPECT_TRUE(raises_error([&] { writer.write(1, {{"step", 1.0}}); }, {path, "'step' is a reserved key"}));
  EXPECT_TRUE(raises_error([&] { writer.write(1, {{"time", 1.0}}); }, {"'time' is a reserved key"}));
  EXPECT_TRUE(raises_error([&] { writer.write(1, {{"", 1.0}}); }, {"empty name"}));
  EXPECT_TRUE(raises_error([&] { writer.write(1, {{"loss", 1.0}, {"loss", 2.0}}); }, {"'loss' is given twice"}));
  EXPECT_TRUE(raises_error([&] { writer.write(-1, {{"loss", 1.0}}); }, {"step -1 is negative"}));
  EXPECT_TRUE(read_lines(path).empty());
}

TEST(JsonlWriter, UnopenablePathRaisesNamingIt) {
  TempDir dir;
  const std::string not_a_directory = dir.file("plain_file");
  write_file(not_a_directory, "x");
  // A parent that is a regular file blocks the open even for root.
  const std::string under_file = not_a_directory + "/metrics.jsonl";
  EXPECT_TRUE(raises_error([&] { JsonlWriter writer(under_file); }, {"cannot create the directory", under_file}));
  EXPECT_TRUE(raises_error([&] { JsonlWriter writer(dir.file("")); }, {"cannot open the metrics file"}));
  EXPECT_TRUE(raises_error([] { JsonlWriter writer(""); }, {"metrics path is empty"}));
}

TEST(JsonlWriter, WriteFailureRaisesNamingThePath) {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  JsonlWriter writer(path);
  writer.write(0, {{"loss", 1.0}});
  const auto size = fs::file_size(path);
  FileSizeLimit limit(size + 10);  // room for less than one more record
  EXPECT_TRUE(raises_error([&] { writer.write(1, {{"loss", 0.5}}); }, {"cannot write step 1", path}));
}

// --- CRC32C --------------------------------------------------------------------------------------

std::vector<Crc32cMethod> available_methods() {
  std::vector<Crc32cMethod> methods = {Crc32cMethod::kPortable};
  if (crc32c_hardware_available()) methods.push_back(Crc32cMethod::kHardware);
  return methods;
}

TEST(JsonlWriter, DropRecordsAfterKeepsEarlierStepsAndDropsATornLine) {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  EXPECT_EQ(drop_records_after(path, 5), 0);  // no file: nothing to drop
  EXPECT_FALSE(std::filesystem::exists(path));
  {
    JsonlWriter writer(path);
    for (int64_t step = 1; step <= 8; ++step) writer.write(step, {{"loss", 1.0 / double(step)}});
  }
  write_file(path, read_file(path) + R"({"step": 9, "los)");  // the line a crash cut short
  EXPECT_EQ(drop_records_after(path, 5), 4);                     // steps 6, 7, 8 and the torn line
  std::ifstream in(path);
  std::vector<int64_t> steps;
  for (std::string line; std::getline(in, line);) steps.push_back(nlohmann::json::parse(line).at("step"));
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(drop_records_after(path, 5), 0);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(Crc32c, MatchesTheCheckValuesWithEveryMethod) {
  for (Crc32cMethod method : available_methods()) {
    SCOPED_TRACE(method == Crc32cMethod::kHardware ? "hardware" : "portable");
    EXPECT_EQ(crc32c("123456789", method), 0xE3069283u);
    EXPECT_EQ(crc32c(std::string(32, '\0'), method), 0x8A9136AAu);
    EXPECT_EQ(crc32c(std::string(32, '\xff'), method), 0x62A8AB43u);
    EXPECT_EQ(crc32c("", method), 0u);
  }
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);  // the default method
}

TEST(Crc32c, HardwareMatchesPortableOnEveryLengthAndAlignment) {
  if (!crc32c_hardware_available()) GTEST_SKIP() << "this CPU has no SSE4.2 crc32 instruction";
  test::HostRng rng;
  std::string bytes(160, '\0');
  for (char& c : bytes) c = static_cast<char>(rng.integer(0, 255));
  const std::string_view all(bytes);
  for (size_t begin = 0; begin < 8; ++begin)
    for (size_t size = 0; begin + size <= bytes.size(); ++size)
      ASSERT_EQ(crc32c(all.substr(begin, size), Crc32cMethod::kHardware),
                crc32c(all.substr(begin, size), Crc32cMethod::kPortable))
          << "begin " << begin << " size " << size;
}

TEST(Crc32c, HardwareMethodRaisesWithoutTheInstruction) {
  if (crc32c_hardware_available()) GTEST_SKIP() << "this CPU has the SSE4.2 crc32 instruction";
  EXPECT_TRUE(raises_error([] { crc32c("x", Crc32cMethod::kHardware); }, {"no SSE4.2", "kPortable"}));
}

TEST(Crc32c, MasksAsTfRecordDoes) {
  EXPECT_EQ(masked_crc32c(0), 0xa282ead8u);
  EXPECT_EQ(masked_crc32c(0xE3069283u), 0xc78ab0e5u);  // rotate right by 15, add 0xa282ead8
  EXPECT_EQ(masked_crc32c(0xffffffffu), 0xa282ead7u);  // the addition wraps
}

// --- TensorBoard: a protobuf decoder for the Event fields FLAME writes ---------------------------

struct DecodedEvent {
  std::optional<double> wall_time;
  int64_t step = 0;
  std::optional<std::string> file_version;
  std::vector<std::pair<std::string, float>> values;  // Summary.Value: tag, simple_value
};

/// Reads protobuf fields from `bytes`, failing the test on malformed input.
class ProtoReader {
 public:
  explicit ProtoReader(std::string_view bytes) : bytes_(bytes) {}
  bool done() const { return pos_ >= bytes_.size(); }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      EXPECT_LT(pos_, bytes_.size()) << "truncated varint";
      if (pos_ >= bytes_.size()) return value;
      const auto byte = static_cast<unsigned char>(bytes_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    ADD_FAILURE() << "varint longer than 10 bytes";
    return value;
  }
  uint64_t fixed(int size) {
    EXPECT_LE(pos_ + size, bytes_.size()) << "truncated fixed-width field";
    uint64_t value = 0;
    for (int i = 0; i < size && pos_ < bytes_.size(); ++i)
      value |= static_cast<uint64_t>(static_cast<unsigned char>(bytes_[pos_++])) << (8 * i);
    return value;
  }
  std::string_view bytes() {
    const uint64_t size = varint();
    EXPECT_LE(pos_ + size, bytes_.size()) << "truncated length-delimited field";
    const std::string_view out = bytes_.substr(pos_, size);
    pos_ += size;
    return out;
  }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
};

DecodedEvent decode_event(std::string_view bytes) {
  DecodedEvent event;
  ProtoReader event_reader(bytes);
  while (!event_reader.done()) {
    const uint64_t key = event_reader.varint();
    switch (key) {
      case (1 << 3) | 1:
        event.wall_time = std::bit_cast<double>(event_reader.fixed(8));
        break;
      case (2 << 3) | 0:
        event.step = static_cast<int64_t>(event_reader.varint());
        break;
      case (3 << 3) | 2:
        event.file_version = std::string(event_reader.bytes());
        break;
      case (5 << 3) | 2: {
        ProtoReader summary(event_reader.bytes());
        while (!summary.done()) {
          EXPECT_EQ(summary.varint(), (1u << 3) | 2) << "Summary field other than value";
          ProtoReader value(summary.bytes());
          std::pair<std::string, float> tagged;
          while (!value.done()) {
            const uint64_t value_key = value.varint();
            if (value_key == ((1 << 3) | 2)) {
              tagged.first = value.bytes();
            } else {
              EXPECT_EQ(value_key, (2u << 3) | 5) << "Summary.Value field other than tag and simple_value";
              tagged.second = std::bit_cast<float>(static_cast<uint32_t>(value.fixed(4)));
            }
          }
          event.values.push_back(tagged);
        }
        break;
      }
      default:
        ADD_FAILURE() << "unexpected Event field key " << key;
        return event;
    }
  }
  return event;
}

struct Scalar {
  std::string tag;
  double value;
  int64_t step;
};

/// The scalars every TensorBoard test writes: two tags at interleaved steps, a value float32 cannot
/// hold exactly, a step needing a 6-byte varint, a negative value.
std::vector<Scalar> sample_scalars() {
  std::vector<Scalar> out;
  for (int64_t step = 0; step < 5; ++step) {
    out.push_back({"train/loss", 1.0 / (step + 1), step});
    if (step % 2 == 0) out.push_back({"lr", 0.1 * std::pow(0.5, step), step});
  }
  out.push_back({"eval/accuracy", 0.9123456789, int64_t{1} << 40});
  out.push_back({"train/loss", -2.5, (int64_t{1} << 40) + 1});
  return out;
}

void expect_sample_events(const std::vector<std::string>& records, double before, double after) {
  const std::vector<Scalar> scalars = sample_scalars();
  ASSERT_EQ(records.size(), 1 + scalars.size());
  const DecodedEvent version = decode_event(records[0]);
  EXPECT_EQ(version.file_version, "brain.Event:2");
  EXPECT_TRUE(version.values.empty());
  for (size_t i = 0; i < records.size(); ++i) {
    const DecodedEvent event = decode_event(records[i]);
    ASSERT_TRUE(event.wall_time.has_value()) << "event " << i;
    EXPECT_GE(*event.wall_time, before);
    EXPECT_LE(*event.wall_time, after);
    if (i == 0) continue;
    const Scalar& want = scalars[i - 1];
    EXPECT_FALSE(event.file_version.has_value());
    EXPECT_EQ(event.step, want.step);
    ASSERT_EQ(event.values.size(), 1u);
    EXPECT_EQ(event.values[0].first, want.tag);
    EXPECT_EQ(event.values[0].second, static_cast<float>(want.value));
  }
}

/// The frames of an event file, walked here independently of read_tfrecords.
std::vector<std::string> walk_frames(const std::string& bytes) {
  std::vector<std::string> records;
  size_t offset = 0;
  auto le = [&](size_t at, int size) {
    uint64_t value = 0;
    for (int i = 0; i < size; ++i) value |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
    return value;
  };
  while (offset < bytes.size()) {
    EXPECT_GE(bytes.size() - offset, 16u) << "frame at " << offset;
    if (bytes.size() - offset < 16) break;
    const uint64_t length = le(offset, 8);
    EXPECT_EQ(le(offset + 8, 4), masked_crc32c(crc32c(bytes.substr(offset, 8), Crc32cMethod::kPortable)));
    EXPECT_LE(offset + 16 + length, bytes.size()) << "frame at " << offset;
    if (offset + 16 + length > bytes.size()) break;
    records.push_back(bytes.substr(offset + 12, length));
    EXPECT_EQ(le(offset + 12 + length, 4), masked_crc32c(crc32c(records.back(), Crc32cMethod::kPortable)));
    offset += 16 + length;
  }
  return records;
}

TEST(TensorBoardWriter, NamesTheFileAfterTimeHostAndPidInACreatedDirectory) {
  TempDir dir;
  const std::string log_dir = dir.file("runs/tb");
  const auto before = std::time(nullptr);
  TensorBoardWriter writer(log_dir);
  const auto after = std::time(nullptr);
  EXPECT_EQ(fs::path(writer.path()).parent_path(), fs::path(log_dir));
  const std::string name = fs::path(writer.path()).filename().string();
  std::smatch match;
  ASSERT_TRUE(std::regex_match(name, match, std::regex(R"(events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.flame)"))) << name;
  EXPECT_GE(std::stoll(match[1]), before);
  EXPECT_LE(std::stoll(match[1]), after);
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(match[2], std::string(host));
  EXPECT_EQ(std::stoll(match[3]), getpid());

  // A second writer in the same directory gets its own file.
  TensorBoardWriter second(log_dir);
  EXPECT_NE(second.path(), writer.path());
  EXPECT_EQ(read_tfrecords(second.path()).size(), 1u);
  EXPECT_EQ(read_tfrecords(writer.path()).size(), 1u);
}

TEST(TensorBoardWriter, WritesFramedEventsThatParseBack) {
  TempDir dir;
  const double before = unix_now();
  std::string path;
  {
    TensorBoardWriter writer(dir.file("tb"));
    path = writer.path();
    for (const Scalar& s : sample_scalars()) writer.add_scalar(s.tag, s.value, s.step);
  }  // the destructor flushes
  const double after = unix_now();
  const std::string bytes = read_file(path);
  const std::vector<std::string> frames = walk_frames(bytes);
  expect_sample_events(frames, before, after);
  EXPECT_EQ(read_tfrecords(path), frames);
}

TEST(TensorBoardWriter, FlushWritesTheBufferedEvents) {
  TempDir dir;
  TensorBoardWriter writer(dir.file("tb"));
  EXPECT_EQ(read_tfrecords(writer.path()).size(), 1u);  // the file_version event, written at once
  writer.add_scalar("loss", 1.0, 0);
  writer.add_scalar("loss", 0.5, 1);
  EXPECT_EQ(read_tfrecords(writer.path()).size(), 1u);  // buffered
  writer.flush();
  const std::vector<std::string> records = read_tfrecords(writer.path());
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(decode_event(records[2]).step, 1);
  EXPECT_EQ(decode_event(records[2]).values.at(0).second, 0.5f);
  writer.flush();  // nothing buffered: nothing written
  EXPECT_EQ(read_tfrecords(writer.path()).size(), 3u);
}

TEST(TensorBoardWriter, FlushesByItselfPastOneMebibyte) {
  TempDir dir;
  TensorBoardWriter writer(dir.file("tb"));
  const std::string tag(1000, 't');  // about 1 KiB per event
  int64_t step = 0;
  while (fs::file_size(writer.path()) < (size_t{1} << 20) && step < 2000) writer.add_scalar(tag, 1.0, step++);
  EXPECT_GE(fs::file_size(writer.path()), size_t{1} << 20);
  EXPECT_LE(step, 1100);
  EXPECT_EQ(read_tfrecords(writer.path()).size(), static_cast<size_t>(step) + 1);
}

TEST(TensorBoardWriter, RejectsEmptyTagsAndNegativeSteps) {
  TempDir dir;
  TensorBoardWriter writer(dir.file("tb"));
  EXPECT_TRUE(raises_error([&] { writer.add_scalar("", 1.0, 0); }, {writer.path(), "tag is empty"}));
  EXPECT_TRUE(raises_error([&] { writer.add_scalar("loss", 1.0, -3); }, {"step -3 of 'loss' is negative"}));
  writer.flush();
  EXPECT_EQ(read_tfrecords(writer.path()).size(), 1u);
}

TEST(TensorBoardWriter, UncreatableDirectoryRaisesNamingIt) {
  TempDir dir;
  const std::string not_a_directory = dir.file("plain_file");
  write_file(not_a_directory, "x");
  const std::string log_dir = not_a_directory + "/tb";
  EXPECT_TRUE(raises_error([&] { TensorBoardWriter writer(log_dir); }, {"cannot create the log directory", log_dir}));
  EXPECT_TRUE(raises_error([] { TensorBoardWriter writer(""); }, {"log directory is empty"}));
}

TEST(TensorBoardWriter, FailedFlushRaisesAndKeepsTheEventsForTheNextFlush) {
  TempDir dir;
  TensorBoardWriter writer(dir.file("tb"));
  for (const Scalar& s : sample_scalars()) writer.add_scalar(s.tag, s.value, s.step);
  {
    FileSizeLimit limit(fs::file_size(writer.path()) + 40);  // part of the first scalar event fits
    EXPECT_TRUE(raises_error([&] { writer.flush(); }, {"cannot write to the event file", writer.path()}));
  }
  writer.flush();
  expect_sample_events(read_tfrecords(writer.path()), 0, unix_now());
}

// --- read_tfrecords' errors ------------------------------------------------------------------------

TEST(ReadTfRecords, RaisesForCorruptOrTruncatedFrames) {
  TempDir dir;
  std::string path;
  {
    TensorBoardWriter writer(dir.file("tb"));
    path = writer.path();
    writer.add_scalar("loss", 1.0, 1);
  }
  const std::string good = read_file(path);
  const std::vector<std::string> records = read_tfrecords(path);
  ASSERT_EQ(records.size(), 2u);
  const size_t second = 16 + records[0].size();  // byte offset of the second frame
  const std::string bad = dir.file("bad");

  std::string bytes = good;
  bytes[second] ^= 1;  // its length
  write_file(bad, bytes);
  EXPECT_TRUE(raises_error([&] { read_tfrecords(bad); },
                           {bad, fmt::format("length CRC of the frame at byte {} does not match", second)}));

  bytes = good;
  bytes[second + 12] ^= 1;  // its data
  write_file(bad, bytes);
  EXPECT_TRUE(raises_error([&] { read_tfrecords(bad); },
                           {bad, fmt::format("data CRC of the frame at byte {} does not match", second)}));

  write_file(bad, good.substr(0, good.size() - 1));  // the data CRC cut short
  EXPECT_TRUE(
      raises_error([&] { read_tfrecords(bad); }, {bad, "is truncated", fmt::format("frame at byte {} needs", second)}));

  write_file(bad, good.substr(0, second + 5));  // the header cut short
  EXPECT_TRUE(raises_error([&] { read_tfrecords(bad); }, {bad, "has 5 of its 12 header bytes"}));

  EXPECT_TRUE(raises_error([&] { read_tfrecords(dir.file("missing")); }, {"cannot open", dir.file("missing")}));
}

// --- TensorBoard's own reader --------------------------------------------------------------------

/// Runs `command` through the shell; its exit status and standard output.
std::pair<int, std::string> run_command(const std::string& command) {
  std::cout << "+ " << command << std::endl;
  std::FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, ""};
  std::string output;
  char chunk[4096];
  for (size_t n; (n = std::fread(chunk, 1, sizeof(chunk), pipe)) > 0;) output.append(chunk, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(TensorBoardPython, TensorBoardReadsTheScalars) {
  if (run_command("python3 -c 'import tensorboard' >/dev/null 2>&1").first != 0)
    GTEST_SKIP() << "python3 cannot import tensorboard (scripts/setup.sh installs it with pip)";
  const fs::path script = fs::path(FLAME_SOURCE_DIR) / "tests/launch/tensorboard_read.py";
  ASSERT_TRUE(fs::exists(script)) << script;
  TempDir dir;
  const double before = unix_now();
  std::string path;
  {
    TensorBoardWriter writer(dir.file("tb"));
    path = writer.path();
    for (const Scalar& s : sample_scalars()) writer.add_scalar(s.tag, s.value, s.step);
  }
  const double after = unix_now();
  const auto [status, output] = run_command(fmt::format("python3 '{}' '{}'", script.string(), path));
  ASSERT_EQ(status, 0) << output;
  const auto read = nlohmann::json::parse(output);
  EXPECT_EQ(read["file_version"].get<double>(), 2.0);

  std::map<std::string, std::vector<Scalar>> want;
  for (const Scalar& s : sample_scalars()) want[s.tag].push_back(s);
  ASSERT_EQ(read["scalars"].size(), want.size()) << output;
  for (const auto& [tag, scalars] : want) {
    SCOPED_TRACE(tag);
    ASSERT_TRUE(read["scalars"].contains(tag)) << output;
    const auto& got = read["scalars"][tag];
    ASSERT_EQ(got.size(), scalars.size()) << output;
    for (size_t i = 0; i < scalars.size(); ++i) {
      EXPECT_EQ(got[i][0].get<int64_t>(), scalars[i].step);
      EXPECT_EQ(got[i][1].get<double>(), static_cast<double>(static_cast<float>(scalars[i].value)));
      EXPECT_GE(got[i][2].get<double>(), before);
      EXPECT_LE(got[i][2].get<double>(), after);
    }
  }
}

}  // namespace
}  // namespace flame::train
