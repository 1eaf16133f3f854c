// Batched matrix product through cuBLAS (one cublasGemmEx / cublasGemmStridedBatchedEx call).
//
// The operands are row-major (MatmulArgs, core/backend.h); cuBLAS is column-major. Row-major
// out[m, n] = a[m, k] @ b[k, n] is column-major out^T[n, m] = b^T[n, k] @ a^T[k, m], so cuBLAS
// gets b as its first operand and a as its second, with m and n swapped. A row-major operand read
// column-major already is its transpose (OP_N); a transposed one (column-major in its last two
// dims) needs OP_T.
#include <algorithm>
#include <climits>

#include "core/cuda/launchers.h"

namespace flame::cuda {
namespace {

struct GemmTypes {
  cudaDataType_t data;
  cublasComputeType_t compute;
};

// f32 computes in plain f32 (CUBLAS_COMPUTE_32F, no TF32); f16/bf16 accumulate in f32.
GemmTypes gemm_types(DType dtype) {
  switch (dtype) {
    case DType::F32: return {CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case DType::F64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F};
    case DType::F16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F};
    case DType::BF16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F};
    default:
      FLAME_FAIL("matmul: the CUDA backend supports f32, f64, f16 and bf16, got {}; convert with to()",
                 dtype_name(dtype));
  }
}

// The leading dimension cuBLAS gets for an operand stored column-major as `rows` x `cols` whose
// leading dimension `ld` steps across `cols`. When cols == 1 the step is never taken, so any
// value is equivalent and the smallest legal one is used (size-1 dims may have any stride).
int64_t leading_dimension(const char* operand, int64_t ld, int64_t rows, int64_t cols) {
  if (cols <= 1 && ld < rows) ld = std::max<int64_t>(rows, 1);
  FLAME_CHECK(ld >= std::max<int64_t>(rows, 1) && ld <= INT_MAX,
              "matmul: operand {} has leading dimension {} but its column-major storage has {} rows; expected "
              "a leading dimension in [{}, {}]",
              operand, ld, rows, std::max<int64_t>(rows, 1), INT_MAX);
  return ld;
}

}  // namespace

void launch_matmul(DeviceContext& ctx, const MatmulArgs& args) {
  const Tensor& a = args.a;
  const Tensor& b = args.b;
  const Tensor& out = args.out;
  FLAME_CHECK(a.dtype() == b.dtype() && a.dtype() == out.dtype(),
              "matmul: operands {} and {} and output {} must share one dtype", a.describe(), b.describe(),
              out.describe());
  const GemmTypes types = gemm_types(a.dtype());
  FLAME_CHECK(args.batch >= 0 && args.m >= 0 && args.n >= 0 && args.k >= 0,
              "matmul: negative extents batch {} m {} n {} k {}", args.batch, args.m, args.n, args.k);
  FLAME_CHECK(args.m <= INT_MAX && args.n <= INT_MAX && args.k <= INT_MAX && args.batch <= INT_MAX,
              "matmul: extents batch {} m {} n {} k {} exceed cuBLAS's 32-bit limit {}", args.batch, args.m, args.n,
              args.k, INT_MAX);
  FLAME_CHECK(out.is_contiguous() && out.numel() == args.batch * args.m * args.n,
              "matmul: output {} must be contiguous with {} x {} x {} elements", out.describe(), args.batch, args.m,
              args.n);
  if (args.batch == 0 || args.m == 0 || args.n == 0) return;
  if (args.k == 0) {  // empty sum: out = 0 (all-zero bits are 0 in every float dtype)
    FLAME_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), ctx.stream));
    return;
  }

  // cuBLAS's first operand is b (column-major n x k, or k x n when transposed), its second is a.
  const cublasOperation_t op_b = args.b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = args.a_transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int64_t ldb = args.b_transposed ? leading_dimension("b", args.ldb, args.k, args.n)
                                        : leading_dimension("b", args.ldb, args.n, args.k);
  const int64_t lda = args.a_transposed ? leading_dimension("a", args.lda, args.m, args.k)
                                        : leading_dimension("a", args.lda, args.k, args.m);
  const int n = static_cast<int>(args.n), m = static_cast<int>(args.m), k = static_cast<int>(args.k);

  const float alpha_f = 1.0f, beta_f = 0.0f;
  const double alpha_d = 1.0, beta_d = 0.0;
  const bool f64 = a.dtype() == DType::F64;
  const void* alpha = f64 ? static_cast<const void*>(&alpha_d) : static_cast<const void*>(&alpha_f);
  const void* beta = f64 ? static_cast<const void*>(&beta_d) : static_cast<const void*>(&beta_f);

  if (ctx.gemm_sm_target != ctx.gemm_sm_applied) {  // set_gemm_sm_target (core/cuda_device.h)
    FLAME_CUBLAS_CHECK(cublasSetSmCountTarget(ctx.cublas, ctx.gemm_sm_target));
    ctx.gemm_sm_applied = ctx.gemm_sm_target;
  }
  if (args.batch == 1) {
    FLAME_CUBLAS_CHECK(cublasGemmEx(ctx.cublas, op_b, op_a, n, m, k, alpha, b.data_ptr(), types.data,
                                    static_cast<int>(ldb), a.data_ptr(), types.data, static_cast<int>(lda), beta,
                                    out.data_ptr(), types.data, n, types.compute, CUBLAS_GEMM_DEFAULT));
  } else {
    FLAME_CHECK(args.batch_stride_a >= 0 && args.batch_stride_b >= 0,
                "matmul: negative batch strides a {} b {}", args.batch_stride_a, args.batch_stride_b);
    FLAME_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        ctx.cublas, op_b, op_a, n, m, k, alpha, b.data_ptr(), types.data, static_cast<int>(ldb),
        static_cast<long long>(args.batch_stride_b), a.data_ptr(), types.data, static_cast<int>(lda),
        static_cast<long long>(args.batch_stride_a), beta, out.data_ptr(), types.data, n,
        static_cast<long long>(args.m) * args.n, static_cast<int>(args.batch), types.compute, CUBLAS_GEMM_DEFAULT));
  }
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
