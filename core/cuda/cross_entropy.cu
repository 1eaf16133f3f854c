// Per-row cross entropy and its gradient (Note [fused cross entropy] in core/fused.h), computed in
// float (f32, f16, bf16) or double (f64).
//
// Forward: one warp per row for rows of at most 1024 classes (eight rows per block), else one
// block per row. A single pass keeps a running (maximum, sum of exp(x - maximum)) per thread,
// combined across the group; with label smoothing a second pass (from cache) sums x - maximum.
// The group's first thread writes the loss and the row statistics {max, log sum}.
// Backward: one thread per logit, a single elementwise pass reading the row's statistics, target
// and incoming gradient.
// A target outside [0, C) other than ignore_index sets the device error flag and gives NaN (loss
// and gradient row); it is never used as an index.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include <limits>

#include "core/cuda/launchers.h"
#include "core/cuda/row_reduce.cuh"

namespace flame::cuda {
namespace {

// Adds x to a MaxSum (core/cuda/row_reduce.cuh). Gives what the two-pass reference gives: a NaN
// anywhere makes the sum NaN, and so does +inf (its own term is exp(inf - inf)); -inf terms add 0
// once a finite maximum is known, and a row of only -inf sums to NaN.
template <class C>
__device__ __forceinline__ MaxSum<C> max_sum_add(MaxSum<C> a, C x) {
  constexpr C kInf = std::numeric_limits<C>::infinity();
  if (x > a.max) {
    a.sum = a.sum * exp_of(a.max - x) + (x == kInf ? std::numeric_limits<C>::quiet_NaN() : C(1));
    a.max = x;
  } else if (isnan(x)) {
    a.sum = x;
  } else if (a.max > -kInf) {
    a.sum += exp_of(x - a.max);
  }
  // else x == max == -inf: nothing is added. The term is 0 if a finite maximum turns up; if none
  // does, the sum stays 0 and log(0) - (x_t - max) = -inf - NaN is NaN, as in the reference.
  return a;
}

// logits: [rows, classes]; target, losses: [rows]; stats: [rows, 2] = {max, log sum exp(x - max)}.
template <class T>
__global__ void cross_entropy_forward_kernel(const T* logits, const int64_t* target, T* losses, compute_t<T>* stats,
                                             int64_t rows, int64_t classes, int64_t ignore_index,
                                             compute_t<T> smoothing, RowGroup group, int* error_flag) {
  using C = compute_t<T>;
  using V = MaxSum<C>;
  __shared__ V shared_v[kWarpSize];
  __shared__ V broadcast_v;
  __shared__ C shared_c[kWarpSize];
  __shared__ C broadcast_c;
  const auto combine = [](V a, V b) { return max_sum_combine(a, b); };
  const auto add = [](C a, C b) { return a + b; };
  const C lowest = -std::numeric_limits<C>::infinity();
  const int group_size = group == RowGroup::Warp ? kWarpSize : blockDim.x;
  const int groups_per_block = blockDim.x / group_size;
  const int rank = threadIdx.x % group_size;
  // In Block mode every thread of a block has the same rows, as block_reduce requires.
  const int64_t first = static_cast<int64_t>(blockIdx.x) * groups_per_block + threadIdx.x / group_size;
  const int64_t step = static_cast<int64_t>(gridDim.x) * groups_per_block;
  for (int64_t row = first; row < rows; row += step) {
    const T* x = logits + row * classes;
    V v{lowest, C(0)};
    for (int64_t j = rank; j < classes; j += group_size) v = max_sum_add(v, to_compute(x[j]));
    v = group_all_reduce(v, V{lowest, C(0)}, combine, group, shared_v, &broadcast_v);
    C shifted_sum = 0;  // sum_j (x_j - max)
    if (smoothing != C(0)) {
      for (int64_t j = rank; j < classes; j += group_size) shifted_sum += to_compute(x[j]) - v.max;
      shifted_sum = group_all_reduce(shifted_sum, C(0), add, group, shared_c, &broadcast_c);
    }
    if (rank != 0) continue;
    const C log_sum = log_of(v.sum);
    stats[2 * row] = v.max;
    stats[2 * row + 1] = log_sum;
    const int64_t t = target[row];
    C loss = 0;
    if (t == ignore_index) {
      loss = 0;
    } else if (t < 0 || t >= classes) {
      report_index_out_of_range(error_flag);
      loss = std::numeric_limits<C>::quiet_NaN();
    } else {
      // Terms with weight 0 are left out, so an infinite logit cannot turn them into 0 * inf.
      if (smoothing != C(1)) loss += (C(1) - smoothing) * (log_sum - (to_compute(x[t]) - v.max));
      if (smoothing != C(0)) loss += smoothing * (log_sum - shifted_sum / static_cast<C>(classes));
    }
    losses[row] = from_compute<T>(loss);
  }
}

// logits, grad_logits: [rows, classes]; target, grad_losses: [rows]; stats: [rows, 2].
template <class T>
__global__ void cross_entropy_backward_kernel(const T* logits, const int64_t* target, const compute_t<T>* stats,
                                              const T* grad_losses, T* grad_logits, int64_t rows, int64_t classes,
                                              int64_t ignore_index, compute_t<T> smoothing, int* error_flag) {
  using C = compute_t<T>;
  const int64_t numel = rows * classes;
  const C spread = smoothing / static_cast<C>(classes);
  for (int64_t e = global_thread(); e < numel; e += grid_threads()) {
    int64_t row, j;
    div_mod(e, classes, row, j);
    const int64_t t = target[row];
    if (t == ignore_index) {
      grad_logits[e] = from_compute<T>(C(0));
      continue;
    }
    if (t < 0 || t >= classes) {
      if (j == 0) report_index_out_of_range(error_flag);
      grad_logits[e] = from_compute<T>(std::numeric_limits<C>::quiet_NaN());
      continue;
    }
    const C p = exp_of((to_compute(logits[e]) - stats[2 * row]) - stats[2 * row + 1]);
    const C q = j == t ? spread + (C(1) - smoothing) : spread;
    grad_logits[e] = from_compute<T>(to_compute(grad_losses[row]) * (p - q));
  }
}

void check_operands(const char* op, const DeviceContext& ctx, const Tensor& logits, const Tensor& target,
                    const Tensor& row_stats) {
  FLAME_CHECK(logits.dim() == 2 && logits.is_contiguous(), "{}: logits {} must be contiguous [N, C]", op,
              logits.describe());
  const int64_t n = logits.size(0), c = logits.size(1);
  FLAME_CHECK(c > 0 || n == 0, "{}: logits {} have no classes", op, logits.describe());
  FLAME_CHECK(target.dtype() == DType::I64 && target.is_contiguous() && target.numel() == n,
              "{}: target {} must be contiguous i64 with {} elements", op, target.describe(), n);
  const DType stats_dtype = logits.dtype() == DType::F64 ? DType::F64 : DType::F32;
  FLAME_CHECK(row_stats.dtype() == stats_dtype && row_stats.is_contiguous() && row_stats.numel() == 2 * n,
              "{}: row_stats {} must be contiguous {} [{}, 2]", op, row_stats.describe(), dtype_name(stats_dtype), n);
  FLAME_CHECK(ctx.error_flag != nullptr, "{}: the CUDA context of device {} has no error flag", op, ctx.device);
}

}  // namespace

void launch_cross_entropy_forward(DeviceContext& ctx, const Tensor& logits, const Tensor& target, const Tensor& losses,
                                  const Tensor& row_stats, int64_t ignore_index, double label_smoothing) {
  const char* op = "cross_entropy_forward";
  check_operands(op, ctx, logits, target, row_stats);
  const int64_t rows = logits.size(0), classes = logits.size(1);
  FLAME_CHECK(losses.dtype() == logits.dtype() && losses.is_contiguous() && losses.numel() == rows,
              "{}: losses {} must be contiguous {} with {} elements", op, losses.describe(), dtype_name(logits.dtype()),
              rows);
  if (rows == 0) return;
  dispatch_dtype<DispatchSet::Floating>(logits.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const auto* x = static_cast<const T*>(logits.data_ptr());
    const auto* t = static_cast<const int64_t*>(target.data_ptr());
    auto* out = static_cast<T*>(losses.data_ptr());
    auto* stats = static_cast<C*>(row_stats.data_ptr());
    const C eps = static_cast<C>(label_smoothing);
    const RowLaunch launch = row_launch(rows, classes);
    cross_entropy_forward_kernel<T><<<launch.blocks, launch.threads, 0, ctx.stream>>>(
        x, t, out, stats, rows, classes, ignore_index, eps, launch.group, ctx.error_flag);
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

void launch_cross_entropy_backward(DeviceContext& ctx, const Tensor& logits, const Tensor& target,
                                   const Tensor& row_stats, const Tensor& grad_losses, const Tensor& grad_logits,
                                   int64_t ignore_index, double label_smoothing) {
  const char* op = "cross_entropy_backward";
  check_operands(op, ctx, logits, target, row_stats);
  const int64_t rows = logits.size(0), classes = logits.size(1);
  FLAME_CHECK(grad_losses.dtype() == logits.dtype() && grad_losses.is_contiguous() && grad_losses.numel() == rows,
              "{}: grad_losses {} must be contiguous {} with {} elements", op, grad_losses.describe(),
              dtype_name(logits.dtype()), rows);
  FLAME_CHECK(
      grad_logits.dtype() == logits.dtype() && grad_logits.is_contiguous() && grad_logits.shape() == logits.shape(),
      "{}: grad_logits {} must be contiguous with the shape and dtype of logits {}", op, grad_logits.describe(),
      logits.describe());
  const int64_t numel = rows * classes;
  if (numel == 0) return;
  dispatch_dtype<DispatchSet::Floating>(logits.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    cross_entropy_backward_kernel<T><<<grid_for(ctx, numel, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        static_cast<const T*>(logits.data_ptr()), static_cast<const int64_t*>(target.data_ptr()),
        static_cast<const C*>(row_stats.data_ptr()), static_cast<const T*>(grad_losses.data_ptr()),
        static_cast<T*>(grad_logits.data_ptr()), rows, classes, ignore_index, static_cast<C>(label_smoothing),
        ctx.error_flag);
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
