// flame-prep: Fashion-MNIST conversion checked against the idx files read independently here,
// text round trips, synthetic datasets against their closed form (Note [synthetic content]), and
// verify on good and damaged datasets, through the library and through the flame-prep binary.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "datasets/dataset.h"
#include "launch/prep/fashion_mnist.h"
#include "launch/prep/synthetic.h"
#include "launch/prep/text_tokens.h"
#include "launch/prep/verify.h"
#include "support/test_support.h"

namespace flame::prep {
namespace {

namespace fs = std::filesystem;

/// Debian's dataset-fashion-mnist package (scripts/setup.sh installs it), or $FLAME_FASHION_MNIST_DIR.
std::string fashion_mnist_dir() {
  const char* env = std::getenv("FLAME_FASHION_MNIST_DIR");
  return env && *env ? env : "/usr/share/datasets/fashion-mnist";
}

using test::read_file;
using test::TempDir;
using test::write_file;

/// The whole decompressed content of a .gz file.
std::vector<uint8_t> gunzip(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  EXPECT_NE(file, nullptr) << path;
  std::vector<uint8_t> out;
  std::array<uint8_t, 65536> buffer;
  int got;
  while ((got = gzread(file, buffer.data(), buffer.size())) > 0)
    out.insert(out.end(), buffer.data(), buffer.data() + got);
  gzclose(file);
  return out;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(file);
}

/// An idx header: magic 0x000008<ndim>, then the dims big-endian.
std::vector<uint8_t> idx_header(const std::vector<uint32_t>& dims, uint8_t magic_ndim) {
  std::vector<uint8_t> out = {0, 0, 8, magic_ndim};
  for (uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(d >> shift));
  return out;
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> out(static_cast<size_t>(n));
  std::iota(out.begin(), out.end(), 0);
  return out;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

/// Runs the flame-prep binary with `args`; returns its exit status, stdout+stderr in `output`.
int run_prep(const std::string& args, std::string* output) {
  const std::string command = fmt::format("'{}' {} 2>&1", FLAME_PREP_BINARY, args);
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::array<char, 4096> buffer;
  output->clear();
  size_t got;
  while ((got = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output->append(buffer.data(), got);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// --- Fashion-MNIST -----------------------------------------------------------------------------

TEST(PrepFashionMnist, TestSplitMatchesIdxFiles) {
  const std::string source = fashion_mnist_dir();
  if (!fs::exists(source + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST idx files not found in " << source
                 << ": install Debian's dataset-fashion-mnist (scripts/setup.sh) or set FLAME_FASHION_MNIST_DIR";
  const std::vector<uint8_t> raw_images = gunzip(source + "/t10k-images-idx3-ubyte.gz");
  const std::vector<uint8_t> raw_labels = gunzip(source + "/t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(raw_images.size(), 16u + 10000u * 784u);
  ASSERT_EQ(raw_labels.size(), 8u + 10000u);

  TempDir tmp;
  FashionMnistOptions options{source, tmp.path(), 3000, 1};
  const data::Manifest manifest = convert_fashion_mnist_split(options, fashion_mnist_splits()[1]);
  ASSERT_EQ(manifest.shards.size(), 4u);
  EXPECT_EQ(manifest.shards[0].samples, 3000);
  EXPECT_EQ(manifest.shards[3].samples, 1000);
  EXPECT_EQ(manifest.total_samples(), 10000);

  const data::ShardedDataset dataset(tmp.file("test"), data::Verification::Checksums);
  ASSERT_EQ(dataset.size(), 10000);
  ASSERT_EQ(dataset.fields().size(), 2u);
  EXPECT_EQ(dataset.fields()[0].name, "image");
  EXPECT_EQ(dataset.fields()[0].dtype, kU8);
  EXPECT_EQ(dataset.fields()[0].sample_shape, (Shape{1, 28, 28}));
  EXPECT_EQ(dataset.fields()[1].name, "label");
  EXPECT_EQ(dataset.fields()[1].dtype, kI64);
  EXPECT_EQ(dataset.fields()[1].sample_shape, Shape{});

  const std::vector<Tensor> all = dataset.read(iota(10000));
  ASSERT_EQ(all[0].shape(), (Shape{10000, 1, 28, 28}));
  ASSERT_EQ(all[1].shape(), (Shape{10000}));
  const std::vector<uint8_t> pixels = all[0].to_vector<uint8_t>();
  const std::vector<int64_t> labels = all[1].to_vector<int64_t>();
  // Every pixel and label equals the idx files' bytes; pixel sums per image follow.
  EXPECT_TRUE(std::equal(pixels.begin(), pixels.end(), raw_images.begin() + 16));
  for (int64_t i = 0; i < 10000; ++i) ASSERT_EQ(labels[i], raw_labels[8 + i]) << "label " << i;
  const uint64_t raw_sum = std::accumulate(raw_images.begin() + 16, raw_images.end(), uint64_t{0});
  EXPECT_EQ(std::accumulate(pixels.begin(), pixels.end(), uint64_t{0}), raw_sum);
  EXPECT_EQ(raw_sum, 573469082u);  // the t10k images' pixel sum, computed with numpy from the .gz file
  // The first test labels of Fashion-MNIST (ankle boot, pullover, trouser, trouser, shirt), as read
  // from t10k-labels-idx1-ubyte.gz with numpy; the test split has 1000 of each class.
  EXPECT_EQ(std::vector<int64_t>(labels.begin(), labels.begin() + 5), (std::vector<int64_t>{9, 2, 1, 1, 6}));
  std::vector<int64_t> per_class(10, 0);
  for (int64_t label : labels) ++per_class.at(static_cast<size_t>(label));
  EXPECT_EQ(per_class, std::vector<int64_t>(10, 1000));

  // Random access across shards: image 6543 (in shard 2) sums as in the source.
  const std::vector<Tensor> one = dataset.read({6543});
  const std::vector<uint8_t> image = one[0].to_vector<uint8_t>();
  EXPECT_EQ(std::accumulate(image.begin(), image.end(), uint64_t{0}),
            std::accumulate(raw_images.begin() + 16 + 6543 * 784, raw_images.begin() + 16 + 6544 * 784, uint64_t{0}));
}

TEST(PrepFashionMnist, DamagedSourcesNameTheFile) {
  TempDir tmp;
  const FashionMnistSplit split{"img.gz", "lab.gz", 100, "small"};
  const FashionMnistOptions options{tmp.path(), tmp.file("out"), 50, 0};
  const std::vector<uint8_t> pixels(100 * 784, 7);
  auto images = idx_header({100, 28, 28}, 3);
  images.insert(images.end(), pixels.begin(), pixels.end());
  auto labels = idx_header({100}, 1);
  labels.insert(labels.end(), 100, 3);
  write_gz(tmp.file("img.gz"), images);
  write_gz(tmp.file("lab.gz"), labels);
  EXPECT_EQ(convert_fashion_mnist_split(options, split).total_samples(), 100);  // the well-formed pair converts

  write_gz(tmp.file("lab.gz"), idx_header({100}, 3));  // wrong magic (3 dims)
  std::string message = error_of([&] { convert_fashion_mnist_split(options, split); });
  EXPECT_NE(message.find("lab.gz"), std::string::npos) << message;
  EXPECT_NE(message.find("magic"), std::string::npos) << message;

  auto short_labels = idx_header({99}, 1);
  short_labels.insert(short_labels.end(), 99, 3);
  write_gz(tmp.file("lab.gz"), short_labels);  // 99 labels for 100 images
  message = error_of([&] { convert_fashion_mnist_split(options, split); });
  EXPECT_NE(message.find("lab.gz"), std::string::npos) << message;
  EXPECT_NE(message.find("99 labels"), std::string::npos) << message;

  write_gz(tmp.file("lab.gz"), labels);
  images.resize(16 + 60 * 784);  // header says 100 images, 60 present
  write_gz(tmp.file("img.gz"), images);
  message = error_of([&] { convert_fashion_mnist_split(options, split); });
  EXPECT_NE(message.find("img.gz"), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;

  const FashionMnistSplit wrong_count{"img.gz", "lab.gz", 60000, "train"};
  images.resize(16 + 100 * 784, 7);
  write_gz(tmp.file("img.gz"), images);
  message = error_of([&] { convert_fashion_mnist_split(options, wrong_count); });
  EXPECT_NE(message.find("img.gz' holds 100 images"), std::string::npos) << message;
}

// --- text --------------------------------------------------------------------------------------

TEST(PrepUtf8, ValidatorAcceptsUtf8AndLocatesInvalidBytes) {
  const auto first_error = [](const std::vector<std::string>& pieces) -> int64_t {
    Utf8Validator v;
    for (const std::string& piece : pieces)
      if (auto bad = v.feed(piece)) return *bad;
    return v.finish().value_or(-1);
  };
  EXPECT_EQ(first_error({"plain ascii", " h\xC3\xA9llo \xE2\x9C\x93 \xF0\x9D\x84\x9E"}), -1);
  EXPECT_EQ(first_error({"ab\xE2", "\x9C", "\x93", "cd"}), -1);  // a sequence split across pieces
  EXPECT_EQ(first_error({"abc\xC3(def"}), 3);                    // missing continuation
  EXPECT_EQ(first_error({"ab", "c\x80"}), 3);                    // stray continuation byte
  EXPECT_EQ(first_error({"\xC0\xAF"}), 0);                       // overlong '/'
  EXPECT_EQ(first_error({"xx\xE0\x80\xAF"}), 2);                 // overlong 3-byte form
  EXPECT_EQ(first_error({"x\xED\xA0\x80"}), 1);                  // surrogate U+D800
  EXPECT_EQ(first_error({"\xF4\x90\x80\x80"}), 0);               // above U+10FFFF
  EXPECT_EQ(first_error({"ok\xFF"}), 2);                         // never valid in UTF-8
  EXPECT_EQ(first_error({"end\xF0\x9D", "\x84"}), 3);            // cut off by end of input
}

/// Checks that every window of `dir` equals the file bytes it covers and returns how many file
/// bytes the windows cover (each shard's windows cover tokens [0, windows * T + 1) of the shard).
int64_t check_windows_against(const std::string& dir, const std::string& text, int64_t window, DType dtype) {
  const data::ShardedDataset dataset(dir);
  EXPECT_EQ(dataset.fields()[0].dtype, dtype);
  EXPECT_EQ(dataset.fields()[0].sample_shape, Shape{window + 1});
  int64_t shard_base = 0, sample = 0, covered = 0, stored = 0;
  for (const data::ShardInfo& shard : dataset.manifest().shards) {
    std::vector<int64_t> indices(static_cast<size_t>(shard.samples));
    std::iota(indices.begin(), indices.end(), sample);
    const std::vector<int64_t> tokens = dataset.read(indices)[0].to(kI64).to_vector<int64_t>();
    for (int64_t w = 0; w < shard.samples; ++w)
      for (int64_t j = 0; j <= window; ++j)
        EXPECT_EQ(tokens[w * (window + 1) + j], static_cast<uint8_t>(text[shard_base + w * window + j]))
            << "shard " << shard.file << " window " << w << " token " << j;
    covered += shard.samples * window + 1;
    sample += shard.samples;
    shard_base += shard.tokens;
    stored += shard.tokens;
  }
  EXPECT_EQ(stored, static_cast<int64_t>(text.size()));  // every byte is stored as a token
  return covered;
}

TEST(PrepText, RoundTripThroughWindows) {
  TempDir tmp;
  std::string text;
  for (int i = 0; text.size() < 6000; ++i)
    text += fmt::format("line {}: h\xC3\xA9llo w\xC3\xB6rld \xE2\x9C\x93 \xF0\x9D\x84\x9E\n", i);
  text.resize(5 * 321);  // ends on an ASCII byte; 5 shards of 20 windows of 16 + 1 tokens exactly
  while (static_cast<uint8_t>(text.back()) >= 0x80) text.back() = '.';
  write_file(tmp.file("input.txt"), text);
  for (const TokenWidth width : {TokenWidth::U16, TokenWidth::U32}) {
    const std::string out = tmp.file(width == TokenWidth::U16 ? "u16" : "u32");
    const data::Manifest manifest = convert_text({tmp.file("input.txt"), out, 16, 321, width, 0});
    EXPECT_EQ(manifest.shards.size(), 5u);
    EXPECT_EQ(manifest.total_samples(), 100);
    EXPECT_EQ(check_windows_against(out, text, 16, token_tensor_dtype(width)), static_cast<int64_t>(text.size()));
  }
  // Shards that do not divide into windows: the windows still match the bytes they cover.
  const data::Manifest uneven = convert_text({tmp.file("input.txt"), tmp.file("uneven"), 7, 500, TokenWidth::U16, 3});
  EXPECT_EQ(uneven.shards.size(), 4u);  // 500 + 500 + 500 + 105 tokens
  EXPECT_EQ(uneven.total_samples(), 3 * (499 / 7) + 104 / 7);
  EXPECT_EQ(check_windows_against(tmp.file("uneven"), text, 7, kI32), 3 * (71 * 7 + 1) + (14 * 7 + 1));
}

TEST(PrepText, InvalidUtf8AndShortFilesAreRejectedBeforeWriting) {
  TempDir tmp;
  write_file(tmp.file("bad.txt"), std::string(5000, 'a') + "\xE2\x28\xA1" + "tail");
  std::string message = error_of([&] {
    convert_text({tmp.file("bad.txt"), tmp.file("out"), 8, 1000, TokenWidth::U16, 0});
  });
  EXPECT_NE(message.find("bad.txt"), std::string::npos) << message;
  EXPECT_NE(message.find("byte offset 5000"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(tmp.file("out")));
  write_file(tmp.file("short.txt"), "tiny");
  message = error_of([&] { convert_text({tmp.file("short.txt"), tmp.file("out"), 8, 1000, TokenWidth::U16, 0}); });
  EXPECT_NE(message.find("short.txt' holds 4 bytes"), std::string::npos) << message;
}

// --- synthetic ---------------------------------------------------------------------------------

TEST(PrepSynthetic, ImagesFollowTheClosedForm) {
  TempDir tmp;
  SyntheticOptions options;
  options.out = tmp.file("images");
  options.samples = 1000;
  options.shard_samples = 300;
  options.seed = 42;
  const data::Manifest manifest = make_synthetic(options);
  ASSERT_EQ(manifest.shards.size(), 4u);
  EXPECT_EQ(manifest.shards[3].samples, 100);
  const data::ShardedDataset dataset(options.out);
  const std::vector<Tensor> all = dataset.read(iota(1000));
  const std::vector<uint8_t> pixels = all[0].to_vector<uint8_t>();
  const std::vector<int64_t> labels = all[1].to_vector<int64_t>();
  for (int64_t i = 0; i < 1000 * 784; i += 997) ASSERT_EQ(pixels[i], synthetic_pixel(42, i)) << i;
  for (int64_t s = 0; s < 1000; ++s) ASSERT_EQ(labels[s], synthetic_label(42, 1000, s)) << s;
  // Note [synthetic content]: the same values flame::randint draws from Generator(42).
  Generator generator(42);
  const std::vector<int64_t> drawn_pixels = randint(0, 256, {1000 * 784}, kI64, &generator).to_vector<int64_t>();
  const std::vector<int64_t> drawn_labels = randint(0, 10, {1000}, kI64, &generator).to_vector<int64_t>();
  EXPECT_TRUE(std::equal(pixels.begin(), pixels.end(), drawn_pixels.begin()));
  EXPECT_EQ(labels, drawn_labels);
  // Roughly uniform: the mean pixel of 784000 draws from 0..255 is within 1 of 127.5.
  const double mean = std::accumulate(pixels.begin(), pixels.end(), 0.0) / static_cast<double>(pixels.size());
  EXPECT_NEAR(mean, 127.5, 1.0);
}

TEST(PrepSynthetic, TokensSizesAndDeterminism) {
  TempDir tmp;
  SyntheticOptions options;
  options.kind = SyntheticKind::Tokens;
  options.out = tmp.file("a");
  options.tokens = 10000;
  options.window = 64;
  options.shard_tokens = 4097;  // 64 windows per full shard
  options.vocab = 1000;
  options.seed = 7;
  const data::Manifest a = make_synthetic(options);
  ASSERT_EQ(a.shards.size(), 3u);
  EXPECT_EQ(a.shards[0].tokens, 4097);
  EXPECT_EQ(a.shards[2].tokens, 10000 - 2 * 4097);
  EXPECT_EQ(a.total_samples(), 64 + 64 + (1806 - 1) / 64);
  const data::ShardedDataset dataset(options.out);
  const std::vector<int64_t> first = dataset.read({0})[0].to(kI64).to_vector<int64_t>();
  const std::vector<int64_t> later = dataset.read({64 + 3})[0].to(kI64).to_vector<int64_t>();  // shard 1, window 3
  for (int64_t j = 0; j <= 64; ++j) {
    EXPECT_EQ(first[j], synthetic_token(7, 1000, j));
    EXPECT_EQ(later[j], synthetic_token(7, 1000, 4097 + 3 * 64 + j));
    EXPECT_LT(later[j], 1000);
  }
  options.out = tmp.file("b");
  const data::Manifest b = make_synthetic(options);
  options.out = tmp.file("c");
  options.seed = 8;
  const data::Manifest c = make_synthetic(options);
  for (size_t s = 0; s < a.shards.size(); ++s) {
    EXPECT_EQ(a.shards[s].sha256, b.shards[s].sha256);  // same seed, same bytes
    EXPECT_NE(a.shards[s].sha256, c.shards[s].sha256);
  }
  options.window = 0;
  EXPECT_NE(error_of([&] { make_synthetic(options); }).find("--window"), std::string::npos);
}

// --- verify ------------------------------------------------------------------------------------

TEST(PrepVerify, GoodDatasetPassesCorruptShardFailsNamingIt) {
  TempDir tmp;
  SyntheticOptions options;
  options.out = tmp.file("ds");
  options.samples = 500;
  options.shard_samples = 200;
  make_synthetic(options);
  const VerifySummary summary = verify_dataset(options.out, 128);
  EXPECT_EQ(summary.samples, 500);
  EXPECT_EQ(summary.shards, 3);
  int64_t bytes = 0;
  for (const auto& entry : fs::directory_iterator(options.out))
    if (entry.path().extension() == ".h5") bytes += static_cast<int64_t>(entry.file_size());
  EXPECT_EQ(summary.bytes, bytes);

  std::string output;
  EXPECT_EQ(run_prep("verify '" + options.out + "'", &output), 0) << output;
  EXPECT_NE(output.find("500 samples, 3 shards"), std::string::npos) << output;
  EXPECT_NE(output.find("OK"), std::string::npos) << output;

  // Flip one byte in the middle of the second shard (inside the image data).
  const std::string shard = options.out + "/" + data::Manifest::read(options.out).shards[1].file;
  std::string bytes_of_shard = read_file(shard);
  bytes_of_shard[bytes_of_shard.size() / 2] ^= 0x5A;
  write_file(shard, bytes_of_shard);
  const std::string shard_name = fs::path(shard).filename().string();
  const std::string message = error_of([&] { verify_dataset(options.out); });
  EXPECT_NE(message.find(shard_name), std::string::npos) << message;
  EXPECT_NE(run_prep("verify '" + options.out + "'", &output), 0) << output;
  EXPECT_NE(output.find(shard_name), std::string::npos) << output;
}

TEST(PrepCli, ArgumentErrorsNameTheFlag) {
  TempDir tmp;
  std::string output;
  EXPECT_NE(run_prep("synthetic --out '" + (tmp.file("x")) + "' --kind tokens --tokens 100", &output), 0);
  EXPECT_NE(output.find("--window"), std::string::npos) << output;
  EXPECT_NE(run_prep("synthetic --out '" + (tmp.file("x")) + "' --kind images --samples 10 --compression 12", &output),
            0);
  EXPECT_NE(output.find("--compression"), std::string::npos) << output;
  EXPECT_NE(run_prep("text --input /nonexistent/file --out '" + (tmp.file("x")) + "' --window 8", &output), 0);
  EXPECT_NE(output.find("--input"), std::string::npos) << output;
  EXPECT_NE(run_prep("synthetic --out '" + (tmp.file("x")) + "' --kind images --samples 0", &output), 0);
  EXPECT_NE(output.find("--samples"), std::string::npos) << output;
  EXPECT_EQ(
      run_prep("synthetic --out '" + (tmp.file("tok")) + "' --kind tokens --tokens 5000 --window 32 --seed 3", &output),
      0)
      << output;
  EXPECT_EQ(run_prep("verify '" + (tmp.file("tok")) + "'", &output), 0) << output;
  EXPECT_FALSE(fs::exists(tmp.file("x")));
}

}  // namespace
}  // namespace flame::prep
