#include "launch/train/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/error.h"
#include "core/file_io.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace flame::train {

namespace {

constexpr uint32_t kCrc32cPolynomial = 0x82F63B78;  // Castagnoli, bit-reversed
constexpr size_t kFlushThresholdBytes = size_t{1} << 20;
constexpr int kMaxFileNameTries = 1000;

uint32_t crc32c_portable(const unsigned char* data, size_t size) {
  uint32_t crc = ~uint32_t{0};
  for (size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (kCrc32cPolynomial & (0u - (crc & 1u)));
  }
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(const unsigned char* data, size_t size) {
  uint64_t crc = ~uint32_t{0};
  for (; size >= 8; data += 8, size -= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);  // the instruction takes the 8 bytes in memory (little-endian) order
    crc = _mm_crc32_u64(crc, word);
  }
  uint32_t crc32 = static_cast<uint32_t>(crc);
  for (; size > 0; ++data, --size) crc32 = _mm_crc32_u8(crc32, *data);
  return ~crc32;
}
#endif

// --- protobuf wire format: varints, fixed-width little-endian numbers, length-delimited fields ------

enum class WireType : uint8_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t value) {
  for (; value >= 0x80; value >>= 7) out += static_cast<char>((value & 0x7f) | 0x80);
  out += static_cast<char>(value);
}

void put_little_endian(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((value >> (8 * i)) & 0xff);
}

void put_key(std::string& out, int field, WireType type) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(type));
}

void put_bytes_field(std::string& out, int field, std::string_view bytes) {
  put_key(out, field, WireType::kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

/// An Event with wall_time (field 1) and step (field 2); the caller appends the rest.
std::string event_header(int64_t step) {
  const double wall_time = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::string event;
  put_key(event, 1, WireType::kFixed64);
  put_little_endian(event, std::bit_cast<uint64_t>(wall_time), 8);
  put_key(event, 2, WireType::kVarint);
  put_varint(event, static_cast<uint64_t>(step));
  return event;
}

std::string scalar_event(const std::string& tag, float value, int64_t step) {
  std::string summary_value;  // Summary.Value
  put_bytes_field(summary_value, 1, tag);
  put_key(summary_value, 2, WireType::kFixed32);
  put_little_endian(summary_value, std::bit_cast<uint32_t>(value), 4);
  std::string summary;  // Summary
  put_bytes_field(summary, 1, summary_value);
  std::string event = event_header(step);
  put_bytes_field(event, 5, summary);
  return event;
}

uint32_t read_le32(const std::string& bytes, size_t offset) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  return value;
}

uint64_t read_le64(const std::string& bytes, size_t offset) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  return value;
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace

bool crc32c_hardware_available() {
#if defined(__x86_64__)
  static const bool available = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") != 0;
  }();
  return available;
#else
  return false;
#endif
}

uint32_t crc32c(std::string_view data) {
  return crc32c(data, crc32c_hardware_available() ? Crc32cMethod::kHardware : Crc32cMethod::kPortable);
}

uint32_t crc32c(std::string_view data, Crc32cMethod method) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(data.data());
  switch (method) {
    case Crc32cMethod::kPortable:
      return crc32c_portable(bytes, data.size());
    case Crc32cMethod::kHardware:
      FLAME_CHECK(crc32c_hardware_available(),
                  "crc32c: this CPU has no SSE4.2 crc32 instruction; use Crc32cMethod::kPortable");
#if defined(__x86_64__)
      return crc32c_sse42(bytes, data.size());
#endif
  }
  FLAME_FAIL("crc32c: unknown method {}", static_cast<int>(method));
}

uint32_t masked_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
  FLAME_CHECK(!log_dir.empty(), "TensorBoardWriter: the log directory is empty; give a directory");
  std::error_code error;
  std::filesystem::create_directories(log_dir, error);
  FLAME_CHECK(!error, "TensorBoardWriter: cannot create the log directory '{}': {}", log_dir, error.message());
  const std::string stem = (std::filesystem::path(log_dir) /
                            fmt::format("events.out.tfevents.{}.{}.{}", std::time(nullptr), host_name(), getpid()))
                               .string();
  for (int n = 0; n < kMaxFileNameTries && fd_ < 0; ++n) {
    path_ = n == 0 ? stem + ".flame" : fmt::format("{}.{}.flame", stem, n);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    FLAME_CHECK(fd_ >= 0 || errno == EEXIST, "TensorBoardWriter: cannot create the event file '{}': {}", path_,
                io::errno_text());
  }
  FLAME_CHECK(fd_ >= 0, "TensorBoardWriter: {} event files named '{}*.flame' already exist; remove them",
              kMaxFileNameTries, stem);
  std::string file_version = event_header(0);
  put_bytes_field(file_version, 3, "brain.Event:2");
  append_event(file_version);
  try {
    flush();
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

TensorBoardWriter::~TensorBoardWriter() {
  try {
    flush();
  } catch (const std::exception& e) {
    fmt::print(stderr, "TensorBoardWriter: {} events lost: {}\n", buffer_.empty() ? "no" : "some", e.what());
  }
  ::close(fd_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  FLAME_CHECK(!tag.empty(), "TensorBoardWriter '{}': the scalar tag is empty; give every scalar a tag", path_);
  FLAME_CHECK(step >= 0, "TensorBoardWriter '{}': step {} of '{}' is negative; steps count from 0", path_, step, tag);
  append_event(scalar_event(tag, static_cast<float>(value), step));
  if (buffer_.size() >= kFlushThresholdBytes) flush();
}

void TensorBoardWriter::append_event(const std::string& event) {
  std::string length;
  put_little_endian(length, event.size(), 8);
  buffer_ += length;
  put_little_endian(buffer_, masked_crc32c(crc32c(length)), 4);
  buffer_ += event;
  put_little_endian(buffer_, masked_crc32c(crc32c(event)), 4);
}

void TensorBoardWriter::flush() {
  const size_t written = io::write_fully(fd_, buffer_.data(), buffer_.size());
  if (written < buffer_.size()) {
    const std::string reason = errno != 0 ? io::errno_text() : "nothing written";
    buffer_.erase(0, written);  // the unwritten events are kept for the next flush
    FLAME_FAIL("TensorBoardWriter: cannot write to the event file '{}': {}", path_, reason);
  }
  buffer_.clear();
}

std::vector<std::string> read_tfrecords(const std::string& path) {
  const std::string bytes = io::read_whole_file(path, "read_tfrecords: ");
  std::vector<std::string> records;
  size_t offset = 0;
  while (offset < bytes.size()) {
    const size_t left = bytes.size() - offset;
    FLAME_CHECK(left >= 12, "read_tfrecords: '{}' is truncated: the frame at byte {} has {} of its 12 header bytes",
                path, offset, left);
    const uint64_t length = read_le64(bytes, offset);
    FLAME_CHECK(read_le32(bytes, offset + 8) == masked_crc32c(crc32c(std::string_view(bytes).substr(offset, 8))),
                "read_tfrecords: '{}' is corrupt: the length CRC of the frame at byte {} does not match", path, offset);
    FLAME_CHECK(left >= 16 && length <= left - 16,
                "read_tfrecords: '{}' is truncated: the frame at byte {} needs {} bytes of data and 4 of CRC after "
                "its header, {} follow",
                path, offset, length, left - 12);
    std::string data = bytes.substr(offset + 12, length);
    FLAME_CHECK(read_le32(bytes, offset + 12 + length) == masked_crc32c(crc32c(data)),
                "read_tfrecords: '{}' is corrupt: the data CRC of the frame at byte {} does not match", path, offset);
    records.push_back(std::move(data));
    offset += 16 + length;
  }
  return records;
}

}  // namespace flame::train
