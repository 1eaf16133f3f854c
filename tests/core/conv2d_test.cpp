// conv2d on the CPU: the forward against a float64 reference computed here by explicit loops (every
// floating dtype, stride / padding / dilation / groups / bias combinations, non-contiguous inputs,
// unbatched and empty batches), finite-difference gradient checks in float64 for input, weight and
// bias, the errors bad arguments raise, and nn::Conv2d (init, forward, gradients, errors, a small
// CNN that learns under SGD).
#include <fmt/format.h>

#include <cmath>
#include <memory>
#include <string>

#include "core/autograd.h"
#include "core/conv.h"
#include "nn/activation.h"
#include "nn/conv2d.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "support/conv_pool_reference.h"
#include "support/gradcheck.h"

namespace flame {
namespace {

using test::ConvCase;
using test::HostRng;
using test::raises_error;

const std::vector<ConvCase>& conv_cases() {
  static const std::vector<ConvCase> cases = [] {
    std::vector<ConvCase> c = test::shared_conv_cases();
    c.push_back({"depthwise multiplier 2", {1, 2, 5, 5}, {4, 1, 2, 2}, {.groups = 2}, false});
    return c;
  }();
  return cases;
}

/// out [N, O, oh, ow] by the definition in core/conv.h, in double.
std::vector<double> reference_conv2d(const std::vector<double>& x, const Shape& xs, const std::vector<double>& w,
                                     const Shape& ws, const std::vector<double>& b, const Conv2dOptions& o,
                                     Shape& out_shape) {
  const int64_t n_size = xs[0], c_size = xs[1], h = xs[2], wd = xs[3];
  const int64_t o_size = ws[0], cg = ws[1], kh = ws[2], kw = ws[3];
  const int64_t og = o_size / o.groups;
  const int64_t oh = (h + 2 * o.padding[0] - o.dilation[0] * (kh - 1) - 1) / o.stride[0] + 1;
  const int64_t ow = (wd + 2 * o.padding[1] - o.dilation[1] * (kw - 1) - 1) / o.stride[1] + 1;
  out_shape = {n_size, o_size, oh, ow};
  std::vector<double> out(static_cast<size_t>(n_size * o_size * oh * ow));
  for (int64_t n = 0; n < n_size; ++n)
    for (int64_t oc = 0; oc < o_size; ++oc)
      for (int64_t y = 0; y < oh; ++y)
        for (int64_t xo = 0; xo < ow; ++xo) {
          double acc = b.empty() ? 0.0 : b[oc];
          const int64_t group = oc / og;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t iy = y * o.stride[0] - o.padding[0] + i * o.dilation[0];
                const int64_t ix = xo * o.stride[1] - o.padding[1] + j * o.dilation[1];
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                acc += x[((n * c_size + group * cg + c) * h + iy) * wd + ix] * w[((oc * cg + c) * kh + i) * kw + j];
              }
          out[((n * o_size + oc) * oh + y) * ow + xo] = acc;
        }
  return out;
}

// --- forward ---------------------------------------------------------------------------------------

TEST(Conv2d, MatchesFloat64ReferenceInEveryFloatingDtype) {
  HostRng rng;
  for (const ConvCase& c : conv_cases()) {
    for (DType dtype : test::floating_dtypes()) {
      for (test::Layout layout : {test::Layout::Contiguous, test::Layout::Transposed, test::Layout::Strided}) {
        SCOPED_TRACE(fmt::format("{} {} {}", test::case_str(c), dtype_name(dtype), test::layout_name(layout)));
        test::guarded([&] {
          const auto x = test::round_to_dtype(rng.uniform(test::numel_of(c.input), -1, 1), dtype);
          const auto w = test::round_to_dtype(rng.uniform(test::numel_of(c.weight), -1, 1), dtype);
          const auto b = c.bias ? test::round_to_dtype(rng.uniform(c.weight[0], -1, 1), dtype) : std::vector<double>{};
          const Tensor bias = c.bias ? test::make_tensor(b, {c.weight[0]}, dtype, kCPU, layout) : Tensor();
          const Tensor out = conv2d(test::make_tensor(x, c.input, dtype, kCPU, layout),
                                    test::make_tensor(w, c.weight, dtype, kCPU, layout), bias, c.options);
          Shape expected_shape;
          const auto expected = reference_conv2d(x, c.input, w, c.weight, b, c.options, expected_shape);
          EXPECT_EQ(out.dtype(), dtype);
          // f32/f16/bf16 accumulate in f32; 16-bit results are rounded twice when a bias is added.
          const test::Tolerance tol = dtype == kF64 ? test::tolerance_for(dtype) : test::tolerance_for(dtype).scaled(4);
          EXPECT_TRUE(test::all_close(out, expected_shape, expected, tol));
        });
      }
    }
  }
}

TEST(Conv2d, OutputSizeFollowsTheFormula) {
  EXPECT_EQ(conv2d_output_size(28, 3, 1, 1, 1), 28);
  EXPECT_EQ(conv2d_output_size(28, 3, 2, 1, 1), 14);
  EXPECT_EQ(conv2d_output_size(7, 3, 2, 0, 2), 2);  // (7 - 4 - 1) / 2 + 1
  EXPECT_EQ(conv2d_output_size(5, 5, 1, 0, 1), 1);
  EXPECT_EQ(conv2d_output_size(4, 5, 1, 0, 1), 0);
  EXPECT_EQ(conv2d_output_size(2, 3, 1, 0, 2), 0);
  EXPECT_TRUE(raises_error([] { conv2d_output_size(4, 3, 0, 0, 1); }, {"conv2d_output_size", "stride=0"}));
}

TEST(Conv2d, UnbatchedInputGivesUnbatchedOutput) {
  HostRng rng;
  const ConvCase c{"unbatched", {1, 3, 5, 5}, {2, 3, 3, 3}, {.padding = {1, 1}}, true};
  const auto x = rng.uniform(test::numel_of(c.input), -1, 1);
  const auto w = rng.uniform(test::numel_of(c.weight), -1, 1);
  const auto b = rng.uniform(2, -1, 1);
  Shape expected_shape;
  const auto expected = reference_conv2d(x, c.input, w, c.weight, b, c.options, expected_shape);
  const Tensor out = conv2d(test::make_tensor(x, {3, 5, 5}, kF64), test::make_tensor(w, c.weight, kF64),
                            test::make_tensor(b, {2}, kF64), c.options);
  EXPECT_TRUE(test::all_close(out, {2, 5, 5}, expected, test::tolerance_for(kF64)));
}

TEST(Conv2d, EmptyBatchGivesEmptyOutputAndZeroWeightGradient) {
  const Tensor x = zeros({0, 2, 5, 5}, kF64);
  Tensor w = ones({3, 2, 3, 3}, kF64);
  Tensor b = ones({3}, kF64);
  w.requires_grad_();
  b.requires_grad_();
  const Tensor out = conv2d(x, w, b);
  EXPECT_EQ(out.shape(), (Shape{0, 3, 3, 3}));
  sum(out).backward();
  EXPECT_TRUE(test::all_close(w.grad(), w.shape(), std::vector<double>(54, 0.0), {}));
  EXPECT_TRUE(test::all_close(b.grad(), {3}, std::vector<double>(3, 0.0), {}));
}

// --- gradients -------------------------------------------------------------------------------------

TEST(Conv2d, GradientsMatchFiniteDifferences) {
  HostRng rng;
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(test::case_str(c));
    std::vector<Tensor> inputs{test::random_f64(rng, c.input, -1, 1), test::random_f64(rng, c.weight, -1, 1)};
    if (c.bias) inputs.push_back(test::random_f64(rng, {c.weight[0]}, -1, 1));
    const Conv2dOptions options = c.options;
    EXPECT_TRUE(test::gradcheck(
        [options](const std::vector<Tensor>& in) {
          return conv2d(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), options);
        },
        inputs, rng));
  }
}

TEST(Conv2d, GradientsOfNonContiguousAndUnbatchedInputs) {
  HostRng rng;
  const Conv2dOptions options{.stride = {2, 1}, .padding = {1, 1}, .groups = 2};
  EXPECT_TRUE(test::gradcheck([options](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], options); },
                              {test::random_f64(rng, {2, 4, 5, 6}, -1, 1, test::Layout::Transposed),
                               test::random_f64(rng, {4, 2, 3, 3}, -1, 1, test::Layout::Permuted),
                               test::random_f64(rng, {4}, -1, 1, test::Layout::Strided)},
                              rng));
  EXPECT_TRUE(test::gradcheck([options](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], options); },
                              {test::random_f64(rng, {4, 5, 6}, -1, 1), test::random_f64(rng, {4, 2, 3, 3}, -1, 1),
                               test::random_f64(rng, {4}, -1, 1)},
                              rng));
}

TEST(Conv2d, OnlyTheInputsThatRequireGradGetOne) {
  HostRng rng;
  const auto xv = rng.uniform(2 * 3 * 5 * 5, -1, 1), wv = rng.uniform(4 * 3 * 3 * 3, -1, 1), bv = rng.uniform(4, -1, 1);
  const Conv2dOptions options{.padding = {1, 1}};
  // All three require grad: the reference gradients.
  Tensor x = test::make_tensor(xv, {2, 3, 5, 5}, kF64), w = test::make_tensor(wv, {4, 3, 3, 3}, kF64),
         b = test::make_tensor(bv, {4}, kF64);
  x.requires_grad_();
  w.requires_grad_();
  b.requires_grad_();
  const Tensor r = test::make_tensor(rng.uniform(2 * 4 * 5 * 5, -1, 1), {2, 4, 5, 5}, kF64);
  conv2d(x, w, b, options).backward(r);
  // Only the weight: the image of a first layer.
  Tensor x2 = test::make_tensor(xv, {2, 3, 5, 5}, kF64), w2 = test::make_tensor(wv, {4, 3, 3, 3}, kF64),
         b2 = test::make_tensor(bv, {4}, kF64);
  w2.requires_grad_();
  conv2d(x2, w2, b2, options).backward(r);
  EXPECT_FALSE(x2.grad().defined());
  EXPECT_FALSE(b2.grad().defined());
  EXPECT_TRUE(test::tensors_close(w2.grad(), w.grad(), test::tolerance_for(kF64)));
  // Only the input.
  Tensor x3 = test::make_tensor(xv, {2, 3, 5, 5}, kF64), w3 = test::make_tensor(wv, {4, 3, 3, 3}, kF64);
  x3.requires_grad_();
  conv2d(x3, w3, Tensor(), options).backward(r);
  EXPECT_FALSE(w3.grad().defined());
  EXPECT_TRUE(test::tensors_close(x3.grad(), x.grad(), test::tolerance_for(kF64)));
  // No grad mode: no graph.
  autograd::NoGradGuard no_grad;
  EXPECT_FALSE(conv2d(x, w, b, options).requires_grad());
}

TEST(Conv2d, Float32GradientsMatchFloat64) {
  HostRng rng;
  for (const ConvCase& c : conv_cases()) {
    SCOPED_TRACE(test::case_str(c));
    const auto xv = rng.uniform(test::numel_of(c.input), -1, 1), wv = rng.uniform(test::numel_of(c.weight), -1, 1);
    std::vector<Tensor> grads[2];
    int slot = 0;
    for (DType dtype : {kF64, kF32}) {
      Tensor x = test::make_tensor(xv, c.input, dtype), w = test::make_tensor(wv, c.weight, dtype);
      x.requires_grad_();
      w.requires_grad_();
      const Tensor out = conv2d(x, w, Tensor(), c.options);
      out.backward(ones(out.shape(), dtype));
      grads[slot++] = {x.grad(), w.grad()};
    }
    EXPECT_TRUE(test::tensors_close(grads[1][0], grads[0][0].to(kF32), {1e-5, 1e-5}));
    EXPECT_TRUE(test::tensors_close(grads[1][1], grads[0][1].to(kF32), {1e-5, 1e-5}));
  }
}

// --- errors ----------------------------------------------------------------------------------------

TEST(Conv2d, BadArgumentsRaiseNamingTheOpAndShapes) {
  const Tensor x = zeros({2, 4, 6, 6}), w = zeros({3, 4, 3, 3});
  EXPECT_TRUE(raises_error([&] { conv2d(zeros({4, 6}), w); }, {"conv2d", "[4, 6]", "4-D"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, zeros({3, 4, 3})); }, {"conv2d", "[3, 4, 3]", "weight"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, zeros({3, 2, 3, 3})); }, {"conv2d", "[3, 2, 3, 3]", "[2, 4, 6, 6]"}));
  EXPECT_TRUE(raises_error(
      [&] {
        conv2d(x, zeros({3, 2, 3, 3}), Tensor(), {.groups = 2});
      },
      {"conv2d", "groups=2", "3 output channels"}));
  EXPECT_TRUE(raises_error(
      [&] {
        conv2d(zeros({2, 3, 6, 6}), zeros({4, 1, 3, 3}), Tensor(), {.groups = 2});
      },
      {"conv2d", "groups=2", "3 channels"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, w, zeros({4})); }, {"conv2d", "bias", "[4]", "[3, 4, 3, 3]"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, w, zeros({1, 3})); }, {"conv2d", "bias", "[1, 3]"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, zeros({3, 4, 3, 3}, kF64)); }, {"conv2d", "f32", "f64"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, w, zeros({3}, kF64)); }, {"conv2d", "f32", "f64"}));
  EXPECT_TRUE(raises_error([&] { conv2d(zeros({2, 4, 6, 6}, kI64), zeros({3, 4, 3, 3}, kI64)); }, {"conv2d", "i64"}));
  EXPECT_TRUE(raises_error([&] { conv2d(zeros({1, 4, 2, 6}), w); }, {"conv2d", "[1, 4, 2, 6]", "smaller"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, w, Tensor(), {.dilation = {3, 1}}); }, {"conv2d", "dilation=[3, 1]"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, w, Tensor(), {.stride = {0, 1}}); }, {"conv2d", "stride=[0, 1]"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, w, Tensor(), {.padding = {-1, 0}}); }, {"conv2d", "padding=[-1, 0]"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, w, Tensor(), {.groups = 0}); }, {"conv2d", "groups=0"}));
  EXPECT_TRUE(raises_error([&] { conv2d(x, zeros({3, 4, 0, 3})); }, {"conv2d", "empty kernel"}));
  EXPECT_TRUE(raises_error([&] { conv2d(Tensor(), w); }, {"conv2d", "undefined"}));
}

// --- nn::Conv2d ------------------------------------------------------------------------------------

TEST(Conv2dModule, ParametersFollowPyTorchDefaultInit) {
  manual_seed(5);
  nn::Conv2d a(4, 6, {3, 2}, {.groups = 2});
  manual_seed(5);
  nn::Conv2d b(4, 6, {3, 2}, {.groups = 2});
  EXPECT_TRUE(test::tensors_identical(a.weight(), b.weight()));
  EXPECT_TRUE(test::tensors_identical(a.bias(), b.bias()));
  EXPECT_EQ(a.weight().shape(), (Shape{6, 2, 3, 2}));
  EXPECT_EQ(a.bias().shape(), (Shape{6}));
  EXPECT_TRUE(a.weight().requires_grad() && a.bias().requires_grad());
  const double bound = 1.0 / std::sqrt(2.0 * 3 * 2);  // fan_in = C/groups * kh * kw for both
  for (const Tensor& p : {a.weight(), a.bias()}) {
    const auto values = test::host_values(p);
    double largest = 0.0;
    for (double value : values) {
      EXPECT_GE(value, -bound);
      EXPECT_LT(value, bound);
      largest = std::max(largest, std::abs(value));
    }
    EXPECT_GT(largest, 0.5 * bound);  // drawn from the whole range, not a narrower one
  }
  const auto names = a.named_parameters();
  ASSERT_EQ(names.size(), 2u);
  EXPECT_EQ(names[0].first, "weight");
  EXPECT_EQ(names[1].first, "bias");
  nn::Conv2d no_bias(3, 2, 3, {}, false, kF64);
  EXPECT_FALSE(no_bias.bias().defined());
  EXPECT_EQ(no_bias.parameters().size(), 1u);
  EXPECT_EQ(no_bias.weight().shape(), (Shape{2, 3, 3, 3}));
  EXPECT_EQ(no_bias.weight().dtype(), kF64);
}

TEST(Conv2dModule, ForwardIsConv2dWithItsParametersAndGradientsReachThem) {
  HostRng rng;
  manual_seed(test::test_seed());
  const Conv2dOptions options{.stride = {2, 2}, .padding = {1, 1}, .dilation = {1, 2}, .groups = 2};
  nn::Conv2d conv(4, 6, 3, options, true, kF64);
  const Tensor x = test::random_f64(rng, {2, 4, 7, 8}, -1, 1);
  const Tensor out = conv(x);
  Shape expected_shape;
  const auto expected =
      reference_conv2d(test::host_values(x), x.shape(), test::host_values(conv.weight()), conv.weight().shape(),
                       test::host_values(conv.bias()), options, expected_shape);
  EXPECT_TRUE(test::all_close(out, expected_shape, expected, test::tolerance_for(kF64)));
  EXPECT_TRUE(test::all_close(conv(x.select(0, 1)), {6, 4, 3},
                              std::vector<double>(expected.begin() + 72, expected.end()), test::tolerance_for(kF64)));

  // The module's gradients are those of the functional op, which the gradient checks cover.
  const Tensor r = test::random_f64(rng, out.shape(), -1, 1);
  conv.zero_grad();
  conv(x).backward(r);
  Tensor w = conv.weight().detach().clone(), b = conv.bias().detach().clone();
  w.requires_grad_();
  b.requires_grad_();
  conv2d(x, w, b, options).backward(r);
  EXPECT_TRUE(test::tensors_close(conv.weight().grad(), w.grad(), test::tolerance_for(kF64)));
  EXPECT_TRUE(test::tensors_close(conv.bias().grad(), b.grad(), test::tolerance_for(kF64)));
}

TEST(Conv2dModule, BadConfigurationsAndInputsRaiseNamingTheLayer) {
  EXPECT_TRUE(raises_error([] { nn::Conv2d(0, 4, 3); }, {"Conv2d(0, 4", "positive"}));
  EXPECT_TRUE(raises_error([] { nn::Conv2d(3, 4, 0); }, {"Conv2d(3, 4, kernel_size=[0, 0]", "positive"}));
  EXPECT_TRUE(raises_error([] { nn::Conv2d(3, 4, 3, {.groups = 2}); }, {"Conv2d", "groups=2", "divide"}));
  EXPECT_TRUE(raises_error([] { nn::Conv2d(4, 4, 3, {.stride = {0, 1}}); }, {"Conv2d", "stride=[0, 1]"}));
  EXPECT_TRUE(raises_error([] { nn::Conv2d(4, 4, 3, {}, true, kI32); }, {"Conv2d", "i32"}));
  nn::Conv2d conv(3, 4, 3);
  EXPECT_TRUE(raises_error([&] { conv(zeros({2, 5, 8, 8})); }, {"Conv2d(3, 4", "[2, 5, 8, 8]", "[N, 3, H, W]"}));
  EXPECT_TRUE(raises_error([&] { conv(zeros({8, 8})); }, {"Conv2d", "[8, 8]"}));
  EXPECT_TRUE(raises_error([&] { conv(zeros({2, 3, 8, 8}, kF64)); }, {"Conv2d", "f64", "f32"}));
  EXPECT_TRUE(raises_error([&] { conv(zeros({2, 3, 2, 8})); }, {"conv2d", "smaller"}));
  EXPECT_TRUE(raises_error([&] { conv(Tensor()); }, {"Conv2d", "undefined"}));
}

TEST(Conv2dModule, SmallCnnLearnsBarOrientationUnderSgd) {
  // 8x8 images holding one bright bar, horizontal (class 0) or vertical (class 1), plus noise.
  HostRng rng;
  manual_seed(test::test_seed());
  const int64_t n = 64, side = 8;
  const test::BarImages data = test::bar_images(rng, n, side);
  const Tensor images = from_vector(data.pixels, {n, 1, side, side});
  const Tensor targets = from_vector(data.labels, {n}, kI64);

  nn::Sequential cnn(
      {std::make_shared<nn::Conv2d>(1, 8, 3, Conv2dOptions{.padding = {1, 1}}), std::make_shared<nn::ReLU>(),
       std::make_shared<nn::Conv2d>(8, 8, 3, Conv2dOptions{.stride = {2, 2}, .groups = 2}),
       std::make_shared<nn::ReLU>(), std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(8 * 3 * 3, 2)});
  const double lr = 0.1;
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 300; ++step) {
    const Tensor loss = nn::cross_entropy(cnn(images), targets);
    last = loss.item();
    if (step == 0) first = last;
    cnn.zero_grad();
    loss.backward();
    autograd::NoGradGuard no_grad;
    for (Tensor p : cnn.parameters()) p.sub_(mul(p.grad(), lr));
  }
  SCOPED_TRACE(fmt::format("loss {} -> {}", first, last));
  EXPECT_LT(last, 0.3 * first);
  EXPECT_GT(nn::accuracy(cnn(images), targets), 0.95);
}

}  // namespace
}  // namespace flame
