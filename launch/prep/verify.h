// `flame-prep verify DIR`: checks a dataset end to end.
#pragma once

#include <cstdint>
#include <string>

namespace flame::prep {

struct VerifySummary {
  int64_t samples = 0;  // samples (windows, for a token stream) read
  int64_t shards = 0;
  int64_t bytes = 0;  // total size of the shard files
};

/// Opens `dir` with Verification::Checksums (every shard present, with the manifest's counts,
/// dtypes, shapes and SHA-256), then reads every sample once, in chunks of `chunk_samples`.
/// Raises flame::Error (naming the file and the problem) on the first failure.
VerifySummary verify_dataset(const std::string& dir, int64_t chunk_samples = 4096);

}  // namespace flame::prep
