#include "nn/init.h"

#include <cmath>

namespace flame::nn::init {

Fans compute_fans(const Shape& shape) {
  FLAME_CHECK(shape.size() >= 2, "init: a weight needs at least 2 dims to have fans, got {}", shape_str(shape));
  int64_t receptive = 1;
  for (size_t i = 2; i < shape.size(); ++i) receptive *= shape[i];
  return Fans{shape[1] * receptive, shape[0] * receptive};
}

Tensor uniform(const Shape& shape, double low, double high, TensorOptions options, Generator* gen) {
  FLAME_CHECK(low <= high, "init::uniform: low {} is above high {}", low, high);
  autograd::NoGradGuard no_grad;
  return add(mul(rand(shape, options, gen), high - low), low);
}

Tensor kaiming_uniform_default(const Shape& weight_shape, TensorOptions options, Generator* gen) {
  const Fans fans = compute_fans(weight_shape);
  FLAME_CHECK(fans.fan_in > 0, "init: weight {} has zero fan-in", shape_str(weight_shape));
  const double bound = 1.0 / std::sqrt(static_cast<double>(fans.fan_in));
  return uniform(weight_shape, -bound, bound, options, gen);
}

Tensor bias_uniform_default(int64_t size, int64_t fan_in, TensorOptions options, Generator* gen) {
  FLAME_CHECK(fan_in > 0, "init: bias with zero fan-in");
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return uniform({size}, -bound, bound, options, gen);
}

}  // namespace flame::nn::init
