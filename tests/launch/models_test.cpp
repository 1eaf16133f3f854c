// flame-train's model registry and progress helpers: the built-in "mlp" and "cnn" (logit shapes,
// parameter names and counts from the layers models.h documents, logits against a float64
// reference computed from their own parameters, reproducible initialisation), unknown names,
// registering new models, and Progress::format_duration.
#include "launch/train/models.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "launch/train/progress.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "support/test_support.h"

namespace flame::train {
namespace {

using test::raises_error;

constexpr int64_t kSide = 28;
constexpr int64_t kClasses = 10;

/// Host copies of a model's parameters by dotted name.
std::map<std::string, std::vector<double>> host_parameters(const nn::Module& model) {
  std::map<std::string, std::vector<double>> out;
  for (const auto& [name, tensor] : model.named_parameters()) out[name] = test::host_values(tensor);
  return out;
}

/// Name -> shape of every parameter, in registration order.
std::vector<std::pair<std::string, Shape>> parameter_shapes(const nn::Module& model) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const auto& [name, tensor] : model.named_parameters()) out.emplace_back(name, tensor.shape());
  return out;
}

int64_t parameter_count(const nn::Module& model) {
  int64_t count = 0;
  for (const Tensor& p : model.parameters()) count += p.numel();
  return count;
}

// --- float64 references of the layers models.h lists ---------------------------------------------

/// y[n, o] = b[o] + sum_i x[n, i] w[o, i]; x [N, in], w [out, in], b [out].
std::vector<double> linear_ref(const std::vector<double>& x, int64_t n, int64_t in, const std::vector<double>& w,
                               const std::vector<double>& b, int64_t out) {
  std::vector<double> y(static_cast<size_t>(n * out));
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = b[o];
      for (int64_t i = 0; i < in; ++i) acc += x[s * in + i] * w[o * in + i];
      y[s * out + o] = acc;
    }
  }
  return y;
}

void relu_ref(std::vector<double>& x) {
  for (double& v : x) v = std::max(v, 0.0);
}

/// 3x3 convolution with padding 1, stride 1: x [N, C, H, W], w [O, C, 3, 3], b [O] -> [N, O, H, W].
std::vector<double> conv3x3_same_ref(const std::vector<double>& x, int64_t n, int64_t c, int64_t side,
                                     const std::vector<double>& w, const std::vector<double>& b, int64_t o_channels) {
  std::vector<double> y(static_cast<size_t>(n * o_channels * side * side));
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t o = 0; o < o_channels; ++o) {
      for (int64_t r = 0; r < side; ++r) {
        for (int64_t q = 0; q < side; ++q) {
          double acc = b[o];
          for (int64_t ch = 0; ch < c; ++ch) {
            for (int64_t i = 0; i < 3; ++i) {
              for (int64_t j = 0; j < 3; ++j) {
                const int64_t rr = r + i - 1, qq = q + j - 1;
                if (rr < 0 || rr >= side || qq < 0 || qq >= side) continue;
                acc += x[((s * c + ch) * side + rr) * side + qq] * w[((o * c + ch) * 3 + i) * 3 + j];
              }
            }
          }
          y[((s * o_channels + o) * side + r) * side + q] = acc;
        }
      }
    }
  }
  return y;
}

/// 2x2 max pooling, stride 2: [N, C, side, side] -> [N, C, side / 2, side / 2].
std::vector<double> maxpool2_ref(const std::vector<double>& x, int64_t n, int64_t c, int64_t side) {
  const int64_t half = side / 2;
  std::vector<double> y(static_cast<size_t>(n * c * half * half));
  for (int64_t plane = 0; plane < n * c; ++plane) {
    for (int64_t r = 0; r < half; ++r) {
      for (int64_t q = 0; q < half; ++q) {
        const double* p = x.data() + (plane * side + 2 * r) * side + 2 * q;
        y[(plane * half + r) * half + q] = std::max({p[0], p[1], p[side], p[side + 1]});
      }
    }
  }
  return y;
}

/// Logits of `model` for `input` [N, 1, 28, 28] (no autograd), on the host.
std::vector<double> logits_of(nn::Module& model, const Tensor& input) {
  autograd::NoGradGuard no_grad;
  const Tensor logits = model.forward(input);
  EXPECT_EQ(logits.shape(), (Shape{input.size(0), kClasses}));
  EXPECT_EQ(logits.dtype(), kF32);
  return test::host_values(logits);
}

// --- the built-in models -----------------------------------------------------------------------

TEST(Models, BuiltInNamesAreSorted) {
  const std::vector<std::string> names = model_names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_NE(std::find(names.begin(), names.end(), "mlp"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "cnn"), names.end());
}

TEST(Models, MlpLayersAndParameterCount) {
  manual_seed(1);
  const auto model = make_model("mlp");
  const std::vector<std::pair<std::string, Shape>> expected = {{"1.weight", {256, 784}}, {"1.bias", {256}},
                                                               {"3.weight", {256, 256}}, {"3.bias", {256}},
                                                               {"5.weight", {10, 256}},  {"5.bias", {10}}};
  EXPECT_EQ(parameter_shapes(*model), expected);
  EXPECT_EQ(parameter_count(*model), 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10);
}

TEST(Models, CnnLayersAndParameterCount) {
  manual_seed(1);
  const auto model = make_model("cnn");
  const std::vector<std::pair<std::string, Shape>> expected = {
      {"0.weight", {32, 1, 3, 3}}, {"0.bias", {32}},  {"3.weight", {64, 32, 3, 3}}, {"3.bias", {64}},
      {"7.weight", {128, 3136}},   {"7.bias", {128}}, {"9.weight", {10, 128}},      {"9.bias", {10}}};
  EXPECT_EQ(parameter_shapes(*model), expected);
  // Conv2d(1, 32, 3) + Conv2d(32, 64, 3) + Linear(64 * 7 * 7, 128) + Linear(128, 10).
  EXPECT_EQ(parameter_count(*model), (32 * 1 * 9 + 32) + (64 * 32 * 9 + 64) + (3136 * 128 + 128) + (128 * 10 + 10));
}

TEST(Models, MlpLogitsMatchFloat64Reference) {
  manual_seed(test::test_seed());
  const auto model = make_model("mlp");
  constexpr int64_t kBatch = 3;
  test::HostRng rng;
  const std::vector<double> x = rng.uniform(kBatch * kSide * kSide, -2.0, 2.0);
  const Tensor input = test::make_tensor(x, {kBatch, 1, kSide, kSide}, kF32);
  const std::vector<double> x32 = test::round_to_dtype(x, kF32);

  auto p = host_parameters(*model);
  std::vector<double> h = linear_ref(x32, kBatch, 784, p["1.weight"], p["1.bias"], 256);
  relu_ref(h);
  h = linear_ref(h, kBatch, 256, p["3.weight"], p["3.bias"], 256);
  relu_ref(h);
  const std::vector<double> expected = linear_ref(h, kBatch, 256, p["5.weight"], p["5.bias"], kClasses);

  EXPECT_TRUE(test::values_close(logits_of(*model, input), expected, {1e-4, 1e-5}, {kBatch, kClasses}));
}

TEST(Models, CnnLogitsMatchFloat64Reference) {
  manual_seed(test::test_seed());
  const auto model = make_model("cnn");
  constexpr int64_t kBatch = 2;
  test::HostRng rng;
  const std::vector<double> x = rng.uniform(kBatch * kSide * kSide, -2.0, 2.0);
  const Tensor input = test::make_tensor(x, {kBatch, 1, kSide, kSide}, kF32);
  const std::vector<double> x32 = test::round_to_dtype(x, kF32);

  auto p = host_parameters(*model);
  std::vector<double> h = conv3x3_same_ref(x32, kBatch, 1, kSide, p["0.weight"], p["0.bias"], 32);
  relu_ref(h);
  h = maxpool2_ref(h, kBatch, 32, kSide);
  h = conv3x3_same_ref(h, kBatch, 32, kSide / 2, p["3.weight"], p["3.bias"], 64);
  relu_ref(h);
  h = maxpool2_ref(h, kBatch, 64, kSide / 2);  // [N, 64, 7, 7], flattened in that order
  h = linear_ref(h, kBatch, 64 * 7 * 7, p["7.weight"], p["7.bias"], 128);
  relu_ref(h);
  const std::vector<double> expected = linear_ref(h, kBatch, 128, p["9.weight"], p["9.bias"], kClasses);

  EXPECT_TRUE(test::values_close(logits_of(*model, input), expected, {1e-4, 1e-5}, {kBatch, kClasses}));
}

TEST(Models, SameSeedSameParametersOtherSeedOtherParameters) {
  for (const std::string name : {"mlp", "cnn"}) {
    SCOPED_TRACE(name);
    manual_seed(42);
    const auto a = make_model(name);
    manual_seed(42);
    const auto b = make_model(name);
    manual_seed(43);
    const auto c = make_model(name);
    const nn::NamedTensors pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    ASSERT_EQ(pa.size(), pc.size());
    for (size_t i = 0; i < pa.size(); ++i) {
      EXPECT_TRUE(test::tensors_identical(pa[i].second, pb[i].second)) << pa[i].first;
      EXPECT_FALSE(test::tensors_identical(pa[i].second, pc[i].second)) << pa[i].first;
    }
  }
}

TEST(Models, EachCallBuildsAFreshModel) {
  manual_seed(5);
  const auto a = make_model("mlp");
  const auto b = make_model("mlp");
  EXPECT_NE(a.get(), b.get());
  // The second model continues the generator's stream, so its weights differ from the first's.
  EXPECT_FALSE(test::tensors_identical(a->parameters()[0], b->parameters()[0]));
}

TEST(Models, UnknownNameListsRegisteredModels) {
  // Every registered name, sorted: "cnn, mlp" in a process where no other model was registered.
  const std::string listed = fmt::format("registered models: {}", fmt::join(model_names(), ", "));
  EXPECT_TRUE(raises_error([] { make_model("resnet50"); }, {"model.name", "'resnet50'", "cnn", "mlp", listed}));
  EXPECT_TRUE(raises_error([] { make_model(""); }, {listed}));
}

// A model registered the way later models are: a linear classifier of the flattened image.
std::shared_ptr<nn::Module> make_linear_probe() {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(kSide * kSide, kClasses)});
}

TEST(Models, RegisterNewModel) {
  register_model("linear_probe", make_linear_probe);
  const std::vector<std::string> names = model_names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_NE(std::find(names.begin(), names.end(), "linear_probe"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "mlp"), names.end());

  manual_seed(3);
  const auto model = make_model("linear_probe");
  EXPECT_EQ(parameter_count(*model), 784 * 10 + 10);
  const Tensor input = zeros({4, 1, kSide, kSide});
  // A zero image gives the bias as logits.
  const std::vector<double> bias = test::host_values(model->named_parameters()[1].second);
  const std::vector<double> logits = logits_of(*model, input);
  for (int64_t row = 0; row < 4; ++row) {
    EXPECT_EQ(std::vector<double>(logits.begin() + row * kClasses, logits.begin() + (row + 1) * kClasses), bias);
  }
  // The registry's error now lists the new name too.
  EXPECT_TRUE(raises_error([] { make_model("nope"); }, {"cnn, linear_probe, mlp"}));
}

TEST(Models, RegisteringATakenNameRaises) {
  EXPECT_TRUE(raises_error([] { register_model("mlp", make_linear_probe); }, {"'mlp'", "already registered"}));
  EXPECT_TRUE(raises_error([] { register_model("cnn", make_linear_probe); }, {"'cnn'", "already registered"}));
  register_model("probe_once", make_linear_probe);
  EXPECT_TRUE(
      raises_error([] { register_model("probe_once", make_linear_probe); }, {"'probe_once'", "already registered"}));
  // The built-in builder is untouched by the refused registration.
  manual_seed(1);
  EXPECT_EQ(parameter_count(*make_model("mlp")), 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10);
}

TEST(Models, RegisterNeedsNameAndBuilder) {
  EXPECT_TRUE(raises_error([] { register_model("", make_linear_probe); }, {"non-empty name"}));
  EXPECT_TRUE(raises_error([] { register_model("no_builder", ModelBuilder{}); }, {"builder"}));
  const std::vector<std::string> names = model_names();
  EXPECT_EQ(std::find(names.begin(), names.end(), "no_builder"), names.end());
}

// --- Progress::format_duration --------------------------------------------------------------------

TEST(Progress, FormatDuration) {
  const std::vector<std::pair<double, std::string>> cases = {
      {0.0, "0:00"},       {0.4, "0:00"},         {59.4, "0:59"},       {59.6, "1:00"},
      {61.0, "1:01"},      {599.0, "9:59"},       {3599.4, "59:59"},    {3599.6, "1:00:00"},
      {3725.0, "1:02:05"}, {36000.0, "10:00:00"}, {90061.0, "25:01:01"}};
  for (const auto& [seconds, expected] : cases) EXPECT_EQ(Progress::format_duration(seconds), expected) << seconds;
}

TEST(Progress, FormatDurationOfNoNumberIsQuestionMark) {
  for (const double seconds : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                               -std::numeric_limits<double>::infinity(), -1.0}) {
    EXPECT_EQ(Progress::format_duration(seconds), "?") << seconds;
  }
}

}  // namespace
}  // namespace flame::train
