// Reading and writing the safetensors format (Hugging Face), and saving / loading a Module's
// weights with it.
//
// Note [safetensors format]
// A file is: 8 bytes, the header length N as a little-endian uint64; N bytes of UTF-8 JSON
//   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<value>", ...}}
// (FLAME pads it with spaces to a multiple of 8 bytes, as the Python library does, so the data is
// 8-byte aligned); then the data buffer: each tensor's elements, row-major, little-endian, at bytes
// [begin, end) counted from the start of the buffer. The tensors' ranges tile the buffer exactly:
// sorted by begin they start at 0, each begins where the previous one ends, and the last ends at the
// end of the file. dtypes: F32 F64 F16 BF16 I32 I64 U8 BOOL (one byte, 0 or 1).
#pragma once

#include <map>
#include <string>

#include "nn/module.h"

namespace flame::nn {

/// The free-form string pairs stored under "__metadata__".
using SafetensorsMetadata = std::map<std::string, std::string>;

/// Writes `tensors` (from any device; copied to the host one at a time, made contiguous) and
/// `metadata` to `path`, atomically: the bytes go to a temporary file in the same directory, which
/// is fsync'ed and renamed over `path`. Names must be non-empty, distinct and not "__metadata__".
/// Any failure (an unwritable directory, a full disk, ...) raises flame::Error naming the path and
/// leaves no file behind (an existing file at `path` stays as it was).
void save_safetensors(const std::string& path, const NamedTensors& tensors, const SafetensorsMetadata& metadata = {});

/// The tensors and metadata of a safetensors file.
struct SafetensorsContents {
  NamedTensors tensors;  // on the CPU, in file order (by data offset)
  SafetensorsMetadata metadata;
};

/// Reads a whole safetensors file into CPU tensors, validating it (Note [safetensors format]): the
/// header length against the file size, the JSON, each entry's dtype name, shape and offsets (inside
/// the file, size = numel * dtype size, contiguous and non-overlapping), bool bytes. Every problem
/// raises flame::Error naming the file and, where there is one, the tensor.
SafetensorsContents read_safetensors(const std::string& path);
/// read_safetensors(path).tensors.
NamedTensors load_safetensors(const std::string& path);

/// Saves module.state_dict() (parameters then buffers, by dotted name) to a safetensors file.
void save_weights(const Module& module, const std::string& path, const SafetensorsMetadata& metadata = {});
/// Loads a safetensors file into module.load_state_dict (strict): raises flame::Error naming the
/// file and the tensor for a missing or unexpected name, a wrong shape or a wrong dtype, changing
/// nothing in that case. The values are copied to the module's devices.
void load_weights(Module& module, const std::string& path);

}  // namespace flame::nn
