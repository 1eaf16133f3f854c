#include "launch/prep/synthetic.h"

#include <algorithm>

#include "core/error.h"
#include "core/random.h"
#include "launch/prep/text_tokens.h"

namespace flame::prep {
namespace {

constexpr int64_t kPixels = 28 * 28;
constexpr int64_t kClasses = 10;
constexpr int64_t kChunkSamples = 4096;
constexpr int64_t kChunkTokens = int64_t{1} << 22;

/// Writes elements [first, first + count) of the randint draw (seed, offset) in [0, high) to out.
/// Note [synthetic content].
template <class T>
void fill_randint(uint64_t seed, uint64_t offset, int64_t first, int64_t count, int64_t high, T* out) {
  int64_t i = first;
  const int64_t end = first + count;
  while (i < end) {
    const Philox4x32 block = philox4x32_10(offset + static_cast<uint64_t>(i / 4), 0, seed);
    for (int word = static_cast<int>(i % 4); word < 4 && i < end; ++word, ++i)
      *out++ = static_cast<T>(randint_from_bits(block.v[word], 0, high));
  }
}

uint64_t label_offset(int64_t samples) { return static_cast<uint64_t>((samples * kPixels + 3) / 4); }

data::Manifest make_images(const SyntheticOptions& options) {
  FLAME_CHECK(options.samples > 0, "synthetic: --samples must be positive for images, got {}", options.samples);
  const std::vector<data::FieldSpec> fields = {{"image", kU8, {1, 28, 28}}, {"label", kI64, {}}};
  data::ShardWriter writer(options.out, fields, options.shard_samples, options.compression);
  for (int64_t start = 0; start < options.samples; start += kChunkSamples) {
    const int64_t count = std::min(kChunkSamples, options.samples - start);
    Tensor image = Tensor::empty({count, 1, 28, 28}, kU8);
    Tensor label = Tensor::empty({count}, kI64);
    fill_randint(options.seed, 0, start * kPixels, count * kPixels, 256, image.data<uint8_t>());
    fill_randint(options.seed, label_offset(options.samples), start, count, kClasses, label.data<int64_t>());
    writer.append({image, label});
  }
  return writer.finish();
}

template <class T>
data::Manifest write_tokens(const SyntheticOptions& options, DType dtype) {
  data::ShardWriter writer =
      data::ShardWriter::token_stream(options.out, dtype, options.window, options.shard_tokens, options.compression);
  for (int64_t start = 0; start < options.tokens; start += kChunkTokens) {
    const int64_t count = std::min(kChunkTokens, options.tokens - start);
    Tensor tokens = Tensor::empty({count}, dtype);
    fill_randint(options.seed, 0, start, count, options.vocab, tokens.data<T>());
    writer.append_tokens(tokens);
  }
  return writer.finish();
}

data::Manifest make_tokens(const SyntheticOptions& options) {
  FLAME_CHECK(options.tokens > 0, "synthetic: --tokens must be positive for tokens, got {}", options.tokens);
  FLAME_CHECK(options.window > 0, "synthetic: --window must be positive for tokens, got {}", options.window);
  FLAME_CHECK(options.tokens >= options.window + 1,
              "synthetic: --tokens {} is less than one window of --window {} + 1 tokens", options.tokens,
              options.window);
  FLAME_CHECK(options.vocab >= 1 && options.vocab <= 65536, "synthetic: --vocab must be in 1..65536 (u16), got {}",
              options.vocab);
  const DType dtype = token_tensor_dtype(TokenWidth::U16);
  if (dtype == kI32) return write_tokens<int32_t>(options, dtype);
  return write_tokens<int64_t>(options, dtype);
}

}  // namespace

uint8_t synthetic_pixel(uint64_t seed, int64_t index) {
  uint8_t value;
  fill_randint(seed, 0, index, 1, 256, &value);
  return value;
}

int64_t synthetic_label(uint64_t seed, int64_t samples, int64_t sample) {
  int64_t value;
  fill_randint(seed, label_offset(samples), sample, 1, kClasses, &value);
  return value;
}

int64_t synthetic_token(uint64_t seed, int64_t vocab, int64_t index) {
  int64_t value;
  fill_randint(seed, 0, index, 1, vocab, &value);
  return value;
}

data::Manifest make_synthetic(const SyntheticOptions& options) {
  return options.kind == SyntheticKind::Images ? make_images(options) : make_tokens(options);
}

}  // namespace flame::prep
