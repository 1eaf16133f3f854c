// Note [NCCL communicator streams]: every collective runs on the communicator's own non-blocking
// stream. Before it, that stream waits on an event recorded on the compute stream (the inputs are
// ready); after it, the compute stream waits on an event recorded on the communication stream (the
// results are ready, and buffers the caching allocator may hand out again are no longer in use) --
// except for all_reduce_overlapped(), whose result the compute stream waits for only at the next
// compute_wait(), so the rest of backward runs while DDP's buckets are reduced.
// The host never blocks (except once when the copy-engine staging buffer grows, Note [copy-engine
// all-reduce]); synchronize() is where the host waits, polling cudaEventQuery and
// ncclCommGetAsyncError against the timeout, and aborts the communicator on failure.
//
// Note [SM carve-out]: DDP's bucket all-reduces run beside backward's GEMMs. NCCL's kernels hold
// some SMs (24 CTAs on the 2x H200) for the whole collective, and a cuBLAS kernel planned for every
// SM then runs partial waves on what is left. With CommunicatorOptions::overlap_sm_carveout = c
// (world > 1), the first all_reduce_overlapped() of a round of at least overlap_carveout_min_bytes
// (4 MiB) sets cuBLAS's SM target to (SMs - c) for the matmuls launched after it, and the
// compute_wait() that covers the last collective, or synchronize(), restores all SMs. Smaller
// all-reduces (DDP's 1 MiB first bucket, all of a small model's gradients) take NCCL tens of
// microseconds, so they do not make the rest of backward plan its GEMMs for fewer SMs.
// Measured on the 2x H200 (MLP benchmark, docs/PERFORMANCE.md, ninth run), W=2 step at batch 256:
// 1.377 ms without a carve-out, 1.280 ms with c = 32 from the first all-reduce, 1.254 ms with
// c = 32 from the first of >= 4 MiB; c = 24 and 40 were slower (1.366, 1.397 ms: cuBLAS's kernel
// choice changes with the target), so the automatic value is 32 on 132 SMs.
//
// Note [copy-engine all-reduce]: with CommunicatorOptions::overlap_all_reduce = CopyEngineGather on
// 2 ranks, all_reduce_overlapped() of an f32 tensor of at least overlap_carveout_min_bytes runs, on
// the communication stream:
//   1. a device copy of the tensor into this rank's slot of a staging buffer [2, n], allocated with
//      ncclMemAlloc and registered as a symmetric window of the communicator, which is created with
//      NCCL_CTA_POLICY_ZERO (its ring all-reduces still run NCCL's kernels);
//   2. ncclAllGather in place, which NCCL then runs on the copy engines: each
//      rank's slot goes to the other over NVLink, and no SM is held while it moves;
//   3. a kernel that writes (slot 0 + slot 1) * scale into the tensor (scale 1/2 for Avg).
// Both ranks evaluate the same expression on the same two slots, so they hold bitwise the same
// result. NCCL's kernels hold no SM during the transfer; the device copy and the sum kernel are one
// memory pass each and do run on SMs beside backward. Needs NcclCalls::Blocking (the kernel is
// launched right after the all-gather call returns) and NCCL's symmetric memory (a staging buffer
// without a window raises). The ranks must agree on the option (checked at construction). For 2 ranks
// an all-gather moves the same bytes as a ring all-reduce; for W ranks it moves W/2 times as many,
// hence 2 ranks only. The staging buffer is reused by every such all-reduce (they run one after
// another on the stream) and grows, collectively, to twice the largest tensor seen. No SM carve-out
// is set for them: NCCL's kernels do not run.
// f32 tensors sent as bf16 (Note [bf16 on the wire]) go the same way in bf16 slots.
// One communicator serves both ways: a second one split off for the copy engines slowed every
// kernel of the process, forward included. Measured on the 2x H200 (docs/PERFORMANCE.md, eleventh
// run), mlp weak scaling 1 -> 2 GPUs: 0.977 at batch 1024 per rank (ring with its 32-SM carve-out:
// 0.957), where the transfer hides behind the backward work after the large gradient; 0.877 at
// batch 256 (ring: 0.936), where it does not. So Ring stays the default.
//
// Note [bf16 on the wire]: with the copy engines, all_reduce_overlapped_as(tensor, bf16) (DDP's
// reduce_dtype = bf16, buckets of at least overlap_carveout_min_bytes of bf16) converts on the
// communication stream, so that no f32 -> bf16 -> f32 pass runs on the compute stream, where it
// would lengthen backward and the optimizer step: a kernel rounds the f32 tensor into this rank's
// bf16 slot, the slots are all-gathered, and the sum kernel writes round_bf16((slot 0 + slot 1) *
// scale) as f32. Rounding is to nearest even with NaN kept quiet, as core/dtype.cpp. Measured on the
// 2x H200 (docs/PERFORMANCE.md, twelfth run), mlp weak scaling against the f32 step at W=1: 0.977 at
// batch 512 and 0.987 at 1024 per rank. The ring keeps DDP's conversions on the compute stream:
// converting on the communication stream for it too made the mlp's W=2 step slower at batch 256
// (1.347 against 1.307 ms; the conversion kernels spread over every SM beside backward's GEMMs),
// though faster at 1024.
//
// Note [NCCL timeouts]: nothing waits forever, in either NcclCalls mode.
// - synchronize() (the host's only wait) raises flame::Error after the timeout, naming the
//   communicator's oldest unfinished collective and the rank, and aborts the communicator.
// - NonBlocking: every call, init included, returns at once and is polled until issued, bounded by
//   the timeout (that polling is its per-collective cost).
// - A watchdog thread covers what the host cannot see: every collective is followed by an event on
//   the communication stream, and the thread checks the oldest unfinished one every 100 ms; a
//   collective unfinished after the timeout while the host is not in synchronize() (the host may be
//   blocked elsewhere, e.g. in a device-to-host copy that waits for it), an NCCL call (a Blocking
//   init or enqueue) that has not returned after the timeout, or an asynchronous NCCL error, makes it
//   log the collective and rank and bring the job down with abort_job (MPI_Abort), so the other
//   ranks do not hang either.
#include "dist/communicator.h"

#ifdef FLAME_WITH_CUDA

#include <nccl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <initializer_list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/cuda/context.h"
#include "core/cuda/nvrtc.h"
#include "core/cuda_device.h"
#include "core/ops.h"
#include "core/storage.h"
#include "dist/collective_timeline.h"
#include "dist/mpi_check.h"
#include "dist/peer_all_reduce.h"

namespace flame::dist {
namespace {

[[noreturn]] void throw_nccl_error(ncclResult_t status, ncclComm_t comm, const char* expr, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  const char* last = comm != nullptr ? ncclGetLastError(comm) : "";
  throw Error(fmt::format("NCCL call failed: {}{}{} [{} at {}:{}]", ncclGetErrorString(status),
                          last && *last ? ": " : "", last ? last : "", expr, base ? base + 1 : file, line));
}

#define FLAME_NCCL_CHECK(expr, comm)                                               \
  do {                                                                             \
    const ncclResult_t flame_nccl_status_ = (expr);                                \
    if (flame_nccl_status_ != ncclSuccess && flame_nccl_status_ != ncclInProgress) \
      throw_nccl_error(flame_nccl_status_, comm, #expr, __FILE__, __LINE__);       \
  } while (0)

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return ncclFloat32;
    case DType::F64:
      return ncclFloat64;
    case DType::F16:
      return ncclFloat16;
    case DType::BF16:
      return ncclBfloat16;
    case DType::I32:
      return ncclInt32;
    case DType::I64:
      return ncclInt64;
    case DType::U8:
    case DType::Bool:
      return ncclUint8;
  }
  FLAME_FAIL("NCCL communicator: unknown dtype");
}

/// The kernels of the copy-engine all-reduce (Note [copy-engine all-reduce]). Its last step:
/// out = (slots[0:n] + slots[n:2n]) * scale, the same expression on both ranks. The vector forms
/// need n % 4 == 0 and 16-byte aligned pointers.
constexpr const char* kTwoRankMeanSource = R"(
extern "C" __global__ void flame_two_rank_mean(const float* __restrict__ slots, float* __restrict__ out,
                                               unsigned long long n, float scale) {
  const float* second = slots + n;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x)
    out[i] = (slots[i] + second[i]) * scale;
}
extern "C" __global__ void flame_two_rank_mean4(const float4* __restrict__ slots, float4* __restrict__ out,
                                                unsigned long long n4, float scale) {
  const float4* second = slots + n4;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n4;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    const float4 a = slots[i], b = second[i];
    out[i] = make_float4((a.x + b.x) * scale, (a.y + b.y) * scale, (a.z + b.z) * scale, (a.w + b.w) * scale);
  }
}

// bf16 on the wire (all_reduce_overlapped_as): the first step rounds the f32 tensor into this rank's
// bf16 slot, the last writes round_bf16((slot 0 + slot 1) * scale) as f32. Rounding to nearest even,
// NaN kept quiet, as core's conversion (core/dtype.cpp).
__device__ __forceinline__ unsigned int flame_to_bf16(float f) {
  unsigned int x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (x >> 16) | 0x40u;
  x += 0x7fffu + ((x >> 16) & 1u);
  return x >> 16;
}
__device__ __forceinline__ float flame_from_bf16(unsigned int h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float flame_bf16_mean(unsigned int a, unsigned int b, float scale) {
  return flame_from_bf16(flame_to_bf16((flame_from_bf16(a) + flame_from_bf16(b)) * scale));
}

extern "C" __global__ void flame_to_bf16_slot(const float* __restrict__ in, unsigned short* __restrict__ slot,
                                              unsigned long long n) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x)
    slot[i] = (unsigned short)flame_to_bf16(in[i]);
}
extern "C" __global__ void flame_to_bf16_slot4(const float4* __restrict__ in, uint2* __restrict__ slot,
                                               unsigned long long n4) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n4;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    const float4 v = in[i];
    slot[i] = make_uint2(flame_to_bf16(v.x) | (flame_to_bf16(v.y) << 16), flame_to_bf16(v.z) | (flame_to_bf16(v.w) << 16));
  }
}
extern "C" __global__ void flame_two_rank_mean_bf16(const unsigned short* __restrict__ slots, float* __restrict__ out,
                                                    unsigned long long n, float scale) {
  const unsigned short* second = slots + n;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x)
    out[i] = flame_bf16_mean(slots[i], second[i], scale);
}
extern "C" __global__ void flame_two_rank_mean_bf16x4(const uint2* __restrict__ slots, float4* __restrict__ out,
                                                      unsigned long long n4, float scale) {
  const uint2* second = slots + n4;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n4;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    const uint2 a = slots[i], b = second[i];
    out[i] = make_float4(flame_bf16_mean(a.x & 0xffffu, b.x & 0xffffu, scale), flame_bf16_mean(a.x >> 16, b.x >> 16, scale),
                         flame_bf16_mean(a.y & 0xffffu, b.y & 0xffffu, scale), flame_bf16_mean(a.y >> 16, b.y >> 16, scale));
  }
}
)";

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
using StagingWindow = ncclWindow_t;
#else
using StagingWindow = void*;  // no symmetric windows before NCCL 2.27; CopyEngineGather is refused
#endif

/// Device memory from ncclMemAlloc, registered as a symmetric window of the communicator.
struct SymmetricBuffer {
  void* data = nullptr;
  StagingWindow window = nullptr;
  size_t bytes = 0;
};

std::string label(const char* op, const std::string& what) {
  return what.empty() ? std::string(op) : fmt::format("{} '{}'", op, what);
}

class NcclCommunicator final : public Communicator {
 public:
  using Clock = std::chrono::steady_clock;

  NcclCommunicator(const ProcessGroup& group, CommunicatorOptions options)
      : Communicator(group), options_(options), device_(group.cuda_device()) {
    FLAME_CHECK(options_.timeout.count() > 0, "make_nccl_communicator: timeout must be positive, got {} ms",
                options_.timeout.count());
    FLAME_CHECK(options_.overlap_all_reduce == OverlapAllReduce::Ring || group.world_size <= 2,
                "make_nccl_communicator: overlap_all_reduce CopyEngineGather is for 2 ranks (an all-gather moves W/2 "
                "times the bytes of a ring all-reduce), this group has {}; use OverlapAllReduce::Ring",
                group.world_size);
    FLAME_CHECK(options_.overlap_all_reduce == OverlapAllReduce::Ring || options_.nccl_calls == NcclCalls::Blocking,
                "make_nccl_communicator: overlap_all_reduce CopyEngineGather needs NcclCalls::Blocking (its staging "
                "buffer is registered and its sum kernel launched right after NCCL calls that must have returned)");
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 28, 0)
    FLAME_CHECK(options_.overlap_all_reduce == OverlapAllReduce::Ring,
                "make_nccl_communicator: overlap_all_reduce CopyEngineGather needs NCCL 2.28 or later (copy-engine "
                "collectives); FLAME was built with NCCL {}.{}",
                NCCL_MAJOR, NCCL_MINOR);
#endif
    FLAME_CHECK(group.world_size == 1 || detail::mpi_active(),
                "make_nccl_communicator: a group of {} ranks needs MPI to share the NCCL id; call "
                "ProcessGroup::init() under mpirun/srun",
                group.world_size);
    FLAME_CHECK(options_.one_shot_max_bytes <= (size_t{4} << 20),
                "make_nccl_communicator: one_shot_max_bytes must be at most 4 MiB (0 turns it off), got {}",
                options_.one_shot_max_bytes);
    cuda::context(device_.index);  // makes device_ current
    const int sms = cuda::multiprocessor_count(device_.index);
    FLAME_CHECK(
        options_.nccl_max_ctas >= 0 && (options_.overlap_sm_carveout == CommunicatorOptions::kAutoCarveout ||
                                        (options_.overlap_sm_carveout >= 0 && options_.overlap_sm_carveout < sms)),
        "make_nccl_communicator: nccl_max_ctas ({}) must be >= 0 and overlap_sm_carveout ({}) in [0, {}) (the "
        "SMs of {}) or kAutoCarveout",
        options_.nccl_max_ctas, options_.overlap_sm_carveout, sms, device_.str());
    if (options_.overlap_sm_carveout == CommunicatorOptions::kAutoCarveout)
      options_.overlap_sm_carveout = std::min(32, sms / 4);
    if (group.world_size == 1) options_.overlap_sm_carveout = 0;  // nothing runs beside the GEMMs
    overlap_gemm_sms_ = sms - options_.overlap_sm_carveout;
    int least_priority = 0;
    FLAME_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least_priority, &highest_priority_));
    FLAME_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking,
                                                  options_.high_priority_stream ? highest_priority_ : 0));
    FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming));
    FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&drained_, cudaEventDisableTiming));

    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (group.rank == 0) FLAME_NCCL_CHECK(ncclGetUniqueId(&id), nullptr);
    if (group.world_size > 1) {
      MPI_Request request;
      FLAME_MPI_CHECK(MPI_Ibcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD, &request));
      detail::wait_request(request, options_.timeout, "make_nccl_communicator (unique id broadcast)", "", group.rank);
      check_ranks_agree();
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = options_.nccl_calls == NcclCalls::Blocking ? 1 : 0;
    if (options_.nccl_max_ctas > 0) config.maxCTAs = options_.nccl_max_ctas;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    // Note [copy-engine all-reduce]: one communicator for every collective, as a second one in the
    // process slowed compute (docs/PERFORMANCE.md, ninth and eleventh runs).
    copy_engines_ = options_.overlap_all_reduce == OverlapAllReduce::CopyEngineGather && group.world_size == 2;
    if (copy_engines_) config.CTAPolicy = NCCL_CTA_POLICY_ZERO;
#endif
    timeline_ = detail::CollectiveTimeline::from_environment(group.rank);  // Note [collective timeline]
    watchdog_ = std::thread([this] { watch(); });
    try {
      {
        CallInProgress call(*this, "ncclCommInitRankConfig");
        FLAME_NCCL_CHECK(ncclCommInitRankConfig(&comm_, group.world_size, id, group.rank, &config), nullptr);
      }
      comm_ready_.store(true);
      wait_async("ncclCommInitRankConfig", "");
      barrier_buffer_ = zeros({1}, {kI32, device_});
      if (group.world_size == 2 && options_.one_shot_max_bytes > 0) {  // Note [one-shot all-reduce]
        peer_ = detail::PeerAllReduce::create(group.rank, device_.index, options_.one_shot_max_bytes,
                                              options_.timeout);
        peer_watch_.store(peer_.get());
      }
    } catch (...) {
      peer_watch_.store(nullptr);
      peer_.reset();
      stop_watchdog();  // a joinable std::thread must not outlive a failed constructor
      if (comm_ != nullptr) ncclCommAbort(comm_);
      cudaEventDestroy(drained_);
      cudaEventDestroy(inputs_ready_);
      cudaStreamDestroy(stream_);
      throw;
    }
  }

  ~NcclCommunicator() override {
    stop_watchdog();
    try {
      end_carveout();
    } catch (...) {  // a destructor must not throw; the device is unusable anyway if this fails
    }
    bool unfinished = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      unfinished = recycle_finished() != cudaSuccess || !issued_.empty();
    }
    if (peer_ != nullptr) {  // Note [one-shot all-reduce]; its buffers go last, after NCCL's abort below
      if (unfinished || broken_.load() || std::uncaught_exceptions() > 0) {
        peer_->abandon();
      } else {
        peer_->close(stream_);
      }
    }
    if (timeline_ != nullptr && (unfinished || broken_.load() || std::uncaught_exceptions() > 0))
      timeline_->discard();
    timeline_.reset();  // writes it (Note [collective timeline])
    // A collective that never finished (a peer is gone), or an exception unwinding past us: finalizing
    // would wait for peers that may never come, so abort (Note [NCCL timeouts]).
    if (comm_ != nullptr && (unfinished || std::uncaught_exceptions() > 0)) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    // Note [deferred mean]: the compute stream may still read a key's slots (an optimizer step just
    // issued); the communication stream's users have finished or been aborted above.
    if (!deferred_slots_.empty()) cudaStreamSynchronize(cuda::compute_stream(device_.index));
    release_symmetric_buffers();
    if (comm_ != nullptr) {
      // Flush and destroy cleanly when possible; abort when finalising fails or outlasts the timeout.
      const ncclResult_t started = ncclCommFinalize(comm_);
      ncclResult_t state = started == ncclSuccess || started == ncclInProgress ? ncclInProgress : started;
      const auto deadline = Clock::now() + options_.timeout;
      while (state == ncclInProgress && Clock::now() < deadline) {
        if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
        if (state == ncclInProgress) std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      if (state == ncclSuccess) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    peer_watch_.store(nullptr);
    peer_.reset();  // cudaFree waits for the device: every kernel has finished, given up or been aborted
    if (drained_) cudaEventDestroy(drained_);
    for (const Issued& issued : issued_) cudaEventDestroy(issued.done);
    for (cudaEvent_t event : free_events_) cudaEventDestroy(event);
    if (inputs_ready_) cudaEventDestroy(inputs_ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void all_reduce(const Tensor& tensor, ReduceOp op, const std::string& what) override {
    check_usable("all_reduce", what);
    check_tensor("all_reduce", tensor, "tensor");
    check_reducible("NCCL", "all_reduce", tensor.dtype(), op);
    Tensor work = tensor.contiguous();
    enqueue("all_reduce", what, [&] {
      if (peer_ != nullptr && peer_->takes(work)) return one_shot(work, op, what, OverlapPriority::Normal);
      return ncclAllReduce(work.data_ptr(), work.data_ptr(), work.numel(), nccl_type(work.dtype()), nccl_op(op), comm_,
                           stream_);
    });
    if (!work.is_same(tensor)) Tensor(tensor).copy_(work);
  }

  uint64_t one_shot_all_reduces() const override { return peer_ != nullptr ? peer_->calls() : 0; }

  uint64_t all_reduce_overlapped(const Tensor& tensor, ReduceOp op, const std::string& what,
                                 OverlapPriority priority) override {
    check_usable("all_reduce", what);
    check_tensor("all_reduce", tensor, "tensor");
    check_reducible("NCCL", "all_reduce", tensor.dtype(), op);
    FLAME_CHECK(tensor.is_contiguous(), "dist::all_reduce_overlapped '{}': the tensor must be contiguous, got {}", what,
                tensor.describe());
    if (copy_engines_ && tensor.dtype() == kF32 && tensor.nbytes() >= options_.overlap_carveout_min_bytes)
      return copy_engine_all_reduce(tensor, kF32, op, what, priority);
    if (peer_ != nullptr && peer_->takes(tensor)) {
      enqueue("all_reduce", what, [&] { return one_shot(tensor, op, what, priority); }, ComputeWaits::Later);
      return issued_count_;
    }
    enqueue(
        "all_reduce", what,
        [&] {
          return ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor.dtype()),
                               nccl_op(op), comm_, stream_);
        },
        ComputeWaits::Later);
    if (options_.overlap_sm_carveout > 0 && !carved_out_ &&
        tensor.nbytes() >= options_.overlap_carveout_min_bytes) {  // Note [SM carve-out]
      cuda::set_gemm_sm_target(device_.index, overlap_gemm_sms_);
      carved_out_ = true;
    }
    return issued_count_;
  }

  Device device() const override { return device_; }

  bool reduces_as(const Tensor& tensor, DType wire) const override {
    // Note [bf16 on the wire]: the copy engines only; the bytes sent decide, as for f32 tensors.
    return copy_engines_ && tensor.dtype() == kF32 && wire == kBF16 &&
           static_cast<size_t>(tensor.numel()) * dtype_size(kBF16) >= options_.overlap_carveout_min_bytes;
  }

  uint64_t all_reduce_overlapped_as(const Tensor& tensor, DType wire, ReduceOp op, const std::string& what,
                                    OverlapPriority priority) override {
    check_usable("all_reduce", what);
    check_tensor("all_reduce", tensor, "tensor");
    check_reducible("NCCL", "all_reduce", tensor.dtype(), op);
    FLAME_CHECK(tensor.is_contiguous(), "dist::all_reduce_overlapped_as '{}': the tensor must be contiguous, got {}",
                what, tensor.describe());
    if (!reduces_as(tensor, wire)) return Communicator::all_reduce_overlapped_as(tensor, wire, op, what, priority);
    return copy_engine_all_reduce(tensor, wire, op, what, priority);
  }

  bool defers_mean(const Tensor& tensor, DType wire) const override { return reduces_as(tensor, wire); }

  DeferredMean all_reduce_overlapped_deferred(const Tensor& tensor, DType wire, ReduceOp op, size_t key,
                                              const std::string& what, OverlapPriority priority) override {
    check_usable("all_reduce", what);
    check_tensor("all_reduce", tensor, "tensor");
    check_reducible("NCCL", "all_reduce", tensor.dtype(), op);
    FLAME_CHECK(tensor.is_contiguous() && tensor.dim() == 1,
                "dist::all_reduce_overlapped_deferred '{}': the tensor must be 1-D and contiguous, got {}", what,
                tensor.describe());
    if (!defers_mean(tensor, wire))  // raises, naming why
      return Communicator::all_reduce_overlapped_deferred(tensor, wire, op, key, what, priority);
    // Note [deferred mean]: each key keeps its own slots until its next all-reduce.
    SymmetricBuffer& region = deferred_slots_[key];
    const uint64_t number = copy_engine_all_reduce(tensor, wire, op, what, priority, &region);
    const int64_t n = tensor.numel();
    const Tensor slots =
        Tensor::from_storage(Storage::borrow(device_, region.data, region.bytes), {2, n}, {n, 1}, 0, wire);
    return {slots, op == ReduceOp::Avg ? 0.5f : 1.0f, number};
  }

  void write_deferred_mean(const DeferredMean& mean, const Tensor& out) override {
    check_usable("write_deferred_mean", "");
    const Tensor& slots = mean.slots;
    FLAME_CHECK(slots.defined() && slots.device() == device_ && slots.dtype() == kBF16 && slots.dim() == 2 &&
                    slots.size(0) == 2 && slots.is_contiguous() && out.device() == device_ && out.dtype() == kF32 &&
                    out.is_contiguous() && out.numel() == slots.size(1),
                "dist::write_deferred_mean (NCCL): slots {} must be the [2, n] bf16 of a deferred all-reduce on {} "
                "and out {} contiguous f32 [n]",
                slots.defined() ? slots.describe() : "undefined", device_.str(), out.describe());
    const size_t n = static_cast<size_t>(out.numel());
    const bool vector = vector_ready(n, out.data_ptr(), slots.data_ptr());
    const cudaKernel_t kernel = copy_engine_kernels(/*bf16=*/true, vector).mean;
    FLAME_CUDA_CHECK(launch_over(kernel, cuda::compute_stream(device_.index), slots.data_ptr(), out.data_ptr(),
                                 vector ? n / 4 : n, mean.scale, OverlapPriority::Normal));
  }

  void compute_wait(uint64_t collective) override {
    check_usable("compute_wait", "");
    FLAME_CHECK(collective >= 1 && collective <= issued_count_,
                "dist::compute_wait: collective {} was never issued on this communicator ({} so far)", collective,
                issued_count_);
    std::lock_guard<std::mutex> lock(mutex_);
    recycle_finished();
    // Collectives finish in issue order: when `collective` is no longer in issued_, it has finished.
    for (const Issued& issued : issued_) {
      if (issued.number < collective) continue;
      if (issued.number == collective)
        FLAME_CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(device_.index), issued.done, 0));
      break;
    }
    if (timeline_ != nullptr) {  // also when it has finished already: where the compute stream got to
      const auto named = std::find_if(timeline_labels_.begin(), timeline_labels_.end(),
                                      [&](const auto& entry) { return entry.first == collective; });
      mark(cuda::compute_stream(device_.index), "wait",
           named != timeline_labels_.end() ? named->second : fmt::format("collective {}", collective));
    }
    if (collective == issued_count_) end_carveout();
  }

  void compute_wait() override {
    check_usable("compute_wait", "");
    std::lock_guard<std::mutex> lock(mutex_);
    if (last_issued_ != nullptr) {
      FLAME_CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(device_.index), last_issued_, 0));
      mark(cuda::compute_stream(device_.index), "wait", "all");
    }
    end_carveout();
  }

  void broadcast(const Tensor& tensor, int root, const std::string& what) override {
    check_usable("broadcast", what);
    check_tensor("broadcast", tensor, "tensor");
    check_root(root);
    Tensor work = tensor.contiguous();
    enqueue("broadcast", what, [&] {
      return ncclBroadcast(work.data_ptr(), work.data_ptr(), work.numel(), nccl_type(work.dtype()), root, comm_,
                           stream_);
    });
    if (!work.is_same(tensor)) Tensor(tensor).copy_(work);
  }

  void all_gather(const Tensor& input, const Tensor& output, const std::string& what) override {
    check_usable("all_gather", what);
    check_tensor("all_gather", input, "input");
    check_tensor("all_gather", output, "output");
    check_all_gather(input, output);
    Tensor send = input.contiguous();
    Tensor receive = output.contiguous();
    enqueue("all_gather", what, [&] {
      return ncclAllGather(send.data_ptr(), receive.data_ptr(), send.numel(), nccl_type(send.dtype()), comm_, stream_);
    });
    if (!receive.is_same(output)) Tensor(output).copy_(receive);
  }

  void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op, const std::string& what) override {
    check_usable("reduce_scatter", what);
    check_tensor("reduce_scatter", input, "input");
    check_tensor("reduce_scatter", output, "output");
    check_reduce_scatter("NCCL", input, output, op);
    Tensor send = input.contiguous();
    Tensor receive = output.contiguous();
    enqueue("reduce_scatter", what, [&] {
      return ncclReduceScatter(send.data_ptr(), receive.data_ptr(), receive.numel(), nccl_type(send.dtype()),
                               nccl_op(op), comm_, stream_);
    });
    if (!receive.is_same(output)) Tensor(output).copy_(receive);
  }

  void barrier() override {
    check_usable("barrier", "");
    enqueue("barrier", "", [&] {
      return ncclAllReduce(barrier_buffer_.data_ptr(), barrier_buffer_.data_ptr(), 1, ncclInt32, ncclSum, comm_,
                           stream_);
    });
    synchronize();
  }

  void synchronize() override {
    check_usable("synchronize", "");
    FLAME_CUDA_CHECK(cudaEventRecord(drained_, stream_));
    HostWaiting waiting(host_waiting_);
    const auto deadline = Clock::now() + options_.timeout;
    for (int polls = 0;; ++polls) {
      const cudaError_t query = cudaEventQuery(drained_);
      if (query == cudaSuccess) break;
      if (query != cudaErrorNotReady) {
        fail("synchronize", "", fmt::format("CUDA error {}", cudaGetErrorString(query)));
      }
      ncclResult_t state = ncclSuccess;
      const ncclResult_t polled = ncclCommGetAsyncError(comm_, &state);
      if (polled != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
        fail("synchronize", "",
             fmt::format("NCCL error {}: {}", ncclGetErrorString(polled != ncclSuccess ? polled : state),
                         ncclGetLastError(comm_)));
      }
      if (Clock::now() > deadline) {
        fail("synchronize", "",
             fmt::format("timed out after {} ms waiting for {}: another rank did not join it (it failed, is stuck, "
                         "or issues collectives in a different order or with different shapes)",
                         options_.timeout.count(), oldest_unfinished()));
      }
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (peer_ != nullptr) {  // a one-shot all-reduce that gave up finished without its result
      const std::string problem = peer_->failure();
      if (!problem.empty()) fail("synchronize", "", problem);
    }
    end_carveout();
  }

 private:
  /// Note [one-shot all-reduce]: launches the kernel on stream_ inside enqueue(); ncclSuccess or
  /// fail().
  ncclResult_t one_shot(const Tensor& tensor, ReduceOp op, const std::string& what, OverlapPriority priority) {
    const cudaError_t launched = peer_->launch(tensor, op, stream_, priority == OverlapPriority::High);
    if (launched != cudaSuccess)
      fail("all_reduce", what, fmt::format("the one-shot all-reduce kernel: {}", cudaGetErrorString(launched)));
    return ncclSuccess;
  }

  /// Gives GEMMs every SM again (Note [SM carve-out]).
  void end_carveout() {
    if (!carved_out_) return;
    cuda::set_gemm_sm_target(device_.index, 0);
    carved_out_ = false;
  }

  static ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Avg ? ncclAvg : ncclSum; }

  /// The ranks must pass the same overlap_all_reduce (and, for CopyEngineGather, the same
  /// overlap_carveout_min_bytes) and one_shot_max_bytes: they decide which calls each all-reduce
  /// makes, and a mismatch would otherwise hang until the watchdog ends the job. One MPI reduction
  /// at construction.
  void check_ranks_agree() {
    const int64_t mine[3] = {static_cast<int64_t>(options_.overlap_all_reduce),
                             static_cast<int64_t>(options_.overlap_carveout_min_bytes),
                             static_cast<int64_t>(options_.one_shot_max_bytes)};
    int64_t low[3] = {0, 0, 0}, high[3] = {0, 0, 0};
    MPI_Request requests[2];
    FLAME_MPI_CHECK(MPI_Iallreduce(mine, low, 3, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD, &requests[0]));
    FLAME_MPI_CHECK(MPI_Iallreduce(mine, high, 3, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD, &requests[1]));
    for (MPI_Request& request : requests)
      detail::wait_request(request, options_.timeout, "make_nccl_communicator (options agreement)", "", group_.rank);
    const auto name = [](int64_t mode) { return mode == 0 ? "Ring" : "CopyEngineGather"; };
    const bool copy_engines = high[0] == static_cast<int64_t>(OverlapAllReduce::CopyEngineGather);
    FLAME_CHECK(low[0] == high[0] && (!copy_engines || low[1] == high[1]),
                "make_nccl_communicator: the ranks disagree on overlap_all_reduce ({} on some, {} on others) or, "
                "with CopyEngineGather, on overlap_carveout_min_bytes ({} to {}); every rank must pass the same",
                name(low[0]), name(high[0]), low[1], high[1]);
    FLAME_CHECK(low[2] == high[2],
                "make_nccl_communicator: the ranks disagree on one_shot_max_bytes ({} to {}); every rank must pass the "
                "same (it decides which all-reduces take the one-shot kernel)",
                low[2], high[2]);
  }

  /// Note [copy-engine all-reduce]: `tensor` (f32) travels as `wire` (f32 or bf16); its kernels
  /// run at `priority` (OverlapPriority). With `deferred` (Note [deferred mean]) the slots go to
  /// that buffer and no sum kernel runs: the tensor keeps this rank's values. Returns the
  /// collective's number.
  uint64_t copy_engine_all_reduce(const Tensor& tensor, DType wire, ReduceOp op, const std::string& what,
                                  OverlapPriority priority, SymmetricBuffer* deferred = nullptr) {
    const bool bf16 = wire == kBF16;
    const size_t n = static_cast<size_t>(tensor.numel());
    const size_t slot_bytes = n * dtype_size(wire);
    if (deferred != nullptr) {
      // The compute stream may still read this key's earlier slots, the communication stream the
      // shared staging buffer.
      ensure_symmetric(*deferred, 2 * slot_bytes, what, {stream_, cuda::compute_stream(device_.index)});
    } else {
      ensure_symmetric(staging_, 2 * slot_bytes, what, {stream_});
    }
    char* slots = static_cast<char*>(deferred != nullptr ? deferred->data : staging_.data);
    char* own = slots + static_cast<size_t>(group_.rank) * slot_bytes;
    float* out = static_cast<float*>(tensor.data_ptr());
    const bool vector = vector_ready(n, out, slots);
    const size_t items = vector ? n / 4 : n;
    // Resolved before any NCCL call of this all-reduce (compiled on first use, then kept).
    const CopyEngineKernels& kernels = copy_engine_kernels(bf16, vector);
    const cudaKernel_t mean = kernels.mean;
    const cudaKernel_t round = kernels.round;
    enqueue(
        "all_reduce", what,
        [&] {
          const cudaError_t copied =
              bf16 ? launch_over(round, stream_, out, own, items, std::nullopt, priority)
                   : cudaMemcpyAsync(own, out, tensor.nbytes(), cudaMemcpyDeviceToDevice, stream_);
          if (copied != cudaSuccess)
            fail("all_reduce", what, fmt::format("copy into the staging buffer: {}", cudaGetErrorString(copied)));
          mark(stream_, "staged", what);
          const ncclResult_t status = ncclAllGather(own, slots, n, nccl_type(wire), comm_, stream_);
          mark(stream_, "gathered", what);
          if (status == ncclSuccess && deferred == nullptr) {  // Blocking calls (checked at construction): the
                                                              // all-gather is on stream_
            const cudaError_t launched =
                launch_over(mean, stream_, slots, out, items, op == ReduceOp::Avg ? 0.5f : 1.0f, priority);
            if (launched != cudaSuccess)
              fail("all_reduce", what, fmt::format("the sum kernel: {}", cudaGetErrorString(launched)));
          }
          return status;
        },
        ComputeWaits::Later);
    return issued_count_;
  }

  /// The copy-engine all-reduce's kernels for one wire dtype and vector width: `round` writes f32
  /// into a bf16 slot (null for f32), `mean` sums the two slots into the f32 bucket.
  struct CopyEngineKernels {
    cudaKernel_t mean = nullptr;
    cudaKernel_t round = nullptr;
  };

  /// Looks the kernels up once per communicator: runtime_kernel would hash and compare the whole
  /// source on every bucket of every step. Loaded kernels stay valid for the process, even after
  /// cuda::clear_memory_kernel_cache(). Only the thread that issues collectives calls it (the
  /// watchdog never does), so it needs no lock.
  const CopyEngineKernels& copy_engine_kernels(bool bf16, bool vector) {
    CopyEngineKernels& kernels = copy_engine_kernels_[bf16 ? 1 : 0][vector ? 1 : 0];
    if (kernels.mean != nullptr) return kernels;
    const char* mean = bf16 ? (vector ? "flame_two_rank_mean_bf16x4" : "flame_two_rank_mean_bf16")
                            : (vector ? "flame_two_rank_mean4" : "flame_two_rank_mean");
    const char* round = vector ? "flame_to_bf16_slot4" : "flame_to_bf16_slot";
    CopyEngineKernels resolved;
    resolved.round = bf16 ? cuda::runtime_kernel(kTwoRankMeanSource, round, device_.index) : nullptr;
    resolved.mean = cuda::runtime_kernel(kTwoRankMeanSource, mean, device_.index);
    kernels = resolved;
    return kernels;
  }

  /// Whether the vector kernels can take n values at out (f32) and slots: they read 4 values at a
  /// time, 16 bytes of f32 and 8 of bf16 (own slot too).
  static bool vector_ready(size_t n, const void* out, const void* slots) {
    return n % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0 && reinterpret_cast<uintptr_t>(slots) % 16 == 0;
  }

  /// Launches `kernel(in, out, items[, scale])` on `stream`, one thread per item (grid-stride, at
  /// most 4 blocks per SM): the copy-engine all-reduce's rounding and sum kernels. High priority
  /// is a launch attribute, so it applies to this kernel alone, whatever the stream's priority.
  cudaError_t launch_over(cudaKernel_t kernel, cudaStream_t stream, const void* in, void* out, size_t items,
                          std::optional<float> scale, OverlapPriority priority) {
    unsigned long long count = items;
    float factor = scale.value_or(1.0f);
    constexpr unsigned int kThreads = 256;
    const unsigned long long blocks = (count + kThreads - 1) / kThreads;
    const unsigned int grid = static_cast<unsigned int>(std::max<unsigned long long>(
        1, std::min<unsigned long long>(blocks, 4ull * cuda::multiprocessor_count(device_.index))));
    void* args[] = {&in, &out, &count, &factor};
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(grid);
    config.blockDim = dim3(kThreads);
    config.stream = stream;
    cudaLaunchAttribute urgent{};
    if (priority == OverlapPriority::High) {
      urgent.id = cudaLaunchAttributePriority;
      urgent.val.priority = highest_priority_;
      config.attrs = &urgent;
      config.numAttrs = 1;
    }
    return cudaLaunchKernelExC(&config, reinterpret_cast<const void*>(kernel), args);
  }

  /// Makes `buffer` hold at least `need` bytes of ncclMemAlloc memory registered as a symmetric
  /// window (Note [copy-engine all-reduce]). Collective when it grows; every rank grows it at the
  /// same all-reduce, as they issue the same ones. `readers`: the streams whose earlier work may
  /// still use the old buffer, drained first (the watchdog bounds this wait).
  void ensure_symmetric(SymmetricBuffer& buffer, size_t need, const std::string& what,
                        std::initializer_list<cudaStream_t> readers) {
    if (need <= buffer.bytes) return;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    if (buffer.data != nullptr) {
      for (cudaStream_t reader : readers) {
        const cudaError_t drained = cudaStreamSynchronize(reader);
        if (drained != cudaSuccess)
          fail("all_reduce", what, fmt::format("waiting to grow the staging buffer: {}", cudaGetErrorString(drained)));
      }
    }
    release(buffer);
    CallInProgress call(*this, "ncclCommWindowRegister");
    ncclResult_t status = ncclMemAlloc(&buffer.data, need);
    if (status == ncclSuccess) {
      status = ncclCommWindowRegister(comm_, buffer.data, need, &buffer.window, NCCL_WIN_COLL_SYMMETRIC);
      if (status != ncclSuccess) {
        ncclMemFree(buffer.data);
        buffer.data = nullptr;
      }
    } else {
      buffer.data = nullptr;
    }
    if (status != ncclSuccess)
      fail("all_reduce", what,
           fmt::format("could not allocate and register the {}-byte copy-engine staging buffer: NCCL error {}: {}",
                       need, ncclGetErrorString(status), ncclGetLastError(comm_)));
    if (buffer.window == nullptr) {  // NCCL without symmetric memory (e.g. NCCL_CUMEM_ENABLE=0) gives no window
      ncclMemFree(buffer.data);
      buffer.data = nullptr;
      fail("all_reduce", what,
           "NCCL registered no symmetric window for the copy-engine staging buffer (symmetric memory is off or "
           "unsupported here, e.g. NCCL_CUMEM_ENABLE=0); use OverlapAllReduce::Ring");
    }
    buffer.bytes = need;
#else
    (void)buffer;
    (void)need;
    (void)what;
    (void)readers;
#endif
  }

  /// Deregisters and frees `buffer` (its window only while the communicator is usable).
  void release(SymmetricBuffer& buffer) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    if (buffer.data == nullptr) return;
    if (comm_ != nullptr && buffer.window != nullptr) ncclCommWindowDeregister(comm_, buffer.window);
    ncclMemFree(buffer.data);
#endif
    buffer = SymmetricBuffer{};
  }

  /// Frees the staging buffer and every key's deferred slots.
  void release_symmetric_buffers() {
    release(staging_);
    for (auto& [key, region] : deferred_slots_) release(region);
    deferred_slots_.clear();
  }

  enum class ComputeWaits { Now, Later };

  /// Orders `call` (an NCCL enqueue on stream_) after the compute stream's work, records its
  /// completion event for the watchdog, and (ComputeWaits::Now) orders the compute stream's later
  /// work after it (Note [NCCL communicator streams]).
  template <class Call>
  void enqueue(const char* op, const std::string& what, Call call, ComputeWaits compute_waits = ComputeWaits::Now) {
    cudaStream_t compute = cuda::compute_stream(device_.index);
    mark(compute, "issue", what);  // before inputs_ready_: the communication stream's marks follow it
    FLAME_CUDA_CHECK(cudaEventRecord(inputs_ready_, compute));
    FLAME_CUDA_CHECK(cudaStreamWaitEvent(stream_, inputs_ready_, 0));
    mark(stream_, "begin", what);
    ncclResult_t status;
    {
      CallInProgress in_call(*this, op);
      status = call();
    }
    if (status != ncclSuccess && status != ncclInProgress) {
      fail(op, what, fmt::format("NCCL error {}: {}", ncclGetErrorString(status), ncclGetLastError(comm_)));
    }
    wait_async(op, what);
    mark(stream_, "end", what);  // after wait_async: with NonBlocking calls the work is only then on stream_
    const cudaEvent_t done = record_issued(op, what);
    if (timeline_ != nullptr) {  // compute_wait() names its mark after the collective
      timeline_labels_.emplace_back(issued_count_, what);
      if (timeline_labels_.size() > 64) timeline_labels_.pop_front();
    }
    if (compute_waits == ComputeWaits::Now) FLAME_CUDA_CHECK(cudaStreamWaitEvent(compute, done, 0));
  }

  /// Note [collective timeline]: a mark on `stream` when FLAME_NCCL_TIMELINE is set.
  void mark(cudaStream_t stream, const char* name, const std::string& what) {
    if (timeline_ != nullptr) timeline_->mark(stream, stream == stream_ ? "comm" : "compute", name, what);
  }

  /// A collective issued on stream_ and the event recorded after it (Note [NCCL timeouts]).
  struct Issued {
    cudaEvent_t done;
    Clock::time_point when;
    const char* op;    // "all_reduce", ...
    std::string what;  // "DDP bucket 3" (label(op, what) is formatted only for a report)
    uint64_t number;   // 1, 2, ... in issue order
  };

  /// Records an event after the collective just enqueued on stream_ and queues it for the watchdog;
  /// recycles the events of collectives that have finished.
  cudaEvent_t record_issued(const char* op, const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    recycle_finished();
    cudaEvent_t event = nullptr;
    if (free_events_.empty()) {
      FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    } else {
      event = free_events_.back();
      free_events_.pop_back();
    }
    FLAME_CUDA_CHECK(cudaEventRecord(event, stream_));
    issued_.push_back(Issued{event, Clock::now(), op, what, ++issued_count_});
    last_issued_ = event;
    return event;
  }

  /// Moves the events of finished collectives from the front of issued_ to the free pool (mutex_
  /// held). Returns the CUDA error of a failed query (cudaSuccess otherwise).
  cudaError_t recycle_finished() {
    while (!issued_.empty()) {
      const cudaError_t query = cudaEventQuery(issued_.front().done);
      if (query == cudaErrorNotReady) return cudaSuccess;
      if (query != cudaSuccess) return query;
      free_events_.push_back(issued_.front().done);
      issued_.pop_front();
    }
    return cudaSuccess;
  }

  std::string oldest_unfinished() {
    std::lock_guard<std::mutex> lock(mutex_);
    recycle_finished();
    return issued_.empty() ? std::string("the communication stream") : label(issued_.front().op, issued_.front().what);
  }

  /// Marks an NCCL host call in progress for the watchdog (a Blocking init or enqueue can wait for
  /// peers).
  struct CallInProgress {
    CallInProgress(NcclCommunicator& self, const char* op) : self_(self) {
      self_.call_name_.store(op);
      self_.call_since_ns_.store(Clock::now().time_since_epoch().count());
    }
    ~CallInProgress() { self_.call_since_ns_.store(0); }
    NcclCommunicator& self_;
  };

  /// The host is inside synchronize(), which enforces the timeout itself and raises.
  struct HostWaiting {
    explicit HostWaiting(std::atomic<bool>& flag) : flag_(flag) { flag_.store(true); }
    ~HostWaiting() { flag_.store(false); }
    std::atomic<bool>& flag_;
  };

  /// The watchdog thread (Note [NCCL timeouts]).
  void watch() {
    cudaSetDevice(device_.index);
    std::unique_lock<std::mutex> stop_lock(stop_mutex_);
    while (!stop_cv_.wait_for(stop_lock, std::chrono::milliseconds(100), [this] { return stop_; })) {
      if (broken_.load()) continue;
      const auto now = Clock::now();
      const int64_t since = call_since_ns_.load();
      if (since != 0 && now - Clock::time_point(Clock::duration(since)) > options_.timeout) {
        watchdog_abort(fmt::format("the NCCL call {} has not returned after {} ms (a peer rank is missing)",
                                   call_name_.load(), options_.timeout.count()));
      }
      std::string late;
      cudaError_t query_error = cudaSuccess;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        query_error = recycle_finished();
        // The host raises by itself while in synchronize(); give it twice the timeout before acting.
        const auto limit = host_waiting_.load() ? 2 * options_.timeout : options_.timeout;
        if (!issued_.empty() && now - issued_.front().when > limit)
          late = label(issued_.front().op, issued_.front().what);
      }
      if (query_error != cudaSuccess)
        watchdog_abort(fmt::format("CUDA error {} on the communication stream", cudaGetErrorString(query_error)));
      if (!late.empty())
        watchdog_abort(fmt::format("{} has not finished after {} ms: another rank did not join it", late,
                                   options_.timeout.count()));
      if (const detail::PeerAllReduce* peer = peer_watch_.load(); peer != nullptr) {
        const std::string problem = peer->failure();
        if (!problem.empty()) watchdog_abort(problem);
      }
      if (comm_ready_.load() && !host_waiting_.load() && since == 0) {
        ncclResult_t state = ncclSuccess;
        if (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state != ncclSuccess && state != ncclInProgress)
          watchdog_abort(fmt::format("asynchronous NCCL error {}", ncclGetErrorString(state)));
      }
    }
  }

  /// Ends the job from the watchdog thread, where the main thread may be blocked in a CUDA call:
  /// logs, then MPI_Abort (Open MPI kills the whole job from any thread; the process group asks
  /// for MPI_THREAD_FUNNELED, so this is the one MPI call made off the main thread, on a path that
  /// ends the process) or, without MPI, std::_Exit (no destructors run under the blocked thread).
  [[noreturn]] void watchdog_abort(const std::string& reason) {
    spdlog::critical("[rank {}] aborting the job: dist (NCCL) watchdog on rank {} of {} ({}): {}", group_.rank,
                     group_.rank, group_.world_size, device_.str(), reason);
    spdlog::default_logger()->flush();
    if (detail::mpi_active()) MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);
  }

  void stop_watchdog() {
    {
      std::lock_guard<std::mutex> lock(stop_mutex_);
      stop_ = true;
    }
    stop_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
  }

  /// Polls ncclCommGetAsyncError until the pending call of a non-blocking communicator is issued.
  void wait_async(const char* op, const std::string& what) {
    if (options_.nccl_calls == NcclCalls::Blocking) return;  // calls return once enqueued
    HostWaiting waiting(host_waiting_);                      // this thread polls the errors and the timeout itself
    const auto deadline = Clock::now() + options_.timeout;
    for (int polls = 0;; ++polls) {
      ncclResult_t state = ncclInProgress;
      const ncclResult_t polled = ncclCommGetAsyncError(comm_, &state);
      if (polled != ncclSuccess) {
        fail(op, what, fmt::format("ncclCommGetAsyncError: {}", ncclGetErrorString(polled)));
      }
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        fail(op, what, fmt::format("NCCL error {}: {}", ncclGetErrorString(state), ncclGetLastError(comm_)));
      }
      if (Clock::now() > deadline) {
        fail(op, what, fmt::format("still in progress after {} ms (a peer rank is missing)", options_.timeout.count()));
      }
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  [[noreturn]] void fail(const char* op, const std::string& what, const std::string& reason) {
    broken_.store(true);
    if (peer_ != nullptr) peer_->abandon();  // its kernels waiting for the peer give up
    stop_watchdog();
    end_carveout();
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    FLAME_FAIL(
        "dist::{} (NCCL) on rank {} of {} ({}): {}. The communicator was aborted; bring the job down with "
        "dist::abort_job.",
        label(op, what), group_.rank, group_.world_size, device_.str(), reason);
  }

  void check_usable(const char* op, const std::string& what) const {
    FLAME_CHECK(!broken_,
                "dist::{} on rank {}: the NCCL communicator was aborted after an earlier failure; abort the job "
                "(dist::abort_job)",
                label(op, what), group_.rank);
  }

  void check_tensor(const char* op, const Tensor& t, const char* role) const {
    FLAME_CHECK(t.defined(), "dist::{} (NCCL): {} is an undefined tensor", op, role);
    FLAME_CHECK(t.device() == device_,
                "dist::{} (NCCL): {} is {} but rank {} communicates on {}; CPU tensors go to make_mpi_communicator", op,
                role, t.describe(), group_.rank, device_.str());
  }

  CommunicatorOptions options_;
  Device device_;
  ncclComm_t comm_ = nullptr;
  // Note [copy-engine all-reduce]: comm_ runs under NCCL_CTA_POLICY_ZERO (CopyEngineGather, 2 ranks)
  // and owns the symmetric staging buffer [2, n], and one per key of the deferred all-reduces
  // (Note [deferred mean]).
  bool copy_engines_ = false;
  SymmetricBuffer staging_;
  std::map<size_t, SymmetricBuffer> deferred_slots_;
  std::unique_ptr<detail::PeerAllReduce> peer_;  // Note [one-shot all-reduce]; null when off
  std::atomic<const detail::PeerAllReduce*> peer_watch_{nullptr};  // peer_, as the watchdog reads it
  CopyEngineKernels copy_engine_kernels_[2][2];  // [bf16][vector], filled on first use
  cudaStream_t stream_ = nullptr;       // communication stream (non-blocking) on device_
  int highest_priority_ = 0;            // the device's highest stream priority (OverlapPriority::High)
  cudaEvent_t inputs_ready_ = nullptr;  // recorded on the compute stream before each collective
  cudaEvent_t drained_ = nullptr;       // recorded on stream_ by synchronize()
  Tensor barrier_buffer_;               // [1] i32 on device_, all-reduced by barrier()
  int overlap_gemm_sms_ = 0;            // the GEMMs' SM target during a carve-out
  bool carved_out_ = false;             // GEMMs target fewer SMs (Note [SM carve-out])
  std::atomic<bool> broken_{false};
  std::atomic<bool> comm_ready_{false};

  // Collectives issued and not yet seen finished, oldest first, and the pool of their events
  // (Note [NCCL timeouts]); guarded by mutex_.
  std::mutex mutex_;
  std::deque<Issued> issued_;
  std::vector<cudaEvent_t> free_events_;
  cudaEvent_t last_issued_ = nullptr;  // the event after the latest collective (compute_wait)
  uint64_t issued_count_ = 0;          // collectives issued so far (the latest one's number)

  // The watchdog thread and what it reads.
  std::atomic<int64_t> call_since_ns_{0};  // steady-clock ns when the NCCL call in progress began; 0: none
  std::atomic<const char*> call_name_{""};
  std::atomic<bool> host_waiting_{false};
  std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread watchdog_;
  std::unique_ptr<detail::CollectiveTimeline> timeline_;  // FLAME_NCCL_TIMELINE (Note [collective timeline])
  std::deque<std::pair<uint64_t, std::string>> timeline_labels_;  // the latest collectives' numbers and labels
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const ProcessGroup& group, CommunicatorOptions options) {
  return std::make_unique<NcclCommunicator>(group, options);
}

}  // namespace flame::dist

#else  // !FLAME_WITH_CUDA

namespace flame::dist {

std::unique_ptr<Communicator> make_nccl_communicator(const ProcessGroup&, CommunicatorOptions) {
  FLAME_FAIL(
      "make_nccl_communicator: FLAME was built without CUDA (FLAME_WITH_CUDA off); use "
      "make_mpi_communicator for CPU tensors");
}

}  // namespace flame::dist

#endif
