// conv2d on CUDA (cuDNN) against the CPU: the forward and all three gradients for stride / padding /
// dilation / groups / bias combinations. f64 and f32 are checked against the CPU's float64 results
// tightly enough that TF32 (10-bit mantissa products) would fail; f16 and bf16 within loose
// tolerances of the float64 results on the same (rounded) inputs, through both of cuDNN's APIs
// (graph and legacy) and with operands off the 16-byte grid. Also: results and gradients stay
// on the GPU, steady-state steps make no cudaMalloc (workspace from the caching allocator, cached
// plans), nn::Conv2d draws the same weights on both devices and trains on CUDA, mixed devices and
// empty batches. Skips without a CUDA device.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "core/autograd.h"
#include "core/conv.h"
#include "core/cuda_device.h"
#include "nn/activation.h"
#include "nn/conv2d.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "support/conv_pool_reference.h"

namespace flame {
namespace {

using test::ConvCase;
using test::HostRng;
using test::Layout;
using test::Tolerance;

const Device kGpu = cuda_device(0);

const std::vector<ConvCase>& conv_cases() {
  static const std::vector<ConvCase> cases = [] {
    std::vector<ConvCase> c = test::shared_conv_cases();
    // Sizes where cuDNN's heuristics pick other algorithms (GEMM-based, Winograd, FFT, with workspace).
    c.push_back({"larger 3x3", {8, 16, 20, 20}, {32, 16, 3, 3}, {.padding = {1, 1}}, true});
    c.push_back({"larger depthwise", {4, 32, 16, 16}, {32, 1, 3, 3}, {.padding = {1, 1}, .groups = 32}, true});
    c.push_back({"5x5 stride 2", {4, 8, 17, 19}, {16, 8, 5, 5}, {.stride = {2, 2}, .padding = {2, 2}}, true});
    c.push_back({"1x1 many channels", {4, 64, 7, 7}, {128, 64, 1, 1}, {}, true});
    return c;
  }();
  return cases;
}

/// Host values of one case: input, weight, bias and the output gradient, rounded to `dtype`.
struct CaseValues {
  std::vector<double> x, w, b, r;
};

CaseValues draw_values(HostRng& rng, const ConvCase& c, DType dtype) {
  CaseValues v;
  v.x = test::round_to_dtype(rng.uniform(test::numel_of(c.input), -1, 1), dtype);
  v.w = test::round_to_dtype(rng.uniform(test::numel_of(c.weight), -1, 1), dtype);
  if (c.bias) v.b = test::round_to_dtype(rng.uniform(c.weight[0], -1, 1), dtype);
  const int64_t oh =
      conv2d_output_size(c.input[2], c.weight[2], c.options.stride[0], c.options.padding[0], c.options.dilation[0]);
  const int64_t ow =
      conv2d_output_size(c.input[3], c.weight[3], c.options.stride[1], c.options.padding[1], c.options.dilation[1]);
  v.r = test::round_to_dtype(rng.uniform(c.input[0] * c.weight[0] * oh * ow, -1, 1), dtype);
  return v;
}

/// The output and the gradients of input, weight and bias (undefined without bias).
struct ConvRun {
  Tensor out, grad_input, grad_weight, grad_bias;
};

ConvRun run_conv(const ConvCase& c, const CaseValues& v, DType dtype, Device device, Layout layout) {
  Tensor x = test::make_tensor(v.x, c.input, dtype, device, layout);
  Tensor w = test::make_tensor(v.w, c.weight, dtype, device, layout);
  Tensor b = c.bias ? test::make_tensor(v.b, {c.weight[0]}, dtype, device) : Tensor();
  x.requires_grad_();
  w.requires_grad_();
  if (c.bias) b.requires_grad_();
  ConvRun run;
  run.out = conv2d(x, w, b, c.options);
  run.out.backward(test::make_tensor(v.r, run.out.shape(), dtype, device));
  run.grad_input = x.grad();
  run.grad_weight = w.grad();
  if (c.bias) run.grad_bias = b.grad();
  return run;
}

/// |actual - expected| <= rel * (|expected| + max |expected|): errors relative to the tensor's scale,
/// since sums of many products cancel to small values with absolute (not relative) rounding errors.
::testing::AssertionResult close_at_scale(const Tensor& actual, const Tensor& expected_f64, double rel) {
  if (!actual.defined() || actual.device() != kGpu)
    return ::testing::AssertionFailure() << "result " << (actual.defined() ? actual.describe() : "undefined")
                                         << " is not on " << kGpu.str();
  const std::vector<double> expected = test::host_values(expected_f64);
  double scale = 0.0;
  for (double e : expected) scale = std::max(scale, std::abs(e));
  return test::tensors_close(actual, expected_f64.to(actual.dtype()), Tolerance{rel, rel * std::max(scale, 1e-3)});
}

::testing::AssertionResult runs_match(const ConvRun& gpu, const ConvRun& cpu_f64, double rel) {
  if (auto r = close_at_scale(gpu.out, cpu_f64.out, rel); !r) return r << " (output)";
  if (auto r = close_at_scale(gpu.grad_input, cpu_f64.grad_input, rel); !r) return r << " (input gradient)";
  if (auto r = close_at_scale(gpu.grad_weight, cpu_f64.grad_weight, rel); !r) return r << " (weight gradient)";
  if (cpu_f64.grad_bias.defined()) {
    if (auto r = close_at_scale(gpu.grad_bias, cpu_f64.grad_bias, rel); !r) return r << " (bias gradient)";
  }
  return ::testing::AssertionSuccess();
}

/// Relative-to-scale tolerance per dtype. f32: sums of products rounded to TF32 would be off by up
/// to ~5e-4 of the scale, well above 5e-5 (which leaves room for Winograd and FFT algorithms).
/// f16/bf16: several units in the last place at the tensor's scale.
double scale_tolerance(DType dtype) {
  switch (dtype) {
    case DType::F64:
      return 1e-12;
    case DType::F32:
      return 5e-5;
    case DType::F16:
      return 1e-2;
    default:
      return 4e-2;
  }
}

class CudaConv2d : public test::CudaTest {};

/// Selects a cuDNN API for conv2d for one scope, then restores the one before.
class Conv2dApiScope {
 public:
  explicit Conv2dApiScope(cuda::Conv2dApi api) : previous_(cuda::conv2d_api()) { cuda::set_conv2d_api(api); }
  ~Conv2dApiScope() { cuda::set_conv2d_api(previous_); }
  Conv2dApiScope(const Conv2dApiScope&) = delete;
  Conv2dApiScope& operator=(const Conv2dApiScope&) = delete;

 private:
  cuda::Conv2dApi previous_;
};

const char* api_name(cuda::Conv2dApi api) { return api == cuda::Conv2dApi::Graph ? "graph API" : "legacy API"; }

// Every case through both cuDNN APIs: each matches the CPU, and every pass (forward, both
// gradients) runs through the API selected. The graph API may leave a pass to the legacy one where
// it offers no allowed engine (Note [cudnn conv plans]); on the GPU machines (H100, H200, cuDNN 9.14)
// it offers one for every case here, so a pass falling back is a failure.
TEST_F(CudaConv2d, ForwardAndGradientsMatchCpuFloat64ThroughBothCudnnApis) {
  HostRng rng;
  for (const cuda::Conv2dApi api : {cuda::Conv2dApi::Graph, cuda::Conv2dApi::Legacy}) {
    const Conv2dApiScope scope(api);
    for (const ConvCase& c : conv_cases()) {
      for (DType dtype : test::floating_dtypes()) {
        for (Layout layout : {Layout::Contiguous, Layout::Transposed}) {
          SCOPED_TRACE(fmt::format("{} {} {} {}", api_name(api), test::case_str(c), dtype_name(dtype),
                                   test::layout_name(layout)));
          test::guarded([&] {
            const CaseValues v = draw_values(rng, c, dtype);
            const ConvRun expected = run_conv(c, v, kF64, kCPU, Layout::Contiguous);
            const cuda::Conv2dApiCalls before = cuda::conv2d_api_calls();
            const ConvRun actual = run_conv(c, v, dtype, kGpu, layout);
            cuda::synchronize();
            const cuda::Conv2dApiCalls after = cuda::conv2d_api_calls();
            EXPECT_TRUE(runs_match(actual, expected, scale_tolerance(dtype)));
            // Three passes: forward, input gradient, weight gradient.
            const uint64_t graph = after.graph - before.graph, legacy = after.legacy - before.legacy;
            EXPECT_EQ(graph + legacy, 3u);
            EXPECT_EQ(api == cuda::Conv2dApi::Graph ? legacy : graph, 0u);
          });
        }
      }
    }
  }
}

// An operand one element into its buffer is 4-byte (f32) or 2-byte (bf16) aligned: the graph API
// plans it with that alignment, apart from the 16-byte plan of the same geometry.
TEST_F(CudaConv2d, OperandsOffTheSixteenByteGridMatchTheCpu) {
  const Conv2dApiScope scope(cuda::Conv2dApi::Graph);
  HostRng rng;
  const ConvCase c{"offset by one element", {4, 8, 12, 12}, {16, 8, 3, 3}, {.padding = {1, 1}}, true};
  for (const DType dtype : {kF32, kBF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const CaseValues v = draw_values(rng, c, dtype);
    const ConvRun expected = run_conv(c, v, kF64, kCPU, Layout::Contiguous);
    const ConvRun aligned = run_conv(c, v, dtype, kGpu, Layout::Contiguous);
    const auto one_element_in = [&](const std::vector<double>& values, const Shape& shape) {
      std::vector<double> padded{0.0};
      padded.insert(padded.end(), values.begin(), values.end());
      const Tensor buffer = test::make_tensor(padded, {static_cast<int64_t>(padded.size())}, dtype, kGpu);
      Tensor view = buffer.narrow(0, 1, static_cast<int64_t>(values.size())).view(shape);
      view.requires_grad_();
      return view;
    };
    Tensor x = one_element_in(v.x, c.input);
    Tensor w = one_element_in(v.w, c.weight);
    ASSERT_NE(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16, 0u);
    ASSERT_TRUE(x.is_contiguous() && w.is_contiguous());
    const Tensor b = test::make_tensor(v.b, {c.weight[0]}, dtype, kGpu);
    const cuda::Conv2dApiCalls before = cuda::conv2d_api_calls();
    const Tensor out = conv2d(x, w, b, c.options);
    out.backward(test::make_tensor(v.r, out.shape(), dtype, kGpu));
    cuda::synchronize();
    EXPECT_EQ(cuda::conv2d_api_calls().graph - before.graph, 3u);
    EXPECT_TRUE(close_at_scale(out, expected.out, scale_tolerance(dtype)));
    EXPECT_TRUE(close_at_scale(x.grad(), expected.grad_input, scale_tolerance(dtype)));
    EXPECT_TRUE(close_at_scale(w.grad(), expected.grad_weight, scale_tolerance(dtype)));
    EXPECT_TRUE(close_at_scale(aligned.out, expected.out, scale_tolerance(dtype)));
  }
}

TEST_F(CudaConv2d, OnlyTheInputsThatRequireGradGetOne) {
  HostRng rng;
  const ConvCase c{"weight only", {4, 8, 12, 12}, {16, 8, 3, 3}, {.padding = {1, 1}}, true};
  const CaseValues v = draw_values(rng, c, kF32);
  const ConvRun expected = run_conv(c, v, kF64, kCPU, Layout::Contiguous);
  const Tensor x = test::make_tensor(v.x, c.input, kF32, kGpu);
  Tensor w = test::make_tensor(v.w, c.weight, kF32, kGpu);
  w.requires_grad_();
  const Tensor out = conv2d(x, w, test::make_tensor(v.b, {16}, kF32, kGpu), c.options);
  out.backward(test::make_tensor(v.r, out.shape(), kF32, kGpu));
  EXPECT_FALSE(x.grad().defined());
  EXPECT_TRUE(close_at_scale(w.grad(), expected.grad_weight, scale_tolerance(kF32)));
}

TEST_F(CudaConv2d, SteadyStateStepsMakeNoCudaMalloc) {
  HostRng rng;
  const ConvCase c{"steady", {16, 16, 24, 24}, {32, 16, 3, 3}, {.stride = {2, 2}, .padding = {1, 1}}, true};
  const CaseValues v = draw_values(rng, c, kF32);
  ConvRun first;
  for (int step = 0; step < 3; ++step) first = run_conv(c, v, kF32, kGpu, Layout::Contiguous);
  cuda::synchronize();
  const uint64_t mallocs = cuda::malloc_count();
  for (int step = 0; step < 5; ++step) {
    const ConvRun again = run_conv(c, v, kF32, kGpu, Layout::Contiguous);
    EXPECT_TRUE(test::tensors_close(again.out, first.out, {1e-6, 1e-6}));
    EXPECT_TRUE(test::tensors_close(again.grad_weight, first.grad_weight, {1e-5, 1e-5}));
  }
  cuda::synchronize();
  EXPECT_EQ(cuda::malloc_count(), mallocs);
}

TEST_F(CudaConv2d, EmptyBatchGivesEmptyOutputAndZeroWeightGradient) {
  const Tensor x = zeros({0, 2, 5, 5}, TensorOptions(kF32, kGpu));
  Tensor w = ones({3, 2, 3, 3}, TensorOptions(kF32, kGpu));
  w.requires_grad_();
  const Tensor out = conv2d(x, w);
  EXPECT_EQ(out.shape(), (Shape{0, 3, 3, 3}));
  sum(out).backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().device(), kGpu);
  EXPECT_TRUE(test::all_close(w.grad(), w.shape(), std::vector<double>(54, 0.0), {}));
}

TEST_F(CudaConv2d, MixedDevicesRaiseNamingTheOp) {
  const Tensor x = zeros({1, 2, 5, 5}, TensorOptions(kF32, kGpu));
  EXPECT_TRUE(test::raises_error([&] { conv2d(x, zeros({3, 2, 3, 3})); }, {"conv2d", "cpu", "cuda:0"}));
  EXPECT_TRUE(test::raises_error(
      [&] {
        conv2d(x, zeros({3, 2, 3, 3}, TensorOptions(kF32, kGpu)), zeros({3}));
      },
      {"conv2d", "cpu", "cuda:0"}));
  EXPECT_TRUE(test::raises_error(
      [&] {
        conv2d(zeros({1, 2, 5, 5}, TensorOptions(kI32, kGpu)), zeros({3, 2, 3, 3}, TensorOptions(kI32, kGpu)));
      },
      {"conv2d", "i32"}));
}

TEST_F(CudaConv2d, ModuleDrawsTheSameWeightsOnBothDevicesAndMatches) {
  HostRng rng;
  const Conv2dOptions options{.stride = {2, 2}, .padding = {1, 1}, .groups = 2};
  manual_seed(21);
  nn::Conv2d cpu_conv(4, 8, 3, options, true, kF32);
  manual_seed(21);
  nn::Conv2d gpu_conv(4, 8, 3, options, true, TensorOptions(kF32, kGpu));
  EXPECT_TRUE(test::tensors_identical(gpu_conv.weight(), cpu_conv.weight()));
  EXPECT_TRUE(test::tensors_identical(gpu_conv.bias(), cpu_conv.bias()));
  const auto xv = rng.uniform(2 * 4 * 9 * 9, -1, 1);
  const Tensor cpu_out = cpu_conv(test::make_tensor(xv, {2, 4, 9, 9}, kF32));
  const Tensor gpu_out = gpu_conv(test::make_tensor(xv, {2, 4, 9, 9}, kF32, kGpu));
  EXPECT_EQ(gpu_out.device(), kGpu);
  EXPECT_TRUE(test::tensors_close(gpu_out, cpu_out, {1e-5, 1e-5}));
  sum(mul(cpu_out, cpu_out)).backward();
  sum(mul(gpu_out, gpu_out)).backward();
  EXPECT_EQ(gpu_conv.weight().grad().device(), kGpu);
  EXPECT_TRUE(test::tensors_close(gpu_conv.weight().grad(), cpu_conv.weight().grad(), {1e-4, 1e-4}));
  EXPECT_TRUE(test::tensors_close(gpu_conv.bias().grad(), cpu_conv.bias().grad(), {1e-4, 1e-4}));
}

TEST_F(CudaConv2d, SmallCnnLearnsOnCuda) {
  // 8x8 images holding one bright bar, horizontal (class 0) or vertical (class 1), plus noise.
  HostRng rng;
  manual_seed(test::test_seed());
  const int64_t n = 64, side = 8;
  const test::BarImages data = test::bar_images(rng, n, side);
  const Tensor images = from_vector(data.pixels, {n, 1, side, side}, TensorOptions(kF32, kGpu));
  const Tensor targets = from_vector(data.labels, {n}, TensorOptions(kI64, kGpu));
  const TensorOptions on_gpu(kF32, kGpu);
  nn::Sequential cnn({std::make_shared<nn::Conv2d>(1, 8, 3, Conv2dOptions{.padding = {1, 1}}, true, on_gpu),
                      std::make_shared<nn::ReLU>(),
                      std::make_shared<nn::Conv2d>(8, 8, 3, Conv2dOptions{.stride = {2, 2}, .groups = 2}, true, on_gpu),
                      std::make_shared<nn::ReLU>(), std::make_shared<nn::Flatten>(),
                      std::make_shared<nn::Linear>(8 * 3 * 3, 2, true, on_gpu)});
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 300; ++step) {
    const Tensor loss = nn::cross_entropy(cnn(images), targets);
    if (step == 0) first = loss.item();
    if (step == 299) last = loss.item();
    cnn.zero_grad();
    loss.backward();
    autograd::NoGradGuard no_grad;
    for (Tensor p : cnn.parameters()) p.sub_(mul(p.grad(), 0.1));
  }
  SCOPED_TRACE(fmt::format("loss {} -> {}", first, last));
  EXPECT_LT(last, 0.3 * first);
  EXPECT_GT(nn::accuracy(cnn(images), targets), 0.95);
}

}  // namespace
}  // namespace flame
