// Convolution through cuDNN's legacy API (cudnnConvolutionForward / BackwardData / BackwardFilter)
// on contiguous NCHW tensors, enqueued on the device's compute stream.
//
// Note [cudnn conv plans]
// - One cuDNN handle per device, created on first use and bound to the device's compute stream.
//   Handles live for the process (never destroyed: at exit the CUDA runtime may already be gone).
// - A plan (tensor, filter and convolution descriptors, and the algorithm and workspace size of each
//   of the three passes) is built once per (device, dtype, geometry) from cuDNN's heuristics
//   (cudnnGet*Algorithm_v7, no benchmarking) and kept for the process, so steady-state training makes
//   no heuristic query. Plans are small host objects; a new batch size adds one.
// - Math: f32 uses CUDNN_FMA_MATH, because CUDNN_DEFAULT_MATH lets cuDNN run f32 convolutions as TF32
//   on Ampere and later, and FLAME's f32 never uses TF32 (as matmul); results whose math type is a
//   tensor-op mode are skipped for f32. f64 uses the default math (full f64 precision either way).
//   f16 and bf16 use CUDNN_TENSOR_OP_MATH and compute (accumulate) in f32. The heuristics are asked
//   with these math types; each pass then runs with the math type its chosen result names.
// - Workspace comes from the caching allocator as a u8 Tensor on the device, freed stream-ordered
//   right after the call is enqueued (Note [caching allocator streams]); algorithms needing more than
//   kMaxWorkspaceBytes are passed over.
#include <cudnn.h>
#include <fmt/format.h>

#include <array>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/cuda/launchers.h"

#define FLAME_CUDNN_CHECK(expr)                                                                                       \
  do {                                                                                                                \
    const cudnnStatus_t flame_status_ = (expr);                                                                       \
    if (flame_status_ != CUDNN_STATUS_SUCCESS)                                                                        \
      ::flame::detail::throw_error(                                                                                   \
          #expr, __FILE__, __LINE__,                                                                                  \
          ::fmt::format("cuDNN error {} ({})", cudnnGetErrorString(flame_status_), static_cast<int>(flame_status_))); \
  } while (0)

namespace flame::cuda {
namespace {

constexpr size_t kMaxWorkspaceBytes = size_t{1} << 30;

std::string geometry_str(const Conv2dGeometry& g) {
  return fmt::format(
      "input [{}, {}, {}, {}], weight [{}, {}, {}, {}], output [{}, {}, {}, {}], stride {}x{}, padding {}x{}, "
      "dilation {}x{}, groups {}",
      g.batch, g.in_channels, g.in_h, g.in_w, g.out_channels, g.groups > 0 ? g.in_channels / g.groups : 0, g.kernel_h,
      g.kernel_w, g.batch, g.out_channels, g.out_h, g.out_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h,
      g.dilation_w, g.groups);
}

struct CudnnTypes {
  cudnnDataType_t data;
  cudnnDataType_t compute;
  cudnnMathType_t math;
};

CudnnTypes cudnn_types(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return {CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH};
    case DType::F64:
      return {CUDNN_DATA_DOUBLE, CUDNN_DATA_DOUBLE, CUDNN_DEFAULT_MATH};
    case DType::F16:
      return {CUDNN_DATA_HALF, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH};
    case DType::BF16:
      return {CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH};
    default:
      FLAME_FAIL("conv2d: the CUDA backend supports f32, f64, f16 and bf16, got {}; convert with to()",
                 dtype_name(dtype));
  }
}

/// The device's cuDNN handle (Note [cudnn conv plans]).
cudnnHandle_t handle_for(DeviceContext& ctx) {
  static std::mutex mutex;
  static std::map<int, cudnnHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = handles.find(ctx.device); it != handles.end()) return it->second;
  FLAME_CUDA_CHECK(cudaSetDevice(ctx.device));
  cudnnHandle_t handle = nullptr;
  FLAME_CUDNN_CHECK(cudnnCreate(&handle));
  FLAME_CUDNN_CHECK(cudnnSetStream(handle, ctx.stream));
  handles.emplace(ctx.device, handle);
  return handle;
}

/// Descriptors and chosen algorithms of one (device, dtype, geometry). Each pass has its own
/// convolution descriptor, whose math type is the one its chosen algorithm was offered with (cuDNN
/// picks kernels by algorithm and math type together).
struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t forward_conv = nullptr, data_conv = nullptr, filter_conv = nullptr;
  cudnnConvolutionFwdAlgo_t forward_algo{};
  cudnnConvolutionBwdDataAlgo_t data_algo{};
  cudnnConvolutionBwdFilterAlgo_t filter_algo{};
  size_t forward_bytes = 0, data_bytes = 0, filter_bytes = 0;

  ConvPlan() = default;
  ConvPlan(const ConvPlan&) = delete;
  ConvPlan& operator=(const ConvPlan&) = delete;
  ~ConvPlan() {
    for (cudnnConvolutionDescriptor_t conv : {forward_conv, data_conv, filter_conv})
      if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (x) cudnnDestroyTensorDescriptor(x);
  }
};

/// True when a heuristic result may be used: it succeeded and, for f32, is not a tensor-op (TF32) kernel.
template <class Perf>
bool usable(const Perf& perf, DType dtype) {
  if (perf.status != CUDNN_STATUS_SUCCESS) return false;
  if (dtype == DType::F32)
    return perf.mathType != CUDNN_TENSOR_OP_MATH && perf.mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
  return true;
}

/// Plans one pass: asks cuDNN's heuristics for its algorithms, then keeps the first usable result
/// whose workspace fits, giving `conv` (the pass's descriptor) the result's math type; fails naming
/// the pass otherwise. `get_algorithms` and `get_workspace` are the pass's cudnnGet*Algorithm_v7 and
/// cudnnGet*WorkspaceSize, which both take the handle and the descriptors `a`, `b`, `conv`, `c`.
template <class A, class B, class C, class Perf, class Algo>
void plan_pass(const char* pass, cudnnHandle_t handle, A a, B b, cudnnConvolutionDescriptor_t conv, C c,
               cudnnStatus_t (*get_algorithms)(cudnnHandle_t, A, B, cudnnConvolutionDescriptor_t, C, int, int*, Perf*),
               cudnnStatus_t (*get_workspace)(cudnnHandle_t, A, B, cudnnConvolutionDescriptor_t, C, Algo, size_t*),
               int algorithm_count, DType dtype, const Conv2dGeometry& g, Algo& algo, size_t& bytes) {
  std::vector<Perf> results(static_cast<size_t>(algorithm_count));
  int returned = 0;
  FLAME_CUDNN_CHECK(get_algorithms(handle, a, b, conv, c, algorithm_count, &returned, results.data()));
  for (int i = 0; i < returned; ++i) {
    if (!usable(results[i], dtype)) continue;
    FLAME_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, results[i].mathType));
    size_t needed = 0;
    if (get_workspace(handle, a, b, conv, c, results[i].algo, &needed) != CUDNN_STATUS_SUCCESS ||
        needed > kMaxWorkspaceBytes)
      continue;
    algo = results[i].algo;
    bytes = needed;
    return;
  }
  FLAME_FAIL("conv2d: cuDNN offers no {} algorithm for {} in {} (within a {} MiB workspace{})", pass, geometry_str(g),
             dtype_name(dtype), kMaxWorkspaceBytes >> 20, dtype == DType::F32 ? ", without TF32" : "");
}

/// Creates `conv`, a convolution descriptor for `g` with the dtype's compute and math types.
void make_conv_descriptor(const Conv2dGeometry& g, const CudnnTypes& types, cudnnConvolutionDescriptor_t& conv) {
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  FLAME_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
  FLAME_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, i(g.pad_h), i(g.pad_w), i(g.stride_h), i(g.stride_w),
                                                    i(g.dilation_h), i(g.dilation_w), CUDNN_CROSS_CORRELATION,
                                                    types.compute));
  FLAME_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, i(g.groups)));
  FLAME_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, types.math));
}

std::unique_ptr<ConvPlan> make_plan(cudnnHandle_t handle, const Conv2dGeometry& g, DType dtype) {
  const CudnnTypes types = cudnn_types(dtype);
  for (int64_t v : {g.batch, g.in_channels, g.out_channels, g.in_h, g.in_w, g.kernel_h, g.kernel_w, g.stride_h,
                    g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, g.groups})
    FLAME_CHECK(v <= INT_MAX, "conv2d: {} has a size above cuDNN's 32-bit limit {}", geometry_str(g), INT_MAX);
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  auto plan = std::make_unique<ConvPlan>();
  FLAME_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan->x));
  FLAME_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan->y));
  FLAME_CUDNN_CHECK(cudnnCreateFilterDescriptor(&plan->w));
  FLAME_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->x, CUDNN_TENSOR_NCHW, types.data, i(g.batch), i(g.in_channels),
                                               i(g.in_h), i(g.in_w)));
  FLAME_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->y, CUDNN_TENSOR_NCHW, types.data, i(g.batch), i(g.out_channels),
                                               i(g.out_h), i(g.out_w)));
  FLAME_CUDNN_CHECK(cudnnSetFilter4dDescriptor(plan->w, types.data, CUDNN_TENSOR_NCHW, i(g.out_channels),
                                               i(g.in_channels / g.groups), i(g.kernel_h), i(g.kernel_w)));
  make_conv_descriptor(g, types, plan->forward_conv);
  make_conv_descriptor(g, types, plan->data_conv);
  make_conv_descriptor(g, types, plan->filter_conv);

  int n = 0, c = 0, h = 0, w = 0;
  FLAME_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(plan->forward_conv, plan->x, plan->w, &n, &c, &h, &w));
  FLAME_CHECK(n == g.batch && c == g.out_channels && h == g.out_h && w == g.out_w,
              "conv2d: cuDNN computes output [{}, {}, {}, {}] for {}, which disagrees with FLAME's geometry", n, c, h,
              w, geometry_str(g));

  plan_pass("forward", handle, plan->x, plan->w, plan->forward_conv, plan->y, cudnnGetConvolutionForwardAlgorithm_v7,
            cudnnGetConvolutionForwardWorkspaceSize, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, dtype, g, plan->forward_algo,
            plan->forward_bytes);
  plan_pass("backward-data", handle, plan->w, plan->y, plan->data_conv, plan->x,
            cudnnGetConvolutionBackwardDataAlgorithm_v7, cudnnGetConvolutionBackwardDataWorkspaceSize,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, dtype, g, plan->data_algo, plan->data_bytes);
  plan_pass("backward-filter", handle, plan->x, plan->y, plan->filter_conv, plan->w,
            cudnnGetConvolutionBackwardFilterAlgorithm_v7, cudnnGetConvolutionBackwardFilterWorkspaceSize,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, dtype, g, plan->filter_algo, plan->filter_bytes);
  return plan;
}

/// The cached plan of (ctx's device, dtype, g) (Note [cudnn conv plans]).
const ConvPlan& plan_for(DeviceContext& ctx, cudnnHandle_t handle, const Conv2dGeometry& g, DType dtype) {
  using Key = std::array<int64_t, 18>;
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<ConvPlan>> plans;
  const Key key{ctx.device,     static_cast<int64_t>(dtype),
                g.batch,        g.in_channels,
                g.out_channels, g.groups,
                g.in_h,         g.in_w,
                g.out_h,        g.out_w,
                g.kernel_h,     g.kernel_w,
                g.stride_h,     g.stride_w,
                g.pad_h,        g.pad_w,
                g.dilation_h,   g.dilation_w};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(handle, g, dtype)).first;
  return *it->second;
}

/// Scratch memory for one cuDNN call (Note [cudnn conv plans]); empty for 0 bytes.
Tensor workspace(DeviceContext& ctx, size_t bytes) {
  if (bytes == 0) return Tensor();
  return Tensor::empty({static_cast<int64_t>(bytes)}, TensorOptions(DType::U8, cuda_device(ctx.device)));
}

/// alpha = 1 and beta = 0 in the type cuDNN reads them as (double for f64 data, float otherwise).
struct Scaling {
  float one_f = 1.0f, zero_f = 0.0f;
  double one_d = 1.0, zero_d = 0.0;
  bool f64;
  explicit Scaling(DType dtype) : f64(dtype == DType::F64) {}
  const void* one() const { return f64 ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f); }
  const void* zero() const { return f64 ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f); }
};

void check_operand(const char* op, const char* what, const Tensor& t, DType dtype, const Shape& shape) {
  FLAME_CHECK(t.dtype() == dtype, "{}: {} {} must be {} like the other operands", op, what, t.describe(),
              dtype_name(dtype));
  FLAME_CHECK(t.is_contiguous() && t.numel() == shape_numel(shape),
              "{}: {} {} must be contiguous with the {} elements of {}", op, what, t.describe(), shape_numel(shape),
              shape_str(shape));
}

Shape input_shape(const Conv2dGeometry& g) { return {g.batch, g.in_channels, g.in_h, g.in_w}; }
Shape weight_shape(const Conv2dGeometry& g) {
  return {g.out_channels, g.groups > 0 ? g.in_channels / g.groups : 0, g.kernel_h, g.kernel_w};
}
Shape output_shape(const Conv2dGeometry& g) { return {g.batch, g.out_channels, g.out_h, g.out_w}; }

}  // namespace

void launch_conv2d_forward(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& input, const Tensor& weight,
                           const Tensor& out) {
  const char* op = "conv2d";
  check_conv2d_geometry(op, g);
  const DType dtype = out.dtype();
  check_operand(op, "input", input, dtype, input_shape(g));
  check_operand(op, "weight", weight, dtype, weight_shape(g));
  check_operand(op, "out", out, dtype, output_shape(g));
  if (out.numel() == 0) return;
  const cudnnHandle_t handle = handle_for(ctx);
  const ConvPlan& plan = plan_for(ctx, handle, g, dtype);
  const Tensor scratch = workspace(ctx, plan.forward_bytes);
  const Scaling s(dtype);
  FLAME_CUDNN_CHECK(cudnnConvolutionForward(
      handle, s.one(), plan.x, input.data_ptr(), plan.w, weight.data_ptr(), plan.forward_conv, plan.forward_algo,
      scratch.defined() ? scratch.data_ptr() : nullptr, plan.forward_bytes, s.zero(), plan.y, out.data_ptr()));
  FLAME_CUDA_LAUNCH_CHECK();
}

void launch_conv2d_backward_input(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& grad_out,
                                  const Tensor& weight, const Tensor& grad_input) {
  const char* op = "conv2d backward (input)";
  check_conv2d_geometry(op, g);
  const DType dtype = grad_input.dtype();
  check_operand(op, "grad_out", grad_out, dtype, output_shape(g));
  check_operand(op, "weight", weight, dtype, weight_shape(g));
  check_operand(op, "grad_input", grad_input, dtype, input_shape(g));
  if (grad_input.numel() == 0) return;
  if (grad_out.numel() == 0) {  // no output channels: the input does not influence anything
    FLAME_CUDA_CHECK(cudaMemsetAsync(grad_input.data_ptr(), 0, grad_input.nbytes(), ctx.stream));
    return;
  }
  const cudnnHandle_t handle = handle_for(ctx);
  const ConvPlan& plan = plan_for(ctx, handle, g, dtype);
  const Tensor scratch = workspace(ctx, plan.data_bytes);
  const Scaling s(dtype);
  FLAME_CUDNN_CHECK(cudnnConvolutionBackwardData(
      handle, s.one(), plan.w, weight.data_ptr(), plan.y, grad_out.data_ptr(), plan.data_conv, plan.data_algo,
      scratch.defined() ? scratch.data_ptr() : nullptr, plan.data_bytes, s.zero(), plan.x, grad_input.data_ptr()));
  FLAME_CUDA_LAUNCH_CHECK();
}

void launch_conv2d_backward_weight(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& input,
                                   const Tensor& grad_out, const Tensor& grad_weight) {
  const char* op = "conv2d backward (weight)";
  check_conv2d_geometry(op, g);
  const DType dtype = grad_weight.dtype();
  check_operand(op, "input", input, dtype, input_shape(g));
  check_operand(op, "grad_out", grad_out, dtype, output_shape(g));
  check_operand(op, "grad_weight", grad_weight, dtype, weight_shape(g));
  if (grad_weight.numel() == 0) return;
  if (g.batch == 0) {  // an empty batch contributes nothing
    FLAME_CUDA_CHECK(cudaMemsetAsync(grad_weight.data_ptr(), 0, grad_weight.nbytes(), ctx.stream));
    return;
  }
  const cudnnHandle_t handle = handle_for(ctx);
  const ConvPlan& plan = plan_for(ctx, handle, g, dtype);
  const Tensor scratch = workspace(ctx, plan.filter_bytes);
  const Scaling s(dtype);
  FLAME_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
      handle, s.one(), plan.x, input.data_ptr(), plan.y, grad_out.data_ptr(), plan.filter_conv, plan.filter_algo,
      scratch.defined() ? scratch.data_ptr() : nullptr, plan.filter_bytes, s.zero(), plan.w, grad_weight.data_ptr()));
  FLAME_CUDA_LAUNCH_CHECK();
}

}  // namespace flame::cuda
