// DataLoader delivering to a CUDA device: pinned buffers, the copy stream and the compute stream's
// event wait (Note [loader transfers]). Skips without a GPU.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/ops.h"
#include "datasets/loader.h"

namespace flame::data {
namespace {

namespace fs = std::filesystem;

// Sample i: image [4, 4] u8 with element k = (5 i + k) % 253, label i64 = 2 i + 7.
uint8_t image_value(int64_t sample, int64_t k) { return static_cast<uint8_t>((5 * sample + k) % 253); }
int64_t label_value(int64_t sample) { return 2 * sample + 7; }

class CudaLoader : public testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    dir_ = (fs::temp_directory_path() / ("flame_cuda_loader_test_" + std::to_string(getpid()))).string();
    fs::remove_all(dir_);
    ShardWriter writer(dir_, {{"image", DType::U8, {4, 4}}, {"label", DType::I64, {}}}, 32);
    Tensor images = Tensor::empty({kSamples, 4, 4}, DType::U8);
    Tensor labels = Tensor::empty({kSamples}, DType::I64);
    for (int64_t i = 0; i < kSamples; ++i) {
      for (int64_t k = 0; k < 16; ++k) images.data<uint8_t>()[i * 16 + k] = image_value(i, k);
      labels.data<int64_t>()[i] = label_value(i);
    }
    writer.append({images, labels});
    writer.finish();
    dataset_ = std::make_shared<const ShardedDataset>(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  static constexpr int64_t kSamples = 150;
  std::string dir_;
  std::shared_ptr<const ShardedDataset> dataset_;
};

TEST_F(CudaLoader, BatchesArriveOnTheGpuWithTheSampledValues) {
  DataLoaderOptions options;
  options.batch_size = 16;
  options.workers = 3;
  options.prefetch = 2;  // fewer buffers than batches: each pinned buffer is refilled several times
  options.device = cuda_device(0);
  options.last_batch = LastBatch::Keep;
  DistributedSampler sampler(kSamples, 0, 1, 21);
  DataLoader loader(dataset_, sampler, options);
  ASSERT_EQ(loader.batches_per_epoch(), 10);
  for (int64_t epoch : {0, 1}) {
    loader.set_epoch(epoch);
    sampler.set_epoch(epoch);
    const std::vector<int64_t> order = sampler.indices();
    // Hold every batch before reading any back: a refilled buffer must not change delivered ones.
    std::vector<Batch> batches;
    while (std::optional<Batch> batch = loader.next()) batches.push_back(std::move(*batch));
    ASSERT_EQ(batches.size(), 10u);
    for (size_t b = 0; b < batches.size(); ++b) {
      const Batch& batch = batches[b];
      EXPECT_EQ(batch.index, static_cast<int64_t>(b));
      ASSERT_EQ(batch.fields.size(), 2u);
      EXPECT_EQ(batch.fields[0].device(), cuda_device(0));
      EXPECT_EQ(batch.fields[1].device(), cuda_device(0));
      const int64_t rows = std::min<int64_t>(16, kSamples - static_cast<int64_t>(b) * 16);
      EXPECT_EQ(batch.fields[0].shape(), (Shape{rows, 4, 4}));
      const std::vector<uint8_t> images = batch.fields[0].to_vector<uint8_t>();
      const std::vector<int64_t> labels = batch.fields[1].to_vector<int64_t>();
      double label_sum = 0;
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t sample = order[b * 16 + i];
        EXPECT_EQ(labels[i], label_value(sample));
        label_sum += static_cast<double>(label_value(sample));
        for (int64_t k = 0; k < 16; ++k) EXPECT_EQ(images[i * 16 + k], image_value(sample, k));
      }
      // A FLAME op on the compute stream sees the copied data without any host synchronisation.
      EXPECT_EQ(batch.fields[1].to(DType::F64).sum().item(), label_sum);
    }
  }
  cuda::synchronize(0);
}

TEST_F(CudaLoader, ResumeOnTheGpuContinuesWithTheSameBatches) {
  DataLoaderOptions options;
  options.batch_size = 20;
  options.device = cuda_device(0);
  const DistributedSampler sampler(kSamples, 0, 1, 5);
  DataLoader first(dataset_, sampler, options);
  first.set_epoch(3);
  ASSERT_TRUE(first.next().has_value());
  ASSERT_TRUE(first.next().has_value());
  const LoaderState saved = first.state();
  std::vector<std::vector<int64_t>> expected;
  while (std::optional<Batch> batch = first.next()) expected.push_back(batch->fields[1].to_vector<int64_t>());

  DataLoader resumed(dataset_, sampler, options);
  resumed.restore(saved);
  std::vector<std::vector<int64_t>> got;
  while (std::optional<Batch> batch = resumed.next()) got.push_back(batch->fields[1].to_vector<int64_t>());
  EXPECT_EQ(got, expected);
  EXPECT_EQ(got.size(), 5u);  // 7 batches of 20 (drop last), 2 consumed before the save
}

}  // namespace
}  // namespace flame::data
