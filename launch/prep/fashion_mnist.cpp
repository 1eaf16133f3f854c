#include "launch/prep/fashion_mnist.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace flame::prep {
namespace {

constexpr int64_t kImageSide = 28;
constexpr int64_t kClasses = 10;
constexpr int64_t kChunkSamples = 4096;  // samples converted per append (bounded memory)

gzFile gz(void* file) { return static_cast<gzFile>(file); }

std::string gz_error(void* file) {
  int code = 0;
  const char* message = gzerror(gz(file), &code);
  return code == Z_OK ? std::string("unexpected end of file") : std::string(message);
}

}  // namespace

IdxReader::IdxReader(std::string path, int expected_ndim) : path_(std::move(path)) {
  FLAME_CHECK(std::filesystem::is_regular_file(path_), "idx: '{}' does not exist or is not a file", path_);
  file_ = gzopen(path_.c_str(), "rb");
  FLAME_CHECK(file_ != nullptr, "idx: cannot open '{}'", path_);
  uint8_t magic[4];
  if (gzread(gz(file_), magic, 4) != 4) {
    const std::string reason = gz_error(file_);
    gzclose(gz(file_));
    FLAME_FAIL("idx: '{}' is too short for an idx header ({})", path_, reason);
  }
  const bool ok = magic[0] == 0 && magic[1] == 0 && magic[2] == 0x08 && magic[3] == expected_ndim;
  if (!ok) {
    gzclose(gz(file_));
    FLAME_FAIL("idx: '{}' has magic number {:02x}{:02x}{:02x}{:02x}; expected 000008{:02x} (u8 data, {} dims)", path_,
               magic[0], magic[1], magic[2], magic[3], expected_ndim, expected_ndim);
  }
  for (int d = 0; d < expected_ndim; ++d) {
    uint8_t be[4];
    if (gzread(gz(file_), be, 4) != 4) {
      const std::string reason = gz_error(file_);
      gzclose(gz(file_));
      FLAME_FAIL("idx: '{}' ends inside its header ({})", path_, reason);
    }
    dims_.push_back((int64_t{be[0]} << 24) | (int64_t{be[1]} << 16) | (int64_t{be[2]} << 8) | int64_t{be[3]});
  }
}

IdxReader::~IdxReader() {
  if (file_ != nullptr) gzclose(gz(file_));
}

int64_t IdxReader::item_bytes() const {
  int64_t bytes = 1;
  for (size_t d = 1; d < dims_.size(); ++d) bytes *= dims_[d];
  return bytes;
}

void IdxReader::read(int64_t items, uint8_t* out) {
  FLAME_CHECK(items_read_ + items <= dims_[0], "idx: reading items {}..{} of '{}', which holds {}", items_read_,
              items_read_ + items, path_, dims_[0]);
  int64_t remaining = items * item_bytes();
  while (remaining > 0) {
    const unsigned step = static_cast<unsigned>(std::min<int64_t>(remaining, 1 << 30));
    const int got = gzread(gz(file_), out, step);
    FLAME_CHECK(got > 0, "idx: '{}' is truncated or corrupt at item {} of {} ({})", path_, items_read_, dims_[0],
                gz_error(file_));
    out += got;
    remaining -= got;
  }
  items_read_ += items;
}

void IdxReader::expect_end() {
  FLAME_CHECK(items_read_ == dims_[0], "idx: '{}': read {} of {} items", path_, items_read_, dims_[0]);
  uint8_t extra;
  const int got = gzread(gz(file_), &extra, 1);
  FLAME_CHECK(got == 0, "idx: '{}' has data after its {} items ({})", path_, dims_[0],
              got < 0 ? gz_error(file_) : std::string("trailing bytes"));
}

std::vector<FashionMnistSplit> fashion_mnist_splits() {
  return {{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000, "train"},
          {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000, "test"}};
}

data::Manifest convert_fashion_mnist_split(const FashionMnistOptions& options, const FashionMnistSplit& split) {
  const std::filesystem::path source(options.source);
  IdxReader images((source / split.images_file).string(), 3);
  IdxReader labels((source / split.labels_file).string(), 1);
  const int64_t n = images.dims()[0];
  FLAME_CHECK(n == split.expected_samples, "fashion-mnist: '{}' holds {} images; the {} split has {}", images.path(), n,
              split.name, split.expected_samples);
  FLAME_CHECK(images.dims()[1] == kImageSide && images.dims()[2] == kImageSide,
              "fashion-mnist: '{}' holds {}x{} images; expected 28x28", images.path(), images.dims()[1],
              images.dims()[2]);
  FLAME_CHECK(labels.dims()[0] == n, "fashion-mnist: '{}' holds {} labels but '{}' holds {} images", labels.path(),
              labels.dims()[0], images.path(), n);

  const std::vector<data::FieldSpec> fields = {{"image", kU8, {1, kImageSide, kImageSide}}, {"label", kI64, {}}};
  data::ShardWriter writer((std::filesystem::path(options.out) / split.name).string(), fields, options.shard_samples,
                           options.compression);
  std::vector<uint8_t> label_bytes(kChunkSamples);
  for (int64_t start = 0; start < n; start += kChunkSamples) {
    const int64_t count = std::min(kChunkSamples, n - start);
    Tensor image = Tensor::empty({count, 1, kImageSide, kImageSide}, kU8);
    Tensor label = Tensor::empty({count}, kI64);
    images.read(count, image.data<uint8_t>());
    labels.read(count, label_bytes.data());
    int64_t* label_out = label.data<int64_t>();
    for (int64_t i = 0; i < count; ++i) {
      FLAME_CHECK(label_bytes[i] < kClasses, "fashion-mnist: '{}': label {} of item {} is not in 0..9", labels.path(),
                  int{label_bytes[i]}, start + i);
      label_out[i] = label_bytes[i];
    }
    writer.append({image, label});
  }
  images.expect_end();
  labels.expect_end();
  return writer.finish();
}

std::vector<data::Manifest> convert_fashion_mnist(const FashionMnistOptions& options) {
  std::vector<data::Manifest> manifests;
  for (const FashionMnistSplit& split : fashion_mnist_splits())
    manifests.push_back(convert_fashion_mnist_split(options, split));
  return manifests;
}

}  // namespace flame::prep
