// Synthetic datasets of any size for tests and benchmarks, streamed in chunks (bounded memory),
// their content drawn from Philox so that a seed always gives the same bytes.
#pragma once

#include <cstdint>
#include <string>

#include "datasets/dataset.h"

namespace flame::prep {

enum class SyntheticKind {
  Images,  // Fashion-MNIST's schema: "image" u8 [1, 28, 28], "label" i64 [] in 0..9
  Tokens,  // a u16 token stream, tokens in [0, vocab)
};

struct SyntheticOptions {
  std::string out;
  SyntheticKind kind = SyntheticKind::Images;
  int64_t samples = 0;  // Images: number of samples
  int64_t tokens = 0;   // Tokens: number of tokens
  uint64_t seed = 0;
  int64_t shard_samples = 10000;
  int64_t shard_tokens = int64_t{1} << 26;
  int64_t window = 0;     // Tokens: tokens per window
  int64_t vocab = 65536;  // Tokens: at most 65536 (u16)
  int compression = 0;
};

// Note [synthetic content]: the values are those flame::randint would draw from a Generator with
// `seed` at offset 0 (Note [random stream layout] in core/random.h): element i of a draw takes word
// i % 4 of philox4x32_10(offset + i / 4, 0, seed) through randint_from_bits. Images: pixels are
// one draw of samples * 784 values in [0, 256), in sample order; labels are the next draw, of
// samples values in [0, 10), at the offset the pixels left the generator at. Tokens: one draw of
// `tokens` values in [0, vocab).

/// Pixel `index` (global, sample-major) of a synthetic image dataset.
uint8_t synthetic_pixel(uint64_t seed, int64_t index);
/// Label of sample `sample` of a synthetic image dataset with `samples` samples.
int64_t synthetic_label(uint64_t seed, int64_t samples, int64_t sample);
/// Token `index` of a synthetic token stream.
int64_t synthetic_token(uint64_t seed, int64_t vocab, int64_t index);

/// Writes the dataset to options.out; raises on inconsistent options (naming the field).
data::Manifest make_synthetic(const SyntheticOptions& options);

}  // namespace flame::prep
