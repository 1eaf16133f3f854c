// DataLoader on the CPU: order and completeness for several worker / prefetch settings, last
// batch kept or dropped, exact resume from a saved state, two ranks covering an epoch once, a
// worker's read error reaching the consumer, argument checks.
#include "datasets/loader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "support/test_support.h"

namespace flame::data {
namespace {

namespace fs = std::filesystem;

// Sample i: image [2, 3] u8 with element k = (7 i + k) % 251, label i64 = 3 i + 1.
constexpr int64_t kImageElements = 6;
uint8_t image_value(int64_t sample, int64_t k) { return static_cast<uint8_t>((7 * sample + k) % 251); }
int64_t label_value(int64_t sample) { return 3 * sample + 1; }

using test::TempDir;

/// Writes `samples` samples in shards of `shard_samples` into `dir`.
Manifest write_dataset(const std::string& dir, int64_t samples, int64_t shard_samples, int compression = 0) {
  ShardWriter writer(dir, {{"image", DType::U8, {2, 3}}, {"label", DType::I64, {}}}, shard_samples, compression);
  const int64_t chunk = 16;
  for (int64_t begin = 0; begin < samples; begin += chunk) {
    const int64_t n = std::min(chunk, samples - begin);
    Tensor images = Tensor::empty({n, 2, 3}, DType::U8);
    Tensor labels = Tensor::empty({n}, DType::I64);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < kImageElements; ++k)
        images.data<uint8_t>()[i * kImageElements + k] = image_value(begin + i, k);
      labels.data<int64_t>()[i] = label_value(begin + i);
    }
    writer.append({images, labels});
  }
  return writer.finish();
}

/// Checks one delivered batch against the closed form of the samples `expected` names.
void expect_batch_holds(const Batch& batch, const std::vector<int64_t>& expected) {
  ASSERT_EQ(batch.fields.size(), 2u);
  const int64_t rows = static_cast<int64_t>(expected.size());
  EXPECT_EQ(batch.fields[0].shape(), (Shape{rows, 2, 3}));
  EXPECT_EQ(batch.fields[1].shape(), (Shape{rows}));
  const std::vector<uint8_t> images = batch.fields[0].to_vector<uint8_t>();
  const std::vector<int64_t> labels = batch.fields[1].to_vector<int64_t>();
  for (int64_t i = 0; i < rows; ++i) {
    EXPECT_EQ(labels[i], label_value(expected[i])) << "row " << i;
    for (int64_t k = 0; k < kImageElements; ++k)
      EXPECT_EQ(images[i * kImageElements + k], image_value(expected[i], k)) << "row " << i << " element " << k;
  }
}

/// The indices batch b of an epoch holds: sampler order [b * B, (b + 1) * B).
std::vector<int64_t> batch_indices(const std::vector<int64_t>& order, int64_t b, int64_t batch_size) {
  const int64_t begin = b * batch_size;
  const int64_t end = std::min<int64_t>(begin + batch_size, static_cast<int64_t>(order.size()));
  return {order.begin() + begin, order.begin() + end};
}

/// The labels of every batch left in the current epoch.
std::vector<std::vector<int64_t>> drain_labels(DataLoader& loader) {
  std::vector<std::vector<int64_t>> labels;
  while (std::optional<Batch> batch = loader.next()) labels.push_back(batch->fields[1].to_vector<int64_t>());
  return labels;
}

TEST(DataLoader, DeliversEveryBatchInOrderForSeveralWorkerAndPrefetchSettings) {
  TempDir dir;
  write_dataset(dir.path(), 103, 10);
  auto dataset = std::make_shared<const ShardedDataset>(dir.path());
  const std::vector<std::pair<int, int>> settings = {{1, 1}, {2, 4}, {4, 2}, {3, 8}, {8, 1}};
  for (ReadMode mode : {ReadMode::Shards, ReadMode::InMemory}) {
    auto source = mode == ReadMode::Shards ? dataset : [&] {
      auto loaded = std::make_shared<ShardedDataset>(dir.path());
      loaded->load_into_memory();
      return std::shared_ptr<const ShardedDataset>(loaded);
    }();
    for (auto [workers, prefetch] : settings) {
      SCOPED_TRACE(testing::Message() << "workers " << workers << " prefetch " << prefetch << " in memory "
                                      << (mode == ReadMode::InMemory));
      DataLoaderOptions options;
      options.batch_size = 8;
      options.workers = workers;
      options.prefetch = prefetch;
      options.last_batch = LastBatch::Keep;
      options.read_mode = mode;
      DistributedSampler sampler(103, 0, 1, /*seed=*/11);
      DataLoader loader(source, sampler, options);
      EXPECT_EQ(loader.batches_per_epoch(), 13);
      for (int64_t epoch : {0, 1}) {
        if (epoch > 0) loader.set_epoch(epoch);
        sampler.set_epoch(epoch);
        const std::vector<int64_t> order = sampler.indices();
        int64_t b = 0;
        while (std::optional<Batch> batch = loader.next()) {
          EXPECT_EQ(batch->epoch, epoch);
          EXPECT_EQ(batch->index, b);
          const std::vector<int64_t> expected = batch_indices(order, b, 8);
          expect_batch_holds(*batch, expected);
          // The same as reading the sampler's indices from the dataset directly.
          const std::vector<Tensor> direct = source->read(expected);
          EXPECT_EQ(batch->fields[0].to_vector<uint8_t>(), direct[0].to_vector<uint8_t>());
          EXPECT_EQ(batch->fields[1].to_vector<int64_t>(), direct[1].to_vector<int64_t>());
          ++b;
        }
        EXPECT_EQ(b, 13);
        EXPECT_FALSE(loader.next().has_value());  // stays at the end
        EXPECT_EQ(loader.state().next_batch, 13);
      }
    }
  }
}

TEST(DataLoader, LastBatchDropOrKeep) {
  TempDir dir;
  write_dataset(dir.path(), 103, 25);
  auto dataset = std::make_shared<const ShardedDataset>(dir.path());
  DataLoaderOptions options;
  options.batch_size = 10;
  options.last_batch = LastBatch::Drop;
  DataLoader dropping(dataset, DistributedSampler(103, 0, 1, 3, Shuffle::Off), options);
  EXPECT_EQ(dropping.batches_per_epoch(), 10);
  std::vector<std::vector<int64_t>> dropped = drain_labels(dropping);
  ASSERT_EQ(dropped.size(), 10u);
  for (size_t b = 0; b < dropped.size(); ++b) {
    ASSERT_EQ(dropped[b].size(), 10u);
    for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(dropped[b][i], label_value(static_cast<int64_t>(b) * 10 + i));
  }

  options.last_batch = LastBatch::Keep;
  DataLoader keeping(dataset, DistributedSampler(103, 0, 1, 3, Shuffle::Off), options);
  EXPECT_EQ(keeping.batches_per_epoch(), 11);
  std::vector<std::vector<int64_t>> kept = drain_labels(keeping);
  ASSERT_EQ(kept.size(), 11u);
  EXPECT_EQ(kept.back(), (std::vector<int64_t>{label_value(100), label_value(101), label_value(102)}));
}

TEST(DataLoader, ResumeFromASavedStateReproducesTheRemainingBatches) {
  TempDir dir;
  write_dataset(dir.path(), 90, 16);
  auto dataset = std::make_shared<const ShardedDataset>(dir.path());
  DataLoaderOptions options;
  options.batch_size = 7;
  options.workers = 3;
  options.prefetch = 3;
  options.last_batch = LastBatch::Keep;
  const DistributedSampler sampler(90, 0, 1, 99);

  // The uninterrupted run: epoch 2 from its start.
  DataLoader reference(dataset, sampler, options);
  reference.set_epoch(2);
  const std::vector<std::vector<int64_t>> all = drain_labels(reference);
  ASSERT_EQ(all.size(), 13u);

  // Interrupted after 5 batches of epoch 2 (with more prefetched), state saved, a new loader resumes.
  LoaderState saved;
  {
    DataLoader interrupted(dataset, sampler, options);
    interrupted.set_epoch(2);
    for (int b = 0; b < 5; ++b) ASSERT_TRUE(interrupted.next().has_value());
    saved = interrupted.state();
  }  // destroyed mid-epoch with batches in flight
  EXPECT_EQ(saved.epoch, 2);
  EXPECT_EQ(saved.next_batch, 5);
  DataLoader resumed(dataset, sampler, options);
  resumed.restore(saved);
  EXPECT_EQ(resumed.state().epoch, 2);
  EXPECT_EQ(resumed.state().next_batch, 5);
  std::optional<Batch> first = resumed.next();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->epoch, 2);
  EXPECT_EQ(first->index, 5);
  std::vector<std::vector<int64_t>> rest{first->fields[1].to_vector<int64_t>()};
  for (auto& labels : drain_labels(resumed)) rest.push_back(labels);
  EXPECT_EQ(rest, std::vector<std::vector<int64_t>>(all.begin() + 5, all.end()));

  // Restoring the same loader backwards (to batch 0 of the epoch) replays the whole epoch.
  resumed.restore({2, 0});
  EXPECT_EQ(drain_labels(resumed), all);
  // A state at the end of an epoch resumes at the end.
  resumed.restore({2, 13});
  EXPECT_FALSE(resumed.next().has_value());
  EXPECT_THROW(resumed.restore({2, 14}), Error);
  EXPECT_THROW(resumed.restore({-1, 0}), Error);
}

TEST(DataLoader, TwoRanksTogetherCoverTheEpochOnce) {
  TempDir dir;
  write_dataset(dir.path(), 103, 20);
  auto dataset = std::make_shared<const ShardedDataset>(dir.path());
  DataLoaderOptions options;
  options.batch_size = 6;
  options.last_batch = LastBatch::Keep;
  for (Remainder remainder : {Remainder::Drop, Remainder::Pad}) {
    std::map<int64_t, int> seen;  // label -> times delivered
    int64_t total = 0;
    for (int rank = 0; rank < 2; ++rank) {
      DataLoader loader(dataset, DistributedSampler(103, rank, 2, 8, Shuffle::On, remainder), options);
      loader.set_epoch(4);
      for (const auto& labels : drain_labels(loader))
        for (int64_t label : labels) {
          ++seen[label];
          ++total;
        }
    }
    if (remainder == Remainder::Drop) {
      EXPECT_EQ(total, 102);
      EXPECT_EQ(seen.size(), 102u);
      for (const auto& [label, count] : seen) EXPECT_EQ(count, 1) << "label " << label;
    } else {
      EXPECT_EQ(total, 104);
      EXPECT_EQ(seen.size(), 103u);  // every sample, one of them twice
      int padding = 0;
      for (const auto& [label, count] : seen) padding += count - 1;
      EXPECT_EQ(padding, 1);
    }
    for (const auto& [label, count] : seen) {
      EXPECT_EQ((label - 1) % 3, 0);
      EXPECT_LT((label - 1) / 3, 103);
    }
  }
}

TEST(DataLoader, AWorkerReadErrorReachesTheConsumerNamingTheFile) {
  TempDir dir;
  const Manifest manifest = write_dataset(dir.path(), 60, 10, /*compression=*/4);
  auto dataset = std::make_shared<const ShardedDataset>(dir.path());
  // Damage shard 3 (samples 30..39) after the dataset was opened: its chunks now read as zeros or
  // fail, and gzip rejects them.
  const std::string damaged = manifest.shards.at(3).file;
  fs::resize_file(fs::path(dir.path()) / damaged, 0);

  DataLoaderOptions options;
  options.batch_size = 10;
  options.workers = 3;
  options.prefetch = 4;
  DataLoader loader(dataset, DistributedSampler(60, 0, 1, 0, Shuffle::Off), options);
  for (int64_t b = 0; b < 3; ++b) {
    std::optional<Batch> batch = loader.next();
    ASSERT_TRUE(batch.has_value());
    EXPECT_EQ(batch->fields[1].to_vector<int64_t>().front(), label_value(b * 10));
  }
  for (int attempt = 0; attempt < 2; ++attempt) {  // raised again until the loader moves
    try {
      loader.next();
      FAIL() << "expected flame::Error from the damaged shard";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(damaged), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("batch 3"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(loader.state().next_batch, 3);
}

TEST(DataLoader, DestroyedMidEpochStopsItsWorkers) {
  TempDir dir;
  write_dataset(dir.path(), 200, 50);
  auto dataset = std::make_shared<const ShardedDataset>(dir.path());
  for (int round = 0; round < 5; ++round) {
    DataLoaderOptions options;
    options.batch_size = 4;
    options.workers = 4;
    options.prefetch = 6;
    DataLoader loader(dataset, DistributedSampler(200, 0, 1, round), options);
    if (round % 2 == 1) ASSERT_TRUE(loader.next().has_value());
    loader.set_epoch(round + 1);  // discards prefetched batches while reads are in flight
  }
  SUCCEED() << "every loader joined its workers";
  EXPECT_EQ(dataset->size(), 200);  // the dataset outlives the loaders untouched
}

TEST(DataLoader, InMemoryModeLoadsANonConstDatasetAndRejectsAnUnloadedConstOne) {
  TempDir dir;
  write_dataset(dir.path(), 30, 10);
  DataLoaderOptions options;
  options.batch_size = 5;
  options.read_mode = ReadMode::InMemory;
  auto unloaded = std::make_shared<const ShardedDataset>(dir.path());
  EXPECT_THROW(DataLoader(unloaded, DistributedSampler(30, 0, 1, 0), options), Error);

  auto mutable_dataset = std::make_shared<ShardedDataset>(dir.path());
  DataLoader loader(mutable_dataset, DistributedSampler(30, 0, 1, 0, Shuffle::Off), options);
  EXPECT_TRUE(mutable_dataset->in_memory());
  fs::remove_all(dir.path());  // no file is read any more
  const auto labels = drain_labels(loader);
  ASSERT_EQ(labels.size(), 6u);
  EXPECT_EQ(labels[5], (std::vector<int64_t>{76, 79, 82, 85, 88}));  // samples 25..29
}

TEST(DataLoader, BadOptionsRaise) {
  TempDir dir;
  write_dataset(dir.path(), 20, 10);
  auto dataset = std::make_shared<const ShardedDataset>(dir.path());
  const DistributedSampler sampler(20, 0, 1, 0);
  DataLoaderOptions options;
  options.batch_size = 0;
  EXPECT_THROW(DataLoader(dataset, sampler, options), Error);
  options = {};
  options.workers = 0;
  EXPECT_THROW(DataLoader(dataset, sampler, options), Error);
  options = {};
  options.prefetch = 0;
  EXPECT_THROW(DataLoader(dataset, sampler, options), Error);
  EXPECT_THROW(DataLoader(dataset, DistributedSampler(21, 0, 1, 0), DataLoaderOptions{}), Error);
  EXPECT_THROW(DataLoader(std::shared_ptr<const ShardedDataset>(), sampler, DataLoaderOptions{}), Error);
  DataLoader loader(dataset, sampler, DataLoaderOptions{});
  EXPECT_THROW(loader.set_epoch(-2), Error);
}

}  // namespace
}  // namespace flame::data
