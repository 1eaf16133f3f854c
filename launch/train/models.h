// flame-train's model registry: models are built by name (the config's model.name). A model
// registers a builder once; flame-train and the tests look it up with make_model().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace flame::train {

/// Builds a freshly initialised model (from the default generator, so manual_seed makes it
/// reproducible) taking f32 input batches and returning logits [batch, classes].
using ModelBuilder = std::function<std::shared_ptr<nn::Module>()>;

/// Adds `name` to the registry; raises flame::Error if it is taken.
void register_model(const std::string& name, ModelBuilder builder);
/// Builds the model registered as `name`; raises flame::Error naming the registered models when
/// there is none.
std::shared_ptr<nn::Module> make_model(const std::string& name);
/// The registered names, sorted. Built in: "mlp" and "cnn", for 1x28x28 images and 10 classes
/// (Fashion-MNIST):
///   mlp: Flatten - Linear(784, 256) - ReLU - Linear(256, 256) - ReLU - Linear(256, 10)
///   cnn: Conv2d(1, 32, 3, pad 1) - ReLU - MaxPool 2 - Conv2d(32, 64, 3, pad 1) - ReLU - MaxPool 2 -
///        Flatten - Linear(3136, 128) - ReLU - Linear(128, 10)
std::vector<std::string> model_names();

}  // namespace flame::train
