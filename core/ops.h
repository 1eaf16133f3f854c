// The tensor operations. Each is declared once here and dispatches on the tensors' device to the
// CPU reference backend (core/cpu/) or the CUDA backend (core/cuda/); both have one semantics.
//
// Common rules (each violation raises flame::Error naming the op and the shapes):
// - All tensor operands of an op live on one device; mixing devices is an error, never a copy.
// - Tensor operands of arithmetic ops share one dtype (no implicit promotion); convert with to().
// - Binary and ternary elementwise ops broadcast like NumPy/PyTorch.
// - Floating-point-only ops (exp, log, div, sigmoid, softmax, ...) reject integer and bool inputs.
// - f16 and bf16 are stored as 16 bits and rounded once on store. CUDA computes them (and f32) in
//   f32, accumulating reductions and matmul in f32 (f64 for f64 inputs); the CPU reference computes
//   every floating type in f64 (matmul: f32 BLAS for f32/f16/bf16).
#pragma once

#include <cstdint>
#include <vector>

#include "core/random.h"
#include "core/tensor.h"

namespace flame {

// --- creation ------------------------------------------------------------------------------
Tensor empty(const Shape& shape, TensorOptions options = {});
Tensor zeros(const Shape& shape, TensorOptions options = {});
Tensor ones(const Shape& shape, TensorOptions options = {});
Tensor full(const Shape& shape, double value, TensorOptions options = {});
/// start, start+step, ... < end (1-D).
Tensor arange(double start, double end, double step = 1.0, TensorOptions options = {});
Tensor arange(double end, TensorOptions options = {});
/// A tensor holding a copy of `values` (row-major), converted to options.dtype, on options.device.
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions options = {});
/// Uniform on [0, 1), standard normal, and uniform integers in [low, high), drawn from `gen`
/// (the device's default generator when null). Same seed and offset give the same numbers on the
/// CPU and on CUDA (see core/random.h).
Tensor rand(const Shape& shape, TensorOptions options = {}, Generator* gen = nullptr);
Tensor randn(const Shape& shape, TensorOptions options = {}, Generator* gen = nullptr);
Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions options = kI64,
               Generator* gen = nullptr);

// --- elementwise, unary --------------------------------------------------------------------
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);
/// Gaussian error linear unit; exact (erf) or PyTorch's approximate="tanh".
enum class GeluApproximation { None, Tanh };
Tensor gelu(const Tensor& x, GeluApproximation approximation = GeluApproximation::None);
Tensor silu(const Tensor& x);
/// x ** exponent.
Tensor pow(const Tensor& x, double exponent);
Tensor clamp(const Tensor& x, double min, double max);
Tensor clamp_min(const Tensor& x, double min);
Tensor clamp_max(const Tensor& x, double max);

// --- elementwise, binary (broadcasting) ----------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
/// a + alpha * b (PyTorch's add with alpha).
Tensor add(const Tensor& a, const Tensor& b, double alpha);
// scalar variants: the scalar is converted to the tensor's compute type (f32 for f32, f16 and
// bf16 tensors; f64 for f64; int64 for integer tensors, which need an integral scalar).
Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);
Tensor maximum(const Tensor& a, double b);
Tensor minimum(const Tensor& a, double b);

// comparisons: bool results.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, double b);
Tensor ne(const Tensor& a, double b);
Tensor lt(const Tensor& a, double b);
Tensor le(const Tensor& a, double b);
Tensor gt(const Tensor& a, double b);
Tensor ge(const Tensor& a, double b);

/// cond ? a : b elementwise; cond is bool; a and b share a dtype; all three broadcast.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator*(double a, const Tensor& b);

// --- matmul --------------------------------------------------------------------------------
/// Matrix product with PyTorch's rules: 1-D operands are promoted and the added dim removed;
/// batch dims broadcast. f32, f64, f16 and bf16 (the last two accumulate in f32; f32 does not use
/// TF32). cuBLAS on CUDA, the BLAS on the CPU.
Tensor matmul(const Tensor& a, const Tensor& b);

// --- reductions ----------------------------------------------------------------------------
/// Over `dims` (empty: all dims), keeping reduced dims as size 1 when keepdim.
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
/// Variance with Bessel's correction by default (correction = 1), as torch.var.
Tensor var(const Tensor& x, const std::vector<int64_t>& dims = {}, int64_t correction = 1,
           bool keepdim = false);
/// Largest / smallest value along dim (values only); NaN propagates.
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor min(const Tensor& x, int64_t dim, bool keepdim = false);
/// Largest / smallest value of all elements, 0-d.
Tensor max(const Tensor& x);
Tensor min(const Tensor& x);
/// Index (i64) of the first largest value along dim.
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

// --- joining and indexing ------------------------------------------------------------------
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
/// Entries of `index` (1-D, i32 or i64) along dim.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
/// out[i][j][k] = x[index[i][j][k]][j][k] for dim 0, and so on (torch.gather).
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
/// A copy of x with src added at the positions given by index along dim (torch.scatter_add).
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
/// In-place scatter_add on x; returns x.
Tensor& scatter_add_(Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);

}  // namespace flame
