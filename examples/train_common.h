// What the example training programs share: their command line, the device check, and a
// classifier training loop (AdamW on mini-batches, cross-entropy) that decides whether the model
// learned. Header-only, so each example stays one small program.
//
// Exit status of every example: 0 the loss fell below half its initial value and the accuracy is
// above chance by kAccuracyMargin; 1 it did not; 2 an error (bad argument, flame::Error); 77 a CUDA
// device was requested but is absent (CTest's skip code).
#pragma once

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "core/autograd.h"
#include "core/cuda_device.h"
#include "core/ops.h"
#include "nn/loss.h"
#include "nn/module.h"
#include "nn/optim/adam.h"

namespace flame::examples {

constexpr int kExitConverged = 0;
constexpr int kExitNotConverged = 1;
constexpr int kExitError = 2;
constexpr int kExitNoDevice = 77;
/// The final accuracy must exceed 1 / classes by this much.
constexpr double kAccuracyMargin = 0.3;

struct TrainConfig {
  Device device = kCPU;
  int steps = 100;
  int64_t batch_size = 32;
  double lr = 1e-2;
  int log_every = 10;
};

/// Parses `--device cpu|cuda[:N]` (default: cuda:0 when a GPU is present, else cpu) and
/// `--steps N` over `defaults`. Raises flame::Error for anything else.
inline TrainConfig parse_train_args(int argc, char** argv, std::string_view program, TrainConfig defaults) {
  TrainConfig config = defaults;
  config.device = cuda::is_available() ? cuda_device(0) : kCPU;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    FLAME_CHECK(i + 1 < argc, "{}: {} needs a value", program, arg);
    const std::string value = argv[++i];
    if (arg == "--device") {
      config.device = Device::parse(value);
    } else if (arg == "--steps") {
      size_t used = 0;
      try {
        config.steps = std::stoi(value, &used);
      } catch (const std::logic_error&) {  // not a number, or out of int's range
        used = 0;
      }
      FLAME_CHECK(used > 0 && used == value.size() && config.steps > 0,
                  "{}: --steps must be a positive integer, got '{}'", program, value);
    } else {
      FLAME_FAIL("{}: unknown argument '{}'; expected --device cpu|cuda[:N] or --steps N", program, arg);
    }
  }
  return config;
}

/// False (with a warning) when `device` is a CUDA device this machine does not have.
inline bool device_present(Device device, std::string_view program) {
  if (!device.is_cuda() || device.index < cuda::device_count()) return true;
  spdlog::warn("{}: {} requested but this machine has {} CUDA devices", program, device.str(), cuda::device_count());
  return false;
}

/// Mean cross-entropy and accuracy of `model` on all of x [N, ...] / y [N], without a graph.
inline std::pair<double, double> evaluate(nn::Module& model, const Tensor& x, const Tensor& y) {
  autograd::NoGradGuard no_grad;
  model.eval();
  const Tensor logits = model(x);
  const double loss = nn::cross_entropy(logits, y).item();
  const double accuracy = nn::accuracy(logits, y);
  model.train();
  return {loss, accuracy};
}

/// Trains `model` (already on config.device) to classify x [N, ...] into y [N] (i64, `classes`
/// classes) with AdamW(lr) for config.steps steps, batch k taking rows [k B, (k+1) B) modulo N.
/// Logs the batch loss every config.log_every steps; returns an exit status (see above) from the
/// loss and accuracy on all of x before and after training.
inline int train_classifier(std::string_view program, nn::Module& model, const Tensor& x, const Tensor& y,
                            int64_t classes, const TrainConfig& config) {
  const int64_t samples = x.size(0);
  const int64_t batches = std::max<int64_t>(1, samples / config.batch_size);
  const int64_t batch_size = std::min(config.batch_size, samples);
  optim::AdamWOptions options;
  options.lr = config.lr;
  optim::AdamW optimizer(model.parameters(), options);

  int64_t parameter_count = 0;
  for (const Tensor& p : model.parameters()) parameter_count += p.numel();
  const auto [first_loss, first_accuracy] = evaluate(model, x, y);
  spdlog::info("{} on {}: {} samples, {} classes, {} parameters; initial loss {:.4f}, accuracy {:.3f}", program,
               config.device.str(), samples, classes, parameter_count, first_loss, first_accuracy);
  for (int step = 0; step < config.steps; ++step) {
    const int64_t start = (step % batches) * batch_size;
    optimizer.zero_grad();
    const Tensor loss = nn::cross_entropy(model(x.narrow(0, start, batch_size)), y.narrow(0, start, batch_size));
    loss.backward();
    optimizer.step();
    if (step % config.log_every == 0 || step == config.steps - 1)
      spdlog::info("step {:4d}  batch loss {:.4f}", step, loss.item());
  }
  const auto [loss, accuracy] = evaluate(model, x, y);
  const double chance = 1.0 / static_cast<double>(classes);
  spdlog::info("{} on {}: loss {:.4f} -> {:.4f}, accuracy {:.3f} (chance {:.3f})", program, config.device.str(),
               first_loss, loss, accuracy, chance);
  if (!(loss < 0.5 * first_loss && accuracy > chance + kAccuracyMargin)) {
    spdlog::error("{}: training did not converge (needs loss < {:.4f} and accuracy > {:.3f})", program,
                  0.5 * first_loss, chance + kAccuracyMargin);
    return kExitNotConverged;
  }
  return kExitConverged;
}

}  // namespace flame::examples
