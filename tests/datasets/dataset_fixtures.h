// Helpers shared by the dataset format tests (with test::TempDir from support/test_support.h): small datasets
// written with ShardWriter whose every value is a closed-form function of its position, and error
// message assertions.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <string>

#include "datasets/dataset.h"
#include "support/test_support.h"

namespace flame::test {

/// Pixel j (of 784) of image i: a pattern that differs between neighbouring images.
inline uint8_t image_pixel(int64_t i, int64_t j) { return static_cast<uint8_t>((i * 31 + j * 7 + (i * j) % 13) % 251); }
/// Label of image i (i64, distinct per image so a misplaced sample is caught).
inline int64_t image_label(int64_t i) { return 1000 + 3 * i; }

/// Writes `n` images u8 [1, 28, 28] ("image") and labels i64 [] ("label") in shards of
/// `shard_samples`, appending in batches of `batch` samples. Returns the manifest.
inline data::Manifest write_images(const std::string& dir, int64_t n, int64_t shard_samples, int compression = 0,
                                   int64_t batch = 50) {
  data::ShardWriter writer(dir, {{"image", DType::U8, {1, 28, 28}}, {"label", DType::I64, {}}}, shard_samples,
                           compression);
  for (int64_t start = 0; start < n; start += batch) {
    int64_t count = std::min(batch, n - start);
    Tensor images = Tensor::empty({count, 1, 28, 28}, DType::U8);
    Tensor labels = Tensor::empty({count}, DType::I64);
    for (int64_t i = 0; i < count; ++i) {
      for (int64_t j = 0; j < 784; ++j) images.data<uint8_t>()[i * 784 + j] = image_pixel(start + i, j);
      labels.data<int64_t>()[i] = image_label(start + i);
    }
    writer.append({images, labels});
  }
  return writer.finish();
}

/// Checks that row `row` of the tensors read from an images dataset holds global sample `index`.
inline void expect_image_sample(const std::vector<Tensor>& read, int64_t row, int64_t index) {
  const uint8_t* pixels = read[0].data<uint8_t>() + row * 784;
  int64_t wrong = 0;
  for (int64_t j = 0; j < 784; ++j) wrong += pixels[j] != image_pixel(index, j);
  EXPECT_EQ(wrong, 0) << "row " << row << " should hold sample " << index;
  EXPECT_EQ(read[1].data<int64_t>()[row], image_label(index)) << "row " << row;
}

/// The message of the flame::Error that `body` throws ("" and a test failure if none).
template <class Body>
std::string error_of(Body&& body) {
  try {
    body();
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected a flame::Error";
  return "";
}

/// Expects every fragment in `message`.
inline void expect_mentions(const std::string& message, std::initializer_list<std::string> fragments) {
  for (const std::string& fragment : fragments)
    EXPECT_NE(message.find(fragment), std::string::npos) << "missing '" << fragment << "' in: " << message;
}

}  // namespace flame::test
