// Reductions over the middle dimension of a contiguous [outer, reduced, inner] tensor:
// sum, mean, max, min, argmax and variance (Welford), accumulated per Note [cuda compute types].
//
// Two kernel shapes: inner == 1 reduces each row with one block, or with one warp when rows have
// at most 1024 elements (coalesced loads, warp-shuffle reductions); inner > 1, and rows shorter
// than a warp, give each thread one (outer, inner) column that it loops over (neighbouring
// threads read neighbouring elements). When there are too few rows or columns to fill the
// device, reduced is split into chunks whose partial states go to a workspace, and a third
// kernel combines them.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include <cmath>
#include <limits>

#include "core/cuda/launchers.h"
#include "core/storage.h"

namespace flame::cuda {
namespace {

// --- reducers: identity, update with one element, combine two states, finalize -------------

// Sum, or Mean when `mean` (sum / divisor).
template <class T>
struct SumReducer {
  using In = T;
  using Out = T;
  using C = compute_t<T>;
  using Acc = C;
  bool mean;
  C divisor;
  __device__ Acc identity() const { return C(0); }
  __device__ Acc update(Acc acc, C x, int64_t) const { return wrapping_add(acc, x); }
  __device__ Acc combine(Acc a, Acc b) const { return wrapping_add(a, b); }
  __device__ Out finalize(Acc acc) const { return from_compute<T>(mean ? acc / divisor : acc); }
};

// Max (is_max) or Min; NaN propagates.
template <class T>
struct ExtremumReducer {
  using In = T;
  using Out = T;
  using C = compute_t<T>;
  using Acc = C;
  bool is_max;
  __device__ Acc identity() const {
    if constexpr (std::is_floating_point_v<C>) {
      return is_max ? -std::numeric_limits<C>::infinity() : std::numeric_limits<C>::infinity();
    } else {
      return is_max ? std::numeric_limits<C>::lowest() : std::numeric_limits<C>::max();
    }
  }
  __device__ Acc combine(Acc a, Acc b) const {
    if (is_nan(a)) return a;
    if (is_nan(b)) return b;
    return (is_max ? b > a : b < a) ? b : a;
  }
  __device__ Acc update(Acc acc, C x, int64_t) const { return combine(acc, x); }
  __device__ Out finalize(Acc acc) const { return from_compute<T>(acc); }
};

// ArgMax: the first index of the largest value; NaN counts as the largest.
template <class C>
struct ArgMaxState {
  C value;
  int64_t index;
};

template <class T>
struct ArgMaxReducer {
  using In = T;
  using Out = int64_t;
  using C = compute_t<T>;
  using Acc = ArgMaxState<C>;
  __device__ Acc identity() const {
    if constexpr (std::is_floating_point_v<C>) {
      return Acc{-std::numeric_limits<C>::infinity(), std::numeric_limits<int64_t>::max()};
    } else {
      return Acc{std::numeric_limits<C>::lowest(), std::numeric_limits<int64_t>::max()};
    }
  }
  // True when state b should replace state a.
  __device__ static bool better(const Acc& b, const Acc& a) {
    const bool a_nan = is_nan(a.value), b_nan = is_nan(b.value);
    if (a_nan || b_nan) return a_nan && b_nan ? b.index < a.index : b_nan;
    if (b.value != a.value) return b.value > a.value;
    return b.index < a.index;
  }
  __device__ Acc combine(Acc a, Acc b) const { return better(b, a) ? b : a; }
  __device__ Acc update(Acc acc, C x, int64_t j) const { return combine(acc, Acc{x, j}); }
  __device__ Out finalize(Acc acc) const { return acc.index; }
};

// Variance by Welford's update and Chan's combination: m2 / divisor, divisor = max(0, n - correction).
template <class C>
struct WelfordState {
  C mean;
  C m2;
  int64_t count;
};

// delta / count in Welford's update: the fast (2 ulp) division for float, where the exact one
// would make the kernel compute-bound; exact for double.
template <class C>
__device__ __forceinline__ C divide(C delta, C count) {
  if constexpr (std::is_same_v<C, float>) {
    return __fdividef(delta, count);
  } else {
    return delta / count;
  }
}

template <class T>
struct VarReducer {
  using In = T;
  using Out = T;
  using C = compute_t<T>;
  using Acc = WelfordState<C>;
  C divisor;
  __device__ Acc identity() const { return Acc{C(0), C(0), 0}; }
  __device__ Acc update(Acc acc, C x, int64_t) const {
    acc.count += 1;
    const C delta = x - acc.mean;
    acc.mean += divide(delta, static_cast<C>(acc.count));
    acc.m2 += delta * (x - acc.mean);
    return acc;
  }
  __device__ Acc combine(Acc a, Acc b) const {
    if (a.count == 0) return b;
    if (b.count == 0) return a;
    const int64_t count = a.count + b.count;
    const C delta = b.mean - a.mean;
    const C b_share = static_cast<C>(b.count) / static_cast<C>(count);
    Acc r;
    r.count = count;
    r.mean = a.mean + delta * b_share;
    r.m2 = a.m2 + b.m2 + delta * delta * static_cast<C>(a.count) * b_share;
    return r;
  }
  __device__ Out finalize(Acc acc) const { return from_compute<T>(acc.m2 / divisor); }
};

// --- kernels -------------------------------------------------------------------------------

// How the threads of a block share the row tasks: a warp per task (short rows, no block
// synchronisation) or the whole block per task.
enum class RowGroup { Warp, Block };

// in: [outer, reduced] (inner == 1). Task t = (row, chunk) reduces in[row, chunk range] with a
// group of threads; the result goes to out[row] when chunks == 1, else to partial[t]
// ([outer, chunks]).
template <class R>
__global__ void reduce_rows_kernel(R r, const typename R::In* in, typename R::Out* out,
                                   typename R::Acc* partial, int64_t outer, int64_t reduced,
                                   int64_t chunk_len, int64_t chunks, RowGroup group) {
  using Acc = typename R::Acc;
  __shared__ Acc shared[kWarpSize];
  const auto combine = [&r](Acc a, Acc b) { return r.combine(a, b); };
  const int group_size = group == RowGroup::Warp ? kWarpSize : blockDim.x;
  const int groups_per_block = blockDim.x / group_size;
  const int rank = threadIdx.x % group_size;
  // In Block mode every thread of a block has the same tasks, as block_reduce requires.
  const int64_t first = static_cast<int64_t>(blockIdx.x) * groups_per_block + threadIdx.x / group_size;
  const int64_t step = static_cast<int64_t>(gridDim.x) * groups_per_block;
  for (int64_t task = first; task < outer * chunks; task += step) {
    int64_t row, chunk;
    div_mod(task, chunks, row, chunk);
    const int64_t begin = chunk * chunk_len;
    const int64_t end = min(reduced, begin + chunk_len);
    const typename R::In* p = in + row * reduced;
    Acc acc = r.identity();
#pragma unroll 4
    for (int64_t j = begin + rank; j < end; j += group_size) acc = r.update(acc, to_compute(p[j]), j);
    acc = group == RowGroup::Warp ? warp_reduce(acc, combine) : block_reduce(acc, r.identity(), combine, shared);
    if (rank == 0) {
      if (chunks == 1) {
        out[row] = r.finalize(acc);
      } else {
        partial[task] = acc;
      }
    }
  }
}

// in: [outer, reduced, inner]. Thread task t = (o, chunk, i) reduces in[o, chunk range, i];
// the result goes to out[o, i] when chunks == 1, else to partial[t] ([outer, chunks, inner]).
template <class R>
__global__ void reduce_columns_kernel(R r, const typename R::In* in, typename R::Out* out,
                                      typename R::Acc* partial, int64_t outer, int64_t reduced,
                                      int64_t inner, int64_t chunk_len, int64_t chunks) {
  using Acc = typename R::Acc;
  const int64_t tasks = outer * chunks * inner;
  for (int64_t task = global_thread(); task < tasks; task += grid_threads()) {
    int64_t rest, i, o, chunk;
    div_mod(task, inner, rest, i);
    div_mod(rest, chunks, o, chunk);
    const int64_t begin = chunk * chunk_len;
    const int64_t end = min(reduced, begin + chunk_len);
    const typename R::In* p = in + (o * reduced) * inner + i;
    Acc acc = r.identity();
#pragma unroll 4
    for (int64_t j = begin; j < end; ++j) acc = r.update(acc, to_compute(p[j * inner]), j);
    if (chunks == 1) {
      out[o * inner + i] = r.finalize(acc);
    } else {
      partial[task] = acc;
    }
  }
}

// partial: [outer, chunks, inner] states -> out: [outer, inner]; one block per output combines
// its chunks (threads stride over chunks, then a block reduction).
template <class R>
__global__ void reduce_partials_kernel(R r, const typename R::Acc* partial, typename R::Out* out,
                                       int64_t outer, int64_t inner, int64_t chunks) {
  using Acc = typename R::Acc;
  __shared__ Acc shared[kWarpSize];
  const auto combine = [&r](Acc a, Acc b) { return r.combine(a, b); };
  for (int64_t task = blockIdx.x; task < outer * inner; task += gridDim.x) {
    int64_t o, i;
    div_mod(task, inner, o, i);
    const Acc* p = partial + o * chunks * inner + i;
    Acc acc = r.identity();
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) acc = r.combine(acc, p[c * inner]);
    acc = block_reduce(acc, r.identity(), combine, shared);
    if (threadIdx.x == 0) out[task] = r.finalize(acc);
  }
}

// --- launch --------------------------------------------------------------------------------

int64_t sm_count(const DeviceContext& ctx) {
  return ctx.properties.multiProcessorCount > 0 ? ctx.properties.multiProcessorCount : 132;
}

// Rows up to this length are reduced by one warp each (eight rows per block).
constexpr int64_t kWarpRowLimit = 1024;

// Threads per block for rows of `reduced` elements: about 8 elements per thread, 32..256.
int row_block_size(int64_t reduced) {
  int threads = kWarpSize;
  while (threads < 256 && threads * 8 < reduced) threads *= 2;
  return threads;
}

template <class R>
void run_reduce(DeviceContext& ctx, const R& r, const Tensor& in, const Tensor& out, int64_t outer,
                int64_t reduced, int64_t inner) {
  using Acc = typename R::Acc;
  const auto* in_data = static_cast<const typename R::In*>(in.data_ptr());
  auto* out_data = static_cast<typename R::Out*>(out.data_ptr());
  const int64_t sms = sm_count(ctx);
  // Short rows (inner == 1, reduced < 32) go to the column kernel: a thread per row wastes less
  // than a mostly idle warp per row.
  const bool rows = inner == 1 && reduced >= kWarpSize;
  int64_t chunks = 1;
  if (rows) {
    // Split long rows when there are too few rows for ~8 blocks per SM.
    const int64_t target_blocks = 8 * sms;
    if (outer < target_blocks && reduced > 8192) {
      chunks = std::min(ceil_div(reduced, 4096), ceil_div(target_blocks, outer));
    }
  } else {
    // Split long columns when there are too few columns for ~2048 threads per SM; each thread
    // still reduces at least 32 elements.
    const int64_t target_threads = 2048 * sms;
    if (outer * inner < target_threads && reduced > 64) {
      chunks = std::min(ceil_div(reduced, 32), ceil_div(target_threads, outer * inner));
    }
  }
  int64_t chunk_len = std::max<int64_t>(ceil_div(reduced, chunks), 1);
  if (rows && chunks > 1) chunk_len = ceil_div(chunk_len, 1024) * 1024;  // aligned row chunks
  chunks = std::max<int64_t>(ceil_div(reduced, chunk_len), 1);

  std::unique_ptr<Storage> workspace;  // [outer, chunks, inner] Acc, only when chunks > 1
  Acc* partial = nullptr;
  if (chunks > 1) {
    // Released when this launcher returns, with its kernels still queued: safe by Note [caching
    // allocator streams] (core/cuda/caching_allocator.h), as both run on ctx.stream.
    workspace = std::make_unique<Storage>(cuda_device(ctx.device),
                                          static_cast<size_t>(outer * chunks * inner) * sizeof(Acc));
    partial = static_cast<Acc*>(workspace->data());
  }
  const auto max_blocks = [](int64_t tasks) {
    return static_cast<unsigned>(std::min<int64_t>(tasks, int64_t{1} << 30));
  };
  if (rows && chunk_len <= kWarpRowLimit) {
    reduce_rows_kernel<R><<<max_blocks(ceil_div(outer * chunks, kBlockSize / kWarpSize)), kBlockSize, 0, ctx.stream>>>(
        r, in_data, out_data, partial, outer, reduced, chunk_len, chunks, RowGroup::Warp);
  } else if (rows) {
    reduce_rows_kernel<R><<<max_blocks(outer * chunks), row_block_size(chunk_len), 0, ctx.stream>>>(
        r, in_data, out_data, partial, outer, reduced, chunk_len, chunks, RowGroup::Block);
  } else {
    reduce_columns_kernel<R><<<grid_for(ctx, outer * chunks * inner, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        r, in_data, out_data, partial, outer, reduced, inner, chunk_len, chunks);
  }
  if (chunks > 1) {
    FLAME_CUDA_LAUNCH_CHECK();
    reduce_partials_kernel<R><<<max_blocks(outer * inner), row_block_size(chunks), 0, ctx.stream>>>(
        r, partial, out_data, outer, inner, chunks);
  }
}

}  // namespace

void launch_reduce(DeviceContext& ctx, ReduceOp op, const Tensor& in, const Tensor& out, int64_t outer,
                   int64_t reduced, int64_t inner, int64_t correction) {
  const char* name = op_name(op);
  FLAME_CHECK(outer >= 0 && reduced >= 0 && inner >= 0, "{}: negative extents [{}, {}, {}]", name, outer,
              reduced, inner);
  FLAME_CHECK(in.is_contiguous() && in.numel() == outer * reduced * inner,
              "{}: input {} must be contiguous with {} x {} x {} elements", name, in.describe(), outer, reduced,
              inner);
  FLAME_CHECK(out.is_contiguous() && out.numel() == outer * inner,
              "{}: output {} must be contiguous with {} x {} elements", name, out.describe(), outer, inner);
  const DType out_dtype = op == ReduceOp::ArgMax ? DType::I64 : in.dtype();
  FLAME_CHECK(out.dtype() == out_dtype, "{}: output is {} but {} input {} needs a {} output", name,
              dtype_name(out.dtype()), name, in.describe(), dtype_name(out_dtype));
  const bool float_only = op == ReduceOp::Mean || op == ReduceOp::Var;
  if (op == ReduceOp::Max || op == ReduceOp::Min || op == ReduceOp::ArgMax) {
    FLAME_CHECK(reduced > 0 || outer * inner == 0,
                "{}: cannot reduce an empty dimension of {} (it has no {}); reduce a non-empty dimension", name,
                in.describe(), op == ReduceOp::Min ? "minimum" : "maximum");
  }
  FLAME_CHECK(!float_only || is_floating(in.dtype()), "{}: input {} must be f32, f64, f16 or bf16; convert with to()",
              name, in.describe());
  if (outer * inner == 0) return;
  dispatch_dtype<DispatchSet::FloatingAndInt>(in.dtype(), name, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    switch (op) {
      case ReduceOp::Sum:
      case ReduceOp::Mean:
        run_reduce(ctx, SumReducer<T>{op == ReduceOp::Mean, static_cast<C>(reduced)}, in, out, outer, reduced,
                   inner);
        break;
      case ReduceOp::Max:
      case ReduceOp::Min:
        run_reduce(ctx, ExtremumReducer<T>{op == ReduceOp::Max}, in, out, outer, reduced, inner);
        break;
      case ReduceOp::ArgMax:
        run_reduce(ctx, ArgMaxReducer<T>{}, in, out, outer, reduced, inner);
        break;
      case ReduceOp::Var:
        if constexpr (std::is_floating_point_v<C>) {
          const C divisor = static_cast<C>(std::max<int64_t>(0, reduced - correction));
          run_reduce(ctx, VarReducer<T>{divisor}, in, out, outer, reduced, inner);
        }
        break;
    }
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
