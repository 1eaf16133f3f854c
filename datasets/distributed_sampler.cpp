#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/random.h"
#include "datasets/loader.h"

namespace flame::data {

DistributedSampler::DistributedSampler(int64_t dataset_size, int rank, int world_size, uint64_t seed, Shuffle shuffle,
                                       Remainder remainder)
    : dataset_size_(dataset_size),
      rank_(rank),
      world_size_(world_size),
      seed_(seed),
      shuffle_(shuffle),
      remainder_(remainder) {
  FLAME_CHECK(dataset_size >= 0, "DistributedSampler: dataset size {} is negative", dataset_size);
  FLAME_CHECK(world_size >= 1, "DistributedSampler: world size {} must be at least 1", world_size);
  FLAME_CHECK(rank >= 0 && rank < world_size, "DistributedSampler: rank {} is outside [0, {}) for a world of {} ranks",
              rank, world_size, world_size);
}

void DistributedSampler::set_epoch(int64_t epoch) {
  FLAME_CHECK(epoch >= 0, "DistributedSampler::set_epoch: epoch {} is negative", epoch);
  epoch_ = epoch;
}

int64_t DistributedSampler::size() const {
  switch (remainder_) {
    case Remainder::Drop:
      return dataset_size_ / world_size_;
    case Remainder::Pad:
      return (dataset_size_ + world_size_ - 1) / world_size_;
    case Remainder::Uneven:
      return dataset_size_ / world_size_ + (rank_ < dataset_size_ % world_size_ ? 1 : 0);
  }
  FLAME_FAIL("DistributedSampler: unknown remainder policy");
}

// Note [sampler permutation].
std::vector<int64_t> DistributedSampler::permutation() const {
  std::vector<int64_t> order(static_cast<size_t>(dataset_size_));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (shuffle_ == Shuffle::Off) return order;
  Philox4x32 block{};
  for (int64_t i = dataset_size_ - 1; i >= 1; --i) {
    const uint64_t step = static_cast<uint64_t>(dataset_size_ - 1 - i);
    if (step % 2 == 0) block = philox4x32_10(step / 2, static_cast<uint64_t>(epoch_), seed_);
    const int word = step % 2 == 0 ? 0 : 2;
    const uint64_t draw = static_cast<uint64_t>(block.v[word]) | (static_cast<uint64_t>(block.v[word + 1]) << 32);
    const int64_t j = static_cast<int64_t>(draw % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

std::vector<int64_t> DistributedSampler::indices() const {
  const std::vector<int64_t> order = permutation();
  const int64_t count = size();
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    const int64_t position = rank_ + k * world_size_;  // < count * W, within the kept entries
    mine.push_back(order[static_cast<size_t>(position % dataset_size_)]);
  }
  return mine;
}

}  // namespace flame::data
