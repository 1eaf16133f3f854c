// How long a small all-reduce takes on the 2-GPU machine (issue 5: the cnn's last bucket, 75 KB,
// is all-reduced after backward and its latency is on the step's path). 2 ranks, f32 Sum, in place:
//   plain:   ncclAllReduce on cudaMalloc memory (what DDP's buckets get today);
//   sym:     ncclAllReduce on ncclMemAlloc memory registered as a symmetric window (NCCL then
//            picks its symmetric-memory kernels);
//   symcopy: the bucket copied into such a window, all-reduced there, copied back;
//   oneshot: one kernel per rank over CUDA IPC memory: each block copies its chunk into this
//            rank's slot, tells the peer through a flag in the peer's memory, waits for the peer's
//            flag, then reads the peer's chunk over NVLink and writes the sum.
// Two timings per case, medians: "single" (one call after an MPI barrier and a short spin kernel
// that lets both ranks queue the call before the GPU reaches it) and "pipelined" (100 calls back
// to back, total / 100). Each case checks its result (rank + 1 from each rank: 3 everywhere).
// The communicator's own version of the one-shot kernel is dist/peer_all_reduce.cpp (Note [one-shot
// all-reduce]); docs/PERFORMANCE.md, seventeenth run, has the figures.
// Not part of FLAME. Usage: mpirun -np 2 small_allreduce_latency [plain|sym|symcopy|oneshot]...
// (every mode by default; one JSON line per mode and size)
#include <cstdint>
#include <string>

#include "experiment_util.cuh"

namespace {

constexpr int kMaxBlocks = 128;
constexpr int kRuns = 200;
constexpr int kPipelined = 100;

__global__ void fill(float* x, size_t n, float value) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] = value;
}

__global__ void spin(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

__device__ __forceinline__ void store_release(unsigned long long* flag, unsigned long long value) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(flag), "l"(value) : "memory");
}
__device__ __forceinline__ unsigned long long load_acquire(const unsigned long long* flag) {
  unsigned long long value;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(value) : "l"(flag) : "memory");
  return value;
}

/// data: n floats, in place (n % 4 == 0, 16-byte aligned). mine/theirs: this rank's and the peer's
/// slot pairs (2 x cap floats), flags: this rank's flags (the peer writes them), peer_flags: the
/// peer's. Each block owns 8192 floats: every thread loads its 4 float4 (kept in registers), stores
/// them into this rank's slot, and after the flag exchange loads the peer's 4 float4 at once.
constexpr int kThreads = 512;
constexpr int kVectors = 4;  // float4 per thread
constexpr size_t kChunk = size_t{kThreads} * kVectors * 4;
__global__ void __launch_bounds__(kThreads) oneshot(float* data, size_t n, float* mine, const float* theirs, size_t cap,
                                                    unsigned long long* flags, unsigned long long* peer_flags,
                                                    unsigned long long seq) {
  const size_t parity = (seq & 1) * cap;
  const size_t begin = blockIdx.x * kChunk;
  float4 own[kVectors];
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const size_t i = begin + (k * kThreads + threadIdx.x) * 4;
    if (i < n) own[k] = *reinterpret_cast<const float4*>(data + i);
  }
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const size_t i = begin + (k * kThreads + threadIdx.x) * 4;
    if (i < n) *reinterpret_cast<float4*>(mine + parity + i) = own[k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    store_release(peer_flags + blockIdx.x, seq);
    while (load_acquire(flags + blockIdx.x) < seq) {
    }
  }
  __syncthreads();
  float4 other[kVectors];
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const size_t i = begin + (k * kThreads + threadIdx.x) * 4;
    if (i < n) other[k] = __ldcg(reinterpret_cast<const float4*>(theirs + parity + i));
  }
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const size_t i = begin + (k * kThreads + threadIdx.x) * 4;
    if (i < n)
      *reinterpret_cast<float4*>(data + i) =
          make_float4(own[k].x + other[k].x, own[k].y + other[k].y, own[k].z + other[k].z, own[k].w + other[k].w);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int rank = 0, world = 0;
  ncclComm_t comm = start_ranks(&argc, &argv, &rank, &world, NCCL_CONFIG_INITIALIZER);
  if (world != 2) {
    if (rank == 0) fprintf(stderr, "needs 2 ranks\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const size_t max_bytes = size_t{4} << 20;
  const size_t cap = max_bytes / 4;

  float* plain = nullptr;
  CK(cudaMalloc(&plain, max_bytes));
  void* sym = nullptr;
  ncclWindow_t window = nullptr;
  NK(ncclMemAlloc(&sym, max_bytes));
  NK(ncclCommWindowRegister(comm, sym, max_bytes, &window, NCCL_WIN_COLL_SYMMETRIC));
  if (window == nullptr && rank == 0) fprintf(stderr, "no symmetric window\n");

  // One-shot: [flags: kMaxBlocks u64][slots: 2 x cap floats], shared through CUDA IPC.
  const size_t flag_bytes = kMaxBlocks * sizeof(unsigned long long);
  char* ipc = nullptr;
  CK(cudaMalloc(&ipc, flag_bytes + 2 * max_bytes));
  CK(cudaMemset(ipc, 0, flag_bytes + 2 * max_bytes));
  cudaIpcMemHandle_t handles[2];
  CK(cudaIpcGetMemHandle(&handles[rank], ipc));
  MPI_Allgather(MPI_IN_PLACE, 0, MPI_BYTE, handles, sizeof(cudaIpcMemHandle_t), MPI_BYTE, MPI_COMM_WORLD);
  char* peer = nullptr;
  CK(cudaIpcOpenMemHandle(reinterpret_cast<void**>(&peer), handles[1 - rank], cudaIpcMemLazyEnablePeerAccess));
  unsigned long long seq = 0;

  const size_t sizes[] = {1024, 8192, 75264, 262144, 1048576, 1680896, 2097152, 4194304};
  std::vector<std::string> modes = {"plain", "sym", "symcopy", "oneshot"};
  if (argc > 1) modes.assign(argv + 1, argv + argc);
  for (const std::string& mode : modes) {
    if (mode != "plain" && mode != "sym" && mode != "symcopy" && mode != "oneshot") {
      if (rank == 0) fprintf(stderr, "unknown mode '%s': plain, sym, symcopy or oneshot\n", mode.c_str());
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  cudaEvent_t start, stop;
  CK(cudaEventCreate(&start));
  CK(cudaEventCreate(&stop));
  for (const std::string& mode : modes) {
    for (size_t bytes : sizes) {
      const size_t n = bytes / 4;
      const std::string& m = mode;
      auto call = [&] {
        if (m == "plain") {
          NK(ncclAllReduce(plain, plain, n, ncclFloat32, ncclSum, comm, stream));
        } else if (m == "sym") {
          NK(ncclAllReduce(sym, sym, n, ncclFloat32, ncclSum, comm, stream));
        } else if (m == "symcopy") {
          CK(cudaMemcpyAsync(sym, plain, bytes, cudaMemcpyDeviceToDevice, stream));
          NK(ncclAllReduce(sym, sym, n, ncclFloat32, ncclSum, comm, stream));
          CK(cudaMemcpyAsync(plain, sym, bytes, cudaMemcpyDeviceToDevice, stream));
        } else {
          const unsigned blocks = static_cast<unsigned>((n + kChunk - 1) / kChunk);
          ++seq;
          oneshot<<<blocks, kThreads, 0, stream>>>(plain, n, reinterpret_cast<float*>(ipc + flag_bytes),
                                              reinterpret_cast<const float*>(peer + flag_bytes), cap,
                                              reinterpret_cast<unsigned long long*>(ipc),
                                              reinterpret_cast<unsigned long long*>(peer), seq);
          CK(cudaGetLastError());
        }
      };
      float* data = m == "sym" ? static_cast<float*>(sym) : plain;
      // Correctness first: rank + 1 from each rank sums to 3.
      fill<<<64, 256, 0, stream>>>(data, n, static_cast<float>(rank + 1));
      call();
      std::vector<float> host(n);
      CK(cudaMemcpyAsync(host.data(), data, bytes, cudaMemcpyDeviceToHost, stream));
      CK(cudaStreamSynchronize(stream));
      size_t wrong = 0;
      for (float v : host) wrong += v != 3.0f;
      for (int i = 0; i < 5; ++i) call();
      std::vector<double> single;
      for (int r = 0; r < kRuns; ++r) {
        MPI_Barrier(MPI_COMM_WORLD);
        spin<<<1, 1, 0, stream>>>(40000);
        CK(cudaEventRecord(start, stream));
        call();
        CK(cudaEventRecord(stop, stream));
        CK(cudaEventSynchronize(stop));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, start, stop));
        single.push_back(ms * 1000.0);
      }
      std::vector<double> piped;
      for (int r = 0; r < 20; ++r) {
        MPI_Barrier(MPI_COMM_WORLD);
        spin<<<1, 1, 0, stream>>>(40000);
        CK(cudaEventRecord(start, stream));
        for (int k = 0; k < kPipelined; ++k) call();
        CK(cudaEventRecord(stop, stream));
        CK(cudaEventSynchronize(stop));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, start, stop));
        piped.push_back(ms * 1000.0 / kPipelined);
      }
      if (rank == 0)
        printf("{\"exp\": \"small_allreduce\", \"mode\": \"%s\", \"bytes\": %zu, \"single_us\": %.2f, "
               "\"pipelined_us\": %.2f, \"wrong\": %zu}\n",
               mode.c_str(), bytes, median(single), median(piped), wrong);
      fflush(stdout);
    }
  }
  CK(cudaIpcCloseMemHandle(peer));
  NK(ncclCommWindowDeregister(comm, window));
  NK(ncclMemFree(sym));
  NK(ncclCommDestroy(comm));
  MPI_Finalize();
  return 0;
}
