// Module behaviour on the CPU: parameter and buffer names and order in nested modules, state_dict
// round trips, load_state_dict's errors (each naming the tensor), train/eval propagation,
// zero_grad, and to(dtype) keeping every parameter handle valid.
#include <fmt/format.h>

#include <memory>

#include "core/autograd.h"
#include "nn/activation.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/optim/adam.h"
#include "nn/optim/clip.h"
#include "support/test_support.h"

namespace flame {
namespace {

using test::raises_error;

/// A module with a parameter, a buffer and two children, to check the naming rules.
class Block : public nn::Module {
 public:
  Block() {
    scale_ = register_parameter("scale", ones({3}));
    count_ = register_buffer("count", zeros({1}, kI64));
    proj_ = register_module("proj", std::make_shared<nn::Linear>(3, 3));
    register_module("drop", std::make_shared<nn::Dropout>(0.5));
  }
  Tensor forward(const Tensor& input) override { return (*proj_)(mul(input, scale_)); }
  std::string type_name() const override { return "Block"; }
  void register_twice() { register_buffer("scale", zeros({1})); }

  Tensor scale_, count_;
  std::shared_ptr<nn::Linear> proj_;
};

/// Linear(3, 4) - ReLU - Sequential(Linear(4, 4), Tanh) - Block - ... as one nested model.
std::shared_ptr<nn::Sequential> nested_model() {
  auto inner = std::make_shared<nn::Sequential>(
      std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::Tanh>()});
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(3, 4), std::make_shared<nn::ReLU>(), inner, std::make_shared<Block>()});
}

std::vector<std::string> names_of(const nn::NamedTensors& list) {
  std::vector<std::string> names;
  for (const auto& entry : list) names.push_back(entry.first);
  return names;
}

TEST(Module, NamedParametersFollowRegistrationOrderWithDottedNames) {
  const auto model = nested_model();
  const std::vector<std::string> expected{"0.weight", "0.bias",        "2.0.weight", "2.0.bias",
                                          "3.scale",  "3.proj.weight", "3.proj.bias"};
  EXPECT_EQ(names_of(model->named_parameters()), expected);
  EXPECT_EQ(names_of(model->named_buffers()), std::vector<std::string>{"3.count"});
  EXPECT_TRUE(model->named_parameters(false).empty());  // a Sequential holds none itself
  const auto& block = dynamic_cast<Block&>(*model->named_children()[3].second);
  EXPECT_EQ(names_of(block.named_parameters(false)), std::vector<std::string>{"scale"});

  const std::vector<Tensor> params = model->parameters();
  const nn::NamedTensors named = model->named_parameters();
  ASSERT_EQ(params.size(), named.size());
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(params[i].is_same(named[i].second)) << named[i].first;
    EXPECT_TRUE(params[i].requires_grad() && params[i].is_leaf()) << named[i].first;
  }
  EXPECT_TRUE(named[5].second.is_same(block.proj_->weight()));
  EXPECT_EQ(names_of(model->state_dict()),
            (std::vector<std::string>{"0.weight", "0.bias", "2.0.weight", "2.0.bias", "3.scale", "3.proj.weight",
                                      "3.proj.bias", "3.count"}));
}

/// Holds `shared` as its parameter "w": two of them in one model tie their weights.
class Holder : public nn::Module {
 public:
  explicit Holder(Tensor shared) { w_ = register_parameter("w", std::move(shared)); }
  Tensor forward(const Tensor& input) override { return mul(input, w_); }
  std::string type_name() const override { return "Holder"; }
  Tensor w_;
};

class TiedPair : public nn::Module {
 public:
  TiedPair() {
    const Tensor w = from_vector<float>({3.f, 4.f}, {2});
    enc_ = register_module("enc", std::make_shared<Holder>(w));
    dec_ = register_module("dec", std::make_shared<Holder>(w));
  }
  Tensor forward(const Tensor& input) override { return (*dec_)((*enc_)(input)); }
  std::string type_name() const override { return "TiedPair"; }
  std::shared_ptr<Holder> enc_, dec_;
};

// A tied tensor is one parameter, under its first name (as PyTorch's remove_duplicate): the
// optimizer accepts model.parameters(), clipping counts it once; state_dict keeps both names.
TEST(Module, TiedParametersAreListedOnceUnderTheFirstName) {
  TiedPair model;
  EXPECT_EQ(names_of(model.named_parameters()), (std::vector<std::string>{"enc.w"}));
  ASSERT_EQ(model.parameters().size(), 1u);
  EXPECT_EQ(names_of(model.state_dict()), (std::vector<std::string>{"enc.w", "dec.w"}));

  const Tensor w = model.parameters()[0];
  w.set_grad(from_vector<float>({3.f, 4.f}, {2}));
  const Tensor norm = optim::clip_grad_norm_(model.parameters(), 1.0);
  EXPECT_NEAR(norm.item(), 5.0, 1e-6);  // counted twice it would be 7.07
  EXPECT_NEAR(w.grad().to_vector<float>()[0], 0.6, 1e-6);
  optim::AdamW optimizer(model.parameters());  // raised "the same tensor" before
  optimizer.step();

  // Loading by either name writes the one tensor.
  TiedPair other;
  other.load_state_dict(model.state_dict());
  EXPECT_EQ(other.enc_->w_.to_vector<float>(), w.to_vector<float>());
  EXPECT_TRUE(other.enc_->w_.impl_ptr() == other.dec_->w_.impl_ptr());
}

TEST(Module, RegisteringANameTwiceRaises) {
  Block block;
  EXPECT_TRUE(raises_error([&] { block.register_twice(); }, {"Block", "scale", "already registered"}));
}

TEST(Module, StateDictRoundTripRestoresOutputs) {
  manual_seed(1);
  const auto a = nested_model();
  manual_seed(2);
  const auto b = nested_model();
  const Tensor x = rand({5, 3});
  const Tensor ya = (*a)(x);
  EXPECT_FALSE(test::tensors_identical((*b)(x), ya));

  // A snapshot (copies), so later changes to a do not leak into it.
  nn::NamedTensors snapshot;
  for (const auto& [name, t] : a->state_dict()) snapshot.emplace_back(name, t.detach().clone());
  b->load_state_dict(snapshot);
  EXPECT_TRUE(test::tensors_identical((*b)(x), ya));
  {
    autograd::NoGradGuard no_grad;
    a->parameters()[0].fill_(0.5);
  }
  EXPECT_FALSE(test::tensors_identical((*a)(x), ya));
  a->load_state_dict(snapshot);
  EXPECT_TRUE(test::tensors_identical((*a)(x), ya));
  // Loading copies values: the model's tensors stay its own handles.
  EXPECT_FALSE(a->parameters()[0].storage() == snapshot[0].second.storage());
  EXPECT_TRUE(a->parameters()[0].requires_grad());
}

TEST(Module, LoadStateDictErrorsNameTheTensorAndChangeNothing) {
  manual_seed(3);
  const auto model = nested_model();
  const nn::NamedTensors good = [&] {
    nn::NamedTensors copy;
    for (const auto& [name, t] : model->state_dict()) copy.emplace_back(name, t.detach().clone());
    return copy;
  }();
  const std::vector<double> before = test::host_values(model->parameters()[0]);
  auto with = [&](const std::function<void(nn::NamedTensors&)>& edit) {
    nn::NamedTensors state = good;
    for (auto& [name, t] : state) t = zeros(t.shape(), t.dtype());  // would change everything if loaded
    edit(state);
    return state;
  };

  const auto missing = with([](nn::NamedTensors& s) { s.erase(s.begin() + 3); });
  EXPECT_TRUE(raises_error([&] { model->load_state_dict(missing); }, {"'2.0.bias'", "missing"}));
  const auto unexpected = with([](nn::NamedTensors& s) { s.emplace_back("9.weight", zeros({2})); });
  EXPECT_TRUE(raises_error([&] { model->load_state_dict(unexpected); }, {"'9.weight'", "unexpected"}));
  const auto shape = with([](nn::NamedTensors& s) { s[6].second = zeros({4}); });
  EXPECT_TRUE(raises_error([&] { model->load_state_dict(shape); }, {"'3.proj.bias'", "[4]", "[3]"}));
  const auto dtype = with([](nn::NamedTensors& s) { s[2].second = zeros({3, 4}, kF64); });
  EXPECT_TRUE(raises_error([&] { model->load_state_dict(dtype); }, {"'2.0.weight'", "f64", "f32"}));
  const auto buffer_dtype = with([](nn::NamedTensors& s) { s[7].second = zeros({1}, kI32); });
  EXPECT_TRUE(raises_error([&] { model->load_state_dict(buffer_dtype); }, {"'3.count'", "i32", "i64"}));
  EXPECT_EQ(test::host_values(model->parameters()[0]), before);  // every failed load left it alone

  // Not strict: missing and unexpected entries are skipped, the rest is loaded.
  model->load_state_dict(missing, false);
  EXPECT_EQ(test::host_values(model->parameters()[0]), std::vector<double>(12, 0.0));
  EXPECT_EQ(test::host_values(model->parameters()[3]), test::host_values(good[3].second));
  model->load_state_dict(unexpected, false);
  EXPECT_EQ(test::host_values(model->parameters()[3]), std::vector<double>(3, 0.0));
}

TEST(Module, TrainAndEvalReachEveryDescendant) {
  const auto model = nested_model();
  std::vector<nn::Module*> all;
  std::function<void(nn::Module&)> walk = [&](nn::Module& m) {
    all.push_back(&m);
    for (const auto& [name, child] : m.named_children()) walk(*child);
  };
  walk(*model);
  ASSERT_EQ(all.size(), 9u);
  for (nn::Module* m : all) EXPECT_TRUE(m->is_training()) << m->type_name();
  model->eval();
  for (nn::Module* m : all) EXPECT_FALSE(m->is_training()) << m->type_name();
  // Dropout inside the Block is now the identity: two forwards agree.
  const Tensor x = rand({4, 3});
  EXPECT_TRUE(test::tensors_identical((*model)(x), (*model)(x)));
  model->train();
  for (nn::Module* m : all) EXPECT_TRUE(m->is_training()) << m->type_name();
  model->named_children()[2].second->eval();  // a subtree alone
  EXPECT_TRUE(model->is_training());
  EXPECT_FALSE(model->named_children()[2].second->named_children()[0].second->is_training());
}

TEST(Module, ZeroGradClearsEveryGradient) {
  const auto model = nested_model();
  model->eval();
  sum((*model)(rand({4, 3}))).backward();
  for (const auto& [name, p] : model->named_parameters()) EXPECT_TRUE(p.grad().defined()) << name;
  model->zero_grad();
  for (const auto& [name, p] : model->named_parameters()) EXPECT_FALSE(p.grad().defined()) << name;
}

TEST(Module, ToF64KeepsParameterHandlesValid) {
  manual_seed(5);
  auto linear = std::make_shared<nn::Linear>(3, 2);
  nn::Sequential model({linear, std::make_shared<nn::Tanh>()});
  const Tensor weight = linear->weight();  // handles taken before the conversion
  const std::vector<Tensor> params = model.parameters();
  const std::vector<double> values = test::host_values(weight);
  sum(model(rand({2, 3}))).backward();
  ASSERT_TRUE(weight.grad().defined());

  model.to(kF64);
  EXPECT_EQ(weight.dtype(), kF64);
  EXPECT_EQ(linear->bias().dtype(), kF64);
  for (const Tensor& p : params) EXPECT_EQ(p.dtype(), kF64);
  EXPECT_EQ(test::host_values(weight), values);  // f32 -> f64 is exact
  EXPECT_FALSE(weight.grad().defined());         // the old f32 gradient no longer fits
  EXPECT_TRUE(weight.requires_grad() && weight.is_leaf());
  EXPECT_TRUE(model.parameters()[0].is_same(weight));

  const Tensor y = model(rand({2, 3}, kF64));
  EXPECT_EQ(y.dtype(), kF64);
  sum(y).backward();
  for (const Tensor& p : params) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().dtype(), kF64);
  }
  EXPECT_TRUE(raises_error([&] { model(rand({2, 3})); }, {"Linear", "f32", "f64"}));
}

TEST(Module, ToLeavesIntegerBuffersAlone) {
  Block block;
  block.to(kF64);
  EXPECT_EQ(block.scale_.dtype(), kF64);
  EXPECT_EQ(block.count_.dtype(), kI64);
  EXPECT_EQ(block.named_buffers()[0].second.dtype(), kI64);
}

}  // namespace
}  // namespace flame
