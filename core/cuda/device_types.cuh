// Helpers shared by the ahead-of-time CUDA kernels (core/cuda/*.cu): element types per DType,
// conversions to and from the compute type, host-side dtype dispatch, warp/block reductions,
// launch geometry and cheap index arithmetic.
//
// Note [cuda compute types]
// f16 and bf16 are stored as __half / __nv_bfloat16 and computed in float; f32 in float, f64 in
// double; i32 and i64 in int64 (wrapping on overflow). Stores round to nearest even (f16/bf16
// through float) and integer stores truncate to the type's width, as the CPU backend does.
#pragma once

// Note [fmt under nvcc]: fmt 9 in C++20 mode breaks under nvcc (its front end rejects the
// consteval format-string check, and with __NVCC__ fmt drops constexpr from functions that its
// C++20 constexpr functions call). CUDA translation units use fmt's runtime-checked format
// strings and keep constexpr on; this header must therefore be included before anything that
// includes fmt (every .cu includes it first).
#if defined(__NVCC__)
#ifndef FMT_CONSTEVAL
#define FMT_CONSTEVAL
#endif
#ifndef FMT_USE_CONSTEXPR
#define FMT_USE_CONSTEXPR 1
#endif
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/cuda/context.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

namespace flame::cuda {

// --- compute types and conversions ---------------------------------------------------------

template <class T>
struct ComputeType {
  using type = int64_t;  // integer storage types
};
template <>
struct ComputeType<float> {
  using type = float;
};
template <>
struct ComputeType<double> {
  using type = double;
};
template <>
struct ComputeType<__half> {
  using type = float;
};
template <>
struct ComputeType<__nv_bfloat16> {
  using type = float;
};
/// The type an element of storage type T is computed in (Note [cuda compute types]).
template <class T>
using compute_t = typename ComputeType<T>::type;

/// An element of storage type T as its compute type.
template <class T>
__device__ __forceinline__ compute_t<T> to_compute(T value) {
  return static_cast<compute_t<T>>(value);
}
template <>
__device__ __forceinline__ float to_compute<__half>(__half value) {
  return __half2float(value);
}
template <>
__device__ __forceinline__ float to_compute<__nv_bfloat16>(__nv_bfloat16 value) {
  return __bfloat162float(value);
}

/// A compute value stored as T (round to nearest even for f16/bf16, through float).
template <class T, class C>
__device__ __forceinline__ T from_compute(C value) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(value));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(value));
  } else {
    return static_cast<T>(value);
  }
}

/// Addition that wraps for integers (no signed-overflow UB) and is plain + for floats.
template <class C>
__device__ __forceinline__ C wrapping_add(C a, C b) {
  if constexpr (std::is_integral_v<C>) {
    return static_cast<C>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  } else {
    return a + b;
  }
}

template <class C>
__device__ __forceinline__ bool is_nan(C value) {
  if constexpr (std::is_floating_point_v<C>) {
    return isnan(value);
  } else {
    return false;
  }
}

// exp and log in the compute type's precision (precise expf/logf for float, exp/log for double).
template <class C>
__device__ __forceinline__ C exp_of(C x) {
  if constexpr (std::is_same_v<C, double>) {
    return exp(x);
  } else {
    return expf(x);
  }
}

template <class C>
__device__ __forceinline__ C log_of(C x) {
  if constexpr (std::is_same_v<C, double>) {
    return log(x);
  } else {
    return logf(x);
  }
}

// --- host-side dtype dispatch --------------------------------------------------------------

template <class T>
struct TypeTag {
  using type = T;
};

enum class DispatchSet {
  Floating,           // f32, f64, f16, bf16
  FloatingAndInt,     // + i32, i64
  FloatingIntAndU8,   // + i32, i64, u8
};

/// Calls fn(TypeTag<T>{}) with T the storage type of `dtype`; raises flame::Error naming `op`
/// when `dtype` is outside kSet (only the types of kSet are instantiated).
template <DispatchSet kSet, class Fn>
void dispatch_dtype(DType dtype, const char* op, Fn&& fn) {
  constexpr bool kInts = kSet != DispatchSet::Floating;
  constexpr bool kU8 = kSet == DispatchSet::FloatingIntAndU8;
  switch (dtype) {
    case DType::F32: return fn(TypeTag<float>{});
    case DType::F64: return fn(TypeTag<double>{});
    case DType::F16: return fn(TypeTag<__half>{});
    case DType::BF16: return fn(TypeTag<__nv_bfloat16>{});
    case DType::I32:
      if constexpr (kInts) return fn(TypeTag<int32_t>{});
      break;
    case DType::I64:
      if constexpr (kInts) return fn(TypeTag<int64_t>{});
      break;
    case DType::U8:
      if constexpr (kU8) return fn(TypeTag<uint8_t>{});
      break;
    default:
      break;
  }
  FLAME_FAIL("{}: the CUDA kernel does not support dtype {}; expected one of f32, f64, f16, bf16{}{}", op,
             dtype_name(dtype), kInts ? ", i32, i64" : "", kU8 ? ", u8" : "");
}

/// Calls fn(TypeTag<U>{}) with U an unsigned integer type of `bytes` bytes (1, 2, 4 or 8), for
/// kernels that only move elements.
template <class Fn>
void dispatch_bytes(size_t bytes, const char* op, Fn&& fn) {
  switch (bytes) {
    case 1: return fn(TypeTag<uint8_t>{});
    case 2: return fn(TypeTag<uint16_t>{});
    case 4: return fn(TypeTag<uint32_t>{});
    case 8: return fn(TypeTag<uint64_t>{});
    default: FLAME_FAIL("{}: unsupported element size {} bytes", op, bytes);
  }
}

// --- warp and block reductions -------------------------------------------------------------

inline constexpr int kWarpSize = 32;

/// __shfl_down_sync for any trivially copyable value whose size is a multiple of 4 bytes.
template <class T>
__device__ __forceinline__ T shuffle_down(T value, int delta) {
  static_assert(sizeof(T) % 4 == 0, "shuffle_down needs a size multiple of 4 bytes");
  constexpr int kWords = sizeof(T) / 4;
  uint32_t words[kWords];
  memcpy(words, &value, sizeof(T));
#pragma unroll
  for (int w = 0; w < kWords; ++w) words[w] = __shfl_down_sync(0xffffffffu, words[w], delta);
  memcpy(&value, words, sizeof(T));
  return value;
}

/// __shfl_sync: `value` of lane `source`, for any type shuffle_down accepts.
template <class T>
__device__ __forceinline__ T shuffle_from(T value, int source) {
  constexpr int kWords = sizeof(T) / 4;
  uint32_t words[kWords];
  memcpy(words, &value, sizeof(T));
#pragma unroll
  for (int w = 0; w < kWords; ++w) words[w] = __shfl_sync(0xffffffffu, words[w], source);
  memcpy(&value, words, sizeof(T));
  return value;
}

/// Combines the values of a full warp; lane 0 holds the result.
template <class T, class Combine>
__device__ __forceinline__ T warp_reduce(T value, Combine combine) {
#pragma unroll
  for (int delta = kWarpSize / 2; delta > 0; delta /= 2) value = combine(value, shuffle_down(value, delta));
  return value;
}

/// Combines the values of every thread of a block (blockDim.x a multiple of 32, at most 1024);
/// thread 0 holds the result. `shared` is [32] in shared memory; it may be reused on return.
template <class T, class Combine>
__device__ T block_reduce(T value, T identity, Combine combine, T* shared) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  value = warp_reduce(value, combine);
  if (warps == 1) return value;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < warps ? shared[lane] : identity;
    value = warp_reduce(value, combine);
  }
  __syncthreads();
  return value;
}

// --- launch geometry and index arithmetic --------------------------------------------------

inline constexpr int kBlockSize = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Blocks for a grid-stride loop over `work` items with `threads` per block: enough to fill the
/// device several times over, never more than the work needs.
inline unsigned grid_for(const DeviceContext& ctx, int64_t work, int threads) {
  const int64_t sms = ctx.properties.multiProcessorCount > 0 ? ctx.properties.multiProcessorCount : 132;
  const int64_t blocks = std::min(ceil_div(work, threads), sms * 32);
  return static_cast<unsigned>(std::max<int64_t>(blocks, 1));
}

/// Index of this thread in a 1-D grid, and the grid's thread count (grid-stride loops).
__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

/// a / b and a % b for a >= 0, b > 0, in 32-bit arithmetic when both fit (far cheaper on the GPU).
__device__ __forceinline__ void div_mod(int64_t a, int64_t b, int64_t& quotient, int64_t& remainder) {
  if (((static_cast<uint64_t>(a) | static_cast<uint64_t>(b)) >> 32) == 0) {
    const uint32_t a32 = static_cast<uint32_t>(a), b32 = static_cast<uint32_t>(b);
    const uint32_t q = a32 / b32;
    quotient = q;
    remainder = a32 - q * b32;
  } else {
    quotient = a / b;
    remainder = a - quotient * b;
  }
}

/// Marks an out-of-range index in the device error flag (Note: raised at the next synchronisation
/// by check_device_errors()).
__device__ __forceinline__ void report_index_out_of_range(int* error_flag) {
  atomicExch(error_flag, static_cast<int>(DeviceError::IndexOutOfRange));
}

// --- gather / scatter_add geometry ---------------------------------------------------------

/// Passed by value to gather and scatter_add kernels: the shape of the iterated tensors (index,
/// and out for gather or src for scatter_add, all contiguous) and the strides of the indexed
/// tensor (in for gather, out for scatter_add) whose dimension `dim` the index selects.
struct IndexedGeometry {
  int ndim = 0;
  int dim = 0;
  int64_t dim_size = 0;            // the indexed tensor's size along dim
  int64_t sizes[kMaxDims] = {};    // iterated shape
  int64_t strides[kMaxDims] = {};  // indexed tensor's strides (elements)
};

/// Offset in the indexed tensor of the element at iterated position `e` (row-major over
/// g.sizes), with its coordinate along g.dim replaced by `position`.
__device__ __forceinline__ int64_t indexed_offset(const IndexedGeometry& g, int64_t e, int64_t position) {
  int64_t offset = 0;
  int64_t rest = e;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {  // unrolled so that g's arrays are indexed statically
    if (d >= g.ndim) continue;
    int64_t coordinate = rest;
    if (d > 0) div_mod(rest, g.sizes[d], rest, coordinate);
    offset += (d == g.dim ? position : coordinate) * g.strides[d];
  }
  return offset;
}

/// Checks torch.gather / scatter_add's shape rules for `index` against the indexed tensor
/// (same number of dims; index.size(d) <= indexed.size(d) for d != dim) and builds the geometry;
/// a 0-d tensor is treated as [1]. Raises flame::Error naming `op`.
inline IndexedGeometry make_indexed_geometry(const char* op, const Tensor& index, const Tensor& indexed,
                                             int64_t dim) {
  FLAME_CHECK(index.dim() == indexed.dim(), "{}: index {} and tensor {} must have the same number of dimensions",
              op, index.describe(), indexed.describe());
  FLAME_CHECK(index.dim() <= kMaxDims, "{}: at most {} dimensions are supported, got {}", op, kMaxDims,
              index.describe());
  const int64_t ndim = std::max<int64_t>(index.dim(), 1);
  if (dim < 0) dim += ndim;
  FLAME_CHECK(dim >= 0 && dim < ndim, "{}: dim {} is out of range for {}", op, dim, indexed.describe());
  IndexedGeometry g;
  g.ndim = static_cast<int>(ndim);
  g.dim = static_cast<int>(dim);
  if (index.dim() == 0) {
    g.sizes[0] = 1;
    g.strides[0] = 1;
    g.dim_size = 1;
    return g;
  }
  for (int64_t d = 0; d < ndim; ++d) {
    FLAME_CHECK(d == dim || index.size(d) <= indexed.size(d),
                "{}: index {} is larger than tensor {} in dimension {} (only dimension {} may differ freely)", op,
                index.describe(), indexed.describe(), d, dim);
    g.sizes[d] = index.size(d);
    g.strides[d] = indexed.stride(d);
  }
  g.dim_size = indexed.size(dim);
  return g;
}

}  // namespace flame::cuda
