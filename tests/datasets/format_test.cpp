// The shard format: ShardWriter -> manifest + HDF5 shards -> ShardedDataset, for samples datasets
// (u8 images + i64 labels, float fields) and token streams (u16, u32), with and without gzip;
// random access across shard boundaries, in-memory mode, concurrent reads, and h5py interop.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "datasets/dataset.h"
#include "tests/datasets/dataset_fixtures.h"

namespace flame::test {
namespace {

using data::DatasetKind;
using data::Manifest;
using data::ShardedDataset;
using data::ShardWriter;

class SamplesRoundTrip : public ::testing::TestWithParam<int> {};

TEST_P(SamplesRoundTrip, ManifestAndEverySampleInOrder) {
  TempDir dir;
  Manifest written = write_images(dir.path(), 300, 128, GetParam(), 70);
  ASSERT_EQ(written.shards.size(), 3u);
  EXPECT_EQ(written.shards[0].samples, 128);
  EXPECT_EQ(written.shards[1].samples, 128);
  EXPECT_EQ(written.shards[2].samples, 44);
  EXPECT_EQ(written.total_samples(), 300);
  for (const auto& shard : written.shards)
    EXPECT_EQ(shard.sha256, data::sha256_file(dir.file(shard.file))) << shard.file;

  Manifest read_back = Manifest::read(dir.path());
  EXPECT_EQ(read_back.kind, DatasetKind::Samples);
  ASSERT_EQ(read_back.fields.size(), 2u);
  EXPECT_EQ(read_back.fields[0].name, "image");
  EXPECT_EQ(read_back.fields[0].dtype, DType::U8);
  EXPECT_EQ(read_back.fields[0].sample_shape, (Shape{1, 28, 28}));
  EXPECT_EQ(read_back.fields[1].dtype, DType::I64);
  EXPECT_EQ(read_back.fields[1].sample_shape, Shape{});
  EXPECT_EQ(read_back.shards[2].sha256, written.shards[2].sha256);

  ShardedDataset dataset(dir.path(), data::Verification::Checksums);
  EXPECT_EQ(dataset.size(), 300);
  std::vector<int64_t> all(300);
  for (int64_t i = 0; i < 300; ++i) all[i] = i;
  std::vector<Tensor> read = dataset.read(all);
  EXPECT_EQ(read[0].shape(), (Shape{300, 1, 28, 28}));
  EXPECT_EQ(read[1].shape(), Shape{300});
  for (int64_t i = 0; i < 300; ++i) expect_image_sample(read, i, i);
}

INSTANTIATE_TEST_SUITE_P(Compression, SamplesRoundTrip, ::testing::Values(0, 6),
                         [](const auto& info) { return info.param == 0 ? "none" : "gzip6"; });

TEST(ShardedDataset, RandomAccessAcrossShardBoundaries) {
  TempDir dir;
  write_images(dir.path(), 300, 128, 0);
  ShardedDataset dataset(dir.path());
  // Runs that cross shard boundaries, duplicates, reversed order.
  std::vector<int64_t> indices{299, 0, 127, 128, 129, 5, 5, 255, 256, 130, 126, 4, 3, 2, 257};
  std::vector<Tensor> read = dataset.read(indices);
  for (size_t row = 0; row < indices.size(); ++row) expect_image_sample(read, row, indices[row]);

  std::vector<Tensor> out{Tensor::empty({15, 1, 28, 28}, DType::U8), Tensor::empty({15}, DType::I64)};
  std::memset(out[0].data_ptr(), 0xAB, out[0].nbytes());
  dataset.read_into(indices, out);
  for (size_t row = 0; row < indices.size(); ++row) expect_image_sample(out, row, indices[row]);

  EXPECT_EQ(dataset.read({})[0].shape(), (Shape{0, 1, 28, 28}));
}

// One field of one shard, on disk (plain and compressed) and in memory; the last shard is short.
TEST(ShardedDataset, ReadShardFieldGivesThatShardsValuesOfThatFieldOnly) {
  for (int compression : {0, 3}) {
    SCOPED_TRACE(compression);
    TempDir dir;
    write_images(dir.path(), 300, 128, compression);
    ShardedDataset dataset(dir.path());
    for (bool memory : {false, true}) {
      if (memory) dataset.load_into_memory();
      const int64_t firsts[] = {0, 128, 256};
      for (size_t shard = 0; shard < 3; ++shard) {
        const Tensor labels = dataset.read_shard_field(shard, 1);
        const int64_t samples = shard == 2 ? 44 : 128;
        ASSERT_EQ(labels.shape(), (Shape{samples}));
        for (int64_t i = 0; i < samples; ++i)
          ASSERT_EQ(labels.data<int64_t>()[i], image_label(firsts[shard] + i)) << "shard " << shard << " row " << i;
        const Tensor images = dataset.read_shard_field(shard, 0);
        ASSERT_EQ(images.shape(), (Shape{samples, 1, 28, 28}));
        EXPECT_EQ(images.data<uint8_t>()[(samples - 1) * 784 + 5], image_pixel(firsts[shard] + samples - 1, 5));
      }
    }
    expect_mentions(error_of([&] { dataset.read_shard_field(3, 0); }), {dir.path(), "out of range", "3 shards"});
    expect_mentions(error_of([&] { dataset.read_shard_field(0, 2); }), {"2 fields"});
  }
}

TEST(ShardedDataset, InMemoryReadsMatchHdf5Reads) {
  TempDir dir;
  write_images(dir.path(), 300, 100, 3);
  ShardedDataset dataset(dir.path());
  std::vector<int64_t> permutation(300);
  for (int64_t i = 0; i < 300; ++i) permutation[i] = i;
  std::shuffle(permutation.begin(), permutation.end(), std::mt19937_64(7));
  std::vector<Tensor> from_disk = dataset.read(permutation);
  EXPECT_FALSE(dataset.in_memory());
  dataset.load_into_memory();
  EXPECT_TRUE(dataset.in_memory());
  std::vector<Tensor> from_memory = dataset.read(permutation);
  for (size_t f = 0; f < 2; ++f)
    EXPECT_EQ(std::memcmp(from_disk[f].data_ptr(), from_memory[f].data_ptr(), from_disk[f].nbytes()), 0);
  for (int64_t row = 0; row < 300; ++row) expect_image_sample(from_memory, row, permutation[row]);
}

TEST(ShardedDataset, FloatHalfAndBoolFields) {
  TempDir dir;
  const int64_t n = 37;
  ShardWriter writer(
      dir.path(), {{"x", DType::F32, {2, 3}}, {"h", DType::F16, {4}}, {"w", DType::F64, {}}, {"mask", DType::Bool, {}}},
      10, 4);
  Tensor x = Tensor::empty({n, 2, 3}, DType::F32), h = Tensor::empty({n, 4}, DType::F16);
  Tensor w = Tensor::empty({n}, DType::F64), mask = Tensor::empty({n}, DType::Bool);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < 6; ++j) x.data<float>()[i * 6 + j] = 0.5f * i - 0.25f * j;
    for (int64_t j = 0; j < 4; ++j) static_cast<uint16_t*>(h.data_ptr())[i * 4 + j] = float_to_half_bits(i + 0.5f * j);
    w.data<double>()[i] = 1.0 / (i + 1);
    mask.data<bool>()[i] = i % 3 == 0;
  }
  writer.append({x, h, w, mask});
  Manifest manifest = writer.finish();
  EXPECT_EQ(manifest.shards.size(), 4u);

  ShardedDataset dataset(dir.path(), data::Verification::Checksums);
  EXPECT_EQ(dataset.fields()[1].dtype, DType::F16);
  std::vector<int64_t> indices{36, 9, 10, 11, 0, 20};
  std::vector<Tensor> read = dataset.read(indices);
  for (size_t row = 0; row < indices.size(); ++row) {
    int64_t i = indices[row];
    for (int64_t j = 0; j < 6; ++j) EXPECT_EQ(read[0].data<float>()[row * 6 + j], 0.5f * i - 0.25f * j);
    for (int64_t j = 0; j < 4; ++j)
      EXPECT_EQ(half_bits_to_float(static_cast<uint16_t*>(read[1].data_ptr())[row * 4 + j]), i + 0.5f * j);
    EXPECT_EQ(read[2].data<double>()[row], 1.0 / (i + 1));
    EXPECT_EQ(read[3].data<bool>()[row], i % 3 == 0);
  }
}

// Token k of the synthetic stream (u16 values span the whole unsigned range).
int64_t token_value(int64_t k, int bytes) {
  uint64_t mixed = static_cast<uint64_t>(k) * 2654435761ull + 12345;
  return static_cast<int64_t>(bytes == 2 ? mixed % 65536 : mixed % 4294967296ull);
}

// The expected windows of a token stream written by write_tokens: sample -> global token offsets.
std::vector<int64_t> window_starts(const Manifest& manifest) {
  std::vector<int64_t> starts;
  int64_t shard_first_token = 0;
  for (const auto& shard : manifest.shards) {
    for (int64_t j = 0; j < shard.samples; ++j) starts.push_back(shard_first_token + j * manifest.window);
    shard_first_token += shard.tokens;
  }
  return starts;
}

Manifest write_tokens(const std::string& dir, DType dtype, int64_t total, int64_t window, int64_t shard_tokens,
                      int compression) {
  ShardWriter writer = ShardWriter::token_stream(dir, dtype, window, shard_tokens, compression);
  const int bytes = dtype == DType::I32 ? 2 : 4;
  for (int64_t start = 0; start < total; start += 33) {  // pieces that do not align with shards
    int64_t count = std::min<int64_t>(33, total - start);
    Tensor piece = Tensor::empty({count}, dtype);
    for (int64_t i = 0; i < count; ++i) {
      if (dtype == DType::I32)
        piece.data<int32_t>()[i] = static_cast<int32_t>(token_value(start + i, bytes));
      else
        piece.data<int64_t>()[i] = token_value(start + i, bytes);
    }
    writer.append_tokens(piece);
  }
  return writer.finish();
}

struct TokenCase {
  DType dtype;
  int compression;
};

class TokenStreamRoundTrip : public ::testing::TestWithParam<TokenCase> {};

TEST_P(TokenStreamRoundTrip, WindowsStayInsideShards) {
  const auto [dtype, compression] = GetParam();
  const int bytes = dtype == DType::I32 ? 2 : 4;
  TempDir dir;
  // 170 tokens in shards of 50: 50, 50, 50, 20 tokens -> (50-1)/8 = 6, 6, 6 and (20-1)/8 = 2 windows.
  Manifest manifest = write_tokens(dir.path(), dtype, 170, 8, 50, compression);
  ASSERT_EQ(manifest.shards.size(), 4u);
  EXPECT_EQ(manifest.shards[3].tokens, 20);
  EXPECT_EQ(manifest.total_samples(), 20);
  Manifest read_back = Manifest::read(dir.path());
  EXPECT_EQ(read_back.kind, DatasetKind::TokenStream);
  EXPECT_EQ(read_back.window, 8);
  EXPECT_EQ(read_back.fields[0].dtype, dtype);
  EXPECT_EQ(read_back.fields[0].sample_shape, Shape{9});
  const std::string manifest_text = read_file(dir.file("manifest.json"));
  EXPECT_NE(manifest_text.find(bytes == 2 ? "\"u16\"" : "\"u32\""), std::string::npos) << manifest_text;

  ShardedDataset dataset(dir.path(), data::Verification::Checksums);
  ASSERT_EQ(dataset.size(), 20);
  std::vector<int64_t> starts = window_starts(manifest);
  std::vector<int64_t> indices{19, 0, 1, 5, 6, 7, 12, 11, 18, 3, 3};
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<Tensor> read = dataset.read(indices);
    ASSERT_EQ(read[0].shape(), (Shape{11, 9}));
    for (size_t row = 0; row < indices.size(); ++row)
      for (int64_t m = 0; m < 9; ++m) {
        int64_t got = dtype == DType::I32 ? read[0].data<int32_t>()[row * 9 + m] : read[0].data<int64_t>()[row * 9 + m];
        EXPECT_EQ(got, token_value(starts[indices[row]] + m, bytes)) << "sample " << indices[row] << " token " << m;
      }
    dataset.load_into_memory();  // the second pass reads from memory
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, TokenStreamRoundTrip,
                         ::testing::Values(TokenCase{DType::I32, 0}, TokenCase{DType::I64, 0}, TokenCase{DType::I32, 5},
                                           TokenCase{DType::I64, 5}),
                         [](const auto& info) {
                           return std::string(info.param.dtype == DType::I32 ? "u16" : "u32") +
                                  (info.param.compression ? "_gzip" : "_plain");
                         });

TEST(ShardWriter, TokenTailShorterThanAWindowIsNotWritten) {
  TempDir dir;
  Manifest manifest = write_tokens(dir.path(), DType::I32, 55, 8, 50, 0);
  ASSERT_EQ(manifest.shards.size(), 1u);
  EXPECT_EQ(manifest.shards[0].tokens, 50);
  EXPECT_FALSE(std::filesystem::exists(dir.file("shard-00001.h5")));
}

TEST(ShardWriter, RejectsTensorsThatDoNotMatchTheSchema) {
  TempDir dir;
  ShardWriter writer(dir.path(), {{"image", DType::U8, {1, 28, 28}}, {"label", DType::I64, {}}}, 10);
  expect_mentions(error_of([&] {
                    writer.append({Tensor::empty({4, 1, 28, 28}, DType::U8), Tensor::empty({4}, DType::I32)});
                  }),
                  {"field 'label'", "i64", dir.path()});
  expect_mentions(error_of([&] {
                    writer.append({Tensor::empty({4, 28, 28}, DType::U8), Tensor::empty({4}, DType::I64)});
                  }),
                  {"field 'image'", "[1, 28, 28]"});
  expect_mentions(error_of([&] {
                    writer.append({Tensor::empty({4, 1, 28, 28}, DType::U8), Tensor::empty({3}, DType::I64)});
                  }),
                  {"has 3 samples", "first field has 4"});
  expect_mentions(error_of([&] { writer.finish(); }), {"no samples", dir.path()});

  TempDir tokens_dir;
  ShardWriter tokens = ShardWriter::token_stream(tokens_dir.path(), DType::I32, 4, 100);
  Tensor too_big = Tensor::empty({2}, DType::I32);
  too_big.data<int32_t>()[0] = 7;
  too_big.data<int32_t>()[1] = 70000;
  expect_mentions(error_of([&] { tokens.append_tokens(too_big); }), {"70000", "u16"});
  expect_mentions(error_of([&] { ShardWriter::token_stream(tokens_dir.path(), DType::U8, 4, 100); }),
                  {"token dtype", "u8"});
}

TEST(ShardedDataset, ConcurrentReadsFromSeveralThreads) {
  TempDir dir;
  write_images(dir.path(), 400, 64, 1);
  ShardedDataset dataset(dir.path());
  std::vector<std::thread> threads;
  std::vector<int64_t> failures(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      for (int round = 0; round < 30; ++round) {
        std::vector<int64_t> indices(32);
        int64_t base = static_cast<int64_t>(rng() % 360);
        for (size_t k = 0; k < indices.size(); ++k)
          indices[k] = k % 2 ? base + static_cast<int64_t>(k) : static_cast<int64_t>(rng() % 400);
        std::vector<Tensor> read = dataset.read(indices);
        for (size_t row = 0; row < indices.size(); ++row) {
          failures[t] += read[1].data<int64_t>()[row] != image_label(indices[row]);
          failures[t] += read[0].data<uint8_t>()[row * 784 + 100] != image_pixel(indices[row], 100);
        }
      }
    });
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

// A Python script checking shards written by write_images / write_tokens with h5py and numpy only.
std::string dir_script(const std::string& images, const std::string& tokens) {
  return fmt::format(R"(import json, h5py, numpy as np
m = json.load(open("{0}/manifest.json"))
assert [s["samples"] for s in m["shards"]] == [100, 50], m
with h5py.File("{0}/shard-00001.h5", "r") as f:
    img, lab = f["image"], f["label"]
    assert img.shape == (50, 1, 28, 28) and img.dtype == np.uint8, (img.shape, img.dtype)
    assert lab.shape == (50,) and lab.dtype == np.int64, (lab.shape, lab.dtype)
    assert img.compression == "gzip", img.compression
    i, j = 107, np.arange(784)
    assert (img[7].reshape(-1) == (i * 31 + j * 7 + (i * j) % 13) % 251).all()
    assert (lab[:] == 1000 + 3 * np.arange(100, 150)).all()
with h5py.File("{1}/shard-00002.h5", "r") as f:
    t = f["tokens"]
    assert t.dtype == np.uint16 and t.shape == (50,), (t.dtype, t.shape)
    k = np.arange(100, 150, dtype=np.uint64)
    assert (t[:] == (k * 2654435761 + 12345) % 65536).all()
)",
                     images, tokens);
}

TEST(ShardFormat, OpensUnchangedInH5py) {
  if (std::system("python3 -c 'import h5py, numpy' > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with h5py and numpy is not available";
  TempDir images, tokens;
  write_images(images.path(), 150, 100, 4);
  write_tokens(tokens.path(), DType::I32, 170, 8, 50, 0);
  const std::string script = dir_script(images.path(), tokens.path());
  write_file(images.file("check.py"), script);
  EXPECT_EQ(std::system(("python3 " + images.file("check.py")).c_str()), 0) << script;
}

}  // namespace
}  // namespace flame::test
