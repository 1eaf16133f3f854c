// Fused ops for training: per-row cross entropy (forward and backward one kernel each on CUDA) and
// the Adam / AdamW update of many parameters at once (one kernel launch for all of them on CUDA).
//
// Note [fused cross entropy]
// cross_entropy_rows computes, for each row i of logits x [N, C] with target t_i:
//   lse_i  = log sum_j exp(x_ij)                   (computed stably: max m_i, then log sum exp(x - m))
//   loss_i = (1 - eps) * (lse_i - x_{i,t_i}) + eps * (lse_i - mean_j x_ij)
// and loss_i = 0 where t_i == ignore_index. Its gradient with respect to x is one pass per element:
//   dL/dx_ij = g_i * (softmax(x_i)_j - (1 - eps) * [j == t_i] - eps / C)   (0 for ignored rows)
// where g is the gradient reaching the losses. The forward keeps the per-row statistics
// (m_i, log sum exp(x_i - m_i)) for the backward, so the backward reads x once and never
// recomputes the normaliser. f16 and bf16 logits are computed in f32, f32 in f32, f64 in f64;
// the CPU reference computes in double. A target outside [0, C) that is not ignore_index raises
// flame::Error on the CPU; on CUDA it is never read out of bounds: the kernel writes NaN for that
// row and sets the device error flag, which cuda::synchronize() (or any host read) reports.
// The recorded backward is not itself differentiable (no double backward).
//
// Note [fused adam]
// adam_step_ applies one Adam step to every (param, grad, exp_avg, exp_avg_sq) quadruple, in
// place, exactly as torch.optim.Adam / AdamW (and nn/optim/adam.h) define it:
//   L2:         g = g + weight_decay * p
//   Decoupled:  p = p * (1 - lr * weight_decay)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   p = p - (lr / bias_correction1) * m / (sqrt(v) / sqrt(bias_correction2) + eps)
// (the weight-decay terms are skipped when weight_decay == 0). Each element is computed once in
// f32 (f64 for f64 tensors; double on the CPU) and stored once, so f16/bf16 parameters and
// states are rounded once per step rather than after every partial operation. On CUDA all
// tensors go to one kernel launch (several only for more than a launch's worth of tensors or
// several dtypes); the launch reads each tensor's pointers from its kernel arguments.
//
// Note [gradient slots]
// An entry's gradient may also be given as GradientSlots: every rank's contribution, each rounded
// to bf16, not yet averaged (what a data-parallel all-gather leaves, dist/ddp.h's
// step_mean). adam_step_ then computes, per element,
//   g = bf16_round(((s_0 + s_1) + s_2 + ... + s_{W-1}) * scale)
// with every sum and the product in f32 (in rank order) and the rounding to nearest even, NaN
// kept quiet (bits (x >> 16) | 0x40, as float_to_bf16_bits), stores g as f32 into grads[i]
// (unless GradientSlots::write_mean is false) and uses it for the update. That is bit for bit what the NCCL copy-engine all-reduce's sum kernel
// writes into a bucket (dist/nccl_communicator.cpp, Note [bf16 on the wire]), so an update that
// reads the slots equals one that reads the reduced gradient, on the device that computes it; the
// mean itself (grads[i]) is the same on the CPU and CUDA, but for the payload of a NaN (CUDA's
// arithmetic gives its canonical NaN, the CPU's keeps an operand's). Only f32 parameters with
// bf16 slots.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace flame {

/// Per-row cross-entropy losses of `logits` [N, C] (floating point, any layout) against class
/// indices `target` [N] (i64): a [N] tensor of the logits' dtype, 0 where the target equals
/// `ignore_index` (Note [fused cross entropy]). label_smoothing is eps in [0, 1].
/// Differentiable with respect to logits. Raises flame::Error naming cross_entropy_rows for
/// shape, dtype or device mismatches, C == 0 with N > 0, or eps outside [0, 1].
Tensor cross_entropy_rows(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                          double label_smoothing = 0.0);

/// How adam_step_ applies weight decay (Note [fused adam]).
enum class AdamWeightDecay {
  L2,         // Adam: added to the gradient
  Decoupled,  // AdamW: the parameter shrinks by lr * weight_decay before the update
};

/// The scalars of one Adam step; bias_correction1/2 are 1 - beta1^t and 1 - beta2^t for the step
/// count t shared by every tensor of the call.
struct AdamStepArgs {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  AdamWeightDecay decay = AdamWeightDecay::L2;
  double bias_correction1 = 1.0;
  double bias_correction2 = 1.0;
};

/// A gradient held as every rank's bf16 values (Note [gradient slots]).
struct GradientSlots {
  /// [W, numel] bf16, W >= 1, on the parameter's device: row w holds rank w's values. Rows may lie
  /// apart (stride(0) >= numel) but each row is contiguous (stride(1) == 1). Undefined: no slots.
  Tensor slots;
  /// The factor applied to the sum: 1/W (as a float) for the mean.
  float scale = 1.0f;
  /// Whether the mean is stored into the entry's grad; false: used for the update only, the grad
  /// is left as it was (one memory pass less).
  bool write_mean = true;
};

/// Applies one Adam step in place to params[i], exp_avg[i] and exp_avg_sq[i] from grads[i], for
/// every i (Note [fused adam]). The four lists have one length; all tensors live on one device;
/// params[i], exp_avg[i] and exp_avg_sq[i] are contiguous, and the four tensors of entry i share
/// one shape and one floating dtype (entries may differ in dtype). grads may have any layout.
/// Like every in-place op it refuses tensors that require grad while grad mode is on (run it
/// under autograd::NoGradGuard, as optimizers do) and bumps their version. No byte that one tensor
/// of the call writes may be read or written through another (entries are updated in parallel);
/// disjoint views of one buffer are fine, and a non-contiguous grad is read from a copy taken
/// first. Raises flame::Error naming adam_step_ and the entry
/// otherwise; nothing is written unless every entry fits.
void adam_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const AdamStepArgs& args);
/// The same, where grad_slots is empty or holds one entry per parameter: an entry with defined
/// slots gives that parameter's gradient (Note [gradient slots]); it is written into grads[i],
/// which must then be a contiguous f32 tensor (params[i] f32, slots [W, numel] bf16 with
/// stride(1) == 1, on the same device), before it is used. Raises flame::Error naming adam_step_
/// and the entry for any other combination; nothing is written unless every entry fits.
void adam_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const AdamStepArgs& args,
                const std::vector<GradientSlots>& grad_slots);

}  // namespace flame
