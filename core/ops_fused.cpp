// Frontends of the fused training ops (core/fused.h): argument checks, output allocation,
// dispatch and the cross-entropy backward.
#include "core/fused.h"

#include <cmath>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/op_checks.h"

namespace flame {

Tensor cross_entropy_rows(const Tensor& logits, const Tensor& target, int64_t ignore_index, double label_smoothing) {
  const char* op = "cross_entropy_rows";
  FLAME_CHECK(logits.defined() && target.defined(), "{}: logits and target must be defined", op);
  FLAME_CHECK(logits.dim() == 2 && is_floating(logits.dtype()),
              "{}: logits {} must be a 2-D [N, C] floating-point tensor (f32, f64, f16, bf16)", op, logits.describe());
  FLAME_CHECK(target.dtype() == DType::I64 && target.dim() == 1 && target.size(0) == logits.size(0),
              "{}: target {} must be 1-D i64 holding one class index per row of logits {} (shape [{}])", op,
              target.describe(), logits.describe(), logits.size(0));
  detail::check_same_device(op, {&logits, &target});
  const int64_t n = logits.size(0), c = logits.size(1);
  FLAME_CHECK(c > 0 || n == 0, "{}: logits {} have no classes", op, logits.describe());
  FLAME_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, "{}: label_smoothing must be in [0, 1], got {}", op,
              label_smoothing);

  const Device device = logits.device();
  const Tensor x = logits.contiguous();
  const Tensor t = target.contiguous();
  const DType stats_dtype = logits.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor losses = Tensor::empty({n}, TensorOptions(logits.dtype(), device));
  const Tensor row_stats = Tensor::empty({n, 2}, TensorOptions(stats_dtype, device));  // [N, {max, log-sum}]
  if (n > 0) backend_for(device).cross_entropy_forward(x, t, losses, row_stats, ignore_index, label_smoothing);
  if (autograd::needs_grad({&logits})) {
    autograd::record(losses, "CrossEntropyBackward", {logits},
                     [x = autograd::SavedTensor(x), t = autograd::SavedTensor(t),
                      row_stats = autograd::SavedTensor(row_stats), ignore_index, label_smoothing](const Tensor& g) {
                       const Tensor& logits = x.get();
                       Tensor grad = Tensor::empty(logits.shape(), TensorOptions(logits.dtype(), logits.device()));
                       if (grad.numel() > 0)
                         backend_for(logits.device())
                             .cross_entropy_backward(logits, t.get(), row_stats.get(), g.contiguous(), grad,
                                                     ignore_index, label_smoothing);
                       return std::vector<Tensor>{grad};
                     });
  }
  return losses;
}

namespace {

void check_adam_args(const AdamStepArgs& a) {
  const auto finite_at_least = [](double value, double lo) { return std::isfinite(value) && value >= lo; };
  FLAME_CHECK(finite_at_least(a.lr, 0.0) && finite_at_least(a.eps, 0.0) && finite_at_least(a.weight_decay, 0.0),
              "adam_step_: lr ({}), eps ({}) and weight_decay ({}) must be finite and >= 0", a.lr, a.eps,
              a.weight_decay);
  FLAME_CHECK(a.beta1 >= 0.0 && a.beta1 < 1.0 && a.beta2 >= 0.0 && a.beta2 < 1.0,
              "adam_step_: betas must be in [0, 1), got ({}, {})", a.beta1, a.beta2);
  FLAME_CHECK(
      a.bias_correction1 > 0.0 && a.bias_correction1 <= 1.0 && a.bias_correction2 > 0.0 && a.bias_correction2 <= 1.0,
      "adam_step_: bias corrections must be in (0, 1] (1 - beta^t for a step t >= 1), got {} and {}",
      a.bias_correction1, a.bias_correction2);
}

}  // namespace

void adam_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const AdamStepArgs& args) {
  const char* op = "adam_step_";
  FLAME_CHECK(grads.size() == params.size() && exp_avg.size() == params.size() && exp_avg_sq.size() == params.size(),
              "{}: got {} params, {} grads, {} exp_avg and {} exp_avg_sq; the lists must have one length", op,
              params.size(), grads.size(), exp_avg.size(), exp_avg_sq.size());
  check_adam_args(args);
  if (params.empty()) return;
  std::vector<Tensor> contiguous_grads;
  contiguous_grads.reserve(grads.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor &p = params[i], &g = grads[i], &m = exp_avg[i], &v = exp_avg_sq[i];
    FLAME_CHECK(p.defined() && g.defined() && m.defined() && v.defined(), "{}: entry {} has an undefined tensor", op,
                i);
    detail::check_same_device(op, {&params[0], &p, &g, &m, &v});
    FLAME_CHECK(is_floating(p.dtype()) && g.dtype() == p.dtype() && m.dtype() == p.dtype() && v.dtype() == p.dtype(),
                "{}: entry {} (param {}, grad {}, exp_avg {}, exp_avg_sq {}) must share one floating-point dtype", op,
                i, p.describe(), g.describe(), m.describe(), v.describe());
    FLAME_CHECK(g.shape() == p.shape() && m.shape() == p.shape() && v.shape() == p.shape(),
                "{}: entry {} (param {}, grad {}, exp_avg {}, exp_avg_sq {}) must share one shape", op, i, p.describe(),
                g.describe(), m.describe(), v.describe());
    FLAME_CHECK(p.is_contiguous() && m.is_contiguous() && v.is_contiguous(),
                "{}: entry {}: param {}, exp_avg {} and exp_avg_sq {} must be contiguous (they are updated in place)",
                op, i, p.describe(), m.describe(), v.describe());
    contiguous_grads.push_back(g.contiguous());
  }
  for (size_t i = 0; i < params.size(); ++i) {
    detail::check_inplace_allowed(op, params[i], {&grads[i]});
    detail::check_inplace_allowed(op, exp_avg[i]);
    detail::check_inplace_allowed(op, exp_avg_sq[i]);
  }
  backend_for(params[0].device()).adam_step(params, contiguous_grads, exp_avg, exp_avg_sq, args);
  for (size_t i = 0; i < params.size(); ++i)
    for (const Tensor* written : {&params[i], &exp_avg[i], &exp_avg_sq[i]}) detail::mark_written(*written);
}

}  // namespace flame
