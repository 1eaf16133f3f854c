// One Adam / AdamW step over many parameters (Note [fused adam] in core/fused.h), each element
// computed in double and stored once; an entry with gradient slots first gets its gradient from
// them in float (Note [gradient slots]).
#include <cfloat>
#include <cmath>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"
#include "core/dtype.h"

namespace flame {

using namespace cpu;

namespace {

// Float expressions are evaluated in float (no wider intermediates), as the mean must be.
static_assert(FLT_EVAL_METHOD == 0, "the gradient-slot mean needs float arithmetic in float");

/// grad = bf16_round(((s_0 + s_1) + ... + s_{W-1}) * scale), each element summed in rank order in
/// float (Note [gradient slots]). Only adds, then one multiply that no add follows: nothing the
/// compiler may contract into an fma, and it may not reorder float adds without -ffast-math
/// (which the build does not use).
void write_slot_mean(size_t entry, const GradientSlots& gs, const Tensor& grad) {
  const Tensor& slots = gs.slots;
  const int64_t numel = grad.numel();
  FLAME_CHECK(grad.dtype() == DType::F32 && slots.dtype() == DType::BF16 && slots.dim() == 2 && slots.size(0) >= 1 &&
                  slots.size(1) == numel && slots.stride(1) == 1,
              "adam_step: entry {}: gradient slots {} must be [W, {}] bf16 with contiguous rows for f32 grad {}", entry,
              slots.describe(), numel, grad.describe());
  const int64_t rows = slots.size(0), row_stride = slots.stride(0);
  const auto* s = static_cast<const uint16_t*>(slots.data_ptr());  // [W, row_stride] bf16 bits; numel used per row
  auto* g = static_cast<float*>(grad.data_ptr());                  // [numel] f32
  for (int64_t e = 0; e < numel; ++e) {
    float sum = bf16_bits_to_float(s[e]);
    for (int64_t w = 1; w < rows; ++w) sum += bf16_bits_to_float(s[w * row_stride + e]);
    g[e] = bf16_bits_to_float(float_to_bf16_bits(sum * gs.scale));
  }
}

}  // namespace

void CpuBackend::adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                           const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                           const AdamStepArgs& args, const std::vector<GradientSlots>& grad_slots) {
  FLAME_CHECK(grads.size() == params.size() && exp_avg.size() == params.size() && exp_avg_sq.size() == params.size() &&
                  grad_slots.size() == params.size(),
              "adam_step: got {} params, {} grads, {} exp_avg, {} exp_avg_sq and {} grad_slots; the lists must have "
              "one length",
              params.size(), grads.size(), exp_avg.size(), exp_avg_sq.size(), grad_slots.size());
  const bool l2 = args.weight_decay != 0.0 && args.decay == AdamWeightDecay::L2;
  const bool decoupled = args.weight_decay != 0.0 && args.decay == AdamWeightDecay::Decoupled;
  const double sqrt_bc2 = std::sqrt(args.bias_correction2);
  const double step_size = args.lr / args.bias_correction1;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    const int64_t numel = p.numel();
    for (const Tensor* t : {&p, &grads[i], &exp_avg[i], &exp_avg_sq[i]}) {
      check_contiguous("adam_step", "every tensor", *t, numel);
      FLAME_CHECK(t->dtype() == p.dtype() && is_floating(p.dtype()),
                  "adam_step: entry {} mixes {} and {}; its tensors must share one floating dtype", i, p.describe(),
                  t->describe());
    }
    // The mean goes into grads[i] first (or a scratch buffer, GradientSlots::write_mean false); the
    // update below then reads it like any gradient.
    Tensor grad = grads[i];
    if (grad_slots[i].slots.defined()) {
      if (!grad_slots[i].write_mean) grad = Tensor::empty(p.shape(), TensorOptions(DType::F32, kCPU));
      write_slot_mean(i, grad_slots[i], grad);
    }
    const LoadDouble load = double_loader(p.dtype());
    const StoreDouble store = double_storer(p.dtype());
    const size_t size = p.element_size();
    char* pp = static_cast<char*>(p.data_ptr());
    const char* gp = static_cast<const char*>(grad.data_ptr());
    char* mp = static_cast<char*>(exp_avg[i].data_ptr());
    char* vp = static_cast<char*>(exp_avg_sq[i].data_ptr());
    for (int64_t e = 0; e < numel; ++e) {
      const size_t offset = static_cast<size_t>(e) * size;
      double param = load(pp + offset);
      double g = load(gp + offset);
      if (l2) g += args.weight_decay * param;
      if (decoupled) param *= 1.0 - args.lr * args.weight_decay;
      const double m = args.beta1 * load(mp + offset) + (1.0 - args.beta1) * g;
      const double v = args.beta2 * load(vp + offset) + (1.0 - args.beta2) * g * g;
      param -= step_size * m / (std::sqrt(v) / sqrt_bc2 + args.eps);
      store(mp + offset, m);
      store(vp + offset, v);
      store(pp + offset, param);
    }
  }
}

}  // namespace flame
