// softmax and log_softmax over the middle dimension of a contiguous [outer, reduced, inner]
// tensor, stable (the row maximum is subtracted first), computed in float (double for f64).
//
// inner == 1: one block per row, reading it twice (an online maximum-and-sum pass, then the
// output pass), or one warp per row for rows of at most 1024 elements (maximum, sum and output
// passes, the later ones from cache); inner > 1: one thread per (outer, inner) column looping
// over reduced (maximum, sum, output). log_softmax is (x - max) - log(sum), as accurate
// as the CPU reference's form.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include <cmath>
#include <limits>

#include "core/cuda/launchers.h"
#include "core/cuda/row_reduce.cuh"

namespace flame::cuda {
namespace {

enum class SoftmaxKind { Plain, Log };

// NaN-propagating maximum.
template <class C>
__device__ __forceinline__ C nan_max(C a, C b) {
  return (is_nan(a) || a >= b) ? a : b;
}

// MaxSum (core/cuda/row_reduce.cuh) here: NaN inputs make the sum NaN and +inf inputs make it
// exp(inf - inf) = NaN, so such rows come out all NaN, as with the max-then-sum reference.
// Adds kUnroll values (absent ones are -inf) to a: one rescale, kUnroll independent exponentials.
template <int kUnroll, class C>
__device__ __forceinline__ MaxSum<C> max_sum_update(MaxSum<C> a, const C (&x)[kUnroll]) {
  C max = a.max;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) max = x[u] > max ? x[u] : max;  // NaN never becomes the max
  if (max == -std::numeric_limits<C>::infinity()) {  // nothing but -inf (and NaN) so far
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) a.sum = isnan(x[u]) ? x[u] : a.sum;
    return a;
  }
  if (max > a.max) {
    a.sum *= exp_of(a.max - max);
    a.max = max;
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) a.sum += exp_of(x[u] - max);
  return a;
}
// in, out: [outer, reduced]; each group of threads handles one row at a time. A warp (short
// rows, which stay in cache) takes a maximum pass and a sum pass; a block takes one MaxSum pass.
// Then one pass writes the output.
template <class T>
__global__ void softmax_rows_kernel(const T* in, T* out, int64_t outer, int64_t reduced, SoftmaxKind kind,
                                    RowGroup group) {
  using C = compute_t<T>;
  using V = MaxSum<C>;
  __shared__ V shared[kWarpSize];
  __shared__ V broadcast;
  const auto combine = [](V a, V b) { return max_sum_combine(a, b); };
  const auto max_op = [](C a, C b) { return nan_max(a, b); };
  const auto sum_op = [](C a, C b) { return a + b; };
  const C lowest = -std::numeric_limits<C>::infinity();
  const int group_size = group == RowGroup::Warp ? kWarpSize : blockDim.x;
  const int groups_per_block = blockDim.x / group_size;
  const int rank = threadIdx.x % group_size;
  // In Block mode every thread of a block has the same rows, as block_reduce requires.
  const int64_t first = static_cast<int64_t>(blockIdx.x) * groups_per_block + threadIdx.x / group_size;
  const int64_t step = static_cast<int64_t>(gridDim.x) * groups_per_block;
  for (int64_t row = first; row < outer; row += step) {
    const T* x = in + row * reduced;
    T* y = out + row * reduced;
    C m = lowest, sum = 0;
    if (group == RowGroup::Warp) {
      for (int64_t j = rank; j < reduced; j += group_size) m = nan_max(m, to_compute(x[j]));
      m = warp_all_reduce(m, max_op);
      for (int64_t j = rank; j < reduced; j += group_size) sum += exp_of(to_compute(x[j]) - m);
      sum = warp_all_reduce(sum, sum_op);
    } else {
      constexpr int kUnroll = 4;
      V v{lowest, C(0)};
      for (int64_t j = rank; j < reduced; j += kUnroll * group_size) {
        C values[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t k = j + u * group_size;
          values[u] = k < reduced ? to_compute(x[k]) : lowest;
        }
        v = max_sum_update(v, values);
      }
      v = block_all_reduce(v, V{lowest, C(0)}, combine, shared, &broadcast);
      m = v.max;
      sum = v.sum;
    }
    if (kind == SoftmaxKind::Log) {
      const C log_sum = log_of(sum);
      for (int64_t j = rank; j < reduced; j += group_size) y[j] = from_compute<T>((to_compute(x[j]) - m) - log_sum);
    } else {
      const C scale = C(1) / sum;
      for (int64_t j = rank; j < reduced; j += group_size) y[j] = from_compute<T>(exp_of(to_compute(x[j]) - m) * scale);
    }
  }
}

// in, out: [outer, reduced, inner]; one thread per (outer, inner) column.
template <class T>
__global__ void softmax_columns_kernel(const T* in, T* out, int64_t outer, int64_t reduced, int64_t inner,
                                       SoftmaxKind kind) {
  using C = compute_t<T>;
  for (int64_t task = global_thread(); task < outer * inner; task += grid_threads()) {
    int64_t o, i;
    div_mod(task, inner, o, i);
    const T* x = in + o * reduced * inner + i;
    T* y = out + o * reduced * inner + i;
    C m = -std::numeric_limits<C>::infinity();
    for (int64_t j = 0; j < reduced; ++j) m = nan_max(m, to_compute(x[j * inner]));
    C s = 0;
    for (int64_t j = 0; j < reduced; ++j) s += exp_of(to_compute(x[j * inner]) - m);
    if (kind == SoftmaxKind::Log) {
      const C log_sum = log_of(s);
      for (int64_t j = 0; j < reduced; ++j) y[j * inner] = from_compute<T>((to_compute(x[j * inner]) - m) - log_sum);
    } else {
      const C scale = C(1) / s;
      for (int64_t j = 0; j < reduced; ++j) {
        y[j * inner] = from_compute<T>(exp_of(to_compute(x[j * inner]) - m) * scale);
      }
    }
  }
}

}  // namespace

void launch_softmax(DeviceContext& ctx, const Tensor& in, const Tensor& out, int64_t outer, int64_t reduced,
                    int64_t inner, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  FLAME_CHECK(outer >= 0 && reduced >= 0 && inner >= 0, "{}: negative extents [{}, {}, {}]", name, outer,
              reduced, inner);
  const int64_t numel = outer * reduced * inner;
  FLAME_CHECK(in.is_contiguous() && in.numel() == numel, "{}: input {} must be contiguous with {} x {} x {} elements",
              name, in.describe(), outer, reduced, inner);
  FLAME_CHECK(out.is_contiguous() && out.numel() == numel,
              "{}: output {} must be contiguous with {} x {} x {} elements", name, out.describe(), outer, reduced,
              inner);
  FLAME_CHECK(out.dtype() == in.dtype(), "{}: output is {} but the input is {}; they must share a dtype", name,
              dtype_name(out.dtype()), in.describe());
  if (numel == 0) return;
  const SoftmaxKind kind = log ? SoftmaxKind::Log : SoftmaxKind::Plain;
  dispatch_dtype<DispatchSet::Floating>(in.dtype(), name, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(in.data_ptr());
    T* y = static_cast<T*>(out.data_ptr());
    if (inner == 1) {
      const RowLaunch launch = row_launch(outer, reduced);
      softmax_rows_kernel<T><<<launch.blocks, launch.threads, 0, ctx.stream>>>(x, y, outer, reduced, kind,
                                                                               launch.group);
    } else {
      softmax_columns_kernel<T><<<grid_for(ctx, outer * inner, kBlockSize), kBlockSize, 0, ctx.stream>>>(
          x, y, outer, reduced, inner, kind);
    }
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
