// Finite-difference gradient checks (float64, CPU) of every view and copy op of core/tensor.h
// (view, reshape, transpose, t, permute, narrow, slice, select, expand, squeeze, unsqueeze, flatten,
// contiguous, clone, to(dtype)) on contiguous and non-contiguous inputs, chains of views, and the
// joining ops cat and stack.
#include <fmt/format.h>

#include "support/gradcheck.h"

namespace flame {
namespace {

using test::gradcheck;
using test::HostRng;
using test::Layout;

struct ViewCase {
  std::string name;
  Shape input;
  std::function<Tensor(const Tensor&)> op;
  bool needs_contiguous = false;  // view() of a layout it cannot express without a copy raises
};

std::vector<ViewCase> view_cases() {
  return {
      {"view",
       {3, 4},
       [](const Tensor& x) {
         return x.view({4, 3});
       },
       true},
      {"view_-1",
       {2, 3, 4},
       [](const Tensor& x) {
         return x.view({-1, 4});
       },
       true},
      {"view_split_last",
       {3, 4},
       [](const Tensor& x) {
         return x.view({3, 2, 2});
       }},
      {"reshape",
       {3, 4},
       [](const Tensor& x) {
         return x.reshape({2, 6});
       }},
      {"reshape_to_1d", {2, 3, 2}, [](const Tensor& x) { return x.reshape({-1}); }},
      {"reshape_0d", {1, 1}, [](const Tensor& x) { return x.reshape({}); }},
      {"transpose", {2, 3, 4}, [](const Tensor& x) { return x.transpose(0, 2); }},
      {"transpose_negative", {3, 4}, [](const Tensor& x) { return x.transpose(-1, -2); }},
      {"t", {3, 4}, [](const Tensor& x) { return x.t(); }},
      {"permute",
       {2, 3, 4},
       [](const Tensor& x) {
         return x.permute({2, 0, 1});
       }},
      {"narrow", {5, 4}, [](const Tensor& x) { return x.narrow(0, 1, 3); }},
      {"narrow_last", {3, 6}, [](const Tensor& x) { return x.narrow(-1, 2, 2); }},
      {"slice", {6, 3}, [](const Tensor& x) { return x.slice(0, 1, 5); }},
      {"slice_step", {3, 7}, [](const Tensor& x) { return x.slice(1, 0, 7, 2); }},
      {"slice_step_3", {8}, [](const Tensor& x) { return x.slice(0, 1, 8, 3); }},
      {"select", {3, 4}, [](const Tensor& x) { return x.select(0, 1); }},
      {"select_negative", {2, 3, 4}, [](const Tensor& x) { return x.select(-1, -1); }},
      {"select_to_0d", {5}, [](const Tensor& x) { return x.select(0, 3); }},
      {"expand",
       {3, 1},
       [](const Tensor& x) {
         return x.expand({3, 4});
       }},
      {"expand_new_dims",
       {1, 4},
       [](const Tensor& x) {
         return x.expand({2, 3, 4});
       }},
      {"expand_keep",
       {3, 1},
       [](const Tensor& x) {
         return x.expand({2, -1, 5});
       }},
      {"expand_0d",
       {},
       [](const Tensor& x) {
         return x.expand({2, 3});
       }},
      {"squeeze", {3, 1, 4, 1}, [](const Tensor& x) { return x.squeeze(); }},
      {"squeeze_dim", {3, 1, 4}, [](const Tensor& x) { return x.squeeze(1); }},
      {"squeeze_dim_noop", {3, 4}, [](const Tensor& x) { return x.squeeze(0); }},
      {"unsqueeze", {3, 4}, [](const Tensor& x) { return x.unsqueeze(1); }},
      {"unsqueeze_last", {3, 4}, [](const Tensor& x) { return x.unsqueeze(-1); }},
      {"unsqueeze_0d", {}, [](const Tensor& x) { return x.unsqueeze(0); }},
      {"flatten", {2, 3, 4}, [](const Tensor& x) { return x.flatten(); }},
      {"flatten_partial", {2, 3, 4}, [](const Tensor& x) { return x.flatten(1, 2); }},
      {"flatten_0d", {}, [](const Tensor& x) { return x.flatten(); }},
      {"contiguous", {3, 4}, [](const Tensor& x) { return x.contiguous(); }},
      {"clone", {3, 4}, [](const Tensor& x) { return x.clone(); }},
      {"to_same_dtype", {3, 4}, [](const Tensor& x) { return x.to(kF64); }},
      {"to_same_device", {3, 4}, [](const Tensor& x) { return x.to(kCPU); }},
      // Chains: views of views, then an op that reads them.
      {"chain_views",
       {2, 3, 4},
       [](const Tensor& x) {
         return x.transpose(0, 1).narrow(2, 1, 2).reshape({3, 4}).t().unsqueeze(0);
       }},
      {"chain_view_then_op", {4, 6}, [](const Tensor& x) { return mul(x.slice(1, 0, 6, 2), x.narrow(1, 3, 3)); }},
      {"overlapping_views", {5}, [](const Tensor& x) { return add(x.narrow(0, 0, 4), x.narrow(0, 1, 4)); }},
      {"select_every_row",
       {3, 2},
       [](const Tensor& x) {
         return stack({x.select(0, 2), x.select(0, 0), x.select(0, 2)});
       }},
      {"expand_then_op",
       {3, 1},
       [](const Tensor& x) {
         return mul(x.expand({3, 4}), exp(x.expand({3, 4})));
       }},
  };
}

TEST(GradcheckViews, EveryViewOpInEveryLayout) {
  HostRng rng;
  for (const ViewCase& c : view_cases()) {
    std::vector<Layout> layouts{Layout::Contiguous, Layout::Offset};
    if (!c.needs_contiguous) {
      layouts.push_back(Layout::Strided);
      if (c.input.size() >= 2) layouts.push_back(Layout::Transposed);
      if (c.input.size() >= 3) layouts.push_back(Layout::Permuted);
    }
    for (Layout layout : layouts) {
      SCOPED_TRACE(fmt::format("{} of {} {}", c.name, shape_str(c.input), test::layout_name(layout)));
      test::guarded([&] {
        const Tensor x = test::random_f64(rng, c.input, -2, 2, layout);
        EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return c.op(in[0]); }, {x}, rng));
      });
    }
  }
}

TEST(GradcheckViews, ViewsOfTrackedTensorsAreTracked) {
  HostRng rng;
  Tensor x = test::random_f64(rng, {3, 4}, -1, 1);
  x.requires_grad_();
  for (const Tensor& v :
       {x.view({12}), x.t(), x.narrow(0, 0, 2), x.select(1, 0), x.unsqueeze(0), x.expand({2, 3, 4}),
        x.slice(1, 0, 4, 2), x.permute({1, 0}), x.unsqueeze(1).squeeze(1), x.flatten(), x.reshape({4, 3})}) {
    SCOPED_TRACE(v.describe());
    EXPECT_TRUE(v.requires_grad());
    EXPECT_FALSE(v.is_leaf());
    EXPECT_EQ(v.storage(), x.storage()) << "still a view";
  }
}

TEST(GradcheckViews, DtypeRoundTrip) {
  HostRng rng;
  // f64 -> f32 -> f64: the gradient is the incoming one rounded to f32; finite differences see the
  // f32 rounding, hence a larger step and a looser tolerance.
  const test::GradcheckOptions loose{1e-3, 1e-3, 1e-3};
  for (Layout layout : {Layout::Contiguous, Layout::Transposed}) {
    SCOPED_TRACE(test::layout_name(layout));
    test::guarded([&] {
      const Tensor x = test::random_f64(rng, {3, 4}, -2, 2, layout);
      EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return in[0].to(kF32).to(kF64); }, {x}, rng, loose));
      EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return mul(exp(in[0].to(kF32)), 2.0).to(kF64); }, {x},
                            rng, test::GradcheckOptions{1e-3, 2e-3, 2e-3}));
    });
  }
  SCOPED_TRACE("the intermediate gradient has the intermediate dtype");
  Tensor x = test::random_f64(rng, {4}, -1, 1);
  x.requires_grad_();
  const Tensor y = x.to(kF32);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_EQ(y.dtype(), kF32);
  sum(y).backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().dtype(), kF64);
  EXPECT_TRUE(test::all_close(x.grad(), {4}, std::vector<double>(4, 1.0), test::tolerance_for(kF64)));
  SCOPED_TRACE("a conversion to an integer dtype ends the graph");
  EXPECT_FALSE(x.to(kI64).requires_grad());
  EXPECT_FALSE(x.to(kBool).requires_grad());
}

// --- cat and stack --------------------------------------------------------------------------------

TEST(GradcheckJoin, Cat) {
  HostRng rng;
  struct CatCase {
    std::vector<Shape> shapes;
    int64_t dim;
  };
  const std::vector<CatCase> cases{
      {{{2, 3}, {4, 3}, {1, 3}}, 0}, {{{3, 2}, {3, 1}, {3, 4}}, 1},
      {{{2, 3, 1}, {2, 3, 2}}, -1},  {{{5}, {2}}, 0},
      {{{2, 2, 3}, {2, 1, 3}}, 1},   {{{3, 4}}, 0},
  };
  for (const CatCase& c : cases) {
    for (Layout layout : {Layout::Contiguous, Layout::Transposed}) {
      SCOPED_TRACE(
          fmt::format("cat of {} tensors along {} (first {})", c.shapes.size(), c.dim, test::layout_name(layout)));
      test::guarded([&] {
        std::vector<Tensor> inputs;
        for (size_t i = 0; i < c.shapes.size(); ++i)
          inputs.push_back(test::random_f64(rng, c.shapes[i], -2, 2, i == 0 ? layout : Layout::Contiguous));
        EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return cat(in, c.dim); }, inputs, rng));
      });
    }
  }
  SCOPED_TRACE("the same tensor twice, and a constant between tracked ones");
  test::guarded([&] {
    const Tensor x = test::random_f64(rng, {2, 3}, -2, 2);
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return cat({in[0], exp(in[0])}, 0); }, {x}, rng));
    const Tensor constant = test::random_f64(rng, {1, 3}, -2, 2);
    EXPECT_TRUE(gradcheck(
        [&](const std::vector<Tensor>& in) {
          return cat({in[0], constant, in[1]}, 0);
        },
        {x, x.clone()}, rng));
  });
}

TEST(GradcheckJoin, Stack) {
  HostRng rng;
  for (int64_t dim : {0, 1, 2, -1}) {
    SCOPED_TRACE(fmt::format("stack of three [3, 2] along {}", dim));
    test::guarded([&] {
      const std::vector<Tensor> inputs{test::random_f64(rng, {3, 2}, -2, 2),
                                       test::random_f64(rng, {3, 2}, -2, 2, Layout::Transposed),
                                       test::random_f64(rng, {3, 2}, -2, 2, Layout::Offset)};
      EXPECT_TRUE(gradcheck([&](const std::vector<Tensor>& in) { return stack(in, dim); }, inputs, rng));
    });
  }
  SCOPED_TRACE("stack of 0-d tensors");
  test::guarded([&] {
    const std::vector<Tensor> inputs{test::random_f64(rng, {}, -2, 2), test::random_f64(rng, {}, -2, 2)};
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return stack(in, 0); }, inputs, rng));
  });
}

}  // namespace
}  // namespace flame
