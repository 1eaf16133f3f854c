#include "dist/communicator.h"

namespace flame::dist {

namespace {

void check_same_dtype(const char* op, const Tensor& input, const Tensor& output) {
  FLAME_CHECK(input.dtype() == output.dtype(), "dist::{}: input is {} but output is {}; they must match", op,
              dtype_name(input.dtype()), dtype_name(output.dtype()));
}

}  // namespace

void Communicator::check_reducible(const char* backend, const char* op, DType dtype, ReduceOp reduce) {
  FLAME_CHECK(dtype != DType::Bool, "dist::{} ({}): bool tensors cannot be reduced; use u8 or i32", op, backend);
  FLAME_CHECK(reduce != ReduceOp::Avg || is_floating(dtype),
              "dist::{}: ReduceOp::Avg needs a floating dtype, got {}; use Sum and divide yourself", op,
              dtype_name(dtype));
}

void Communicator::check_root(int root) const {
  FLAME_CHECK(root >= 0 && root < group_.world_size, "dist::broadcast: root {} is not a rank of a group of {}", root,
              group_.world_size);
}

void Communicator::check_all_gather(const Tensor& input, const Tensor& output) const {
  check_same_dtype("all_gather", input, output);
  Shape expected = input.dim() == 0 ? Shape{1} : input.shape();
  expected[0] *= group_.world_size;
  FLAME_CHECK(output.shape() == expected,
              "dist::all_gather: output must be {} (world size {} times input {} along dim 0), got {}",
              shape_str(expected), group_.world_size, shape_str(input.shape()), shape_str(output.shape()));
}

void Communicator::check_reduce_scatter(const char* backend, const Tensor& input, const Tensor& output,
                                        ReduceOp op) const {
  check_same_dtype("reduce_scatter", input, output);
  check_reducible(backend, "reduce_scatter", input.dtype(), op);
  const int world = group_.world_size;
  FLAME_CHECK(input.dim() >= 1 && input.size(0) % world == 0,
              "dist::reduce_scatter: input {} must have a dim 0 divisible by the world size {}",
              shape_str(input.shape()), world);
  Shape expected = input.shape();
  expected[0] /= world;
  FLAME_CHECK(output.shape() == expected, "dist::reduce_scatter: output must be {} (input {} split {} ways), got {}",
              shape_str(expected), shape_str(input.shape()), world, shape_str(output.shape()));
}

uint64_t Communicator::all_reduce_overlapped_as(const Tensor& tensor, DType wire, ReduceOp op, const std::string& what,
                                                OverlapPriority priority) {
  (void)op;
  (void)priority;
  FLAME_FAIL(
      "dist::all_reduce_overlapped_as '{}': this communicator does not send {} tensors as {} itself (reduces_as() is "
      "false); convert into a {} buffer and call all_reduce_overlapped on it",
      what, dtype_name(tensor.dtype()), dtype_name(wire), dtype_name(wire));
}

std::unique_ptr<Communicator> make_communicator(const ProcessGroup& group, Device device, CommunicatorOptions options) {
  if (device.is_cpu()) return make_mpi_communicator(group, options);
  const Device own = group.cuda_device();
  FLAME_CHECK(device == own,
              "make_communicator: rank {} (local rank {}) communicates on {}, not {}; move the tensors to "
              "group.cuda_device()",
              group.rank, group.local_rank, own.str(), device.str());
  return make_nccl_communicator(group, options);
}

}  // namespace flame::dist
