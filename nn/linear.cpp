#include "nn/linear.h"

#include <fmt/format.h>

#include "nn/init.h"

namespace flame::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, TensorOptions options)
    : in_features_(in_features), out_features_(out_features) {
  FLAME_CHECK(in_features > 0 && out_features >= 0,
              "Linear: in_features must be positive and out_features non-negative, got in_features={}, "
              "out_features={}",
              in_features, out_features);
  FLAME_CHECK(is_floating(options.dtype), "Linear: parameters must have a floating-point dtype, got {}",
              dtype_name(options.dtype));
  weight_ = register_parameter("weight", init::kaiming_uniform_default({out_features, in_features}, options));
  if (bias) bias_ = register_parameter("bias", init::bias_uniform_default(out_features, in_features, options));
}

std::string Linear::describe() const {
  return fmt::format("Linear(in_features={}, out_features={}, bias={})", in_features_, out_features_, bias_.defined());
}

Tensor Linear::forward(const Tensor& input) {
  FLAME_CHECK(input.defined(), "{}: the input is undefined", describe());
  FLAME_CHECK(input.dim() >= 1 && input.size(-1) == in_features_,
              "{}: input {} must have {} features in its last dim (shape [..., {}]) for weight {}", describe(),
              input.describe(), in_features_, in_features_, shape_str(weight_.shape()));
  FLAME_CHECK(input.dtype() == weight_.dtype(),
              "{}: input {} is {} but the weight is {}; convert the input with to() or the layer with "
              "Module::to()",
              describe(), input.describe(), dtype_name(input.dtype()), dtype_name(weight_.dtype()));
  FLAME_CHECK(input.device() == weight_.device(),
              "{}: input {} is on {} but the weight is on {}; move one of them with to()", describe(), input.describe(),
              input.device().str(), weight_.device().str());
  // One GEMM over all leading dims: [rows, in] @ [in, out].
  Shape out_shape(input.shape().begin(), input.shape().end() - 1);
  out_shape.push_back(out_features_);
  const Tensor rows = input.dim() == 2 ? input : input.reshape({-1, in_features_});
  Tensor out = matmul(rows, weight_.t());
  if (bias_.defined()) out = add(out, bias_);
  return input.dim() == 2 ? out : out.reshape(out_shape);
}

}  // namespace flame::nn
