// gather (torch.gather): out[p] = in[p with its coordinate along dim replaced by index[p]] for
// every position p of index; in, index (i64) and out (index's shape) are contiguous. Elements are
// only moved, so the kernel is instantiated per element size. An index outside
// [0, in.size(dim)) sets the device error flag (raised at the next synchronisation) and writes
// zero bits instead of reading.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include "core/cuda/launchers.h"

namespace flame::cuda {
namespace {

// in: indexed by g.strides; index, out: [numel] contiguous over g.sizes.
template <class U>
__global__ void gather_kernel(const U* in, const int64_t* index, U* out, int64_t numel, IndexedGeometry g,
                              int* error_flag) {
  for (int64_t e = global_thread(); e < numel; e += grid_threads()) {
    const int64_t position = index[e];
    if (position < 0 || position >= g.dim_size) {
      report_index_out_of_range(error_flag);
      out[e] = U(0);
      continue;
    }
    out[e] = in[indexed_offset(g, e, position)];
  }
}

}  // namespace

void launch_gather(DeviceContext& ctx, const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) {
  FLAME_CHECK(index.dtype() == DType::I64 && index.is_contiguous(), "gather: index {} must be contiguous i64",
              index.describe());
  FLAME_CHECK(in.is_contiguous(), "gather: input {} must be contiguous", in.describe());
  FLAME_CHECK(out.is_contiguous() && out.shape() == index.shape(),
              "gather: output {} must be contiguous with the index's shape {}", out.describe(),
              shape_str(index.shape()));
  FLAME_CHECK(out.dtype() == in.dtype(), "gather: output is {} but the input is {}; they must share a dtype",
              dtype_name(out.dtype()), in.describe());
  FLAME_CHECK(ctx.error_flag != nullptr, "gather: the CUDA context of device {} has no error flag", ctx.device);
  const IndexedGeometry geometry = make_indexed_geometry("gather", index, in, dim);
  const int64_t numel = index.numel();
  if (numel == 0) return;
  const unsigned grid = grid_for(ctx, numel, kBlockSize);
  dispatch_bytes(in.element_size(), "gather", [&](auto tag) {
    using U = typename decltype(tag)::type;
    gather_kernel<U><<<grid, kBlockSize, 0, ctx.stream>>>(static_cast<const U*>(in.data_ptr()),
                                                          static_cast<const int64_t*>(index.data_ptr()),
                                                          static_cast<U*>(out.data_ptr()), numel, geometry,
                                                          ctx.error_flag);
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
