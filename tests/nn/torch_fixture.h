// Runs FLAME's MLP and CNN against the PyTorch fixtures tests/fixtures/{mlp,cnn}.safetensors
// (written by tests/fixtures/make_torch_fixtures.py, which documents their contents): forward,
// cross-entropy, backward, and 5 AdamW / 5 SGD-momentum steps, on a chosen dtype and device.
// Shared by the CPU suite (torch_fixture_test.cpp) and the CUDA suite (cuda/cuda_torch_fixture_test.cpp).
//
// The fixture folder is tests/fixtures, found from this header's own path (__FILE__), or
// $FLAME_FIXTURE_DIR when set.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "nn/activation.h"
#include "nn/conv2d.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/optim/adam.h"
#include "nn/optim/sgd.h"
#include "nn/pool2d.h"
#include "nn/safetensors.h"
#include "support/test_support.h"

namespace flame::test {

/// tests/fixtures (this header lives in tests/nn/), or $FLAME_FIXTURE_DIR.
inline std::filesystem::path fixture_dir() {
  if (const char* dir = std::getenv("FLAME_FIXTURE_DIR"); dir != nullptr && *dir != '\0') return dir;
  return std::filesystem::path(__FILE__).parent_path() / ".." / "fixtures";
}

/// The tensors of one fixture file by name, on the CPU.
class TorchFixture {
 public:
  explicit TorchFixture(const std::string& file) : path_((fixture_dir() / file).string()) {
    FLAME_CHECK(std::filesystem::exists(path_),
                "PyTorch fixture {} not found: it is committed in tests/fixtures (set $FLAME_FIXTURE_DIR to that "
                "folder when the sources are not where this test was built from)",
                path_);
    for (auto& [name, tensor] : nn::load_safetensors(path_)) tensors_.emplace(name, tensor);
  }
  const Tensor& at(const std::string& name) const {
    const auto it = tensors_.find(name);
    FLAME_CHECK(it != tensors_.end(), "fixture {} has no tensor '{}'", path_, name);
    return it->second;
  }
  /// The tensors named "<prefix><rest>", renamed "<rest>", in name order.
  nn::NamedTensors with_prefix(const std::string& prefix) const {
    nn::NamedTensors out;
    for (const auto& [name, tensor] : tensors_)
      if (name.starts_with(prefix)) out.emplace_back(name.substr(prefix.size()), tensor);
    return out;
  }

 private:
  std::string path_;
  std::map<std::string, Tensor> tensors_;
};

/// Linear(20,32) - ReLU - Linear(32,10): PyTorch's Sequential indices, so names are "0.weight", ...
inline std::shared_ptr<nn::Sequential> fixture_mlp() {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(20, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 10)});
}

/// Conv(1,4,3,p1) - ReLU - MaxPool2 - Conv(4,8,3,p1) - ReLU - MaxPool2 - Flatten - Linear(392,10).
inline std::shared_ptr<nn::Sequential> fixture_cnn() {
  Conv2dOptions same;
  same.padding = {1, 1};
  Pool2dOptions pool;
  pool.kernel = {2, 2};
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 4, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
      std::make_shared<nn::Conv2d>(4, 8, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
      std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(8 * 7 * 7, 10)});
}

/// One fixture model: its file and how to build it.
struct FixtureModel {
  std::string file;
  std::function<std::shared_ptr<nn::Sequential>()> make;
};
/// gtest prints a model by its file name.
inline void PrintTo(const FixtureModel& model, std::ostream* os) { *os << model.file; }
inline const std::vector<FixtureModel>& fixture_models() {
  static const std::vector<FixtureModel> models{{"mlp.safetensors", fixture_mlp}, {"cnn.safetensors", fixture_cnn}};
  return models;
}

/// ||actual - expected|| / ||expected|| (Frobenius, in double on the host); ||actual - expected||
/// when expected is all zeros. Fails the test (and returns infinity) when the shapes differ.
inline double relative_error(const Tensor& actual, const Tensor& expected) {
  EXPECT_TRUE(actual.defined()) << "no value to compare with " << expected.describe();
  if (!actual.defined()) return INFINITY;
  EXPECT_EQ(actual.shape(), expected.shape());
  if (actual.shape() != expected.shape()) return INFINITY;
  const std::vector<double> a = host_values(actual), b = host_values(expected);
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

/// Collects per-tensor relative errors, checks each against a bound and prints them all.
class ErrorReport {
 public:
  ErrorReport(std::string title, double bound) : title_(std::move(title)), bound_(bound) {}
  ~ErrorReport() { std::printf("[fixture] %s: max relative error %.3g (bound %.0e)\n", title_.c_str(), max_, bound_); }
  void check(const std::string& name, const Tensor& actual, const Tensor& expected) {
    const double error = relative_error(actual, expected);
    std::printf("[fixture]   %-16s %.3g\n", name.c_str(), error);
    EXPECT_LE(error, bound_) << title_ << ": " << name;
    if (!(error <= max_)) max_ = error;
  }

 private:
  std::string title_;
  double bound_;
  double max_ = 0;
};

/// The fixture's model with its initial parameters ("param.*"), converted to dtype, on device.
inline std::shared_ptr<nn::Sequential> load_fixture_model(const FixtureModel& model, const TorchFixture& fixture,
                                                          DType dtype, Device device) {
  auto net = model.make();
  net->load_state_dict(fixture.with_prefix("param."));
  net->to(dtype);
  net->to(device);
  return net;
}

/// Forward, cross-entropy and backward on the fixture's batch in dtype on device; compares the
/// logits, the loss, every parameter's gradient and the input's gradient with PyTorch's.
inline void check_forward_backward(const FixtureModel& model, DType dtype, Device device, double bound) {
  const TorchFixture fixture(model.file);
  auto net = load_fixture_model(model, fixture, dtype, device);
  Tensor x = fixture.at("input").to(dtype).to(device);
  x.requires_grad_();
  const Tensor logits = (*net)(x);
  const Tensor loss = nn::cross_entropy(logits, fixture.at("target").to(device));
  loss.backward();

  ErrorReport report(fmt::format("{} forward/backward, {} on {}", model.file, dtype_name(dtype), device.str()), bound);
  report.check("output", logits, fixture.at("output"));
  report.check("loss", loss, fixture.at("loss"));
  for (const auto& [name, param] : net->named_parameters()) {
    EXPECT_EQ(param.device(), device) << name;
    report.check("grad." + name, param.grad(), fixture.at("grad." + name));
  }
  report.check("grad.input", x.grad(), fixture.at("grad.input"));
}

/// Five optimizer steps (zero_grad, forward, cross-entropy, backward, step) on the fixture's batch;
/// compares the parameters with PyTorch's "<prefix><name>".
inline void check_five_steps(const FixtureModel& model, DType dtype, Device device, double bound,
                             const std::string& prefix,
                             const std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>& make_opt) {
  const TorchFixture fixture(model.file);
  auto net = load_fixture_model(model, fixture, dtype, device);
  const Tensor x = fixture.at("input").to(dtype).to(device);
  const Tensor target = fixture.at("target").to(device);
  auto opt = make_opt(net->parameters());
  for (int step = 0; step < 5; ++step) {
    opt->zero_grad();
    nn::cross_entropy((*net)(x), target).backward();
    opt->step();
  }
  ErrorReport report(fmt::format("{} {}5, {} on {}", model.file, opt->type_name(), dtype_name(dtype), device.str()),
                     bound);
  for (const auto& [name, param] : net->named_parameters())
    report.check(prefix + name, param, fixture.at(prefix + name));
}

/// torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2), as in the fixture.
inline void check_adamw_steps(const FixtureModel& model, DType dtype, Device device, double bound) {
  check_five_steps(model, dtype, device, bound, "adamw5.", [](std::vector<Tensor> params) {
    return std::make_unique<optim::AdamW>(std::move(params), optim::AdamWOptions{1e-3, {0.9, 0.999}, 1e-8, 1e-2});
  });
}

/// torch.optim.SGD(lr=0.1, momentum=0.9), as in the fixture.
inline void check_sgd_steps(const FixtureModel& model, DType dtype, Device device, double bound) {
  check_five_steps(model, dtype, device, bound, "sgd5.", [](std::vector<Tensor> params) {
    optim::SGDOptions options;
    options.lr = 0.1;
    options.momentum = 0.9;
    return std::make_unique<optim::SGD>(std::move(params), options);
  });
}

}  // namespace flame::test
