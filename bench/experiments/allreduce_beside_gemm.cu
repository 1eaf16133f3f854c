// Experiment (issue 5, docs/PERFORMANCE.md "tenth run"): how much each way of all-reducing an f32
// buffer slows the GEMMs that run beside it, on 2 ranks over NVLink. Plain NCCL and cuBLAS, not
// FLAME: it measures the hardware and libraries FLAME builds on. Built and run by run.sh.
//
// The GEMMs are the mlp benchmark's backward tail at batch 256 ([256 x 4096] @ [4096 x 4096], then
// [4096 x 256] @ [256 x 1024]); the buffer is MIB MiB. Each iteration is timed three ways (GEMMs
// alone, all-reduce alone, both at once); medians of 200 iterations after 30 of warm-up.
// Modes:
//   nccl  cudaMalloc buffer, ncclAllReduce (ring kernels);
//   sym   ncclMemAlloc buffer registered as a symmetric window, ncclAllReduce;
//   ce    CTA policy ZERO: ncclAlltoAll of the halves (copy engines), an add kernel of ADDBLOCKS
//         blocks, ncclAllGather (copy engines).
// CARVE > 0 plans the GEMMs for (SMs - CARVE) SMs while the all-reduce runs (cublasSetSmCountTarget);
// MAXCTAS > 0 sets ncclConfig_t::maxCTAs.
// Usage: mpirun -np 2 allreduce_beside_gemm MODE MIB CARVE [MAXCTAS] [ADDBLOCKS]
#include <cstdlib>
#include <string>

#include "experiment_util.cuh"

int main(int argc, char** argv) {
  std::string mode = argv[1];
  size_t bytes = size_t(atoi(argv[2])) << 20;
  int carve = atoi(argv[3]);
  int maxctas = argc > 4 ? atoi(argv[4]) : 0;
  int add_blocks = argc > 5 ? atoi(argv[5]) : 264;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  if (maxctas > 0) config.maxCTAs = maxctas;
  if (mode == "ce") config.CTAPolicy = NCCL_CTA_POLICY_ZERO;
  int rank, world;
  ncclComm_t comm = start_ranks(&argc, &argv, &rank, &world, config);
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, rank));

  const size_t n = bytes / 4;
  float *bucket = nullptr, *recv = nullptr;
  ncclWindow_t wb = nullptr, wr = nullptr;
  if (mode == "nccl") {
    CK(cudaMalloc(&bucket, bytes));
  } else {
    NK(ncclMemAlloc((void**)&bucket, bytes));
    NK(ncclCommWindowRegister(comm, bucket, bytes, &wb, NCCL_WIN_COLL_SYMMETRIC));
    if (mode == "ce") {
      NK(ncclMemAlloc((void**)&recv, bytes));
      NK(ncclCommWindowRegister(comm, recv, bytes, &wr, NCCL_WIN_COLL_SYMMETRIC));
    }
  }
  CK(cudaMemset(bucket, 0, bytes));

  // GEMMs of the mlp's backward tail at batch 256: dX = [256x4096]x[4096x4096], dW = [4096x256]x[256x1024].
  float *a, *b, *c, *d, *e, *f;
  CK(cudaMalloc(&a, 256 * 4096 * 4));
  CK(cudaMalloc(&b, 4096 * 4096 * 4));
  CK(cudaMalloc(&c, 256 * 4096 * 4));
  CK(cudaMalloc(&d, 4096 * 256 * 4));
  CK(cudaMalloc(&e, 256 * 1024 * 4));
  CK(cudaMalloc(&f, 4096 * 1024 * 4));
  CK(cudaMemset(a, 0, 256 * 4096 * 4));
  CK(cudaMemset(b, 0, 4096 * 4096 * 4));
  CK(cudaMemset(d, 0, 4096 * 256 * 4));
  CK(cudaMemset(e, 0, 256 * 1024 * 4));
  cudaStream_t compute, commst;
  CK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&commst, cudaStreamNonBlocking));
  cublasHandle_t blas;
  BK(cublasCreate(&blas));
  BK(cublasSetStream(blas, compute));
  const float one = 1.f, zero = 0.f;
  auto gemms = [&]() {
    BK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, 4096, 256, 4096, &one, b, 4096, a, 4096, &zero, c, 4096));
    BK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, 1024, 4096, 256, &one, e, 1024, d, 4096, &zero, f, 1024));
  };
  auto allreduce = [&]() {
    if (mode == "ce") {
      const size_t half = n / 2;
      NK(ncclAlltoAll(bucket, recv, half, ncclFloat32, comm, commst));
      add_halves<<<add_blocks, 256, 0, commst>>>((const float4*)recv, (const float4*)(recv + half),
                                                 (float4*)(bucket + rank * half), half / 4);
      NK(ncclAllGather(bucket + rank * half, bucket, half, ncclFloat32, comm, commst));
    } else {
      NK(ncclAllReduce(bucket, bucket, n, ncclFloat32, ncclAvg, comm, commst));
    }
  };
  cudaEvent_t t0, tg, ta, go;
  CK(cudaEventCreate(&t0));
  CK(cudaEventCreate(&tg));
  CK(cudaEventCreate(&ta));
  CK(cudaEventCreate(&go));
  auto run = [&](bool do_gemm, bool do_ar, double* gemm_ms, double* ar_ms) {
    CK(cudaDeviceSynchronize());
    MPI_Barrier(MPI_COMM_WORLD);
    CK(cudaEventRecord(t0, compute));
    CK(cudaStreamWaitEvent(commst, t0));
    if (do_ar) allreduce();
    CK(cudaEventRecord(ta, commst));
    BK(cublasSetSmCountTarget(blas, do_ar && carve > 0 ? sms - carve : 0));
    if (do_gemm) for (int r = 0; r < 1; ++r) gemms();
    CK(cudaEventRecord(tg, compute));
    CK(cudaDeviceSynchronize());
    float g, r;
    CK(cudaEventElapsedTime(&g, t0, tg));
    CK(cudaEventElapsedTime(&r, t0, ta));
    *gemm_ms = g;
    *ar_ms = r;
  };
  std::vector<double> g_alone, a_alone, g_both, a_both, total;
  for (int it = 0; it < 230; ++it) {
    double g, r;
    run(true, false, &g, &r);
    if (it >= 30) g_alone.push_back(g);
    run(false, true, &g, &r);
    if (it >= 30) a_alone.push_back(r);
    run(true, true, &g, &r);
    if (it >= 30) { g_both.push_back(g); a_both.push_back(r); total.push_back(std::max(g, r)); }
  }
  if (rank == 0)
    printf("{\"mode\": \"%s\", \"mib\": %zu, \"carve\": %d, \"maxctas\": %d, \"add_blocks\": %d, \"gemm_alone\": %.4f, "
           "\"ar_alone\": %.4f, \"gemm_both\": %.4f, \"ar_both\": %.4f, \"total_both\": %.4f, \"busbw_alone\": %.1f}\n",
           mode.c_str(), bytes >> 20, carve, maxctas, add_blocks, median(g_alone), median(a_alone), median(g_both),
           median(a_both), median(total), bytes / median(a_alone) / 1e6);
  if (wb) NK(ncclCommWindowDeregister(comm, wb));
  if (wr) NK(ncclCommWindowDeregister(comm, wr));
  NK(ncclCommDestroy(comm));
  MPI_Finalize();
  return 0;
}
