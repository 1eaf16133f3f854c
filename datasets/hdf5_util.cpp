#include "datasets/hdf5_util.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"

namespace flame::data::h5 {

static_assert(std::endian::native == std::endian::little, "datasets/ assumes a little-endian host");

Lock lock() {
  static std::recursive_mutex mutex;
  Lock guard(mutex);
  // A thread-safe HDF5 build keeps error-printing settings per thread: silence them in every thread
  // that calls into HDF5 (FLAME builds its own messages).
  thread_local const bool silenced = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)silenced;
  return guard;
}

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = std::exchange(other.id_, -1);
  }
  return *this;
}

void Handle::reset() {
  if (id_ < 0) return;
  Lock guard = lock();
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      H5Fclose(id_);
      break;
    case H5I_DATASET:
      H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      H5Tclose(id_);
      break;
    case H5I_GENPROP_LST:
      H5Pclose(id_);
      break;
    default:
      H5Idec_ref(id_);
      break;
  }
  id_ = -1;
}

namespace {
struct StackEntry {
  hid_t minor;       // H5E_NOTHDF5, H5E_CANTLOCKFILE, ...
  std::string desc;  // may be empty
};

herr_t collect_error(unsigned, const H5E_error2_t* error, void* data) {
  static_cast<std::vector<StackEntry>*>(data)->push_back({error->min_num, error->desc ? error->desc : ""});
  return 0;
}

// The default error stack, outermost call first; clears it.
std::vector<StackEntry> take_stack() {
  std::vector<StackEntry> stack;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, &collect_error, &stack);
  H5Eclear2(H5E_DEFAULT);
  return stack;
}

std::string summary(const std::vector<StackEntry>& stack) {
  std::vector<std::string> messages;
  for (const StackEntry& entry : stack)
    if (!entry.desc.empty()) messages.push_back(entry.desc);
  if (messages.empty()) return "HDF5 reported no detail";
  std::string detail = messages.front();
  // The outermost message says what failed, the innermost why; the middle repeats them.
  if (messages.size() > 2) detail += ": " + messages[messages.size() - 2];
  if (messages.size() > 1) detail += ": " + messages.back();
  return detail;
}

/// What reading `path` directly says: the errno of open() or pread() (0 when the first byte can be
/// read, or the file is empty; EACCES without read permission), and whether
/// another open file holds a lock on it (a shared flock() refused: how HDF5's writers lock).
struct Probe {
  int error = 0;
  bool locked_elsewhere = false;
};
Probe probe_file(const std::string& path) {
  io::File file(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (!file.is_open()) return {errno, false};
  char byte = 0;
  if (::pread(file.get(), &byte, 1, 0) < 0) return {errno, false};
  if (::flock(file.get(), LOCK_SH | LOCK_NB) == 0) {
    ::flock(file.get(), LOCK_UN);
    return {0, false};
  }
  return {0, errno == EWOULDBLOCK};
}
}  // namespace

std::string error_detail() { return summary(take_stack()); }

OpenFailure take_open_failure() {
  const std::vector<StackEntry> stack = take_stack();
  const auto reported = [&](hid_t minor) {
    return std::any_of(stack.begin(), stack.end(), [&](const StackEntry& entry) { return entry.minor == minor; });
  };
  return OpenFailure{summary(stack), reported(H5E_CANTLOCKFILE), reported(H5E_NOTHDF5) || reported(H5E_TRUNCATED)};
}

std::string describe_open_failure(const std::string& path, const OpenFailure& failure) {
  const std::string& detail = failure.detail;
  const Probe probe = probe_file(path);
  if (probe.error != 0) {
    if (probe.error == EACCES || probe.error == EPERM)
      return "cannot read the file: permission denied (check the mode and owner of the file and its directories)";
    return fmt::format("cannot read the file: {}", std::strerror(probe.error));
  }
  if (failure.cannot_lock) {
    constexpr const char* kNoLocking = "set HDF5_USE_FILE_LOCKING=FALSE on file systems without locking";
    if (probe.locked_elsewhere)
      return fmt::format(
          "HDF5 refused to open it: the file is locked by another process (a writer still has it open?): {}; wait "
          "for the writer to finish, or {}",
          detail, kNoLocking);
    return fmt::format("HDF5 refused to open it: it could not lock the file: {}; {}", detail, kNoLocking);
  }
  if (failure.not_hdf5) return "truncated, corrupt or not an HDF5 file: " + detail;
  return "HDF5 cannot open it: " + detail;
}

void raise(const std::string& file, const std::string& context) {
  throw Error(fmt::format("{}: '{}': {}", context, file, error_detail()));
}

Handle check_id(hid_t id, const std::string& file, const std::string& context) {
  if (id < 0) raise(file, context);
  return Handle(id);
}

void check_status(herr_t status, const std::string& file, const std::string& context) {
  if (status < 0) raise(file, context);
}

namespace {
Handle small_float(size_t sign_pos, size_t exp_pos, size_t exp_bits, size_t mantissa_bits, size_t bias) {
  Handle type(H5Tcopy(H5T_IEEE_F32LE));
  bool ok = type.valid() && H5Tset_fields(type.get(), sign_pos, exp_pos, exp_bits, 0, mantissa_bits) >= 0 &&
            H5Tset_precision(type.get(), 16) >= 0 && H5Tset_size(type.get(), 2) >= 0 &&
            H5Tset_ebias(type.get(), bias) >= 0;
  FLAME_CHECK(ok, "datasets: building a 16-bit HDF5 float type failed: {}", error_detail());
  return type;
}

Handle bool_enum() {
  Handle type(H5Tenum_create(H5T_NATIVE_INT8));
  int8_t value = 0;
  bool ok = type.valid() && H5Tenum_insert(type.get(), "FALSE", &value) >= 0;
  value = 1;
  ok = ok && H5Tenum_insert(type.get(), "TRUE", &value) >= 0;
  FLAME_CHECK(ok, "datasets: building the HDF5 bool enum failed: {}", error_detail());
  return type;
}
}  // namespace

Handle type_of(DType dtype) {
  Lock guard = lock();
  switch (dtype) {
    case DType::U8:
      return Handle(H5Tcopy(H5T_STD_U8LE));
    case DType::I32:
      return Handle(H5Tcopy(H5T_STD_I32LE));
    case DType::I64:
      return Handle(H5Tcopy(H5T_STD_I64LE));
    case DType::F32:
      return Handle(H5Tcopy(H5T_IEEE_F32LE));
    case DType::F64:
      return Handle(H5Tcopy(H5T_IEEE_F64LE));
    case DType::F16:
      return small_float(15, 10, 5, 10, 15);
    case DType::BF16:
      return small_float(15, 7, 8, 7, 127);
    case DType::Bool:
      return bool_enum();
  }
  FLAME_FAIL("datasets: dtype {} has no HDF5 type", static_cast<int>(dtype));
}

Handle token_type(int bytes) {
  FLAME_CHECK(bytes == 2 || bytes == 4, "datasets: tokens are 2 or 4 bytes, not {}", bytes);
  Lock guard = lock();
  return Handle(H5Tcopy(bytes == 2 ? H5T_STD_U16LE : H5T_STD_U32LE));
}

std::string type_name(hid_t type) {
  Lock guard = lock();
  const std::pair<hid_t, const char*> standard[] = {{H5T_STD_U8LE, "u8"},
                                                    {H5T_STD_U16LE, "u16"},
                                                    {H5T_STD_U32LE, "u32"},
                                                    {H5T_STD_U64LE, "u64"},
                                                    {H5T_STD_I8LE, "i8"},
                                                    {H5T_STD_I16LE, "i16"},
                                                    {H5T_STD_I32LE, "i32"},
                                                    {H5T_STD_I64LE, "i64"},
                                                    {H5T_IEEE_F32LE, "f32"},
                                                    {H5T_IEEE_F64LE, "f64"},
                                                    {H5T_STD_U16BE, "u16 (big-endian)"},
                                                    {H5T_STD_I64BE, "i64 (big-endian)"},
                                                    {H5T_IEEE_F32BE, "f32 (big-endian)"}};
  for (const auto& [candidate, name] : standard)
    if (H5Tequal(type, candidate) > 0) return name;
  for (DType dtype : {DType::F16, DType::BF16, DType::Bool})
    if (H5Tequal(type, type_of(dtype).get()) > 0) return std::string(dtype_name(dtype));
  H5Eclear2(H5E_DEFAULT);
  return fmt::format("HDF5 type class {} of {} bytes", static_cast<int>(H5Tget_class(type)), H5Tget_size(type));
}

}  // namespace flame::data::h5
