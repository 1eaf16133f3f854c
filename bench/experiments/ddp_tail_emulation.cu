// Experiment (issue 5, docs/PERFORMANCE.md "tenth run"): the tail of the mlp benchmark's DDP step at
// batch 256 on 2 ranks, with plain NCCL and cuBLAS (not FLAME), to compare ways of all-reducing its
// two large gradients before building one into FLAME. Built and run by run.sh.
//
// The step, as FLAME's ddp.step runs it: the 64 MiB weight gradient of the second layer (GEMM) is
// all-reduced beside the input-gradient GEMM and the first layer's 16 MiB weight-gradient GEMM; the
// 16 MiB one is all-reduced after them; an AdamW-like update of each runs when its all-reduce is
// done. Printed: the step without communication (local_ms), with it (dist_ms), and the difference.
// Modes (how each gradient is all-reduced):
//   nccl    ncclAllReduce (ring kernels), cudaMalloc buffers;
//   ce      CTA policy ZERO, symmetric windows: copy-engine alltoall, add kernel, copy-engine allgather;
//   hybrid  the 64 MiB one as ce, the 16 MiB one with ncclAllReduce;
//   rsce    CTA policy ZERO, symmetric windows: ncclReduceScatter (kernels), ncclAllGather (copy engines);
//   rsce1   the 64 MiB one as rsce, the 16 MiB one with ncclAllReduce;
//   gather  CTA policy ZERO, symmetric windows: each rank's whole gradient to the other rank
//           (ncclAllGather on the copy engines); the update sums the two in rank order (same bytes
//           as the ring for 2 ranks, no SMs for the transfer, no separate add kernel);
//   gathers the same, but a separate kernel sums the two into the bucket before the update;
//   hybNN   NN% of each gradient (its first rows) as gather (copy engines, sum kernel on the
//           communication stream), the rest at the same time through ncclAllReduce on a second
//           communicator (default CTA policy) and a second stream, with the CARVE carve-out: does
//           NVLink move more when the copy engines and NCCL's kernels share the transfer?
//   gatherf as FLAME's OverlapAllReduce::CopyEngineGather: on the communication stream, a device
//           copy of the gradient into its rank's slot of the staging window, the all-gather in
//           place, and a kernel writing the mean of the two slots back into the gradient.
//   gatherb as FLAME's copy-engine all-reduce with bf16 slots (DDP's reduce_dtype bf16, twelfth
//           run): a kernel rounds the gradient into its rank's bf16 slot, the all-gather in place,
//           and a kernel writing the rounded mean of the two slots back into the f32 gradient;
//   gatherbf the same transfer, but the update reads the two bf16 slots itself (no sum kernel):
//           what fusing the sum into the optimizer step would save;
//   gatherbfg as gatherbf, but the update also writes the mean into the gradient buffer (so that
//           .grad would still hold it, as with DDP's other ways).
// CARVE > 0 plans the GEMMs beside the all-reduces for (SMs - CARVE) SMs (not in ce and hybrid);
// ADDBLOCKS is the ce add kernel's grid; CHUNKS > 1 computes and all-reduces the 64 MiB gradient in
// that many row blocks, each all-reduced as soon as its GEMM is done.
// BATCH is the per-rank batch (256 unless given).
// Usage: mpirun -np 2 ddp_tail_emulation MODE CARVE [ADDBLOCKS] [CHUNKS] [BATCH]
#include <cstdlib>
#include <string>

#include "experiment_util.cuh"

/// An AdamW-like update of n4 float4s: the memory traffic of the optimizer step (7 streams).
__global__ void adamw_like(float4* p, const float4* g, float4* m, float4* v, size_t n4) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    float4 pp = p[i], gg = g[i], mm = m[i], vv = v[i];
#define UPD(c) mm.c = 0.9f * mm.c + 0.1f * gg.c; vv.c = 0.999f * vv.c + 0.001f * gg.c * gg.c; pp.c -= 1e-3f * (mm.c / (sqrtf(vv.c) + 1e-8f) + 0.01f * pp.c);
    UPD(x) UPD(y) UPD(z) UPD(w)
    p[i] = pp; m[i] = mm; v[i] = vv;
  }
}

/// The same update with the gradient given as two ranks' halves-of-the-mean, summed in rank order.
__global__ void adamw_like_sum2(float4* p, const float4* ga, const float4* gb, float4* m, float4* v, size_t n4) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    float4 pp = p[i], a = ga[i], b = gb[i], mm = m[i], vv = v[i];
    float4 gg = make_float4(0.5f * (a.x + b.x), 0.5f * (a.y + b.y), 0.5f * (a.z + b.z), 0.5f * (a.w + b.w));
    UPD(x) UPD(y) UPD(z) UPD(w)
    p[i] = pp; m[i] = mm; v[i] = vv;
  }
}

__device__ __forceinline__ unsigned int to_bf16(float f) {  // nearest even (no NaN here)
  unsigned int x = __float_as_uint(f);
  return (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ float from_bf16(unsigned int h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float mean_bf16(unsigned int a, unsigned int b) {
  return from_bf16(to_bf16(0.5f * (from_bf16(a) + from_bf16(b))));
}

/// slot (4 bf16 per uint2) = round_bf16(g), n4 float4s.
__global__ void round_to_slot(const float4* g, uint2* slot, size_t n4) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    const float4 v = g[i];
    slot[i] = make_uint2(to_bf16(v.x) | (to_bf16(v.y) << 16), to_bf16(v.z) | (to_bf16(v.w) << 16));
  }
}

/// out = round_bf16((a + b) / 2) as f32, the two ranks' bf16 slots summed in rank order.
__global__ void mean_of_slots(const uint2* a, const uint2* b, float4* out, size_t n4) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    const uint2 x = a[i], y = b[i];
    out[i] = make_float4(mean_bf16(x.x & 0xffffu, y.x & 0xffffu), mean_bf16(x.x >> 16, y.x >> 16),
                         mean_bf16(x.y & 0xffffu, y.y & 0xffffu), mean_bf16(x.y >> 16, y.y >> 16));
  }
}

/// The AdamW-like update with the gradient read from the two ranks' bf16 slots (and written to
/// `g` when it is not null).
__global__ void adamw_like_slots(float4* p, const uint2* ga, const uint2* gb, float4* m, float4* v, float4* g,
                                 size_t n4) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    float4 pp = p[i], mm = m[i], vv = v[i];
    const uint2 a = ga[i], b = gb[i];
    float4 gg = make_float4(mean_bf16(a.x & 0xffffu, b.x & 0xffffu), mean_bf16(a.x >> 16, b.x >> 16),
                            mean_bf16(a.y & 0xffffu, b.y & 0xffffu), mean_bf16(a.y >> 16, b.y >> 16));
    if (g != nullptr) g[i] = gg;
    UPD(x) UPD(y) UPD(z) UPD(w)
    p[i] = pp; m[i] = mm; v[i] = vv;
  }
}

int main(int argc, char** argv) {
  std::string mode = argv[1];
  int carve = atoi(argv[2]);
  int add_blocks = argc > 3 ? atoi(argv[3]) : 264;
  int chunks = argc > 4 ? atoi(argv[4]) : 1;
  const int batch = argc > 5 ? atoi(argv[5]) : 256;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  if (mode != "nccl") config.CTAPolicy = NCCL_CTA_POLICY_ZERO;
  int rank, world;
  ncclComm_t comm = start_ranks(&argc, &argv, &rank, &world, config);
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, rank));
  const size_t n1 = size_t(4096) * 4096, n2 = size_t(4096) * 1024;
  float *b1, *b2, *recv, *rg1 = nullptr, *rg2 = nullptr;
  ncclWindow_t w1 = nullptr, w2 = nullptr, wr = nullptr, wg1 = nullptr, wg2 = nullptr;
  const bool gather = mode.rfind("gather", 0) == 0;
  const bool hybrid_split = mode.rfind("hyb", 0) == 0 && mode != "hybrid";
  const double ce_share = hybrid_split ? atoi(mode.c_str() + 3) / 100.0 : 0.0;
  if (gather && chunks != 1) { fprintf(stderr, "gather modes take CHUNKS 1\n"); MPI_Abort(MPI_COMM_WORLD, 1); }
  if (mode == "nccl") {
    CK(cudaMalloc(&b1, n1 * 4)); CK(cudaMalloc(&b2, n2 * 4));
  } else {
    NK(ncclMemAlloc((void**)&b1, n1 * 4)); NK(ncclCommWindowRegister(comm, b1, n1 * 4, &w1, NCCL_WIN_COLL_SYMMETRIC));
    NK(ncclMemAlloc((void**)&b2, n2 * 4)); NK(ncclCommWindowRegister(comm, b2, n2 * 4, &w2, NCCL_WIN_COLL_SYMMETRIC));
    NK(ncclMemAlloc((void**)&recv, n1 * 4)); NK(ncclCommWindowRegister(comm, recv, n1 * 4, &wr, NCCL_WIN_COLL_SYMMETRIC));
    if (gather || hybrid_split) {
      NK(ncclMemAlloc((void**)&rg1, 2 * n1 * 4)); NK(ncclCommWindowRegister(comm, rg1, 2 * n1 * 4, &wg1, NCCL_WIN_COLL_SYMMETRIC));
      NK(ncclMemAlloc((void**)&rg2, 2 * n2 * 4)); NK(ncclCommWindowRegister(comm, rg2, 2 * n2 * 4, &wg2, NCCL_WIN_COLL_SYMMETRIC));
      CK(cudaMemset(rg1, 0, 2 * n1 * 4)); CK(cudaMemset(rg2, 0, 2 * n2 * 4));
    }
  }
  CK(cudaMemset(b1, 0, n1 * 4)); CK(cudaMemset(b2, 0, n2 * 4));
  float *x1, *g2, *w2m, *dx2, *g1, *x0, *p1, *m1, *v1, *p2, *m2, *v2;
  auto alloc = [&](float** p, size_t n) { CK(cudaMalloc(p, n * 4)); CK(cudaMemset(*p, 0, n * 4)); };
  alloc(&x1, batch * 4096); alloc(&g2, batch * 4096); alloc(&w2m, n1); alloc(&dx2, batch * 4096);
  alloc(&g1, batch * 4096); alloc(&x0, batch * 1024);
  alloc(&p1, n1); alloc(&m1, n1); alloc(&v1, n1); alloc(&p2, n2); alloc(&m2, n2); alloc(&v2, n2);
  ncclComm_t ring_comm = nullptr;
  if (hybrid_split) {
    ncclConfig_t ring_config = NCCL_CONFIG_INITIALIZER;
    ring_config.blocking = 1;
    ring_config.CTAPolicy = NCCL_CTA_POLICY_DEFAULT;
    NK(ncclCommSplit(comm, 0, rank, &ring_comm, &ring_config));
  }
  cudaStream_t compute, commst, commst2;
  CK(cudaStreamCreateWithFlags(&commst2, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&commst, cudaStreamNonBlocking));
  cublasHandle_t blas;
  BK(cublasCreate(&blas));
  BK(cublasSetStream(blas, compute));
  const float one = 1.f, zero = 0.f;
  auto ce_allreduce = [&](float* buf, size_t n) {
    const size_t half = n / 2;
    NK(ncclAlltoAll(buf, recv, half, ncclFloat32, comm, commst));
    add_halves<<<add_blocks, 256, 0, commst>>>((const float4*)recv, (const float4*)(recv + half),
                                               (float4*)(buf + rank * half), half / 4);
    NK(ncclAllGather(buf + rank * half, buf, half, ncclFloat32, comm, commst));
  };
  auto rs_ce = [&](float* buf, size_t n) {
    const size_t half = n / 2;  // in place: reduce-scatter with kernels, all-gather on the copy engines
    NK(ncclReduceScatter(buf, buf + rank * half, half, ncclFloat32, ncclAvg, comm, commst));
    NK(ncclAllGather(buf + rank * half, buf, half, ncclFloat32, comm, commst));
  };
  auto gather_flame = [&](float* buf, float* slots, size_t n) {
    float* own = slots + size_t(rank) * n;
    CK(cudaMemcpyAsync(own, buf, n * 4, cudaMemcpyDeviceToDevice, commst));
    NK(ncclAllGather(own, slots, n, ncclFloat32, comm, commst));
    add_halves<<<sms * 4, 256, 0, commst>>>((const float4*)slots, (const float4*)(slots + n), (float4*)buf, n / 4);
  };
  // hybNN: the first k elements by copy engines on commst, the rest by the ring on commst2 (which
  // waits for `ready` itself); `done` is recorded on commst2.
  auto hybrid_split_reduce = [&](float* buf, float* slots, size_t n, cudaEvent_t ready, cudaEvent_t done) {
    size_t k = size_t(double(n) * ce_share) / 4 * 4;
    NK(ncclAllGather(buf, slots, k, ncclFloat32, comm, commst));
    add_halves<<<sms * 4, 256, 0, commst>>>((const float4*)slots, (const float4*)(slots + k), (float4*)buf, k / 4);
    CK(cudaStreamWaitEvent(commst2, ready));
    NK(ncclAllReduce(buf + k, buf + k, n - k, ncclFloat32, ncclAvg, ring_comm, commst2));
    CK(cudaEventRecord(done, commst2));
  };
  // gatherb / gatherbf: bf16 slots in the (f32-sized, so large enough) staging windows.
  const bool bf16_slots = mode == "gatherb" || mode == "gatherbf" || mode == "gatherbfg";
  auto gather_bf16 = [&](float* buf, float* slots, size_t n) {
    uint2* own = reinterpret_cast<uint2*>(reinterpret_cast<unsigned short*>(slots) + size_t(rank) * n);
    round_to_slot<<<sms * 4, 256, 0, commst>>>((const float4*)buf, own, n / 4);
    NK(ncclAllGather(own, slots, n, ncclBfloat16, comm, commst));
    if (mode == "gatherb")
      mean_of_slots<<<sms * 4, 256, 0, commst>>>((const uint2*)slots,
                                                 (const uint2*)(reinterpret_cast<unsigned short*>(slots) + n),
                                                 (float4*)buf, n / 4);
  };
  auto ring = [&](float* buf, size_t n) { NK(ncclAllReduce(buf, buf, n, ncclFloat32, ncclAvg, comm, commst)); };
  cudaEvent_t t0, t1, r1, r2, d1, d2, e1, e2;
  for (cudaEvent_t* e : {&e1, &e2}) CK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  for (cudaEvent_t* e : {&t0, &t1}) CK(cudaEventCreate(e));
  for (cudaEvent_t* e : {&r1, &r2, &d1, &d2}) CK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  auto step = [&](bool comm_on) {
    CK(cudaDeviceSynchronize());
    MPI_Barrier(MPI_COMM_WORLD);
    CK(cudaEventRecord(t0, compute));
    // dW2 = g2^T x1 -> b1 [4096 x 4096]
    const int rows = 4096 / chunks;
    for (int c = 0; c < chunks; ++c) {
      // rows [c*rows, (c+1)*rows) of dW2 (row-major [out, in]; column-major [in, out] here).
      BK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, 4096, rows, batch, &one, x1, 4096, g2 + c * rows, 4096, &zero,
                     b1 + size_t(c) * rows * 4096, 4096));
      CK(cudaEventRecord(r1, compute));
      if (comm_on) {
        CK(cudaStreamWaitEvent(commst, r1));
        float* part = b1 + size_t(c) * rows * 4096;
        if (mode == "nccl") ring(part, n1 / chunks);
        else if (mode.rfind("rsce", 0) == 0) rs_ce(part, n1 / chunks);
        else if (mode == "gatherf") gather_flame(part, rg1, n1);
        else if (bf16_slots) gather_bf16(part, rg1, n1);
        else if (hybrid_split) hybrid_split_reduce(part, rg1, n1, r1, e1);
        else if (gather) NK(ncclAllGather(part, rg1, n1, ncclFloat32, comm, commst));
        else ce_allreduce(part, n1 / chunks);
        if (c == 0 && mode != "ce" && mode != "hybrid" && !gather && carve > 0) BK(cublasSetSmCountTarget(blas, sms - carve));
      }
    }
    if (comm_on) CK(cudaEventRecord(d1, commst));
    // dX2 = g2 w2 ; dW1 = g1^T x0 -> b2 [4096 x 1024]
    BK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, 4096, batch, 4096, &one, w2m, 4096, g2, 4096, &zero, dx2, 4096));
    BK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, 1024, 4096, batch, &one, x0, 1024, g1, 4096, &zero, b2, 1024));
    CK(cudaEventRecord(r2, compute));
    if (comm_on) {
      CK(cudaStreamWaitEvent(commst, r2));
      if (mode == "ce") ce_allreduce(b2, n2);
      else if (mode == "rsce") rs_ce(b2, n2);
      else if (mode == "gatherf") gather_flame(b2, rg2, n2);
      else if (bf16_slots) gather_bf16(b2, rg2, n2);
      else if (hybrid_split) hybrid_split_reduce(b2, rg2, n2, r2, e2);
      else if (gather) NK(ncclAllGather(b2, rg2, n2, ncclFloat32, comm, commst));
      else ring(b2, n2);
      CK(cudaEventRecord(d2, commst));
      CK(cudaStreamWaitEvent(compute, d1));
      if (hybrid_split) CK(cudaStreamWaitEvent(compute, e1));
      BK(cublasSetSmCountTarget(blas, 0));
    }
    auto update = [&](float* p, float* b, float* rg, float* m, float* v, size_t n) {
      if (comm_on && (mode == "gatherbf" || mode == "gatherbfg")) {
        adamw_like_slots<<<sms * 4, 256, 0, compute>>>((float4*)p, (const uint2*)rg,
                                                      (const uint2*)(reinterpret_cast<unsigned short*>(rg) + n),
                                                      (float4*)m, (float4*)v,
                                                      mode == "gatherbfg" ? (float4*)b : nullptr, n / 4);
        return;
      }
      if (comm_on && mode == "gather") {
        adamw_like_sum2<<<sms * 4, 256, 0, compute>>>((float4*)p, (const float4*)rg, (const float4*)(rg + n),
                                                     (float4*)m, (float4*)v, n / 4);
        return;
      }
      if (comm_on && mode == "gathers")
        add_halves<<<sms * 4, 256, 0, compute>>>((const float4*)rg, (const float4*)(rg + n), (float4*)b, n / 4);
      adamw_like<<<sms * 4, 256, 0, compute>>>((float4*)p, (const float4*)b, (float4*)m, (float4*)v, n / 4);
    };
    update(p1, b1, rg1, m1, v1, n1);
    if (comm_on) CK(cudaStreamWaitEvent(compute, d2));
    if (comm_on && hybrid_split) CK(cudaStreamWaitEvent(compute, e2));
    update(p2, b2, rg2, m2, v2, n2);
    CK(cudaEventRecord(t1, compute));
    CK(cudaDeviceSynchronize());
    float ms;
    CK(cudaEventElapsedTime(&ms, t0, t1));
    return double(ms);
  };
  std::vector<double> local, dist;
  for (int it = 0; it < 330; ++it) {
    double a = step(false), b = step(true);
    if (it >= 30) { local.push_back(a); dist.push_back(b); }
  }
  if (rank == 0)
    printf("{\"batch\": %d, \"chunks\": %d, \"mode\": \"%s\", \"carve\": %d, \"add_blocks\": %d, \"local_ms\": %.4f, \"dist_ms\": %.4f, \"overhead_ms\": %.4f}\n",
           batch, chunks, mode.c_str(), carve, add_blocks, median(local), median(dist), median(dist) - median(local));
  for (ncclWindow_t w : {w1, w2, wr, wg1, wg2}) if (w) NK(ncclCommWindowDeregister(comm, w));
  if (ring_comm) NK(ncclCommDestroy(ring_comm));
  NK(ncclCommDestroy(comm));
  MPI_Finalize();
  return 0;
}
