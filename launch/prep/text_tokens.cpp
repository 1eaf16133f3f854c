#include "launch/prep/text_tokens.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

#include "core/error.h"

namespace flame::prep {
namespace {

constexpr size_t kChunkBytes = size_t{1} << 22;

using File = std::unique_ptr<FILE, int (*)(FILE*)>;

File open_for_reading(const std::string& path) {
  File file(std::fopen(path.c_str(), "rb"), &std::fclose);
  FLAME_CHECK(file != nullptr, "text: cannot open '{}' for reading", path);
  return file;
}

/// Reads up to buffer.size() bytes; raises naming `path` on a read error.
size_t read_chunk(FILE* file, std::vector<char>& buffer, const std::string& path) {
  const size_t got = std::fread(buffer.data(), 1, buffer.size(), file);
  FLAME_CHECK(!std::ferror(file), "text: read error in '{}'", path);
  return got;
}

template <class T>
void fill_tokens(const char* bytes, size_t count, Tensor& tokens) {
  T* out = tokens.data<T>();
  for (size_t i = 0; i < count; ++i) out[i] = static_cast<uint8_t>(bytes[i]);
}

}  // namespace

TokenWidth parse_token_width(std::string_view name, std::string_view flag) {
  if (name == "u16") return TokenWidth::U16;
  if (name == "u32") return TokenWidth::U32;
  FLAME_FAIL("{}: '{}' is not a token dtype; expected u16 or u32", flag, name);
}

DType token_tensor_dtype(TokenWidth width) { return width == TokenWidth::U16 ? kI32 : kI64; }

std::optional<int64_t> Utf8Validator::feed(std::string_view bytes) {
  for (const char c : bytes) {
    const auto b = static_cast<uint8_t>(c);
    if (pending_ > 0) {
      if (b < low_ || b > high_) return sequence_start_;
      low_ = 0x80;
      high_ = 0xBF;
      --pending_;
    } else if (b >= 0x80) {
      sequence_start_ = offset_;
      if (b >= 0xC2 && b <= 0xDF) {
        pending_ = 1;
      } else if (b >= 0xE0 && b <= 0xEF) {
        pending_ = 2;
        if (b == 0xE0) low_ = 0xA0;   // no overlong 3-byte forms
        if (b == 0xED) high_ = 0x9F;  // no surrogates
      } else if (b >= 0xF0 && b <= 0xF4) {
        pending_ = 3;
        if (b == 0xF0) low_ = 0x90;   // no overlong 4-byte forms
        if (b == 0xF4) high_ = 0x8F;  // nothing above U+10FFFF
      } else {
        return offset_;  // stray continuation byte, overlong 2-byte lead C0/C1, or F5..FF
      }
    }
    ++offset_;
  }
  return std::nullopt;
}

std::optional<int64_t> Utf8Validator::finish() const {
  if (pending_ > 0) return sequence_start_;
  return std::nullopt;
}

data::Manifest convert_text(const TextOptions& options) {
  std::vector<char> buffer(kChunkBytes);
  {
    File file = open_for_reading(options.input);
    Utf8Validator validator;
    size_t got;
    while ((got = read_chunk(file.get(), buffer, options.input)) > 0) {
      const std::optional<int64_t> bad = validator.feed({buffer.data(), got});
      FLAME_CHECK(!bad, "text: '{}' is not valid UTF-8: invalid byte sequence at byte offset {}", options.input, *bad);
    }
    const std::optional<int64_t> cut = validator.finish();
    FLAME_CHECK(!cut, "text: '{}' is not valid UTF-8: the file ends inside the sequence starting at byte offset {}",
                options.input, *cut);
    FLAME_CHECK(validator.bytes() >= options.window + 1,
                "text: '{}' holds {} bytes, fewer than one window of {} + 1 tokens (--window)", options.input,
                validator.bytes(), options.window);
  }
  const DType dtype = token_tensor_dtype(options.token_width);
  data::ShardWriter writer =
      data::ShardWriter::token_stream(options.out, dtype, options.window, options.shard_tokens, options.compression);
  File file = open_for_reading(options.input);
  size_t got;
  while ((got = read_chunk(file.get(), buffer, options.input)) > 0) {
    Tensor tokens = Tensor::empty({static_cast<int64_t>(got)}, dtype);
    if (dtype == kI32)
      fill_tokens<int32_t>(buffer.data(), got, tokens);
    else
      fill_tokens<int64_t>(buffer.data(), got, tokens);
    writer.append_tokens(tokens);
  }
  return writer.finish();
}

}  // namespace flame::prep
