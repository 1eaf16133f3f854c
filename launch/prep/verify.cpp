#include "launch/prep/verify.h"

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "datasets/dataset.h"

namespace flame::prep {

VerifySummary verify_dataset(const std::string& dir, int64_t chunk_samples) {
  FLAME_CHECK(chunk_samples > 0, "verify: chunk_samples must be positive, got {}", chunk_samples);
  const data::ShardedDataset dataset(dir, data::Verification::Checksums);
  VerifySummary summary;
  for (const data::ShardInfo& shard : dataset.manifest().shards)
    summary.bytes += static_cast<int64_t>(std::filesystem::file_size(std::filesystem::path(dir) / shard.file));
  summary.shards = static_cast<int64_t>(dataset.manifest().shards.size());
  std::vector<int64_t> indices;
  for (int64_t start = 0; start < dataset.size(); start += chunk_samples) {
    indices.resize(static_cast<size_t>(std::min(chunk_samples, dataset.size() - start)));
    std::iota(indices.begin(), indices.end(), start);
    const std::vector<Tensor> fields = dataset.read(indices);
    FLAME_CHECK(fields.size() == dataset.fields().size(), "verify: '{}': read returned {} fields; the schema has {}",
                dir, fields.size(), dataset.fields().size());
    for (size_t f = 0; f < fields.size(); ++f)
      FLAME_CHECK(fields[f].size(0) == static_cast<int64_t>(indices.size()),
                  "verify: '{}': field '{}' returned {} samples for {} indices", dir, dataset.fields()[f].name,
                  fields[f].size(0), indices.size());
    summary.samples += static_cast<int64_t>(indices.size());
  }
  return summary;
}

}  // namespace flame::prep
