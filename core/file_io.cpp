#include "core/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace flame::io {

std::string errno_text() { return std::strerror(errno); }

File::File(const std::string& path, int flags, mode_t mode) : fd_(::open(path.c_str(), flags, mode)) {}

File::~File() {
  const int saved = errno;
  close();
  errno = saved;
}

File::File(File&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    const int saved = errno;
    close();
    errno = saved;
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

bool File::close() {
  if (fd_ < 0) return true;
  return ::close(std::exchange(fd_, -1)) == 0;
}

size_t write_fully(int fd, const void* data, size_t size) {
  const char* bytes = static_cast<const char*>(data);
  size_t written = 0;
  while (written < size) {
    const ssize_t n = ::write(fd, bytes + written, size - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = 0;
      break;
    }
    written += static_cast<size_t>(n);
  }
  return written;
}

void write_all(int fd, const void* data, size_t size, const std::string& path, std::string_view prefix) {
  if (write_fully(fd, data, size) == size) return;
  FLAME_FAIL("{}writing '{}' failed: {}", prefix, path, errno != 0 ? errno_text() : "nothing written");
}

void sync_and_close(File& file, const std::string& path, std::string_view prefix) {
  FLAME_CHECK(::fsync(file.get()) == 0, "{}fsync of '{}' failed: {}", prefix, path, errno_text());
  FLAME_CHECK(file.close(), "{}closing '{}' failed: {}", prefix, path, errno_text());
}

void fsync_directory(const std::string& dir) {
  File fd(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  FLAME_CHECK(fd.is_open(), "cannot open directory '{}' to fsync it: {}", dir, errno_text());
  FLAME_CHECK(::fsync(fd.get()) == 0, "fsync of directory '{}' failed: {}", dir, errno_text());
}

bool try_fsync_directory(const std::string& dir) {
  File fd(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  return fd.is_open() && ::fsync(fd.get()) == 0;
}

std::string read_to_end(const File& file, const std::string& path, std::string_view prefix) {
  std::string text;
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(file.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    FLAME_CHECK(n >= 0, "{}reading '{}' failed: {}", prefix, path, errno_text());
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  return text;
}

std::string read_whole_file(const std::string& path, std::string_view prefix) {
  const File file(path, O_RDONLY | O_CLOEXEC);
  FLAME_CHECK(file.is_open(), "{}cannot open '{}': {}", prefix, path, errno_text());
  return read_to_end(file, path, prefix);
}

}  // namespace flame::io
