// Internal HDF5 helpers for datasets/: owned handles, the process-wide HDF5 lock, dtype <-> HDF5
// type mapping and HDF5 error stacks turned into flame::Error messages.
#pragma once

#include <hdf5.h>

#include <mutex>
#include <string>

#include "core/dtype.h"

namespace flame::data::h5 {

// Note [hdf5 lock]
// Debian's libhdf5 is built without --enable-threadsafe: no two threads may be inside the library
// at once. Every H5* call in datasets/ runs under lock(). The mutex is recursive so that a Handle
// may be closed while its owner already holds the lock. The first lock() also switches off
// HDF5's automatic error printing: failures are reported through flame::Error (raise()).
using Lock = std::unique_lock<std::recursive_mutex>;
Lock lock();

/// An owned hid_t (file, dataset, dataspace, datatype or property list), closed with the
/// matching H5*close under the lock. Invalid (negative) ids are allowed and never closed.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept : id_(other.id_) { other.id_ = -1; }
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();

 private:
  hid_t id_ = -1;
};

/// The current HDF5 error stack as one line (outermost call first, innermost cause last), and
/// clears it. Call under the lock right after a failed H5* call.
std::string error_detail();
/// What HDF5 reported when H5Fopen just failed: its error stack as one line, and whether it could
/// not lock the file or found no HDF5 file (no signature, or shorter than its superblock says).
struct OpenFailure {
  std::string detail;
  bool cannot_lock = false;
  bool not_hdf5 = false;
};
/// Reads (and clears) the HDF5 error stack. Call under the lock right after the failed H5Fopen.
OpenFailure take_open_failure();
/// Why H5Fopen(`path`) failed, as a phrase for a message that names the path: reads the file's
/// first byte itself and probes it for a lock held elsewhere (a shared flock(), as HDF5's writers
/// take an exclusive one), then phrases `failure`. Needs no HDF5 lock; call it after releasing
/// that lock, so a file system that hangs on the probe holds up no other thread's HDF5 calls.
/// One of
///   "cannot read the file: permission denied (...)", "cannot read the file: <strerror>",
///   "HDF5 refused to open it: the file is locked by another process (...): <HDF5 detail>; ...",
///   "HDF5 refused to open it: it could not lock the file: <HDF5 detail>; ...",
///   "truncated, corrupt or not an HDF5 file: <HDF5 detail>" (HDF5 found no signature, or the file
///   is shorter than its superblock says),
///   "HDF5 cannot open it: <HDF5 detail>" (anything else, e.g. a superblock damaged behind an
///   intact signature, or, in files of other tools written with HDF5's newest format, the
///   consistency flags a writer that did not close the file leaves).
std::string describe_open_failure(const std::string& path, const OpenFailure& failure);
/// Throws flame::Error "`context`: `file`: <HDF5 error detail>".
[[noreturn]] void raise(const std::string& file, const std::string& context);
/// `id` when it is valid, else raise(file, context). Wraps every id-returning H5* call.
Handle check_id(hid_t id, const std::string& file, const std::string& context);
/// raise(file, context) when `status` is negative.
void check_status(herr_t status, const std::string& file, const std::string& context);

/// The little-endian HDF5 type that stores a FLAME dtype (also its in-memory type on this
/// little-endian host): u8, i32, i64, f32, f64 as the standard types; f16 and bf16 as 2-byte
/// IEEE-style floats (f16 is what numpy/h5py call float16); bool as h5py's enum {FALSE=0, TRUE=1}
/// of int8.
Handle type_of(DType dtype);
/// Unsigned 16- or 32-bit little-endian integer types (token streams on disk).
Handle token_type(int bytes);
/// Short name of an HDF5 datatype for messages: "u8", "u16", "f32", "bool", ... or
/// "HDF5 type class C of N bytes" when it is none of the known ones.
std::string type_name(hid_t type);

}  // namespace flame::data::h5
