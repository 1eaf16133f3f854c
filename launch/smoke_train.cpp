// flame-smoke: trains a softmax classifier on synthetic Gaussian blobs with full-batch gradient
// descent, the gradient written out by hand (the autograd engine is a later layer), and checks that
// the loss falls and the classes are learned. Exits 1 otherwise.
//
//   flame-smoke [--device cpu|cuda[:N]] [--steps N]
// Exit status: 0 converged, 1 did not converge, 2 error, 77 the requested GPU is absent.
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <string>
#include <string_view>

#include "core/cuda_device.h"
#include "core/ops.h"

namespace {

struct SmokeConfig {
  flame::Device device = flame::kCPU;
  int steps = 200;
  int64_t samples = 4096, features = 16, classes = 8;
  double learning_rate = 0.5;
};

SmokeConfig parse_args(int argc, char** argv) {
  SmokeConfig config;
  if (flame::cuda::is_available()) config.device = flame::cuda_device(0);
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    FLAME_CHECK(i + 1 < argc, "flame-smoke: {} needs a value", arg);
    if (arg == "--device") config.device = flame::Device::parse(argv[++i]);
    else if (arg == "--steps") config.steps = std::stoi(argv[++i]);
    else FLAME_FAIL("flame-smoke: unknown argument '{}'; expected --device or --steps", arg);
  }
  return config;
}

/// Cross-entropy of logits [N, C] against integer labels [N, 1]; also returns softmax - onehot.
std::pair<double, flame::Tensor> loss_and_logit_grad(const flame::Tensor& logits, const flame::Tensor& labels) {
  const flame::Tensor log_probs = flame::log_softmax(logits, 1);
  const double loss = -flame::mean(flame::gather(log_probs, 1, labels)).item();
  flame::Tensor grad = flame::exp(log_probs);
  flame::scatter_add_(grad, 1, labels, flame::full(labels.shape(), -1.0, {logits.dtype(), logits.device()}));
  return {loss, grad / static_cast<double>(logits.size(0))};
}

}  // namespace

/// Exit status for "asked for a GPU, none here" (CTest's skip code).
constexpr int kExitNoDevice = 77;

int main(int argc, char** argv) try {
  const SmokeConfig config = parse_args(argc, argv);
  if (config.device.is_cuda() && config.device.index >= flame::cuda::device_count()) {
    spdlog::warn("flame-smoke: {} requested but this machine has {} CUDA devices", config.device.str(),
                 flame::cuda::device_count());
    return kExitNoDevice;
  }
  const flame::TensorOptions opts(flame::kF32, config.device);
  flame::manual_seed(1234);

  // Blobs: class c is centred on a random point; samples are centre + unit noise.
  const flame::Tensor centres = flame::randn({config.classes, config.features}, opts) * 0.8;
  const flame::Tensor labels = flame::randint(0, config.classes, {config.samples, 1}, {flame::kI64, config.device});
  const flame::Tensor x = flame::index_select(centres, 0, labels.reshape({config.samples})) +
                          flame::randn({config.samples, config.features}, opts);

  flame::Tensor weight = flame::zeros({config.features, config.classes}, opts);
  flame::Tensor bias = flame::zeros({config.classes}, opts);
  double first_loss = 0, loss = 0;
  for (int step = 0; step < config.steps; ++step) {
    const flame::Tensor logits = flame::matmul(x, weight) + bias;
    auto [step_loss, grad_logits] = loss_and_logit_grad(logits, labels);
    loss = step_loss;
    if (step == 0) first_loss = loss;
    weight.sub_(flame::matmul(x.t(), grad_logits) * config.learning_rate);
    bias.sub_(flame::sum(grad_logits, {0}) * config.learning_rate);
    if (step % 50 == 0 || step == config.steps - 1) spdlog::info("step {:4d}  loss {:.4f}", step, loss);
  }
  const flame::Tensor predicted = flame::argmax(flame::matmul(x, weight) + bias, 1, true);
  const double accuracy = flame::mean(flame::eq(predicted, labels).to(flame::kF32)).item();
  spdlog::info("device {}  first loss {:.4f}  final loss {:.4f}  accuracy {:.3f}", config.device.str(),
               first_loss, loss, accuracy);
  if (!(loss < 0.5 * first_loss && accuracy > 0.8)) {
    spdlog::error("flame-smoke: training did not converge");
    return 1;
  }
  return 0;
} catch (const flame::Error& e) {
  spdlog::error("{}", e.what());
  return 2;
}
