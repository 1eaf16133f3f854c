// UTF-8 text into a byte-level token stream: each byte of the file is one token (0..255).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "datasets/dataset.h"

namespace flame::prep {

/// Width of a token on disk (u16 or u32 in the shards).
enum class TokenWidth { U16, U32 };

/// "u16" -> U16, "u32" -> U32; raises naming `flag` otherwise.
TokenWidth parse_token_width(std::string_view name, std::string_view flag);
/// The dtype of the token tensors given to ShardWriter::token_stream for that width: i32 for u16,
/// i64 for u32 (Note [token dtypes] in datasets/format.h).
DType token_tensor_dtype(TokenWidth width);

/// Validates UTF-8 fed in pieces of any size (sequences may straddle pieces). Rejects what
/// RFC 3629 rejects: stray continuation bytes, overlong forms, surrogates (U+D800..DFFF), code
/// points above U+10FFFF, bytes 0xF5..0xFF, and a sequence cut off by the end of input.
class Utf8Validator {
 public:
  /// Checks the next bytes. Returns the byte offset (from the start of all input) of the first
  /// byte of the first invalid sequence, or nullopt while everything is valid.
  std::optional<int64_t> feed(std::string_view bytes);
  /// Call after the last piece: the offset of a sequence the end of input cut short, or nullopt.
  std::optional<int64_t> finish() const;
  /// Bytes fed so far.
  int64_t bytes() const { return offset_; }

 private:
  int64_t offset_ = 0;                // bytes fed so far
  int64_t sequence_start_ = 0;        // offset of the lead byte of the sequence in progress
  int pending_ = 0;                   // continuation bytes still expected
  uint8_t low_ = 0x80, high_ = 0xBF;  // allowed range of the next continuation byte
};

struct TextOptions {
  std::string input;   // a UTF-8 text file
  std::string out;     // the dataset directory
  int64_t window = 0;  // tokens per window (each sample holds window + 1)
  int64_t shard_tokens = int64_t{1} << 26;
  TokenWidth token_width = TokenWidth::U16;
  int compression = 0;
};

/// Checks that `options.input` is valid UTF-8 (raising with the byte offset of the first invalid
/// sequence before anything is written), then writes its bytes as tokens, streamed in chunks.
data::Manifest convert_text(const TextOptions& options);

}  // namespace flame::prep
