// 2-D max and average pooling over NCHW tensors, with PyTorch's semantics (torch.nn.functional
// max_pool2d / max_pool2d_with_indices / avg_pool2d), on the CPU reference backend and on CUDA.
//
// Note [pool2d semantics]
// - Input is [N, C, H, W] (N may be 0; C, H and W must not be) or an unbatched [C, H, W], which
//   gives a [C, out_h, out_w] result. Floating dtypes only (f32, f64, f16, bf16); any layout
//   (non-contiguous inputs are copied to contiguous first).
// - Output size per spatial dim: out = floor((in + 2 * padding - kernel) / stride) + 1, which
//   must be >= 1. ceil_mode and dilation are not supported (there is no option for them).
// - kernel > 0, stride > 0 and 0 <= padding <= kernel / 2 (PyTorch's rule), so every window
//   holds at least one real input element.
// - Max: padding counts as -inf. The result is the window's largest element; NaN counts as the
//   largest, so a window holding NaN gives NaN (as PyTorch). Ties go to the first element in
//   row-major order within the window (the first NaN when there are several). The indices are
//   flat positions h * W + w within the input plane (i64), as PyTorch's return_indices.
// - Average: the window's sum divided by kernel_h * kernel_w when count_include_pad (PyTorch's
//   default), else by the number of real (non-padding) elements in the window.
// - Autograd: max routes each output gradient to the input element its index names (summing
//   where windows overlap); average spreads each output gradient evenly (divided by the same
//   divisor) over its window's real elements. Computations run in float (f32, f16, bf16) or
//   double (f64) on CUDA and in double on the CPU.
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace flame {

/// Window geometry of a 2-D pooling, each as {h, w}.
struct Pool2dOptions {
  std::array<int64_t, 2> kernel{0, 0};
  /// {0, 0} (the default) means stride = kernel, as PyTorch's stride=None.
  std::array<int64_t, 2> stride{0, 0};
  std::array<int64_t, 2> padding{0, 0};
};

/// Max pooling's values and, per output element, the flat index h * W + w of its maximum within
/// the input plane (i64, the output's shape).
struct MaxPool2dResult {
  Tensor output;
  Tensor indices;
};

/// Max pooling (Note [pool2d semantics]); differentiable with respect to input.
Tensor max_pool2d(const Tensor& input, const Pool2dOptions& options);
/// Max pooling that also returns the indices of the maxima (torch's return_indices=True);
/// `output` is differentiable, `indices` is not.
MaxPool2dResult max_pool2d_with_indices(const Tensor& input, const Pool2dOptions& options);
/// Average pooling (Note [pool2d semantics]); differentiable with respect to input.
Tensor avg_pool2d(const Tensor& input, const Pool2dOptions& options, bool count_include_pad = true);

}  // namespace flame
