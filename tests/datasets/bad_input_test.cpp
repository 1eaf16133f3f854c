// Every bad input of issue 4 on real damaged datasets: missing, truncated and corrupt shards (and
// shards HDF5 cannot open for other reasons: a directory, no read permission, a writer's lock),
// checksum mismatches, manifests that disagree with their shards, wrong dtypes and shapes, empty
// datasets and broken manifests. Each error must name the file and what is wrong.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/file_io.h"
#include "datasets/dataset.h"
#include "tests/datasets/dataset_fixtures.h"

namespace flame::test {
namespace {

using data::ShardedDataset;
using data::ShardWriter;
using data::Verification;
using nlohmann::json;

// 300 images in shards of 128, 128 and 44.
class DamagedImages : public ::testing::Test {
 protected:
  void SetUp() override { write_images(dir_.path(), 300, 128, compression()); }
  virtual int compression() const { return 0; }
  std::string shard(int i) const { return dir_.file(data::Manifest::read(dir_.path()).shards[i].file); }
  std::string manifest_path() const { return dir_.file("manifest.json"); }
  json manifest_json() const { return json::parse(read_file(manifest_path())); }
  void set_manifest(const json& manifest) const { write_file(manifest_path(), manifest.dump(2)); }
  std::string open_error(Verification verification = Verification::Structure) const {
    return error_of([&] { ShardedDataset dataset(dir_.path(), verification); });
  }
  // Overwrites `count` bytes of `path` at `offset` with `value`.
  static void overwrite(const std::string& path, int64_t offset, int64_t count, char value) {
    std::string bytes = read_file(path);
    ASSERT_LE(offset + count, static_cast<int64_t>(bytes.size()));
    bytes.replace(static_cast<size_t>(offset), static_cast<size_t>(count), static_cast<size_t>(count), value);
    write_file(path, bytes);
  }

  TempDir dir_;
};

TEST_F(DamagedImages, MissingShard) {
  std::filesystem::remove(shard(1));
  expect_mentions(open_error(), {shard(1), "missing", manifest_path()});
}

TEST_F(DamagedImages, TruncatedShard) {
  std::filesystem::resize_file(shard(2), std::filesystem::file_size(shard(2)) / 2);
  expect_mentions(open_error(), {shard(2), "cannot open shard", "truncated"});
}

TEST_F(DamagedImages, EmptyShardFile) {
  std::filesystem::resize_file(shard(0), 0);
  expect_mentions(open_error(), {shard(0), "cannot open shard", "truncated, corrupt or not an HDF5 file"});
}

TEST_F(DamagedImages, CorruptSuperblock) {
  overwrite(shard(0), 0, 64, 'x');  // the signature too
  expect_mentions(open_error(), {shard(0), "cannot open shard", "truncated, corrupt or not an HDF5 file"});
}

// A shard that HDF5 cannot open for a reason other than its content says that reason, not "corrupt".
TEST_F(DamagedImages, DirectoryInPlaceOfAShard) {
  std::filesystem::remove(shard(1));
  std::filesystem::create_directory(shard(1));
  const std::string message = open_error();
  expect_mentions(message, {shard(1), "is a directory", manifest_path()});
  EXPECT_EQ(message.find("missing"), std::string::npos) << message;
}

TEST_F(DamagedImages, DanglingLinkOrFifoInPlaceOfAShard) {
  const std::string gone = dir_.path() + "/moved-away.h5";
  std::filesystem::rename(shard(1), gone);
  std::filesystem::create_symlink(gone, shard(1));
  std::filesystem::remove(gone);
  expect_mentions(open_error(), {shard(1), "symbolic link to '" + gone + "', which is missing"});
  std::filesystem::remove(shard(1));
  ASSERT_EQ(::mkfifo(shard(1).c_str(), 0600), 0) << io::errno_text();
  expect_mentions(open_error(), {shard(1), "is a FIFO, not a regular file"});
}

TEST_F(DamagedImages, UnreadableShard) {
  std::filesystem::permissions(shard(0), std::filesystem::perms::none);
  if (geteuid() == 0 || std::ifstream(shard(0)).is_open())
    GTEST_SKIP() << "the file stays readable after chmod 000 (running as root?): nothing to refuse";
  const std::string message = open_error();
  expect_mentions(message, {shard(0), "cannot open shard", "cannot read the file: permission denied"});
  EXPECT_EQ(message.find("corrupt"), std::string::npos) << message;
}

// HDF5 takes no lock on a file it already has open in this process (it shares that open file), so
// the writer of another process is stood in for by the lock such a writer holds: flock(LOCK_EX) on
// a descriptor of its own.
TEST_F(DamagedImages, ShardLockedByAWriter) {
  const std::string locking = std::getenv("HDF5_USE_FILE_LOCKING") ? std::getenv("HDF5_USE_FILE_LOCKING") : "";
  if (locking == "FALSE" || locking == "0")
    GTEST_SKIP() << "HDF5_USE_FILE_LOCKING=" << locking << ": HDF5 takes no lock";
  io::File writer(shard(0), O_RDWR | O_CLOEXEC);
  ASSERT_TRUE(writer.is_open()) << shard(0) << ": " << io::errno_text();
  if (::flock(writer.get(), LOCK_EX | LOCK_NB) != 0)
    GTEST_SKIP() << "this file system does not lock files: " << io::errno_text();
  {  // Where flock() becomes a per-process record lock (NFS), this process could still lock it.
    io::File other(shard(0), O_RDONLY | O_CLOEXEC);
    if (::flock(other.get(), LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK)
      GTEST_SKIP() << "locks on this file system do not conflict within one process";
  }
  const std::string message = open_error();
  expect_mentions(message, {shard(0), "HDF5 refused to open it", "locked by another process", "unable to lock file",
                            "HDF5_USE_FILE_LOCKING=FALSE"});
  EXPECT_EQ(message.find("corrupt"), std::string::npos) << message;
  ASSERT_TRUE(writer.close());
  EXPECT_EQ(ShardedDataset(dir_.path()).size(), 300);  // the same shard opens once the writer is gone
}

TEST_F(DamagedImages, CorruptSampleBytesFailTheChecksum) {
  // Find image 130 (row 2 of shard 1) in the file and damage it: HDF5 still reads the file, so
  // the structure check passes and only the checksum can tell.
  std::string bytes = read_file(shard(1));
  std::string pixels;
  for (int64_t j = 0; j < 784; ++j) pixels += static_cast<char>(image_pixel(130, j));
  size_t at = bytes.find(pixels);
  ASSERT_NE(at, std::string::npos);
  overwrite(shard(1), static_cast<int64_t>(at) + 100, 16, '\x7f');

  ShardedDataset structure_only(dir_.path(), Verification::Structure);
  EXPECT_EQ(structure_only.read({130})[0].data<uint8_t>()[100], 0x7f);
  expect_mentions(error_of([&] { structure_only.verify_checksums(); }), {shard(1), "checksum", "SHA-256"});
  expect_mentions(open_error(Verification::Checksums), {shard(1), "checksum", manifest_path()});
}

class DamagedCompressedImages : public DamagedImages {
 protected:
  int compression() const override { return 6; }
};

TEST_F(DamagedCompressedImages, CorruptChunkFailsTheRead) {
  const int64_t size = static_cast<int64_t>(std::filesystem::file_size(shard(0)));
  overwrite(shard(0), size / 2, 2048, '\x55');  // inside the compressed image chunks
  std::string message = error_of([&] {
    ShardedDataset dataset(dir_.path());
    std::vector<int64_t> all(128);
    for (int64_t i = 0; i < 128; ++i) all[i] = i;
    dataset.read(all);
  });
  expect_mentions(message, {shard(0)});
  expect_mentions(open_error(Verification::Checksums), {shard(0), "checksum"});
}

TEST_F(DamagedImages, ManifestSampleCountDisagreesWithShard) {
  json manifest = manifest_json();
  manifest["shards"][1]["samples"] = 127;
  set_manifest(manifest);
  expect_mentions(open_error(), {shard(1), "field 'image'", "holds 128 samples", "the manifest says 127"});
}

// Writes a one-shard dataset of 128 samples with `fields` into `scratch` and puts its shard in
// place of shard 0 of `dir`.
void swap_in_shard(const std::string& dir, const std::string& scratch, std::vector<data::FieldSpec> fields) {
  ShardWriter writer(scratch, fields, 128);
  std::vector<Tensor> batch;
  for (const auto& field : fields) {
    Shape shape = field.sample_shape;
    shape.insert(shape.begin(), 128);
    Tensor t = Tensor::empty(shape, field.dtype);
    std::memset(t.data_ptr(), 1, t.nbytes());
    batch.push_back(t);
  }
  writer.append(batch);
  data::Manifest manifest = writer.finish();
  std::filesystem::copy_file(scratch + "/" + manifest.shards[0].file, dir + "/shard-00000.h5",
                             std::filesystem::copy_options::overwrite_existing);
}

TEST_F(DamagedImages, ShardWithWrongLabelDtype) {
  TempDir scratch;
  swap_in_shard(dir_.path(), scratch.path(), {{"image", DType::U8, {1, 28, 28}}, {"label", DType::I32, {}}});
  expect_mentions(open_error(), {shard(0), "field 'label'", "stored as i32", "the manifest says i64"});
}

TEST_F(DamagedImages, ShardWithWrongImageShape) {
  TempDir scratch;
  swap_in_shard(dir_.path(), scratch.path(), {{"image", DType::U8, {3, 28, 28}}, {"label", DType::I64, {}}});
  expect_mentions(open_error(), {shard(0), "field 'image'", "shape [128, 3, 28, 28]", "expected [128, 1, 28, 28]"});
}

TEST_F(DamagedImages, ShardWithoutAField) {
  TempDir scratch;
  swap_in_shard(dir_.path(), scratch.path(), {{"image", DType::U8, {1, 28, 28}}, {"target", DType::I64, {}}});
  expect_mentions(open_error(), {shard(0), "no dataset 'label'"});
}

TEST_F(DamagedImages, ManifestErrors) {
  const std::string path = manifest_path();
  const json good = manifest_json();
  auto error_with = [&](const std::function<void(json&)>& edit) {
    json manifest = good;
    edit(manifest);
    set_manifest(manifest);
    return open_error();
  };
  expect_mentions(error_with([](json& m) { m.erase("fields"); }), {path, "missing key 'fields'"});
  expect_mentions(error_with([](json& m) { m["shards"][0].erase("sha256"); }), {path, "shards[0]", "'sha256'"});
  expect_mentions(error_with([](json& m) { m["fields"][1]["dtype"] = "q8"; }),
                  {path, "field 'label'", "unknown dtype 'q8'"});
  expect_mentions(error_with([](json& m) { m["kind"] = "video"; }), {path, "unknown kind 'video'"});
  expect_mentions(error_with([](json& m) { m["version"] = 2; }), {path, "version 2"});
  expect_mentions(error_with([](json& m) { m["shards"][0]["samples"] = "many"; }),
                  {path, "'samples' must be an integer"});
  expect_mentions(error_with([](json& m) { m["shards"][0]["sha256"] = "abc"; }), {path, "not 64 lower-case hex"});
  expect_mentions(error_with([](json& m) { m["shards"][1]["file"] = "../elsewhere.h5"; }), {path, "plain file name"});

  write_file(path, "{ \"version\": 1, \"kind\": ");
  expect_mentions(open_error(), {path, "not valid JSON"});
  std::filesystem::remove(path);
  expect_mentions(open_error(), {path, "cannot be opened"});
}

TEST_F(DamagedImages, EmptyDataset) {
  const std::string path = manifest_path();
  json manifest = manifest_json();
  manifest["shards"] = json::array();
  set_manifest(manifest);
  expect_mentions(open_error(), {path, "empty", "no shard"});

  set_manifest(json::parse(R"({"version": 1, "kind": "samples", "fields": [], "shards": []})"));
  expect_mentions(open_error(), {path, "'fields' is empty"});

  json zero = json::parse(R"({"version": 1, "kind": "samples", "fields": [{"name": "x", "dtype": "u8", "shape": []}],
                         "shards": [{"file": "shard-00000.h5", "samples": 0, "sha256": ""}]})");
  set_manifest(zero);
  expect_mentions(open_error(), {path, "'samples' must be >= 1, got 0"});

  TempDir nothing;
  ShardWriter writer(nothing.path(), {{"x", DType::U8, {}}}, 10);
  expect_mentions(error_of([&] { writer.finish(); }), {nothing.path(), "no samples"});
}

// Token streams: 170 u16 tokens, window 8, shards of 50 tokens (6, 6, 6, 2 windows).
class DamagedTokens : public ::testing::Test {
 protected:
  void SetUp() override { write(dir_.path(), DType::I32); }
  static void write(const std::string& dir, DType dtype) {
    ShardWriter writer = ShardWriter::token_stream(dir, dtype, 8, 50);
    Tensor tokens = Tensor::empty({170}, dtype);
    for (int64_t i = 0; i < 170; ++i) {
      if (dtype == DType::I32)
        tokens.data<int32_t>()[i] = static_cast<int32_t>(i);
      else
        tokens.data<int64_t>()[i] = i;
    }
    writer.append_tokens(tokens);
    writer.finish();
  }
  std::string manifest_path() const { return dir_.file("manifest.json"); }
  std::string open_error() const {
    return error_of([&] { ShardedDataset dataset(dir_.path()); });
  }
  TempDir dir_;
};

TEST_F(DamagedTokens, ShardWithWrongTokenDtype) {
  TempDir other;
  write(other.path(), DType::I64);  // u32 tokens
  std::filesystem::copy_file(other.file("shard-00001.h5"), dir_.file("shard-00001.h5"),
                             std::filesystem::copy_options::overwrite_existing);
  expect_mentions(open_error(), {dir_.file("shard-00001.h5"), "stored as u32", "the manifest says u16"});
}

TEST_F(DamagedTokens, ManifestTokenCountDisagreesWithShard) {
  json manifest = json::parse(read_file(manifest_path()));
  manifest["shards"][2]["tokens"] = 58;
  manifest["shards"][2]["samples"] = 7;
  write_file(manifest_path(), manifest.dump());
  expect_mentions(open_error(), {dir_.file("shard-00002.h5"), "holds 50 tokens", "the manifest says 58"});
}

TEST_F(DamagedTokens, ManifestWindowsDisagreeWithTokens) {
  json manifest = json::parse(read_file(manifest_path()));
  manifest["shards"][0]["samples"] = 7;
  write_file(manifest_path(), manifest.dump());
  expect_mentions(open_error(), {manifest_path(), "lists 7 samples", "50 tokens make 6 windows"});
}

TEST_F(DamagedTokens, ManifestTokenFieldErrors) {
  json good = json::parse(read_file(manifest_path()));
  json manifest = good;
  manifest["fields"][0]["dtype"] = "u8";
  write_file(manifest_path(), manifest.dump());
  expect_mentions(open_error(), {manifest_path(), "unknown dtype 'u8'", "u16 or u32"});
  manifest = good;
  manifest["fields"][0]["shape"] = {10};
  write_file(manifest_path(), manifest.dump());
  expect_mentions(open_error(), {manifest_path(), "expected [window + 1] = [9]"});
  manifest = good;
  manifest.erase("window");
  write_file(manifest_path(), manifest.dump());
  expect_mentions(open_error(), {manifest_path(), "missing key 'window'"});
}

TEST(ShardedDataset, ReadRejectsBadIndicesAndBuffers) {
  TempDir dir;
  write_images(dir.path(), 20, 8);
  ShardedDataset dataset(dir.path());
  expect_mentions(error_of([&] { dataset.read({3, 20}); }), {dir.path(), "index 20", "[0, 20)"});
  expect_mentions(error_of([&] { dataset.read({-1}); }), {"index -1"});
  expect_mentions(
      error_of([&] {
        dataset.read_into({1, 2}, {Tensor::empty({2, 1, 28, 28}, DType::U8), Tensor::empty({3}, DType::I64)});
      }),
      {"field 'label'", "shape [2]"});
}

// A dataset rewritten in its directory: the earlier manifest is gone from the start, so an
// unfinished rewrite cannot pass for the old dataset with new shards under it.
TEST(ShardWriter, ARewriteRemovesTheEarlierManifestUntilFinished) {
  TempDir dir;
  write_images(dir.path(), 300, 100);
  const std::vector<data::FieldSpec> fields{{"image", DType::U8, {1, 28, 28}}, {"label", DType::I64, {}}};
  const auto batch = [](int64_t n) {
    return std::vector<Tensor>{zeros({n, 1, 28, 28}, DType::U8), zeros({n}, DType::I64)};
  };
  {
    ShardWriter writer(dir.path(), fields, 100);
    EXPECT_FALSE(std::filesystem::exists(dir.file("manifest.json")));
    writer.append(batch(150));  // one new shard written, then dropped without finish()
  }
  expect_mentions(error_of([&] { ShardedDataset dataset(dir.path()); }), {"manifest.json"});
  ShardWriter writer(dir.path(), fields, 100);
  writer.append(batch(150));
  writer.finish();
  EXPECT_EQ(ShardedDataset(dir.path(), Verification::Checksums).size(), 150);
  // The earlier dataset's third shard, listed by no manifest now, is gone.
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"manifest.json", "shard-00000.h5", "shard-00001.h5"}));
}

// A job still reading the earlier dataset while it is rewritten keeps reading the earlier samples:
// new shards are written under a temporary name and renamed into place, never written into the
// files a reader holds open (nor stopped by a reader's lock on them).
TEST(ShardWriter, AReaderOfTheEarlierDatasetKeepsItsSamplesDuringARewrite) {
  TempDir dir;
  write_images(dir.path(), 200, 100);
  ShardedDataset earlier(dir.path());
  expect_image_sample(earlier.read({150}), 0, 150);
  ShardWriter writer(dir.path(), {{"image", DType::U8, {1, 28, 28}}, {"label", DType::I64, {}}}, 100);
  writer.append({zeros({200, 1, 28, 28}, DType::U8), zeros({200}, DType::I64)});
  writer.finish();
  expect_image_sample(earlier.read({150}), 0, 150);
  EXPECT_EQ(ShardedDataset(dir.path()).read({150})[1].to_vector<int64_t>(), std::vector<int64_t>{0});
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"manifest.json", "shard-00000.h5", "shard-00001.h5"}));
}

TEST(ShardWriter, ATokenCallThatRaisesAddsNothing) {
  TempDir dir;
  ShardWriter writer = ShardWriter::token_stream(dir.path(), DType::I32, 4, 100);
  std::vector<int32_t> bad(20);
  for (int32_t i = 0; i < 20; ++i) bad[static_cast<size_t>(i)] = 100 + i;
  bad[15] = 70000;
  expect_mentions(error_of([&] { writer.append_tokens(from_vector(bad, {20}, DType::I32)); }),
                  {"70000", "position 15", "nothing of this call"});
  writer.append_tokens(from_vector(std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {10}, DType::I32));
  const data::Manifest manifest = writer.finish();
  ASSERT_EQ(manifest.shards.size(), 1u);
  EXPECT_EQ(manifest.shards[0].tokens, 10);
  const std::vector<Tensor> first = ShardedDataset(dir.path()).read({0});
  EXPECT_EQ(first[0].data<int32_t>()[0], 1);  // not a token of the call that raised
}

// Each open shard holds up to two descriptors. Run in a child process (a death test), which lowers
// its own limits on open files.
TEST(ShardedDataset, OpenFileLimits) {
  TempDir dir;
  write_images(dir.path(), 120, 1);  // 120 shards of one image
  const auto set_limits = [](rlim_t soft, rlim_t hard) {
    rlimit limit{soft, hard};
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) std::_Exit(3);
  };
  // A soft limit too low for the shards is raised towards the hard limit, and the dataset opens.
  EXPECT_EXIT(
      {
        set_limits(64, 4096);
        ShardedDataset dataset(dir.path());
        std::_Exit(dataset.size() == 120 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
  // A hard limit too low: a clear error, not "corrupt shard".
  EXPECT_EXIT(
      {
        set_limits(64, 64);
        try {
          ShardedDataset dataset(dir.path());
        } catch (const Error& error) {
          const std::string message = error.what();
          const bool clear = message.find("too many open files") != std::string::npos &&
                             message.find("ulimit -n") != std::string::npos &&
                             message.find("corrupt") == std::string::npos;
          std::_Exit(clear ? 0 : 2);
        }
        std::_Exit(1);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace flame::test
