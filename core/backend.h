// The interface each device backend implements. Internal to core/: the public API in core/ops.h
// validates arguments, broadcasts, allocates outputs and then calls these primitives.
//
// Note [backend contract]
// - Every tensor handed to a backend lives on that backend's device; dtype rules are already checked.
// - Elementwise primitives get inputs already expanded (stride 0 where broadcast) to out's shape.
//   Inputs and out may be non-contiguous; out may be the very same view as an input (in-place ops),
//   but never partially overlap one.
// - "Rows" primitives (reduce, softmax, index_select) get a contiguous input viewed as
//   [outer, reduced, inner] and a contiguous output; the caller reshapes.
// - CUDA primitives enqueue work on the device's compute stream and do not synchronise.
#pragma once

#include <cstdint>
#include <vector>

#include "core/fused.h"
#include "core/tensor.h"

namespace flame {

enum class UnaryOp {
  Neg, Exp, Log, Sqrt, Rsqrt, Abs, Relu, Sigmoid, Tanh, Gelu, GeluTanh, Silu,
  Pow,    // x ** p0
  Clamp,  // min(max(x, p0), p1); p0 = -inf or p1 = +inf for one-sided clamps
};

enum class BinaryOp {
  Add, Sub, Mul, Div, Pow, Maximum, Minimum,
  Eq, Ne, Lt, Le, Gt, Ge,  // out is bool
};

/// Comparison ops write bool; the others write the inputs' dtype.
inline bool is_comparison(BinaryOp op) { return op >= BinaryOp::Eq; }

enum class ReduceOp {
  Sum, Mean, Max, Min,
  ArgMax,  // out is i64
  Var,     // sum((x - mean)^2) / (n - correction)
};

/// Lower-case op names for messages: "exp", "gelu(tanh)", "maximum", "argmax", ...
const char* op_name(UnaryOp op);
const char* op_name(BinaryOp op);
const char* op_name(ReduceOp op);

enum class RandomKind { Uniform, Normal, Integer };

/// One batched matrix product out[b] = A[b] @ B[b] in column-major terms that map onto cuBLAS and
/// cblas directly. The operands are given row-major: a is [batch, m, k], b is [batch, k, n],
/// out is [batch, m, n] contiguous. For a and b, the last two dims are either row-major
/// (stride[-1] == 1, leading dimension = stride[-2]) or transposed (stride[-2] == 1, leading
/// dimension = stride[-1]); the batch stride may be 0 (broadcast).
struct MatmulArgs {
  Tensor a, b, out;
  int64_t batch = 1, m = 0, n = 0, k = 0;
  bool a_transposed = false, b_transposed = false;  // stored column-major in the last two dims
  int64_t lda = 0, ldb = 0;                          // leading dimensions in elements
  int64_t batch_stride_a = 0, batch_stride_b = 0;    // in elements
};

/// Sizes of one 2-D convolution over contiguous NCHW tensors: input [batch, in_channels, in_h, in_w],
/// weight [out_channels, in_channels / groups, kernel_h, kernel_w], output [batch, out_channels,
/// out_h, out_w]; out = floor((in + 2 pad - dilation (kernel - 1) - 1) / stride) + 1.
struct Conv2dGeometry {
  int64_t batch = 0, in_channels = 0, out_channels = 0, groups = 1;
  int64_t in_h = 0, in_w = 0, out_h = 0, out_w = 0, kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
};

/// Sizes of one 2-D pooling over contiguous NCHW tensors (input [batch, channels, in_h, in_w] ->
/// output [batch, channels, out_h, out_w]); padding counts as -inf for max, and for average it
/// counts in the divisor only when count_include_pad (PyTorch's default: true).
struct Pool2dGeometry {
  int64_t batch = 0, channels = 0, in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  int64_t kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  bool count_include_pad = true;
};

/// Raises flame::Error naming `op` unless `g` is a valid pooling geometry (positive sizes, kernel
/// and stride; 0 <= padding <= kernel / 2; output sizes matching the floor formula). Shared by the
/// backends' launch checks.
void check_pool2d_geometry(const char* op, const Pool2dGeometry& g);
/// Raises flame::Error naming `op` unless `g` is a valid convolution geometry (non-negative batch
/// and input size, channels divisible by groups, positive kernel, stride and dilation, non-negative
/// padding, output sizes from conv2d_output_size and at least 1x1). Shared by the backends.
void check_conv2d_geometry(const char* op, const Conv2dGeometry& g);

class Backend {
 public:
  virtual ~Backend() = default;

  /// out = op(in) elementwise; p0, p1 are the op's scalar parameters (see UnaryOp).
  virtual void unary(UnaryOp op, const Tensor& in, const Tensor& out, double p0, double p1) = 0;
  /// out = op(a, b) elementwise.
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  /// out = op(a, scalar) elementwise.
  virtual void binary_scalar(BinaryOp op, const Tensor& a, double scalar, const Tensor& out) = 0;
  /// out = cond ? a : b elementwise; cond is bool.
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  /// out = src, converting dtype; shapes equal (src already expanded). Same device.
  virtual void copy(const Tensor& src, const Tensor& out) = 0;
  /// Every element of out = value (converted to out's dtype).
  virtual void fill(const Tensor& out, double value) = 0;
  /// Contiguous 1-D out[i] = start + i * step.
  virtual void arange(const Tensor& out, double start, double step) = 0;
  /// Contiguous out filled per Note [random stream layout] from (seed, offset);
  /// Uniform ignores a, b; Normal ignores a, b; Integer draws from [a, b).
  virtual void random(const Tensor& out, RandomKind kind, uint64_t seed, uint64_t offset, int64_t a,
                      int64_t b) = 0;
  /// Contiguous in viewed as [outer, reduced, inner] -> contiguous out viewed as [outer, inner].
  /// `correction` is used by Var only.
  virtual void reduce(ReduceOp op, const Tensor& in, const Tensor& out, int64_t outer,
                      int64_t reduced, int64_t inner, int64_t correction) = 0;
  /// Contiguous in and out viewed as [outer, reduced, inner]; softmax (or log_softmax) over reduced.
  virtual void softmax(const Tensor& in, const Tensor& out, int64_t outer, int64_t reduced,
                       int64_t inner, bool log) = 0;
  virtual void matmul(const MatmulArgs& args) = 0;
  /// Contiguous in [outer, in_size, inner], index 1-D contiguous (i32/i64) of length n,
  /// out contiguous [outer, n, inner]. Indices out of [0, in_size) raise flame::Error
  /// (on CUDA: a device-side check reported at the next synchronisation).
  virtual void index_select(const Tensor& in, const Tensor& index, const Tensor& out, int64_t outer,
                            int64_t in_size, int64_t inner) = 0;
  /// torch.gather on contiguous in, index (i64), out (shape of index) along dim.
  virtual void gather(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) = 0;
  /// torch.scatter_add_ on contiguous out (in place), index (i64) and src (contiguous, shape of index).
  virtual void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) = 0;
  /// Convolution without bias, and its two backward passes (every tensor contiguous, one dtype).
  virtual void conv2d_forward(const Conv2dGeometry& g, const Tensor& input, const Tensor& weight,
                              const Tensor& out) = 0;
  virtual void conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out, const Tensor& weight,
                                     const Tensor& grad_input) = 0;
  virtual void conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& input, const Tensor& grad_out,
                                      const Tensor& grad_weight) = 0;
  /// Max pooling; `indices` (i64, shape of out) receives each maximum's flat index h * in_w + w
  /// within its input plane (first maximum in the window; NaN counts as maximum).
  virtual void max_pool2d_forward(const Pool2dGeometry& g, const Tensor& input, const Tensor& out,
                                  const Tensor& indices) = 0;
  /// grad_input (written whole) from grad_out routed through indices.
  virtual void max_pool2d_backward(const Pool2dGeometry& g, const Tensor& grad_out, const Tensor& indices,
                                   const Tensor& grad_input) = 0;
  virtual void avg_pool2d_forward(const Pool2dGeometry& g, const Tensor& input, const Tensor& out) = 0;
  /// grad_input (written whole) from grad_out.
  virtual void avg_pool2d_backward(const Pool2dGeometry& g, const Tensor& grad_out, const Tensor& grad_input) = 0;
  /// Per-row cross entropy (Note [fused cross entropy] in core/fused.h). logits [N, C] (N, C > 0)
  /// and target [N] (i64) are contiguous; writes losses [N] (the logits' dtype, 0 for ignored
  /// rows) and row_stats [N, 2] (f32, or f64 for f64 logits) = {max_j x_ij, log sum_j exp(x_ij -
  /// max)} per row for the backward. A target outside [0, C) other than ignore_index raises on
  /// the CPU and sets the device error flag on CUDA (writing a NaN loss, never reading out of
  /// bounds).
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& losses,
                                     const Tensor& row_stats, int64_t ignore_index, double label_smoothing) = 0;
  /// grad_logits [N, C] (contiguous, the logits' dtype) = grad_losses[i] * (softmax(logits)_ij -
  /// (1 - eps) [j == target_i] - eps / C), 0 for ignored rows, from the row_stats of the forward;
  /// grad_losses [N] is contiguous, of the logits' dtype.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& row_stats,
                                      const Tensor& grad_losses, const Tensor& grad_logits, int64_t ignore_index,
                                      double label_smoothing) = 0;
  /// One Adam step over every entry of the lists (Note [fused adam] in core/fused.h), in place on
  /// params, exp_avg and exp_avg_sq. Already checked by adam_step_: equal list lengths, every
  /// tensor contiguous on this device, and per entry one shape and one floating dtype.
  /// grad_slots holds one entry per param: where its slots are defined (f32 entry, slots [W, numel]
  /// bf16 with stride(1) == 1), the gradient is computed from them and written into grads[i] before
  /// it is used (Note [gradient slots]); where undefined, grads[i] is read.
  virtual void adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                         const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                         const AdamStepArgs& args, const std::vector<GradientSlots>& grad_slots) = 0;
  /// Waits until all work queued on this device is done (no-op on the CPU).
  virtual void synchronize() = 0;
};

/// The backend of `device` (raises flame::Error for CUDA devices in a build without CUDA).
Backend& backend_for(Device device);

/// Copies contiguous `src` to contiguous `dst` of equal dtype and size on another device
/// (host <-> CUDA, or CUDA <-> CUDA). Device-to-host copies complete before returning.
void copy_across_devices(const Tensor& src, const Tensor& dst);

}  // namespace flame
