// Sharded HDF5 datasets: the on-disk format (docs/datasets.md), writing shards, and reading
// samples by global index.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace flame::data {

/// How samples are laid out.
enum class DatasetKind {
  Samples,      // named arrays whose first dimension indexes samples (images + labels, ...)
  TokenStream,  // one flat token array per shard, cut into windows of window + 1 tokens
};

/// One named array of every sample: its element type and per-sample shape, e.g. "image": u8
/// [1, 28, 28], "label": i64 []. A token stream has one field "tokens" (u16 or u32) of shape
/// [window + 1].
struct FieldSpec {
  std::string name;
  DType dtype = DType::U8;
  Shape sample_shape;
};

/// One shard file of a dataset.
struct ShardInfo {
  std::string file;    // relative to the dataset directory
  int64_t samples = 0;  // samples (windows, for a token stream) in this shard
  int64_t tokens = 0;   // token streams only: tokens stored in the shard
  std::string sha256;   // lower-case hex of the whole file
};

/// The manifest (manifest.json in the dataset directory).
struct Manifest {
  int version = 1;
  DatasetKind kind = DatasetKind::Samples;
  std::vector<FieldSpec> fields;
  int64_t window = 0;  // token streams only: tokens per window, not counting the target token
  std::vector<ShardInfo> shards;

  int64_t total_samples() const;
  /// Reads and validates `dir`/manifest.json; raises flame::Error naming the file and the problem.
  static Manifest read(const std::string& dir);
  /// Writes `dir`/manifest.json atomically (temp file, fsync, rename).
  void write(const std::string& dir) const;
};

/// How much ShardedDataset checks when it opens a directory.
enum class Verification {
  Structure,  // every shard present, readable, with the manifest's counts, dtypes and shapes
  Checksums,  // Structure, plus every shard's SHA-256
};

/// Writes a dataset directory: shards of at most `shard_samples` samples, then the manifest.
class ShardWriter {
 public:
  /// Samples kind. `compression` 0 (none) to 9 (gzip level). The directory is created if needed.
  ShardWriter(std::string dir, std::vector<FieldSpec> fields, int64_t shard_samples, int compression = 0);
  /// Token-stream kind: windows of `window` + 1 tokens, `shard_tokens` tokens per shard.
  static ShardWriter token_stream(std::string dir, DType token_dtype, int64_t window, int64_t shard_tokens,
                                  int compression = 0);
  ~ShardWriter();
  ShardWriter(ShardWriter&&) noexcept;
  ShardWriter& operator=(ShardWriter&&) noexcept;

  /// Samples kind: one CPU tensor per field (in field order), each [n, ...sample_shape].
  void append(const std::vector<Tensor>& batch);
  /// Token-stream kind: a 1-D CPU tensor of tokens (the field's dtype).
  void append_tokens(const Tensor& tokens);
  /// Flushes the last shard and writes the manifest. Returns it.
  Manifest finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// A dataset directory opened for reading. read() may be called from several threads at once:
/// HDF5 calls are serialised internally (Debian's HDF5 is not thread-safe).
class ShardedDataset {
 public:
  explicit ShardedDataset(const std::string& dir, Verification verification = Verification::Structure);
  ~ShardedDataset();

  const Manifest& manifest() const;
  const std::string& dir() const;
  /// Number of samples (windows, for a token stream) across all shards.
  int64_t size() const;
  /// The fields of one sample, in order.
  const std::vector<FieldSpec>& fields() const;

  /// Samples at the given global indices, one CPU tensor per field, [indices.size(), ...sample_shape].
  std::vector<Tensor> read(const std::vector<int64_t>& indices) const;
  /// Same, into caller-provided contiguous CPU tensors of that shape (e.g. pinned buffers).
  void read_into(const std::vector<int64_t>& indices, const std::vector<Tensor>& out) const;

  /// Samples kind: every value of field `field` (an index into fields()) in shard `shard` (an
  /// index into manifest().shards), one CPU tensor [that shard's samples, ...sample_shape], without
  /// reading the other fields: for checks over a small field, such as every label.
  Tensor read_shard_field(size_t shard, size_t field) const;

  /// Reads every shard into host memory; later reads make no HDF5 calls.
  void load_into_memory();
  bool in_memory() const;

  /// Recomputes every shard's SHA-256 and compares it with the manifest.
  void verify_checksums() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// Lower-case hex SHA-256 of a file's bytes (OpenSSL).
std::string sha256_file(const std::string& path);

}  // namespace flame::data
