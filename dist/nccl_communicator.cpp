// Note [NCCL communicator streams]: every collective runs on the communicator's own non-blocking
// stream. Before it, that stream waits on an event recorded on the compute stream (the inputs are
// ready); after it, the compute stream waits on an event recorded on the communication stream (the
// results are ready, and buffers the caching allocator may hand out again are no longer in use).
// The host never blocks; synchronize() is where the host waits, polling cudaEventQuery and
// ncclCommGetAsyncError against the timeout, and aborts the communicator on failure.
#include "dist/communicator.h"

#ifdef FLAME_WITH_CUDA

#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "core/cuda/context.h"
#include "core/ops.h"
#include "dist/mpi_check.h"

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
    FLAME_CHECK(group.world_size == 1 || detail::mpi_active(),
                "make_nccl_communicator: a group of {} ranks needs MPI to share the NCCL id; call "
                "ProcessGroup::init() under mpirun/srun",
                group.world_size);
    cuda::context(device_.index);  // makes device_ current
    FLAME_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming));
    FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&outputs_ready_, cudaEventDisableTiming));
    FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&drained_, cudaEventDisableTiming));

    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (group.rank == 0) FLAME_NCCL_CHECK(ncclGetUniqueId(&id), nullptr);
    if (group.world_size > 1) {
      MPI_Request request;
      FLAME_MPI_CHECK(MPI_Ibcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD, &request));
      detail::wait_request(request, options_.timeout, "make_nccl_communicator (unique id broadcast)", "", group.rank);
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = options_.nccl_calls == NcclCalls::Blocking ? 1 : 0;
    FLAME_NCCL_CHECK(ncclCommInitRankConfig(&comm_, group.world_size, id, group.rank, &config), nullptr);
    wait_async("ncclCommInitRankConfig", "");
    barrier_buffer_ = zeros({1}, {kI32, device_});
  }

  ~NcclCommunicator() override {
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
    if (drained_) cudaEventDestroy(drained_);
    if (outputs_ready_) cudaEventDestroy(outputs_ready_);
    if (inputs_ready_) cudaEventDestroy(inputs_ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void all_reduce(const Tensor& tensor, ReduceOp op, const std::string& what) override {
    check_usable("all_reduce", what);
    check_tensor("all_reduce", tensor, "tensor");
    check_reducible("all_reduce", tensor.dtype(), op);
    Tensor work = tensor.contiguous();
    enqueue("all_reduce", what, [&] {
      return ncclAllReduce(work.data_ptr(), work.data_ptr(), work.numel(), nccl_type(work.dtype()), nccl_op(op), comm_,
                           stream_);
    });
    if (!work.is_same(tensor)) Tensor(tensor).copy_(work);
  }

  void broadcast(const Tensor& tensor, int root, const std::string& what) override {
    check_usable("broadcast", what);
    check_tensor("broadcast", tensor, "tensor");
    FLAME_CHECK(root >= 0 && root < group_.world_size, "dist::broadcast: root {} is not a rank of a group of {}", root,
                group_.world_size);
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
    check_same_dtype("all_gather", input, output);
    Shape expected = input.dim() == 0 ? Shape{1} : input.shape();
    expected[0] *= group_.world_size;
    FLAME_CHECK(output.shape() == expected,
                "dist::all_gather: output must be {} (world size {} times input {} along dim 0), got {}",
                shape_str(expected), group_.world_size, shape_str(input.shape()), shape_str(output.shape()));
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
    check_same_dtype("reduce_scatter", input, output);
    check_reducible("reduce_scatter", input.dtype(), op);
    const int world = group_.world_size;
    FLAME_CHECK(input.dim() >= 1 && input.size(0) % world == 0,
                "dist::reduce_scatter: input {} must have a dim 0 divisible by the world size {}",
                shape_str(input.shape()), world);
    Shape expected = input.shape();
    expected[0] /= world;
    FLAME_CHECK(output.shape() == expected, "dist::reduce_scatter: output must be {} (input {} split {} ways), got {}",
                shape_str(expected), shape_str(input.shape()), world, shape_str(output.shape()));
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
             fmt::format("timed out after {} ms: another rank did not join a collective (it failed, is stuck, or "
                         "issues collectives in a different order or with different shapes)",
                         options_.timeout.count()));
      }
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

 private:
  static ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Avg ? ncclAvg : ncclSum; }

  /// Orders `call` (an NCCL enqueue on stream_) after the compute stream's work and the compute
  /// stream's later work after it (Note [NCCL communicator streams]).
  template <class Call>
  void enqueue(const char* op, const std::string& what, Call call) {
    cudaStream_t compute = cuda::compute_stream(device_.index);
    FLAME_CUDA_CHECK(cudaEventRecord(inputs_ready_, compute));
    FLAME_CUDA_CHECK(cudaStreamWaitEvent(stream_, inputs_ready_, 0));
    const ncclResult_t status = call();
    if (status != ncclSuccess && status != ncclInProgress) {
      fail(op, what, fmt::format("NCCL error {}: {}", ncclGetErrorString(status), ncclGetLastError(comm_)));
    }
    wait_async(op, what);
    FLAME_CUDA_CHECK(cudaEventRecord(outputs_ready_, stream_));
    FLAME_CUDA_CHECK(cudaStreamWaitEvent(compute, outputs_ready_, 0));
  }

  /// Polls ncclCommGetAsyncError until the pending call of a non-blocking communicator is issued.
  void wait_async(const char* op, const std::string& what) {
    if (options_.nccl_calls == NcclCalls::Blocking) return;  // calls return once enqueued
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
    broken_ = true;
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

  static void check_same_dtype(const char* op, const Tensor& input, const Tensor& output) {
    FLAME_CHECK(input.dtype() == output.dtype(), "dist::{}: input is {} but output is {}; they must match", op,
                dtype_name(input.dtype()), dtype_name(output.dtype()));
  }

  static void check_reducible(const char* op, DType dtype, ReduceOp reduce) {
    FLAME_CHECK(dtype != DType::Bool, "dist::{} (NCCL): bool tensors cannot be reduced; use u8 or i32", op);
    FLAME_CHECK(reduce != ReduceOp::Avg || is_floating(dtype),
                "dist::{}: ReduceOp::Avg needs a floating dtype, got {}; use Sum and divide yourself", op,
                dtype_name(dtype));
  }

  CommunicatorOptions options_;
  Device device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;        // communication stream (non-blocking) on device_
  cudaEvent_t inputs_ready_ = nullptr;   // recorded on the compute stream before each collective
  cudaEvent_t outputs_ready_ = nullptr;  // recorded on stream_ after each collective
  cudaEvent_t drained_ = nullptr;        // recorded on stream_ by synchronize()
  Tensor barrier_buffer_;                // [1] i32 on device_, all-reduced by barrier()
  bool broken_ = false;
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
