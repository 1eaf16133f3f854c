// DistributedSampler: exactly-once coverage for W = 1..8 with every remainder policy, the documented
// Philox permutation (Note [sampler permutation]), epochs and seeds, argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "datasets/loader.h"

namespace flame::data {
namespace {

const std::vector<int64_t> kSizes = {0, 1, 2, 3, 5, 7, 8, 16, 17, 63, 64, 100, 1001};

/// How often each sample appears across the shares of all W ranks for one epoch.
std::vector<int64_t> coverage(int64_t n, int world, Remainder remainder, Shuffle shuffle, int64_t epoch,
                              std::vector<int64_t>* share_sizes) {
  std::vector<int64_t> count(static_cast<size_t>(n), 0);
  for (int rank = 0; rank < world; ++rank) {
    DistributedSampler sampler(n, rank, world, /*seed=*/1234, shuffle, remainder);
    sampler.set_epoch(epoch);
    const std::vector<int64_t> mine = sampler.indices();
    EXPECT_EQ(static_cast<int64_t>(mine.size()), sampler.size());
    share_sizes->push_back(static_cast<int64_t>(mine.size()));
    for (int64_t index : mine) {
      EXPECT_GE(index, 0);
      EXPECT_LT(index, n);
      if (index >= 0 && index < n) ++count[static_cast<size_t>(index)];
    }
  }
  return count;
}

TEST(DistributedSampler, DropCoversEachSampleAtMostOnceWithEqualShares) {
  for (Shuffle shuffle : {Shuffle::On, Shuffle::Off}) {
    for (int world = 1; world <= 8; ++world) {
      for (int64_t n : kSizes) {
        for (int64_t epoch : {0, 3}) {
          SCOPED_TRACE(testing::Message()
                       << "N=" << n << " W=" << world << " epoch=" << epoch << " shuffle=" << (shuffle == Shuffle::On));
          std::vector<int64_t> shares;
          const std::vector<int64_t> count = coverage(n, world, Remainder::Drop, shuffle, epoch, &shares);
          for (int64_t share : shares) EXPECT_EQ(share, n / world);
          int64_t covered = 0;
          for (int64_t c : count) {
            EXPECT_LE(c, 1);
            covered += c;
          }
          EXPECT_EQ(covered, (n / world) * world);
        }
      }
    }
  }
}

TEST(DistributedSampler, UnevenCoversEverySampleExactlyOnce) {
  for (Shuffle shuffle : {Shuffle::On, Shuffle::Off}) {
    for (int world = 1; world <= 8; ++world) {
      for (int64_t n : kSizes) {
        SCOPED_TRACE(testing::Message() << "N=" << n << " W=" << world << " shuffle=" << (shuffle == Shuffle::On));
        std::vector<int64_t> shares;
        const std::vector<int64_t> count = coverage(n, world, Remainder::Uneven, shuffle, /*epoch=*/2, &shares);
        for (int rank = 0; rank < world; ++rank)
          EXPECT_EQ(shares[static_cast<size_t>(rank)], n / world + (rank < n % world ? 1 : 0)) << "rank " << rank;
        for (int64_t c : count) EXPECT_EQ(c, 1);
      }
    }
  }
}

TEST(DistributedSampler, PadCoversEverySampleAndPadsExactlyTheShortfall) {
  for (Shuffle shuffle : {Shuffle::On, Shuffle::Off}) {
    for (int world = 1; world <= 8; ++world) {
      for (int64_t n : kSizes) {
        for (int64_t epoch : {0, 5}) {
          SCOPED_TRACE(testing::Message()
                       << "N=" << n << " W=" << world << " epoch=" << epoch << " shuffle=" << (shuffle == Shuffle::On));
          std::vector<int64_t> shares;
          const std::vector<int64_t> count = coverage(n, world, Remainder::Pad, shuffle, epoch, &shares);
          const int64_t per_rank = (n + world - 1) / world;
          for (int64_t share : shares) EXPECT_EQ(share, per_rank);
          int64_t padding = 0;
          for (int64_t c : count) {
            EXPECT_GE(c, 1);
            padding += c - 1;
          }
          EXPECT_EQ(padding, per_rank * world - n);
        }
      }
    }
  }
}

TEST(DistributedSampler, UnshuffledSharesAreStridedOverTheIdentity) {
  // N = 5, W = 2, Pad: positions 0..5 of [0 1 2 3 4 | 0]; rank r takes positions r, r + 2, ...
  EXPECT_EQ(DistributedSampler(5, 0, 2, 7, Shuffle::Off, Remainder::Pad).indices(), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(DistributedSampler(5, 1, 2, 7, Shuffle::Off, Remainder::Pad).indices(), (std::vector<int64_t>{1, 3, 0}));
  EXPECT_EQ(DistributedSampler(5, 1, 2, 7, Shuffle::Off, Remainder::Drop).indices(), (std::vector<int64_t>{1, 3}));
  // N = 2, W = 5, Pad: [0 1 0 1 0], one each.
  for (int rank = 0; rank < 5; ++rank) {
    EXPECT_EQ(DistributedSampler(2, rank, 5, 7, Shuffle::Off, Remainder::Pad).indices(),
              (std::vector<int64_t>{rank % 2}));
    EXPECT_TRUE(DistributedSampler(2, rank, 5, 7, Shuffle::Off, Remainder::Drop).indices().empty());
  }
  DistributedSampler identity(10, 0, 1, 99, Shuffle::Off);
  identity.set_epoch(4);
  std::vector<int64_t> expected(10);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(identity.permutation(), expected);
}

/// The permutation exactly as Note [sampler permutation] specifies it, written out independently.
std::vector<int64_t> documented_permutation(int64_t n, uint64_t seed, uint64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  for (int64_t k = 0; k + 1 < n; ++k) {
    const int64_t i = n - 1 - k;
    const Philox4x32 words = philox4x32_10(static_cast<uint64_t>(k) / 2, epoch, seed);
    const uint32_t lo = words.v[k % 2 == 0 ? 0 : 2], hi = words.v[k % 2 == 0 ? 1 : 3];
    const uint64_t u = (uint64_t{hi} << 32) | lo;
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(u % static_cast<uint64_t>(i + 1))]);
  }
  return order;
}

TEST(DistributedSampler, PermutationFollowsTheDocumentedPhiloxShuffle) {
  for (int64_t n : {2, 3, 17, 1000}) {
    for (uint64_t seed : {0ull, 42ull, 0xDEADBEEFCAFEull}) {
      for (int64_t epoch : {0, 1, 9}) {
        DistributedSampler sampler(n, 0, 1, seed);
        sampler.set_epoch(epoch);
        const std::vector<int64_t> order = sampler.permutation();
        EXPECT_EQ(order, documented_permutation(n, seed, static_cast<uint64_t>(epoch)));
        std::vector<int64_t> sorted = order;
        std::sort(sorted.begin(), sorted.end());
        std::vector<int64_t> identity(static_cast<size_t>(n));
        std::iota(identity.begin(), identity.end(), 0);
        EXPECT_EQ(sorted, identity);
      }
    }
  }
}

TEST(DistributedSampler, SameSeedAndEpochGiveTheSameOrderOnEveryRank) {
  const int world = 4;
  std::vector<std::vector<int64_t>> permutations;
  for (int rank = 0; rank < world; ++rank) {
    DistributedSampler sampler(1000, rank, world, 2024);
    sampler.set_epoch(7);
    permutations.push_back(sampler.permutation());
    // The rank's share is the strided slice of that common order.
    const std::vector<int64_t> mine = sampler.indices();
    ASSERT_EQ(mine.size(), 250u);
    for (size_t k = 0; k < mine.size(); ++k) EXPECT_EQ(mine[k], permutations.back()[rank + k * world]);
  }
  for (int rank = 1; rank < world; ++rank) EXPECT_EQ(permutations[rank], permutations[0]);
  // Set again later: same order.
  DistributedSampler again(1000, 0, world, 2024);
  again.set_epoch(2);
  again.set_epoch(7);
  EXPECT_EQ(again.permutation(), permutations[0]);
}

TEST(DistributedSampler, EpochsAndSeedsChangeTheOrder) {
  DistributedSampler sampler(1000, 0, 1, 5);
  std::vector<std::vector<int64_t>> seen;
  for (int64_t epoch = 0; epoch < 6; ++epoch) {
    sampler.set_epoch(epoch);
    EXPECT_EQ(sampler.epoch(), epoch);
    seen.push_back(sampler.permutation());
  }
  for (size_t a = 0; a < seen.size(); ++a)
    for (size_t b = a + 1; b < seen.size(); ++b) EXPECT_NE(seen[a], seen[b]) << "epochs " << a << ", " << b;
  EXPECT_NE(DistributedSampler(1000, 0, 1, 6).permutation(), DistributedSampler(1000, 0, 1, 5).permutation());
}

TEST(DistributedSampler, AllOrdersOfFourAreAboutEquallyLikely) {
  // 24 orders over 24000 epochs: each expected 1000 times, standard deviation about 31.
  std::map<std::vector<int64_t>, int> counts;
  DistributedSampler sampler(4, 0, 1, 77);
  for (int64_t epoch = 0; epoch < 24000; ++epoch) {
    sampler.set_epoch(epoch);
    ++counts[sampler.permutation()];
  }
  EXPECT_EQ(counts.size(), 24u);
  for (const auto& [order, count] : counts) {
    EXPECT_GT(count, 850);
    EXPECT_LT(count, 1150);
  }
}

TEST(DistributedSampler, BadArgumentsRaise) {
  EXPECT_THROW(DistributedSampler(10, 2, 2, 0), Error);
  EXPECT_THROW(DistributedSampler(10, -1, 2, 0), Error);
  EXPECT_THROW(DistributedSampler(10, 0, 0, 0), Error);
  EXPECT_THROW(DistributedSampler(10, 0, -3, 0), Error);
  EXPECT_THROW(DistributedSampler(-1, 0, 1, 0), Error);
  DistributedSampler sampler(10, 0, 1, 0);
  EXPECT_THROW(sampler.set_epoch(-1), Error);
  try {
    DistributedSampler(10, 4, 4, 0);
    FAIL() << "expected flame::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 4"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace flame::data
