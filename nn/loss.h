// Loss functions and metrics, as PyTorch's torch.nn.functional.cross_entropy and mse_loss.
// Built from public ops (cross_entropy on the fused cross_entropy_rows), so autograd
// differentiates them on every device.
#pragma once

#include <cstdint>

#include "core/ops.h"

namespace flame::nn {

/// How a loss combines its per-element values.
enum class Reduction {
  Mean,  // the average (cross_entropy: over the targets that are not ignored)
  Sum,
  None,  // the per-element losses, unreduced
};

struct CrossEntropyOptions {
  /// Targets equal to this contribute no loss and no gradient, and are not counted by the mean.
  int64_t ignore_index = -100;
  /// eps in [0, 1]: loss_i = (1 - eps) * nll_i + eps * mean_c(-log p_ic).
  double label_smoothing = 0.0;
  Reduction reduction = Reduction::Mean;
};

/// Cross entropy of `logits` [N, C] (floating point) against class indices `target` [N] (i64),
/// computed by the fused cross_entropy_rows op (core/fused.h: one stable kernel for the per-row
/// losses, one for their gradient) and then reduced. Returns a 0-d tensor of the logits' dtype,
/// or [N] for Reduction::None (0 where the target is ignored). The mean divides by the number of
/// targets that are not ignored, counted on the device; the mean of a batch whose targets are all
/// ignored is NaN (0 / 0), as in PyTorch.
/// A target outside [0, C) other than ignore_index raises flame::Error on the CPU; on CUDA it is
/// never read out of bounds and is reported by the kernel's device-side check at the next
/// synchronisation (no host sync is added to check targets here).
/// Shape, dtype and device mismatches raise flame::Error naming cross_entropy and the shapes.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& options = {});

/// Mean squared error: (input - target)^2, reduced. input and target have one shape, one
/// floating-point dtype and one device (no broadcasting: a mismatch raises flame::Error).
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::Mean);

/// Fraction of the rows of `logits` [N, C] whose largest logit (the first, on ties) is at the
/// index given by `target` [N] (i64), in [0, 1]. Reads one number back to the host (a device
/// sync on CUDA). N == 0 raises flame::Error.
double accuracy(const Tensor& logits, const Tensor& target);

}  // namespace flame::nn
