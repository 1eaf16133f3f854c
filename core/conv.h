// 2-D convolution (cross-correlation, as torch.nn.functional.conv2d) with its backward.
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace flame {

/// Hyper-parameters of conv2d, each spatial one as {height, width}.
struct Conv2dOptions {
  std::array<int64_t, 2> stride{1, 1};    // >= 1
  std::array<int64_t, 2> padding{0, 0};   // >= 0, zeros on both sides
  std::array<int64_t, 2> dilation{1, 1};  // >= 1
  int64_t groups = 1;                     // divides in_channels and out_channels
};

/// Output height or width of a convolution: floor((in + 2 pad - dilation (kernel - 1) - 1) / stride) + 1,
/// or 0 when the dilated kernel is larger than the padded input.
int64_t conv2d_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation);

/// out[n, o, y, x] = bias[o] + sum over c, i, j of
///   input[n, g C/G + c, y s_h - p_h + i d_h, x s_w - p_w + j d_w] * weight[o, c, i, j]
/// with g = o / (O/G) the group of output channel o and out-of-range input positions reading 0.
/// input is [N, C, H, W] (or [C, H, W], giving [O, oh, ow]), weight [O, C/groups, kh, kw], bias
/// [O] or undefined (no bias); all on one device with one floating dtype. The result is [N, O, oh,
/// ow] with oh, ow from conv2d_output_size, which must be at least 1. f16/bf16 accumulate in f32.
/// CUDA runs cuDNN (f32 without TF32); the CPU runs im2col + BLAS (f64 in double, the others in
/// f32). Records a backward for input, weight and bias (bias's gradient is the sum over N, oh, ow).
Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias = Tensor(),
              const Conv2dOptions& options = {});

}  // namespace flame
