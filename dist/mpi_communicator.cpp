// Note [MPI communicator dtypes]: f32, f64, i32, i64 and u8 reduce natively. f16 and bf16 are
// moved as raw 16-bit patterns by broadcast / all_gather (exact) and reduced by all_reduce /
// reduce_scatter through an f32 copy (sum in f32, one rounding back). Bool is moved but not
// reduced. Avg (= Sum, then divide by the world size) is defined for floating dtypes only.
// Non-contiguous tensors go through a contiguous copy that is written back.
#include <climits>

#include "core/ops.h"
#include "dist/communicator.h"
#include "dist/mpi_check.h"

namespace flame::dist {
namespace {

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::I32:
      return MPI_INT32_T;
    case DType::I64:
      return MPI_INT64_T;
    case DType::U8:
    case DType::Bool:
      return MPI_UINT8_T;
    case DType::F16:
    case DType::BF16:
      return MPI_UINT16_T;
  }
  FLAME_FAIL("MPI communicator: unknown dtype");
}

bool reduces_natively(DType dtype) {
  return dtype == DType::F32 || dtype == DType::F64 || dtype == DType::I32 || dtype == DType::I64 || dtype == DType::U8;
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const ProcessGroup& group, CommunicatorOptions options) : Communicator(group), options_(options) {
    FLAME_CHECK(options_.timeout.count() > 0, "make_mpi_communicator: timeout must be positive, got {} ms",
                options_.timeout.count());
    if (detail::mpi_active()) {
      // Every rank must join the duplication: bounded by the timeout like every collective.
      MPI_Request request = MPI_REQUEST_NULL;
      FLAME_MPI_CHECK(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &request));
      detail::wait_request(request, options_.timeout, "make_mpi_communicator", "MPI_Comm_idup", group.rank);
      FLAME_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
      int size = 0;
      FLAME_MPI_CHECK(MPI_Comm_size(comm_, &size));
      FLAME_CHECK(size == group.world_size, "make_mpi_communicator: the group has {} ranks but MPI_COMM_WORLD has {}",
                  group.world_size, size);
    } else {
      FLAME_CHECK(group.world_size == 1,
                  "make_mpi_communicator: a group of {} ranks needs MPI; call ProcessGroup::init() under mpirun/srun",
                  group.world_size);
    }
  }

  Device device() const override { return kCPU; }
  /// Note [deferred mean]: the base implementation, through all_gather.
  bool defers_mean(const Tensor& tensor, DType wire) const override {
    return tensor.dtype() == DType::F32 && wire == DType::BF16;
  }

  ~MpiCommunicator() override {
    // A communicator with a collective left pending by a timeout is not freed (MPI_Comm_free would
    // wait for it); the job is being brought down anyway.
    if (comm_ != MPI_COMM_NULL && !broken_ && detail::mpi_active()) MPI_Comm_free(&comm_);
  }

  void all_reduce(const Tensor& tensor, ReduceOp op, const std::string& what) override {
    check_usable("all_reduce", what);
    check_tensor("all_reduce", tensor, "tensor");
    check_reducible("MPI", "all_reduce", tensor.dtype(), op);
    Tensor work = reduction_buffer(tensor);
    if (comm_ != MPI_COMM_NULL) {
      MPI_Request request;
      FLAME_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, work.data_ptr(), count("all_reduce", work), mpi_type(work.dtype()),
                                     MPI_SUM, comm_, &request));
      wait(request, "all_reduce", what);
    }
    if (op == ReduceOp::Avg && group_.world_size > 1) work.div_(static_cast<double>(group_.world_size));
    if (!work.is_same(tensor)) Tensor(tensor).copy_(work);
  }

  void broadcast(const Tensor& tensor, int root, const std::string& what) override {
    check_usable("broadcast", what);
    check_tensor("broadcast", tensor, "tensor");
    check_root(root);
    Tensor work = tensor.contiguous();
    if (comm_ != MPI_COMM_NULL) {
      MPI_Request request;
      FLAME_MPI_CHECK(
          MPI_Ibcast(work.data_ptr(), count("broadcast", work), mpi_type(work.dtype()), root, comm_, &request));
      wait(request, "broadcast", what);
    }
    if (!work.is_same(tensor)) Tensor(tensor).copy_(work);
  }

  void all_gather(const Tensor& input, const Tensor& output, const std::string& what) override {
    check_usable("all_gather", what);
    check_tensor("all_gather", input, "input");
    check_tensor("all_gather", output, "output");
    check_all_gather(input, output);
    Tensor send = input.contiguous();
    Tensor receive = output.is_contiguous() ? output : Tensor::empty(output.shape(), {output.dtype(), kCPU});
    if (comm_ != MPI_COMM_NULL) {
      MPI_Request request;
      const MPI_Datatype type = mpi_type(input.dtype());
      const int n = count("all_gather", send);
      FLAME_MPI_CHECK(MPI_Iallgather(send.data_ptr(), n, type, receive.data_ptr(), n, type, comm_, &request));
      wait(request, "all_gather", what);
    } else {
      receive.view({-1}).copy_(send.view({-1}));
    }
    if (!receive.is_same(output)) Tensor(output).copy_(receive);
  }

  void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op, const std::string& what) override {
    check_usable("reduce_scatter", what);
    check_tensor("reduce_scatter", input, "input");
    check_tensor("reduce_scatter", output, "output");
    check_reduce_scatter("MPI", input, output, op);
    const int world = group_.world_size;
    Tensor send = reduces_natively(input.dtype()) ? input.contiguous() : input.to(kF32);
    Tensor receive = (output.is_contiguous() && output.dtype() == send.dtype())
                         ? output
                         : Tensor::empty(output.shape(), {send.dtype(), kCPU});
    if (comm_ != MPI_COMM_NULL) {
      MPI_Request request;
      FLAME_MPI_CHECK(MPI_Ireduce_scatter_block(send.data_ptr(), receive.data_ptr(), count("reduce_scatter", receive),
                                                mpi_type(send.dtype()), MPI_SUM, comm_, &request));
      wait(request, "reduce_scatter", what);
    } else {
      receive.copy_(send);
    }
    if (op == ReduceOp::Avg) receive.div_(static_cast<double>(world));
    if (!receive.is_same(output)) Tensor(output).copy_(receive);
  }

  void barrier() override {
    check_usable("barrier", "");
    if (comm_ == MPI_COMM_NULL) return;
    MPI_Request request;
    FLAME_MPI_CHECK(MPI_Ibarrier(comm_, &request));
    wait(request, "barrier", "");
  }

  // Every collective above has completed when it returns.
  void synchronize() override { check_usable("synchronize", ""); }

 private:
  void check_usable(const char* op, const std::string& what) const {
    FLAME_CHECK(!broken_,
                "dist::{}{} on rank {}: the MPI communicator is unusable after an earlier collective failed or "
                "timed out; abort the job (dist::abort_job)",
                op, what.empty() ? "" : " '" + what + "'", group_.rank);
  }

  void check_tensor(const char* op, const Tensor& t, const char* role) const {
    FLAME_CHECK(t.defined(), "dist::{} (MPI): {} is an undefined tensor", op, role);
    FLAME_CHECK(t.device().is_cpu(),
                "dist::{} (MPI): {} is {} but the MPI communicator takes CPU tensors; use make_nccl_communicator "
                "(or make_communicator(group, tensor.device())) for CUDA tensors",
                op, role, t.describe());
  }

  /// The contiguous buffer a reduction works on (Note [MPI communicator dtypes]).
  static Tensor reduction_buffer(const Tensor& tensor) {
    if (!reduces_natively(tensor.dtype())) return tensor.to(kF32);
    return tensor.contiguous();
  }

  static int count(const char* op, const Tensor& t) {
    FLAME_CHECK(t.numel() <= INT_MAX, "dist::{} (MPI): {} has more than INT_MAX elements; split it", op, t.describe());
    return static_cast<int>(t.numel());
  }

  void wait(MPI_Request& request, const char* op, const std::string& what) {
    try {
      detail::wait_request(request, options_.timeout, op, what, group_.rank);
    } catch (const Error&) {
      broken_ = true;
      throw;
    }
  }

  CommunicatorOptions options_;
  MPI_Comm comm_ = MPI_COMM_NULL;  // a duplicate of MPI_COMM_WORLD; null in a single process without MPI
  bool broken_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const ProcessGroup& group, CommunicatorOptions options) {
  return std::make_unique<MpiCommunicator>(group, options);
}

}  // namespace flame::dist
