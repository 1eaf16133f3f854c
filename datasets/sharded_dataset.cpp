#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <numeric>

#include "datasets/dataset.h"
#include "datasets/format.h"
#include "datasets/hdf5_util.h"

namespace flame::data {

namespace {

// One shard opened for reading. Along the first dimension of each field's HDF5 array a sample
// starts every `step` units and spans `span` units (samples kind: 1 and 1 row; token stream: T
// and T + 1 tokens).
struct OpenShard {
  std::string path;
  int64_t first = 0;                         // global index of its first sample
  int64_t extent = 0;                        // length of the first dimension on disk
  h5::Handle file;                           // declared first: closed last
  std::vector<h5::Handle> datasets;          // per field
  std::vector<std::vector<uint8_t>> memory;  // per field, after load_into_memory(): the whole array
};

}  // namespace

struct ShardedDataset::State {
  std::string dir;
  std::string manifest_path;
  Manifest manifest;
  std::vector<OpenShard> shards;
  std::vector<h5::Handle> memory_types;  // per field: the in-memory HDF5 type (tokens: i32/i64)
  std::vector<int64_t> unit_bytes;       // per field: bytes of one unit of the first dimension
  int64_t step = 1, span = 1;
  std::atomic<bool> in_memory{false};
  std::mutex load_mutex;

  void open_shard(size_t index);
  void check_field(OpenShard& shard, size_t f);
  // Reads units [first, first + count) of field f of shard s into `out` (count * unit_bytes[f] bytes).
  void read_units(const OpenShard& shard, size_t f, int64_t first, int64_t count, void* out) const;
};

void ShardedDataset::State::open_shard(size_t index) {
  const ShardInfo& info = manifest.shards[index];
  OpenShard& shard = shards[index];
  shard.path = format::join(dir, info.file);
  shard.extent = manifest.kind == DatasetKind::Samples ? info.samples : info.tokens;
  std::error_code error;
  FLAME_CHECK(std::filesystem::is_regular_file(shard.path, error),
              "ShardedDataset: shard '{}' listed in '{}' is missing (or not a regular file)", shard.path,
              manifest_path);
  h5::Lock guard = h5::lock();
  shard.file = h5::check_id(H5Fopen(shard.path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), shard.path,
                            "ShardedDataset: cannot open shard (truncated, corrupt or not an HDF5 file)");
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
  h5::Handle expected_type =
      tokens ? h5::token_type(format::token_bytes(field.dtype, context)) : h5::type_of(field.dtype);
  FLAME_CHECK(H5Tequal(type.get(), expected_type.get()) > 0,
              "ShardedDataset: shard '{}': field '{}' is stored as {}, the manifest says {}", path, field.name,
              h5::type_name(type.get()), h5::type_name(expected_type.get()));

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
}

void ShardedDataset::State::read_units(const OpenShard& shard, size_t f, int64_t first, int64_t count,
                                       void* out) const {
  if (in_memory.load(std::memory_order_acquire)) {
    std::memcpy(out, shard.memory[f].data() + first * unit_bytes[f], static_cast<size_t>(count * unit_bytes[f]));
    return;
  }
  const std::string context = fmt::format("ShardedDataset: reading field '{}' (units {}..{}) of shard",
                                          manifest.fields[f].name, first, first + count);
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
  h5::check_status(H5Dread(dataset, memory_types[f].get(), memory_space.get(), file_space.get(), H5P_DEFAULT, out),
                   shard.path, context);
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
    s.memory_types.push_back(tokens ? h5::Handle([&] {
      h5::Lock guard = h5::lock();
      return H5Tcopy(field.dtype == DType::I32 ? H5T_NATIVE_INT32 : H5T_NATIVE_INT64);
    }())
                                    : h5::type_of(field.dtype));
    s.unit_bytes.push_back(tokens ? static_cast<int64_t>(dtype_size(field.dtype)) : format::sample_bytes(field));
  }
  s.shards.resize(s.manifest.shards.size());
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
      if (in_order && s.step == s.span) {
        s.read_units(open, f, local * s.step, units, dst + order[k] * sample_bytes);
        continue;
      }
      scratch.resize(static_cast<size_t>(units * s.unit_bytes[f]));
      s.read_units(open, f, local * s.step, units, scratch.data());
      for (int64_t j = 0; j < length; ++j)
        std::memcpy(dst + order[k + j] * sample_bytes, scratch.data() + j * s.step * s.unit_bytes[f],
                    static_cast<size_t>(sample_bytes));
    }
    k += length;
  }
}

void ShardedDataset::load_into_memory() {
  State& s = *state_;
  std::lock_guard<std::mutex> load(s.load_mutex);
  if (s.in_memory.load()) return;
  for (OpenShard& shard : s.shards) {
    shard.memory.resize(s.manifest.fields.size());
    for (size_t f = 0; f < shard.memory.size(); ++f) {
      shard.memory[f].resize(static_cast<size_t>(shard.extent * s.unit_bytes[f]));
      s.read_units(shard, f, 0, shard.extent, shard.memory[f].data());
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
