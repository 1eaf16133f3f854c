// Experiment (issue 5, docs/PERFORMANCE.md "tenth run"): the f32 GEMMs of the mlp benchmark's
// backward at batch 256 under cuBLAS SM-count targets, one GPU, nothing beside them: the time of
// cuBLAS's heuristic choice (cublasGemmEx after cublasSetSmCountTarget) against the first and the
// fastest of cuBLASLt's candidates for the same target (medians of 21 runs). Built and run by run.sh.
//
// Read with care: the candidates fastest here made FLAME's 2-GPU step slower when used beside the
// all-reduces (docs/PERFORMANCE.md); timed alone, a kernel that ignores the target and spreads over
// every SM looks best.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#define CK(x) do { cudaError_t s_ = (x); if (s_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(s_)); return 1; } } while (0)
#define BK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { printf("%s: %d line %d\n", #x, (int)s_, __LINE__); return 1; } } while (0)

struct Shape { int m, n, k; cublasOperation_t ta, tb; const char* name; };

int main() {
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  float *a, *b, *c, *ws;
  CK(cudaMalloc(&a, size_t(4096) * 4096 * 4)); CK(cudaMalloc(&b, size_t(4096) * 4096 * 4)); CK(cudaMalloc(&c, size_t(4096) * 4096 * 4));
  CK(cudaMemset(a, 0, size_t(4096) * 4096 * 4)); CK(cudaMemset(b, 0, size_t(4096) * 4096 * 4));
  const size_t ws_bytes = 32 << 20;
  CK(cudaMalloc(&ws, ws_bytes));
  cudaStream_t st; CK(cudaStreamCreate(&st));
  cublasHandle_t h; BK(cublasCreate(&h)); BK(cublasSetStream(h, st));
  cublasLtHandle_t lt; BK(cublasLtCreate(&lt));
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  const float one = 1.f, zero = 0.f;
  Shape shapes[] = {{4096, 256, 4096, CUBLAS_OP_N, CUBLAS_OP_N, "dX2 [256x4096]x[4096x4096]"},
                    {1024, 4096, 256, CUBLAS_OP_N, CUBLAS_OP_T, "dW1 [4096x256]x[256x1024]"},
                    {4096, 4096, 256, CUBLAS_OP_N, CUBLAS_OP_T, "dW2 [4096x256]x[256x4096]"}};
  auto time_it = [&](auto&& fn) -> float {
    for (int i = 0; i < 5; ++i) fn();
    std::vector<float> v;
    for (int r = 0; r < 21; ++r) {
      cudaEventRecord(e0, st); fn(); cudaEventRecord(e1, st); cudaEventSynchronize(e1);
      float ms; cudaEventElapsedTime(&ms, e0, e1); v.push_back(ms);
    }
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (const Shape& s : shapes) {
    const int lda = s.m, ldb = s.tb == CUBLAS_OP_N ? s.k : s.n;
    for (int target : {0, 124, 116, 108, 100}) {
      BK(cublasSetSmCountTarget(h, target));
      float heur = time_it([&] { cublasSgemm(h, s.ta, s.tb, s.m, s.n, s.k, &one, a, lda, b, ldb, &zero, c, s.m); });
      cublasLtMatmulDesc_t desc; BK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      BK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &s.ta, sizeof s.ta));
      BK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &s.tb, sizeof s.tb));
      int32_t t = target;
      BK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &t, sizeof t));
      cublasLtMatrixLayout_t la, lb, lc;
      BK(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, s.m, s.k, lda));
      BK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, s.tb == CUBLAS_OP_N ? s.k : s.n, s.tb == CUBLAS_OP_N ? s.n : s.k, ldb));
      BK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, s.m, s.n, s.m));
      cublasLtMatmulPreference_t pref; BK(cublasLtMatmulPreferenceCreate(&pref));
      BK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes));
      cublasLtMatmulHeuristicResult_t res[32]; int found = 0;
      BK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 32, res, &found));
      float best = 1e9, first = 0; int best_i = -1;
      for (int i = 0; i < found; ++i) {
        float ms = time_it([&] { cublasLtMatmul(lt, desc, &one, a, la, b, lb, &zero, c, lc, c, lc, &res[i].algo, ws, ws_bytes, st); });
        if (i == 0) first = ms;
        if (ms < best) { best = ms; best_i = i; }
      }
      printf("%-28s target %3d: gemmex %.4f ms, lt first %.4f, lt best %.4f (#%d of %d)\n", s.name, target, heur, first, best, best_i, found);
      cublasLtMatmulPreferenceDestroy(pref); cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc); cublasLtMatmulDescDestroy(desc);
    }
  }
  return 0;
}
