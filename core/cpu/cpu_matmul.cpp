// Batched matmul through cblas: f32 sgemm, f64 dgemm, f16/bf16 converted to f32 around sgemm.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"

namespace flame {

using namespace cpu;

namespace {

// Leading dimension of an operand whose op() is rows x cols: row-major storage needs >= cols,
// column-major (transposed) storage >= rows. A single stored row/column may have any stride.
int64_t checked_leading_dim(const char* which, int64_t ld, int64_t rows, int64_t cols,
                            bool transposed) {
  const int64_t stored_rows = transposed ? cols : rows;
  const int64_t min_ld = std::max<int64_t>(1, transposed ? rows : cols);
  if (stored_rows <= 1 && ld < min_ld) return min_ld;
  FLAME_CHECK(ld >= min_ld,
              "matmul: leading dimension of {} is {} but must be at least {} ({} x {}{})", which,
              ld, min_ld, rows, cols, transposed ? ", transposed" : "");
  return ld;
}

template <class T>
void gemm(bool a_t, bool b_t, int m, int n, int k, const T* a, int lda, const T* b, int ldb, T* c) {
  const CBLAS_TRANSPOSE ta = a_t ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = b_t ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, n);
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, n);
  }
}

// Dense row-major f32 copy [rows, cols] of op(X) for a 16-bit operand with leading dim ld.
void to_float_matrix(LoadDouble load, const char* x, int64_t rows, int64_t cols, int64_t ld,
                     bool transposed, std::vector<float>& dense) {
  dense.resize(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t offset = transposed ? c * ld + r : r * ld + c;
      dense[r * cols + c] = static_cast<float>(load(x + offset * 2));
    }
  }
}

}  // namespace

void CpuBackend::matmul(const MatmulArgs& args) {
  const Tensor &a = args.a, &b = args.b, &out = args.out;
  const DType dtype = out.dtype();
  FLAME_CHECK(a.dtype() == dtype && b.dtype() == dtype,
              "matmul: a, b and out must share a dtype, got {}, {} and {}", a.describe(),
              b.describe(), out.describe());
  FLAME_CHECK(is_floating(dtype),
              "matmul: needs f32, f64, f16 or bf16 operands, got {}; convert with to()",
              dtype_name(dtype));
  const int64_t batch = args.batch, m = args.m, n = args.n, k = args.k;
  FLAME_CHECK(batch >= 0 && m >= 0 && n >= 0 && k >= 0,
              "matmul: negative size (batch {}, m {}, n {}, k {})", batch, m, n, k);
  check_contiguous("matmul", "out", out, batch * m * n);
  if (batch * m * n == 0) return;
  if (k == 0) {
    fill(out, 0.0);
    return;
  }
  FLAME_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX,
              "matmul: dims m {}, n {}, k {} exceed the BLAS's 32-bit sizes", m, n, k);
  const int64_t lda = checked_leading_dim("a", args.lda, m, k, args.a_transposed);
  const int64_t ldb = checked_leading_dim("b", args.ldb, k, n, args.b_transposed);
  FLAME_CHECK(lda <= INT_MAX && ldb <= INT_MAX,
              "matmul: leading dimensions {} and {} exceed the BLAS's 32-bit sizes", lda, ldb);
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const size_t size = out.element_size();
  const char* a_data = static_cast<const char*>(a.data_ptr());
  const char* b_data = static_cast<const char*>(b.data_ptr());
  char* out_data = static_cast<char*>(out.data_ptr());

  if (dtype == DType::F32 || dtype == DType::F64) {
    for (int64_t i = 0; i < batch; ++i) {
      const char* ai = a_data + static_cast<size_t>(i * args.batch_stride_a) * size;
      const char* bi = b_data + static_cast<size_t>(i * args.batch_stride_b) * size;
      char* ci = out_data + static_cast<size_t>(i * m * n) * size;
      if (dtype == DType::F32) {
        gemm(args.a_transposed, args.b_transposed, im, in, ik, reinterpret_cast<const float*>(ai),
             static_cast<int>(lda), reinterpret_cast<const float*>(bi), static_cast<int>(ldb),
             reinterpret_cast<float*>(ci));
      } else {
        gemm(args.a_transposed, args.b_transposed, im, in, ik, reinterpret_cast<const double*>(ai),
             static_cast<int>(lda), reinterpret_cast<const double*>(bi), static_cast<int>(ldb),
             reinterpret_cast<double*>(ci));
      }
    }
    return;
  }

  // f16 / bf16: dense f32 copies of op(A) [m, k] and op(B) [k, n], sgemm into f32 C [m, n].
  const LoadDouble load = double_loader(dtype);
  const StoreDouble store = double_storer(dtype);
  std::vector<float> a_dense, b_dense, c_dense(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < batch; ++i) {
    to_float_matrix(load, a_data + static_cast<size_t>(i * args.batch_stride_a) * size, m, k, lda,
                    args.a_transposed, a_dense);
    to_float_matrix(load, b_data + static_cast<size_t>(i * args.batch_stride_b) * size, k, n, ldb,
                    args.b_transposed, b_dense);
    gemm(false, false, im, in, ik, a_dense.data(), ik, b_dense.data(), in, c_dense.data());
    char* ci = out_data + static_cast<size_t>(i * m * n) * size;
    for (int64_t j = 0; j < m * n; ++j) store(ci + static_cast<size_t>(j) * size, c_dense[j]);
  }
}

}  // namespace flame
