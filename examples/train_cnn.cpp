// train_cnn: trains a small CNN (Conv(1,4,3,p1) - ReLU - MaxPool2 - Conv(4,8,3,p1) - ReLU - MaxPool2
// - Flatten - Linear(128,4)) with AdamW to classify synthetic 16x16 images: noise plus a bright
// 4x4 square in the quadrant of the image's class. Checks that the loss falls.
//
//   train_cnn [--device cpu|cuda[:N]] [--steps N]
// Exit status: examples/train_common.h (0 learned, 1 did not, 2 error, 77 no such GPU).
#include <memory>
#include <vector>

#include "nn/activation.h"
#include "nn/conv2d.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/pool2d.h"
#include "train_common.h"

namespace {

constexpr int64_t kSamples = 512;
constexpr int64_t kSide = 16;  // images are [1, kSide, kSide]
constexpr int64_t kClasses = 4;
constexpr int64_t kSquare = 4;
constexpr double kBrightness = 1.0;
constexpr double kNoise = 0.5;

/// [kClasses, 1, kSide, kSide]: class c has a kSquare x kSquare square of kBrightness in quadrant c
/// (row-major: top-left, top-right, bottom-left, bottom-right), 2 pixels in from its corner.
flame::Tensor class_patterns() {
  std::vector<float> pixels(kClasses * kSide * kSide, 0.0f);
  for (int64_t c = 0; c < kClasses; ++c) {
    const int64_t top = 2 + (c / 2) * kSide / 2, left = 2 + (c % 2) * kSide / 2;
    for (int64_t r = top; r < top + kSquare; ++r)
      for (int64_t q = left; q < left + kSquare; ++q) pixels[(c * kSide + r) * kSide + q] = kBrightness;
  }
  return flame::from_vector(pixels, {kClasses, 1, kSide, kSide}, flame::kF32);
}

}  // namespace

int main(int argc, char** argv) try {
  using namespace flame;
  const char* program = "train_cnn";
  examples::TrainConfig defaults;
  defaults.steps = 40;
  defaults.batch_size = 32;
  defaults.lr = 1e-2;
  defaults.log_every = 5;
  const examples::TrainConfig config = examples::parse_train_args(argc, argv, program, defaults);
  if (!examples::device_present(config.device, program)) return examples::kExitNoDevice;

  // The data and the initial weights are each drawn after their own manual_seed, so they are the
  // same on every device (Philox draws match across devices; the layers initialise on the CPU).
  manual_seed(2024);
  const Tensor labels = randint(0, kClasses, {kSamples}, TensorOptions(kI64, config.device));  // [N]
  const Tensor x = index_select(class_patterns().to(config.device), 0, labels) +
                   randn({kSamples, 1, kSide, kSide}, TensorOptions(kF32, config.device)) * kNoise;  // [N, 1, 16, 16]

  Conv2dOptions same;
  same.padding = {1, 1};
  Pool2dOptions pool;
  pool.kernel = {2, 2};
  manual_seed(2025);
  nn::Sequential model(
      {std::make_shared<nn::Conv2d>(1, 4, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
       std::make_shared<nn::Conv2d>(4, 8, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
       std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(8 * (kSide / 4) * (kSide / 4), kClasses)});
  model.to(config.device);
  return examples::train_classifier(program, model, x, labels, kClasses, config);
} catch (const std::exception& e) {
  spdlog::error("{}", e.what());
  return flame::examples::kExitError;
}
