#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <numeric>

#include "core/file_io.h"
#include "datasets/dataset.h"
#include "datasets/format.h"
#include "datasets/hdf5_util.h"

namespace flame::data {

namespace {

// Note [direct reads]
// A field stored without filters (contiguous, or chunked by whole rows of the first dimension)
// keeps its units as plain little-endian bytes in the file, in row-major order inside each chunk.
// At open time, under the HDF5 lock, we record each chunk's file offset; reads then use pread()
// on our own descriptor, outside the HDF5 lock, so loader threads read in parallel and a shuffled
// batch costs no HDF5 call at all. HDF5 1.10 cannot do better: a union of many hyperslabs is
// mapped onto chunks element by element (~100 ns per element, slower than one H5Dread per run).
// Filtered (compressed) fields, and layouts we do not recognise, are read through H5Dread.
struct FieldStorage {
  bool direct = false;
  int64_t chunk_units = 0;       // units per chunk (contiguous layout: the whole extent)
  std::vector<int64_t> offsets;  // file offset of each chunk
};

// One shard opened for reading. Along the first dimension of each field's HDF5 array a sample
// starts every `step` units and spans `span` units (samples kind: 1 and 1 row; token stream: T
// and T + 1 tokens).
struct OpenShard {
  std::string path;
  int64_t first = 0;                         // global index of its first sample
  int64_t extent = 0;                        // length of the first dimension on disk
  h5::Handle file;                           // declared first: closed last
  std::vector<h5::Handle> datasets;          // per field
  std::vector<FieldStorage> storage;         // per field
  io::File raw;                              // for direct reads
  std::vector<std::vector<uint8_t>> memory;  // per field, after load_into_memory(): the array as on disk
};

void pread_fully(int fd, uint8_t* out, int64_t bytes, int64_t offset, const std::string& path,
                 const std::string& context) {
  while (bytes > 0) {
    ssize_t got = ::pread(fd, out, static_cast<size_t>(std::min<int64_t>(bytes, int64_t{1} << 30)), offset);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) FLAME_FAIL("{}: {}: {}", context, path, io::errno_text());
    FLAME_CHECK(got > 0, "{}: {}: the file ends at byte {}, before the data (truncated after it was opened?)",
                context, path, offset);
    out += got, bytes -= got, offset += got;
  }
}

// Widens `count` little-endian unsigned tokens of `from` bytes into signed ones of `to` bytes.
void widen_tokens(const uint8_t* raw, int from, uint8_t* out, int to, int64_t count) {
  if (from == to) {
    std::memcpy(out, raw, static_cast<size_t>(count * from));
  } else if (from == 2 && to == 4) {
    for (int64_t i = 0; i < count; ++i) {
      uint16_t v;
      std::memcpy(&v, raw + 2 * i, 2);
      int32_t w = v;
      std::memcpy(out + 4 * i, &w, 4);
    }
  } else {
    FLAME_CHECK(from == 4 && to == 8, "ShardedDataset: cannot widen {}-byte tokens to {} bytes", from, to);
    for (int64_t i = 0; i < count; ++i) {
      uint32_t v;
      std::memcpy(&v, raw + 4 * i, 4);
      int64_t w = v;
      std::memcpy(out + 8 * i, &w, 8);
    }
  }
}

}  // namespace

struct ShardedDataset::State {
  std::string dir;
  std::string manifest_path;
  Manifest manifest;
  std::vector<OpenShard> shards;
  std::vector<h5::Handle> disk_types;  // per field: the HDF5 type on disk (read without conversion)
  std::vector<int64_t> disk_bytes;     // per field: bytes of one unit of the first dimension on disk
  std::vector<int64_t> unit_bytes;     // per field: bytes of one unit in memory (tokens: i32/i64)
  int64_t step = 1, span = 1;
  std::atomic<bool> in_memory{false};
  std::mutex load_mutex;

  void open_shard(size_t index);
  void check_field(OpenShard& shard, size_t f);
  void locate(OpenShard& shard, size_t f, const std::vector<hsize_t>& dims, int64_t file_size);
  // Reads units [first, first + count) of field f of shard s, as stored on disk, into `out`
  // (count * disk_bytes[f] bytes).
  void read_raw(const OpenShard& shard, size_t f, int64_t first, int64_t count, uint8_t* out) const;
  // The same units: a pointer into the loaded copy, or read into `scratch`.
  const uint8_t* raw_units(const OpenShard& shard, size_t f, int64_t first, int64_t count,
                           std::vector<uint8_t>& scratch) const;
  std::string read_context(size_t f, int64_t first, int64_t count) const {
    return fmt::format("ShardedDataset: reading field '{}' (units {}..{}) of shard", manifest.fields[f].name, first,
                       first + count);
  }
};

namespace {

/// The soft limit on this process's open files, as text ("unlimited" when there is none).
std::string open_file_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return "unknown";
  return limit.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : std::to_string(limit.rlim_cur);
}

/// Each open shard holds up to 2 descriptors, for the dataset's lifetime. When `shards` would need
/// more than the soft limit on open files leaves (the usual default, 1024, is reached at about 500
/// shards), raises the soft limit towards the hard limit, which any process may do.
void make_room_for_shards(size_t shards) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return;
  std::error_code error;
  rlim_t open_now = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error))
    ++open_now;
  const rlim_t wanted = open_now + 2 * static_cast<rlim_t>(shards) + 64;
  if (limit.rlim_cur >= wanted) return;
  const rlim_t raised = limit.rlim_max == RLIM_INFINITY ? wanted : std::min(wanted, limit.rlim_max);
  if (raised <= limit.rlim_cur) return;
  limit.rlim_cur = raised;
  (void)setrlimit(RLIMIT_NOFILE, &limit);  // best effort: opening then raises a clear error if still short
}

}  // namespace

void ShardedDataset::State::open_shard(size_t index) {
  const ShardInfo& info = manifest.shards[index];
  OpenShard& shard = shards[index];
  shard.path = format::join(dir, info.file);
  shard.extent = manifest.kind == DatasetKind::Samples ? info.samples : info.tokens;
  // A status the file system cannot give (a directory on the way not searchable, say) is left to
  // H5Fopen and h5::describe_open_failure() to name.
  std::error_code error;
  const std::filesystem::file_type type = std::filesystem::status(shard.path, error).type();
  std::error_code link_error;  // a symbolic link whose target is gone says so
  const bool dangling =
      type == std::filesystem::file_type::not_found && std::filesystem::is_symlink(shard.path, link_error);
  FLAME_CHECK(!dangling, "ShardedDataset: shard '{}' listed in '{}' is a symbolic link to '{}', which is missing",
              shard.path, manifest_path, std::filesystem::read_symlink(shard.path, link_error).string());
  FLAME_CHECK(type != std::filesystem::file_type::not_found, "ShardedDataset: shard '{}' listed in '{}' is missing",
              shard.path, manifest_path);
  FLAME_CHECK(type != std::filesystem::file_type::directory,
              "ShardedDataset: shard '{}' listed in '{}' is a directory, not an HDF5 file", shard.path, manifest_path);
  FLAME_CHECK(type == std::filesystem::file_type::regular || error,
              "ShardedDataset: shard '{}' listed in '{}' is a {}, not a regular file", shard.path, manifest_path,
              type == std::filesystem::file_type::fifo     ? "FIFO"
              : type == std::filesystem::file_type::socket ? "socket"
              : type == std::filesystem::file_type::block || type == std::filesystem::file_type::character
                  ? "device file"
                  : "special file");
  h5::Lock guard = h5::lock();
  errno = 0;
  const hid_t file = H5Fopen(shard.path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const int open_errno = errno;
  if (file < 0 && (open_errno == EMFILE || open_errno == ENFILE)) {
    const std::string detail = h5::error_detail();
    FLAME_FAIL("ShardedDataset: cannot open shard '{}' ({} of {}): too many open files: {} (each open shard "
               "holds up to 2 file descriptors; the limit is {}, raise it with `ulimit -n`): {}",
               shard.path, index + 1, manifest.shards.size(),
               open_errno == EMFILE ? "this process is at its limit" : "the system is at its limit",
               open_file_limit(), detail);
  }
  std::string why;
  if (file < 0) {
    const h5::OpenFailure failure = h5::take_open_failure();
    guard.unlock();  // the file probe may block on a hung file system: not under the HDF5 lock
    why = h5::describe_open_failure(shard.path, failure);
  }
  FLAME_CHECK(file >= 0, "ShardedDataset: cannot open shard '{}' ({} of {}): {}", shard.path, index + 1,
              manifest.shards.size(), why);
  shard.file = h5::Handle(file);
  for (size_t f = 0; f < manifest.fields.size(); ++f) check_field(shard, f);
}

void ShardedDataset::State::check_field(OpenShard& shard, size_t f) {
  const FieldSpec& field = manifest.fields[f];
  const std::string& path = shard.path;
  FLAME_CHECK(H5Lexists(shard.file.get(), field.name.c_str(), H5P_DEFAULT) > 0,
              "ShardedDataset: shard '{}' has no dataset '{}' (a field of the manifest '{}')", path, field.name,
              manifest_path);
  const std::string context = fmt::format("ShardedDataset: reading field '{}' of shard", field.name);
  shard.datasets.push_back(h5::check_id(H5Dopen2(shard.file.get(), field.name.c_str(), H5P_DEFAULT), path, context));
  hid_t dataset = shard.datasets.back().get();

  const bool tokens = manifest.kind == DatasetKind::TokenStream;
  h5::Handle type = h5::check_id(H5Dget_type(dataset), path, context);
  hid_t expected_type = disk_types[f].get();
  FLAME_CHECK(H5Tequal(type.get(), expected_type) > 0,
              "ShardedDataset: shard '{}': field '{}' is stored as {}, the manifest says {}", path, field.name,
              h5::type_name(type.get()), h5::type_name(expected_type));

  h5::Handle space = h5::check_id(H5Dget_space(dataset), path, context);
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) h5::raise(path, context);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  Shape stored(dims.begin(), dims.end());
  Shape expected = tokens ? Shape{} : field.sample_shape;
  expected.insert(expected.begin(), shard.extent);
  Shape stored_rest = stored.empty() ? Shape{} : Shape(stored.begin() + 1, stored.end());
  FLAME_CHECK(stored.size() == expected.size() && stored_rest == Shape(expected.begin() + 1, expected.end()),
              "ShardedDataset: shard '{}': field '{}' has shape {}, expected {} (manifest: {} per sample)", path,
              field.name, shape_str(stored), shape_str(expected), shape_str(field.sample_shape));
  FLAME_CHECK(stored[0] == shard.extent, "ShardedDataset: shard '{}': field '{}' holds {} {}, the manifest says {}",
              path, field.name, stored[0], tokens ? "tokens" : "samples", shard.extent);

  if (f == 0) {
    h5::Handle create = h5::check_id(H5Fget_create_plist(shard.file.get()), path, context);
    hsize_t userblock = 0;
    h5::check_status(H5Pget_userblock(create.get(), &userblock), path, context);
    if (userblock == 0 && std::endian::native == std::endian::little)
      shard.raw = io::File(path, O_RDONLY | O_CLOEXEC);
  }
  shard.storage.emplace_back();
  if (shard.raw.get() >= 0) {
    std::error_code size_error;
    const auto file_size = std::filesystem::file_size(path, size_error);
    if (!size_error) locate(shard, f, dims, static_cast<int64_t>(file_size));
  }
}

// Under the HDF5 lock: fills shard.storage[f] when field f can be read directly (Note [direct reads]).
void ShardedDataset::State::locate(OpenShard& shard, size_t f, const std::vector<hsize_t>& dims, int64_t file_size) {
  hid_t dataset = shard.datasets[f].get();
  h5::Handle create(H5Dget_create_plist(dataset));
  if (!create.valid()) return (void)h5::error_detail();
  const int rank = static_cast<int>(dims.size());
  const int64_t row = disk_bytes[f];
  FieldStorage storage;
  switch (H5Pget_layout(create.get())) {
    case H5D_CONTIGUOUS: {
      const haddr_t address = H5Dget_offset(dataset);
      if (address == HADDR_UNDEF) return (void)h5::error_detail();
      storage.chunk_units = std::max<int64_t>(shard.extent, 1);
      storage.offsets.push_back(static_cast<int64_t>(address));
      break;
    }
    case H5D_CHUNKED: {
      if (H5Pget_nfilters(create.get()) != 0) return;
      std::vector<hsize_t> chunk(dims.size());
      if (H5Pget_chunk(create.get(), rank, chunk.data()) != rank || chunk[0] == 0) return (void)h5::error_detail();
      for (int d = 1; d < rank; ++d)
        if (chunk[d] != dims[d]) return;
      storage.chunk_units = static_cast<int64_t>(chunk[0]);
      std::vector<hsize_t> coord(dims.size(), 0);
      for (int64_t start = 0; start < shard.extent; start += storage.chunk_units) {
        coord[0] = static_cast<hsize_t>(start);
        unsigned filter_mask = 0;
        haddr_t address = HADDR_UNDEF;
        hsize_t size = 0;
        if (H5Dget_chunk_info_by_coord(dataset, coord.data(), &filter_mask, &address, &size) < 0)
          return (void)h5::error_detail();
        if (address == HADDR_UNDEF || filter_mask != 0 ||
            static_cast<int64_t>(size) != storage.chunk_units * row)
          return;
        storage.offsets.push_back(static_cast<int64_t>(address));
      }
      break;
    }
    default:
      return;
  }
  for (int64_t offset : storage.offsets)
    if (offset < 0 || offset + storage.chunk_units * row > file_size) return;  // HDF5 reports it on read
  storage.direct = true;
  shard.storage[f] = std::move(storage);
}

void ShardedDataset::State::read_raw(const OpenShard& shard, size_t f, int64_t first, int64_t count,
                                     uint8_t* out) const {
  const int64_t row = disk_bytes[f];
  if (in_memory.load(std::memory_order_acquire)) {
    std::memcpy(out, shard.memory[f].data() + first * row, static_cast<size_t>(count * row));
    return;
  }
  const FieldStorage& storage = shard.storage[f];
  if (storage.direct) {
    const int64_t chunk_bytes = storage.chunk_units * row;
    for (int64_t unit = first, left = count; left > 0;) {
      size_t c = static_cast<size_t>(unit / storage.chunk_units);
      const int64_t offset = storage.offsets[c] + (unit - static_cast<int64_t>(c) * storage.chunk_units) * row;
      int64_t n = std::min(left, (static_cast<int64_t>(c) + 1) * storage.chunk_units - unit);
      while (n < left && c + 1 < storage.offsets.size() && storage.offsets[c + 1] == storage.offsets[c] + chunk_bytes)
        n += std::min(left - n, storage.chunk_units), ++c;  // chunks that follow each other in the file
      pread_fully(shard.raw.get(), out, n * row, offset, shard.path, read_context(f, first, count));
      out += n * row, unit += n, left -= n;
    }
    return;
  }
  const std::string context = read_context(f, first, count);
  h5::Lock guard = h5::lock();
  hid_t dataset = shard.datasets[f].get();
  h5::Handle file_space = h5::check_id(H5Dget_space(dataset), shard.path, context);
  int rank = H5Sget_simple_extent_ndims(file_space.get());
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 1)));
  H5Sget_simple_extent_dims(file_space.get(), dims.data(), nullptr);
  std::vector<hsize_t> start(dims.size(), 0);
  start[0] = static_cast<hsize_t>(first);
  dims[0] = static_cast<hsize_t>(count);
  h5::check_status(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, dims.data(), nullptr),
                   shard.path, context);
  h5::Handle memory_space =
      h5::check_id(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), shard.path, context);
  h5::check_status(H5Dread(dataset, disk_types[f].get(), memory_space.get(), file_space.get(), H5P_DEFAULT, out),
                   shard.path, context);
}

const uint8_t* ShardedDataset::State::raw_units(const OpenShard& shard, size_t f, int64_t first, int64_t count,
                                                std::vector<uint8_t>& scratch) const {
  if (in_memory.load(std::memory_order_acquire)) return shard.memory[f].data() + first * disk_bytes[f];
  scratch.resize(static_cast<size_t>(count * disk_bytes[f]));
  read_raw(shard, f, first, count, scratch.data());
  return scratch.data();
}

ShardedDataset::ShardedDataset(const std::string& dir, Verification verification) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.dir = dir;
  s.manifest_path = format::join(dir, format::kManifestName);
  s.manifest = Manifest::read(dir);
  FLAME_CHECK(s.manifest.total_samples() > 0, "ShardedDataset: dataset '{}' holds no samples", s.manifest_path);
  const bool tokens = s.manifest.kind == DatasetKind::TokenStream;
  if (tokens) s.step = s.manifest.window, s.span = s.manifest.window + 1;
  for (const FieldSpec& field : s.manifest.fields) {
    const int64_t bytes = tokens ? format::token_bytes(field.dtype, "ShardedDataset: token field")
                                 : format::sample_bytes(field);
    s.disk_types.push_back(tokens ? h5::token_type(static_cast<int>(bytes)) : h5::type_of(field.dtype));
    s.disk_bytes.push_back(bytes);
    s.unit_bytes.push_back(tokens ? static_cast<int64_t>(dtype_size(field.dtype)) : bytes);
  }
  s.shards.resize(s.manifest.shards.size());
  make_room_for_shards(s.shards.size());
  int64_t first = 0;
  for (size_t i = 0; i < s.shards.size(); ++i) {
    s.open_shard(i);
    s.shards[i].first = first;
    first += s.manifest.shards[i].samples;
  }
  if (verification == Verification::Checksums) verify_checksums();
}

ShardedDataset::~ShardedDataset() = default;

const Manifest& ShardedDataset::manifest() const { return state_->manifest; }
const std::string& ShardedDataset::dir() const { return state_->dir; }
int64_t ShardedDataset::size() const { return state_->manifest.total_samples(); }
const std::vector<FieldSpec>& ShardedDataset::fields() const { return state_->manifest.fields; }
bool ShardedDataset::in_memory() const { return state_->in_memory.load(); }

std::vector<Tensor> ShardedDataset::read(const std::vector<int64_t>& indices) const {
  std::vector<Tensor> out;
  for (const FieldSpec& field : fields()) {
    Shape shape = field.sample_shape;
    shape.insert(shape.begin(), static_cast<int64_t>(indices.size()));
    out.push_back(Tensor::empty(shape, field.dtype));
  }
  read_into(indices, out);
  return out;
}

void ShardedDataset::read_into(const std::vector<int64_t>& indices, const std::vector<Tensor>& out) const {
  const State& s = *state_;
  const int64_t n = static_cast<int64_t>(indices.size());
  FLAME_CHECK(out.size() == s.manifest.fields.size(), "ShardedDataset '{}': read_into got {} tensors for {} fields",
              s.dir, out.size(), s.manifest.fields.size());
  for (size_t f = 0; f < out.size(); ++f) {
    const FieldSpec& field = s.manifest.fields[f];
    Shape shape = field.sample_shape;
    shape.insert(shape.begin(), n);
    FLAME_CHECK(out[f].defined() && out[f].device().is_cpu() && out[f].is_contiguous() &&
                    out[f].dtype() == field.dtype && out[f].shape() == shape,
                "ShardedDataset '{}': read_into field '{}' needs a contiguous CPU {} tensor of shape {}, got {}", s.dir,
                field.name, dtype_name(field.dtype), shape_str(shape),
                out[f].defined() ? out[f].describe() : "an undefined tensor");
  }
  const int64_t total = size();
  for (int64_t index : indices)
    FLAME_CHECK(index >= 0 && index < total, "ShardedDataset '{}': sample index {} is out of range [0, {})", s.dir,
                index, total);

  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return indices[a] < indices[b]; });
  std::vector<uint8_t> scratch;
  size_t shard = 0;
  for (int64_t k = 0; k < n;) {
    const int64_t begin = indices[order[k]];
    while (shard + 1 < s.shards.size() && s.shards[shard + 1].first <= begin) ++shard;
    const OpenShard& open = s.shards[shard];
    const int64_t shard_end = open.first + s.manifest.shards[shard].samples;
    int64_t length = 1;  // a run of consecutive sample indices inside one shard
    while (k + length < n && indices[order[k + length]] == begin + length && begin + length < shard_end) ++length;
    bool in_order = true;  // output rows consecutive too: read straight into the output
    for (int64_t j = 1; j < length && in_order; ++j) in_order = order[k + j] == order[k] + j;

    const int64_t local = begin - open.first;
    const int64_t units = (length - 1) * s.step + s.span;
    for (size_t f = 0; f < out.size(); ++f) {
      auto* dst = static_cast<uint8_t*>(out[f].data_ptr());
      const int64_t sample_bytes = format::sample_bytes(s.manifest.fields[f]);
      const bool widen = s.disk_bytes[f] != s.unit_bytes[f];
      if (in_order && s.step == s.span && !widen) {
        s.read_raw(open, f, local * s.step, units, dst + order[k] * sample_bytes);
        continue;
      }
      const uint8_t* raw = s.raw_units(open, f, local * s.step, units, scratch);
      for (int64_t j = 0; j < length; ++j)
        widen_tokens(raw + j * s.step * s.disk_bytes[f], static_cast<int>(s.disk_bytes[f]),
                     dst + order[k + j] * sample_bytes, static_cast<int>(s.unit_bytes[f]), s.span);
    }
    k += length;
  }
}

Tensor ShardedDataset::read_shard_field(size_t shard, size_t field) const {
  const State& s = *state_;
  FLAME_CHECK(s.manifest.kind == DatasetKind::Samples,
              "ShardedDataset '{}': read_shard_field reads a samples dataset, this one is a token stream", s.dir);
  FLAME_CHECK(shard < s.shards.size() && field < s.manifest.fields.size(),
              "ShardedDataset '{}': read_shard_field({}, {}) is out of range ({} shards, {} fields)", s.dir, shard,
              field, s.shards.size(), s.manifest.fields.size());
  const FieldSpec& spec = s.manifest.fields[field];
  Shape shape = spec.sample_shape;
  const int64_t samples = s.manifest.shards[shard].samples;
  shape.insert(shape.begin(), samples);
  Tensor out = Tensor::empty(shape, spec.dtype);
  s.read_raw(s.shards[shard], field, 0, samples, static_cast<uint8_t*>(out.data_ptr()));
  return out;
}

void ShardedDataset::load_into_memory() {
  State& s = *state_;
  std::lock_guard<std::mutex> load(s.load_mutex);
  if (s.in_memory.load()) return;
  for (OpenShard& shard : s.shards) {
    shard.memory.resize(s.manifest.fields.size());
    for (size_t f = 0; f < shard.memory.size(); ++f) {
      shard.memory[f].resize(static_cast<size_t>(shard.extent * s.disk_bytes[f]));
      s.read_raw(shard, f, 0, shard.extent, shard.memory[f].data());
    }
  }
  s.in_memory.store(true, std::memory_order_release);
}

void ShardedDataset::verify_checksums() const {
  const State& s = *state_;
  for (const ShardInfo& info : s.manifest.shards) {
    const std::string path = format::join(s.dir, info.file);
    const std::string actual = sha256_file(path);
    FLAME_CHECK(actual == info.sha256,
                "ShardedDataset: shard '{}' fails its checksum: SHA-256 is {}, the manifest '{}' says {} (the file "
                "was modified or corrupted; rewrite it with flame-prep)",
                path, actual, s.manifest_path, info.sha256);
  }
}

}  // namespace flame::data
