// flame-train's TensorBoard event files: scalars that TensorBoard plots, written without TensorFlow
// or a protobuf library.
//
// Note [tensorboard event file]
// An event file is a sequence of TFRecord frames, each
//   uint64 length (little-endian) | uint32 masked CRC32C of those 8 bytes |
//   `length` bytes of data | uint32 masked CRC32C of the data
// where the mask is ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32) and CRC32C is the
// Castagnoli CRC. Each frame's data is one protobuf-encoded tensorflow.Event:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// The first event carries file_version "brain.Event:2"; each scalar is then one event with a
// Summary of one Value. TensorBoard finds the file in its log directory by the "tfevents" in its name.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace flame::train {

/// Writes a TensorBoard event file (Note [tensorboard event file]). Used by rank 0 only; not
/// thread-safe.
class TensorBoardWriter {
 public:
  /// Creates `log_dir` (and its parents) when missing and a new event file in it named
  /// "events.out.tfevents.<unix seconds>.<hostname>.<pid>.flame" ("...<pid>.<n>.flame", n = 1, 2, ...
  /// when a writer of this process already took that name this second), and writes the file_version
  /// event to it. An existing file is never overwritten. Raises flame::Error naming the path when the
  /// directory or the file cannot be created.
  explicit TensorBoardWriter(const std::string& log_dir);
  /// Flushes; a failure is reported on stderr (a destructor cannot throw).
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  /// Buffers one event holding `value` (stored as a float32, as TensorBoard's simple_value is) under
  /// `tag` at `step`, stamped with the current wall time. The buffer is written out by flush(), by the
  /// destructor, and whenever it passes 1 MiB. Raises flame::Error for an empty tag or a negative step.
  void add_scalar(const std::string& tag, double value, int64_t step);
  /// Writes the buffered events to the file (to the operating system; no fsync). Raises flame::Error
  /// naming the path when the write fails; the unwritten events stay buffered.
  void flush();

  /// The event file being written.
  const std::string& path() const { return path_; }

 private:
  void append_event(const std::string& event);

  std::string path_;
  int fd_ = -1;
  std::string buffer_;  // TFRecord frames not yet written to fd_
};

/// Which implementation computes a CRC32C.
enum class Crc32cMethod {
  kHardware,  // the SSE4.2 crc32 instruction; only where crc32c_hardware_available()
  kPortable,  // bit by bit, on any machine
};

/// Whether this CPU has the SSE4.2 crc32 instruction (always false off x86-64).
bool crc32c_hardware_available();

/// The CRC32C (Castagnoli, reflected polynomial 0x82F63B78) of `data`, with the hardware
/// instruction when the CPU has it. crc32c("123456789") == 0xE3069283.
uint32_t crc32c(std::string_view data);
/// The CRC32C of `data` with the chosen method. Raises flame::Error for kHardware on a CPU without it.
uint32_t crc32c(std::string_view data, Crc32cMethod method);
/// The masked CRC that TFRecord frames store: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(uint32_t crc);

/// The data of every TFRecord frame of the file at `path`, in order (Note [tensorboard event file]).
/// Raises flame::Error naming the path and the byte offset for a truncated frame or a CRC that does
/// not match.
std::vector<std::string> read_tfrecords(const std::string& path);

}  // namespace flame::train
