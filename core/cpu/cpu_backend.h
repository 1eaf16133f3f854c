// The CPU reference backend: plain, obviously-correct implementations of every Backend primitive.
// It is the ground truth the CUDA backend is tested against, so clarity wins over speed; matmul
// goes to the BLAS (OpenBLAS through cblas).
//
// Note [cpu numerics]
// - Floating dtypes (f32, f64, f16, bf16) are computed in double and rounded once on store
//   (f16/bf16 through float). Integer dtypes (i32, i64, u8) are computed in int64 arithmetic that
//   wraps on overflow and are stored modulo the type's width; bool is read as 0/1 and stored as
//   "nonzero -> 1".
// - Float -> integer conversion (copy, fill, arange, double results stored into an integer
//   tensor) truncates toward zero and saturates at the type's range; NaN becomes 0. These are the
//   rules of CUDA's conversion instructions, so the two backends agree where C++ leaves the cast
//   undefined.
// - Float-only ops (exp, log, sqrt, rsqrt, sigmoid, tanh, gelu, silu, div, mean, var, softmax,
//   matmul) reject integer and bool tensors. Unary ops reject bool. Integer tensors take scalars
//   (binary_scalar, clamp bounds, pow exponents) only when the scalar is an integer (clamp bounds
//   may also be +-inf); comparisons of an integer tensor with a fractional scalar compare exactly.
// - Integer pow: a scalar exponent must be >= 0; for tensor exponents a negative exponent gives
//   1 for base 1, +-1 for base -1 and 0 otherwise (PyTorch's rule).
// - Maximum/Minimum, Max/Min reductions and clamp propagate NaN; ArgMax treats NaN as the maximum
//   and returns the first index of the maximum.
#pragma once

#include "core/backend.h"

namespace flame {

/// Backend for DeviceType::CPU. Stateless; use the instance returned by cpu_backend().
class CpuBackend final : public Backend {
 public:
  void unary(UnaryOp op, const Tensor& in, const Tensor& out, double p0, double p1) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void binary_scalar(BinaryOp op, const Tensor& a, double scalar, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void copy(const Tensor& src, const Tensor& out) override;
  void fill(const Tensor& out, double value) override;
  void arange(const Tensor& out, double start, double step) override;
  void random(const Tensor& out, RandomKind kind, uint64_t seed, uint64_t offset, int64_t a,
              int64_t b) override;
  void reduce(ReduceOp op, const Tensor& in, const Tensor& out, int64_t outer, int64_t reduced,
              int64_t inner, int64_t correction) override;
  void softmax(const Tensor& in, const Tensor& out, int64_t outer, int64_t reduced, int64_t inner,
               bool log) override;
  void matmul(const MatmulArgs& args) override;
  void index_select(const Tensor& in, const Tensor& index, const Tensor& out, int64_t outer,
                    int64_t in_size, int64_t inner) override;
  void gather(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) override;
  void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
  void conv2d_forward(const Conv2dGeometry& g, const Tensor& input, const Tensor& weight,
                      const Tensor& out) override;                       // cpu_conv2d.cpp
  void conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out, const Tensor& weight,
                             const Tensor& grad_input) override;
  void conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& input, const Tensor& grad_out,
                              const Tensor& grad_weight) override;
  void max_pool2d_forward(const Pool2dGeometry& g, const Tensor& input, const Tensor& out,
                          const Tensor& indices) override;               // cpu_pool2d.cpp
  void max_pool2d_backward(const Pool2dGeometry& g, const Tensor& grad_out, const Tensor& indices,
                           const Tensor& grad_input) override;
  void avg_pool2d_forward(const Pool2dGeometry& g, const Tensor& input, const Tensor& out) override;
  void avg_pool2d_backward(const Pool2dGeometry& g, const Tensor& grad_out, const Tensor& grad_input) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& losses,
                             const Tensor& row_stats, int64_t ignore_index,
                             double label_smoothing) override;  // cpu_cross_entropy.cpp
  void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& row_stats,
                              const Tensor& grad_losses, const Tensor& grad_logits, int64_t ignore_index,
                              double label_smoothing) override;
  void adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                 const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq, const AdamStepArgs& args,
                 const std::vector<GradientSlots>& grad_slots) override;  // cpu_adam.cpp
  void synchronize() override {}
};

/// The process-wide CPU backend (what backend_for(kCPU) returns).
Backend& cpu_backend();

}  // namespace flame
