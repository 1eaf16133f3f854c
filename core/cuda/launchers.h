// Host launchers of the CUDA ops, one .cu/.cpp file each (core/cuda/<op>.cu). Each takes the
// device context (whose compute stream it enqueues on), checks its preconditions and ends with
// FLAME_CUDA_LAUNCH_CHECK(). Arguments follow Note [backend contract] in core/backend.h.
#pragma once

#include "core/backend.h"
#include "core/cuda/context.h"

namespace flame::cuda {

// Elementwise ops, generated and compiled with NVRTC (elementwise.cpp).
void launch_unary(DeviceContext& ctx, UnaryOp op, const Tensor& in, const Tensor& out, double p0, double p1);
void launch_binary(DeviceContext& ctx, BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
void launch_binary_scalar(DeviceContext& ctx, BinaryOp op, const Tensor& a, double scalar, const Tensor& out);
void launch_where(DeviceContext& ctx, const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out);
void launch_copy(DeviceContext& ctx, const Tensor& src, const Tensor& out);
void launch_fill(DeviceContext& ctx, const Tensor& out, double value);
void launch_arange(DeviceContext& ctx, const Tensor& out, double start, double step);

// Ahead-of-time kernels.
void launch_random(DeviceContext& ctx, const Tensor& out, RandomKind kind, uint64_t seed,
                   uint64_t offset, int64_t a, int64_t b);                                  // random.cu
void launch_reduce(DeviceContext& ctx, ReduceOp op, const Tensor& in, const Tensor& out,
                   int64_t outer, int64_t reduced, int64_t inner, int64_t correction);      // reduce.cu
void launch_softmax(DeviceContext& ctx, const Tensor& in, const Tensor& out, int64_t outer,
                    int64_t reduced, int64_t inner, bool log);                              // softmax.cu
void launch_matmul(DeviceContext& ctx, const MatmulArgs& args);                             // matmul.cpp
void launch_index_select(DeviceContext& ctx, const Tensor& in, const Tensor& index,
                         const Tensor& out, int64_t outer, int64_t in_size, int64_t inner); // index_select.cu
void launch_gather(DeviceContext& ctx, const Tensor& in, int64_t dim, const Tensor& index,
                   const Tensor& out);                                                      // gather.cu
void launch_scatter_add(DeviceContext& ctx, const Tensor& out, int64_t dim, const Tensor& index,
                        const Tensor& src);                                                 // scatter_add.cu

// Convolution through cuDNN (conv2d.cpp) and pooling kernels (pool2d.cu).
void launch_conv2d_forward(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& input, const Tensor& weight,
                           const Tensor& out);
void launch_conv2d_backward_input(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& grad_out,
                                  const Tensor& weight, const Tensor& grad_input);
void launch_conv2d_backward_weight(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& input,
                                   const Tensor& grad_out, const Tensor& grad_weight);
void launch_max_pool2d_forward(DeviceContext& ctx, const Pool2dGeometry& g, const Tensor& input, const Tensor& out,
                               const Tensor& indices);
void launch_max_pool2d_backward(DeviceContext& ctx, const Pool2dGeometry& g, const Tensor& grad_out,
                                const Tensor& indices, const Tensor& grad_input);
void launch_avg_pool2d_forward(DeviceContext& ctx, const Pool2dGeometry& g, const Tensor& input, const Tensor& out);
void launch_avg_pool2d_backward(DeviceContext& ctx, const Pool2dGeometry& g, const Tensor& grad_out,
                                const Tensor& grad_input);


// Fused training ops (Note [fused cross entropy] and Note [fused adam] in core/fused.h).
void launch_cross_entropy_forward(DeviceContext& ctx, const Tensor& logits, const Tensor& target,
                                  const Tensor& losses, const Tensor& row_stats, int64_t ignore_index,
                                  double label_smoothing);                                  // cross_entropy.cu
void launch_cross_entropy_backward(DeviceContext& ctx, const Tensor& logits, const Tensor& target,
                                   const Tensor& row_stats, const Tensor& grad_losses, const Tensor& grad_logits,
                                   int64_t ignore_index, double label_smoothing);
void launch_adam_step(DeviceContext& ctx, const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                      const AdamStepArgs& args,
                      const std::vector<GradientSlots>& grad_slots);                        // adam_step.cu

}  // namespace flame::cuda
