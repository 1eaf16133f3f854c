// scatter_add (torch.scatter_add_): out[p with its coordinate along dim replaced by index[p]]
// += src[p] for every position p of index; out (in place), index (i64) and src (index's shape)
// are contiguous. Additions use atomics, so the order of float additions into one element (and
// hence the rounding) may vary between runs. An index outside [0, out.size(dim)) sets the device
// error flag (raised at the next synchronisation) and adds nothing.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include "core/cuda/launchers.h"

namespace flame::cuda {
namespace {

template <class T>
__device__ __forceinline__ void atomic_add(T* address, T value) {
  if constexpr (std::is_same_v<T, int64_t>) {
    // Two's complement: adding the unsigned pattern wraps exactly like int64 addition.
    atomicAdd(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(value));
  } else {
    atomicAdd(address, value);  // float, double, int, __half and __nv_bfloat16 (sm_80+) overloads
  }
}

// out: indexed by g.strides; index, src: [numel] contiguous over g.sizes.
template <class T>
__global__ void scatter_add_kernel(T* out, const int64_t* index, const T* src, int64_t numel, IndexedGeometry g,
                                   int* error_flag) {
  for (int64_t e = global_thread(); e < numel; e += grid_threads()) {
    const int64_t position = index[e];
    if (position < 0 || position >= g.dim_size) {
      report_index_out_of_range(error_flag);
      continue;
    }
    atomic_add(out + indexed_offset(g, e, position), src[e]);
  }
}

}  // namespace

void launch_scatter_add(DeviceContext& ctx, const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  FLAME_CHECK(index.dtype() == DType::I64 && index.is_contiguous(), "scatter_add: index {} must be contiguous i64",
              index.describe());
  FLAME_CHECK(out.is_contiguous(), "scatter_add: the updated tensor {} must be contiguous", out.describe());
  FLAME_CHECK(src.is_contiguous() && src.shape() == index.shape(),
              "scatter_add: src {} must be contiguous with the index's shape {}", src.describe(),
              shape_str(index.shape()));
  FLAME_CHECK(src.dtype() == out.dtype(),
              "scatter_add: src is {} but the updated tensor is {}; they must share a dtype", dtype_name(src.dtype()),
              out.describe());
  FLAME_CHECK(ctx.error_flag != nullptr, "scatter_add: the CUDA context of device {} has no error flag", ctx.device);
  const IndexedGeometry geometry = make_indexed_geometry("scatter_add", index, out, dim);
  const int64_t numel = index.numel();
  if (numel == 0) return;
  const unsigned grid = grid_for(ctx, numel, kBlockSize);
  dispatch_dtype<DispatchSet::FloatingAndInt>(out.dtype(), "scatter_add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    scatter_add_kernel<T><<<grid, kBlockSize, 0, ctx.stream>>>(static_cast<T*>(out.data_ptr()),
                                                              static_cast<const int64_t*>(index.data_ptr()),
                                                              static_cast<const T*>(src.data_ptr()), numel,
                                                              geometry, ctx.error_flag);
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
