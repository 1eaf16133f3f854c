#include "launch/train/models.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <mutex>

#include "core/error.h"
#include "nn/activation.h"
#include "nn/conv2d.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/pool2d.h"

namespace flame::train {
namespace {

constexpr int64_t kSide = 28;
constexpr int64_t kClasses = 10;

std::shared_ptr<nn::Module> make_mlp() {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(kSide * kSide, 256), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(256, 256), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(256, kClasses)});
}

std::shared_ptr<nn::Module> make_cnn() {
  Conv2dOptions same;
  same.padding = {1, 1};
  Pool2dOptions pool;
  pool.kernel = {2, 2};
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 32, 3, same), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(pool),
      std::make_shared<nn::Conv2d>(32, 64, 3, same), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::MaxPool2d>(pool), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(64 * (kSide / 4) * (kSide / 4), 128), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(128, kClasses)});
}

struct Registry {
  std::mutex mutex;
  std::map<std::string, ModelBuilder> builders{{"mlp", make_mlp}, {"cnn", make_cnn}};
};

Registry& registry() {
  static Registry instance;
  return instance;
}

}  // namespace

void register_model(const std::string& name, ModelBuilder builder) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  FLAME_CHECK(!name.empty() && builder, "register_model: a model needs a non-empty name and a builder");
  FLAME_CHECK(r.builders.emplace(name, std::move(builder)).second,
              "register_model: a model named '{}' is already registered", name);
}

std::shared_ptr<nn::Module> make_model(const std::string& name) {
  ModelBuilder builder;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    const auto it = r.builders.find(name);
    if (it != r.builders.end()) builder = it->second;
  }
  FLAME_CHECK(builder, "model.name: no model named '{}'; registered models: {}", name, fmt::join(model_names(), ", "));
  return builder();
}

std::vector<std::string> model_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& [name, builder] : r.builders) names.push_back(name);
  return names;
}

}  // namespace flame::train
