// The autograd engine's semantics on the CPU (Note [autograd engine] in core/autograd.h): gradient
// accumulation into leaves, retain_graph, NoGradGuard, detach, requires_grad_ rules, explicit output
// gradients, in-place checks (tracked tensors and saved tensors), shared leaves and diamonds, and the
// gradient-ready hooks (once per backward, after the gradient is final, in reverse order of use).
// Expected gradients are closed forms computed on the host in double.
#include <fmt/format.h>
#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include "core/autograd.h"
#include "support/test_support.h"

namespace flame {
namespace {

using autograd::NoGradGuard;
using test::all_close;
using test::HostRng;
using test::raises_error;

const test::Tolerance kTol = test::tolerance_for(kF64);

/// A float64 leaf that requires grad, uniform on [low, high).
Tensor leaf(HostRng& rng, const Shape& shape, double low = -2.0, double high = 2.0) {
  Tensor t = test::make_tensor(rng.uniform(test::numel_of(shape), low, high), shape, kF64);
  t.requires_grad_();
  return t;
}

std::vector<double> map_values(const std::vector<double>& x, const std::function<double(double)>& f) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = f(x[i]);
  return out;
}

std::vector<double> scaled(const std::vector<double>& x, double factor) {
  return map_values(x, [factor](double v) { return v * factor; });
}

// --- accumulation -----------------------------------------------------------------------------------

TEST(AutogradEngine, BackwardAccumulatesIntoLeafGrads) {
  HostRng rng;
  Tensor x = leaf(rng, {2, 3});
  Tensor w = leaf(rng, {2, 3});
  const auto xv = test::host_values(x), wv = test::host_values(w);
  EXPECT_TRUE(x.is_leaf());
  EXPECT_FALSE(x.grad().defined());

  Tensor y = sum(mul(x, w));
  EXPECT_TRUE(y.requires_grad());
  EXPECT_FALSE(y.is_leaf());
  EXPECT_NE(y.grad_fn(), nullptr);
  y.backward();
  EXPECT_TRUE(all_close(x.grad(), {2, 3}, wv, kTol));
  EXPECT_TRUE(all_close(w.grad(), {2, 3}, xv, kTol));
  EXPECT_FALSE(y.grad().defined()) << "a non-leaf output keeps no .grad";

  // A second graph over the same leaves adds to .grad.
  sum(mul(x, w)).backward();
  EXPECT_TRUE(all_close(x.grad(), {2, 3}, scaled(wv, 2.0), kTol));
  EXPECT_TRUE(all_close(w.grad(), {2, 3}, scaled(xv, 2.0), kTol));

  // set_grad(undefined) clears (zero_grad with set_to_none); the next backward starts afresh.
  x.set_grad(Tensor());
  EXPECT_FALSE(x.grad().defined());
  sum(mul(x, w)).backward();
  EXPECT_TRUE(all_close(x.grad(), {2, 3}, wv, kTol));
  EXPECT_TRUE(all_close(w.grad(), {2, 3}, scaled(xv, 3.0), kTol));

  // set_grad with a tensor replaces; a mismatched one raises.
  x.set_grad(zeros({2, 3}, kF64));
  EXPECT_TRUE(all_close(x.grad(), {2, 3}, std::vector<double>(6, 0.0), kTol));
  EXPECT_TRUE(raises_error([&] { x.set_grad(zeros({3, 2}, kF64)); }, {"set_grad"}));
  EXPECT_TRUE(raises_error([&] { x.set_grad(zeros({2, 3}, kF32)); }, {"set_grad"}));
}

TEST(AutogradEngine, LeafGradIsAFreshBufferNotTheIncomingGradient) {
  HostRng rng;
  Tensor x = leaf(rng, {4});
  const auto gv = rng.uniform(4, -1, 1);
  const Tensor g = test::make_tensor(gv, {4}, kF64);
  // The root is the leaf itself: its gradient is the caller's tensor, which must be copied.
  x.backward(g);
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(all_close(x.grad(), {4}, gv, kTol));
  EXPECT_NE(x.grad().storage(), g.storage());
  // A pass-through op (add) hands the same gradient to both leaves: each gets its own buffer.
  Tensor a = leaf(rng, {4});
  Tensor b = leaf(rng, {4});
  add(a, b).backward(g);
  EXPECT_TRUE(all_close(a.grad(), {4}, gv, kTol));
  EXPECT_TRUE(all_close(b.grad(), {4}, gv, kTol));
  EXPECT_NE(a.grad().storage(), b.grad().storage());
  EXPECT_NE(a.grad().storage(), g.storage());
  // Accumulating later into a's gradient leaves g and b's gradient alone.
  add(a, b).backward(g);
  EXPECT_TRUE(all_close(g, {4}, gv, kTol));
  EXPECT_TRUE(all_close(a.grad(), {4}, scaled(gv, 2.0), kTol));
}

// A gradient that nothing else holds becomes .grad as it is, uncopied (as PyTorch's AccumulateGrad
// steals it); one that something else can see is copied: a handle kept elsewhere, or a view of a
// larger buffer.
TEST(AutogradEngine, ASoleOwnedGradientBecomesTheLeafsGradUncopied) {
  HostRng rng;
  const auto gv = rng.uniform(4, -1, 1);
  Tensor kept;  // when set, the backward below keeps a handle to the gradient it returns
  bool keep = false, as_view = false;
  const void* produced = nullptr;
  const auto backward_of = [&](Tensor& x) {
    Tensor out;
    {
      NoGradGuard no_grad;
      out = mul(x, 3.0);
    }
    autograd::record(out, "ProbeBackward", {x}, [&](const Tensor& g) {
      Tensor r = as_view ? zeros({8}, kF64).narrow(0, 2, 4).copy_(mul(g, 3.0)) : mul(g, 3.0);
      produced = r.data_ptr();
      if (keep) kept = r;
      return std::vector<Tensor>{r};
    });
    out.backward(test::make_tensor(gv, {4}, kF64));
  };
  Tensor a = leaf(rng, {4});
  backward_of(a);
  EXPECT_EQ(a.grad().data_ptr(), produced) << "a sole-owned gradient was copied";
  EXPECT_TRUE(all_close(a.grad(), {4}, scaled(gv, 3.0), kTol));

  keep = true;
  Tensor b = leaf(rng, {4});
  backward_of(b);
  EXPECT_NE(b.grad().data_ptr(), produced) << "a gradient the backward still holds became .grad";
  Tensor(b.grad()).mul_(2.0);
  EXPECT_TRUE(all_close(kept, {4}, scaled(gv, 3.0), kTol)) << "a write to .grad reached the backward's tensor";

  keep = false;
  as_view = true;
  Tensor c = leaf(rng, {4});
  backward_of(c);
  EXPECT_NE(c.grad().data_ptr(), produced) << "a view of a larger buffer became .grad";
  EXPECT_TRUE(c.grad().is_contiguous());
  EXPECT_EQ(c.grad().storage()->nbytes(), c.grad().nbytes());
  EXPECT_TRUE(all_close(c.grad(), {4}, scaled(gv, 3.0), kTol));
}

// --- retain_graph -----------------------------------------------------------------------------------

TEST(AutogradEngine, SecondBackwardNeedsRetainGraph) {
  HostRng rng;
  Tensor x = leaf(rng, {5});
  const auto ex = map_values(test::host_values(x), [](double v) { return std::exp(v); });
  {
    Tensor y = sum(exp(x));
    y.backward();
    EXPECT_TRUE(all_close(x.grad(), {5}, ex, kTol));
    EXPECT_TRUE(raises_error([&] { y.backward(); }, {"retain_graph"}));
  }
  x.set_grad(Tensor());
  {
    Tensor y = sum(exp(x));
    y.backward(Tensor(), /*retain_graph=*/true);
    EXPECT_TRUE(all_close(x.grad(), {5}, ex, kTol));
    y.backward(Tensor(), /*retain_graph=*/true);
    EXPECT_TRUE(all_close(x.grad(), {5}, scaled(ex, 2.0), kTol));
    y.backward();  // the last one may free the graph
    EXPECT_TRUE(all_close(x.grad(), {5}, scaled(ex, 3.0), kTol));
    EXPECT_TRUE(raises_error([&] { y.backward(); }, {"retain_graph"}));
  }
}

// --- grad mode ----------------------------------------------------------------------------------------

TEST(AutogradEngine, NoGradGuardRecordsNothingAndRestoresTheMode) {
  HostRng rng;
  Tensor x = leaf(rng, {3});
  EXPECT_TRUE(autograd::grad_enabled());
  {
    NoGradGuard guard;
    EXPECT_FALSE(autograd::grad_enabled());
    const Tensor y = mul(exp(x), x);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
    EXPECT_TRUE(y.is_leaf());
    EXPECT_TRUE(raises_error([&] { sum(y).backward(); }, {"backward"}));
    {
      NoGradGuard nested;
      EXPECT_FALSE(autograd::grad_enabled());
    }
    EXPECT_FALSE(autograd::grad_enabled()) << "a nested guard restores the outer (off) mode";
  }
  EXPECT_TRUE(autograd::grad_enabled());
  EXPECT_TRUE(exp(x).requires_grad());

  autograd::set_grad_enabled(false);
  EXPECT_FALSE(exp(x).requires_grad());
  { NoGradGuard guard; }
  EXPECT_FALSE(autograd::grad_enabled()) << "the guard restores the mode it found";
  autograd::set_grad_enabled(true);

  // Grad mode is per thread.
  NoGradGuard guard;
  bool other_thread_enabled = false;
  std::thread([&] { other_thread_enabled = autograd::grad_enabled(); }).join();
  EXPECT_TRUE(other_thread_enabled);
  EXPECT_FALSE(autograd::grad_enabled());
}

TEST(AutogradEngine, DetachCutsTheGraph) {
  HostRng rng;
  Tensor x = leaf(rng, {4});
  const auto xv = test::host_values(x);
  const Tensor d = x.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_EQ(d.grad_fn(), nullptr);
  EXPECT_TRUE(d.is_leaf());
  EXPECT_EQ(d.data_ptr(), x.data_ptr()) << "detach shares the data";
  EXPECT_TRUE(x.requires_grad()) << "detach leaves the original alone";

  // sum(detach(x) * x): only the tracked factor contributes, d/dx = x (not 2x).
  sum(mul(d, x)).backward();
  EXPECT_TRUE(all_close(x.grad(), {4}, xv, kTol));

  // Detaching a non-leaf: sum(detach(exp(x)) * x) gives exp(x), not exp(x) * (1 + x).
  x.set_grad(Tensor());
  const Tensor e = exp(x);
  const Tensor ed = e.detach();
  EXPECT_FALSE(ed.requires_grad());
  EXPECT_TRUE(ed.is_leaf());
  sum(mul(ed, x)).backward();
  EXPECT_TRUE(all_close(x.grad(), {4}, map_values(xv, [](double v) { return std::exp(v); }), kTol));

  // A detached tensor can become a leaf of its own; gradients stay separate.
  x.set_grad(Tensor());
  Tensor other = x.detach();
  other.requires_grad_();
  sum(mul(other, other)).backward();
  EXPECT_TRUE(all_close(other.grad(), {4}, scaled(xv, 2.0), kTol));
  EXPECT_FALSE(x.grad().defined());
}

TEST(AutogradEngine, RequiresGradRules) {
  HostRng rng;
  Tensor x = leaf(rng, {3});
  Tensor y = exp(x);
  EXPECT_TRUE(raises_error([&] { y.requires_grad_(); }, {"requires_grad_"}));
  EXPECT_TRUE(raises_error([&] { y.requires_grad_(false); }, {"requires_grad_"}));
  for (DType dtype : {kI32, kI64, kBool}) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor i = zeros({3}, dtype);
    EXPECT_TRUE(raises_error([&] { i.requires_grad_(); }, {"requires_grad_"}));
    EXPECT_FALSE(i.requires_grad());
    EXPECT_NO_THROW(i.requires_grad_(false));
  }
  for (DType dtype : test::floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor f = zeros({3}, dtype);
    EXPECT_FALSE(f.requires_grad());
    EXPECT_EQ(&f.requires_grad_(), &f);
    EXPECT_TRUE(f.requires_grad());
    f.requires_grad_(false);
    EXPECT_FALSE(f.requires_grad());
  }
  // Ops on tensors that do not require grad record nothing, even in grad mode.
  const Tensor plain = test::make_tensor(rng.uniform(3, -1, 1), {3}, kF64);
  EXPECT_FALSE(exp(plain).requires_grad());
  EXPECT_EQ(exp(plain).grad_fn(), nullptr);
  // One tracked operand is enough.
  EXPECT_TRUE(mul(plain, x).requires_grad());
  EXPECT_TRUE(mul(x, plain).requires_grad());
}

// --- backward's gradient argument --------------------------------------------------------------------

TEST(AutogradEngine, NonScalarBackwardNeedsAnExplicitGradient) {
  HostRng rng;
  Tensor x = leaf(rng, {2, 3});
  const auto xv = test::host_values(x);
  Tensor y = mul(x, x);
  EXPECT_TRUE(raises_error([&] { y.backward(); }, {"backward"}));
  EXPECT_FALSE(x.grad().defined());
  EXPECT_TRUE(raises_error([&] { y.backward(ones({3, 2}, kF64)); }, {"backward"}));
  EXPECT_TRUE(raises_error([&] { y.backward(ones({2, 3}, kF32)); }, {"backward"}));

  const auto gv = rng.uniform(6, -1, 1);
  y.backward(test::make_tensor(gv, {2, 3}, kF64));
  std::vector<double> expected(6);
  for (size_t i = 0; i < 6; ++i) expected[i] = 2.0 * xv[i] * gv[i];
  EXPECT_TRUE(all_close(x.grad(), {2, 3}, expected, kTol));

  // A non-contiguous explicit gradient (a transposed view) is read by its logical values.
  x.set_grad(Tensor());
  mul(x, x).backward(test::make_tensor(gv, {2, 3}, kF64, kCPU, test::Layout::Transposed));
  EXPECT_TRUE(all_close(x.grad(), {2, 3}, expected, kTol));

  // A one-element output that is not 0-d takes the implied gradient 1.
  x.set_grad(Tensor());
  sum(x, {0, 1}, /*keepdim=*/true).backward();
  EXPECT_TRUE(all_close(x.grad(), {2, 3}, std::vector<double>(6, 1.0), kTol));

  // Backward from a tensor outside any graph raises.
  const Tensor plain = ones({1}, kF64);
  EXPECT_TRUE(raises_error([&] { plain.backward(); }, {"backward"}));
}

// --- in-place ops -----------------------------------------------------------------------------------------

TEST(AutogradEngine, InPlaceOpsRefuseTrackedTensorsUnlessGradIsOff) {
  HostRng rng;
  Tensor x = leaf(rng, {2, 3});
  const auto xv = test::host_values(x);
  Tensor other = test::make_tensor(rng.uniform(6, -1, 1), {2, 3}, kF64);
  const std::vector<std::pair<std::string, std::function<void(Tensor&)>>> in_place{
      {"add_", [&](Tensor& t) { t.add_(other); }},   {"sub_", [&](Tensor& t) { t.sub_(1.0); }},
      {"mul_", [&](Tensor& t) { t.mul_(2.0); }},     {"div_", [&](Tensor& t) { t.div_(other); }},
      {"relu_", [](Tensor& t) { t.relu_(); }},       {"clamp_", [](Tensor& t) { t.clamp_(-1.0, 1.0); }},
      {"fill_", [](Tensor& t) { t.fill_(3.0); }},    {"zero_", [](Tensor& t) { t.zero_(); }},
      {"copy_", [&](Tensor& t) { t.copy_(other); }},
  };
  Tensor y = exp(x);  // a non-leaf that requires grad
  for (const auto& [name, op] : in_place) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(raises_error([&] { op(x); }, {"in-place"})) << "on a leaf";
    EXPECT_TRUE(raises_error([&] { op(y); }, {"in-place"})) << "on a non-leaf";
  }
  EXPECT_TRUE(all_close(x, {2, 3}, xv, kTol)) << "a refused in-place op must not write";
  // A tracked source into an untracked target is refused too (the result would need a graph).
  Tensor target = zeros({2, 3}, kF64);
  EXPECT_TRUE(raises_error([&] { target.add_(x); }, {"in-place"}));
  EXPECT_TRUE(raises_error([&] { target.copy_(x); }, {"in-place"}));
  // An untracked target with untracked sources is fine in grad mode.
  EXPECT_NO_THROW(target.add_(other));

  // Under NoGradGuard the update happens (an optimizer step) and x stays a leaf requiring grad.
  {
    NoGradGuard guard;
    x.add_(1.0);
    x.mul_(other);
  }
  std::vector<double> expected(6);
  const auto ov = test::host_values(other);
  for (size_t i = 0; i < 6; ++i) expected[i] = (xv[i] + 1.0) * ov[i];
  EXPECT_TRUE(all_close(x, {2, 3}, expected, kTol));
  EXPECT_TRUE(x.requires_grad());
  EXPECT_TRUE(x.is_leaf());
  sum(mul(x, x)).backward();
  EXPECT_TRUE(all_close(x.grad(), {2, 3}, scaled(expected, 2.0), kTol));
}

TEST(AutogradEngine, SavedTensorModifiedInPlaceIsCaught) {
  HostRng rng;
  {
    SCOPED_TRACE("exp's saved output changed under NoGradGuard");
    Tensor x = leaf(rng, {4});
    Tensor y = exp(x);
    {
      NoGradGuard guard;
      y.add_(1.0);
    }
    EXPECT_TRUE(raises_error([&] { sum(y).backward(); }, {"modified in place"}));
    EXPECT_TRUE(autograd::grad_enabled()) << "a failed backward restores grad mode";
  }
  {
    SCOPED_TRACE("exp's saved output changed through an untracked alias (detach) in grad mode");
    Tensor x = leaf(rng, {4});
    Tensor y = exp(x);
    Tensor alias = y.detach();
    alias.mul_(2.0);
    EXPECT_TRUE(raises_error([&] { sum(y).backward(); }, {"modified in place"}));
  }
  {
    SCOPED_TRACE("mul's saved operand changed under NoGradGuard");
    Tensor x = leaf(rng, {4});
    Tensor w = leaf(rng, {4});
    Tensor y = sum(mul(x, w));
    {
      NoGradGuard guard;
      w.add_(1.0);
    }
    EXPECT_TRUE(raises_error([&] { y.backward(); }, {"modified in place"}));
  }
  {
    SCOPED_TRACE("changing a tensor the graph does not save is fine");
    Tensor x = leaf(rng, {4});
    const auto xv = test::host_values(x);
    Tensor y = add(x, 1.0);  // add saves nothing
    Tensor z = sum(y);
    {
      NoGradGuard guard;
      y.mul_(5.0);
    }
    EXPECT_NO_THROW(z.backward());
    EXPECT_TRUE(all_close(x.grad(), {4}, std::vector<double>(4, 1.0), kTol));
  }
}

// --- graph shapes -------------------------------------------------------------------------------------

TEST(AutogradEngine, LeafUsedTwiceGetsTheSummedGradient) {
  HostRng rng;
  Tensor x = leaf(rng, {5});
  const auto xv = test::host_values(x);
  sum(mul(x, x)).backward();
  EXPECT_TRUE(all_close(x.grad(), {5}, scaled(xv, 2.0), kTol));
  x.set_grad(Tensor());
  sum(add(x, x)).backward();
  EXPECT_TRUE(all_close(x.grad(), {5}, std::vector<double>(5, 2.0), kTol));
  // Three uses at different depths: sum(x * exp(x) + x) -> exp(x) (1 + x) + 1.
  x.set_grad(Tensor());
  sum(add(mul(x, exp(x)), x)).backward();
  EXPECT_TRUE(all_close(x.grad(), {5}, map_values(xv, [](double v) { return std::exp(v) * (1 + v) + 1; }), kTol));
}

TEST(AutogradEngine, DiamondGraph) {
  HostRng rng;
  Tensor x = leaf(rng, {2, 3}, -1.0, 1.0);
  const auto xv = test::host_values(x);
  // a = exp(x); b = 3a; c = a + 1; y = sum(b * c) = sum(3a^2 + 3a); dy/dx = (6a + 3) a.
  const Tensor a = exp(x);
  const Tensor b = mul(a, 3.0);
  const Tensor c = add(a, 1.0);
  sum(mul(b, c)).backward();
  EXPECT_TRUE(all_close(x.grad(), {2, 3},
                        map_values(xv,
                                   [](double v) {
                                     const double e = std::exp(v);
                                     return (6 * e + 3) * e;
                                   }),
                        kTol));
  // Two diamonds stacked, merging at different depths: y = sum(t * u), t = tanh(x), u = t * t + x.
  x.set_grad(Tensor());
  const Tensor t = tanh(x);
  const Tensor u = add(mul(t, t), x);
  sum(mul(t, u)).backward();
  // y = t^3 + x t -> dy/dx = 3 t^2 t' + t + x t', t' = 1 - t^2.
  EXPECT_TRUE(all_close(x.grad(), {2, 3},
                        map_values(xv,
                                   [](double v) {
                                     const double th = std::tanh(v), d = 1 - th * th;
                                     return 3 * th * th * d + th + v * d;
                                   }),
                        kTol));
}

TEST(AutogradEngine, UnusedAndUntrackedLeavesGetNoGradient) {
  HostRng rng;
  Tensor x = leaf(rng, {3});
  Tensor unused = leaf(rng, {3});
  Tensor side = leaf(rng, {3});
  const Tensor constant = test::make_tensor(rng.uniform(3, -1, 1), {3}, kF64);
  // `side` feeds a branch that does not reach the root.
  const Tensor side_branch = mul(side, x);
  sum(mul(x, constant)).backward();
  EXPECT_TRUE(all_close(x.grad(), {3}, test::host_values(constant), kTol));
  EXPECT_FALSE(unused.grad().defined());
  EXPECT_FALSE(side.grad().defined());
  EXPECT_FALSE(constant.grad().defined());
  EXPECT_TRUE(side_branch.requires_grad());
}

/// Drops `*tensor` on a thread with a 1 MiB stack (a recursive teardown of a long graph overflows it).
void drop_on_small_stack(Tensor* tensor) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, size_t{1} << 20);
  pthread_t thread;
  const auto drop = [](void* arg) -> void* {
    *static_cast<Tensor*>(arg) = Tensor();
    return nullptr;
  };
  ASSERT_EQ(pthread_create(&thread, &attr, drop, tensor), 0);
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
}

TEST(AutogradEngine, LongChainRunsAndIsFreedWithoutDeepRecursion) {
  // 200k nodes, each owning the next through its edge: backward must walk them iteratively, and
  // freeing the graph must not recurse once per node (which needs ~10 MB of stack here).
  const int64_t depth = 200000;
  Tensor x = ones({2}, kF64);
  x.requires_grad_();
  Tensor y = x;
  for (int64_t i = 0; i < depth; ++i) y = add(y, 1.0);
  Tensor loss = sum(y);
  y = Tensor();
  loss.backward(Tensor(), /*retain_graph=*/true);
  EXPECT_TRUE(all_close(x.grad(), {2}, {1.0, 1.0}, kTol));
  drop_on_small_stack(&loss);
  EXPECT_FALSE(loss.defined());
  // The same without running backward first.
  Tensor z = x;
  for (int64_t i = 0; i < depth; ++i) z = mul(z, 1.0);
  drop_on_small_stack(&z);
  EXPECT_FALSE(z.defined());
}

// --- gradient-ready hooks ---------------------------------------------------------------------------

/// What the hooks saw: per leaf name, the calls, the gradient inside the hook, and the call order.
struct HookLog {
  std::vector<std::string> order;
  std::map<std::string, int> calls;
  std::map<std::string, Tensor> grad_in_hook;

  void watch(const Tensor& t, const std::string& name) {
    // The hook lives in t's metadata: it keeps only t's address, not a handle (no cycle).
    const TensorImpl* own = t.impl_ptr().get();
    t.register_grad_ready_hook([this, name, own](const Tensor& leaf) {
      order.push_back(name);
      ++calls[name];
      EXPECT_EQ(leaf.impl_ptr().get(), own) << "the hook receives its own leaf (" << name << ")";
      const Tensor g = leaf.grad();
      grad_in_hook[name] = g.defined() ? g.clone() : Tensor();
    });
  }
};

/// A two-layer perceptron on host data: x [n, i] @ w1 [i, h] + b1 -> relu -> @ w2 [h, o] + b2, summed.
struct MlpGrads {
  std::vector<double> w1, b1, w2, b2;
};

MlpGrads mlp_reference(const std::vector<double>& x, const std::vector<double>& w1, const std::vector<double>& b1,
                       const std::vector<double>& w2, int64_t n, int64_t in, int64_t hid, int64_t out) {
  MlpGrads g{std::vector<double>(in * hid, 0.0), std::vector<double>(hid, 0.0), std::vector<double>(hid * out, 0.0),
             std::vector<double>(out, 0.0)};
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < hid; ++j) {
      double pre = b1[j];
      for (int64_t k = 0; k < in; ++k) pre += x[r * in + k] * w1[k * hid + j];
      const double h = pre > 0 ? pre : 0.0;
      double dh = 0.0;  // d(sum of outputs)/dh = sum_o w2[j][o]
      for (int64_t o = 0; o < out; ++o) {
        g.w2[j * out + o] += h;
        dh += w2[j * out + o];
      }
      const double dpre = pre > 0 ? dh : 0.0;
      g.b1[j] += dpre;
      for (int64_t k = 0; k < in; ++k) g.w1[k * hid + j] += x[r * in + k] * dpre;
    }
    for (int64_t o = 0; o < out; ++o) g.b2[o] += 1.0;
  }
  return g;
}

TEST(AutogradHooks, MlpHooksFireOnceAfterTheGradientIsFinalInReverseOrder) {
  HostRng rng;
  const int64_t n = 4, in = 3, hid = 5, out = 2;
  const auto xv = rng.uniform(n * in, -1, 1);
  const Tensor x = test::make_tensor(xv, {n, in}, kF64);
  Tensor w1 = leaf(rng, {in, hid}, -1, 1), b1 = leaf(rng, {hid}, -0.5, 0.5);
  Tensor w2 = leaf(rng, {hid, out}, -1, 1), b2 = leaf(rng, {out}, -0.5, 0.5);
  const MlpGrads expected =
      mlp_reference(xv, test::host_values(w1), test::host_values(b1), test::host_values(w2), n, in, hid, out);
  HookLog log;
  log.watch(w1, "w1");
  log.watch(b1, "b1");
  log.watch(w2, "w2");
  log.watch(b2, "b2");
  const auto forward = [&] { return sum(add(matmul(relu(add(matmul(x, w1), b1)), w2), b2)); };

  for (int pass = 1; pass <= 2; ++pass) {
    SCOPED_TRACE(fmt::format("backward {}", pass));
    log.order.clear();
    forward().backward();
    EXPECT_EQ(log.order, (std::vector<std::string>{"b2", "w2", "b1", "w1"}))
        << "hooks fire in reverse order of use, last layer first";
    const std::vector<std::pair<std::string, Tensor>> params{{"w1", w1}, {"b1", b1}, {"w2", w2}, {"b2", b2}};
    for (const auto& [name, p] : params) {
      SCOPED_TRACE(name);
      EXPECT_EQ(log.calls[name], pass) << "exactly once per backward";
      ASSERT_TRUE(log.grad_in_hook[name].defined());
      EXPECT_TRUE(test::tensors_close(log.grad_in_hook[name], p.grad(), test::Tolerance{0, 0}))
          << "inside the hook the gradient is already final";
    }
    // Values: the closed form, accumulated over the passes.
    EXPECT_TRUE(all_close(w1.grad(), {in, hid}, scaled(expected.w1, pass), kTol));
    EXPECT_TRUE(all_close(b1.grad(), {hid}, scaled(expected.b1, pass), kTol));
    EXPECT_TRUE(all_close(w2.grad(), {hid, out}, scaled(expected.w2, pass), kTol));
    EXPECT_TRUE(all_close(b2.grad(), {out}, scaled(expected.b2, pass), kTol));
  }

  // retain_graph: the hooks fire once in each of two backwards through one graph.
  log.calls.clear();
  const Tensor y = forward();
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  for (const char* name : {"w1", "b1", "w2", "b2"}) EXPECT_EQ(log.calls[name], 2) << name;
}

TEST(AutogradHooks, LeafSharedByTwoBranchesFiresOnceAfterBothContributions) {
  HostRng rng;
  const auto xv = rng.uniform(6, -1, 1);
  const Tensor x = test::make_tensor(xv, {2, 3}, kF64);
  Tensor w = leaf(rng, {3, 3}, -1, 1);
  Tensor v = leaf(rng, {3}, -1, 1);
  const auto wv = test::host_values(w), vv = test::host_values(v);
  HookLog log;
  log.watch(w, "w");
  log.watch(v, "v");
  // A short branch (sum(exp(w))) and a long one (sum(tanh(x @ w) * v)) meet at the root.
  const auto forward = [&] { return add(sum(exp(w)), sum(mul(tanh(matmul(x, w)), v))); };
  // dL/dw[k][j] = exp(w[k][j]) + sum_r x[r][k] (1 - tanh^2(xw[r][j])) v[j];  dL/dv[j] = sum_r tanh(xw[r][j]).
  std::vector<double> gw(9), gv(3, 0.0);
  for (int64_t k = 0; k < 3; ++k)
    for (int64_t j = 0; j < 3; ++j) gw[k * 3 + j] = std::exp(wv[k * 3 + j]);
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t j = 0; j < 3; ++j) {
      double pre = 0;
      for (int64_t k = 0; k < 3; ++k) pre += xv[r * 3 + k] * wv[k * 3 + j];
      const double th = std::tanh(pre);
      gv[j] += th;
      for (int64_t k = 0; k < 3; ++k) gw[k * 3 + j] += xv[r * 3 + k] * (1 - th * th) * vv[j];
    }
  }
  for (int pass = 1; pass <= 2; ++pass) {
    SCOPED_TRACE(fmt::format("backward {}", pass));
    forward().backward();
    EXPECT_EQ(log.calls["w"], pass);
    EXPECT_EQ(log.calls["v"], pass);
    ASSERT_TRUE(log.grad_in_hook["w"].defined());
    EXPECT_TRUE(all_close(log.grad_in_hook["w"], {3, 3}, scaled(gw, pass), kTol))
        << "the hook saw both branches' contributions";
    EXPECT_TRUE(test::tensors_close(log.grad_in_hook["w"], w.grad(), test::Tolerance{0, 0}));
    EXPECT_TRUE(all_close(v.grad(), {3}, scaled(gv, pass), kTol));
  }
}

TEST(AutogradHooks, HookRegistrationNeedsALeafThatRequiresGrad) {
  HostRng rng;
  Tensor x = leaf(rng, {3});
  const Tensor y = exp(x);
  const auto noop = [](const Tensor&) {};
  EXPECT_TRUE(raises_error([&] { y.register_grad_ready_hook(noop); }, {"register_grad_ready_hook"}));
  const Tensor plain = zeros({3}, kF64);
  EXPECT_TRUE(raises_error([&] { plain.register_grad_ready_hook(noop); }, {"register_grad_ready_hook"}));
  // Several hooks on one leaf all fire, in registration order.
  std::vector<int> fired;
  x.register_grad_ready_hook([&](const Tensor&) { fired.push_back(1); });
  x.register_grad_ready_hook([&](const Tensor&) { fired.push_back(2); });
  sum(x).backward();
  EXPECT_EQ(fired, (std::vector<int>{1, 2}));
  // A leaf that gets no gradient in a backward does not fire.
  Tensor idle = leaf(rng, {3});
  int idle_calls = 0;
  idle.register_grad_ready_hook([&](const Tensor&) { ++idle_calls; });
  sum(x).backward();
  EXPECT_EQ(idle_calls, 0);
  EXPECT_EQ(fired.size(), 4u);
}

// --- early gradients (Note [early gradients]) -------------------------------------------------------

/// out = a * 2 + b * 3 (elementwise) with a backward that hands b's gradient on early, then checks
/// what had already run, then computes a's.
struct EarlyOp {
  std::vector<std::string>* log;
  Tensor operator()(const Tensor& a, const Tensor& b) const {
    Tensor out;
    {
      NoGradGuard no_grad;
      out = add(mul(a, 2.0), mul(b, 3.0));
    }
    autograd::record(out, "EarlyOpBackward", {a, b}, [log = log](const Tensor& g) {
      autograd::deliver_gradient_early(1, mul(g, 3.0));
      log->push_back("a's gradient computed");
      return std::vector<Tensor>{mul(g, 2.0), Tensor()};
    });
    return out;
  }
};

TEST(AutogradEarlyGradients, HookOfTheEarlyInputFiresBeforeTheOtherGradientIsComputed) {
  HostRng rng;
  Tensor a = leaf(rng, {3}), w = leaf(rng, {3});
  std::vector<std::string> log;
  a.register_grad_ready_hook([&](const Tensor&) { log.push_back("a ready"); });
  w.register_grad_ready_hook([&](const Tensor&) { log.push_back("w ready"); });
  // b reaches w through a transpose-like single-input chain (a view), which runs early too.
  const Tensor b = w.reshape({1, 3}).reshape({3});
  sum(EarlyOp{&log}(a, b)).backward();
  EXPECT_EQ(log, (std::vector<std::string>{"w ready", "a's gradient computed", "a ready"}));
  EXPECT_TRUE(all_close(a.grad(), {3}, {2, 2, 2}, kTol));
  EXPECT_TRUE(all_close(w.grad(), {3}, {3, 3, 3}, kTol));
}

TEST(AutogradEarlyGradients, AnInputWithOtherPendingContributionsWaitsForThem) {
  HostRng rng;
  Tensor a = leaf(rng, {2}), w = leaf(rng, {2});
  std::vector<std::string> log;
  w.register_grad_ready_hook([&](const Tensor&) { log.push_back("w ready"); });
  // w is used twice: its gradient is final only after the second use's contribution as well.
  const Tensor out = add(EarlyOp{&log}(a, w), mul(w, 5.0));
  sum(out).backward();
  ASSERT_EQ(std::count(log.begin(), log.end(), "w ready"), 1);
  EXPECT_TRUE(all_close(w.grad(), {2}, {8, 8}, kTol));
  EXPECT_TRUE(all_close(a.grad(), {2}, {2, 2}, kTol));
}

TEST(AutogradEarlyGradients, MatmulHandsOnTheWeightGradientBeforeComputingTheInputGradient) {
  // out = x @ w with both leaves: w's hook fires inside MatmulBackward, before x's gradient exists
  // (without early delivery both accumulators would run after the node, x's first).
  HostRng rng;
  Tensor x = leaf(rng, {4, 3}), w = leaf(rng, {3, 2});
  bool x_grad_when_w_ready = true;
  w.register_grad_ready_hook([&](const Tensor&) { x_grad_when_w_ready = x.grad().defined(); });
  sum(matmul(x, w)).backward();
  EXPECT_FALSE(x_grad_when_w_ready);
  // d(sum(x @ w))/dx[i][k] = sum_j w[k][j]; /dw[k][j] = sum_i x[i][k].
  const std::vector<double> xv = test::host_values(x), wv = test::host_values(w);
  std::vector<double> gx(12), gw(6);
  for (int i = 0; i < 4; ++i)
    for (int k = 0; k < 3; ++k) gx[i * 3 + k] = wv[k * 2] + wv[k * 2 + 1];
  for (int k = 0; k < 3; ++k)
    for (int j = 0; j < 2; ++j) gw[k * 2 + j] = xv[k] + xv[3 + k] + xv[6 + k] + xv[9 + k];
  EXPECT_TRUE(all_close(x.grad(), {4, 3}, gx, kTol));
  EXPECT_TRUE(all_close(w.grad(), {3, 2}, gw, kTol));
}

// Note [weight gradient layout]: for y = x @ w.t() (a linear layer), the gradient that reaches w
// through the transpose is contiguous, whatever x's rank and whether x needs a gradient, so
// AccumulateGrad adds or copies it in one coalesced pass; the values are d(sum(y))/dw[j][k] =
// sum over x's rows of x[., k].
TEST(AutogradEarlyGradients, ALinearLayersWeightGetsItsGradientInItsOwnLayout) {
  HostRng rng;
  const int64_t in = 3, out = 2;
  for (const Shape& x_shape : {Shape{4, in}, Shape{2, 4, in}, Shape{in}}) {
    for (const bool x_needs_grad : {true, false}) {
      SCOPED_TRACE(fmt::format("x {}{}", shape_str(x_shape), x_needs_grad ? " requiring grad" : ""));
      Tensor x = test::make_tensor(rng.uniform(test::numel_of(x_shape), -1, 1), x_shape, kF64);
      if (x_needs_grad) x.requires_grad_();
      Tensor w = leaf(rng, {out, in});
      // An identity between w and its transpose that notes the layout of the gradient it passes on.
      std::optional<bool> contiguous;
      Tensor w_seen;
      {
        NoGradGuard no_grad;
        w_seen = w.view({out, in});
      }
      autograd::record(w_seen, "LayoutProbeBackward", {w}, [&contiguous](const Tensor& g) {
        contiguous = g.is_contiguous();
        return std::vector<Tensor>{g};
      });
      sum(matmul(x, w_seen.t())).backward();
      ASSERT_TRUE(contiguous.has_value());
      EXPECT_TRUE(*contiguous) << "w's gradient arrived as a strided view";
      const std::vector<double> xv = test::host_values(x);
      std::vector<double> gw(out * in, 0.0);
      for (size_t i = 0; i < xv.size(); ++i)
        for (int64_t j = 0; j < out; ++j) gw[j * in + static_cast<int64_t>(i) % in] += xv[i];
      EXPECT_TRUE(all_close(w.grad(), {out, in}, gw, kTol));
    }
  }
}

// A hook that steps its weight in place would change the input gradient computed after it (the
// weight is still needed): it raises instead of giving a wrong gradient.
TEST(AutogradEarlyGradients, AHookThatChangesItsLeafRaises) {
  HostRng rng;
  Tensor x = leaf(rng, {4, 3}), w = leaf(rng, {3, 2});
  w.register_grad_ready_hook([](const Tensor& weight) {
    autograd::NoGradGuard no_grad;
    Tensor handle = weight;  // the same tensor, through a non-const handle
    handle.sub_(mul(weight.grad(), 100.0));
  });
  EXPECT_TRUE(test::raises_error([&] { sum(matmul(x, w)).backward(); },
                                 {"gradient-ready hook changed", "in place during backward", "after backward"}));
}

TEST(AutogradEarlyGradients, TwoLayerGradientsStayExact) {
  HostRng rng;
  const int64_t n = 4, in = 3, hid = 5, out = 2;
  const auto xv = rng.uniform(n * in, -1, 1);
  const Tensor x = test::make_tensor(xv, {n, in}, kF64);
  Tensor w1 = leaf(rng, {in, hid}, -1, 1), b1 = leaf(rng, {hid}, -0.5, 0.5);
  Tensor w2 = leaf(rng, {hid, out}, -1, 1), b2 = leaf(rng, {out}, -0.5, 0.5);
  const MlpGrads expected =
      mlp_reference(xv, test::host_values(w1), test::host_values(b1), test::host_values(w2), n, in, hid, out);
  sum(add(matmul(relu(add(matmul(x, w1), b1)), w2.t().t()), b2)).backward();  // w2 through two views
  EXPECT_TRUE(all_close(w1.grad(), {in, hid}, expected.w1, kTol));
  EXPECT_TRUE(all_close(b1.grad(), {hid}, expected.b1, kTol));
  EXPECT_TRUE(all_close(w2.grad(), {hid, out}, expected.w2, kTol));
  EXPECT_TRUE(all_close(b2.grad(), {out}, expected.b2, kTol));
}

TEST(AutogradEarlyGradients, MisuseRaises) {
  EXPECT_TRUE(raises_error([] { autograd::deliver_gradient_early(0, Tensor()); }, {"outside a backward function"}));
  HostRng rng;
  Tensor a = leaf(rng, {2}), b = leaf(rng, {2});
  Tensor out;
  {
    NoGradGuard no_grad;
    out = add(a, b);
  }
  autograd::record(out, "TwiceBackward", {a, b}, [](const Tensor& g) {
    autograd::deliver_gradient_early(1, g);
    autograd::deliver_gradient_early(1, g);
    return std::vector<Tensor>{g, Tensor()};
  });
  EXPECT_TRUE(raises_error([&] { sum(out).backward(); }, {"TwiceBackward", "delivered it already"}));
}

}  // namespace
}  // namespace flame
