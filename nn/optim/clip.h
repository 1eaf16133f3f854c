// Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_ with norm_type 2).
#pragma once

#include <vector>

#include "core/tensor.h"

namespace flame::optim {

/// Scales the gradients of `params` in place so that their global L2 norm is at most max_norm:
///   norm = sqrt(sum over all gradient elements of g^2)
///   every g *= min(1, max_norm / (norm + 1e-6))
/// and returns norm (before clipping) as a 0-d tensor on the gradients' device. Everything stays on
/// that device: the scale is computed there and applied unconditionally, so nothing is read back
/// to the host (a NaN or infinite norm propagates into the gradients, as PyTorch's default
/// error_if_nonfinite=False). Parameters without a gradient are skipped; with none at all the
/// result is 0 (on the first parameter's device, or the CPU for an empty list).
/// The norm is accumulated and returned in f64 when every gradient is f64, else in f32 (f16 and
/// bf16 gradients are squared and summed in f32). All gradients must be on one device; max_norm > 0.
Tensor clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

}  // namespace flame::optim
