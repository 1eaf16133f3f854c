// Fashion-MNIST (idx files, gzip-compressed, as Debian's dataset-fashion-mnist installs them) into
// sharded datasets: fields "image" u8 [1, 28, 28] and "label" i64 [].
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "datasets/dataset.h"

namespace flame::prep {

/// A gzip-compressed idx file of unsigned bytes (magic 0x00000800 | ndim), read in order.
/// Every error names the file.
class IdxReader {
 public:
  /// Opens `path` and checks the magic number: type byte 0x08 (u8) and `expected_ndim` dimensions.
  IdxReader(std::string path, int expected_ndim);
  ~IdxReader();
  IdxReader(const IdxReader&) = delete;
  IdxReader& operator=(const IdxReader&) = delete;

  const std::string& path() const { return path_; }
  /// The dimensions from the header, e.g. {10000, 28, 28}.
  const std::vector<int64_t>& dims() const { return dims_; }
  /// Bytes per item (product of dims after the first).
  int64_t item_bytes() const;
  /// Reads the next `items` items into `out` (items * item_bytes() bytes); raises if the file ends.
  void read(int64_t items, uint8_t* out);
  /// Raises unless every item was read and no data follows.
  void expect_end();

 private:
  std::string path_;
  void* file_ = nullptr;  // gzFile
  std::vector<int64_t> dims_;
  int64_t items_read_ = 0;
};

/// One split: images file, labels file, the sample count Fashion-MNIST defines for it and the
/// output subdirectory name.
struct FashionMnistSplit {
  std::string images_file;  // e.g. "t10k-images-idx3-ubyte.gz"
  std::string labels_file;
  int64_t expected_samples = 0;
  std::string name;  // "train" or "test"
};

/// The two splits of Fashion-MNIST: train (60000) and test (10000).
std::vector<FashionMnistSplit> fashion_mnist_splits();

struct FashionMnistOptions {
  std::string source;  // directory holding the four *-idx?-ubyte.gz files
  std::string out;     // the datasets go to out/<split name>
  int64_t shard_samples = 10000;
  int compression = 0;  // 0 (none) to 9 (gzip level)
};

/// Converts one split to `options.out`/<split.name>: checks the idx magic numbers, the 28x28
/// image shape, that both files hold `split.expected_samples` items and that labels are 0..9.
data::Manifest convert_fashion_mnist_split(const FashionMnistOptions& options, const FashionMnistSplit& split);

/// Converts both splits; returns their manifests (train, test).
std::vector<data::Manifest> convert_fashion_mnist(const FashionMnistOptions& options);

}  // namespace flame::prep
