#include "nn/dropout.h"

namespace flame::nn {

Dropout::Dropout(double p) : p_(p) { FLAME_CHECK(p >= 0.0 && p < 1.0, "Dropout: p must be in [0, 1), got {}", p); }

Tensor Dropout::forward(const Tensor& input) {
  FLAME_CHECK(input.defined(), "Dropout(p={}): the input is undefined", p_);
  FLAME_CHECK(is_floating(input.dtype()), "Dropout(p={}): input {} must be floating point", p_, input.describe());
  if (!is_training() || p_ == 0.0) return input;
  const double keep = 1.0 - p_;
  const Tensor u = rand(input.shape(), TensorOptions(kF32, input.device()));
  const Tensor scaled_mask = mul(lt(u, keep).to(input.dtype()), 1.0 / keep);
  return mul(input, scaled_mask);
}

}  // namespace flame::nn
