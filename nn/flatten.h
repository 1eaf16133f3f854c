// Flatten: merges a range of dims into one, as PyTorch's nn.Flatten (by default every dim but the
// batch dim: [N, C, H, W] -> [N, C*H*W]).
#pragma once

#include <cstdint>
#include <string>

#include "nn/module.h"

namespace flame::nn {

/// Merges dims start_dim..end_dim (negative counts from the end) of the input into one; a view
/// when the layout allows it (Tensor::flatten). A dim out of range for the input, or start_dim
/// after end_dim, raises flame::Error naming the layer and the input's shape.
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1) : start_dim_(start_dim), end_dim_(end_dim) {}

  Tensor forward(const Tensor& input) override;
  std::string type_name() const override { return "Flatten"; }
  int64_t start_dim() const { return start_dim_; }
  int64_t end_dim() const { return end_dim_; }

 private:
  int64_t start_dim_;
  int64_t end_dim_;
};

}  // namespace flame::nn
