// The CUDA Backend: each primitive takes the tensors' device context and calls its launcher.
#include "core/backend.h"
#include "core/cuda/context.h"
#include "core/cuda/internal.h"
#include "core/cuda/launchers.h"
#include "core/cuda_device.h"

namespace flame {

namespace {

cuda::DeviceContext& ctx_of(const Tensor& tensor) {
  FLAME_CHECK(tensor.device().is_cuda(), "CUDA backend given {}, which is not on a CUDA device",
              tensor.describe());
  return cuda::context(tensor.device().index);
}

class CudaBackend final : public Backend {
 public:
  void unary(UnaryOp op, const Tensor& in, const Tensor& out, double p0, double p1) override {
    cuda::launch_unary(ctx_of(out), op, in, out, p0, p1);
  }
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override {
    cuda::launch_binary(ctx_of(out), op, a, b, out);
  }
  void binary_scalar(BinaryOp op, const Tensor& a, double scalar, const Tensor& out) override {
    cuda::launch_binary_scalar(ctx_of(out), op, a, scalar, out);
  }
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override {
    cuda::launch_where(ctx_of(out), cond, a, b, out);
  }
  void copy(const Tensor& src, const Tensor& out) override { cuda::launch_copy(ctx_of(out), src, out); }
  void fill(const Tensor& out, double value) override { cuda::launch_fill(ctx_of(out), out, value); }
  void arange(const Tensor& out, double start, double step) override {
    cuda::launch_arange(ctx_of(out), out, start, step);
  }
  void random(const Tensor& out, RandomKind kind, uint64_t seed, uint64_t offset, int64_t a,
              int64_t b) override {
    cuda::launch_random(ctx_of(out), out, kind, seed, offset, a, b);
  }
  void reduce(ReduceOp op, const Tensor& in, const Tensor& out, int64_t outer, int64_t reduced,
              int64_t inner, int64_t correction) override {
    cuda::launch_reduce(ctx_of(out), op, in, out, outer, reduced, inner, correction);
  }
  void softmax(const Tensor& in, const Tensor& out, int64_t outer, int64_t reduced, int64_t inner,
               bool log) override {
    cuda::launch_softmax(ctx_of(out), in, out, outer, reduced, inner, log);
  }
  void matmul(const MatmulArgs& args) override { cuda::launch_matmul(ctx_of(args.out), args); }
  void index_select(const Tensor& in, const Tensor& index, const Tensor& out, int64_t outer,
                    int64_t in_size, int64_t inner) override {
    cuda::launch_index_select(ctx_of(out), in, index, out, outer, in_size, inner);
  }
  void gather(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) override {
    cuda::launch_gather(ctx_of(out), in, dim, index, out);
  }
  void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override {
    cuda::launch_scatter_add(ctx_of(out), out, dim, index, src);
  }
  void conv2d_forward(const Conv2dGeometry& g, const Tensor& input, const Tensor& weight,
                      const Tensor& out) override {
    cuda::launch_conv2d_forward(ctx_of(out), g, input, weight, out);
  }
  void conv2d_backward_input(const Conv2dGeometry& g, const Tensor& grad_out, const Tensor& weight,
                             const Tensor& grad_input) override {
    cuda::launch_conv2d_backward_input(ctx_of(grad_input), g, grad_out, weight, grad_input);
  }
  void conv2d_backward_weight(const Conv2dGeometry& g, const Tensor& input, const Tensor& grad_out,
                              const Tensor& grad_weight) override {
    cuda::launch_conv2d_backward_weight(ctx_of(grad_weight), g, input, grad_out, grad_weight);
  }
  void max_pool2d_forward(const Pool2dGeometry& g, const Tensor& input, const Tensor& out,
                          const Tensor& indices) override {
    cuda::launch_max_pool2d_forward(ctx_of(out), g, input, out, indices);
  }
  void max_pool2d_backward(const Pool2dGeometry& g, const Tensor& grad_out, const Tensor& indices,
                           const Tensor& grad_input) override {
    cuda::launch_max_pool2d_backward(ctx_of(grad_input), g, grad_out, indices, grad_input);
  }
  void avg_pool2d_forward(const Pool2dGeometry& g, const Tensor& input, const Tensor& out) override {
    cuda::launch_avg_pool2d_forward(ctx_of(out), g, input, out);
  }
  void avg_pool2d_backward(const Pool2dGeometry& g, const Tensor& grad_out, const Tensor& grad_input) override {
    cuda::launch_avg_pool2d_backward(ctx_of(grad_input), g, grad_out, grad_input);
  }
  void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& losses,
                             const Tensor& row_stats, int64_t ignore_index, double label_smoothing) override {
    cuda::launch_cross_entropy_forward(ctx_of(losses), logits, target, losses, row_stats, ignore_index,
                                       label_smoothing);
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& row_stats,
                              const Tensor& grad_losses, const Tensor& grad_logits, int64_t ignore_index,
                              double label_smoothing) override {
    cuda::launch_cross_entropy_backward(ctx_of(grad_logits), logits, target, row_stats, grad_losses, grad_logits,
                                        ignore_index, label_smoothing);
  }
  void adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                 const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq, const AdamStepArgs& args,
                 const std::vector<GradientSlots>& grad_slots) override {
    if (params.empty()) return;
    cuda::launch_adam_step(ctx_of(params[0]), params, grads, exp_avg, exp_avg_sq, args, grad_slots);
  }
  /// One backend serves every device: waits for each device FLAME has used.
  void synchronize() override {
    const int count = cuda::device_count();
    for (int device = 0; device < count; ++device)
      if (cuda::has_context(device)) cuda::synchronize(device);
  }
};

void check_copy_pair(const Tensor& src, const Tensor& dst) {
  FLAME_CHECK(src.dtype() == dst.dtype() && src.numel() == dst.numel(),
              "copy across devices: src {} and dst {} must have one dtype and size", src.describe(),
              dst.describe());
  FLAME_CHECK(src.is_contiguous() && dst.is_contiguous(),
              "copy across devices: src {} and dst {} must be contiguous", src.describe(), dst.describe());
  FLAME_CHECK(src.device().is_cuda() || dst.device().is_cuda(),
              "copy across devices: {} and {} are both on the host", src.describe(), dst.describe());
}

/// D2D between two devices: the copy runs on the source's compute stream after the destination's
/// queued work (the destination block may be reused memory, Note [caching allocator streams]), and
/// the destination's stream waits for the copy.
void copy_between_gpus(const Tensor& src, const Tensor& dst) {
  // An event belongs to the device current when it is created; record each on its own device.
  cuda::DeviceContext& dst_ctx = cuda::context(dst.device().index);
  cudaEvent_t dst_ready = nullptr, copied = nullptr;
  FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&dst_ready, cudaEventDisableTiming));
  FLAME_CUDA_CHECK(cudaEventRecord(dst_ready, dst_ctx.stream));
  cuda::DeviceContext& src_ctx = cuda::context(src.device().index);
  FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
  FLAME_CUDA_CHECK(cudaStreamWaitEvent(src_ctx.stream, dst_ready, 0));
  FLAME_CUDA_CHECK(cudaMemcpyPeerAsync(dst.data_ptr(), dst_ctx.device, src.data_ptr(), src_ctx.device,
                                       src.nbytes(), src_ctx.stream));
  FLAME_CUDA_CHECK(cudaEventRecord(copied, src_ctx.stream));
  FLAME_CUDA_CHECK(cudaStreamWaitEvent(dst_ctx.stream, copied, 0));
  // Destroying a recorded event is allowed; its resources go once the work completes.
  FLAME_CUDA_CHECK(cudaEventDestroy(dst_ready));
  FLAME_CUDA_CHECK(cudaEventDestroy(copied));
}

}  // namespace

Backend& cuda_backend() {
  static auto* backend = new CudaBackend();  // never destroyed
  return *backend;
}

void copy_across_devices(const Tensor& src, const Tensor& dst) {
  check_copy_pair(src, dst);
  const size_t bytes = src.nbytes();
  if (bytes == 0) return;
  if (src.device().is_cpu()) {
    // From pageable host memory: cudaMemcpyAsync returns once the bytes are staged, so `src` may
    // be freed right after.
    cuda::DeviceContext& ctx = cuda::context(dst.device().index);
    FLAME_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), bytes, cudaMemcpyHostToDevice, ctx.stream));
  } else if (dst.device().is_cpu()) {
    cuda::DeviceContext& ctx = cuda::context(src.device().index);
    FLAME_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), bytes, cudaMemcpyDeviceToHost, ctx.stream));
    FLAME_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    cuda::check_device_errors(ctx.device);
  } else if (src.device() == dst.device()) {
    cuda::DeviceContext& ctx = cuda::context(src.device().index);
    FLAME_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), bytes, cudaMemcpyDeviceToDevice, ctx.stream));
  } else {
    copy_between_gpus(src, dst);
  }
}

}  // namespace flame
