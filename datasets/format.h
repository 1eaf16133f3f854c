// Internal constants and small rules of the on-disk format (docs/datasets.md), shared by the
// manifest, the writer and the reader.
#pragma once

#include <cstdint>
#include <string>

#include "datasets/dataset.h"

namespace flame::data::format {

inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kTokensField = "tokens";

// Note [token dtypes]
// Token streams are stored as unsigned 16- or 32-bit integers ("u16"/"u32" in the manifest and in
// HDF5, what h5py sees). FLAME has no unsigned 16/32-bit DType, so in memory (FieldSpec::dtype,
// the tensors read() returns and append_tokens() takes) u16 tokens are i32 and u32 tokens are i64:
// both hold every stored value exactly. ShardWriter checks that tokens fit before narrowing.

/// Bytes per token on disk for the in-memory token dtype (i32 -> 2, i64 -> 4); raises otherwise.
int token_bytes(DType memory_dtype, const std::string& context);
/// "u16" or "u32" for the in-memory token dtype.
std::string token_disk_name(DType memory_dtype);

/// Windows of window + 1 tokens in a shard of `tokens` tokens: sample i is tokens[i*T, i*T+T+1).
inline int64_t windows_in(int64_t tokens, int64_t window) { return tokens >= window + 1 ? (tokens - 1) / window : 0; }

/// Bytes of one sample of a field, in memory.
int64_t sample_bytes(const FieldSpec& field);

/// "shard-00042.h5"
std::string shard_file_name(int64_t index);

/// `dir` + "/" + `file`.
std::string join(const std::string& dir, const std::string& file);

}  // namespace flame::data::format
