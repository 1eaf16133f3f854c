#include <fcntl.h>

#include <cstring>
#include <filesystem>

#include "core/file_io.h"
#include "datasets/dataset.h"
#include "datasets/format.h"
#include "datasets/hdf5_util.h"

namespace flame::data {

namespace {

constexpr int64_t kChunkBytes = 1 << 20;   // target chunk size (token streams: exactly this)
constexpr int64_t kMaxChunkSamples = 256;  // samples kind: at most this many samples per chunk

// One HDF5 dataset of a shard: `dims` elements of `type`, written from `data`, chunked along
// the first dimension by `chunk_rows` rows (docs/datasets.md, "Chunking").
struct ArrayToWrite {
  std::string name;
  hid_t type;
  std::vector<hsize_t> dims;
  hsize_t chunk_rows;
  const void* data;
};

/// Writes the shard under a temporary name and renames it to `final_path` once it is complete and
/// synced: a job still reading an earlier dataset's shard of that name keeps the old file (its open
/// handle), never a half-written or new one, and an earlier file locked by a reader does not stop
/// the write.
void write_shard(const std::string& final_path, const std::vector<ArrayToWrite>& arrays, int compression) {
  const std::string path = final_path + ".writing";
  struct RemoveUnlessRenamed {
    const std::string& path;
    bool renamed = false;
    ~RemoveUnlessRenamed() {
      std::error_code ignored;
      if (!renamed) std::filesystem::remove(path, ignored);
    }
  } temporary{path};
  h5::Lock guard = h5::lock();
  h5::Handle file = h5::check_id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), path,
                                 "ShardWriter: cannot create shard");
  for (const ArrayToWrite& array : arrays) {
    const std::string context = fmt::format("ShardWriter: writing field '{}' of shard", array.name);
    h5::Handle space =
        h5::check_id(H5Screate_simple(static_cast<int>(array.dims.size()), array.dims.data(), nullptr), path, context);
    h5::Handle properties = h5::check_id(H5Pcreate(H5P_DATASET_CREATE), path, context);
    // No creation/modification times in the object header: the same samples give the same bytes
    // (and SHA-256) whenever they are written.
    h5::check_status(H5Pset_obj_track_times(properties.get(), false), path, context);
    std::vector<hsize_t> chunk = array.dims;
    chunk[0] = std::min(array.chunk_rows, array.dims[0]);
    h5::check_status(H5Pset_chunk(properties.get(), static_cast<int>(chunk.size()), chunk.data()), path, context);
    if (compression > 0) {
      if (H5Tget_size(array.type) > 1) h5::check_status(H5Pset_shuffle(properties.get()), path, context);
      h5::check_status(H5Pset_deflate(properties.get(), static_cast<unsigned>(compression)), path, context);
    }
    h5::Handle dataset = h5::check_id(
        H5Dcreate2(file.get(), array.name.c_str(), array.type, space.get(), H5P_DEFAULT, properties.get(), H5P_DEFAULT),
        path, context);
    h5::check_status(H5Dwrite(dataset.get(), array.type, H5S_ALL, H5S_ALL, H5P_DEFAULT, array.data), path, context);
  }
  h5::check_status(H5Fflush(file.get(), H5F_SCOPE_LOCAL), path, "ShardWriter: flushing shard");
  file.reset();  // closed: everything HDF5 holds is written
  // On disk before the manifest that lists it (Manifest::write syncs the manifest and the directory).
  io::File written(path, O_RDONLY | O_CLOEXEC);
  FLAME_CHECK(written.is_open(), "ShardWriter: cannot reopen shard '{}' to fsync it: {}", path, io::errno_text());
  io::sync_and_close(written, path, "ShardWriter: ");
  std::error_code error;
  std::filesystem::rename(path, final_path, error);  // the directory is synced with the manifest
  FLAME_CHECK(!error, "ShardWriter: cannot rename '{}' to '{}': {}", path, final_path, error.message());
  temporary.renamed = true;
}

}  // namespace

struct ShardWriter::State {
  std::string dir;
  Manifest manifest;
  int64_t shard_capacity = 0;  // samples (samples kind) or tokens (token stream) per shard
  int compression = 0;
  std::vector<std::vector<uint8_t>> buffers;  // per field: [buffered, ...sample_shape] bytes; tokens: u16/u32
  int64_t buffered = 0;                       // samples or tokens in `buffers`
  bool finished = false;

  void check_open(const char* what) const { FLAME_CHECK(!finished, "ShardWriter '{}': {} after finish()", dir, what); }

  void flush() {
    if (buffered == 0) return;
    ShardInfo shard;
    shard.file = format::shard_file_name(static_cast<int64_t>(manifest.shards.size()));
    const std::string path = format::join(dir, shard.file);
    std::vector<ArrayToWrite> arrays;
    std::vector<h5::Handle> types;
    if (manifest.kind == DatasetKind::Samples) {
      shard.samples = buffered;
      for (size_t f = 0; f < manifest.fields.size(); ++f) {
        const FieldSpec& field = manifest.fields[f];
        types.push_back(h5::type_of(field.dtype));
        std::vector<hsize_t> dims{static_cast<hsize_t>(buffered)};
        for (int64_t d : field.sample_shape) dims.push_back(static_cast<hsize_t>(d));
        int64_t row_bytes = std::max<int64_t>(1, format::sample_bytes(field));
        hsize_t rows = static_cast<hsize_t>(std::clamp<int64_t>(kChunkBytes / row_bytes, 1, kMaxChunkSamples));
        arrays.push_back({field.name, types.back().get(), dims, rows, buffers[f].data()});
      }
    } else {
      shard.tokens = buffered;
      shard.samples = format::windows_in(buffered, manifest.window);
      if (shard.samples == 0) {  // a tail too short for one window is dropped (docs/datasets.md)
        buffers[0].clear();
        buffered = 0;
        return;
      }
      int bytes = format::token_bytes(manifest.fields[0].dtype, "ShardWriter");
      types.push_back(h5::token_type(bytes));
      arrays.push_back({format::kTokensField,
                        types.back().get(),
                        {static_cast<hsize_t>(buffered)},
                        static_cast<hsize_t>(kChunkBytes / bytes),
                        buffers[0].data()});
    }
    write_shard(path, arrays, compression);
    shard.sha256 = sha256_file(path);
    manifest.shards.push_back(std::move(shard));
    for (auto& buffer : buffers) buffer.clear();
    buffered = 0;
  }

  /// After finish(): removes shard files of an earlier dataset in this directory that the new
  /// manifest does not list (a rewrite with fewer shards). Best effort: they are never read.
  void remove_stale_shards() const {
    std::error_code error;
    for (int64_t index = static_cast<int64_t>(manifest.shards.size());; ++index) {
      const std::string stale = format::join(dir, format::shard_file_name(index));
      if (!std::filesystem::remove(stale, error)) break;
    }
  }
};

ShardWriter::ShardWriter(std::string dir, std::vector<FieldSpec> fields, int64_t shard_samples, int compression)
    : state_(std::make_unique<State>()) {
  FLAME_CHECK(!fields.empty(), "ShardWriter '{}': needs at least one field", dir);
  FLAME_CHECK(shard_samples > 0, "ShardWriter '{}': shard_samples must be positive, got {}", dir, shard_samples);
  FLAME_CHECK(compression >= 0 && compression <= 9, "ShardWriter '{}': compression must be 0 (none) to 9, got {}", dir,
              compression);
  for (const FieldSpec& field : fields) {
    FLAME_CHECK(!field.name.empty() && field.name.find('/') == std::string::npos,
                "ShardWriter '{}': field name '{}' must be non-empty and contain no '/'", dir, field.name);
    for (int64_t d : field.sample_shape)
      FLAME_CHECK(d > 0, "ShardWriter '{}': field '{}' has sample shape {}; dimensions must be positive", dir,
                  field.name, shape_str(field.sample_shape));
  }
  if (compression > 0) {
    h5::Lock guard = h5::lock();
    FLAME_CHECK(H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0, "ShardWriter '{}': this HDF5 has no gzip filter", dir);
  }
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  FLAME_CHECK(!error, "ShardWriter: cannot create directory '{}': {}", dir, error.message());
  // A dataset written here before keeps its manifest until finish() writes the new one; the new
  // shards replace the old files of the same names (by rename: a job reading the old ones keeps
  // them open), so an unfinished rewrite would leave the old manifest describing new shards. It
  // goes first: until finish(), the directory holds no dataset.
  const std::string old_manifest = format::join(dir, format::kManifestName);
  if (std::filesystem::exists(old_manifest, error)) {
    std::filesystem::remove(old_manifest, error);
    FLAME_CHECK(!error, "ShardWriter: cannot remove the earlier dataset's manifest '{}': {}", old_manifest,
                error.message());
    io::fsync_directory(dir);
  }
  state_->dir = std::move(dir);
  state_->manifest.fields = std::move(fields);
  state_->shard_capacity = shard_samples;
  state_->compression = compression;
  state_->buffers.resize(state_->manifest.fields.size());
}

ShardWriter ShardWriter::token_stream(std::string dir, DType token_dtype, int64_t window, int64_t shard_tokens,
                                      int compression) {
  format::token_bytes(token_dtype, "ShardWriter '" + dir + "'");
  FLAME_CHECK(window > 0, "ShardWriter '{}': window must be positive, got {}", dir, window);
  FLAME_CHECK(shard_tokens >= window + 1, "ShardWriter '{}': shard_tokens {} is less than one window ({} + 1)", dir,
              shard_tokens, window);
  ShardWriter writer(std::move(dir), {FieldSpec{format::kTokensField, token_dtype, {window + 1}}}, shard_tokens,
                     compression);
  writer.state_->manifest.kind = DatasetKind::TokenStream;
  writer.state_->manifest.window = window;
  return writer;
}

ShardWriter::~ShardWriter() = default;
ShardWriter::ShardWriter(ShardWriter&&) noexcept = default;
ShardWriter& ShardWriter::operator=(ShardWriter&&) noexcept = default;

void ShardWriter::append(const std::vector<Tensor>& batch) {
  State& s = *state_;
  s.check_open("append");
  FLAME_CHECK(s.manifest.kind == DatasetKind::Samples,
              "ShardWriter '{}': append() is for samples datasets; use "
              "append_tokens() for a token stream",
              s.dir);
  FLAME_CHECK(batch.size() == s.manifest.fields.size(),
              "ShardWriter '{}': append got {} tensors, expected one per "
              "field ({})",
              s.dir, batch.size(), s.manifest.fields.size());
  std::vector<Tensor> contiguous;
  int64_t n = -1;
  for (size_t f = 0; f < batch.size(); ++f) {
    const FieldSpec& field = s.manifest.fields[f];
    const Tensor& t = batch[f];
    FLAME_CHECK(t.defined() && t.device().is_cpu(), "ShardWriter '{}': field '{}' needs a CPU tensor", s.dir,
                field.name);
    Shape expected = field.sample_shape;
    expected.insert(expected.begin(), t.dim() > 0 ? t.size(0) : -1);
    FLAME_CHECK(t.dtype() == field.dtype && t.shape() == expected,
                "ShardWriter '{}': field '{}' expects {} [n, ...{}], got {}", s.dir, field.name,
                dtype_name(field.dtype), shape_str(field.sample_shape), t.describe());
    FLAME_CHECK(n < 0 || t.size(0) == n, "ShardWriter '{}': field '{}' has {} samples, the first field has {}", s.dir,
                field.name, t.size(0), n);
    n = t.size(0);
    contiguous.push_back(t.contiguous());
  }
  for (int64_t done = 0; done < n;) {
    int64_t take = std::min(n - done, s.shard_capacity - s.buffered);
    for (size_t f = 0; f < contiguous.size(); ++f) {
      int64_t row = format::sample_bytes(s.manifest.fields[f]);
      const auto* src = static_cast<const uint8_t*>(contiguous[f].data_ptr()) + done * row;
      s.buffers[f].insert(s.buffers[f].end(), src, src + take * row);
    }
    s.buffered += take;
    done += take;
    if (s.buffered == s.shard_capacity) s.flush();
  }
}

void ShardWriter::append_tokens(const Tensor& tokens) {
  State& s = *state_;
  s.check_open("append_tokens");
  FLAME_CHECK(s.manifest.kind == DatasetKind::TokenStream, "ShardWriter '{}': append_tokens() is for token streams",
              s.dir);
  const DType dtype = s.manifest.fields[0].dtype;
  FLAME_CHECK(tokens.defined() && tokens.device().is_cpu() && tokens.dim() == 1 && tokens.dtype() == dtype,
              "ShardWriter '{}': append_tokens expects a 1-D CPU {} tensor, got {}", s.dir, dtype_name(dtype),
              tokens.defined() ? tokens.describe() : "an undefined tensor");
  const Tensor t = tokens.contiguous();
  const int bytes = format::token_bytes(dtype, "ShardWriter");
  const int64_t limit = bytes == 2 ? 0xFFFF : 0xFFFFFFFFLL;
  std::vector<uint8_t>& buffer = s.buffers[0];
  const int32_t* i32 = dtype == DType::I32 ? t.data<int32_t>() : nullptr;
  const int64_t* i64 = dtype == DType::I64 ? t.data<int64_t>() : nullptr;
  // Every token is checked before any is buffered: a call that raises adds nothing.
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t value = i32 ? i32[i] : i64[i];
    FLAME_CHECK(value >= 0 && value <= limit,
                "ShardWriter '{}': token {} at position {} does not fit in u{}; nothing of this call was written",
                s.dir, value, i, 8 * bytes);
  }
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t value = i32 ? i32[i] : i64[i];
    uint8_t le[4];
    std::memcpy(le, &value, 4);  // little-endian host: the low bytes come first
    buffer.insert(buffer.end(), le, le + bytes);
    if (++s.buffered >= s.shard_capacity) s.flush();  // >=: after a failed flush, the next token retries
  }
}

Manifest ShardWriter::finish() {
  State& s = *state_;
  s.check_open("finish");
  s.flush();
  s.finished = true;
  FLAME_CHECK(!s.manifest.shards.empty(),
              "ShardWriter '{}': no samples were written{}; an empty dataset is not "
              "allowed",
              s.dir, s.manifest.kind == DatasetKind::TokenStream ? " (fewer tokens than one window)" : "");
  s.manifest.write(s.dir);
  s.remove_stale_shards();
  return s.manifest;
}

}  // namespace flame::data
