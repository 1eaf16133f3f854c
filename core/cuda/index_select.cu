// index_select: out[o, j, i] = in[o, index[j], i] for contiguous in [outer, in_size, inner],
// index [n] (i32 or i64) and out [outer, n, inner]. Elements are only moved, so the kernel is
// instantiated per element size, not per dtype. An index outside [0, in_size) sets the device
// error flag (raised at the next synchronisation) and writes zero bits instead of reading.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include "core/cuda/launchers.h"

namespace flame::cuda {
namespace {

// in: [outer, in_size, inner], index: [n], out: [outer, n, inner]; U is an element's bit pattern.
template <class U, class I>
__global__ void index_select_kernel(const U* in, const I* index, U* out, int64_t outer, int64_t in_size,
                                    int64_t inner, int64_t n, int* error_flag) {
  const int64_t total = outer * n * inner;
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    int64_t row, i, o, j;
    div_mod(e, inner, row, i);
    div_mod(row, n, o, j);
    const int64_t source = static_cast<int64_t>(index[j]);
    if (source < 0 || source >= in_size) {
      report_index_out_of_range(error_flag);
      out[e] = U(0);
      continue;
    }
    out[e] = in[(o * in_size + source) * inner + i];
  }
}

}  // namespace

void launch_index_select(DeviceContext& ctx, const Tensor& in, const Tensor& index, const Tensor& out, int64_t outer,
                         int64_t in_size, int64_t inner) {
  FLAME_CHECK(outer >= 0 && in_size >= 0 && inner >= 0, "index_select: negative extents [{}, {}, {}]", outer,
              in_size, inner);
  FLAME_CHECK(index.dim() <= 1 && index.is_contiguous() && (index.dtype() == DType::I32 || index.dtype() == DType::I64),
              "index_select: index {} must be a contiguous 1-D i32 or i64 tensor", index.describe());
  const int64_t n = index.numel();
  FLAME_CHECK(in.is_contiguous() && in.numel() == outer * in_size * inner,
              "index_select: input {} must be contiguous with {} x {} x {} elements", in.describe(), outer, in_size,
              inner);
  FLAME_CHECK(out.is_contiguous() && out.numel() == outer * n * inner,
              "index_select: output {} must be contiguous with {} x {} x {} elements", out.describe(), outer, n,
              inner);
  FLAME_CHECK(out.dtype() == in.dtype(), "index_select: output is {} but the input is {}; they must share a dtype",
              dtype_name(out.dtype()), in.describe());
  FLAME_CHECK(ctx.error_flag != nullptr, "index_select: the CUDA context of device {} has no error flag", ctx.device);
  const int64_t total = outer * n * inner;
  if (total == 0) return;
  const unsigned grid = grid_for(ctx, total, kBlockSize);
  dispatch_bytes(in.element_size(), "index_select", [&](auto tag) {
    using U = typename decltype(tag)::type;
    const U* x = static_cast<const U*>(in.data_ptr());
    U* y = static_cast<U*>(out.data_ptr());
    if (index.dtype() == DType::I32) {
      index_select_kernel<U, int32_t><<<grid, kBlockSize, 0, ctx.stream>>>(
          x, static_cast<const int32_t*>(index.data_ptr()), y, outer, in_size, inner, n, ctx.error_flag);
    } else {
      index_select_kernel<U, int64_t><<<grid, kBlockSize, 0, ctx.stream>>>(
          x, static_cast<const int64_t*>(index.data_ptr()), y, outer, in_size, inner, n, ctx.error_flag);
    }
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
