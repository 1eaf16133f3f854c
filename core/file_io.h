// Low-level POSIX file I/O shared by the writers and readers above core/ (safetensors, checkpoints,
// dataset manifests and shards, TensorBoard event files): one RAII file descriptor, one write loop,
// one fsync-and-close, one directory fsync, one whole-file read.
//
// Errors name the path and the system error. Functions that raise take a `prefix` that starts the
// message ("save_safetensors: ", "manifest: ", or empty), so each caller keeps its own wording.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace flame::io {

/// strerror(errno): the text of the current system error.
std::string errno_text();

/// An open file descriptor, closed on destruction; movable, not copyable. A File that holds no
/// descriptor has get() < 0.
class File {
 public:
  File() = default;
  /// Takes ownership of `fd` (may be negative: then the File holds nothing).
  explicit File(int fd) : fd_(fd) {}
  /// ::open(path, flags, mode). On failure the File holds nothing and errno says why; callers
  /// check is_open() and raise with their own message.
  File(const std::string& path, int flags, mode_t mode = 0);
  /// Closes the descriptor, if any, keeping errno unchanged (callers read it after a failed check).
  ~File();
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  int get() const { return fd_; }
  bool is_open() const { return fd_ >= 0; }
  /// Closes now; returns false (errno set) when close() failed. Closing a File that holds nothing
  /// returns true.
  bool close();

 private:
  int fd_ = -1;
};

/// Writes `size` bytes of `data` to `fd`, retrying on EINTR and after partial writes. Returns the
/// number of bytes written: `size`, or fewer when write() failed (errno says why) or wrote nothing
/// (errno is then 0). For callers that must know how far a failed write got; others use write_all.
size_t write_fully(int fd, const void* data, size_t size);

/// write_fully, raising "<prefix>writing '<path>' failed: <system error>" when not everything was
/// written ("nothing written" in place of the system error when write() returned 0).
void write_all(int fd, const void* data, size_t size, const std::string& path, std::string_view prefix = {});

/// fsync()s `file`, then closes it, raising "<prefix>fsync of '<path>' failed: ..." or
/// "<prefix>closing '<path>' failed: ...". After this the written data is on disk; the file's
/// directory entry is not until its directory is fsync'ed too (fsync_directory).
void sync_and_close(File& file, const std::string& path, std::string_view prefix = {});

/// fsync()s directory `dir`, so that entries created, renamed or removed in it survive a crash.
/// Raises "cannot open directory '<dir>' to fsync it: ..." or "fsync of directory '<dir>' failed: ...".
void fsync_directory(const std::string& dir);

/// fsync_directory without raising: returns false, errno set, when `dir` could not be opened or
/// fsync'ed. For callers that raise with their own message, or that sync only as a best effort.
[[nodiscard]] bool try_fsync_directory(const std::string& dir);

/// Reads `file` from its current offset to the end, retrying on EINTR; raises "<prefix>reading
/// '<path>' failed: ..." when read() fails.
std::string read_to_end(const File& file, const std::string& path, std::string_view prefix = {});

/// The whole contents of `path`; raises "<prefix>cannot open '<path>': ..." or "<prefix>reading
/// '<path>' failed: ...".
std::string read_whole_file(const std::string& path, std::string_view prefix = {});

}  // namespace flame::io
