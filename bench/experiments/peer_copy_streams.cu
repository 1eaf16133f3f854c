// How fast the copy engines move a buffer from one GPU to the other over NVLink, when the copy is
// split into K chunks on K streams (issue 5: NCCL's copy-engine all-gather moved the mlp's 32 MiB
// bf16 bucket at about 275 GB/s, one copy per peer). One process drives both GPUs (peer access
// on); "both" sends in both directions at once, as the 2-rank all-gather does. The copies are all
// queued while a spin kernel holds the timed stream, so the interval is the GPUs' time alone.
// Not part of FLAME.
// Usage: peer_copy_streams   (prints one JSON line per case: MiB, streams, direction, GB/s per direction)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                              \
  do {                                                                     \
    cudaError_t s_ = (x);                                                  \
    if (s_ != cudaSuccess) {                                               \
      fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(s_));             \
      std::exit(1);                                                        \
    }                                                                      \
  } while (0)

namespace {

constexpr int kMaxStreams = 8;
constexpr int kReps = 30;

/// Holds GPU 0's timing stream for about `cycles` clock cycles, so that the host has queued every
/// copy before the timed interval starts (the interval then holds no host time).
__global__ void spin(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

struct Gpu {
  void* send = nullptr;
  void* receive = nullptr;
  cudaStream_t streams[kMaxStreams] = {};
  cudaEvent_t joined[kMaxStreams] = {};
};

/// Copies `bytes` from gpus[from].send to gpus[to].receive in `k` chunks, one per stream of `from`,
/// after `start` (an event on GPU 0's first stream); records each chunk's completion in joined[].
void issue(Gpu* gpus, int from, int to, size_t bytes, int k, cudaEvent_t start) {
  CK(cudaSetDevice(from));
  const size_t chunk = (bytes / k + 255) / 256 * 256;
  for (int s = 0; s < k; ++s) {
    const size_t offset = s * chunk;
    if (offset >= bytes) break;
    const size_t length = std::min(chunk, bytes - offset);
    CK(cudaStreamWaitEvent(gpus[from].streams[s], start, 0));
    CK(cudaMemcpyPeerAsync(static_cast<char*>(gpus[to].receive) + offset, to,
                           static_cast<char*>(gpus[from].send) + offset, from, length, gpus[from].streams[s]));
    CK(cudaEventRecord(gpus[from].joined[s], gpus[from].streams[s]));
  }
}

}  // namespace

int main() {
  int count = 0;
  CK(cudaGetDeviceCount(&count));
  if (count < 2) {
    fprintf(stderr, "peer_copy_streams: needs 2 GPUs, found %d\n", count);
    return 1;
  }
  const size_t max_bytes = size_t{64} << 20;
  Gpu gpus[2];
  for (int d = 0; d < 2; ++d) {
    CK(cudaSetDevice(d));
    CK(cudaDeviceEnablePeerAccess(1 - d, 0));
    CK(cudaMalloc(&gpus[d].send, max_bytes));
    CK(cudaMalloc(&gpus[d].receive, max_bytes));
    CK(cudaMemset(gpus[d].send, d + 1, max_bytes));
    for (int s = 0; s < kMaxStreams; ++s) {
      CK(cudaStreamCreateWithFlags(&gpus[d].streams[s], cudaStreamNonBlocking));
      CK(cudaEventCreateWithFlags(&gpus[d].joined[s], cudaEventDisableTiming));
    }
  }
  CK(cudaSetDevice(0));
  cudaEvent_t start, stop;
  CK(cudaEventCreate(&start));
  CK(cudaEventCreate(&stop));
  const cudaStream_t clock = gpus[0].streams[0];
  for (const size_t mib : {size_t{8}, size_t{32}, size_t{64}}) {
    const size_t bytes = mib << 20;
    for (const bool both : {false, true}) {
      for (const int k : {1, 2, 4, 8}) {
        std::vector<double> ms;
        for (int rep = 0; rep < kReps + 3; ++rep) {
          CK(cudaSetDevice(0));
          spin<<<1, 1, 0, clock>>>(2000000);  // about 1 ms
          CK(cudaGetLastError());
          CK(cudaEventRecord(start, clock));
          issue(gpus, 0, 1, bytes, k, start);
          if (both) issue(gpus, 1, 0, bytes, k, start);
          CK(cudaSetDevice(0));
          for (int d = 0; d < (both ? 2 : 1); ++d)
            for (int s = 0; s < k; ++s) CK(cudaStreamWaitEvent(clock, gpus[d].joined[s], 0));
          CK(cudaEventRecord(stop, clock));
          CK(cudaEventSynchronize(stop));
          float elapsed = 0;
          CK(cudaEventElapsedTime(&elapsed, start, stop));
          if (rep >= 3) ms.push_back(elapsed);
        }
        std::sort(ms.begin(), ms.end());
        const double median = ms[ms.size() / 2];
        printf("{\"bench\": \"peer_copy\", \"mib\": %zu, \"streams\": %d, \"direction\": \"%s\", \"us\": %.1f, "
               "\"gb_per_s\": %.1f}\n",
               mib, k, both ? "both" : "one", median * 1e3, bytes / (median * 1e-3) / 1e9);
      }
    }
  }
  return 0;
}
