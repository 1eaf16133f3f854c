#include "dist/peer_all_reduce.h"

#ifdef FLAME_WITH_CUDA

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "core/cuda/context.h"
#include "core/cuda/nvrtc.h"
#include "dist/mpi_check.h"  // <mpi.h> without its C++ bindings

namespace flame::dist::detail {
namespace {

constexpr int kThreads = 512;
constexpr size_t kChunk = 8192;               // values per block: 512 threads x 16
constexpr size_t kHeaderBytes = 4096;         // the flags, one u64 per block
constexpr size_t kMaxBlocks = kHeaderBytes / sizeof(unsigned long long);
constexpr size_t kMaxBytes = size_t{4} << 20;  // 128 blocks: resident at once beside other work
static_assert(kMaxBytes / sizeof(float) / kChunk <= kMaxBlocks);
// Kernel status words (PeerAllReduce::failure()).
constexpr unsigned int kPeerClosed = 1;
constexpr unsigned int kTimedOut = 2;

// Note [one-shot all-reduce]. Both forms give each block the same chunk of 8192 values (each
// thread 16 of them: 4 float4, or 16 floats 512 apart), so the chunking does not depend on a
// rank's alignment. control[0]: set by the host to abandon; control[1]: set by a block that gave
// up (kPeerClosed, kTimedOut). A closing exchange (n = 0) signals seq with the top bit set, which
// no all-reduce waits for, so one rank's close never passes for the other's all-reduce.
constexpr const char* kSource = R"(
#define FLAME_THREADS 512
#define FLAME_CLOSE_BIT (1ull << 63)
__device__ __forceinline__ void flame_store_release(unsigned long long* flag, unsigned long long value) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(flag), "l"(value) : "memory");
}
__device__ __forceinline__ unsigned long long flame_load_acquire(const unsigned long long* flag) {
  unsigned long long value;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(value) : "l"(flag) : "memory");
  return value;
}
__device__ __forceinline__ unsigned long long flame_now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ void flame_give_up(volatile unsigned int* control, unsigned int why) {
  control[1] = why;
  __threadfence_system();
}
// After this block's chunk is in its slot: tells the peer's block, then waits for it (for its
// closing signal when `closing`). False when it gave up: abandoned, no peer within `patience_ns`,
// or the peer closed instead of joining this all-reduce.
__device__ bool flame_exchange(unsigned long long* flags, unsigned long long* peer_flags, unsigned long long seq,
                               volatile unsigned int* control, unsigned long long patience_ns, int closing) {
  __shared__ int arrived;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    flame_store_release(peer_flags + blockIdx.x, closing ? (seq | FLAME_CLOSE_BIT) : seq);
    const unsigned long long start = flame_now_ns();
    arrived = 1;
    for (unsigned int spins = 0;; ++spins) {
      const unsigned long long flag = flame_load_acquire(flags + blockIdx.x);
      if (closing ? (flag & FLAME_CLOSE_BIT) != 0ull : flag >= seq) {
        if (!closing && (flag & FLAME_CLOSE_BIT) != 0ull) {
          flame_give_up(control, 1u);
          arrived = 0;
        }
        break;
      }
      if ((spins & 255u) == 255u) {
        if (control[0] != 0u) {
          arrived = 0;
          break;
        }
        if (flame_now_ns() - start > patience_ns) {
          flame_give_up(control, 2u);
          arrived = 0;
          break;
        }
      }
    }
  }
  __syncthreads();
  return arrived != 0;
}
extern "C" __global__ void __launch_bounds__(FLAME_THREADS) flame_one_shot_all_reduce(
    const float* in, float* out, unsigned long long n, float scale, float* mine, const float* theirs,
    unsigned long long* flags, unsigned long long* peer_flags, unsigned long long seq,
    volatile unsigned int* control, unsigned long long patience_ns, int vector, int closing) {
  const unsigned long long begin = (unsigned long long)blockIdx.x * FLAME_THREADS * 16;
  if (vector) {  // n % 4 == 0, in and out 16-byte aligned
    float4 own[4], other[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const unsigned long long i = begin + (k * FLAME_THREADS + threadIdx.x) * 4ull;
      if (i < n) {
        own[k] = *reinterpret_cast<const float4*>(in + i);
        *reinterpret_cast<float4*>(mine + i) = own[k];
      }
    }
    if (!flame_exchange(flags, peer_flags, seq, control, patience_ns, closing)) return;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const unsigned long long i = begin + (k * FLAME_THREADS + threadIdx.x) * 4ull;
      if (i < n) other[k] = __ldcg(reinterpret_cast<const float4*>(theirs + i));
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const unsigned long long i = begin + (k * FLAME_THREADS + threadIdx.x) * 4ull;
      if (i < n)
        *reinterpret_cast<float4*>(out + i) =
            make_float4((own[k].x + other[k].x) * scale, (own[k].y + other[k].y) * scale,
                        (own[k].z + other[k].z) * scale, (own[k].w + other[k].w) * scale);
    }
  } else {
    float own[16], other[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      const unsigned long long i = begin + k * FLAME_THREADS + threadIdx.x;
      if (i < n) {
        own[k] = in[i];
        mine[i] = own[k];
      }
    }
    if (!flame_exchange(flags, peer_flags, seq, control, patience_ns, closing)) return;
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      const unsigned long long i = begin + k * FLAME_THREADS + threadIdx.x;
      if (i < n) other[k] = __ldcg(theirs + i);
    }
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      const unsigned long long i = begin + k * FLAME_THREADS + threadIdx.x;
      if (i < n) out[i] = (own[k] + other[k]) * scale;
    }
  }
}
)";

/// What each rank tells the other at creation.
struct Card {
  char host[MPI_MAX_PROCESSOR_NAME];
  cudaIpcMemHandle_t handle;
  int shared;  // 1 when handle is valid
};

std::string cuda_problem(const char* what, cudaError_t status) {
  cudaGetLastError();  // clear it: this rank goes on without the one-shot path
  return fmt::format("{}: {}", what, cudaGetErrorString(status));
}

}  // namespace

std::unique_ptr<PeerAllReduce> PeerAllReduce::create(int rank, int device, size_t max_bytes,
                                                     std::chrono::milliseconds timeout) {
  FLAME_CHECK(rank == 0 || rank == 1, "dist: the one-shot all-reduce is for 2 ranks, got rank {}", rank);
  FLAME_CHECK(max_bytes > 0 && max_bytes <= kMaxBytes,
              "make_nccl_communicator: one_shot_max_bytes must be at most {} (4 MiB; 0 turns it off), got {}",
              kMaxBytes, max_bytes);
  std::unique_ptr<PeerAllReduce> self(new PeerAllReduce());
  self->rank_ = rank;
  self->device_ = device;
  self->max_bytes_ = max_bytes;
  self->slot_bytes_ = (max_bytes + kHeaderBytes - 1) / kHeaderBytes * kHeaderBytes;
  self->timeout_ = timeout;
  self->abandoned_ = true;  // until both ranks are ready: no closing exchange on the way out
  cuda::context(device);

  std::string problem;
  Card cards[2];
  std::memset(cards, 0, sizeof cards);
  Card& own = cards[rank];
  int length = 0;
  FLAME_MPI_CHECK(MPI_Get_processor_name(own.host, &length));
  const size_t bytes = kHeaderBytes + 2 * self->slot_bytes_;
  cudaError_t status = cudaMalloc(&self->mine_, bytes);
  if (status == cudaSuccess) status = cudaMemset(self->mine_, 0, bytes);
  if (status == cudaSuccess) status = cudaDeviceSynchronize();  // zeroed before the peer can write a flag
  if (status == cudaSuccess) status = cudaIpcGetMemHandle(&own.handle, self->mine_);
  if (status == cudaSuccess) {
    own.shared = 1;
  } else {
    problem = cuda_problem("could not allocate or share this rank's buffer", status);
  }
  MPI_Request request;
  FLAME_MPI_CHECK(
      MPI_Iallgather(MPI_IN_PLACE, 0, MPI_BYTE, cards, sizeof(Card), MPI_BYTE, MPI_COMM_WORLD, &request));
  wait_request(request, timeout, "make_nccl_communicator (one-shot all-reduce buffers)", "", rank);

  const Card& peer = cards[1 - rank];
  int ready = 0;
  if (own.shared == 0) {
  } else if (peer.shared == 0) {
    problem = "the other rank could not share its buffer";
  } else if (std::strncmp(own.host, peer.host, MPI_MAX_PROCESSOR_NAME) != 0) {
    problem = fmt::format("the ranks run on different hosts ({} and {})", own.host, peer.host);
  } else if ((status = cudaIpcOpenMemHandle(reinterpret_cast<void**>(&self->theirs_), peer.handle,
                                            cudaIpcMemLazyEnablePeerAccess)) != cudaSuccess) {
    self->theirs_ = nullptr;
    problem = cuda_problem("could not map the other rank's buffer (no peer access between the GPUs?)", status);
  } else if ((status = cudaHostAlloc(&self->control_host_, 2 * sizeof(unsigned int), cudaHostAllocMapped)) !=
                 cudaSuccess ||
             (status = cudaHostGetDevicePointer(&self->control_device_, self->control_host_, 0)) != cudaSuccess) {
    problem = cuda_problem("could not allocate the mapped control words", status);
  } else {
    self->control_host_[0] = 0;
    self->control_host_[1] = 0;
    try {
      self->kernel_ = cuda::runtime_kernel(kSource, "flame_one_shot_all_reduce", device);
      ready = 1;
    } catch (const Error& e) {
      problem = e.what();
    }
  }
  // Every block of a kernel must be able to run at once (Note [one-shot all-reduce]): the limit
  // shrinks to what both devices hold.
  int64_t mine[2] = {ready, static_cast<int64_t>(max_bytes)};
  if (ready != 0) {
    int per_sm = 0, sms = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<const void*>(self->kernel_),
                                                      kThreads, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || per_sm < 1) {
      cudaGetLastError();
      per_sm = 1;
      sms = 1;
    }
    mine[1] = std::min<int64_t>(mine[1], static_cast<int64_t>(per_sm) * sms * kChunk * sizeof(float));
  }
  int64_t agreed[2] = {0, 0};
  FLAME_MPI_CHECK(MPI_Iallreduce(mine, agreed, 2, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD, &request));
  wait_request(request, timeout, "make_nccl_communicator (one-shot all-reduce agreement)", "", rank);
  self->max_bytes_ = static_cast<size_t>(agreed[1]);
  if (agreed[0] == 0) {
    spdlog::warn("[rank {}] dist: the one-shot all-reduce is off ({}); small all-reduces take ncclAllReduce", rank,
                 problem.empty() ? "the other rank could not map this rank's buffer" : problem);
    self->unmap_and_meet();  // the other rank may have mapped this rank's buffer: freed after it let go
    return nullptr;
  }
  int least = 0;
  FLAME_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &self->highest_priority_));
  self->abandoned_ = false;
  return self;
}

PeerAllReduce::~PeerAllReduce() {
  cudaSetDevice(device_);
  abandon();  // whatever still waits gives up (nothing does after a clean close())
  if (theirs_ != nullptr) cudaIpcCloseMemHandle(theirs_);
  if (mine_ != nullptr) cudaFree(mine_);  // waits for this device's kernels, which have finished or given up
  if (control_host_ != nullptr) cudaFreeHost(control_host_);
}

bool PeerAllReduce::takes(const Tensor& tensor) const {
  return tensor.dtype() == kF32 && tensor.nbytes() <= max_bytes_;
}

cudaError_t PeerAllReduce::launch(const Tensor& tensor, ReduceOp op, cudaStream_t stream, bool urgent) {
  float* data = static_cast<float*>(tensor.data_ptr());
  return launch_raw(data, data, static_cast<size_t>(tensor.numel()), op == ReduceOp::Avg ? 0.5f : 1.0f, stream,
                    urgent, /*closing=*/false);
}

cudaError_t PeerAllReduce::launch_raw(const float* in, float* out, size_t n, float scale, cudaStream_t stream,
                                      bool urgent, bool closing) {
  unsigned long long seq = ++seq_;
  const size_t parity = (seq & 1) * slot_bytes_;
  float* mine = reinterpret_cast<float*>(mine_ + kHeaderBytes + parity);
  const float* theirs = reinterpret_cast<const float*>(theirs_ + kHeaderBytes + parity);
  unsigned long long* flags = reinterpret_cast<unsigned long long*>(mine_);
  unsigned long long* peer_flags = reinterpret_cast<unsigned long long*>(theirs_);
  unsigned int* control = control_device_;
  unsigned long long count = n;
  unsigned long long patience_ns = 2ull * static_cast<unsigned long long>(timeout_.count()) * 1000000ull;
  int vector = n % 4 == 0 && reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  int close = closing ? 1 : 0;
  void* args[] = {&in,  &out, &count, &scale,       &mine,   &theirs, &flags,
                  &peer_flags, &seq, &control, &patience_ns, &vector, &close};
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned int>(std::max<size_t>(1, (n + kChunk - 1) / kChunk)));
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  cudaLaunchAttribute priority{};
  if (urgent) {
    priority.id = cudaLaunchAttributePriority;
    priority.val.priority = highest_priority_;
    config.attrs = &priority;
    config.numAttrs = 1;
  }
  return cudaLaunchKernelExC(&config, reinterpret_cast<const void*>(kernel_), args);
}

std::string PeerAllReduce::failure() const {
  const unsigned int why = control_host_ != nullptr ? reinterpret_cast<volatile unsigned int*>(control_host_)[1] : 0;
  if (why == kPeerClosed)
    return "the other rank destroyed its communicator while this rank's one-shot all-reduce waited for it (the "
           "ranks issued different collectives)";
  if (why == kTimedOut)
    return fmt::format(
        "a one-shot all-reduce waited {} ms (twice the timeout) for the other rank and gave up without writing its "
        "result",
        2 * timeout_.count());
  return "";
}

void PeerAllReduce::close(cudaStream_t stream) {
  if (abandoned_) return;
  // No data: a closing flag, which the other rank's close waits for, so that its kernels, which read
  // this rank's slots, have finished before this rank lets go of them.
  cudaEvent_t done = nullptr;
  bool finished = launch_raw(nullptr, nullptr, 0, 1.0f, stream, false, /*closing=*/true) == cudaSuccess &&
                  cudaEventCreateWithFlags(&done, cudaEventDisableTiming) == cudaSuccess &&
                  cudaEventRecord(done, stream) == cudaSuccess;
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  while (finished) {
    const cudaError_t query = cudaEventQuery(done);
    if (query == cudaSuccess) break;
    if (query != cudaErrorNotReady || std::chrono::steady_clock::now() > deadline) finished = false;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  if (done != nullptr) cudaEventDestroy(done);
  if (!finished || !failure().empty()) {
    spdlog::warn("[rank {}] dist: the other rank did not close its one-shot all-reduce within {} ms{}", rank_,
                 timeout_.count(), failure().empty() ? "" : ": " + failure());
    abandon();
    return;
  }
  unmap_and_meet();
}

void PeerAllReduce::unmap_and_meet() {
  if (theirs_ != nullptr) cudaIpcCloseMemHandle(theirs_);
  theirs_ = nullptr;
  // CUDA IPC: a buffer must not be freed while the other process still maps it.
  if (!mpi_active()) return;
  try {
    MPI_Request request;
    FLAME_MPI_CHECK(MPI_Ibarrier(MPI_COMM_WORLD, &request));
    wait_request(request, timeout_, "dist (one-shot all-reduce buffers released)", "", rank_);
  } catch (const Error& e) {
    spdlog::warn("[rank {}] dist: {}", rank_, e.what());
  }
}

void PeerAllReduce::abandon() {
  abandoned_ = true;
  if (control_host_ != nullptr) reinterpret_cast<volatile unsigned int*>(control_host_)[0] = 1;
}

}  // namespace flame::dist::detail

#endif  // FLAME_WITH_CUDA
