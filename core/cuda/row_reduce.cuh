// Row-wise reductions shared by the softmax and cross-entropy kernels: a row is handled by one
// warp (rows of at most kWarpRowLimit elements, eight rows per block) or by a whole block, and the
// online (maximum, sum of exp(x - maximum)) pair that lets one pass over a row replace two.
// Include after core/cuda/device_types.cuh.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace flame::cuda {

/// Rows up to this length are handled by one warp each.
constexpr int64_t kWarpRowLimit = 1024;

/// How the threads of a block share rows: a warp per row (short rows) or the whole block per row.
enum class RowGroup { Warp, Block };

/// The launch shape for `rows` rows of `length` elements: kBlockSize threads holding a warp per
/// row, or one block per row with enough threads for about four elements each (at most 512).
struct RowLaunch {
  unsigned blocks;
  int threads;
  RowGroup group;
};
inline RowLaunch row_launch(int64_t rows, int64_t length) {
  if (length <= kWarpRowLimit) {
    const int64_t blocks = std::min<int64_t>(ceil_div(rows, kBlockSize / kWarpSize), int64_t{1} << 30);
    return {static_cast<unsigned>(blocks), kBlockSize, RowGroup::Warp};
  }
  int threads = kWarpSize;
  while (threads < 512 && threads * 4 < length) threads *= 2;
  return {static_cast<unsigned>(std::min<int64_t>(rows, int64_t{1} << 30)), threads, RowGroup::Block};
}

/// Running maximum and sum of exp(x - max) of part of a row (the online softmax normaliser).
/// How single values are added differs between the kernels (their inf and NaN rules); combining
/// two partial results is shared.
template <class C>
struct MaxSum {
  C max;
  C sum;
};

template <class C>
__device__ __forceinline__ MaxSum<C> max_sum_combine(MaxSum<C> a, MaxSum<C> b) {
  const C max = a.max > b.max ? a.max : b.max;
  if (max == -std::numeric_limits<C>::infinity()) return MaxSum<C>{max, a.sum + b.sum};
  return MaxSum<C>{max, a.sum * exp_of(a.max - max) + b.sum * exp_of(b.max - max)};
}

/// Combines `value` over the warp and returns the result to every lane.
template <class V, class Op>
__device__ __forceinline__ V warp_all_reduce(V value, Op op) {
  return shuffle_from(warp_reduce(value, op), 0);
}

/// Combines `value` over the block and returns the result to every thread. `shared` is [32] and
/// `broadcast` [1] in shared memory.
template <class V, class Op>
__device__ V block_all_reduce(V value, V identity, Op op, V* shared, V* broadcast) {
  value = block_reduce(value, identity, op, shared);
  if (threadIdx.x == 0) *broadcast = value;
  __syncthreads();
  value = *broadcast;
  __syncthreads();  // *broadcast is rewritten by the next call
  return value;
}

/// Combines `value` over the row's group of threads and returns the result to each of them
/// (`shared` and `broadcast` as for block_all_reduce, used by RowGroup::Block only).
template <class V, class Op>
__device__ V group_all_reduce(V value, V identity, Op op, RowGroup group, V* shared, V* broadcast) {
  if (group == RowGroup::Warp) return warp_all_reduce(value, op);
  return block_all_reduce(value, identity, op, shared, broadcast);
}

}  // namespace flame::cuda
