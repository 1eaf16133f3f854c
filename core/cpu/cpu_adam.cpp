// One Adam / AdamW step over many parameters (Note [fused adam] in core/fused.h), each element
// computed in double and stored once.
#include <cmath>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"

namespace flame {

using namespace cpu;

void CpuBackend::adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                           const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                           const AdamStepArgs& args) {
  FLAME_CHECK(grads.size() == params.size() && exp_avg.size() == params.size() && exp_avg_sq.size() == params.size(),
              "adam_step: got {} params, {} grads, {} exp_avg and {} exp_avg_sq; the lists must have one length",
              params.size(), grads.size(), exp_avg.size(), exp_avg_sq.size());
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
    const LoadDouble load = double_loader(p.dtype());
    const StoreDouble store = double_storer(p.dtype());
    const size_t size = p.element_size();
    char* pp = static_cast<char*>(p.data_ptr());
    const char* gp = static_cast<const char*>(grads[i].data_ptr());
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
