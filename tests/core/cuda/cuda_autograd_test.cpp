// Autograd on CUDA: for a representative graph of each op family (unary, binary with broadcasting,
// where, reductions, softmax, matmul, views, joining, indexing, dtype conversion) the gradients
// computed on CUDA (f32) match those computed on the CPU (f32) from the same inputs, and stay on the
// GPU; gradients flow across to(device); an MLP's forward and backward run on CUDA with its
// gradients (and the gradient-ready hooks) on the device. Skips without a CUDA device.
#include <fmt/format.h>

#include <map>

#include "core/autograd.h"
#include "support/gradcheck.h"

namespace flame {
namespace {

using test::HostRng;
using test::Layout;
using test::Tolerance;

const Device kGpu = cuda_device(0);
/// CUDA computes f32 in f32, the CPU reference in f64 rounded to f32; chains and sums widen the gap.
const Tolerance kF32Grad{1e-4, 1e-5};

/// One input of a graph: host values, shape, dtype and layout; floating inputs become leaves that
/// require grad, the others (indices, conditions) are passed as they are.
struct Input {
  std::vector<double> values;
  Shape shape;
  DType dtype = kF32;
  Layout layout = Layout::Contiguous;
};

using GraphFn = std::function<Tensor(const std::vector<Tensor>&)>;

struct Run {
  Tensor out;
  std::vector<Tensor> leaves;
};

/// Builds the inputs on `device`, runs the graph, and backpropagates the projection `r`.
Run run_on(Device device, const GraphFn& fn, const std::vector<Input>& inputs, const std::vector<double>& r) {
  Run run;
  for (const Input& in : inputs) {
    Tensor t = test::make_tensor(in.values, in.shape, in.dtype, device, in.layout);
    if (is_floating(in.dtype)) t.requires_grad_();
    run.leaves.push_back(t);
  }
  run.out = fn(run.leaves);
  run.out.backward(test::make_tensor(r, run.out.shape(), run.out.dtype(), device));
  return run;
}

/// Runs `fn` on both devices; outputs and the gradient of every floating input must match, and the
/// CUDA gradients must live on the GPU.
::testing::AssertionResult gradients_match(const GraphFn& fn, const std::vector<Input>& inputs, HostRng& rng,
                                           Tolerance tol = kF32Grad) {
  Run cpu, gpu;
  std::vector<double> r;
  try {
    {
      // Shape of the output, for the projection.
      autograd::NoGradGuard guard;
      std::vector<Tensor> probe;
      for (const Input& in : inputs) probe.push_back(test::make_tensor(in.values, in.shape, in.dtype));
      r = rng.uniform(fn(probe).numel(), -1.0, 1.0);
    }
    cpu = run_on(kCPU, fn, inputs, r);
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure() << "the CPU graph threw: " << error.what();
  }
  try {
    gpu = run_on(kGpu, fn, inputs, r);
    cuda::synchronize();
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure() << "the CUDA graph threw: " << error.what();
  }
  if (gpu.out.device() != kGpu) return ::testing::AssertionFailure() << "CUDA output on " << gpu.out.device().str();
  if (auto close = test::tensors_close(gpu.out, cpu.out, tol); !close) return close << " (forward output)";
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!is_floating(inputs[i].dtype)) {
      if (gpu.leaves[i].grad().defined()) return ::testing::AssertionFailure() << "input " << i << " got a gradient";
      continue;
    }
    const Tensor g = gpu.leaves[i].grad(), c = cpu.leaves[i].grad();
    if (!g.defined() || !c.defined())
      return ::testing::AssertionFailure()
             << "input " << i << ": gradient undefined on " << (g.defined() ? "the CPU" : "CUDA");
    if (g.device() != kGpu)
      return ::testing::AssertionFailure() << "input " << i << ": CUDA gradient on " << g.device().str();
    if (auto close = test::tensors_close(g, c, tol); !close) return close << " (gradient of input " << i << ")";
  }
  return ::testing::AssertionSuccess();
}

class CudaAutograd : public test::CudaTest {};

std::vector<double> away_from_zero(HostRng& rng, int64_t n) { return test::signed_away_from_zero(rng, n, 0.2, 2.0); }

TEST_F(CudaAutograd, UnaryOps) {
  HostRng rng;
  const GraphFn all_unary = [](const std::vector<Tensor>& in) {
    const Tensor& x = in[0];
    const Tensor pos = add(abs(x), 1.0);
    Tensor y = add(gelu(x), gelu(x, GeluApproximation::Tanh));
    y = add(y, mul(silu(x), sigmoid(x)));
    y = add(y, mul(tanh(x), relu(x)));
    y = add(y, sub(mul(exp(x), 0.1), neg(x)));
    y = add(y, div(add(sqrt(pos), rsqrt(pos)), log(add(pos, 1.0))));
    y = add(y, pow(pos, 1.5));
    y = add(y, mul(clamp(x, -1.0, 1.0), add(clamp_min(x, -0.5), clamp_max(x, 0.5))));
    return y;
  };
  for (Layout layout : {Layout::Contiguous, Layout::Transposed}) {
    SCOPED_TRACE(test::layout_name(layout));
    // Away from the kinks of abs/relu (0) and the clamp bounds (+-0.5, +-1).
    std::vector<double> v;
    for (double x : away_from_zero(rng, 200))
      if (std::abs(std::abs(x) - 0.5) > 0.05 && std::abs(std::abs(x) - 1.0) > 0.05) v.push_back(x);
    v.resize(120, 0.3);
    EXPECT_TRUE(gradients_match(all_unary, {Input{v, {10, 12}, kF32, layout}}, rng));
  }
}

TEST_F(CudaAutograd, BinaryOpsWithBroadcasting) {
  HostRng rng;
  const GraphFn binary = [](const std::vector<Tensor>& in) {
    const Tensor &a = in[0], &b = in[1];  // [3, 1] and [1, 4]
    Tensor y = add(mul(a, b), sub(a, b));
    y = add(y, div(a, add(abs(b), 0.5)));
    y = add(y, pow(add(abs(a), 0.5), b));
    y = add(y, add(maximum(a, b), minimum(a, b), 0.5));
    y = add(y, mul(maximum(a, 0.1), minimum(b, -0.1)));
    return add(y, div(sub(mul(a, 2.0), 1.0), 3.0));
  };
  // a on k + 0.25, b on k + 0.65: never tied.
  std::vector<double> a = rng.integers(3, -2, 2), b = rng.integers(4, -2, 2);
  for (double& x : a) x += 0.25;
  for (double& x : b) x += 0.65;
  EXPECT_TRUE(gradients_match(binary, {Input{a, {3, 1}}, Input{b, {1, 4}}}, rng));
  SCOPED_TRACE("a transposed [40, 30] operand with a [30] one");
  EXPECT_TRUE(gradients_match(
      [](const std::vector<Tensor>& in) { return mul(add(in[0], in[1]), in[1]); },
      {Input{rng.uniform(1200, -2, 2), {40, 30}, kF32, Layout::Transposed}, Input{rng.uniform(30, -2, 2), {30}}}, rng));
}

TEST_F(CudaAutograd, Where) {
  HostRng rng;
  EXPECT_TRUE(gradients_match([](const std::vector<Tensor>& in) { return where(in[0], mul(in[1], in[2]), in[2]); },
                              {Input{rng.integers(12, 0, 1), {3, 4}, kBool}, Input{rng.uniform(3, -2, 2), {3, 1}},
                               Input{rng.uniform(4, -2, 2), {4}}},
                              rng));
}

TEST_F(CudaAutograd, ReductionsAndSoftmax) {
  HostRng rng;
  const GraphFn reductions = [](const std::vector<Tensor>& in) {
    const Tensor& x = in[0];                                     // [6, 5, 4]
    Tensor y = add(sum(x, {0}), mean(x, {0}, false));            // [5, 4]
    y = add(y, var(x, {0}, 1));                                  // [5, 4]
    y = add(y, max(x, 0));                                       // [5, 4]
    y = add(y, min(x, 2, true).select(0, 1));                    // [5, 1] broadcast
    y = add(y, softmax(x, 1).select(0, 2));                      // [5, 4]
    y = add(y, log_softmax(x, -1).select(0, 4));                 // [5, 4]
    return add(y, add(mul(sum(x), 0.01), add(max(x), min(x))));  // 0-d broadcast
  };
  for (Layout layout : {Layout::Contiguous, Layout::Permuted}) {
    SCOPED_TRACE(test::layout_name(layout));
    EXPECT_TRUE(
        gradients_match(reductions, {Input{test::distinct_values(rng, 120, 0.05), {6, 5, 4}, kF32, layout}}, rng));
  }
  SCOPED_TRACE("softmax over a long row (multi-block kernels)");
  EXPECT_TRUE(gradients_match([](const std::vector<Tensor>& in) { return log_softmax(in[0], 1); },
                              {Input{rng.uniform(4 * 3000, -4, 4), {4, 3000}}}, rng));
}

TEST_F(CudaAutograd, Matmul) {
  HostRng rng;
  const std::vector<std::pair<Shape, Shape>> cases{
      {{7}, {7}}, {{7}, {7, 5}}, {{6, 7}, {7}}, {{33, 17}, {17, 9}}, {{2, 1, 5, 6}, {3, 6, 4}}};
  for (const auto& [sa, sb] : cases) {
    SCOPED_TRACE(fmt::format("{} @ {}", shape_str(sa), shape_str(sb)));
    EXPECT_TRUE(gradients_match(
        [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); },
        {Input{rng.uniform(test::numel_of(sa), -1, 1), sa}, Input{rng.uniform(test::numel_of(sb), -1, 1), sb}}, rng));
  }
  SCOPED_TRACE("transposed operands");
  EXPECT_TRUE(gradients_match([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); },
                              {Input{rng.uniform(20 * 16, -1, 1), {20, 16}, kF32, Layout::Transposed},
                               Input{rng.uniform(16 * 12, -1, 1), {16, 12}, kF32, Layout::Transposed}},
                              rng));
  SCOPED_TRACE("a linear layer's x @ w.t(), w's gradient computed in w's layout (batched and plain x)");
  for (const Shape& sx : {Shape{20, 16}, Shape{3, 5, 16}}) {
    EXPECT_TRUE(gradients_match([](const std::vector<Tensor>& in) { return matmul(in[0], in[1].t()); },
                                {Input{rng.uniform(test::numel_of(sx), -1, 1), sx},
                                 Input{rng.uniform(12 * 16, -1, 1), {12, 16}}},
                                rng));
  }
}

TEST_F(CudaAutograd, ViewsCopiesAndJoining) {
  HostRng rng;
  const GraphFn views = [](const std::vector<Tensor>& in) {
    const Tensor& x = in[0];                                              // [4, 6, 5]
    const Tensor a = x.transpose(0, 2).narrow(1, 1, 4).reshape({5, 16});  // reshape copies here
    const Tensor b = x.permute({2, 0, 1}).flatten(1).slice(1, 0, 24, 3).unsqueeze(0).expand({2, 5, 8}).sum({0});
    const Tensor c = x.select(1, 2).t();                       // [5, 4]
    const Tensor d = x.select(0, 3).t().clone().view({5, 6});  // [5, 6]
    const Tensor e = x.squeeze().unsqueeze(-1).select(-1, 0).contiguous().narrow(0, 0, 1).view({6, 5}).t();
    return cat({a, b, c, d, mul(e, e)}, 1);  // [5, 40]
  };
  for (Layout layout : {Layout::Contiguous, Layout::Offset}) {
    SCOPED_TRACE(test::layout_name(layout));
    EXPECT_TRUE(gradients_match(views, {Input{rng.uniform(120, -2, 2), {4, 6, 5}, kF32, layout}}, rng));
  }
  SCOPED_TRACE("stack and cat of several leaves");
  EXPECT_TRUE(gradients_match(
      [](const std::vector<Tensor>& in) {
        return cat({stack({in[0], exp(in[1]), in[0]}, 1).flatten(1), in[2]}, 1);  // [3, 12] ++ [3, 2]
      },
      {Input{rng.uniform(12, -1, 1), {3, 4}}, Input{rng.uniform(12, -1, 1), {3, 4}, kF32, Layout::Transposed},
       Input{rng.uniform(6, -1, 1), {3, 2}}},
      rng));
}

TEST_F(CudaAutograd, DtypeConversions) {
  HostRng rng;
  // f32 -> f64 -> f32 and f32 -> f16 -> f32: the gradient converts back to each input's dtype.
  EXPECT_TRUE(gradients_match(
      [](const std::vector<Tensor>& in) {
        return add(exp(in[0].to(kF64)).to(kF32), mul(in[0].to(kF16), 2.0).to(kF32));
      },
      {Input{rng.uniform(24, -1, 1), {4, 6}}}, rng, Tolerance{2e-3, 2e-3}));
}

TEST_F(CudaAutograd, Indexing) {
  HostRng rng;
  const GraphFn indexing = [](const std::vector<Tensor>& in) {
    const Tensor &x = in[0], &src = in[1];                             // x [5, 4], src [6, 4]
    const Tensor picked = index_select(x, 0, in[2]);                   // [6, 4]
    const Tensor gathered = gather(x, 1, in[3]);                       // [5, 7]
    const Tensor scattered = scatter_add(mul(x, 2.0), 0, in[4], src);  // [5, 4]
    return add(sum(mul(picked, src)), add(sum(exp(gathered)), sum(mul(scattered, scattered))));
  };
  EXPECT_TRUE(gradients_match(indexing,
                              {Input{rng.uniform(20, -1, 1), {5, 4}}, Input{rng.uniform(24, -1, 1), {6, 4}},
                               Input{rng.integers(6, 0, 4), {6}, kI64}, Input{rng.integers(35, 0, 3), {5, 7}, kI64},
                               Input{rng.integers(24, 0, 4), {6, 4}, kI64}},
                              rng));
  SCOPED_TRACE("an embedding-like lookup with many repeats (i32 index)");
  EXPECT_TRUE(gradients_match(
      [](const std::vector<Tensor>& in) { return index_select(in[0], 0, in[1]); },
      {Input{rng.uniform(10 * 16, -1, 1), {10, 16}}, Input{rng.integers(500, 0, 9), {500}, kI32}}, rng));
}

TEST_F(CudaAutograd, GradientsFlowAcrossDevices) {
  HostRng rng;
  const auto values = rng.uniform(6, -1, 1);
  std::vector<double> expected(6);
  for (size_t i = 0; i < 6; ++i) expected[i] = std::exp(values[i]);
  {
    SCOPED_TRACE("CPU leaf -> CUDA ops -> CPU loss");
    Tensor x = test::make_tensor(values, {2, 3}, kF32);
    x.requires_grad_();
    const Tensor loss = sum(exp(x.to(kGpu))).to(kCPU);
    EXPECT_EQ(loss.device(), kCPU);
    loss.backward();
    ASSERT_TRUE(x.grad().defined());
    EXPECT_EQ(x.grad().device(), kCPU);
    EXPECT_TRUE(test::all_close(x.grad(), {2, 3}, expected, kF32Grad));
  }
  {
    SCOPED_TRACE("CUDA leaf -> CPU ops");
    Tensor x = test::make_tensor(values, {2, 3}, kF32, kGpu);
    x.requires_grad_();
    sum(exp(x.to(kCPU))).backward();
    ASSERT_TRUE(x.grad().defined());
    EXPECT_EQ(x.grad().device(), kGpu);
    EXPECT_TRUE(test::all_close(x.grad(), {2, 3}, expected, kF32Grad));
  }
}

TEST_F(CudaAutograd, MlpForwardAndBackwardStayOnTheGpu) {
  HostRng rng;
  const int64_t n = 32, in = 20, hid = 64, out = 10;
  const std::vector<Input> inputs{
      Input{rng.uniform(in * hid, -0.3, 0.3), {in, hid}}, Input{rng.uniform(hid, -0.1, 0.1), {hid}},
      Input{rng.uniform(hid * out, -0.3, 0.3), {hid, out}}, Input{rng.uniform(out, -0.1, 0.1), {out}}};
  const Tensor x_cpu = test::make_tensor(rng.uniform(n * in, -1, 1), {n, in}, kF32);
  const Tensor target = test::make_tensor(rng.integers(n, 0, out - 1), {n, 1}, kI64);
  // Cross-entropy of a two-layer perceptron.
  const auto loss_of = [&](const std::vector<Tensor>& p) {
    const Device dev = p[0].device();
    const Tensor x = x_cpu.to(dev);
    const Tensor logits = add(matmul(gelu(add(matmul(x, p[0]), p[1])), p[2]), p[3]);
    return neg(mean(gather(log_softmax(logits, 1), 1, target.to(dev))));
  };
  EXPECT_TRUE(gradients_match(loss_of, inputs, rng));

  // The gradient-ready hooks see final CUDA gradients, last layer first.
  std::vector<Tensor> params;
  for (const Input& i : inputs) {
    Tensor t = test::make_tensor(i.values, i.shape, i.dtype, kGpu);
    t.requires_grad_();
    params.push_back(t);
  }
  std::vector<int> order;
  std::vector<Device> devices;
  for (int k = 0; k < 4; ++k)
    params[k].register_grad_ready_hook([&, k](const Tensor& leaf) {
      order.push_back(k);
      devices.push_back(leaf.grad().device());
    });
  const Tensor loss = loss_of(params);
  EXPECT_EQ(loss.device(), kGpu);
  loss.backward();
  EXPECT_EQ(order, (std::vector<int>{3, 2, 1, 0}));
  for (const Device& d : devices) EXPECT_EQ(d, kGpu);
  for (const Tensor& p : params) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().device(), kGpu);
  }
  // An SGD step under NoGradGuard, then a second step's loss is lower.
  const double before = loss.item();
  {
    autograd::NoGradGuard guard;
    for (Tensor& p : params) p.sub_(mul(p.grad(), 0.1));
  }
  for (Tensor& p : params) p.set_grad(Tensor());
  EXPECT_LT(loss_of(params).item(), before);
}

}  // namespace
}  // namespace flame
