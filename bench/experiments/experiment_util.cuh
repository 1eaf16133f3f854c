// What the 2-rank experiments of this folder share: error checks that bring both ranks down, the
// add kernel of the copy-engine all-reduce, a median, and MPI + NCCL start-up. Not part of FLAME.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#define CK(x) do { cudaError_t s_ = (x); if (s_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(s_)); MPI_Abort(MPI_COMM_WORLD, 1);} } while (0)
#define NK(x) do { ncclResult_t s_ = (x); if (s_ != ncclSuccess) { fprintf(stderr, "%s: %s\n", #x, ncclGetErrorString(s_)); MPI_Abort(MPI_COMM_WORLD, 1);} } while (0)
#define BK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "%s: %d\n", #x, (int)s_); MPI_Abort(MPI_COMM_WORLD, 1);} } while (0)

/// out = (a + b) / 2, elementwise over n4 float4s: the local step of the copy-engine all-reduce.
__global__ void add_halves(const float4* a, const float4* b, float4* out, size_t n4) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    float4 x = a[i], y = b[i];
    out[i] = make_float4(0.5f * (x.x + y.x), 0.5f * (x.y + y.y), 0.5f * (x.z + y.z), 0.5f * (x.w + y.w));
  }
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// MPI_Init, this rank's GPU (cuda:rank) and a blocking NCCL communicator configured by `config`
/// (NCCL_CONFIG_INITIALIZER plus the caller's fields). Returns the communicator.
inline ncclComm_t start_ranks(int* argc, char*** argv, int* rank, int* world, ncclConfig_t config) {
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, rank);
  MPI_Comm_size(MPI_COMM_WORLD, world);
  CK(cudaSetDevice(*rank));
  ncclUniqueId id;
  if (*rank == 0) NK(ncclGetUniqueId(&id));
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  config.blocking = 1;
  ncclComm_t comm;
  NK(ncclCommInitRankConfig(&comm, *world, id, *rank, &config));
  return comm;
}
