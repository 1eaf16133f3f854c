// train_mlp: trains Linear(20,32) - ReLU - Linear(32,10) with AdamW to classify synthetic Gaussian
// blobs (class c: a random centre plus unit noise), and checks that the loss falls.
//
//   train_mlp [--device cpu|cuda[:N]] [--steps N]
// Exit status: examples/train_common.h (0 learned, 1 did not, 2 error, 77 no such GPU).
#include <memory>
#include <vector>

#include "nn/activation.h"
#include "nn/linear.h"
#include "train_common.h"

namespace {

constexpr int64_t kSamples = 2048;
constexpr int64_t kFeatures = 20;
constexpr int64_t kHidden = 32;
constexpr int64_t kClasses = 10;
/// Scale of the class centres relative to the unit noise: small enough that the classes overlap a little.
constexpr double kCentreScale = 0.6;

}  // namespace

int main(int argc, char** argv) try {
  using namespace flame;
  const char* program = "train_mlp";
  examples::TrainConfig defaults;
  defaults.steps = 150;
  defaults.batch_size = 64;
  defaults.lr = 1e-2;
  defaults.log_every = 25;
  const examples::TrainConfig config = examples::parse_train_args(argc, argv, program, defaults);
  if (!examples::device_present(config.device, program)) return examples::kExitNoDevice;

  // The data and the initial weights are each drawn after their own manual_seed, so they are the
  // same on every device (Philox draws match across devices; the layers initialise on the CPU).
  manual_seed(2024);
  const TensorOptions f32(kF32, config.device);
  const Tensor centres = randn({kClasses, kFeatures}, f32) * kCentreScale;                     // [C, F]
  const Tensor labels = randint(0, kClasses, {kSamples}, TensorOptions(kI64, config.device));  // [N]
  const Tensor x = index_select(centres, 0, labels) + randn({kSamples, kFeatures}, f32);       // [N, F]

  manual_seed(2025);
  nn::Sequential model({std::make_shared<nn::Linear>(kFeatures, kHidden), std::make_shared<nn::ReLU>(),
                        std::make_shared<nn::Linear>(kHidden, kClasses)});
  model.to(config.device);
  return examples::train_classifier(program, model, x, labels, kClasses, config);
} catch (const std::exception& e) {
  spdlog::error("{}", e.what());
  return flame::examples::kExitError;
}
