#include "nn/loss.h"

#include <vector>

#include "core/autograd.h"
#include "core/fused.h"

namespace flame::nn {
namespace {

/// logits [N, C] floating, target [N] i64, one device: what cross_entropy and accuracy accept.
void check_classification(const char* op, const Tensor& logits, const Tensor& target) {
  FLAME_CHECK(logits.defined() && target.defined(), "{}: logits and target must be defined", op);
  FLAME_CHECK(logits.dim() == 2, "{}: logits {} must be 2-D [N, C] (batch, classes)", op, logits.describe());
  FLAME_CHECK(is_floating(logits.dtype()), "{}: logits {} must be floating point", op, logits.describe());
  FLAME_CHECK(target.dtype() == kI64, "{}: target {} must hold class indices as i64", op, target.describe());
  FLAME_CHECK(target.dim() == 1 && target.size(0) == logits.size(0),
              "{}: target {} must be 1-D with one class index per row of logits {} (shape [{}])", op, target.describe(),
              logits.describe(), logits.size(0));
  FLAME_CHECK(target.device() == logits.device(), "{}: target {} is on {} but logits {} are on {}", op,
              target.describe(), target.device().str(), logits.describe(), logits.device().str());
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& options) {
  check_classification("cross_entropy", logits, target);
  const double eps = options.label_smoothing;
  FLAME_CHECK(eps >= 0.0 && eps <= 1.0, "cross_entropy: label_smoothing must be in [0, 1], got {}", eps);
  FLAME_CHECK(logits.size(1) > 0, "cross_entropy: logits {} have no classes", logits.describe());

  const Tensor loss = cross_entropy_rows(logits, target, options.ignore_index, eps);  // [N]
  // Sums (and the count of rows) accumulate in f32 (f64 for f64 logits) and are rounded to the
  // logits' dtype once, as PyTorch does: an f16 sum of 65520 rows, or of losses past 65504, is inf.
  const DType accumulate = logits.dtype() == DType::F64 ? DType::F64 : DType::F32;
  switch (options.reduction) {
    case Reduction::None:
      return loss;
    case Reduction::Sum:
      return sum(loss.to(accumulate)).to(logits.dtype());
    case Reduction::Mean: {
      // The count of rows that are not ignored stays on the device (no host sync).
      const Tensor counted = ne(target, static_cast<double>(options.ignore_index)).to(accumulate);
      return div(sum(loss.to(accumulate)), sum(counted)).to(logits.dtype());
    }
  }
  FLAME_FAIL("cross_entropy: unknown reduction {}", static_cast<int>(options.reduction));
}

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  FLAME_CHECK(input.defined() && target.defined(), "mse_loss: input and target must be defined");
  FLAME_CHECK(input.shape() == target.shape(), "mse_loss: input {} and target {} must have the same shape",
              input.describe(), target.describe());
  FLAME_CHECK(is_floating(input.dtype()) && input.dtype() == target.dtype(),
              "mse_loss: input {} and target {} must share one floating-point dtype", input.describe(),
              target.describe());
  FLAME_CHECK(input.device() == target.device(), "mse_loss: input {} is on {} but target {} is on {}", input.describe(),
              input.device().str(), target.describe(), target.device().str());
  const Tensor diff = sub(input, target);
  const Tensor squared = mul(diff, diff);
  switch (reduction) {
    case Reduction::None:
      return squared;
    case Reduction::Sum:
      return sum(squared);
    case Reduction::Mean:
      return mean(squared);
  }
  FLAME_FAIL("mse_loss: unknown reduction {}", static_cast<int>(reduction));
}

double accuracy(const Tensor& logits, const Tensor& target) {
  check_classification("accuracy", logits, target);
  FLAME_CHECK(logits.size(0) > 0 && logits.size(1) > 0, "accuracy: logits {} are empty", logits.describe());
  autograd::NoGradGuard no_grad;
  const Tensor correct = eq(argmax(logits, 1), target).to(kI64);
  return sum(correct).item() / static_cast<double>(logits.size(0));
}

}  // namespace flame::nn
