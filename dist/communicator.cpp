// Note [deferred mean]: all_reduce_overlapped_deferred() stops an all-reduce of f32 values sent as
// bf16 before its last step. Each rank rounds its tensor to bf16 and the ranks' values are gathered
// into slots [W, n]; the mean, bf16_round(((s_0 + s_1) + ... + s_{W-1}) * scale) in f32 (Note
// [gradient slots] in core/fused.h), is left to whoever reads it. DDP's step() with
// DdpOptions::step_mean InUpdate has AdamW compute it inside its update, which writes it into
// .grad as it goes (InUpdateNoGrad: which does not write it, and DDP then leaves .grad none). On
// the NCCL copy engines (Note [copy-engine all-reduce]) the sum kernel's own memory pass over each
// bucket then leaves the path between the all-gather and the update. The expression is the copy-engine sum kernel's (Note
// [bf16 on the wire]), so on the copy engines (2 ranks) the result is the same bits either way. On
// MPI, StepMean::Reduced sums in MPI's order and then divides, so with more than 2 ranks its mean
// can differ from this one in the last bf16 bit.
// The slots of each key (DDP: each reducer's bucket) are kept apart, as the optimizer reads them
// after later buckets have been gathered, and they are kept until the communicator is destroyed
// (which first waits for the compute stream). A key's next all-gather is ordered after the compute
// stream's work issued before it, and NCCL's all-gather writes into a peer's slots only once every
// rank has joined it, so no rank overwrites slots that another still reads. The base
// implementation (the MPI backend) rounds with to(), gathers with all_gather() and averages with
// core ops.
#include "dist/communicator.h"

#include "core/autograd.h"
#include "core/ops.h"

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

DeferredMean Communicator::all_reduce_overlapped_deferred(const Tensor& tensor, DType wire, ReduceOp op, size_t key,
                                                         const std::string& what, OverlapPriority priority) {
  (void)key;  // the slots are a fresh tensor each time
  (void)priority;
  FLAME_CHECK(defers_mean(tensor, wire),
              "dist::all_reduce_overlapped_deferred '{}': this communicator cannot defer the mean of {} {} sent as {} "
              "(defers_mean() is false)",
              what, dtype_name(tensor.dtype()), shape_str(tensor.shape()), dtype_name(wire));
  check_reducible("base", "all_reduce_overlapped_deferred", tensor.dtype(), op);
  FLAME_CHECK(tensor.is_contiguous() && tensor.dim() == 1,
              "dist::all_reduce_overlapped_deferred '{}': the tensor must be 1-D and contiguous, got {}", what,
              tensor.describe());
  autograd::NoGradGuard no_grad;
  const int world = group_.world_size;
  const Tensor own = tensor.to(wire);
  Tensor slots = Tensor::empty({world * tensor.numel()}, TensorOptions(wire, tensor.device()));
  all_gather(own, slots, what);
  return {slots.view({world, tensor.numel()}), op == ReduceOp::Avg ? 1.0f / static_cast<float>(world) : 1.0f, 0};
}

void Communicator::write_deferred_mean(const DeferredMean& mean, const Tensor& out) {
  const Tensor& slots = mean.slots;
  FLAME_CHECK(slots.defined() && slots.dim() == 2 && out.dtype() == DType::F32 && out.is_contiguous() &&
                  out.numel() == slots.size(1),
              "dist::write_deferred_mean: out {} must be contiguous f32 with one slot row's elements (slots {})",
              out.describe(), slots.defined() ? slots.describe() : "undefined");
  autograd::NoGradGuard no_grad;
  // Each f32 operation rounds once, as the kernels' f32 arithmetic (Note [gradient slots]).
  Tensor sum = slots.select(0, 0).to(DType::F32);
  for (int64_t w = 1; w < slots.size(0); ++w) sum = add(sum, slots.select(0, w).to(DType::F32));
  sum = mul(sum, static_cast<double>(mean.scale));
  Tensor target = out.view(sum.shape());
  target.copy_(sum.to(slots.dtype()));
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
